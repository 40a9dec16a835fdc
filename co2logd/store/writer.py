"""
The group-commit writer.

Uploads that arrive while a transaction is being written wait in a queue
and all go into the next transaction, each inside a SAVEPOINT of its own,
so one fsync covers them all and one upload's failure (its ALTER TABLE
included) is undone alone.  At most one write transaction is in flight;
every caller's Deferred fires after COMMIT.  A bounded queue makes
:attr:`GroupWriter.busy` true when the writer falls behind; once
:meth:`GroupWriter.stop` was called, writes fail at once.

Rows are inserted by :class:`RowInserter`, up to :data:`ROWS_PER_STATEMENT`
rows per ``INSERT … VALUES (…), (…)`` statement, the values every row shares
bound once per statement: far fewer statement steps, and interpreter-lock
hand-offs, than one ``executemany`` step per row.
"""

from __future__ import annotations

import sqlite3
import time
from itertools import chain
from typing import Any, Callable, Dict, List, Mapping, Optional, Protocol, Sequence, Tuple

from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure


from co2logd.store.names import quote_identifier
from co2logd.store import freshness, outbox, staging
from co2logd.store.observers import observed
from co2logd.store.interfaces import DatabaseLost, StoreBusy, StoreError, WriteObserver, WriteRequest
from co2logd.store.sqlite import declared_type, sql_value

log = Logger()

#: rows bound per INSERT statement (fewer when SQLite's variable limit says so)
ROWS_PER_STATEMENT = 100


class WriterHost(Protocol):
    """What the writer asks of the store it writes for (the store's other parts: indexes, file checks)."""

    table: str
    columns: Dict[str, str]

    @property
    def lost(self) -> Optional[str]:
        """Why writes are refused for good, or None."""

    def group_began(self, cursor: sqlite3.Cursor) -> Any:
        """In the transaction, before the uploads: what :meth:`group_written` needs."""

    def group_written(self, cursor: sqlite3.Cursor, began: Any, columns: Dict[str, str]) -> Optional[int]:
        """
        In the transaction, after the uploads (a savepoint of its own: may
        fail alone).  A rowid means: rows up to it are indexed after the
        commit (:meth:`indexed_through`), and big uploads answered then.
        """

    def indexed_through(self, row: int) -> "Deferred[None]":
        """After a commit: fire once the rows up to ``row`` are indexed (failures logged, not raised)."""

    def before_commit(self, connection: sqlite3.Connection) -> None:
        """Raise to roll the whole group back (the database file is no longer ours)."""

    def after_group(self, outcome: Any, results: List[Any]) -> None:
        """On the reactor: what the group's transaction came to."""


class RowInserter:
    """
    Inserts rows with statements of up to :data:`ROWS_PER_STATEMENT` rows,
    built once per column list and row count.  ``fixed`` values (the same in
    every row) are bound once per statement as numbered parameters that
    every row of it names.
    """

    def __init__(self, table: str, max_variables: int):
        self.table = table
        self.max_variables = max_variables
        self._statements: Dict[Tuple[Tuple[str, ...], int, int], str] = {}

    def insert(self, cursor: sqlite3.Cursor, fixed: Sequence[Tuple[str, Any]], columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """Insert ``rows`` of ``columns``, each with the ``fixed`` columns' values too."""
        width = len(columns)
        if rows and width and set(map(len, rows)) != {width}:
            # flattened, a short row and a long one would shift values into other columns
            raise sqlite3.ProgrammingError("Every row needs {} values, one per column".format(width))
        names = tuple([name for name, _ in fixed] + list(columns))
        shared = [sql_value(value) for _, value in fixed]
        per = ROWS_PER_STATEMENT
        if width:
            per = max(1, min(per, (self.max_variables - len(shared)) // width))
        for start in range(0, len(rows), per):
            chunk = rows[start: start + per]
            sql = self._statement(names, len(shared), len(chunk))
            if width:
                cursor.execute(sql, shared + list(chain.from_iterable(chunk)))
            else:
                cursor.execute(sql, shared)

    def _statement(self, names: Tuple[str, ...], shared: int, count: int) -> str:
        key = (names, shared, count)
        sql = self._statements.get(key)
        if sql is None:
            if len(self._statements) >= 1000:
                self._statements.clear()  # a bound, not an LRU: column lists and row counts are few
            width = len(names) - shared
            head = ["?{}".format(k + 1) for k in range(shared)]
            values = ", ".join(
                "({})".format(", ".join(head + ["?{}".format(shared + r * width + k + 1) for k in range(width)]))
                for r in range(count)
            )
            sql = self._statements[key] = "INSERT INTO {} ({}) VALUES {}".format(
                self.table, ", ".join(quote_identifier(c) for c in names), values
            )
        return sql


def max_variables(connection: sqlite3.Connection) -> int:
    """SQLite's limit on bound parameters per statement (999 where Python cannot ask)."""
    getlimit = getattr(connection, "getlimit", None)
    if getlimit is None:
        return 999
    return int(getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))


class _Upload:
    """One caller's write waiting in the queue, and the Deferred it gets."""

    __slots__ = ("request", "deferred", "stage")

    def __init__(self, request: WriteRequest):
        self.request = request
        self.deferred: "Deferred[int]" = Deferred()
        self.stage: Optional[staging.Stage] = None  # a big upload's staged rows (co2logd.store.staging)


def _answer(_: None, deferred: "Deferred[int]", result: int) -> None:
    deferred.callback(result)


class GroupWriter:
    """The queue, the transaction per group and the savepoint per upload (see the module)."""

    def __init__(
        self,
        pool: adbapi.ConnectionPool,
        host: WriterHost,
        queue_limit: int,
        timer: Callable[[], float] = time.perf_counter,
    ):
        self.pool = pool
        self.host = host
        self.queue_limit = queue_limit
        self.timer = timer  # for the observers' latencies
        #: transactions written, uploads in them, the largest group, writes refused as busy
        self.stats: Dict[str, int] = {"transactions": 0, "uploads": 0, "largest_group": 0, "busy": 0}
        self._observers: List[WriteObserver] = []
        self._queue: List[_Upload] = []
        self._queued_rows = 0
        self._staging_rows = 0  # rows of big uploads being staged, not yet queued
        self._staging = 0  # big uploads being staged
        self._writing = False
        self._stopping = False
        self._drained: List["Deferred[None]"] = []
        self._replay_seen: Dict[str, float] = {}  # replay numbers committed by this process
        self._inserter: Optional[RowInserter] = None

    @property
    def busy(self) -> bool:
        """True while the writer is behind: new uploads should be refused (503) until it catches up."""
        return self._queued_rows + self._staging_rows >= self.queue_limit

    def add_observer(self, observer: WriteObserver) -> None:
        """Call ``observer(seconds, rows or None)`` on the reactor after every write is answered."""
        self._observers.append(observer)

    def write(self, request: WriteRequest) -> "Deferred[int]":
        """Queue one upload; fire with its row count after COMMIT (see :meth:`co2logd.store.IStore.write`)."""
        started = self.timer()
        if self._stopping:
            return self._observed(started, fail(StoreError("The store is stopping: the write was not queued")))
        if self.host.lost is not None:
            return self._observed(started, fail(DatabaseLost(self.host.lost)))
        if self.busy:
            self.stats["busy"] += 1
            return self._observed(started, fail(StoreBusy("{} rows are waiting for the database".format(
                self._queued_rows + self._staging_rows))))
        upload = _Upload(request)
        if len(request.rows) > staging.STAGE_ABOVE_ROWS and request.columns:
            self._stage(upload)  # a big upload: copied in short steps first, then queued
        else:
            self._enqueue(upload)
        return self._observed(started, upload.deferred)

    def _enqueue(self, upload: _Upload) -> None:
        self._queue.append(upload)
        self._queued_rows += len(upload.request.rows) or 1
        if not self._writing:
            self._flush()

    def _stage(self, upload: _Upload) -> None:
        """Copy a big upload's rows into a TEMP table, one short interaction per chunk, then queue it."""
        rows = upload.request.rows
        upload.stage = stage = staging.Stage(len(upload.request.columns))
        self._staging_rows += len(rows)
        self._staging += 1

        def done() -> None:
            self._staging_rows -= len(rows)
            self._staging -= 1

        def step(_: Any = None) -> None:
            d = self.pool.runWithConnection(stage.step, rows, staging.STAGE_CHUNK_ROWS)
            d.addCallbacks(stepped, failed)

        def stepped(more: bool) -> None:
            if more:
                step()  # adbapi fires from the reactor loop: no recursion builds up
            else:
                done()
                self._enqueue(upload)

        def failed(failure: Failure) -> None:
            done()
            self.pool.runWithConnection(stage.drop).addErrback(lambda _: None)
            upload.deferred.errback(failure)
            self._maybe_drained()

        step()

    def _maybe_drained(self) -> None:
        """Fire the waits of :meth:`stop` once nothing is written, queued or staged."""
        if self._writing or self._queue or self._staging:
            return
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

    def stop(self) -> "Deferred[None]":
        """Refuse writes from now on; fire once the group in flight (if any) is committed or failed."""
        self._stopping = True
        done: "Deferred[None]" = Deferred()
        if self._writing or self._staging:  # a big upload being staged was accepted: it is written first
            self._drained.append(done)
        else:
            done.callback(None)
        return done

    # -- replay numbers committed by this process ------------------------------

    def replay_last(self, key: str) -> Optional[float]:
        """The last number committed for ``key`` by this process, or None (then the transaction decides)."""
        return self._replay_seen.get(key)

    def _replay_committed(self, key: str, number: float) -> None:
        if len(self._replay_seen) >= 10_000:
            self._replay_seen.clear()  # a bound: forgetting only moves a refusal into the transaction
        self._replay_seen[key] = number

    # -- on the reactor ----------------------------------------------------------

    def _observed(self, started: float, d: "Deferred[int]") -> "Deferred[int]":
        return observed(d, self._observers, self.timer, started)

    def _flush(self) -> None:
        group, self._queue = self._queue, []
        self._queued_rows = 0
        self._writing = True
        d = self.pool.runWithConnection(self._write_group, group, self.host.columns)
        d.addBoth(self._written, group)

    def _written(self, outcome: Any, group: List[_Upload]) -> None:
        """Back on the reactor: update the column cache, fire every caller, start the next group."""
        self.host.after_group(outcome, [] if isinstance(outcome, Failure) else outcome[0])
        if isinstance(outcome, Failure):
            from co2logd.store.watch import is_disk_error

            if outcome.check(DatabaseLost) or (outcome.value is not None and is_disk_error(outcome.value)):  # said once more by /health: no traceback
                log.error("A write transaction of {uploads} uploads failed: {why}", uploads=len(group), why=str(outcome.value))
            else:
                log.failure("A write transaction of {uploads} uploads failed", outcome, uploads=len(group))
            results: List[Any] = [outcome] * len(group)
            unindexed = None
        else:
            results, added, unindexed = outcome
            if added:
                self.host.columns = dict(self.host.columns, **added)
            stats = self.stats
            stats["transactions"] += 1
            stats["uploads"] += len(group)
            stats["largest_group"] = max(stats["largest_group"], len(group))
        # a big upload is answered once its rows are also indexed (short transactions after the
        # commit), so a plot loaded after the receipt shows them; small ones at once
        indexing = self.host.indexed_through(unindexed) if unindexed else None
        # callers that write again from their callbacks join the next group
        for upload, result in zip(group, results):
            if isinstance(result, Failure):
                upload.deferred.errback(result)
            else:
                step = upload.request.replay
                if step is not None:
                    self._replay_committed(step.key, step.number)
                if indexing is not None and len(upload.request.rows) > staging.STAGE_ABOVE_ROWS:
                    indexing.addCallback(_answer, upload.deferred, result)
                else:
                    upload.deferred.callback(result)
        self._writing = False
        if self._queue:
            self._flush()
        else:
            self._maybe_drained()

    # -- in the pool's thread ------------------------------------------------------

    def _write_group(
        self, connection: sqlite3.Connection, group: List[_Upload], known: Mapping[str, str]
    ) -> Tuple[List[Any], Dict[str, str], Optional[int]]:
        """
        One transaction, a savepoint per upload: (row count or Failure per
        upload, columns added and committed, the rowid up to which rows are
        left to be indexed after the commit or None).
        """
        if self._inserter is None:
            self._inserter = RowInserter(self.host.table, max_variables(connection))
        cursor = connection.cursor()
        results: List[Any] = []
        added: Dict[str, str] = {}
        unindexed: Optional[int] = None
        try:
            cursor.execute("BEGIN IMMEDIATE")
            began = self.host.group_began(cursor)
            for upload in group:
                cursor.execute("SAVEPOINT upload")
                try:
                    mine = self._write_one(cursor, upload.request, known, added, upload.stage)
                except Exception:
                    failure = Failure()
                    if not connection.in_transaction:
                        raise  # SQLite gave up the whole transaction (disk full, I/O error)
                    cursor.execute("ROLLBACK TO upload")
                    cursor.execute("RELEASE upload")
                    results.append(failure)
                else:
                    cursor.execute("RELEASE upload")
                    added.update(mine)
                    results.append(len(upload.request.rows))
            cursor.execute("SAVEPOINT indexes")
            try:
                unindexed = self.host.group_written(cursor, began, dict(known, **added))
            except sqlite3.Error:
                if not connection.in_transaction:
                    raise
                # the uploads stay acknowledged; maintenance indexes these rows later
                log.failure("Indexing measurement times failed")
                cursor.execute("ROLLBACK TO indexes")
            cursor.execute("RELEASE indexes")
            self.host.before_commit(connection)  # never acknowledge into a deleted or replaced file
            cursor.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise
        finally:
            cursor.close()
            for upload in group:
                if upload.stage is not None:  # published or failed: its staged rows are done with
                    upload.stage.drop(connection)
        return results, added, unindexed

    def _write_one(
        self, cursor: sqlite3.Cursor, request: WriteRequest, known: Mapping[str, str], added: Mapping[str, str],
        stage: Optional[staging.Stage] = None,
    ) -> Dict[str, str]:
        if request.idempotency is not None:  # the key first: a repeat racing the first copy is a repeat, not a replay
            freshness.take_key(cursor, request.idempotency)
        if request.replay is not None:
            freshness.advance(cursor, request.replay)
        mine: Dict[str, str] = {}
        for name, python_type in request.new_columns.items():
            if name in known or name in added or name in mine:
                continue  # another upload added it since this one was normalised
            declared = declared_type(python_type)
            cursor.execute("ALTER TABLE {} ADD COLUMN {} {}".format(self.host.table, quote_identifier(name), declared))
            mine[name] = declared
        if stage is not None:  # a big upload's rows, staged in short steps: one INSERT … SELECT
            stage.publish(cursor, self.host.table, request.fixed, request.columns)
        elif request.rows:
            assert self._inserter is not None
            self._inserter.insert(cursor, request.fixed, request.columns, request.rows)
        if request.outbox:
            outbox.queue(cursor, request.queued_at, request.outbox)
        return mine
