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

All SQL lives here.  Identifiers come from :func:`co2logd.names.quote_identifier`
(checked names only); values are always bound parameters.
"""

from __future__ import annotations

import bisect
import contextlib
import datetime
import sqlite3
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from co2logd import rollup
from co2logd.names import quote_identifier

log = Logger()

SCHEMA_VERSION_TABLE = "co2logd_schema_version"
OUTBOX_TABLE = "co2logd_osem_outbox"
DEAD_LETTER_TABLE = "co2logd_osem_dead_letter"
ROLLUP_TABLE = "co2logd_rollup"
ROLLUP_SOURCE_TABLE = "co2logd_rollup_source"
ROLLUP_STATE_TABLE = "co2logd_rollup_state"
ROLLUP_ODD_TABLE = "co2logd_rollup_odd"

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
            # column's done_rowid (see Store.plot_buckets).  Sources are
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
]
SCHEMA_VERSION = UPGRADES[-1][0]

SQL_TYPES = {
    bool: "INTEGER",
    int: "INTEGER",
    float: "REAL",
    str: "TEXT",
    datetime.datetime: "DATETIME",
}


class StoreError(Exception):
    """The database cannot be opened, upgraded or written."""


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
        connection.execute("COMMIT")
        return _table_columns(connection, settings.DATA_TABLE_NAME)
    except sqlite3.Error as e:
        raise StoreError("Cannot prepare database {}: {}".format(path, e))
    finally:
        connection.close()


def upload_time_index(settings) -> str:
    """The name of the index on the upload-time column (schema version 2)."""
    return "{}_{}_idx".format(settings.DATA_TABLE_NAME, settings.UPLOAD_TIME_COL)


def _table_columns(connection: sqlite3.Connection, table: str) -> Dict[str, str]:
    rows = connection.execute("SELECT name, type FROM pragma_table_info(?)", (table,)).fetchall()
    return {name.lower(): declared for name, declared in rows}


class Store(Service):
    """
    Writes and reads the data table through one adbapi connection.

    ``columns`` is the cached schema of the data table (name → declared type),
    kept current by :meth:`write`; readers on the reactor thread may use it
    without a query.
    """

    name = "store"

    def __init__(self, path: str, settings, columns: Mapping[str, str], pool_factory: Callable[..., adbapi.ConnectionPool] = adbapi.ConnectionPool):
        self.path = path
        self.settings = settings
        self.columns: Dict[str, str] = dict(columns)
        self.table = quote_identifier(settings.DATA_TABLE_NAME)
        self.queue_limit: int = settings.WRITE_QUEUE_MAX_ROWS
        self._queue: List[_Upload] = []
        self._queued_rows = 0
        self._writing = False
        self._drained: List[Deferred] = []
        self._insert_statements: Dict[Tuple[str, ...], str] = {}
        self._closed = False
        self._row_count = (0, 0)  # (last rowid counted, rows up to it) for row_count()
        self._filling: Dict[frozenset, Deferred] = {}  # background rollup fills by column set (issue 5)
        self._replay_seen: Dict[str, float] = {}  # replay counters committed by this process (issue 7)
        #: transactions written, uploads in them, the largest group, writes refused as busy
        self.write_stats: Dict[str, int] = {"transactions": 0, "uploads": 0, "largest_group": 0, "busy": 0}
        synchronous = settings.DB_SYNCHRONOUS
        self.pool = pool_factory(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=lambda connection: configure_connection(connection, synchronous),
            cp_noisy=False,
        )

    @classmethod
    def open(cls, path: str, settings) -> "Store":
        """Prepare the schema synchronously, then return a store on it."""
        return cls(path, settings, prepare_database(path, settings))

    def stopService(self) -> Optional[Deferred]:
        """Close the pool once every queued write has been committed (or has failed)."""
        super().stopService()
        waits = [d for d in self._filling.values()]  # a background rollup fill stops after its chunk
        if self._writing:
            drained: Deferred = Deferred()
            self._drained.append(drained)
            waits.append(drained)
        if not waits:
            self._close_pool()
            return None
        return DeferredList(waits).addCallback(lambda _: self._close_pool())

    def _close_pool(self) -> None:
        self._closed = True
        if self.pool.running:  # stopping twice (a test's cleanup after its own stop) is harmless
            self.pool.close()

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
        if self._queued_rows >= self.queue_limit:
            self.write_stats["busy"] += 1
            return fail(StoreBusy("{} rows are waiting for the database".format(self._queued_rows)))
        upload = _Upload(columns, rows, new_columns, outbox, queued_at, guards)
        self._queue.append(upload)
        self._queued_rows += len(rows) or 1
        if not self._writing:
            self._flush()
        return upload.deferred

    def _flush(self) -> None:
        group, self._queue = self._queue, []
        self._queued_rows = 0
        self._writing = True
        d = self.pool.runWithConnection(self._write_group, group, self.columns)
        d.addBoth(self._written, group)

    def _written(self, outcome, group: List["_Upload"]) -> None:
        """Back on the reactor: update the column cache, fire every caller, start the next group."""
        if isinstance(outcome, Failure):
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
                for guard in upload.guards:
                    guard.committed(self)
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
        try:
            cursor.execute("BEGIN IMMEDIATE")
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
            cursor.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise
        finally:
            cursor.close()
        return results, added

    def _write_one(self, cursor, upload: "_Upload", known: Mapping[str, str], added: Mapping[str, str]) -> Dict[str, str]:
        mine: Dict[str, str] = {}
        for guard in upload.guards:
            guard.apply(cursor)
        for name, declared in upload.new_columns.items():
            if name in known or name in added or name in mine:
                continue  # another upload added it since this one was normalised
            cursor.execute("ALTER TABLE {} ADD COLUMN {} {}".format(self.table, quote_identifier(name), declared))
            mine[name] = declared
        if upload.rows:
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

    # -- dashboard, plots, health, paged downloads (issue 5) ------------------
    #
    # Reads only (and one rolled-back write in check_writable).  Time bounds
    # are text in the stored upload-time format (co2logd.timerange.time_text),
    # so comparisons are text comparisons the upload-time index serves.

    #: rows of the data table rolled up per database interaction: bounds how
    #: long a rollup fill holds the database (and so delays uploads) at a time
    rollup_chunk_rows = 25_000
    #: rows read per interaction by the exact path (reading is cheaper than rolling up)
    exact_chunk_rows = 100_000
    #: rolling a row up costs about this many rows read exactly (measured: ~1.5 µs against ~0.5 µs)
    rollup_cost = 3

    def plot_buckets(
        self,
        columns: Sequence[str],
        bounds: Sequence[str],
        filters: Sequence[Tuple[str, Any]] = (),
        rollups: bool = True,
    ) -> Deferred:
        """
        Min and max of each column's numeric values per time bucket
        ``[bounds[i], bounds[i+1])`` of the upload-time column, rows matching
        ``filters`` (column = value) only.  Fires with ``[(i, [(min, max), …])]``
        for the buckets holding any numeric value, in bucket order.  Exact
        either way: every min and every max of the rows survives.

        Buckets holding whole minutes are answered from the rollups (see
        :mod:`co2logd.rollup`): whole hours and minutes from the per-source
        summaries, only the ragged ends shorter than a minute from the rows.
        The rollups first catch up with every row added since the columns
        were last rolled up (rowid above the column's ``done_rowid``), in
        chunks of :attr:`rollup_chunk_rows` rows per database interaction so
        uploads get their turn between chunks; the last chunk and the bucket
        queries share one transaction, so nothing committed before the
        answer is missed.  Rows are folded in by rowid, not by time, so a row
        that arrives late with an older upload time (a clock stepped back, a
        long write queue, another program writing) still lands in its
        period: min, max and count merge.

        When catching up would cost more than reading the range's rows (the
        first plot of a big table, or a short range after a long time), the
        rows are read instead (:meth:`_exact_step`, also in bounded chunks)
        and the rollups are filled in the background for the next plot.
        Filters on anything but the transport and box columns, and plots
        where no bucket holds a whole minute (short ranges), always read the
        rows.  Rollups assume rows are appended, never edited: after editing
        the data table by hand, ``DELETE FROM co2logd_rollup_state`` makes
        the next plot rebuild them.
        """
        job = _PlotJob(list(columns), list(bounds), list(filters))
        if rollups and job.columns and self._rollup_can_filter(job.filters):
            job.pieces = rollup.plan(job.bounds)
        d = self._in_steps(self._plot_step, job)

        def answered(result):
            if job.mode == "exact" and job.pieces is not None:
                self._fill_in_background(job.columns)
            return result

        return d.addCallback(answered)

    def _in_steps(self, step: Callable[..., Any], *args: Any) -> Deferred:
        """
        Run ``step(connection, *args)`` in one interaction after another until
        it returns something other than ``_MORE``; fire with that.  Between
        steps other work (uploads) gets the connection.
        """
        result: Deferred = Deferred()

        def run(_=None) -> None:
            if self._closed:
                result.errback(Failure(StoreError("The store is closed")))
                return
            self.pool.runWithConnection(step, *args).addCallbacks(stepped, result.errback)

        def stepped(outcome) -> None:
            if outcome is _MORE:
                run()  # adbapi fires from the reactor loop: no recursion builds up
            else:
                result.callback(outcome)

        run()
        return result

    def _plot_step(self, connection, job: "_PlotJob"):
        """One interaction of a plot: choose the path on the first, then read or roll up a chunk."""
        if job.mode is None:
            job.mode = "exact" if job.pieces is None or self._cheaper_to_read(connection, job) else "rollup"
        if job.mode == "exact":
            return self._exact_step(connection, job)
        return self._rollup_step(connection, job.columns, lambda c: self._rollup_buckets(c, job))

    def _cheaper_to_read(self, connection, job: "_PlotJob") -> bool:
        """True when reading the range's rows costs less than catching the rollups up first."""
        (top,) = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()
        names = self._rollup_names()
        marks = dict(
            (col, done if was == names else 0)
            for col, done, was in connection.execute(
                "SELECT col, done_rowid, names FROM {} WHERE col IN ({})".format(ROLLUP_STATE_TABLE, ", ".join("?" * len(job.columns))),
                job.columns,
            )
        )
        lag = top - min(marks.get(c, 0) for c in job.columns)
        if lag <= self.rollup_chunk_rows:
            return False
        t = quote_identifier(self.settings.UPLOAD_TIME_COL)
        first = connection.execute(
            "SELECT rowid FROM {} WHERE {t} >= ? ORDER BY {t} LIMIT 1".format(self.table, t=t), (job.bounds[0],)
        ).fetchone()
        last = connection.execute(
            "SELECT rowid FROM {} WHERE {t} < ? ORDER BY {t} DESC LIMIT 1".format(self.table, t=t), (job.bounds[-1],)
        ).fetchone()
        rows = max(0, last[0] - first[0] + 1) if first and last else 0  # about the rows in range (rowids follow time)
        return rows < self.rollup_cost * lag

    def _fill_in_background(self, columns: Sequence[str]) -> None:
        """Catch the columns' rollups up, chunk by chunk, unless that is already under way."""
        key = frozenset(columns)
        if key in self._filling or not self.running:
            return
        columns = list(columns)

        def step(connection):  # stops after the chunk in hand when the store stops
            return self._rollup_step(connection, columns, lambda c: None) if self.running else None

        self._filling[key] = d = self._in_steps(step)
        log.info("Filling the plot rollups of {columns} in the background", columns=", ".join(columns))

        def done(result):
            del self._filling[key]
            if isinstance(result, Failure) and self.running:
                log.failure("Filling the plot rollups failed", result)

        d.addBoth(done)

    def rollups_idle(self) -> Deferred:
        """Fires once no background rollup fill is running (for tests and benchmarks)."""
        return DeferredList(list(self._filling.values())).addCallback(lambda _: None)

    def _exact_step(self, connection, job: "_PlotJob"):
        """
        The next buckets from the rows, about :attr:`exact_chunk_rows` rows
        per interaction.  No GROUP BY: grouping on a computed bucket makes
        SQLite sort every row.  Instead the upload-time index gives each
        bucket's smallest and largest rowid and its row count (an index-only
        scan), and one aggregate per bucket reads that rowid range of the
        table in order.  The range holds every row of the bucket; when it
        holds nothing else (rowids and times grow together, as they do) the
        time test is skipped, otherwise rows are checked against the bucket's
        bounds.  Plain min/max are used unless a bucket holds text among the
        numbers (SQLite sorts text after numbers); then that bucket is read
        again keeping numeric values only.
        """
        columns, bounds, filters = job.columns, job.bounds, job.filters
        time_col = quote_identifier(self.settings.UPLOAD_TIME_COL)
        index_scan = "SELECT min(rowid), max(rowid), count(*) FROM {table} WHERE {t} >= ? AND {t} < ?".format(
            table=self.table, t=time_col
        )
        filter_sql = "".join(" AND {} = ?".format(quote_identifier(c)) for c, _ in filters)
        filter_values = [v for _, v in filters]
        statements: Dict[Tuple[bool, bool], str] = {}

        def statement(check_time: bool, numeric_only: bool) -> str:
            key = (check_time, numeric_only)
            if key not in statements:
                parts = []
                for column in columns:
                    c = quote_identifier(column)
                    value = _numeric(c) if numeric_only else c
                    parts += ["min({})".format(value), "max({})".format(value)]
                statements[key] = "SELECT {} FROM {} NOT INDEXED WHERE rowid BETWEEN ? AND ?{}{}".format(
                    ", ".join(parts),
                    self.table,
                    " AND {t} >= ? AND {t} < ?".format(t=time_col) if check_time else "",
                    filter_sql,
                )
            return statements[key]

        budget = self.exact_chunk_rows
        while job.next_bucket < len(bounds) - 1 and budget > 0:
            i = job.next_bucket
            job.next_bucket += 1
            lo, hi = bounds[i], bounds[i + 1]
            first, last, count = connection.execute(index_scan, (lo, hi)).fetchone()
            if first is None:
                continue
            budget -= count
            check_time = last - first + 1 != count
            params = [first, last] + ([lo, hi] if check_time else []) + filter_values
            row = connection.execute(statement(check_time, False), params).fetchone()
            if any(isinstance(v, (str, bytes)) for v in row):
                row = connection.execute(statement(check_time, True), params).fetchone()
            pairs = [(row[2 * k], row[2 * k + 1]) for k in range(len(columns))]
            if any(low is not None for low, _ in pairs):
                job.out.append((i, pairs))
        return job.out if job.next_bucket >= len(bounds) - 1 else _MORE

    # The rollups.  All their SQL is here; co2logd.rollup does the arithmetic.

    def _rollup_names(self) -> str:
        """The settings a rollup depends on; a column rolled up under other names is rebuilt."""
        s = self.settings
        return "{}|{}|{}".format(s.UPLOAD_TIME_COL, s.TRANSPORT_COL, s.OSEM_BOX_COL)

    def _rollup_can_filter(self, filters: Sequence[Tuple[str, Any]]) -> bool:
        """True when every filter is on the transport or the box column (the rollups' sources)."""
        return all(column in (self.settings.TRANSPORT_COL, self.settings.OSEM_BOX_COL) for column, _ in filters)

    def _rollup_step(self, connection, columns: Sequence[str], then: Callable[[Any], Any]):
        """One interaction: roll up at most ``rollup_chunk_rows`` rows; if that was all, answer with ``then`` too."""
        names = self._rollup_names()
        with transaction(connection):
            (top,) = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()
            marks = "({})".format(", ".join("?" * len(columns)))
            states = {
                col: (done, was)
                for col, done, was in connection.execute(
                    "SELECT col, done_rowid, names FROM {} WHERE col IN {}".format(ROLLUP_STATE_TABLE, marks), list(columns)
                )
            }
            done: Dict[str, int] = {}
            for column in columns:
                mark, was = states.get(column, (0, None))
                if was != names or mark > top:  # new, other settings, or rows deleted: start afresh
                    connection.execute("DELETE FROM {} WHERE col = ?".format(ROLLUP_TABLE), (column,))
                    mark = 0
                done[column] = mark
            budget = self.rollup_chunk_rows
            while budget > 0:
                lagging = [c for c in columns if done[c] < top]
                if not lagging:
                    break
                low = min(done[c] for c in lagging)
                group = [c for c in lagging if done[c] == low]
                high = min(top, low + budget)
                self._roll_up(connection, group, low, high)
                for column in group:
                    done[column] = high
                budget -= high - low
            connection.executemany(
                "INSERT OR REPLACE INTO {} (col, done_rowid, names) VALUES (?, ?, ?)".format(ROLLUP_STATE_TABLE),
                [(c, done[c], names) for c in columns],
            )
            if any(done[c] < top for c in columns):
                return _MORE
            return then(connection)

    def _roll_up(self, connection, columns: Sequence[str], low: int, high: int) -> None:
        """
        Fold the rows with ``low < rowid <= high`` into the minute and hour
        rollups of ``columns``: one GROUP BY (minute key, transport, box) over
        that rowid range, plain min/max/count unless text hides among the
        numbers (then those columns again, numbers only).  The minute key is
        the first 16 characters of the stored upload time; a group whose key
        is not a real minute, or whose smallest time sorts before the
        minute's ``:00``, is odd: its rows go to the odd table instead.
        """
        s = self.settings
        t = quote_identifier(s.UPLOAD_TIME_COL)
        has_box = connection.execute(
            "SELECT 1 FROM pragma_table_info(?) WHERE lower(name) = ?", (s.DATA_TABLE_NAME, s.OSEM_BOX_COL.lower())
        ).fetchone()
        box = quote_identifier(s.OSEM_BOX_COL) if has_box else "NULL"
        grouped = (
            "SELECT substr({t}, 1, 16), {transport}, {box}, min({t}), {{stats}} FROM {table} "
            "WHERE rowid > ? AND rowid <= ? GROUP BY 1, 2, 3".format(
                t=t, transport=quote_identifier(s.TRANSPORT_COL), box=box, table=self.table
            )
        )

        def stats(value) -> str:
            return ", ".join("min({v}), max({v}), count({v})".format(v=value(quote_identifier(c))) for c in columns)

        rows = connection.execute(grouped.format(stats=stats(str)), (low, high)).fetchall()
        if any(isinstance(v, (str, bytes)) for row in rows for v in row[4:]):
            rows = connection.execute(grouped.format(stats=stats(_numeric)), (low, high)).fetchall()
        sources = dict(
            ((transport, box_value), i)
            for i, transport, box_value in connection.execute("SELECT id, transport, box FROM {}".format(ROLLUP_SOURCE_TABLE))
        )
        minutes = []
        hours: Dict[Tuple[str, int, int], Tuple[Any, Any, int]] = {}
        odd = set()
        for key, transport, box_value, earliest, *values in rows:
            if key is None:
                continue  # no upload time: in no time range
            start = rollup.minute_start(key) if isinstance(key, str) else None
            if start is None or not earliest >= key + ":00":
                odd.add(key)
                continue
            source = sources.get((transport, box_value))
            if source is None:
                source = sources[(transport, box_value)] = connection.execute(
                    "INSERT INTO {} (transport, box) VALUES (?, ?)".format(ROLLUP_SOURCE_TABLE), (transport, box_value)
                ).lastrowid
            hour = start - start % rollup.HOUR
            for k, column in enumerate(columns):
                lo, hi, n = values[3 * k: 3 * k + 3]
                if not n:
                    continue
                minutes.append((column, rollup.MINUTE, start, source, lo, hi, n))
                key3 = (column, hour, source)
                old = hours.get(key3)
                if old is None:
                    hours[key3] = (lo, hi, n)
                else:
                    hours[key3] = (lo if lo < old[0] else old[0], hi if hi > old[1] else old[1], n + old[2])
        upsert = (
            "INSERT INTO {} (col, span, start, source, lo, hi, n) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (col, span, start, source) DO UPDATE SET "
            "lo = min(lo, excluded.lo), hi = max(hi, excluded.hi), n = n + excluded.n".format(ROLLUP_TABLE)
        )
        connection.executemany(upsert, minutes)
        connection.executemany(
            upsert, [(c, rollup.HOUR, hour, source, lo, hi, n) for (c, hour, source), (lo, hi, n) in hours.items()]
        )
        if odd:
            keys = list(odd)
            connection.execute(
                "INSERT OR IGNORE INTO {odd} (row) SELECT rowid FROM {table} WHERE rowid > ? AND rowid <= ? "
                "AND substr({t}, 1, 16) IN ({marks})".format(
                    odd=ROLLUP_ODD_TABLE, table=self.table, t=t, marks=", ".join("?" * len(keys))
                ),
                [low, high] + keys,
            )

    def _rollup_buckets(self, connection, job: "_PlotJob") -> list:
        """Every bucket from the rollups, the rows of its ragged ends and the odd rows."""
        columns, bounds, pieces, filters = job.columns, job.bounds, job.pieces, job.filters
        t = quote_identifier(self.settings.UPLOAD_TIME_COL)
        marks = ", ".join("?" * len(columns))
        filter_sql = "".join(" AND {} = ?".format(quote_identifier(c)) for c, _ in filters)
        filter_values = [v for _, v in filters]
        source_sql, source_ids = "", []
        if filters:
            source_ids = self._rollup_sources_matching(connection, filters)
            source_sql = " AND source IN ({})".format(", ".join("?" * len(source_ids)))
        summary = "SELECT col, min(lo), max(hi) FROM {} WHERE col IN ({}) AND span = ? AND start >= ? AND start < ?{} GROUP BY col".format(
            ROLLUP_TABLE, marks, source_sql
        )
        values = ", ".join("min({v}), max({v})".format(v=_numeric(quote_identifier(c))) for c in columns)
        exact = "SELECT {} FROM {} WHERE {t} >= ? AND {t} < ?{}".format(values, self.table, filter_sql, t=t)
        position = {c: k for k, c in enumerate(columns)}
        nothing = [(None, None)] * len(columns)
        found: Dict[int, list] = {}
        for i, piece in enumerate(pieces):
            pairs = list(nothing)
            for span, first, end in piece.periods:
                for column, lo, hi in connection.execute(summary, list(columns) + [span, first, end] + source_ids):
                    k = position[column]
                    pairs[k] = rollup.merge(pairs[k], lo, hi)
            for a, b in piece.exact:
                row = connection.execute(exact, [a, b] + filter_values).fetchone()
                for k in range(len(columns)):
                    pairs[k] = rollup.merge(pairs[k], row[2 * k], row[2 * k + 1])
            found[i] = pairs
        # rows whose upload time has an unusual shape are in no rollup: read them as they are
        odd_rows = connection.execute(
            "SELECT {t}, {cols} FROM {table} WHERE rowid IN (SELECT row FROM {odd}) AND {t} >= ? AND {t} < ?{f}".format(
                t=t, cols=", ".join(_numeric(quote_identifier(c)) for c in columns), table=self.table,
                odd=ROLLUP_ODD_TABLE, f=filter_sql,
            ),
            [bounds[0], bounds[-1]] + filter_values,
        ).fetchall()
        for when, *row_values in odd_rows:
            i = bisect.bisect_right(bounds, when) - 1
            for k, value in enumerate(row_values):
                found[i][k] = rollup.merge(found[i][k], value, value)
        return [(i, pairs) for i, pairs in sorted(found.items()) if any(low is not None for low, _ in pairs)]

    def _rollup_sources_matching(self, connection, filters: Sequence[Tuple[str, Any]]) -> List[int]:
        """
        Ids of the sources a transport/box filter selects.  The value is
        first converted as the data column would convert it (its declared
        type's affinity, via a scratch table), so ``box=7`` selects the same
        sources here as ``box = 7`` selects rows there.
        """
        connection.execute(
            "CREATE TEMP TABLE IF NOT EXISTS co2logd_affinity (k INTEGER PRIMARY KEY, t TEXT, n NUMERIC, i INTEGER, r REAL, b BLOB)"
        )
        clauses, params = [], []
        for column, value in filters:
            slot = _affinity_slot(self.columns.get(column, ""))
            connection.execute("INSERT OR REPLACE INTO temp.co2logd_affinity (k, {}) VALUES (1, ?)".format(slot), (value,))
            (converted,) = connection.execute("SELECT {} FROM temp.co2logd_affinity WHERE k = 1".format(slot)).fetchone()
            clauses.append("{} = ?".format("transport" if column == self.settings.TRANSPORT_COL else "box"))
            params.append(converted)
        return [
            i for (i,) in connection.execute(
                "SELECT id FROM {} WHERE {}".format(ROLLUP_SOURCE_TABLE, " AND ".join(clauses)), params
            )
        ]

    def row_count(self) -> Deferred:
        """
        Number of rows in the data table, for the dashboard: counted once,
        then only the rows after the last rowid seen are counted (``count(*)``
        reads a whole index, half a second for a year of 1 Hz data).  Rows
        are appended, not deleted; if the last rowid went down, it counts
        afresh (rows deleted by hand elsewhere show after a restart).
        """

        def run(connection):
            (top,) = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()
            seen, counted = self._row_count
            if top < seen:
                seen, counted = 0, 0
            if top > seen:
                (more,) = connection.execute(
                    "SELECT count(*) FROM {} WHERE rowid > ? AND rowid <= ?".format(self.table), (seen, top)
                ).fetchone()
                counted += more
            self._row_count = (top, counted)
            return counted

        return self.pool.runWithConnection(run)

    def latest_values(self, columns: Sequence[str]) -> Deferred:
        """
        ``{column: (value, upload time)}``: each column's newest numeric value
        (by upload time, read backwards along its index).
        """
        time_col = quote_identifier(self.settings.UPLOAD_TIME_COL)
        statements = {
            column: "SELECT {c}, {t} FROM {table} WHERE typeof({c}) IN ('integer', 'real') "
            "ORDER BY {t} DESC LIMIT 1".format(c=quote_identifier(column), t=time_col, table=self.table)
            for column in columns
        }

        def run(connection):
            out = {}
            for column, sql in statements.items():
                row = connection.execute(sql).fetchone()
                if row is not None:
                    out[column] = (row[0], row[1])
            return out

        return self.pool.runWithConnection(run)

    #: rows grouped per interaction by :meth:`source_activity` (a first look reads every row)
    activity_chunk_rows = 200_000

    def source_activity(self, box_column: Optional[str], after_rowid: int = 0) -> Deferred:
        """
        Per source of the rows after ``after_rowid``: fires with
        ``([(transport, box, last upload time, rows)], largest rowid seen)``.
        Callers keep the rowid and ask again for the new rows only.  The
        rows are grouped :attr:`activity_chunk_rows` at a time, one
        interaction each, so a first look at a big table does not hold
        uploads up for seconds; rows added meanwhile wait for the next call.
        """
        box = quote_identifier(box_column) if box_column else "NULL"
        sql = (
            "SELECT {transport}, {box}, max({t}), count(*) FROM {table} "
            "WHERE rowid > ? AND rowid <= ? GROUP BY 1, 2"
        ).format(
            transport=quote_identifier(self.settings.TRANSPORT_COL),
            box=box,
            t=quote_identifier(self.settings.UPLOAD_TIME_COL),
            table=self.table,
        )
        found: Dict[Tuple[Any, Any], List[Any]] = {}
        reached = [after_rowid, None]  # rows read up to, and the last rowid when the first step ran

        def step(connection):
            if reached[1] is None:
                (reached[1],) = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()
            low, top = reached
            high = min(top, low + self.activity_chunk_rows)
            if high > low:
                for transport, box_value, last, count in connection.execute(sql, (low, high)):
                    seen = found.setdefault((transport, box_value), [None, 0])
                    seen[0] = _later(seen[0], last)
                    seen[1] += count
                reached[0] = high
            if reached[0] < top:
                return _MORE
            return [(k[0], k[1], last, count) for k, (last, count) in found.items()], max(top, after_rowid)

        return self._in_steps(step)

    def check_writable(self) -> Deferred:
        """Fire with True after a write the database accepted (and that is then rolled back)."""

        def run(connection):
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("INSERT INTO {} (version) VALUES (-1)".format(SCHEMA_VERSION_TABLE))
            finally:
                connection.rollback()
            return True

        return self.pool.runWithConnection(run)

    def rowid_at(self, query: "Query", offset: int) -> Deferred:
        """
        The rowid of the row ``offset`` places into ``query``'s result (its
        ``columns`` must be ``["rowid"]``), or None: where the next page of a
        paged download starts.
        """
        sql, params = query.sql(self.table)
        sql += " OFFSET ?"

        def run(connection):
            row = connection.execute(sql, params + [offset]).fetchone()
            return row[0] if row else None

        return self.pool.runWithConnection(run)


_MORE = object()  # a rollup step that has more rows to fold in


def _later(a: Any, b: Any) -> Any:
    """The larger of two upload times as SQLite's max() picks it (None ignored, text above numbers)."""
    if a is None or b is None:
        return b if a is None else a
    try:
        return max(a, b)
    except TypeError:
        return a if isinstance(a, str) else b


def _numeric(column_sql: str) -> str:
    """The column's value where it is a number, else NULL (text and blobs sort after numbers)."""
    return "CASE WHEN typeof({c}) IN ('integer', 'real') THEN {c} END".format(c=column_sql)


def _affinity_slot(declared: str) -> str:
    """The scratch column with the affinity SQLite gives a column declared ``declared``."""
    declared = (declared or "").upper()
    if "INT" in declared:
        return "i"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "t"
    if not declared or "BLOB" in declared:
        return "b"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "r"
    return "n"


class _PlotJob:
    """One plot on its way through the store's interactions."""

    def __init__(self, columns: List[str], bounds: List[str], filters: List[Tuple[str, Any]]):
        self.columns = columns
        self.bounds = bounds
        self.filters = filters
        self.pieces: Optional[list] = None  # co2logd.rollup.plan(bounds) when rollups may answer
        self.mode: Optional[str] = None  # "exact" or "rollup", chosen in the first interaction
        self.next_bucket = 0
        self.out: list = []


class _Upload:
    """One caller's write waiting in the queue, and the Deferred it gets."""

    __slots__ = ("columns", "rows", "new_columns", "outbox", "queued_at", "guards", "deferred")

    def __init__(self, columns, rows, new_columns, outbox, queued_at, guards=()):
        self.columns = columns
        self.rows = rows
        self.new_columns = new_columns
        self.outbox = outbox
        self.queued_at = queued_at
        self.guards = guards
        self.deferred: Deferred = Deferred()


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


@contextlib.contextmanager
def transaction(connection):
    """BEGIN IMMEDIATE … COMMIT, rolled back if anything in the block raises."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise


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
