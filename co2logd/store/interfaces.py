"""
What the rest of co2logd may ask of a store, and the plain values that
cross that line.

:class:`IStore` names every operation ingest, the web resources, the
OpenSenseMap uploader and the status pages use.  Values going in and out are
Python values (``datetime``, ``bool``, numbers, text), never a database's
encoding of them; each store encodes for its own database.  Implementations:
:class:`co2logd.store.Store` (SQLite) and :class:`co2logd.testing.MemoryStore`,
both run through ``tests/store_behaviour.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

#: a row filter of the dashboard and /plot: (transport or box column, value)
Filter = Tuple[str, Any]

#: called on the reactor once per write when it is answered: (seconds from
#: ``write`` to the answer, rows stored, or None when the write failed)
WriteObserver = Callable[[float, Optional[int]], None]


class StoreError(Exception):
    """The database cannot be opened, upgraded or written, or the store is stopping."""


class StoreUnavailable(StoreError):
    """The database server cannot be reached (down, restarting, the network gone); nothing was written, try again."""


class ValueRefused(StoreError, ValueError):
    """A value does not fit its column's type (PostgreSQL columns hold one type); nothing was written."""


class StoreBusy(StoreError):
    """The writer is behind: too many rows wait for the database; try again later."""


class DatabaseLost(StoreError):
    """The database file was deleted or replaced under the running daemon: writes are refused until a restart."""


class ReplayRefused(StoreError):
    """The write's :class:`ReplayAdvance` number is not larger than the stored one; nothing was written."""

    def __init__(self, advance: "ReplayAdvance"):
        super().__init__(advance.key)
        self.advance = advance


class DuplicateUpload(StoreError):
    """The write's :class:`IdempotencyClaim` key is taken by an upload within the retention; nothing was written."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


@dataclass(frozen=True)
class ReplayAdvance:
    """Store ``number`` as the last one of ``key`` if it is larger than the stored one, else refuse the write."""

    key: str
    number: float
    now: float


@dataclass(frozen=True)
class IdempotencyClaim:
    """Take ``key`` with ``digest`` and ``receipt`` (JSON text) unless a write since ``cutoff`` holds it."""

    key: str
    digest: str
    receipt: str
    now: float
    cutoff: float


@dataclass(frozen=True)
class WriteRequest:
    """
    One upload for :meth:`IStore.write`, all of it or nothing.

    ``rows`` hold values for ``columns``; ``fixed`` are columns with one
    value for every row (upload time, checksums, transport), written before
    ``columns``.  ``new_columns`` are added first: name → the Python type of
    the column's first value (None: no value), from which the store picks
    the column's type.  ``outbox`` entries (JSON text) are queued with
    ``queued_at``.  ``replay`` and ``idempotency`` are checked and taken in
    the same transaction (:class:`ReplayRefused`, :class:`DuplicateUpload`).
    """

    columns: Sequence[str]
    rows: Sequence[Sequence[Any]]
    new_columns: Mapping[str, Optional[type]] = field(default_factory=dict)
    fixed: Sequence[Tuple[str, Any]] = ()
    outbox: Sequence[str] = ()
    queued_at: float = 0.0
    replay: Optional[ReplayAdvance] = None
    idempotency: Optional[IdempotencyClaim] = None

    @property
    def row_count(self) -> int:
        """How many rows the request writes."""
        return len(self.rows)


@dataclass
class Query:
    """
    A validated download query: columns (empty: all), bounds
    ``(column, ">=" | "<=" | "=", value)``, order ``(column, "asc" | "desc")``
    and limit.  Every name is a column of the table (the caller checks them
    against :attr:`IStore.columns`); values are bound, never spliced.
    """

    columns: List[str] = field(default_factory=list)
    bounds: List[Tuple[str, str, Any]] = field(default_factory=list)
    order_by: Optional[Tuple[str, str]] = None
    limit: Optional[int] = None

    def check(self) -> None:
        """Raise ValueError for a comparison or direction a store would not know (stores call it)."""
        for _, op, _ in self.bounds:
            if op not in (">=", "<=", "="):
                raise ValueError("bad comparison {!r}".format(op))
        if self.order_by is not None and self.order_by[1].upper() not in ("ASC", "DESC"):
            raise ValueError("bad direction {!r}".format(self.order_by[1]))


class IRowStream(Interface):
    """The rows of one :meth:`IStore.select`, a chunk at a time."""

    header = Attribute("The column names, in the order of each row's values.")

    def next_chunk() -> "Deferred[List[Tuple[Any, ...]]]":
        """Fire with the next list of row tuples; an empty list at the end."""

    def close() -> "Deferred[None]":
        """Stop early (the client went away) and release what the stream holds."""


class IStore(Interface):
    """
    The data table, co2logd's own tables, and the OpenSenseMap outbox.

    A store is also an ``IService``: it is started before and stopped after
    everything that uses it.  Every method returning a Deferred fails with
    :class:`StoreError` once the store is stopping.
    """

    columns = Attribute("The data table's columns, name → declared type, kept current by write (no I/O).")
    rowid = Attribute("The name that numbers the data table's rows in insertion order (for Query and rowid_at).")
    busy = Attribute("True while the writer is behind: new uploads should be refused (503) until it catches up.")
    write_stats = Attribute("{'transactions', 'uploads', 'largest_group', 'busy'} counts of the writer (no I/O).")

    # -- writing ------------------------------------------------------------

    def write(request: WriteRequest) -> "Deferred[int]":
        """
        Add the new columns, insert the rows and queue the outbox entries of
        a :class:`WriteRequest` atomically; fire with the number of rows once
        committed.  On any error nothing of it is kept.  Fails at once with
        :class:`StoreBusy` while :attr:`busy`, with :class:`StoreError` once the
        store is stopping and with :class:`DatabaseLost` after the file went.
        """

    def add_observer(observer: WriteObserver) -> None:
        """Call ``observer(seconds, rows or None)`` (a :data:`WriteObserver`) after every write is answered."""

    # -- freshness (replay counters and idempotency keys) ------------------

    def replay_last(key: str) -> Optional[float]:
        """The last number committed for ``key`` by this process, or None (then the write decides); no I/O."""

    def idempotency_lookup(key: str, cutoff: float) -> "Deferred[Optional[Tuple[str, str]]]":
        """Fire with ``(digest, receipt JSON)`` of ``key`` stored at or after ``cutoff``, or None."""

    def idempotency_expire(cutoff: float) -> "Deferred[int]":
        """Forget keys stored before ``cutoff``; fire with how many went."""

    # -- download -----------------------------------------------------------

    def count() -> "Deferred[int]":
        """Fire with the number of rows in the data table."""

    def select(query: Query, chunk_rows: int) -> "Deferred[IRowStream]":
        """Fire with an :class:`IRowStream` over a :class:`Query`'s rows, ``chunk_rows`` per chunk."""

    def rowid_at(query: Query, offset: int) -> "Deferred[Optional[int]]":
        """Fire with the :attr:`rowid` of the row ``offset`` places into ``query`` (columns ``[rowid]``), or None."""

    # -- the dashboard, /plot and /health ------------------------------------

    def row_count() -> "Deferred[int]":
        """Fire with the number of rows in the data table (cheap after the first call)."""

    def want_rollups(columns: Iterable[str]) -> None:
        """Keep plot rollups of ``columns`` (a hint; bounded)."""

    def plot_series(
        columns: Sequence[str], bounds: Sequence[float], filters: Sequence[Filter], max_series: int, rollups: bool
    ) -> "Deferred[Any]":
        """
        Fire with a ``PlotData``: per source, the min and max of each
        column's numeric values per bucket ``[bounds[i], bounds[i+1])`` of
        measurement time (UNIX seconds), for sources matching ``filters``
        (:data:`Filter`), the ``max_series`` busiest.
        """

    def time_extent(filters: Sequence[Filter]) -> "Deferred[Optional[Tuple[float, float]]]":
        """Fire with ``(earliest, latest)`` measurement time of the rows ``filters`` select, or None."""

    def unusable_times(since: float, until: float, filters: Sequence[Filter]) -> "Deferred[int]":
        """Fire with how many rows in ``[since, until)`` sit at their upload time because their own time was unusable."""

    def latest_by_source(
        columns: Sequence[str], filters: Sequence[Filter], limit: int
    ) -> "Deferred[List[Tuple[str, float, Dict[str, Any]]]]":
        """Fire with ``[(label, time, {column: newest numeric value})]`` of the ``limit`` most recently heard sources."""

    def source_activity(
        box_column: Optional[str], after_rowid: int, trim: Optional[Callable[[Dict[Tuple[Any, Any], List[Any]]], None]]
    ) -> "Deferred[Tuple[List[Tuple[Any, Any, Any, int, int]], int]]":
        """
        Fire with ``([(transport, box, last upload time, rows, uploads)],
        last rowid read)`` for the rows after ``after_rowid``; ``trim(found)``
        may bound what is collected on the way.
        """

    def disk_report(now: float) -> Tuple[Dict[str, Any], List[str]]:
        """``(report, reasons)``: /health's ``database`` entry and why it is unhealthy (no I/O)."""

    def catch_up() -> "Deferred[None]":
        """Fire once background maintenance (plot indexes, rollups) has nothing left to do."""

    # -- the OpenSenseMap outbox --------------------------------------------

    def outbox_fetch(limit: int) -> "Deferred[List[Tuple[int, float, str]]]":
        """Fire with the oldest ``limit`` entries as ``[(id, queued_at, entry)]``."""

    def outbox_delete(ids: Iterable[int]) -> "Deferred[int]":
        """Remove delivered entries."""

    def outbox_dead_letter(failures: Iterable[Tuple[int, str]], failed_at: float) -> "Deferred[int]":
        """Move ``[(id, reason)]`` refused for good to the dead letters; fire with how many."""

    def outbox_stats() -> "Deferred[Dict[str, Any]]":
        """Fire with ``{"depth", "oldest_queued_at", "dead_letters"}``."""

    def dead_letters(limit: int) -> "Deferred[List[Tuple[int, float, float, str, str]]]":
        """Fire with the newest ``limit`` dead letters as ``[(id, queued_at, failed_at, entry, reason)]``."""
