"""
The SQLite store: one file behind ``twisted.enterprise.adbapi``, providing
:class:`~co2logd.store.IStore`.

:class:`Store` composes the parts: the schema, prepared before the reactor
runs (:mod:`~co2logd.store.schema`), the group-commit writer
(:mod:`~co2logd.store.writer`), the download reads (:mod:`~co2logd.store.reads`),
the outbox (:mod:`~co2logd.store.outbox`), the replay and idempotency tables
(:mod:`~co2logd.store.freshness`), the file checks and heartbeat
(:mod:`~co2logd.store.watch`), and the dashboard's reads and plot rollups
(:mod:`~co2logd.store.rollups`).  Identifiers come from
:func:`co2logd.store.names.quote_identifier` (checked names only); values are
always bound parameters.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.enterprise import adbapi
from twisted.internet.defer import Deferred, DeferredList, fail
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from co2logd.store import freshness, outbox, reads
from co2logd.store.names import quote_identifier, rowid_alias
from co2logd.store.rollups import PlotData, Rollups
from co2logd.store.interfaces import Filter, IRowStream, IStore, Query, StoreError, WriteObserver, WriteRequest
from co2logd.store.schema import prepare_database
from co2logd.store.sqlite import configure_connection, configure_reader
from co2logd.store.watch import Watch
from co2logd.store.writer import GroupWriter

log = Logger()


@implementer(IStore)
class Store(Service):
    """
    Writes and reads the data table through one adbapi connection (the
    writer's); the dashboard and plots read on read-only connections.

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
        settings: Any,
        columns: Mapping[str, str],
        pool_factory: Callable[..., adbapi.ConnectionPool] = adbapi.ConnectionPool,
        clock: Optional[IReactorTime] = None,
    ):
        self.path = path
        self.watch = Watch(path, settings, clock)
        self.settings = settings
        self.columns: Dict[str, str] = dict(columns)
        self.table = quote_identifier(settings.DATA_TABLE_NAME)
        #: how every query names the data table's rowid: a column called rowid may hide it
        self.rowid: str = rowid_alias(self.columns)
        #: True once the pools are closed
        self.closed = False
        if clock is None:
            from twisted.internet import reactor as default

            self._maintenance_clock: Any = default  # the heartbeat runs only with a given clock; maintenance always
        else:
            self._maintenance_clock = clock
        self._maintenance: Optional[LoopingCall] = None
        synchronous = settings.DB_SYNCHRONOUS

        def opened(connection: sqlite3.Connection) -> None:
            configure_connection(connection, synchronous)
            self.watch.remember_files()  # the files this connection writes

        self.pool = pool_factory(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=1,
            cp_openfun=opened,
            cp_noisy=False,
        )
        # dashboard and plot reads: their own read-only connections
        self.read_pool = pool_factory(
            "sqlite3",
            path,
            check_same_thread=False,
            cp_min=1,
            cp_max=2,
            cp_openfun=configure_reader,
            cp_noisy=False,
        )
        self.watch.pool = self.pool
        self.writer = GroupWriter(self.pool, self, settings.WRITE_QUEUE_MAX_ROWS)
        self.rollups = Rollups(self)

    @classmethod
    def open(cls, path: str, settings: Any, clock: Optional[IReactorTime] = None) -> "Store":
        """Prepare the schema synchronously, then return a store on it (with a heartbeat when given a clock)."""
        return cls(path, settings, prepare_database(path, settings), clock=clock)

    # -- the service ------------------------------------------------------------

    def startService(self) -> None:
        """Start the heartbeat (when the store has a clock) and the maintenance timer (side table and rollups, see :meth:`maintain`)."""
        Service.startService(self)
        self.watch.start_heartbeat()
        self._maintenance = LoopingCall(self.rollups.maintain)
        self._maintenance.clock = self._maintenance_clock
        self._maintenance.start(self.rollups.maintenance_interval, now=True).addErrback(
            lambda f: log.failure("The maintenance timer stopped", f)
        )

    def stopService(self) -> "Optional[Deferred[Any]]":
        """Refuse writes from now on; close the pools once the group in flight has been committed (or has failed)."""
        Service.stopService(self)
        drained = self.writer.stop()
        self.watch.stop_heartbeat()
        if self._maintenance is not None and self._maintenance.running:
            self._maintenance.stop()
        maintaining = self.rollups.maintaining
        waits = [maintaining] if maintaining is not None else []  # stops after its chunk
        if not drained.called:
            waits.append(drained)
        if not waits:
            self._close_pool()
            return None
        return DeferredList(waits).addCallback(lambda _: self._close_pool())

    def abandon(self) -> None:
        """Close the (unstarted) pool: start-up failed before the store ran."""
        self._close_pool()

    def _close_pool(self) -> None:
        self.closed = True
        for pool in (self.pool, self.read_pool):
            if pool.running:  # stopping twice (a test's cleanup after its own stop) is harmless
                pool.close()

    def _run(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """``f(connection, *args)`` on the writer's connection; a StoreError once the store is closed."""
        if self.closed:
            return fail(StoreError("The store is closed"))
        d: "Deferred[Any]" = self.pool.runWithConnection(f, *args)
        return d

    # -- writing ------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while the writer is behind: new uploads should be refused (503) until it catches up."""
        return self.writer.busy

    @property
    def write_stats(self) -> Dict[str, int]:
        """Transactions written, uploads in them, the largest group, writes refused as busy."""
        return self.writer.stats

    def write(self, request: WriteRequest) -> "Deferred[Any]":
        """See :meth:`co2logd.store.IStore.write`."""
        return self.writer.write(request)

    def add_observer(self, observer: WriteObserver) -> None:
        """Call ``observer(seconds, rows or None)`` on the reactor after every write is answered."""
        self.writer.add_observer(observer)

    # what the writer asks of the rest of the store (writer.WriterHost)

    def group_began(self, cursor: sqlite3.Cursor) -> Tuple[int, int]:
        """The last rowid before the group and how far the measurement-time side table is filled."""
        (before,) = cursor.execute("SELECT coalesce(max({}), 0) FROM {}".format(self.rowid, self.table)).fetchone()
        return before, self.rollups.filled_to(cursor)

    def group_written(self, cursor: sqlite3.Cursor, began: Tuple[int, int], columns: Dict[str, str]) -> Optional[int]:
        """Index the group's rows by measurement time and fold them into the current rollups (small groups)."""
        before, filled = began
        return self.rollups.index_new_rows(cursor, before, filled, columns)

    def indexed_through(self, row: int) -> "Deferred[None]":
        """Fire once the rows up to ``row`` are indexed by measurement time (short transactions)."""
        return self.rollups.indexed_through(row)

    def before_commit(self, connection: sqlite3.Connection) -> None:
        """Raise DatabaseLost when the database file is no longer ours."""
        self.watch.check_files(connection)

    def after_group(self, outcome: Any, results: List[Any]) -> None:
        """Remember a lost database or a disk error for /health."""
        self.watch.note_write(outcome, results)

    # -- the database file (co2logd.store.watch) ---------------------------------

    @property
    def lost(self) -> Optional[str]:
        """Why writes are refused for good (the database file was deleted or replaced), or None."""
        return self.watch.lost

    def disk_report(self, now: float) -> Tuple[Dict[str, Any], List[str]]:
        """/health's ``database`` entry and the reasons it gives for a 503 (no I/O)."""
        return self.watch.disk_report(now)

    def heartbeat(self) -> "Deferred[None]":
        """Write the heartbeat now (see :meth:`co2logd.store.watch.Watch.heartbeat`)."""
        return self.watch.heartbeat()

    # -- replay counters and idempotency keys ---------------------------------

    def replay_last(self, key: str) -> Optional[float]:
        """The last counter/timestamp committed for ``key`` by this process, or None (then the transaction decides)."""
        return self.writer.replay_last(key)

    def idempotency_lookup(self, key: str, cutoff: float) -> "Deferred[Any]":
        """Fire with ``(digest, receipt JSON)`` for a key stored at or after ``cutoff``, or None."""
        return self._run(freshness.lookup_key, key, cutoff)

    def idempotency_expire(self, cutoff: float) -> "Deferred[Any]":
        """Delete idempotency keys stored before ``cutoff``; fire with how many went."""
        return self._run(freshness.expire_keys, cutoff)

    # -- reading ------------------------------------------------------------

    def count(self) -> "Deferred[Any]":
        """Number of rows in the data table."""
        return self._run(reads.count_rows, self.table)

    def select(self, query: Query, chunk_rows: int = 500) -> "Deferred[IRowStream]":
        """
        Fire with a :class:`~co2logd.store.reads.RowStream` over the query's
        rows, fetched a chunk at a time so an export is never held in memory whole.
        """
        try:
            sql, params = reads.select_sql(query, self.table)
        except ValueError:
            return fail()
        return self._run(reads.RowStream(self.pool, chunk_rows).start, sql, params)

    def rowid_at(self, query: Query, offset: int) -> "Deferred[Any]":
        """
        The rowid of the row ``offset`` places into ``query``'s result (its
        ``columns`` must be ``[store.rowid]``, its limit 1), or None: where the
        next page of a paged download starts.
        """
        return self._run(reads.rowid_at, query, self.table, offset)

    # -- the OpenSenseMap outbox --------------------------------------------

    def outbox_fetch(self, limit: int) -> "Deferred[Any]":
        """The oldest ``limit`` outbox entries as [(id, queued_at, entry)]."""
        return self._run(outbox.fetch, limit)

    def outbox_delete(self, ids: Iterable[int]) -> "Deferred[Any]":
        """Remove delivered entries."""
        return self._run(outbox.delete, list(ids))

    def outbox_dead_letter(self, failures: Iterable[Tuple[int, str]], failed_at: float) -> "Deferred[Any]":
        """Move entries that the OpenSenseMap refused for good, with the reason."""
        return self._run(outbox.dead_letter, list(failures), failed_at)

    def outbox_stats(self) -> "Deferred[Any]":
        """{"depth", "oldest_queued_at", "dead_letters"} of the outbox."""
        return self._run(outbox.stats)

    def dead_letters(self, limit: int = 100) -> "Deferred[Any]":
        """The newest dead letters as [(id, queued_at, failed_at, entry, reason)]."""
        return self._run(outbox.dead_letters, limit)

    # -- the dashboard, /plot and /health (co2logd.store.rollups) ---------------

    def want_rollups(self, columns: Iterable[str]) -> None:
        """Ask maintenance to keep rollups of ``columns`` (bounded: the oldest wishes go first)."""
        self.rollups.want_rollups(columns)

    def catch_up(self) -> "Deferred[None]":
        """Fire once maintenance has nothing left to do (for tests and benchmarks)."""
        return self.rollups.catch_up()

    def plot_series(
        self,
        columns: Sequence[str],
        bounds: Sequence[float],
        filters: Sequence[Filter] = (),
        max_series: int = 6,
        rollups: bool = True,
    ) -> "Deferred[PlotData]":
        """See :meth:`co2logd.store.rollups.Rollups.plot_series`."""
        return self.rollups.plot_series(columns, bounds, filters, max_series, rollups)

    def time_extent(self, filters: Sequence[Filter] = ()) -> "Deferred[Optional[Tuple[float, float]]]":
        """``(earliest, latest)`` measurement time of the rows the filters select, or None."""
        return self.rollups.time_extent(filters)

    def unusable_times(self, since: float, until: float, filters: Sequence[Filter] = ()) -> "Deferred[int]":
        """Rows in the range placed by upload time because their time was unusable, plus rows with no time at all."""
        return self.rollups.unusable_times(since, until, filters)

    def latest_by_source(
        self, columns: Sequence[str], filters: Sequence[Filter] = (), limit: int = 6
    ) -> "Deferred[List[Tuple[str, float, Dict[str, Any]]]]":
        """See :meth:`co2logd.store.rollups.Rollups.latest_by_source`."""
        return self.rollups.latest_by_source(columns, filters, limit)

    def row_count(self) -> "Deferred[int]":
        """Number of rows in the data table, counted incrementally (see :meth:`co2logd.store.rollups.Rollups.row_count`)."""
        return self.rollups.row_count()

    def latest_values(self, columns: Sequence[str]) -> "Deferred[Dict[str, Tuple[Any, Any]]]":
        """``{column: (value, upload time)}``: each column's newest numeric value by upload time (any source)."""
        return self.rollups.latest_values(columns)

    def source_activity(
        self,
        box_column: Optional[str],
        after_rowid: int = 0,
        trim: Optional[Callable[[Dict[Tuple[Any, Any], List[Any]]], None]] = None,
    ) -> "Deferred[Tuple[List[Tuple[Any, Any, Any, int, int]], int]]":
        """See :meth:`co2logd.store.rollups.Rollups.source_activity`."""
        return self.rollups.source_activity(box_column, after_rowid, trim)
