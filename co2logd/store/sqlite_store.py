"""
The SQLite store: one file behind ``twisted.enterprise.adbapi``, providing
:class:`~co2logd.store.IStore`.

:class:`Store` writes uploads (new columns, rows and outbox entries,
atomically, committed before the Deferred fires) and answers queries.
Uploads that arrive together share one transaction (group commit), each in
a savepoint of its own; a bounded queue makes :attr:`Store.busy` true when
the writer falls behind.  The column cache means no schema query per upload.
The schema and its upgrades are in :mod:`co2logd.store.schema`; the
dashboard's reads and the plot rollups in :mod:`co2logd.plot_queries` (a
mixin of :class:`Store`).  Identifiers come from
:func:`co2logd.names.quote_identifier` (checked names only); values are
always bound parameters.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from zope.interface import implementer

from co2logd.store.schema import (
    DEAD_LETTER_TABLE,
    IDEMPOTENCY_TABLE,
    OUTBOX_TABLE,
    REPLAY_TABLE,
    prepare_database,
)
from co2logd.store.sqlite import configure_connection, configure_reader, declared_type, sql_value, transaction
from co2logd.store.watch import DatabaseWatch, is_disk_error
from co2logd.names import quote_identifier
from co2logd.rowid import rowid_alias
from co2logd.plot_queries import PlotQueries
from co2logd.store.interfaces import (
    DatabaseLost,
    DuplicateUpload,
    IdempotencyClaim,
    IRowStream,
    IStore,
    Query,
    ReplayAdvance,
    ReplayRefused,
    StoreBusy,
    StoreError,
    WriteObserver,
    WriteRequest,
)

log = Logger()


@implementer(IStore)
class Store(PlotQueries, DatabaseWatch, Service):
    """
    Writes and reads the data table through one adbapi connection.

    With a ``clock``, a heartbeat write runs every ``HEALTH_HEARTBEAT_SECONDS``
    (see :mod:`co2logd.store.watch`, which also refuses writes into a database
    file that was deleted or replaced).

    ``columns`` is the cached schema of the data table (name → declared type),
    kept current by :meth:`write`; readers on the reactor thread may use it
    without a query.
    """

    name = "store"

    def __init__(
        self,
        path: str,
        settings,
        columns: Mapping[str, str],
        pool_factory: Callable[..., adbapi.ConnectionPool] = adbapi.ConnectionPool,
        clock: Optional[IReactorTime] = None,
    ):
        self.path = path
        self._watch_init(clock)
        self.settings = settings
        self.columns: Dict[str, str] = dict(columns)
        self.table = quote_identifier(settings.DATA_TABLE_NAME)
        #: how every query names the data table's rowid: a column called rowid may hide it
        self.rowid: str = rowid_alias(self.columns)
        self.queue_limit: int = settings.WRITE_QUEUE_MAX_ROWS
        self._queue: List[_Upload] = []
        self._queued_rows = 0
        self._writing = False
        self._drained: List[Deferred] = []
        self._insert_statements: Dict[Tuple[str, ...], str] = {}
        self._closed = False
        self._row_count = (0, 0)  # (last rowid counted, rows up to it) for row_count()
        self._wanted: List[str] = []  # columns whose rollups maintenance keeps (issue 10)
        self._index_sql: Dict[Any, Any] = {}  # measurement-time and rollup statements by column set (writer thread)
        self._maintaining: Optional[Deferred] = None
        if clock is None:
            from twisted.internet import reactor as clock
        self._maintenance_clock = clock  # the heartbeat runs only with a given clock; maintenance always
        self._maintenance: Optional[LoopingCall] = None
        self._replay_seen: Dict[str, float] = {}  # replay counters committed by this process
        self._observers: List[WriteObserver] = []
        self._stopping = False
        self.timer: Callable[[], float] = time.perf_counter  # for the observers' latencies
        #: transactions written, uploads in them, the largest group, writes refused as busy
        self.write_stats: Dict[str, int] = {"transactions": 0, "uploads": 0, "largest_group": 0, "busy": 0}
        synchronous = settings.DB_SYNCHRONOUS

        def opened(connection) -> None:
            configure_connection(connection, synchronous)
            self._remember_files()  # the files this connection writes (watch.py)

        self.pool = pool_factory(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=opened,
            cp_noisy=False,
        )
        # dashboard and plot reads: their own read-only connections (issue 12, finding 8)
        self.read_pool = pool_factory(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=2,
            cp_openfun=configure_reader,
            cp_noisy=False,
        )

    @classmethod
    def open(cls, path: str, settings, clock: Optional[IReactorTime] = None) -> "Store":
        """Prepare the schema synchronously, then return a store on it (with a heartbeat when given a clock)."""
        return cls(path, settings, prepare_database(path, settings), clock=clock)

    def startService(self) -> None:
        """Start the heartbeat (when the store has a clock) and the maintenance timer (side table and rollups, see :meth:`maintain`)."""
        super().startService()
        self._start_heartbeat()
        self._maintenance = LoopingCall(self.maintain)
        self._maintenance.clock = self._maintenance_clock
        self._maintenance.start(self.maintenance_interval, now=True).addErrback(
            lambda f: log.failure("The maintenance timer stopped", f)
        )

    def stopService(self) -> Optional[Deferred]:
        """Close the pools once every queued write has been committed (or has failed); later writes fail at once."""
        super().stopService()
        self._stopping = True
        self._stop_heartbeat()
        if self._maintenance is not None and self._maintenance.running:
            self._maintenance.stop()
        waits = [self._maintaining] if self._maintaining is not None else []  # stops after its chunk
        if self._writing:
            drained: Deferred = Deferred()
            self._drained.append(drained)
            waits.append(drained)
        if not waits:
            self._close_pool()
            return None
        return DeferredList(waits).addCallback(lambda _: self._close_pool())

    def abandon(self) -> None:
        """Close the (unstarted) pool: start-up failed before the store ran."""
        self._close_pool()

    def _close_pool(self) -> None:
        self._closed = True
        for pool in (self.pool, self.read_pool):
            if pool.running:  # stopping twice (a test's cleanup after its own stop) is harmless
                pool.close()

    # -- writing ------------------------------------------------------------
    #
    # Group commit: uploads that arrive while a transaction is being written
    # wait in a queue and all go into the next transaction, each inside a
    # SAVEPOINT of its own, so one fsync covers them all and one upload's
    # failure (its ALTER TABLE included) is undone alone.  At most one write
    # transaction is in flight; every caller's Deferred fires after COMMIT.

    @property
    def busy(self) -> bool:
        """True while the writer is behind: new uploads should be refused (503) until it catches up."""
        return self._queued_rows >= self.queue_limit

    def add_observer(self, observer: WriteObserver) -> None:
        """Call ``observer(seconds, rows or None)`` on the reactor after every write is answered."""
        self._observers.append(observer)

    def write(self, request: WriteRequest) -> Deferred:
        """
        Add the new columns, insert the rows and queue the outbox entries of
        ``request`` atomically; fire with the number of rows once committed.
        On any error nothing of it is kept.  While the queue is full
        (:attr:`busy`) the Deferred fails at once with :class:`StoreBusy`;
        once :meth:`stopService` began, with :class:`StoreError`.
        """
        if self._stopping or self._closed:
            return self._observed(self.timer(), fail(StoreError("The store is stopping: the write was not queued")))
        if self.lost is not None:
            return self._observed(self.timer(), fail(DatabaseLost(self.lost)))
        if self._queued_rows >= self.queue_limit:
            self.write_stats["busy"] += 1
            return self._observed(
                self.timer(), fail(StoreBusy("{} rows are waiting for the database".format(self._queued_rows)))
            )
        upload = _Upload(request)
        self._queue.append(upload)
        self._queued_rows += len(request.rows) or 1
        if not self._writing:
            self._flush()
        return self._observed(self.timer(), upload.deferred)

    def _observed(self, started: float, d: Deferred) -> Deferred:
        if not self._observers:
            return d

        def answered(result: Any) -> Any:
            seconds = self.timer() - started
            rows = None if isinstance(result, Failure) else result
            for observer in self._observers:
                try:
                    observer(seconds, rows)
                except Exception:
                    log.failure("A write observer failed")
            return result

        return d.addBoth(answered)

    def _flush(self) -> None:
        group, self._queue = self._queue, []
        self._queued_rows = 0
        self._writing = True
        d = self.pool.runWithConnection(self._write_group, group, self.columns)
        d.addBoth(self._written, group)

    def _written(self, outcome, group: List["_Upload"]) -> None:
        """Back on the reactor: update the column cache, fire every caller, start the next group."""
        self._note_write(outcome, [] if isinstance(outcome, Failure) else outcome[0])
        if isinstance(outcome, Failure):
            if outcome.check(DatabaseLost) or is_disk_error(outcome.value):  # said once more by /health: no traceback
                log.error("A write transaction of {uploads} uploads failed: {why}", uploads=len(group), why=str(outcome.value))
            else:
                log.failure("A write transaction of {uploads} uploads failed", outcome, uploads=len(group))
            results = [outcome] * len(group)
        else:
            results, added = outcome
            if added:
                self.columns = dict(self.columns, **added)
            stats = self.write_stats
            stats["transactions"] += 1
            stats["uploads"] += len(group)
            stats["largest_group"] = max(stats["largest_group"], len(group))
        # callers that write again from their callbacks join the next group
        for upload, result in zip(group, results):
            if isinstance(result, Failure):
                upload.deferred.errback(result)
            else:
                advance = upload.request.replay
                if advance is not None:
                    self.replay_seen(advance.key, advance.number)
                upload.deferred.callback(result)
        self._writing = False
        if self._queue:
            self._flush()
        else:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def _write_group(self, connection, group: List["_Upload"], known: Mapping[str, str]):
        """
        In the pool's thread: one transaction, a savepoint per upload.
        Returns (row count or Failure per upload, columns added and committed).
        """
        cursor = connection.cursor()
        results: List[Any] = []
        added: Dict[str, str] = {}
        rowid = self._rowid()
        try:
            cursor.execute("BEGIN IMMEDIATE")
            (before,) = cursor.execute("SELECT coalesce(max({}), 0) FROM {}".format(rowid, self.table)).fetchone()
            filled = self._filled_to(cursor)
            for upload in group:
                cursor.execute("SAVEPOINT upload")
                try:
                    mine = self._write_one(cursor, upload, known, added)
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
            cursor.execute("SAVEPOINT mtime")
            try:
                self._index_new_rows(cursor, before, filled, dict(known, **added))
            except sqlite3.Error:
                if not connection.in_transaction:
                    raise
                # the uploads stay acknowledged; maintenance indexes these rows later
                log.failure("Indexing measurement times failed")
                cursor.execute("ROLLBACK TO mtime")
            cursor.execute("RELEASE mtime")
            self._check_files(connection)  # never acknowledge into a deleted or replaced file
            cursor.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise
        finally:
            cursor.close()
        return results, added

    def _write_one(self, cursor, upload: "_Upload", known: Mapping[str, str], added: Mapping[str, str]) -> Dict[str, str]:
        request = upload.request
        if request.idempotency is not None:  # the key first: a repeat racing the first copy is a repeat, not a replay
            _take_key(cursor, request.idempotency)
        if request.replay is not None:
            _advance(cursor, request.replay)
        mine: Dict[str, str] = {}
        for name, python_type in request.new_columns.items():
            if name in known or name in added or name in mine:
                continue  # another upload added it since this one was normalised
            declared = declared_type(python_type)
            cursor.execute("ALTER TABLE {} ADD COLUMN {} {}".format(self.table, quote_identifier(name), declared))
            mine[name] = declared
        if request.rows:
            if request.fixed:
                names = [name for name, _ in request.fixed] + list(request.columns)
                fixed = tuple(sql_value(value) for _, value in request.fixed)
                rows: Iterable[Sequence[Any]] = (fixed + tuple(row) for row in request.rows)
            else:
                names, rows = list(request.columns), request.rows
            cursor.executemany(self._insert_sql(names), rows)
        if request.outbox:
            queued_at = request.queued_at
            cursor.executemany(
                "INSERT INTO {} (queued_at, entry) VALUES (?, ?)".format(OUTBOX_TABLE),
                [(queued_at, entry) for entry in request.outbox],
            )
        return mine

    def _insert_sql(self, columns: Sequence[str]) -> str:
        """The INSERT statement for a column list, built once per distinct list."""
        key = tuple(columns)
        sql = self._insert_statements.get(key)
        if sql is None:
            if len(self._insert_statements) >= 1000:
                self._insert_statements.clear()  # a bound, not an LRU: distinct lists are few
            sql = self._insert_statements[key] = "INSERT INTO {} ({}) VALUES ({})".format(
                self.table, ", ".join(quote_identifier(c) for c in key), ", ".join("?" * len(key))
            )
        return sql

    # -- replay counters and idempotency keys (issue 7) ---------------------

    def replay_last(self, key: str) -> Optional[float]:
        """The last counter/timestamp committed for ``key`` by this process, or None (then the transaction decides)."""
        return self._replay_seen.get(key)

    def replay_seen(self, key: str, number: float) -> None:
        """Remember a committed counter/timestamp (bounded: forgetting only moves a refusal into the transaction)."""
        if len(self._replay_seen) >= 10_000:
            self._replay_seen.clear()
        self._replay_seen[key] = number

    def idempotency_lookup(self, key: str, cutoff: float) -> Deferred:
        """Fire with ``(digest, receipt JSON)`` for a key stored at or after ``cutoff``, or None."""

        def run(connection):
            return connection.execute(
                "SELECT digest, receipt FROM {} WHERE key = ? AND created_at >= ?".format(IDEMPOTENCY_TABLE), (key, cutoff)
            ).fetchone()

        return self.pool.runWithConnection(run)

    def idempotency_expire(self, cutoff: float) -> Deferred:
        """Delete idempotency keys stored before ``cutoff``; fire with how many went."""

        def run(connection):
            connection.execute("BEGIN IMMEDIATE")
            try:
                deleted = connection.execute(
                    "DELETE FROM {} WHERE created_at < ?".format(IDEMPOTENCY_TABLE), (cutoff,)
                ).rowcount
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.rollback()
                raise
            return deleted

        return self.pool.runWithConnection(run)

    # -- reading ------------------------------------------------------------

    def count(self) -> Deferred:
        """Number of rows in the data table."""
        return self._query_one("SELECT count(*) FROM {}".format(self.table))

    def _query_one(self, sql: str, params: Sequence[Any] = ()) -> Deferred:
        def run(connection):
            cursor = connection.execute(sql, params)
            try:
                return cursor.fetchone()[0]
            finally:
                cursor.close()

        return self.pool.runWithConnection(run)

    def select(self, query: "Query", chunk_rows: int = 500) -> Deferred:
        """
        Fire with a :class:`RowStream` over the query's rows, fetched a chunk
        at a time so an export is never held in memory whole.
        """
        sql, params = select_sql(query, self.table)
        stream = RowStream(self.pool, chunk_rows)

        def start(connection):
            stream.cursor = connection.execute(sql, params)
            stream.header = [d[0] for d in stream.cursor.description]
            return stream

        return self.pool.runWithConnection(start)

    def rowid_at(self, query: "Query", offset: int) -> Deferred:
        """
        The rowid of the row ``offset`` places into ``query``'s result (its
        ``columns`` must be ``[store.rowid]``), or None: where the next page of a
        paged download starts.
        """
        sql, params = select_sql(query, self.table)
        sql += " OFFSET ?"

        def run(connection):
            row = connection.execute(sql, params + [offset]).fetchone()
            return row[0] if row else None

        return self.pool.runWithConnection(run)

    # -- the OpenSenseMap outbox --------------------------------------------

    def outbox_fetch(self, limit: int) -> Deferred:
        """The oldest ``limit`` outbox entries as [(id, queued_at, entry)]."""
        return self.pool.runWithConnection(
            _fetch_all,
            "SELECT id, queued_at, entry FROM {} ORDER BY id LIMIT ?".format(OUTBOX_TABLE),
            (limit,),
        )

    def outbox_delete(self, ids: Iterable[int]) -> Deferred:
        """Remove delivered entries."""
        return self.pool.runWithConnection(
            _execute_many, "DELETE FROM {} WHERE id = ?".format(OUTBOX_TABLE), [(i,) for i in ids]
        )

    def outbox_dead_letter(self, failures: Iterable[Tuple[int, str]], failed_at: float) -> Deferred:
        """Move entries that the OpenSenseMap refused for good, with the reason."""
        failures = list(failures)

        def move(connection):
            with transaction(connection):
                connection.executemany(
                    "INSERT OR REPLACE INTO {dead} (id, queued_at, failed_at, entry, reason) "
                    "SELECT id, queued_at, ?, entry, ? FROM {outbox} WHERE id = ?".format(
                        dead=DEAD_LETTER_TABLE, outbox=OUTBOX_TABLE
                    ),
                    [(failed_at, reason, i) for i, reason in failures],
                )
                connection.executemany(
                    "DELETE FROM {} WHERE id = ?".format(OUTBOX_TABLE), [(i,) for i, _ in failures]
                )
            return len(failures)

        return self.pool.runWithConnection(move)

    def outbox_stats(self) -> Deferred:
        """{"depth", "oldest_queued_at", "dead_letters"} of the outbox."""

        def stats(connection):
            depth, oldest = connection.execute(
                "SELECT count(*), min(queued_at) FROM {}".format(OUTBOX_TABLE)
            ).fetchone()
            (dead,) = connection.execute("SELECT count(*) FROM {}".format(DEAD_LETTER_TABLE)).fetchone()
            return {"depth": depth, "oldest_queued_at": oldest, "dead_letters": dead}

        return self.pool.runWithConnection(stats)

    def dead_letters(self, limit: int = 100) -> Deferred:
        """The newest dead letters as [(id, queued_at, failed_at, entry, reason)]."""
        return self.pool.runWithConnection(
            _fetch_all,
            "SELECT id, queued_at, failed_at, entry, reason FROM {} ORDER BY failed_at DESC LIMIT ?".format(
                DEAD_LETTER_TABLE
            ),
            (limit,),
        )

class _Upload:
    """One caller's write waiting in the queue, and the Deferred it gets."""

    __slots__ = ("request", "deferred")

    def __init__(self, request: WriteRequest):
        self.request = request
        self.deferred: Deferred = Deferred()


def _take_key(cursor, claim: IdempotencyClaim) -> None:
    """Insert the idempotency key; an expired one is taken over, a live one raises DuplicateUpload."""
    cursor.execute(
        "INSERT INTO {t} (key, digest, receipt, created_at) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET digest = excluded.digest, receipt = excluded.receipt, "
        "created_at = excluded.created_at WHERE {t}.created_at < ?".format(t=IDEMPOTENCY_TABLE),
        (claim.key, claim.digest, claim.receipt, claim.now, claim.cutoff),
    )
    if cursor.rowcount != 1:
        raise DuplicateUpload(claim.key)


def _advance(cursor, advance: ReplayAdvance) -> None:
    """Store the larger number (an UPSERT with a condition) or raise ReplayRefused."""
    cursor.execute(
        "INSERT INTO {t} (key, last, updated_at) VALUES (?, ?, ?) "
        "ON CONFLICT(key) DO UPDATE SET last = excluded.last, updated_at = excluded.updated_at "
        "WHERE excluded.last > {t}.last".format(t=REPLAY_TABLE),
        (advance.key, advance.number, advance.now),
    )
    if cursor.rowcount != 1:
        raise ReplayRefused(advance)


def _fetch_all(connection, sql, params):
    cursor = connection.execute(sql, params)
    try:
        return cursor.fetchall()
    finally:
        cursor.close()


def _execute_many(connection, sql, params):
    with transaction(connection):
        connection.executemany(sql, params)
    return len(params)


@implementer(IRowStream)
class RowStream:
    """The rows of one SELECT, fetched a chunk at a time on the store's connection."""

    def __init__(self, pool, chunk_rows: int):
        self.pool = pool
        self.chunk_rows = chunk_rows
        self.header: List[str] = []
        self.cursor = None

    def next_chunk(self) -> Deferred:
        """The next list of rows; an empty list at the end (the cursor is then closed)."""
        return self.pool.runWithConnection(self._fetch)

    def _fetch(self, connection):
        if self.cursor is None:
            return []
        rows = self.cursor.fetchmany(self.chunk_rows)
        if len(rows) < self.chunk_rows:
            self._close(connection)
        return rows

    def close(self) -> Deferred:
        """Stop early (the client went away); releases the read snapshot."""
        return self.pool.runWithConnection(self._close)

    def _close(self, connection) -> None:
        if self.cursor is not None:
            self.cursor.close()
            self.cursor = None


def select_sql(query: Query, table: str) -> Tuple[str, List[Any]]:
    """The SELECT statement of a download query and its parameters."""
    query.check()
    cols = ", ".join(quote_identifier(c) for c in query.columns) if query.columns else "*"
    sql = "SELECT {} FROM {}".format(cols, table)
    params: List[Any] = []
    if query.bounds:
        clauses = []
        for column, op, value in query.bounds:
            clauses.append("{} {} ?".format(quote_identifier(column), op))
            params.append(value)
        sql += " WHERE " + " AND ".join(clauses)
    if query.order_by:
        column, direction = query.order_by
        sql += " ORDER BY {} {}".format(quote_identifier(column), direction.upper())
    if query.limit is not None:
        sql += " LIMIT ?"
        params.append(int(query.limit))
    return sql, params
