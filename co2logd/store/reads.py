"""
The download reads: a :class:`~co2logd.store.Query` as SQL, the rows a
chunk at a time, counts and paging.  (The dashboard's reads and the plot
rollups are in :mod:`co2logd.store.rollups`.)
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, List, Optional, Sequence, Tuple

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred
from zope.interface import implementer

from co2logd.store.names import quote_identifier
from co2logd.store.interfaces import IRowStream, Query

Row = Tuple[Any, ...]


def select_sql(
    query: Query,
    table: str,
    columns: Sequence[str] = (),
    placeholder: str = "?",
    bind: Callable[[str, Any], Any] = lambda column, value: value,
) -> Tuple[str, List[Any]]:
    """
    The SELECT statement of a download query and its parameters (names
    quoted from the checked set, values bound).  Without the query's own
    columns it selects ``columns``, or ``*`` when none are given;
    ``placeholder`` and ``bind`` are the engine's parameter mark and value
    conversion.
    """
    query.check()
    names = list(query.columns) or list(columns)
    cols = ", ".join(quote_identifier(c) for c in names) if names else "*"
    sql = "SELECT {} FROM {}".format(cols, table)
    params: List[Any] = []
    if query.bounds:
        clauses = []
        for column, op, value in query.bounds:
            clauses.append("{} {} {}".format(quote_identifier(column), op, placeholder))
            params.append(bind(column, value))
        sql += " WHERE " + " AND ".join(clauses)
    if query.order_by:
        column, direction = query.order_by
        sql += " ORDER BY {} {}".format(quote_identifier(column), direction.upper())
    if query.limit is not None:
        sql += " LIMIT " + placeholder
        params.append(int(query.limit))
    return sql, params


def count_rows(connection: sqlite3.Connection, table: str) -> int:
    """``count(*)`` of a table."""
    (n,) = connection.execute("SELECT count(*) FROM {}".format(table)).fetchone()
    return int(n)


def rowid_at(connection: sqlite3.Connection, query: Query, table: str, offset: int) -> Optional[int]:
    """The first column of the row ``offset`` places into ``query``'s result (a LIMIT 1 probe), or None."""
    sql, params = select_sql(query, table)
    row = connection.execute(sql + " OFFSET ?", params + [offset]).fetchone()
    return None if row is None else int(row[0])


@implementer(IRowStream)
class RowStream:
    """The rows of one SELECT, fetched a chunk at a time on the store's connection."""

    def __init__(self, pool: adbapi.ConnectionPool, chunk_rows: int):
        self.pool = pool
        self.chunk_rows = chunk_rows
        self.header: List[str] = []
        self.cursor: Optional[sqlite3.Cursor] = None

    def start(self, connection: sqlite3.Connection, sql: str, params: List[Any]) -> "RowStream":
        """In the pool's thread: run the SELECT; fire the stream itself."""
        self.cursor = connection.execute(sql, params)
        self.header = [d[0] for d in self.cursor.description]
        return self

    def next_chunk(self) -> "Deferred[List[Row]]":
        """The next list of rows; an empty list at the end (the cursor is then closed)."""
        return self.pool.runWithConnection(self._fetch)  # type: ignore[no-any-return]

    def _fetch(self, connection: sqlite3.Connection) -> List[Row]:
        if self.cursor is None:
            return []
        rows: List[Row] = self.cursor.fetchmany(self.chunk_rows)
        if len(rows) < self.chunk_rows:
            self._close(connection)
        return rows

    def close(self) -> "Deferred[None]":
        """Stop early (the client went away); releases the read snapshot."""
        return self.pool.runWithConnection(self._close)  # type: ignore[no-any-return]

    def _close(self, connection: sqlite3.Connection) -> None:
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None
