"""
Large uploads staged in short steps, then made visible in one commit (issue 10).

Uploads share one writer connection, and a waiting upload waits for the
whole transaction in front of it: inserting a day of 1 Hz readings (28,800
rows per box) with its measurement-time index held the writer for 1-3 s on
the benchmark's busy machine, so every single-row upload behind it waited as
long.  An upload of more than :data:`STAGE_ABOVE_ROWS` rows is therefore
first copied into a ``TEMP`` table of the writer's connection,
:data:`STAGE_CHUNK_ROWS` rows per interaction (other uploads get the
connection in between), and then joins the write queue like any upload:
its rows enter the data table in the group's transaction by one
``INSERT … SELECT`` from the staged rows, in its own savepoint, and its
Deferred fires after that COMMIT (and, like every big upload, once its rows
are indexed by measurement time in short transactions after it, see
:meth:`co2logd.store.rollups.Rollups.indexed_through`).

Why this keeps every promise of the write path:

* **Atomic, and never half visible.**  A ``TEMP`` table belongs to its
  connection: no reader (of co2logd or any other program) can see it, and
  the data table receives the whole upload in one transaction or nothing.
* **Acknowledged only after commit.**  The caller's Deferred is the same
  one a small upload gets; staging alone acknowledges nothing.
* **Crash-safe.**  A ``TEMP`` table lives in a scratch file SQLite deletes:
  a crash (or a lost connection) while staging or publishing leaves nothing
  of the upload in the database; its sender, never acknowledged, sends it again.
* **Bounded.**  Staged rows count against ``WRITE_QUEUE_MAX_ROWS`` until
  they are published, like queued rows.

The order of commits changes: small uploads that arrive while a big one is
staged are committed before it.  No SQL here takes user input: table names
are numbered, columns are positional, values are bound.
"""

from __future__ import annotations

import itertools
import sqlite3
from itertools import chain
from typing import Any, List, Sequence, Tuple

from co2logd.store.names import quote_identifier
from co2logd.store.sqlite import sql_value

#: uploads of more rows than this are staged first
STAGE_ABOVE_ROWS = 2_000
#: rows copied into the TEMP table per interaction on the writer's connection
STAGE_CHUNK_ROWS = 1_000

_names = itertools.count(1)


class Stage:
    """Where one upload's rows wait: a TEMP table on the writer's connection (positional columns)."""

    __slots__ = ("table", "width", "staged")

    def __init__(self, width: int):
        self.table = "co2logd_stage_{}".format(next(_names))
        self.width = width
        self.staged = 0  # rows copied so far

    def step(self, connection: sqlite3.Connection, rows: Sequence[Sequence[Any]], chunk_rows: int) -> bool:
        """Copy the next ``chunk_rows`` rows (one short transaction on the TEMP database); True while rows remain."""
        if self.staged == 0:
            columns = ", ".join("c{}".format(i) for i in range(self.width)) or "c0"
            connection.execute("CREATE TEMP TABLE {} ({})".format(self.table, columns))
        chunk = rows[self.staged: self.staged + chunk_rows]
        if self.width and set(map(len, chunk)) != {self.width}:
            raise sqlite3.ProgrammingError("Every row needs {} values, one per column".format(self.width))
        connection.execute("BEGIN")  # deferred: only the TEMP database is written, the data file stays unlocked
        try:
            if self.width:
                per = max(1, 900 // self.width)  # under SQLite's oldest limit of 999 bound values
                for start in range(0, len(chunk), per):
                    part = chunk[start: start + per]
                    connection.execute(
                        "INSERT INTO temp.{} VALUES {}".format(
                            self.table, ", ".join(["({})".format(", ".join("?" * self.width))] * len(part))),
                        list(chain.from_iterable(part)),
                    )
            else:
                connection.executemany("INSERT INTO temp.{} VALUES (NULL)".format(self.table), [()] * len(chunk))
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise
        self.staged += len(chunk)
        return self.staged < len(rows)

    def publish(self, cursor: sqlite3.Cursor, table: str, fixed: Sequence[Tuple[str, Any]], columns: Sequence[str]) -> None:
        """In the group's transaction: the staged rows into ``table``, in the order they were staged."""
        names = [name for name, _ in fixed] + list(columns)
        values = ["?"] * len(fixed) + ["c{}".format(i) for i in range(len(columns))]
        cursor.execute(
            "INSERT INTO {} ({}) SELECT {} FROM temp.{} ORDER BY rowid".format(
                table, ", ".join(quote_identifier(n) for n in names), ", ".join(values), self.table),
            [sql_value(value) for _, value in fixed],
        )

    def drop(self, connection: sqlite3.Connection) -> None:
        """Drop the TEMP table (outside any transaction); a broken connection took it along already."""
        try:
            connection.execute("DROP TABLE IF EXISTS temp.{}".format(self.table))
        except sqlite3.Error:
            pass


def stage_tables(connection: sqlite3.Connection) -> List[str]:
    """Names of the staging tables on a connection (for tests)."""
    return [name for (name,) in connection.execute(
        "SELECT name FROM sqlite_temp_master WHERE type = 'table' AND name LIKE 'co2logd_stage_%'")]
