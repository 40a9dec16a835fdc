"""SQLite connection setup and the transaction block every write uses."""

from __future__ import annotations

import contextlib
import datetime
import sqlite3
from typing import Any, Dict, Iterator, Optional

__all__ = ["SQL_TYPES", "configure_connection", "configure_reader", "declared_type", "sql_value", "transaction"]


def _datetime_text(value: datetime.datetime) -> str:
    return value.isoformat(" ")


# What sqlite3's default adapters (deprecated since Python 3.12) write, made
# explicit: a datetime in a row is stored as co2logserver stored it.
sqlite3.register_adapter(datetime.datetime, _datetime_text)
sqlite3.register_adapter(datetime.date, datetime.date.isoformat)


SQL_TYPES: Dict[type, str] = {
    bool: "INTEGER",
    int: "INTEGER",
    float: "REAL",
    str: "TEXT",
    datetime.datetime: "DATETIME",
}


def declared_type(python_type: Optional[type]) -> str:
    """The declared SQL type of a new column whose first value has ``python_type`` (co2logserver's rule)."""
    return SQL_TYPES.get(python_type, "") if python_type is not None else ""


def sql_value(value: Any) -> Any:
    """A Python value as it is bound: datetimes as sqlite3's own adapter writes them."""
    if isinstance(value, datetime.datetime):
        return value.isoformat(" ")
    if isinstance(value, bool):
        return int(value)
    return value


def configure_connection(connection: sqlite3.Connection, synchronous: str = "FULL") -> None:
    """WAL, a busy timeout and the chosen durability; explicit transactions."""
    connection.isolation_level = None  # we BEGIN/COMMIT ourselves, DDL included
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA busy_timeout=5000")
    connection.execute("PRAGMA synchronous={}".format(synchronous))


def configure_reader(connection: sqlite3.Connection) -> None:
    """A read-only connection for the dashboard and plots: ``query_only``, so it can never write or fsync."""
    connection.isolation_level = None
    connection.execute("PRAGMA busy_timeout=5000")
    connection.execute("PRAGMA query_only=ON")


@contextlib.contextmanager
def transaction(connection: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE … COMMIT, rolled back if anything in the block raises."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise
