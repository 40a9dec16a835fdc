"""
``python -m co2logd.copy SOURCE DEST``: copy co2logd's data between stores.

SOURCE and DEST are each what ``--db`` takes: a SQLite file or a
``postgresql://`` URL.  Typically an existing ``co2.sqlite`` goes into
PostgreSQL (docs/postgresql.md).  Copied: the data table (in batches, in
rowid order, columns created with their types) and co2logd's own tables (the
OpenSenseMap outbox and dead letters, replay counters, idempotency keys).
Not copied: the dashboard's side tables, which the destination rebuilds.

* Each batch is one destination transaction that also records how far the
  copy got (``co2logd_copy_progress``), so an interrupted copy run again
  goes on where it stopped and copies no row twice.
* A destination whose data table already holds rows not copied from this
  source is refused, unless ``--append``.
* At the end the rows copied are counted on both sides; a difference is an
  error (exit status 1).
* PostgreSQL columns hold one type: a SQLite value that does not fit its
  column (text in an INTEGER column) stops the copy naming row and column,
  or with ``--bad-values null`` is copied as NULL and counted.

Run it with co2logd stopped, or at least not writing to the destination;
the source may be in use (it is only read).
"""

from __future__ import annotations

import argparse
import datetime
import decimal
import os
import sqlite3
import sys
import time
from abc import ABC, abstractmethod
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple

from co2logd.dburl import DatabaseUrlError, PostgresUrl, parse_db
from co2logd.store.names import quote_identifier

PROGRESS_TABLE = "co2logd_copy_progress"
#: co2logd's own tables copied after the data: (table, key columns, columns)
OWN_TABLES: List[Tuple[str, Tuple[str, ...], Tuple[str, ...]]] = [
    ("co2logd_osem_outbox", ("id",), ("id", "queued_at", "entry")),
    ("co2logd_osem_dead_letter", ("id",), ("id", "queued_at", "failed_at", "entry", "reason")),
    ("co2logd_replay", ("key",), ("key", "last", "updated_at")),
    ("co2logd_idempotency", ("key",), ("key", "digest", "receipt", "created_at")),
]

SQLITE_TO_PG = {"INTEGER": "bigint", "REAL": "double precision", "TEXT": "text", "DATETIME": "timestamp with time zone"}
PG_TO_SQLITE = {"bigint": "INTEGER", "integer": "INTEGER", "double precision": "REAL", "text": "TEXT",
                "timestamp with time zone": "DATETIME"}


class CopyError(Exception):
    """The copy cannot go on; the message is one line for the operator."""


# -- the two kinds of store, as the copy sees them ------------------------------


class _Side(ABC):
    """One end of the copy: a DB-API connection and the SQL that differs between engines (one subclass per engine)."""

    placeholder = "?"
    rowid = "rowid"

    def __init__(self, target: Any, settings: Any):
        self.target = target
        self.settings = settings
        self.table = quote_identifier(settings.DATA_TABLE_NAME)
        self.connection: Any = None

    def name(self) -> str:
        return str(self.target)

    def count(self, table: str, where: str = "", params: Sequence[Any] = ()) -> int:
        cursor = self.connection.cursor()
        cursor.execute("SELECT count(*) FROM {} {}".format(table, where), params)
        return int(cursor.fetchone()[0])

    @abstractmethod
    def has_table(self, table: str) -> bool:
        ...

    @abstractmethod
    def open(self, write: bool) -> Dict[str, str]:
        """Connect (the destination prepared for co2logd); the data table's columns."""
        ...

    @abstractmethod
    def begin(self) -> None:
        ...

    @abstractmethod
    def commit(self) -> None:
        ...

    @abstractmethod
    def add_column(self, name: str, declared: str) -> None:
        ...

    @abstractmethod
    def insert(self, table: str, names: Sequence[str], rows: Sequence[Sequence[Any]], conflict_keys: Sequence[str] = ()) -> None:
        ...

    @abstractmethod
    def converter(self, declared: str) -> Callable[[Any], Any]:
        ...

    @abstractmethod
    def close(self) -> None:
        ...

    def sql(self, text: str) -> str:
        return text.replace("?", self.placeholder)


class _SQLite(_Side):
    """A SQLite file: read through sqlite3; written after the SQLite store prepared it."""

    def open(self, write: bool) -> Dict[str, str]:
        from co2logd.store.names import rowid_alias

        if write:
            from co2logd.store import prepare_database

            columns = prepare_database(self.target, self.settings)
            self.connection = sqlite3.connect(self.target)
            self.connection.isolation_level = None
            self.connection.execute("PRAGMA busy_timeout=5000")
        else:
            if not os.path.exists(self.target):
                raise CopyError("{}: no such file".format(self.target))
            self.connection = sqlite3.connect("file:{}?mode=ro".format(self.target), uri=True)
            self.connection.isolation_level = None
            columns = {n.lower(): t for n, t in self.connection.execute(
                "SELECT name, type FROM pragma_table_info(?)", (self.settings.DATA_TABLE_NAME,))}
            if not columns:
                raise CopyError("{} has no table {}".format(self.target, self.settings.DATA_TABLE_NAME))
        self.rowid = rowid_alias(columns)
        return columns

    def name(self) -> str:
        return os.path.abspath(str(self.target))

    def has_table(self, table: str) -> bool:
        return self.connection.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is not None

    def begin(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def commit(self) -> None:
        self.connection.execute("COMMIT")

    def add_column(self, name: str, declared: str) -> None:
        self.connection.execute("ALTER TABLE {} ADD COLUMN {} {}".format(self.table, quote_identifier(name), declared))

    def insert(self, table: str, names: Sequence[str], rows: Sequence[Sequence[Any]], conflict_keys: Sequence[str] = ()) -> None:
        verb = "INSERT OR IGNORE" if conflict_keys else "INSERT"
        self.connection.executemany(
            "{} INTO {} ({}) VALUES ({})".format(verb, table, ", ".join(quote_identifier(n) for n in names), ", ".join("?" * len(names))),
            [[_to_sqlite(v) for v in row] for row in rows],
        )

    def converter(self, declared: str) -> Callable[[Any], Any]:
        """A function turning a source value into what sqlite3 binds."""
        return _to_sqlite

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


class _Postgres(_Side):
    """A PostgreSQL database: prepared by the PostgreSQL store's schema code when written."""

    placeholder = "%s"

    def open(self, write: bool) -> Dict[str, str]:
        from co2logd.store.postgres import connection_params, _opened
        from co2logd.store.postgres_schema import prepare_postgres, table_columns

        import psycopg

        try:
            self.connection = psycopg.connect(**connection_params(self.target))
            _opened(self.connection)
            if write:
                return prepare_postgres(self.connection, self.settings)
            with self.connection.cursor() as cursor:
                columns = table_columns(cursor, self.settings.DATA_TABLE_NAME)
            self.connection.commit()
        except psycopg.Error as e:
            raise CopyError("{}: {}".format(self.target, " ".join(str(e).split())))
        if not columns:
            raise CopyError("{} has no table {}".format(self.target, self.settings.DATA_TABLE_NAME))
        return columns

    def has_table(self, table: str) -> bool:
        cursor = self.connection.cursor()
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (table,))
        return bool(cursor.fetchone()[0])

    def count(self, table: str, where: str = "", params: Sequence[Any] = ()) -> int:
        n = super().count(table, where, params)
        self.connection.commit()
        return n

    def begin(self) -> None:
        pass  # psycopg opens a transaction with the first statement

    def commit(self) -> None:
        self.connection.commit()

    def add_column(self, name: str, declared: str) -> None:
        self.connection.execute("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}".format(self.table, quote_identifier(name), declared))

    def insert(self, table: str, names: Sequence[str], rows: Sequence[Sequence[Any]], conflict_keys: Sequence[str] = ()) -> None:
        quoted = ", ".join(quote_identifier(n) for n in names)
        with self.connection.cursor() as cursor:
            if conflict_keys:
                cursor.executemany(
                    "INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO NOTHING".format(
                        table, quoted, ", ".join(["%s"] * len(names)), ", ".join(conflict_keys)),
                    rows,
                )
            else:
                with cursor.copy("COPY {} ({}) FROM STDIN".format(table, quoted)) as copy:
                    for row in rows:
                        copy.write_row(row)

    def converter(self, declared: str) -> Callable[[Any], Any]:
        """A function turning a source value into one this column holds (ValueError where none fits)."""
        from co2logd.store.postgres_schema import encode

        timestamp = declared.startswith("timestamp")

        def convert(value: Any) -> Any:
            if value is None:
                return None
            if isinstance(value, bytes):
                raise ValueError("{!r} is a blob".format(value[:20]))
            if timestamp and isinstance(value, str):
                try:
                    value = datetime.datetime.fromisoformat(value.strip())
                except ValueError:
                    raise ValueError("{!r} is not a time".format(value))
            return encode(value, declared)

        return convert

    def fix_sequences(self) -> None:
        """Identity columns given explicit ids (the outbox) go on after the largest."""
        self.connection.execute(
            "SELECT setval(pg_get_serial_sequence('co2logd_osem_outbox', 'id'), "
            "greatest((SELECT max(id) FROM co2logd_osem_outbox), 1))"
        )

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()


def _to_sqlite(value: Any) -> Any:
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.timezone.utc).isoformat(" ")
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _side(value: str, settings: Any) -> _Side:
    try:
        target = parse_db(value)
    except DatabaseUrlError as e:
        raise CopyError(str(e))
    return _Postgres(target, settings) if isinstance(target, PostgresUrl) else _SQLite(target, settings)


# -- progress ---------------------------------------------------------------------


class Progress:
    """A one-line progress bar on a terminal; a line per tenth elsewhere (logs)."""

    def __init__(self, total: int, stream: IO[str] = sys.stderr, enabled: bool = True):
        self.total = max(total, 0)
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and hasattr(stream, "isatty") and stream.isatty()
        self.started = time.monotonic()
        self.shown_tenth = -1
        self.first: Optional[int] = None

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        if self.first is None:
            self.first = done  # rows an earlier run copied do not count towards the rate
        fraction = done / self.total if self.total else 1.0
        rate = (done - self.first) / max(time.monotonic() - self.started, 1e-6)
        width = 30
        bar = "#" * int(fraction * width) + "." * (width - int(fraction * width))
        line = "[{}] {:5.1f}% {:,}/{:,} rows, {:,.0f} rows/s".format(bar, 100 * fraction, done, self.total, rate)
        if self.tty:
            self.stream.write("\r" + line)
            self.stream.flush()
        elif int(fraction * 10) > self.shown_tenth:
            self.shown_tenth = int(fraction * 10)
            self.stream.write(line + "\n")
            self.stream.flush()

    def finish(self) -> None:
        if self.tty:
            self.stream.write("\n")


# -- the copy ---------------------------------------------------------------------


def copy(source: str, dest: str, settings: Any, batch_rows: int = 10_000, append: bool = False,
         bad_values: str = "refuse", progress: bool = True, out: IO[str] = sys.stderr) -> Dict[str, Any]:
    """Copy ``source`` into ``dest`` (see the module's docstring); return a summary; :class:`CopyError` on a problem."""
    src, dst = _side(source, settings), _side(dest, settings)
    if src.name() == dst.name():
        raise CopyError("SOURCE and DEST are the same database")
    try:
        src_columns = src.open(write=False)
        dst_columns = dst.open(write=True)
        return _copy(src, dst, src_columns, dst_columns, batch_rows, append, bad_values, progress, out)
    finally:
        src.close()
        dst.close()


def _copy(
    src: _Side, dst: _Side, src_columns: Dict[str, str], dst_columns: Dict[str, str], batch_rows: int,
    append: bool, bad_values: str, progress: bool, out: IO[str],
) -> Dict[str, Any]:
    key = src.name()
    dst.begin()
    dst.connection.execute(
        "CREATE TABLE IF NOT EXISTS {} (source TEXT PRIMARY KEY, done_rowid BIGINT NOT NULL, "
        "base_rows BIGINT NOT NULL, finished INTEGER NOT NULL DEFAULT 0)".format(PROGRESS_TABLE)
    )
    dst.commit()
    cursor = dst.connection.cursor()
    cursor.execute(dst.sql("SELECT done_rowid, base_rows, finished FROM {} WHERE source = ?".format(PROGRESS_TABLE)), (key,))
    found = cursor.fetchone()
    if isinstance(dst, _Postgres):
        dst.commit()
    if found is None:
        base = dst.count(dst.table)
        if base and not append:
            raise CopyError(
                "{} already holds {:,} row(s) that were not copied from {}; give --append to add to them".format(
                    dst.name(), base, key)
            )
        dst.begin()
        dst.insert(PROGRESS_TABLE, ["source", "done_rowid", "base_rows"], [(key, 0, base)])
        dst.commit()
        done_rowid, resumed = 0, False
    else:
        done_rowid, base = int(found[0]), int(found[1])
        resumed = True
    # columns: every source column the destination lacks, with its type
    names = [n for n in src_columns if n != "rowid"]
    types: Dict[str, str] = {}
    dst.begin()
    for name in names:
        if name not in dst_columns:
            declared = _map_type(src_columns[name], isinstance(dst, _Postgres))
            dst.add_column(name, declared)
            dst_columns[name] = declared
        types[name] = dst_columns[name]
    dst.commit()
    total = src.count(src.table)
    already = src.count(src.table, src.sql("WHERE {} <= ?".format(src.rowid)), (done_rowid,)) if done_rowid else 0
    bar = Progress(total, out, progress)
    copied = already
    nulled = 0
    bar.update(copied)
    converters = [dst.converter(types[name]) for name in names]
    select = src.sql("SELECT {}, {} FROM {} WHERE {} > ? ORDER BY {} LIMIT ?".format(
        src.rowid, ", ".join(quote_identifier(n) for n in names), src.table, src.rowid, src.rowid))
    while True:
        cursor = src.connection.cursor()
        cursor.execute(select, (done_rowid, batch_rows))
        batch = cursor.fetchall()
        if isinstance(src, _Postgres):
            src.commit()
        if not batch:
            break
        rows = []
        for row in batch:
            values = []
            for name, convert, value in zip(names, converters, row[1:]):
                try:
                    values.append(convert(value))
                except ValueError as e:
                    if bad_values != "null":
                        raise CopyError(
                            "row {} of {}, column {}: {} (PostgreSQL columns hold one type; "
                            "--bad-values null copies such values as NULL)".format(row[0], key, name, e)
                        )
                    values.append(None)
                    nulled += 1
            rows.append(values)
        done_rowid = int(batch[-1][0])
        dst.begin()
        dst.insert(dst.table, names, rows)
        dst.connection.execute(dst.sql("UPDATE {} SET done_rowid = ? WHERE source = ?".format(PROGRESS_TABLE)), (done_rowid, key))
        dst.commit()
        copied += len(rows)
        bar.update(copied)
    bar.finish()
    # co2logd's own tables: small; whole, skipping what an earlier run copied
    own = {}
    dst.begin()
    for table, keys, columns in OWN_TABLES:
        if not src.has_table(table):
            continue
        cursor = src.connection.cursor()
        cursor.execute("SELECT {} FROM {}".format(", ".join(columns), table))
        rows = [[_plain(v) for v in r] for r in cursor.fetchall()]
        if rows:
            dst.insert(table, columns, rows, conflict_keys=keys)
        own[table] = len(rows)
    if isinstance(dst, _Postgres):
        dst.fix_sequences()
    dst.commit()
    if isinstance(src, _Postgres):
        src.commit()
    # verify
    in_dest = dst.count(dst.table) - base
    if in_dest != total:
        raise CopyError("verification failed: {} has {:,} rows, {} has {:,} copied ones".format(key, total, dst.name(), in_dest))
    for table, n in own.items():
        if dst.count(table) < n:
            raise CopyError("verification failed: {} lacks rows of {}".format(dst.name(), table))
    dst.begin()
    dst.connection.execute(dst.sql("UPDATE {} SET finished = 1 WHERE source = ?".format(PROGRESS_TABLE)), (key,))
    dst.commit()
    return {"rows": total, "resumed": resumed, "own": own, "nulled": nulled}


def _plain(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return value


def _map_type(declared: str, to_postgres: bool) -> str:
    if to_postgres:
        return SQLITE_TO_PG.get((declared or "").upper(), "text")
    return PG_TO_SQLITE.get(declared, "")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; exit status 0 when every row was copied and verified."""
    from co2logd.settings import Settings, SettingsError

    parser = argparse.ArgumentParser(
        prog="python -m co2logd.copy",
        description="Copy co2logd's data table and own tables from SOURCE to DEST (each a SQLite file or a postgresql:// URL).",
    )
    parser.add_argument("source")
    parser.add_argument("dest")
    parser.add_argument("--config", help="co2logserver-style config file (for DATA_TABLE_NAME and the column names)")
    parser.add_argument("--batch-rows", type=int, default=10_000, help="rows per destination transaction (default 10000)")
    parser.add_argument("--append", action="store_true", help="copy even though DEST already holds other rows")
    parser.add_argument("--bad-values", choices=("refuse", "null"), default="refuse",
                        help="a value that does not fit its PostgreSQL column: stop (default) or copy NULL")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    from co2logd.proctitle import hide_passwords

    hide_passwords()
    try:
        settings = Settings.from_config_file(args.config) if args.config else Settings.from_values({})
        if args.batch_rows < 1:
            raise CopyError("--batch-rows must be at least 1")
        summary = copy(args.source, args.dest, settings, args.batch_rows, args.append, args.bad_values, not args.quiet)
    except (CopyError, SettingsError) as e:
        sys.stderr.write("co2logd.copy: {}\n".format(e))
        return 1
    except Exception as e:  # a database error: one line, never a URL with its password
        from co2logd.dburl import redact

        sys.stderr.write("co2logd.copy: {}: {}\n".format(type(e).__name__, redact(" ".join(str(e).split()))))
        return 1
    sys.stdout.write(
        "Copied and verified {:,} rows{}{}; own tables: {}\n".format(
            summary["rows"], " (resumed)" if summary["resumed"] else "",
            ", {} values copied as NULL".format(summary["nulled"]) if summary["nulled"] else "",
            ", ".join("{} {}".format(t, n) for t, n in summary["own"].items()) or "none",
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
