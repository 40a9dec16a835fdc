"""
The store: one SQLite file behind ``twisted.enterprise.adbapi``.

* ``prepare_database`` runs once, synchronously, before the reactor starts:
  it creates or upgrades the schema (a version table, upgrade steps kept as
  data) and reads the data table's columns.  A co2logserver 0.1.2 database is
  used as it is; co2logd only adds its transport column and its own tables.
* :class:`Store` writes uploads (new columns, rows and outbox entries,
  atomically, committed before the Deferred fires) and answers queries.
  Uploads that arrive together share one transaction (group commit), each in
  a savepoint of its own; a bounded queue makes :attr:`Store.busy` true when
  the writer falls behind.  The column cache means no schema query per upload.

The SQL lives here and, for the dashboard's reads and the plot rollups, in
:mod:`co2logd.plot_queries` (a mixin of :class:`Store`).  Identifiers come
from :func:`co2logd.names.quote_identifier` (checked names only); values are
always bound parameters.
"""

from __future__ import annotations

import datetime
import sqlite3
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from co2logd.db import StoreError, transaction
from co2logd.dbwatch import HEARTBEAT_TABLE, DatabaseLost, DatabaseWatch, is_disk_error
from co2logd.names import quote_identifier
from co2logd import mtime
from co2logd.rowid import rowid_alias
from co2logd.staging import StagedWrites
from co2logd.plot_queries import (
    MTIME_STATE_TABLE,
    MTIME_TABLE,
    ROLLUP_ODD_TABLE,
    ROLLUP_SOURCE_TABLE,
    ROLLUP_STATE_TABLE,
    ROLLUP_TABLE,
    PlotQueries,
)

log = Logger()

SCHEMA_VERSION_TABLE = "co2logd_schema_version"
OUTBOX_TABLE = "co2logd_osem_outbox"
DEAD_LETTER_TABLE = "co2logd_osem_dead_letter"

# Upgrade steps as data: version → statements.  Never edit a released step;
# append a new one.
UPGRADES: List[Tuple[int, List[str]]] = [
    (
        1,
        [
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "queued_at REAL NOT NULL, entry TEXT NOT NULL)".format(OUTBOX_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, queued_at REAL NOT NULL, "
            "failed_at REAL NOT NULL, entry TEXT NOT NULL, reason TEXT NOT NULL)".format(
                DEAD_LETTER_TABLE
            ),
        ],
    ),
    (
        2,
        [
            # plots, /download?since= and the dashboard select by upload time (issue 5);
            # {index}, {table} and {upload_time} come from the settings in prepare_database
            "CREATE INDEX IF NOT EXISTS {index} ON {table} ({upload_time})",
        ],
    ),
    (
        3,
        [
            # replay protection and idempotent uploads (issue 7); "last" has no
            # type so counters stay exact integers and timestamps stay reals
            "CREATE TABLE IF NOT EXISTS co2logd_replay (key TEXT PRIMARY KEY, last NOT NULL, updated_at REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS co2logd_idempotency (key TEXT PRIMARY KEY, digest TEXT NOT NULL, "
            "receipt TEXT NOT NULL, created_at REAL NOT NULL)",
            "CREATE INDEX IF NOT EXISTS co2logd_idempotency_created ON co2logd_idempotency (created_at)",
        ],
    ),
    (
        4,
        [
            # plot rollups (issue 5): per plotted column, span (60 or 3600 s),
            # period start (UNIX seconds) and source, the min, max and count of
            # the numeric values; filled lazily from the rows after each
            # column's done_rowid (see Store.plot_series).  Sources are
            # (transport, box) value pairs; odd rows are rows whose upload time
            # is not stored text of the usual shape, read exactly instead.
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, transport, box)".format(ROLLUP_SOURCE_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (col TEXT NOT NULL, span INTEGER NOT NULL, start INTEGER NOT NULL, "
            "source INTEGER NOT NULL, lo NOT NULL, hi NOT NULL, n INTEGER NOT NULL, "
            "PRIMARY KEY (col, span, start, source)) WITHOUT ROWID".format(ROLLUP_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (col TEXT PRIMARY KEY, done_rowid INTEGER NOT NULL, "
            "names TEXT NOT NULL)".format(ROLLUP_STATE_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (row INTEGER PRIMARY KEY)".format(ROLLUP_ODD_TABLE),
        ],
    ),
    (
        5,
        [
            # the heartbeat /health writes (issue 12): one row, updated in a committed transaction
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY CHECK (id = 1), beat_at REAL NOT NULL)".format(
                HEARTBEAT_TABLE
            ),
        ],
    ),
    (
        6,
        [
            # measurement time (issue 10): per data row (by rowid) its time on
            # the plots in UNIX seconds, its source and how the time was found
            # (co2logd.mtime); filled by the writer, and for older rows by the
            # maintenance timer from filled_to on.  The rollups are now keyed
            # by this time: the upload-time rollups of version 4 go.
            "CREATE TABLE IF NOT EXISTS {} (row INTEGER PRIMARY KEY, t REAL, src INTEGER, kind INTEGER NOT NULL)".format(MTIME_TABLE),
            "CREATE INDEX IF NOT EXISTS co2logd_mtime_t ON {} (t)".format(MTIME_TABLE),
            "CREATE INDEX IF NOT EXISTS co2logd_mtime_src ON {} (src, t)".format(MTIME_TABLE),
            "CREATE INDEX IF NOT EXISTS co2logd_mtime_unusable ON {} (t) WHERE kind >= 2".format(MTIME_TABLE),
            "CREATE INDEX IF NOT EXISTS co2logd_rollup_source_key ON {} (transport, box)".format(ROLLUP_SOURCE_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (k INTEGER PRIMARY KEY, filled_to INTEGER NOT NULL, names TEXT NOT NULL)".format(MTIME_STATE_TABLE),
            "DELETE FROM {}".format(ROLLUP_TABLE),
            "DELETE FROM {}".format(ROLLUP_STATE_TABLE),
            "DROP TABLE IF EXISTS {}".format(ROLLUP_ODD_TABLE),
        ],
    ),
]
SCHEMA_VERSION = UPGRADES[-1][0]

SQL_TYPES = {
    bool: "INTEGER",
    int: "INTEGER",
    float: "REAL",
    str: "TEXT",
    datetime.datetime: "DATETIME",
}


class StoreBusy(Exception):
    """The writer is behind: too many rows wait for the database; try again later."""


def sql_type(value: Any) -> str:
    """The declared SQL type for a new column, from its first value (co2logserver's rule)."""
    return SQL_TYPES.get(type(value), "")


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


def prepare_database(path: str, settings) -> Dict[str, str]:
    """
    Create or upgrade the schema; return the data table's columns (name → type).

    Synchronous on purpose: it runs before the reactor, so a database that
    cannot be opened or upgraded stops start-up with a clear error.
    """
    try:
        connection = sqlite3.connect(path)
    except sqlite3.Error as e:
        raise StoreError("Cannot open database {}: {}".format(path, e))
    try:
        configure_connection(connection, settings.DB_SYNCHRONOUS)
        connection.execute("BEGIN IMMEDIATE")
        table = quote_identifier(settings.DATA_TABLE_NAME)
        columns = _table_columns(connection, settings.DATA_TABLE_NAME)
        if not columns:
            connection.execute(
                "CREATE TABLE {} ({} DATETIME, {} TEXT, {} TEXT, {} TEXT)".format(
                    table,
                    quote_identifier(settings.UPLOAD_TIME_COL),
                    quote_identifier(settings.MATCHED_CHECKSUMS_COL),
                    quote_identifier(settings.FAILED_CHECKSUMS_COL),
                    quote_identifier(settings.TRANSPORT_COL),
                )
            )
        else:
            wanted = [
                (settings.UPLOAD_TIME_COL, "DATETIME"),
                (settings.MATCHED_CHECKSUMS_COL, "TEXT"),
                (settings.FAILED_CHECKSUMS_COL, "TEXT"),
                (settings.TRANSPORT_COL, "TEXT"),
            ]
            for name, declared in wanted:
                if name not in columns:
                    connection.execute(
                        "ALTER TABLE {} ADD COLUMN {} {}".format(table, quote_identifier(name), declared)
                    )
        connection.execute(
            "CREATE TABLE IF NOT EXISTS {} (version INTEGER NOT NULL)".format(SCHEMA_VERSION_TABLE)
        )
        row = connection.execute("SELECT max(version) FROM {}".format(SCHEMA_VERSION_TABLE)).fetchone()
        current = row[0] or 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                "Database {} has schema version {}, newer than this co2logd ({}); upgrade co2logd".format(
                    path, current, SCHEMA_VERSION
                )
            )
        names = {
            "table": table,
            "upload_time": quote_identifier(settings.UPLOAD_TIME_COL),
            "index": quote_identifier(upload_time_index(settings)),
        }
        for version, statements in UPGRADES:
            if version > current:
                for statement in statements:
                    connection.execute(statement.format(**names))
                connection.execute(
                    "INSERT INTO {} (version) VALUES (?)".format(SCHEMA_VERSION_TABLE), (version,)
                )
        _check_mtime_names(connection, settings)
        connection.execute("COMMIT")
        return _table_columns(connection, settings.DATA_TABLE_NAME)
    except sqlite3.Error as e:
        raise StoreError("Cannot prepare database {}: {}".format(path, e))
    finally:
        connection.close()


def _check_mtime_names(connection: sqlite3.Connection, settings) -> None:
    """
    Start the measurement-time side table afresh when the settings it was
    built under (time columns, source columns) changed: maintenance then
    refills it, and the rollups, from the first row in the background.
    """
    names = mtime.names(settings)
    row = connection.execute("SELECT names FROM {} WHERE k = 1".format(MTIME_STATE_TABLE)).fetchone()
    if row is not None and row[0] == names:
        return
    connection.execute("DELETE FROM {}".format(MTIME_TABLE))
    connection.execute("DELETE FROM {}".format(ROLLUP_TABLE))
    connection.execute("DELETE FROM {}".format(ROLLUP_STATE_TABLE))
    connection.execute(
        "INSERT OR REPLACE INTO {} (k, filled_to, names) VALUES (1, 0, ?)".format(MTIME_STATE_TABLE), (names,)
    )


def configure_reader(connection: sqlite3.Connection) -> None:
    """A read-only connection for the dashboard and plots: ``query_only``, so it can never write or fsync."""
    connection.isolation_level = None
    connection.execute("PRAGMA busy_timeout=5000")
    connection.execute("PRAGMA query_only=ON")


def upload_time_index(settings) -> str:
    """The name of the index on the upload-time column (schema version 2)."""
    return "{}_{}_idx".format(settings.DATA_TABLE_NAME, settings.UPLOAD_TIME_COL)


def _table_columns(connection: sqlite3.Connection, table: str) -> Dict[str, str]:
    rows = connection.execute("SELECT name, type FROM pragma_table_info(?)", (table,)).fetchall()
    return {name.lower(): declared for name, declared in rows}


class Store(StagedWrites, PlotQueries, DatabaseWatch, Service):
    """
    Writes and reads the data table through one adbapi connection.

    With a ``clock``, a heartbeat write runs every ``HEALTH_HEARTBEAT_SECONDS``
    (see :mod:`co2logd.dbwatch`, which also refuses writes into a database
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
        self._staging_rows = 0  # rows of big uploads being staged (co2logd.staging), not yet queued
        self._staging = 0  # big uploads being staged
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
        self._replay_seen: Dict[str, float] = {}  # replay counters committed by this process (issue 7)
        #: transactions written, uploads in them, the largest group, writes refused as busy
        self.write_stats: Dict[str, int] = {"transactions": 0, "uploads": 0, "largest_group": 0, "busy": 0}
        synchronous = settings.DB_SYNCHRONOUS

        def opened(connection) -> None:
            configure_connection(connection, synchronous)
            self._remember_files()  # the files this connection writes (dbwatch)

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
        """Close the pools once every queued write has been committed (or has failed)."""
        super().stopService()
        self._stop_heartbeat()
        if self._maintenance is not None and self._maintenance.running:
            self._maintenance.stop()
        waits = [self._maintaining] if self._maintaining is not None else []  # stops after its chunk
        if self._writing or self._staging:
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
        return self._queued_rows + self._staging_rows >= self.queue_limit

    def write(
        self,
        columns: Sequence[str],
        rows: Sequence[Sequence[Any]],
        new_columns: Mapping[str, str],
        outbox: Sequence[str] = (),
        queued_at: float = 0.0,
        guards: Sequence[Any] = (),
    ) -> Deferred:
        """
        Add ``new_columns`` (name → SQL type), insert ``rows`` and queue
        ``outbox`` entries atomically; fire with the number of rows once
        committed.  On any error nothing of it is kept.  While the queue is
        full (:attr:`busy`) the Deferred fails at once with :class:`StoreBusy`.
        ``guards`` run first in the upload's savepoint (``guard.apply(cursor)``;
        raising refuses the upload) and hear ``guard.committed(store)`` after
        the commit: replay counters and idempotency keys (issue 7).
        """
        if self.lost is not None:
            return fail(DatabaseLost(self.lost))
        if self.busy:
            self.write_stats["busy"] += 1
            return fail(StoreBusy("{} rows are waiting for the database".format(self._queued_rows + self._staging_rows)))
        upload = _Upload(columns, rows, new_columns, outbox, queued_at, guards)
        if len(rows) > self.stage_above_rows:
            self._stage_then_queue(upload)  # a big upload: staged in short steps first (co2logd.staging)
        else:
            self._enqueue(upload)
        return upload.deferred

    def _enqueue(self, upload: "_Upload") -> None:
        """Queue an upload for the next group transaction; start one if none is being written."""
        self._queue.append(upload)
        self._queued_rows += len(upload.rows) or 1
        if not self._writing:
            self._flush()

    def _maybe_drained(self) -> None:
        """Fire the waits of stopService once nothing is written, queued or staged."""
        if self._writing or self._queue or self._staging:
            return
        waiting, self._drained = self._drained, []
        for d in waiting:
            d.callback(None)

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
            results, added, unindexed = outcome
            if added:
                self.columns = dict(self.columns, **added)
            stats = self.write_stats
            stats["transactions"] += 1
            stats["uploads"] += len(group)
            stats["largest_group"] = max(stats["largest_group"], len(group))
        # a big upload is acknowledged once its rows are also indexed (short transactions, see
        # co2logd.staging), so a plot loaded after the receipt shows them; small ones at once
        indexing = self.indexed_through(unindexed) if not isinstance(outcome, Failure) and unindexed else None
        # callers that write again from their callbacks join the next group
        for upload, result in zip(group, results):
            if isinstance(result, Failure):
                upload.deferred.errback(result)
            else:
                for guard in upload.guards:
                    guard.committed(self)
                if indexing is not None and len(upload.rows) > self.fold_in_writer_rows:
                    indexing.addCallback(lambda _, d=upload.deferred, r=result: d.callback(r))
                else:
                    upload.deferred.callback(result)
        self._writing = False
        if self._queue:
            self._flush()
        else:
            self._maybe_drained()

    def _write_group(self, connection, group: List["_Upload"], known: Mapping[str, str]):
        """
        In the pool's thread: one transaction, a savepoint per upload.
        Returns (row count or Failure per upload, columns added and committed,
        the last rowid when a big upload left its rows to be indexed after the commit, else None).
        """
        cursor = connection.cursor()
        results: List[Any] = []
        added: Dict[str, str] = {}
        unindexed: Optional[int] = None
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
                    results.append(len(upload.rows))
            cursor.execute("SAVEPOINT mtime")
            try:
                unindexed = self._index_new_rows(cursor, before, filled, dict(known, **added))
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
            for upload in group:
                if upload.stage is not None:  # published or failed: its staged rows are done with
                    try:
                        connection.execute(upload.stage.drop_sql())
                    except sqlite3.Error:
                        pass  # a broken connection took its TEMP tables along
        return results, added, unindexed

    def _write_one(self, cursor, upload: "_Upload", known: Mapping[str, str], added: Mapping[str, str]) -> Dict[str, str]:
        mine: Dict[str, str] = {}
        for guard in upload.guards:
            guard.apply(cursor)
        for name, declared in upload.new_columns.items():
            if name in known or name in added or name in mine:
                continue  # another upload added it since this one was normalised
            cursor.execute("ALTER TABLE {} ADD COLUMN {} {}".format(self.table, quote_identifier(name), declared))
            mine[name] = declared
        staged = self.staged_rows_sql(upload)
        if staged is not None:  # a big upload's rows, staged in short steps: one INSERT … SELECT
            cursor.execute("INSERT INTO {} ({}) {}".format(
                self.table, ", ".join(quote_identifier(c) for c in upload.columns), staged))
        elif upload.rows:
            cursor.executemany(self._insert_sql(upload.columns), upload.rows)
        if upload.outbox:
            queued_at = upload.queued_at
            cursor.executemany(
                "INSERT INTO {} (queued_at, entry) VALUES (?, ?)".format(OUTBOX_TABLE),
                [(queued_at, entry) for entry in upload.outbox],
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
                "SELECT digest, receipt FROM co2logd_idempotency WHERE key = ? AND created_at >= ?", (key, cutoff)
            ).fetchone()

        return self.pool.runWithConnection(run)

    def idempotency_expire(self, cutoff: float) -> Deferred:
        """Delete idempotency keys stored before ``cutoff``; fire with how many went."""

        def run(connection):
            connection.execute("BEGIN IMMEDIATE")
            try:
                deleted = connection.execute("DELETE FROM co2logd_idempotency WHERE created_at < ?", (cutoff,)).rowcount
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
        sql, params = query.sql(self.table)
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
        sql, params = query.sql(self.table)
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

    __slots__ = ("columns", "rows", "new_columns", "outbox", "queued_at", "guards", "deferred", "stage")

    def __init__(self, columns, rows, new_columns, outbox, queued_at, guards=()):
        self.columns = columns
        self.rows = rows
        self.new_columns = new_columns
        self.outbox = outbox
        self.queued_at = queued_at
        self.guards = guards
        self.deferred: Deferred = Deferred()
        self.stage = None  # a co2logd.staging.Stage once its rows are being staged


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


class Query:
    """
    A validated download query: columns, bounds, order and limit.

    Every name must be a column of the table (checked by the caller against
    the store's column cache); values are bound.
    """

    def __init__(
        self,
        columns: Optional[Sequence[str]] = None,
        bounds: Sequence[Tuple[str, str, Any]] = (),
        order_by: Optional[Tuple[str, str]] = None,
        limit: Optional[int] = None,
    ):
        self.columns = list(columns or [])
        self.bounds = list(bounds)
        self.order_by = order_by
        self.limit = limit

    def sql(self, table: str) -> Tuple[str, List[Any]]:
        """The SELECT statement and its parameters."""
        cols = ", ".join(quote_identifier(c) for c in self.columns) if self.columns else "*"
        sql = "SELECT {} FROM {}".format(cols, table)
        params: List[Any] = []
        if self.bounds:
            clauses = []
            for column, op, value in self.bounds:
                if op not in (">=", "<=", "="):
                    raise ValueError("bad comparison {!r}".format(op))
                clauses.append("{} {} ?".format(quote_identifier(column), op))
                params.append(value)
            sql += " WHERE " + " AND ".join(clauses)
        if self.order_by:
            column, direction = self.order_by
            if direction.upper() not in ("ASC", "DESC"):
                raise ValueError("bad direction {!r}".format(direction))
            sql += " ORDER BY {} {}".format(quote_identifier(column), direction.upper())
        if self.limit is not None:
            sql += " LIMIT ?"
            params.append(int(self.limit))
        return sql, params
