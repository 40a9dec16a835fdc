"""
The PostgreSQL store: :class:`IStore` on a PostgreSQL database, through
psycopg 3 and ``twisted.enterprise.adbapi``.

Several co2logd processes (gateways) may share one database:

* every upload is one transaction (its replay counter and idempotency key,
  its rows, its outbox entries), committed before its Deferred fires;
* new columns are added in a short transaction of their own before the
  upload's (``ADD COLUMN IF NOT EXISTS``), so two gateways adding one column
  at once both succeed and no upload waits on another's DDL lock while
  holding row locks (no deadlock between the two);
* the OpenSenseMap outbox is leased: :meth:`PostgresStore.outbox_fetch`
  claims entries with ``FOR UPDATE SKIP LOCKED`` in a short transaction of
  its own and commits at once; the HTTP send happens outside any transaction;
  the entries are deleted after the API accepted them, or become free for
  any gateway when the lease runs out;
* replay counters and idempotency keys live in the database and are
  checked inside the upload's transaction, so they are shared.

Outages: a query that fails because its pooled connection died is retried
once on a fresh connection when it cannot have committed (the failure came
before COMMIT was sent); a failed COMMIT is reported, never repeated.  Every
other failure reaches the caller as a :class:`StoreError` (ingest answers
503 with ``Retry-After``).  The store reconnects by itself: every query first
drops a pooled connection that psycopg knows to be broken.  A heartbeat
(``SELECT 1`` every ``HEALTH_HEARTBEAT_SECONDS``) and the last write's outcome
tell ``/health`` what is wrong.

Values are bound parameters, identifiers come from
:func:`co2logd.store.names.quote_identifier`; nothing user-supplied is spliced.
"""

from __future__ import annotations

import itertools
import socket
import threading
import uuid
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet import task
from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from co2logd.dburl import PostgresUrl
from co2logd.store.names import quote_identifier
from co2logd.store.observers import observed
from co2logd.store.reads import select_sql
from co2logd.store.interfaces import (
    DuplicateUpload,
    IRowStream,
    IStore,
    Query,
    ReplayRefused,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    ValueRefused,
    WriteObserver,
    WriteRequest,
)
from co2logd.store.postgres_schema import (
    DEAD_LETTER_TABLE,
    IDEMPOTENCY_TABLE,
    OUTBOX_TABLE,
    REPLAY_TABLE,
    ROWID,
    decode,
    encode,
    pg_type,
    prepare_postgres,
    table_columns,
)

log = Logger()

#: seconds an outbox lease lasts: longer than any OpenSenseMap request may take
LEASE_SECONDS = 300
#: pg_advisory_xact_lock key that serialises outbox claims
OUTBOX_LOCK = 0x636F326C6F6765
#: rows from which an upload is sent with COPY (twice the rows/s of executemany at 100 rows) instead of INSERT
COPY_FROM_ROWS = 2
#: connections per pool (writes and reads share it; streams have their own)
POOL_CONNECTIONS = 4
#: measurement times more than this many days after the upload are a device clock gone wrong
MAX_AHEAD_DAYS = 366
MEASURED, UPLOAD, UNUSABLE, NONE = 0, 1, 2, 3


class CommitUnknown(StoreUnavailable):
    """The connection died while COMMIT was on its way: the write may or may not be stored."""


class _DeadBeforeCommit(Exception):
    """Internal: the pooled connection died before COMMIT was sent; safe to run again."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _psycopg() -> Any:
    import psycopg

    return psycopg


def _is_dead(raw: Any) -> bool:
    return raw is None or raw.closed or raw.broken


class _Connection(adbapi.Connection):
    """adbapi's pooled connection, but a dead one is dropped quietly instead of logging 'Rollback failed'."""

    def rollback(self) -> None:
        if _is_dead(self._connection):
            self.drop()
            return
        adbapi.Connection.rollback(self)

    def drop(self) -> None:
        """Forget this thread's connection (closed); the next use connects afresh."""
        raw = self._connection
        if raw is not None and self._pool.connections.get(self._pool.threadID()) is raw:
            self._pool.disconnect(raw)
        elif raw is not None:
            try:
                raw.close()
            except Exception:
                pass
        self._connection = None

    def reconnect(self) -> None:
        self.drop()
        self._connection = self._pool.connect()


class _Pool(adbapi.ConnectionPool):
    connectionFactory = _Connection


def connection_params(url: PostgresUrl) -> Dict[str, Any]:
    """psycopg.connect keywords: the URL's, with a connect timeout, keepalives and co2logd's application name."""
    params: Dict[str, Any] = dict(url.params)
    params.setdefault("connect_timeout", "5")
    params.setdefault("application_name", "co2logd")
    params.setdefault("keepalives_idle", "30")
    params.setdefault("keepalives_interval", "10")
    params.setdefault("keepalives_count", "3")
    return params


def _opened(connection: Any) -> None:
    """Every connection: UTC session time zone (times read back as SQLite holds them)."""
    connection.execute("SET TIME ZONE 'UTC'")
    connection.commit()


def prepare(url: PostgresUrl, settings: Any) -> Dict[str, str]:
    """Create or upgrade the schema (synchronous, before the reactor runs); the data table's columns."""
    psycopg = _psycopg()
    try:
        with psycopg.connect(**connection_params(url)) as connection:
            _opened(connection)
            return prepare_postgres(connection, settings)
    except psycopg.Error as e:
        raise StoreError("Cannot prepare PostgreSQL database {}: {}".format(url, _one_line(e)))


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


@implementer(IStore)
class PostgresStore(Service):
    """:class:`IStore` on PostgreSQL; see the module's docstring."""

    name = "store"

    def __init__(
        self,
        url: PostgresUrl,
        settings: Any,
        columns: Mapping[str, str],
        clock: Any = None,
        pool_factory: Callable[..., adbapi.ConnectionPool] = _Pool,
        gateway: Optional[str] = None,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.url = url
        self.settings = settings
        self.clock = clock
        self.columns: Dict[str, str] = dict(columns)
        self.rowid = ROWID
        self.table = quote_identifier(settings.DATA_TABLE_NAME)
        self.queue_limit: int = settings.WRITE_QUEUE_MAX_ROWS
        #: who holds outbox leases: unique per process
        self.gateway = gateway or "{}:{}:{}".format(socket.gethostname(), id(self), uuid.uuid4().hex[:8])
        self.write_stats: Dict[str, int] = {"transactions": 0, "uploads": 0, "largest_group": 0, "busy": 0}
        self.counters: Dict[str, int] = {"retried": 0, "connection_failures": 0}
        self._params = connection_params(url)
        self._pending_rows = 0
        self._in_flight: "List[Deferred[Any]]" = []
        self._observers: List[WriteObserver] = []
        self._replay_seen: Dict[str, float] = {}
        self._stopping = False
        self._closed = False
        self._heartbeat: Optional[task.LoopingCall] = None
        self._row_count = (0, 0)
        self.health: Dict[str, Any] = {"ok_at": None, "error": None, "error_at": None, "write_error": None}
        self._columns_lock = threading.Lock()
        self.pool = pool_factory(
            "psycopg",
            cp_min=1,
            cp_max=POOL_CONNECTIONS,
            cp_openfun=_opened,
            cp_reconnect=True,
            cp_noisy=False,
            cp_reactor=clock if hasattr(clock, "callFromThread") else None,
            **self._params,
        )

    @classmethod
    def open(cls, url: PostgresUrl, settings: Any, clock: Any = None) -> "PostgresStore":
        """Prepare the schema synchronously, then return a store on it."""
        return cls(url, settings, prepare(url, settings), clock=clock)

    # -- service ------------------------------------------------------------

    def startService(self) -> None:
        """Start the heartbeat (``SELECT 1`` every ``HEALTH_HEARTBEAT_SECONDS``)."""
        Service.startService(self)
        interval = self.settings.HEALTH_HEARTBEAT_SECONDS
        if interval:
            self._heartbeat = task.LoopingCall(self.heartbeat)
            self._heartbeat.clock = self.clock
            self._heartbeat.start(interval, now=True).addErrback(lambda f: log.failure("The heartbeat stopped", f))

    def stopService(self) -> "Optional[Deferred[Any]]":
        """Refuse new writes; close the pool once the writes in flight are answered."""
        Service.stopService(self)
        self._stopping = True
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()
        if not self._in_flight:
            self._close_pool()
            return None
        return DeferredList(list(self._in_flight)).addCallback(lambda _: self._close_pool())

    def abandon(self) -> None:
        """Close the (unstarted) pool: start-up failed before the store ran."""
        self._close_pool()

    def _close_pool(self) -> None:
        self._closed = True
        if self.pool.running:
            self.pool.close()

    # -- running SQL with one retry -----------------------------------------

    def _run(self, work: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """
        Run ``work(connection, *args)`` (a psycopg connection, in a pool
        thread) in a transaction committed after it returns.  A connection
        that died before COMMIT was sent is replaced and ``work`` runs once
        more; every failure to reach the server becomes :class:`StoreUnavailable`.
        """
        if self._closed:
            return fail(StoreError("The store is closed"))
        d: "Deferred[Any]" = self.pool.runWithConnection(self._in_transaction, work, False, *args)

        def again(failure: Failure) -> Any:
            if failure.check(_DeadBeforeCommit) and not self._closed:
                self.counters["retried"] += 1
                return self.pool.runWithConnection(self._in_transaction, work, True, *args)
            return failure

        d.addErrback(again).addErrback(self._translate)
        return d

    def _translate(self, failure: Failure) -> Any:
        if failure.check(_DeadBeforeCommit):
            self.counters["connection_failures"] += 1
            raise StoreUnavailable("PostgreSQL is unreachable: {}".format(_one_line(failure.value.error)))  # type: ignore[union-attr]
        psycopg = _psycopg()
        if failure.check(psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected):
            # another gateway's new column, or a long download, held the table: busy, not broken
            raise StoreBusy("PostgreSQL: {}".format(_one_line(failure.value)))  # type: ignore[arg-type]
        if failure.check(psycopg.OperationalError, psycopg.InterfaceError):
            self.counters["connection_failures"] += 1
            raise StoreUnavailable("PostgreSQL is unreachable: {}".format(_one_line(failure.value)))  # type: ignore[arg-type]
        return failure

    def _in_transaction(self, conn: _Connection, work: Callable[..., Any], fresh: bool, *args: Any) -> Any:
        psycopg = _psycopg()
        if fresh or _is_dead(conn._connection):
            conn.reconnect()  # OperationalError when the server is still gone: not retried again
        raw: Any = conn._connection
        committing = False
        try:
            result = work(raw, *args)
            committing = True
            raw.commit()
            return result
        except psycopg.Error as e:
            if _is_dead(raw):
                conn.drop()
                if not committing:
                    raise _DeadBeforeCommit(e)
                raise CommitUnknown(
                    "The connection to PostgreSQL was lost during COMMIT: the write may or may not be stored ({})".format(
                        _one_line(e)
                    )
                )
            raise

    # -- writing ------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while too many rows wait for PostgreSQL: new uploads should be refused (503)."""
        return self._pending_rows >= self.queue_limit

    def add_observer(self, observer: WriteObserver) -> None:
        """Call ``observer(seconds, rows or None)`` on the reactor after every write is answered."""
        self._observers.append(observer)

    def write(self, request: WriteRequest) -> "Deferred[Any]":
        """Add the new columns, then store the upload in one transaction; fire with the row count after COMMIT."""
        started = self.clock.seconds()
        if self._stopping or self._closed:
            return self._observed(started, fail(StoreError("The store is stopping: the write was not queued")))
        if self._pending_rows >= self.queue_limit:
            self.write_stats["busy"] += 1
            return self._observed(started, fail(StoreBusy("{} rows are waiting for PostgreSQL".format(self._pending_rows))))
        rows = len(request.rows) or 1
        self._pending_rows += rows
        missing = {n: t for n, t in request.new_columns.items() if n not in self.columns}
        d = self._run(self._write_one, request, dict(self.columns), missing)

        def done(result: Any) -> Any:
            self._pending_rows -= rows
            self._in_flight.remove(d)
            if isinstance(result, Failure):
                if result.check(StoreUnavailable, CommitUnknown):
                    self.health["write_error"] = (str(result.value), self.clock.seconds())
                return result
            count, columns = result
            if columns is not None:
                self.columns = columns
            self.health["write_error"] = None
            self.write_stats["transactions"] += 1
            self.write_stats["uploads"] += 1
            self.write_stats["largest_group"] = max(self.write_stats["largest_group"], 1)
            if request.replay is not None:
                self.replay_seen(request.replay.key, request.replay.number)
            return count

        self._in_flight.append(d)
        d.addBoth(done)
        return self._observed(started, d)

    def _observed(self, started: float, d: "Deferred[Any]") -> "Deferred[Any]":
        return observed(d, self._observers, self.clock.seconds, started)

    def _write_one(
        self, connection: Any, request: WriteRequest, columns: Mapping[str, str], missing: Mapping[str, Optional[type]]
    ) -> Tuple[int, Optional[Dict[str, str]]]:
        """
        One upload's transaction, in this order so two gateways never wait on
        each other in a cycle: new columns (the table's exclusive lock, taken
        first or not at all), rows, idempotency key, replay counter, outbox.
        Returns the row count and, when columns were added, the table's columns.
        """
        width = len(request.columns)
        if any(len(row) != width for row in request.rows):
            raise ValueRefused("The upload was not stored: its rows do not all have {} values".format(width))
        added: Optional[Dict[str, str]] = None
        with connection.cursor() as cursor:
            # waits on locks (another gateway's new column, a download holding the table) are bounded
            cursor.execute("SET LOCAL lock_timeout = '5s'")
            if missing:
                for name in missing:  # in the upload's order: the download's column order, as on SQLite
                    # IF NOT EXISTS: another gateway may add the same column at the same moment
                    cursor.execute(
                        "ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} {}".format(
                            self.table, quote_identifier(name), pg_type(missing[name])
                        )
                    )
                columns = added = table_columns(cursor, self.settings.DATA_TABLE_NAME)
            self._insert_rows(cursor, request, columns)
            if request.idempotency is not None:  # the key first: a repeat racing the first copy is a repeat
                claim = request.idempotency
                cursor.execute(
                    "INSERT INTO {t} (key, digest, receipt, created_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (key) DO UPDATE SET digest = excluded.digest, receipt = excluded.receipt, "
                    "created_at = excluded.created_at WHERE {t}.created_at < %s".format(t=IDEMPOTENCY_TABLE),
                    (claim.key, claim.digest, claim.receipt, claim.now, claim.cutoff),
                )
                if cursor.rowcount != 1:
                    raise DuplicateUpload(claim.key)
            if request.replay is not None:
                advance = request.replay
                cursor.execute(
                    "INSERT INTO {t} (key, last, updated_at) VALUES (%s, %s::numeric, %s) "
                    "ON CONFLICT (key) DO UPDATE SET last = excluded.last, updated_at = excluded.updated_at "
                    "WHERE excluded.last > {t}.last".format(t=REPLAY_TABLE),
                    (advance.key, repr(advance.number) if isinstance(advance.number, float) else str(advance.number), advance.now),
                )
                if cursor.rowcount != 1:
                    raise ReplayRefused(advance)
            if request.outbox:
                cursor.executemany(
                    "INSERT INTO {} (queued_at, entry) VALUES (%s, %s)".format(OUTBOX_TABLE),
                    [(request.queued_at, entry) for entry in request.outbox],
                )
        return len(request.rows), added

    def _insert_rows(self, cursor: Any, request: WriteRequest, columns: Mapping[str, str]) -> None:
        """The upload's rows, encoded for their columns' types: a multi-row INSERT, or COPY for many rows."""
        if request.rows:
            if True:
                names = [name for name, _ in request.fixed] + list(request.columns)
                types = [columns.get(name, "text") for name in names]
                fixed = [value for _, value in request.fixed]
                try:
                    rows = [
                        [encode(v, t) for v, t in zip(itertools.chain(fixed, row), types)] for row in request.rows
                    ]
                except ValueError as e:
                    raise ValueRefused("The upload was not stored: {}".format(e))
                quoted = ", ".join(quote_identifier(n) for n in names)
                if len(rows) >= COPY_FROM_ROWS:
                    with cursor.copy("COPY {} ({}) FROM STDIN".format(self.table, quoted)) as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    cursor.executemany(
                        "INSERT INTO {} ({}) VALUES ({})".format(self.table, quoted, ", ".join(["%s"] * len(names))),
                        rows,
                    )

    # -- replay counters and idempotency keys --------------------------------

    def replay_last(self, key: str) -> Optional[float]:
        """The last number committed for ``key`` by this process, or None (the transaction decides)."""
        return self._replay_seen.get(key)

    def replay_seen(self, key: str, number: float) -> None:
        """Remember a committed number (bounded: forgetting only moves a refusal into the transaction)."""
        if len(self._replay_seen) >= 10_000:
            self._replay_seen.clear()
        self._replay_seen[key] = number

    def idempotency_lookup(self, key: str, cutoff: float) -> "Deferred[Any]":
        """Fire with ``(digest, receipt JSON)`` of ``key`` stored at or after ``cutoff``, or None."""

        def run(connection: Any) -> Any:
            row = connection.execute(
                "SELECT digest, receipt FROM {} WHERE key = %s AND created_at >= %s".format(IDEMPOTENCY_TABLE),
                (key, cutoff),
            ).fetchone()
            return tuple(row) if row else None

        return self._run(run)

    def idempotency_expire(self, cutoff: float) -> "Deferred[Any]":
        """Forget keys stored before ``cutoff``; fire with how many went."""
        return self._run(
            lambda c: c.execute("DELETE FROM {} WHERE created_at < %s".format(IDEMPOTENCY_TABLE), (cutoff,)).rowcount
        )

    # -- download -----------------------------------------------------------

    def count(self) -> "Deferred[Any]":
        """Fire with the number of rows in the data table."""
        return self._run(lambda c: c.execute("SELECT count(*) FROM {}".format(self.table)).fetchone()[0])

    def select_sql(self, query: Query) -> Tuple[str, List[Any]]:
        """The SELECT of a :class:`Query`: its columns, or every data column (``rowid`` never shows)."""
        return select_sql(query, self.table, list(self.columns), "%s", self._bound_value)

    def _bound_value(self, column: str, value: Any) -> Any:
        """A bound of a download query in the column's type (a time column compared with the text SQLite holds)."""
        declared = self.columns.get(column, "bigint" if column == ROWID else "text")
        try:
            return encode(value, declared)
        except ValueError:
            if declared.startswith("timestamp") and isinstance(value, str):
                return value  # PostgreSQL reads the time text itself
            raise

    def select(self, query: Query, chunk_rows: int = 500) -> "Deferred[Any]":
        """Fire with a :class:`PgRowStream` over the query's rows (its own connection and server-side cursor)."""
        if self._closed:
            return fail(StoreError("The store is closed"))
        try:
            sql, params = self.select_sql(query)
        except ValueError as e:
            return fail(e)
        stream = PgRowStream(self, chunk_rows)
        return self._in_thread(stream.open, sql, params).addCallback(lambda _: stream).addErrback(self._translate)

    def _in_thread(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        return deferToThreadPool(self.pool._reactor, self.pool.threadpool, f, *args)

    def connect(self) -> Any:
        """A new psycopg connection of its own (streams, the copy tool)."""
        connection = _psycopg().connect(**self._params)
        _opened(connection)
        return connection

    def rowid_at(self, query: Query, offset: int) -> "Deferred[Any]":
        """The rowid of the row ``offset`` places into ``query`` (columns ``[rowid]``), or None."""
        try:
            sql, params = self.select_sql(query)
        except ValueError as e:
            return fail(e)

        def run(connection: Any) -> Any:
            row = connection.execute(sql + " OFFSET %s", params + [offset]).fetchone()
            return row[0] if row else None

        return self._run(run)

    # -- the dashboard, /plot and /health ------------------------------------

    def _t_sql(self, columns: Optional[Mapping[str, str]] = None) -> Tuple[str, str]:
        """(measurement time in UNIX seconds, its kind) as SQL over the data table aliased ``d``."""
        from co2logd.store import mtime

        columns = self.columns if columns is None else columns
        upload = "d." + quote_identifier(self.settings.UPLOAD_TIME_COL)
        up_ok = "({u} >= 'epoch'::timestamptz)".format(u=upload)
        raws, times = [], []
        for c in mtime.time_columns(self.settings, columns):
            raw = "d." + quote_identifier(c)
            declared = columns.get(c, "")
            raws.append(raw)
            if declared.startswith("timestamp"):
                times.append(raw)
            elif declared == "text":
                times.append("co2logd_time({})".format(raw))  # time text as SQLite would read it, else NULL
            else:
                times.append("NULL::timestamptz")  # a number is no time (as on SQLite)
        candidates = times
        oks = [
            "coalesce({c} >= 'epoch'::timestamptz AND {c} <= coalesce({u}, now()) + interval '{days} days', false)".format(
                c=c, u=upload, days=MAX_AHEAD_DAYS
            )
            for c in candidates
        ]
        cases = "".join(" WHEN {} THEN extract(epoch FROM {})".format(ok, c) for ok, c in zip(oks, candidates))
        t_sql = "(CASE{} WHEN {} THEN extract(epoch FROM {}) END)::float8".format(cases, up_ok, upload)
        if candidates:
            kind = "(CASE WHEN {m} THEN {M} WHEN NOT coalesce({up}, false) THEN {N} WHEN {absent} THEN {U} ELSE {X} END)".format(
                m=" OR ".join(oks), M=MEASURED, up=up_ok, N=NONE,
                absent=" AND ".join("{} IS NULL".format(c) for c in raws), U=UPLOAD, X=UNUSABLE,
            )
        else:
            kind = "(CASE WHEN coalesce({}, false) THEN {} ELSE {} END)".format(up_ok, UPLOAD, NONE)
        return t_sql, kind

    def _source_sql(self) -> Tuple[str, str]:
        transport = "d." + quote_identifier(self.settings.TRANSPORT_COL) if self.settings.TRANSPORT_COL in self.columns else "NULL::text"
        box_col = self.settings.OSEM_BOX_COL
        box = "d." + quote_identifier(box_col) if box_col in self.columns else "NULL::text"
        return transport, box

    def _filter_sql(self, filters: Sequence[Tuple[str, Any]]) -> Tuple[str, List[Any]]:
        """WHERE clauses for dashboard filters: the column's text equals the value's text."""
        from co2logd.store.rollups import value_forms as _value_forms

        clauses, params = [], []
        for column, value in filters:
            if column not in self.columns:
                return " AND false", []
            forms = [str(f) for f in _value_forms(value)]
            clauses.append("d.{}::text = ANY(%s)".format(quote_identifier(column)))
            params.append(forms)
        return "".join(" AND " + c for c in clauses), params

    def row_count(self) -> "Deferred[Any]":
        """Rows in the data table: counted once, then only the rows after the last rowid seen."""

        def run(connection: Any) -> Any:
            top = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()[0]
            seen, counted = self._row_count
            if top < seen:
                seen, counted = 0, 0
            if top > seen:
                counted += connection.execute(
                    "SELECT count(*) FROM {} WHERE rowid > %s AND rowid <= %s".format(self.table), (seen, top)
                ).fetchone()[0]
            self._row_count = (top, counted)
            return counted

        return self._run(run)

    def want_rollups(self, columns: Iterable[str]) -> None:
        """No rollups on PostgreSQL (yet): plots read the rows."""

    def catch_up(self) -> "Deferred[Any]":
        """Nothing runs in the background on PostgreSQL."""
        return succeed(None)

    def plot_series(
        self, columns: Sequence[str], bounds: Sequence[float], filters: Sequence[Tuple[str, Any]] = (),
        max_series: int = 6, rollups: bool = True,
    ) -> "Deferred[Any]":
        """Per source, the min and max of each column's numeric values per bucket of measurement time (from the rows)."""
        from co2logd.store.rollups import PlotData, source_label

        columns = [c for c in columns]
        bounds = [float(b) for b in bounds]
        data = PlotData(columns)
        if len(bounds) < 2:
            return succeed(data)
        t_sql, _ = self._t_sql()
        transport, box = self._source_sql()
        where, params = self._filter_sql(filters)
        values = []
        for c in columns:
            declared = self.columns.get(c)
            if declared in ("bigint", "double precision", "integer", "real", "numeric", "smallint"):
                values.append("min(d.{0}), max(d.{0})".format(quote_identifier(c)))
            else:
                values.append("NULL, NULL")
        sql = (
            "SELECT {tr}, {bx}, width_bucket({t}, %s::float8[]) - 1 AS b, count(*), {values} "
            "FROM {table} AS d WHERE {t} >= %s AND {t} < %s{where} GROUP BY 1, 2, 3"
        ).format(tr=transport, bx=box, t=t_sql, values=", ".join(values) or "NULL", table=self.table, where=where)

        def run(connection: Any) -> Any:
            return connection.execute(sql, [bounds, bounds[0], bounds[-1]] + params).fetchall()

        def build(rows: List[Any]) -> Any:
            counts: Dict[str, int] = {}
            found: Dict[str, Dict[int, List[Tuple[Any, Any]]]] = {}
            for tr, bx, b, n, *v in rows:
                label = source_label(tr, bx)
                counts[label] = counts.get(label, 0) + n
                pairs = [(v[2 * k], v[2 * k + 1]) for k in range(len(columns))]
                if not any(lo is not None for lo, _ in pairs):
                    continue
                slot = found.setdefault(label, {})
                old = slot.get(b)
                if old is None:
                    slot[b] = pairs
                else:
                    slot[b] = [
                        (lo if olo is None else (olo if lo is None else min(lo, olo)),
                         hi if ohi is None else (ohi if hi is None else max(hi, ohi)))
                        for (olo, ohi), (lo, hi) in zip(old, pairs)
                    ]
            ranked = sorted((l for l in counts if counts[l]), key=lambda l: (-counts[l], l))
            keep = set(ranked[:max_series])
            data.left_out = max(0, len(ranked) - max_series)
            totals: Dict[str, int] = {}
            for label in keep:
                if label in found:
                    data.buckets[label] = found[label]
                    totals[label] = len(found[label])
            data.series = sorted(totals, key=lambda n: (-totals[n], n))
            return data

        return self._run(run).addCallback(build)

    def time_extent(self, filters: Sequence[Tuple[str, Any]] = ()) -> "Deferred[Any]":
        """``(earliest, latest)`` measurement time of the rows the filters select, or None."""
        t_sql, _ = self._t_sql()
        where, params = self._filter_sql(filters)

        def run(connection: Any) -> Any:
            low, high = connection.execute(
                "SELECT min({t}), max({t}) FROM {table} AS d WHERE true{w}".format(t=t_sql, table=self.table, w=where), params
            ).fetchone()
            return None if low is None else (low, high)

        return self._run(run)

    def unusable_times(self, since: float, until: float, filters: Sequence[Tuple[str, Any]] = ()) -> "Deferred[Any]":
        """Rows in ``[since, until)`` placed by upload time because their own time was unusable, plus rows with no time."""
        t_sql, kind = self._t_sql()
        where, params = self._filter_sql(filters)

        def run(connection: Any) -> Any:
            return connection.execute(
                "SELECT count(*) FROM {table} AS d WHERE {kind} >= {u} AND (({t} >= %s AND {t} < %s) OR {t} IS NULL){w}".format(
                    table=self.table, kind=kind, u=UNUSABLE, t=t_sql, w=where
                ),
                [since, until] + params,
            ).fetchone()[0]

        return self._run(run)

    def latest_by_source(self, columns: Sequence[str], filters: Sequence[Tuple[str, Any]] = (), limit: int = 6) -> "Deferred[Any]":
        """``[(label, time, {column: newest numeric value})]`` of the ``limit`` most recently heard sources."""
        from co2logd.store.rollups import source_label

        t_sql, _ = self._t_sql()
        transport, box = self._source_sql()
        where, params = self._filter_sql(filters)
        cols = ", ".join("d." + quote_identifier(c) for c in columns) or "NULL"

        def run(connection: Any) -> Any:
            newest = connection.execute(
                "SELECT {tr}, {bx}, max({t}) AS m FROM {table} AS d WHERE {t} IS NOT NULL{w} "
                "GROUP BY 1, 2 ORDER BY m DESC LIMIT 10000".format(tr=transport, bx=box, t=t_sql, table=self.table, w=where),
                params,
            ).fetchall()
            per_label: Dict[str, Tuple[float, Dict[str, Any]]] = {}
            for tr, bx, when in newest:
                label = source_label(tr, bx)
                if label not in per_label and len(per_label) >= limit:
                    continue
                rows = connection.execute(
                    "SELECT {t}, {cols} FROM {table} AS d WHERE {tr} IS NOT DISTINCT FROM %s AND {bx} IS NOT DISTINCT FROM %s "
                    "AND {t} IS NOT NULL ORDER BY 1 DESC LIMIT 100".format(
                        t=t_sql, cols=cols, table=self.table, tr=transport, bx=box
                    ),
                    (tr, bx),
                ).fetchall()
                latest, values = per_label.get(label, (when, {}))
                for _, *row in rows:
                    for column, value in zip(columns, row):
                        if column not in values and isinstance(value, (int, float)) and not isinstance(value, bool):
                            values[column] = value
                per_label[label] = (max(latest, when), values)
            return sorted(((label, t, v) for label, (t, v) in per_label.items()), key=lambda x: -x[1])

        return self._run(run)

    def latest_values(self, columns: Sequence[str]) -> "Deferred[Any]":
        """``{column: (value, upload time)}``: each numeric column's newest value by upload time."""
        upload = quote_identifier(self.settings.UPLOAD_TIME_COL)

        def run(connection: Any) -> Any:
            out = {}
            for column in columns:
                if self.columns.get(column) not in ("bigint", "double precision"):
                    continue
                c = quote_identifier(column)
                row = connection.execute(
                    "SELECT {c}, {t} FROM {table} WHERE {c} IS NOT NULL ORDER BY {t} DESC NULLS LAST LIMIT 1".format(
                        c=c, t=upload, table=self.table
                    )
                ).fetchone()
                if row is not None:
                    out[column] = (row[0], decode(row[1]))
            return out

        return self._run(run)

    def source_activity(
        self, box_column: Optional[str], after_rowid: int = 0,
        trim: Optional[Callable[[Dict[Tuple[Any, Any], List[Any]]], None]] = None,
    ) -> "Deferred[Any]":
        """``([(transport, box, last upload time, rows, uploads)], last rowid read)`` for the rows after ``after_rowid``."""
        box = quote_identifier(box_column) if box_column and box_column in self.columns else "NULL::text"
        transport = quote_identifier(self.settings.TRANSPORT_COL)
        upload = quote_identifier(self.settings.UPLOAD_TIME_COL)

        def run(connection: Any) -> Any:
            top = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()[0]
            found: Dict[Tuple[Any, Any], List[Any]] = {}
            if top > after_rowid:
                for n, (tr, bx, last, count, uploads) in enumerate(connection.execute(
                    "SELECT {tr}, {bx}::text, max({t}), count(*), count(DISTINCT {t}) FROM {table} "
                    "WHERE rowid > %s AND rowid <= %s GROUP BY 1, 2".format(tr=transport, bx=box, t=upload, table=self.table),
                    (after_rowid, top),
                ), 1):
                    found[(tr, bx)] = [decode(last), count, uploads]
                    if trim is not None and n % 5000 == 0:
                        trim(found)
                if trim is not None:
                    trim(found)
            return [(k[0], k[1], v[0], v[1], v[2]) for k, v in found.items()], max(top, after_rowid)

        return self._run(run)

    def heartbeat(self) -> "Deferred[Any]":
        """``SELECT 1`` now; the outcome is kept for /health.  Fires with None either way."""
        state = self.health

        def done(_: Any) -> None:
            state.update(ok_at=self.clock.seconds(), error=None)

        def failed(failure: Failure) -> None:
            state.update(error=_one_line(failure.value), error_at=self.clock.seconds())  # type: ignore[arg-type]

        return self._run(lambda c: c.execute("SELECT 1").fetchone()).addCallbacks(done, failed)

    def disk_report(self, now: float) -> Tuple[Dict[str, Any], List[str]]:
        """/health's ``database`` entry: whether PostgreSQL answers, and why not (no I/O, the URL without password)."""
        state = self.health
        reasons: List[str] = []
        if state["error"] is not None:
            reasons.append("PostgreSQL does not answer: {}".format(state["error"]))
        interval = self.settings.HEALTH_HEARTBEAT_SECONDS
        if state["error"] is None and state["ok_at"] is not None and interval and now - state["ok_at"] > 3 * interval:
            reasons.append("no heartbeat has succeeded for {:.0f} s".format(now - state["ok_at"]))
        if state["write_error"] is not None:
            reasons.append("the last upload could not be written: {}".format(state["write_error"][0]))
        report: Dict[str, Any] = {
            "engine": "postgresql",
            "url": str(self.url),
            "writable": not reasons,
            "heartbeat_at": state["ok_at"],
            "retried_queries": self.counters["retried"],
        }
        if reasons:
            report["error"] = reasons[0]
        return report, reasons

    # -- the OpenSenseMap outbox --------------------------------------------

    def outbox_fetch(self, limit: int) -> "Deferred[Any]":
        """
        Lease the oldest ``limit`` entries to this gateway, in a short
        transaction that commits at once, and fire with ``[(id, queued_at,
        entry)]``: entries no other gateway holds a live lease on, and only of
        boxes no other gateway holds (one sender per box: two gateways never
        create or change one box at once).  Claims are serialised by an
        advisory lock, so two gateways claiming at once see each other's leases.
        """

        def run(connection: Any) -> Any:
            connection.execute("SELECT pg_advisory_xact_lock(%s)", (OUTBOX_LOCK,))
            rows = connection.execute(
                "UPDATE {o} SET claimed_by = %(gw)s, lease_until = now() + %(lease)s * interval '1 second' "
                "WHERE id IN (SELECT id FROM {o} AS e "
                "WHERE (e.lease_until IS NULL OR e.lease_until < now() OR e.claimed_by = %(gw)s) "
                "AND NOT EXISTS (SELECT 1 FROM {o} AS other WHERE other.box = e.box "
                "AND other.claimed_by <> %(gw)s AND other.lease_until >= now()) "
                "ORDER BY id LIMIT %(n)s FOR UPDATE SKIP LOCKED) RETURNING id, queued_at, entry".format(o=OUTBOX_TABLE),
                {"gw": self.gateway, "lease": LEASE_SECONDS, "n": int(limit)},
            ).fetchall()
            return sorted((int(i), q, e) for i, q, e in rows)

        return self._run(run)

    def outbox_delete(self, ids: Iterable[int]) -> "Deferred[Any]":
        """Remove delivered entries."""
        ids = [int(i) for i in ids]
        return self._run(lambda c: c.execute("DELETE FROM {} WHERE id = ANY(%s)".format(OUTBOX_TABLE), (ids,)).rowcount)

    def outbox_dead_letter(self, failures: Iterable[Tuple[int, str]], failed_at: float) -> "Deferred[Any]":
        """Move ``[(id, reason)]`` refused for good to the dead letters."""
        failures = [(int(i), reason) for i, reason in failures]

        def run(connection: Any) -> Any:
            with connection.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO {dead} (id, queued_at, failed_at, entry, reason) "
                    "SELECT id, queued_at, %s, entry, %s FROM {o} WHERE id = %s "
                    "ON CONFLICT (id) DO UPDATE SET failed_at = excluded.failed_at, reason = excluded.reason".format(
                        dead=DEAD_LETTER_TABLE, o=OUTBOX_TABLE
                    ),
                    [(failed_at, reason, i) for i, reason in failures],
                )
                cursor.execute("DELETE FROM {} WHERE id = ANY(%s)".format(OUTBOX_TABLE), ([i for i, _ in failures],))
            return len(failures)

        return self._run(run)

    def outbox_stats(self) -> "Deferred[Any]":
        """``{"depth", "oldest_queued_at", "dead_letters"}`` of the shared outbox."""

        def run(connection: Any) -> Any:
            depth, oldest = connection.execute("SELECT count(*), min(queued_at) FROM {}".format(OUTBOX_TABLE)).fetchone()
            dead = connection.execute("SELECT count(*) FROM {}".format(DEAD_LETTER_TABLE)).fetchone()[0]
            return {"depth": depth, "oldest_queued_at": oldest, "dead_letters": dead}

        return self._run(run)

    def dead_letters(self, limit: int = 100) -> "Deferred[Any]":
        """The newest dead letters as ``[(id, queued_at, failed_at, entry, reason)]``."""
        return self._run(
            lambda c: [
                tuple(r)
                for r in c.execute(
                    "SELECT id, queued_at, failed_at, entry, reason FROM {} ORDER BY failed_at DESC LIMIT %s".format(
                        DEAD_LETTER_TABLE
                    ),
                    (int(limit),),
                ).fetchall()
            ]
        )


@implementer(IRowStream)
class PgRowStream:
    """The rows of one SELECT through a server-side cursor on a connection of its own, a chunk at a time."""

    _names = itertools.count(1)

    def __init__(self, store: PostgresStore, chunk_rows: int):
        self.store = store
        self.chunk_rows = chunk_rows
        self.header: List[str] = []
        self._connection: Any = None
        self._cursor: Any = None

    def open(self, sql: str, params: List[Any]) -> None:
        """In a thread: connect, declare the cursor, read the header."""
        self._connection = self.store.connect()
        try:
            self._cursor = self._connection.cursor(name="co2logd_stream_{}".format(next(self._names)))
            self._cursor.itersize = self.chunk_rows
            self._cursor.execute(sql, params)
            self.header = [d.name for d in self._cursor.description]
        except BaseException:
            self._close()
            raise

    def next_chunk(self) -> "Deferred[Any]":
        """The next list of rows; an empty list at the end (the connection is then closed)."""
        return self.store._in_thread(self._fetch).addErrback(self.store._translate)

    def _fetch(self) -> List[Tuple[Any, ...]]:
        if self._cursor is None:
            return []
        rows = [tuple(decode(v) for v in row) for row in self._cursor.fetchmany(self.chunk_rows)]
        if len(rows) < self.chunk_rows:
            self._close()
        return rows

    def close(self) -> "Deferred[Any]":
        """Stop early (the client went away)."""
        return self.store._in_thread(self._close)

    def _close(self) -> None:
        cursor, connection = self._cursor, self._connection
        self._cursor = self._connection = None
        for thing in (cursor, connection):
            if thing is not None:
                try:
                    thing.close()
                except Exception:
                    pass
