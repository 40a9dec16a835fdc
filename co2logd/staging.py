"""
Large uploads staged in short steps, then made visible in one commit (issue 10).

Uploads share one writer connection, and a waiting upload waits for the
whole transaction in front of it: inserting a day of 1 Hz readings (28,800
rows per box) from Python held the writer for about 0.8 s on the
benchmark's busy machine, so every single-row upload behind it waited as
long.  An upload of more than :attr:`StagedWrites.stage_above_rows` rows is
therefore first copied into a ``TEMP`` table of the writer's connection,
:attr:`StagedWrites.stage_chunk_rows` rows per interaction (a few ms each;
other uploads get the connection in between), and then joins the write
queue like any upload: its rows enter the data table in the group's
transaction by one ``INSERT … SELECT`` from the staged rows (about a
quarter of the executemany's time), in its own savepoint, and its
Deferred fires after that COMMIT.

Why this keeps every promise of the write path:

* **Atomic, and never half visible.**  A ``TEMP`` table belongs to its
  connection: no reader (of co2logd or any other program) can see it, and
  the data table receives the whole upload in one transaction or nothing.
* **Acknowledged only after commit.**  The caller's Deferred is the same
  one a small upload gets; staging alone acknowledges nothing.
* **Crash-safe.**  A ``TEMP`` table lives in a scratch file SQLite deletes:
  a crash (or a lost connection) while staging or publishing leaves nothing
  of the upload in the database, and its sender, never acknowledged, sends it again.
* **Bounded.**  Staged rows count against ``WRITE_QUEUE_MAX_ROWS`` until
  they are published, like queued rows.

The order of commits changes: small uploads that arrive while a big one is
staged are committed before it.  No SQL here takes user input: table names
are numbered, columns are placeholders.
"""

from __future__ import annotations

import itertools
from typing import Any, List, Optional

from twisted.internet.defer import Deferred

from co2logd.plot_queries import _MORE

_names = itertools.count(1)


class Stage:
    """Where one upload's rows wait: a TEMP table on the writer's connection."""

    __slots__ = ("table", "width", "staged")

    def __init__(self, width: int):
        self.table = "co2logd_stage_{}".format(next(_names))
        self.width = width
        self.staged = 0  # rows copied so far

    def create_sql(self) -> str:
        return "CREATE TEMP TABLE {} ({})".format(self.table, ", ".join("c{}".format(i) for i in range(self.width)))

    def insert_sql(self) -> str:
        return "INSERT INTO temp.{} VALUES ({})".format(self.table, ", ".join("?" * self.width))

    def select_sql(self) -> str:
        """The staged rows in their order (``rowid``: the order they were staged)."""
        return "SELECT {} FROM temp.{} ORDER BY rowid".format(
            ", ".join("c{}".format(i) for i in range(self.width)), self.table)

    def drop_sql(self) -> str:
        return "DROP TABLE IF EXISTS temp.{}".format(self.table)


class StagedWrites:
    """The staging half of :class:`co2logd.store.Store`'s writer (a mixin: uses its pool and queue)."""

    #: uploads of more rows than this are staged first
    stage_above_rows = 2_000
    #: rows copied per staging interaction on the writer's connection
    stage_chunk_rows = 1_000

    def _stage_then_queue(self, upload) -> None:
        """Copy ``upload``'s rows into a TEMP table in short steps, then queue it; failures fail its Deferred."""
        upload.stage = Stage(len(upload.columns))
        self._staging_rows += len(upload.rows)
        self._staging += 1
        done: Deferred = self._in_steps(self.pool, self._stage_step, upload)

        def staged(_) -> None:
            self._staging_rows -= len(upload.rows)
            self._staging -= 1
            self._enqueue(upload)

        def failed(failure) -> None:
            self._staging_rows -= len(upload.rows)
            self._staging -= 1
            self._forget_stage(upload)
            upload.deferred.errback(failure)
            self._maybe_drained()

        done.addCallbacks(staged, failed)

    def _stage_step(self, connection, upload):
        """One short transaction on the TEMP database: the next chunk of rows."""
        stage: Stage = upload.stage
        rows = upload.rows
        if stage.staged == 0:
            connection.execute(stage.create_sql())
        chunk = rows[stage.staged: stage.staged + self.stage_chunk_rows]
        connection.execute("BEGIN")  # deferred: only the TEMP database is written, the data file stays unlocked
        try:
            connection.executemany(stage.insert_sql(), chunk)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise
        stage.staged += len(chunk)
        return _MORE if stage.staged < len(rows) else None

    def _forget_stage(self, upload) -> None:
        """Drop an upload's TEMP table (after its group committed or failed); a gone connection took it along."""
        stage: Optional[Stage] = getattr(upload, "stage", None)
        if stage is None or self._closed:
            return

        def drop(connection) -> None:
            connection.execute(stage.drop_sql())

        self.pool.runWithConnection(drop).addErrback(lambda f: None)  # harmless: the table dies with its connection

    @staticmethod
    def staged_rows_sql(upload) -> Optional[str]:
        """The SELECT that reads a staged upload's rows, or None for an upload written from its rows."""
        stage: Optional[Stage] = getattr(upload, "stage", None)
        return None if stage is None else stage.select_sql()


def stage_tables(connection) -> List[Any]:
    """Names of the staging tables on a connection (for tests)."""
    return [name for (name,) in connection.execute(
        "SELECT name FROM sqlite_temp_master WHERE type = 'table' AND name LIKE 'co2logd_stage_%'")]
