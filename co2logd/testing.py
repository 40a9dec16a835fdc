"""
Verified fakes shipped with co2logd, for its own tests and for anyone who
builds on it.  Each one is exercised by the suite against the real thing's
interface.

* :class:`FakeOpenSenseMap` / :func:`listen_fake_opensensemap`: the
  OpenSenseMap API as the ``sensemapi`` client sees it, as a twisted.web
  resource on loopback (checked with the real client in
  ``tests/test_osem_fake.py``).
* :class:`FakeOsemClient`: the OpenSenseMap client the uploader drives
  (``writes_needed``, ``deliver``, ``forget``), in memory and synchronous,
  so uploader tests run on a ``task.Clock`` (checked against the real
  :class:`~co2logd.osem.client.OsemClient` talking to
  :class:`FakeOpenSenseMap` on loopback by one contract suite,
  ``tests/osem_client_contract.py``).
* :class:`FakeSerialDevices`: a serial port factory for
  :class:`co2logd.transports.serial.SerialService` without a device
  (checked beside real pseudo-terminals in ``tests/test_serial.py``).
* :class:`MemoryStore`: an :class:`~co2logd.store.IStore` in memory
  (checked beside the SQLite store by ``tests/store_behaviour.py``, run by
  ``tests/test_store_memory.py`` and ``tests/test_store_sqlite.py``).
"""

from __future__ import annotations


import bisect
import datetime
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from co2logd.osem.fake import MAX_MEASUREMENTS, FakeOpenSenseMap
from co2logd.osem.fake import listen as listen_fake_opensensemap
from co2logd.transports.testing import FakeSerialDevices, FakeSerialPort

from co2logd.store.interfaces import (
    DuplicateUpload,
    IRowStream,
    IStore,
    Query,
    ReplayRefused,
    StoreBusy,
    StoreError,
    WriteObserver,
    WriteRequest,
)
from co2logd.store.rollups import PlotData, source_label, value_forms
from co2logd.timerange import parse_stored_time

if TYPE_CHECKING:
    from co2logd.osem.client import BoxPlan

__all__ = [
    "FakeOpenSenseMap",
    "listen_fake_opensensemap",
    "FakeOsemClient",
    "FakeSerialDevices",
    "FakeSerialPort",
    "MemoryStore",
]

SensorKey = Tuple[str, str, str, str]

#: what the SQLite store declares a new column as, by the type of its first value
_DECLARED = {bool: "INTEGER", int: "INTEGER", float: "REAL", str: "TEXT", datetime.datetime: "DATETIME"}
_MAX_AHEAD = 366 * 86400.0  # a measurement time more than this after its upload is unusable (co2logd.store.mtime)


def _stored(value: Any) -> Any:
    """A value as a SQL database gives it back: datetimes as co2logserver's text, booleans as integers."""
    if isinstance(value, datetime.datetime):
        return value.isoformat(" ")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    return value


def _order(value: Any) -> Tuple[int, Any]:
    """SQLite's order across types: NULL, numbers, text, blobs."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, bytes(value))


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@implementer(IRowStream)
class _MemoryRowStream:
    """The rows of one select, taken when it was made, a chunk at a time."""

    def __init__(self, header: List[str], rows: List[Tuple[Any, ...]], chunk_rows: int):
        self.header = header
        self._rows = rows
        self._chunk_rows = chunk_rows

    def next_chunk(self) -> "Deferred[List[Tuple[Any, ...]]]":
        chunk, self._rows = self._rows[: self._chunk_rows], self._rows[self._chunk_rows:]
        return succeed(chunk)

    def close(self) -> "Deferred[None]":
        self._rows = []
        return succeed(None)


@implementer(IStore)
class MemoryStore(Service):
    """
    The store in memory, for tests of what uses a store: writes are
    answered at once, rows are dicts, values are kept as SQLite gives them
    back.  Set :attr:`busy` to make writes fail with ``StoreBusy``.  It has
    the SQLite store's behaviour (``tests/store_behaviour.py``), not its
    speed, its durability or its disk checks.
    """

    name = "store"
    rowid = "rowid"

    def __init__(self, settings: Any):
        self.settings = settings
        self.columns: Dict[str, str] = {
            settings.UPLOAD_TIME_COL: "DATETIME",
            settings.MATCHED_CHECKSUMS_COL: "TEXT",
            settings.FAILED_CHECKSUMS_COL: "TEXT",
            settings.TRANSPORT_COL: "TEXT",
        }
        self.busy = False
        self.write_stats: Dict[str, int] = {"transactions": 0, "uploads": 0, "largest_group": 0, "busy": 0}
        #: the data rows: rowid → {column: value}
        self.rows: Dict[int, Dict[str, Any]] = {}
        self._last_rowid = 0
        self._outbox: Dict[int, Tuple[float, str]] = {}
        self._outbox_id = 0
        self._dead: Dict[int, Tuple[float, float, str, str]] = {}
        self._replay: Dict[str, float] = {}
        self._keys: Dict[str, Tuple[str, str, float]] = {}
        self._observers: List[WriteObserver] = []
        self._stopping = False

    def stopService(self) -> None:
        """Refuse writes from now on."""
        self._stopping = True
        super().stopService()

    # -- writing --------------------------------------------------------------

    def add_observer(self, observer: WriteObserver) -> None:
        self._observers.append(observer)

    def write(self, request: WriteRequest) -> "Deferred[int]":
        try:
            rows = self._write(request)
        except Exception:
            result: Deferred[int] = fail(Failure())
        else:
            result = succeed(rows)
        for observer in self._observers:
            observer(0.0, rows if not isinstance(result.result, Failure) else None)
        return result

    def _write(self, request: WriteRequest) -> int:
        if self._stopping:
            raise StoreError("The store is stopping: the write was not queued")
        if self.busy:
            self.write_stats["busy"] += 1
            raise StoreBusy("the memory store was told it is busy")
        names = [name for name, _ in request.fixed] + list(request.columns)
        fixed = [_stored(value) for _, value in request.fixed]
        rows = []
        for row in request.rows:
            if len(row) != len(request.columns):
                raise StoreError("a row has {} values for {} columns".format(len(row), len(request.columns)))
            rows.append(dict(zip(names, fixed + [_stored(value) for value in row])))
        for name in names:
            if name not in self.columns and name not in request.new_columns:
                raise StoreError("no such column: {}".format(name))
        claim = request.idempotency
        if claim is not None:
            held = self._keys.get(claim.key)
            if held is not None and held[2] >= claim.cutoff:
                raise DuplicateUpload(claim.key)
        advance = request.replay
        if advance is not None:
            last = self._replay.get(advance.key)
            if last is not None and not advance.number > last:
                raise ReplayRefused(advance)
        # nothing can fail from here on: the upload is kept whole
        if claim is not None:
            self._keys[claim.key] = (claim.digest, claim.receipt, claim.now)
        if advance is not None:
            self._replay[advance.key] = advance.number
        for name, python_type in request.new_columns.items():
            self.columns.setdefault(name, _DECLARED.get(python_type, "") if python_type is not None else "")
        for row in rows:
            self._last_rowid += 1
            self.rows[self._last_rowid] = row
        for entry in request.outbox:
            self._outbox_id += 1
            self._outbox[self._outbox_id] = (request.queued_at, entry)
        stats = self.write_stats
        stats["transactions"] += 1
        stats["uploads"] += 1
        stats["largest_group"] = max(stats["largest_group"], 1)
        return len(rows)

    # -- freshness ------------------------------------------------------------

    def replay_last(self, key: str) -> Optional[float]:
        return self._replay.get(key)

    def idempotency_lookup(self, key: str, cutoff: float) -> "Deferred[Optional[Tuple[str, str]]]":
        held = self._keys.get(key)
        return succeed(held[:2] if held is not None and held[2] >= cutoff else None)

    def idempotency_expire(self, cutoff: float) -> "Deferred[int]":
        old = [key for key, (_, _, at) in self._keys.items() if at < cutoff]
        for key in old:
            del self._keys[key]
        return succeed(len(old))

    # -- download -------------------------------------------------------------

    def _query_rows(self, query: Query) -> List[Tuple[int, Dict[str, Any]]]:
        query.check()
        for column in list(query.columns) + [c for c, _, _ in query.bounds]:
            if column != self.rowid and column not in self.columns:
                raise StoreError("no such column: {}".format(column))

        def value(rowid: int, row: Dict[str, Any], column: str) -> Any:
            return rowid if column == self.rowid else row.get(column)

        def keep(rowid: int, row: Dict[str, Any]) -> bool:
            for column, op, bound in query.bounds:
                have = value(rowid, row, column)
                if have is None:
                    return False
                a, b = _order(have), _order(bound)
                if not (a >= b if op == ">=" else a <= b if op == "<=" else a == b):
                    return False
            return True

        found = [(rowid, row) for rowid, row in self.rows.items() if keep(rowid, row)]
        if query.order_by is not None:
            column, direction = query.order_by
            found.sort(key=lambda item: _order(value(item[0], item[1], column)), reverse=direction.upper() == "DESC")
        if query.limit is not None:
            found = found[: query.limit]
        return found

    def count(self) -> "Deferred[int]":
        return succeed(len(self.rows))

    def select(self, query: Query, chunk_rows: int = 500) -> "Deferred[IRowStream]":
        try:
            found = self._query_rows(query)
        except Exception:
            return fail()
        header = list(query.columns) or list(self.columns)
        rows = [tuple(rowid if c == self.rowid else row.get(c) for c in header) for rowid, row in found]
        return succeed(_MemoryRowStream(header, rows, chunk_rows))

    def rowid_at(self, query: Query, offset: int) -> "Deferred[Optional[int]]":
        found = self._query_rows(Query(list(query.columns), list(query.bounds), query.order_by, None))
        return succeed(found[offset][0] if offset < len(found) else None)

    # -- the dashboard, /plot and /health ----------------------------------------

    def row_count(self) -> "Deferred[int]":
        return succeed(len(self.rows))

    def want_rollups(self, columns: Iterable[str]) -> None:
        """Nothing to keep: every answer is read from the rows."""

    def catch_up(self) -> "Deferred[None]":
        return succeed(None)

    def _time(self, row: Dict[str, Any]) -> Tuple[Optional[float], bool]:
        """A row's measurement time (see co2logd.store.mtime), and whether it was unusable (placed at upload time)."""
        settings = self.settings
        upload = row.get(settings.UPLOAD_TIME_COL)
        up = parse_stored_time(upload) if isinstance(upload, str) else None
        if up is not None and up < 0:
            up = None
        wanted = [settings.DASHBOARD_TIME_COL.lower()] if settings.DASHBOARD_TIME_COL else [c.lower() for c in settings.TIME_COLS]
        candidates = [row.get(c) for c in wanted if c in self.columns]
        limit = (up if up is not None else datetime.datetime.now(datetime.timezone.utc).timestamp()) + _MAX_AHEAD
        for value in candidates:
            t = parse_stored_time(value) if isinstance(value, str) else None
            if t is not None and 0 <= t <= limit:
                return round(t, 3), False
        return up, up is not None and any(v is not None for v in candidates)

    def _source(self, row: Dict[str, Any]) -> Tuple[Any, Any]:
        return row.get(self.settings.TRANSPORT_COL), row.get(self.settings.OSEM_BOX_COL)

    def _selected(self, filters: Sequence[Tuple[str, Any]]) -> Callable[[Dict[str, Any]], bool]:
        wanted = [(0 if column == self.settings.TRANSPORT_COL else 1, value_forms(value)) for column, value in filters]
        return lambda row: all(self._source(row)[k] in values for k, values in wanted)

    def plot_series(
        self,
        columns: Sequence[str],
        bounds: Sequence[float],
        filters: Sequence[Tuple[str, Any]] = (),
        max_series: int = 6,
        rollups: bool = True,
    ) -> "Deferred[PlotData]":
        bounds = [float(b) for b in bounds]
        selected = self._selected(filters)
        found: Dict[str, Dict[int, List[Tuple[Any, Any]]]] = {}
        counts: Dict[str, int] = {}
        for row in self.rows.values():
            t, _ = self._time(row)
            if t is None or not bounds[0] <= t < bounds[-1] or not selected(row):
                continue
            label = source_label(*self._source(row))
            counts[label] = counts.get(label, 0) + 1
            i = bisect.bisect_right(bounds, t) - 1
            pairs = found.setdefault(label, {}).setdefault(i, [(None, None)] * len(columns))
            for k, column in enumerate(columns):
                v = row.get(column)
                if _numeric(v):
                    low, high = pairs[k]
                    pairs[k] = (v if low is None or v < low else low, v if high is None or v > high else high)
        ranked = sorted(counts, key=lambda label: (-counts[label], label))
        data = PlotData(columns)
        data.left_out = max(0, len(ranked) - max_series)
        for label in ranked[:max_series]:
            buckets = {i: pairs for i, pairs in found[label].items() if any(low is not None for low, _ in pairs)}
            if buckets:
                data.buckets[label] = buckets
        data.series = sorted(data.buckets, key=lambda n: (-len(data.buckets[n]), n))
        return succeed(data)

    def time_extent(self, filters: Sequence[Tuple[str, Any]] = ()) -> "Deferred[Optional[Tuple[float, float]]]":
        selected = self._selected(filters)
        times = [t for t, _ in (self._time(row) for row in self.rows.values() if selected(row)) if t is not None]
        return succeed((min(times), max(times)) if times else None)

    def unusable_times(self, since: float, until: float, filters: Sequence[Tuple[str, Any]] = ()) -> "Deferred[int]":
        selected = self._selected(filters)
        n = 0
        for row in self.rows.values():
            t, unusable = self._time(row)
            if selected(row) and ((unusable and since <= t < until) or t is None):  # type: ignore[operator]
                n += 1
        return succeed(n)

    def latest_by_source(
        self, columns: Sequence[str], filters: Sequence[Tuple[str, Any]] = (), limit: int = 6
    ) -> "Deferred[List[Tuple[str, float, Dict[str, Any]]]]":
        selected = self._selected(filters)
        per_label: Dict[str, List[Tuple[float, Dict[str, Any]]]] = {}
        for row in self.rows.values():
            t, _ = self._time(row)
            if t is not None and selected(row):
                per_label.setdefault(source_label(*self._source(row)), []).append((t, row))
        out = []
        for label, timed in per_label.items():
            timed.sort(key=lambda item: -item[0])
            values: Dict[str, Any] = {}
            for _, row in timed[:100]:
                for column in columns:
                    if column not in values and _numeric(row.get(column)):
                        values[column] = row[column]
            out.append((label, timed[0][0], values))
        out.sort(key=lambda x: -x[1])
        return succeed(out[:limit])

    def source_activity(
        self,
        box_column: Optional[str],
        after_rowid: int = 0,
        trim: Optional[Callable[[Dict[Tuple[Any, Any], List[Any]]], None]] = None,
    ) -> "Deferred[Tuple[List[Tuple[Any, Any, Any, int, int]], int]]":
        found: Dict[Tuple[Any, Any], List[Any]] = {}
        times: Dict[Tuple[Any, Any], set] = {}
        upload_col = self.settings.UPLOAD_TIME_COL
        for rowid, row in self.rows.items():
            if rowid <= after_rowid:
                continue
            key = (row.get(self.settings.TRANSPORT_COL), row.get(box_column) if box_column else None)
            seen = found.setdefault(key, [None, 0, 0])
            when = row.get(upload_col)
            if when is not None and (seen[0] is None or _order(when) > _order(seen[0])):
                seen[0] = when
            seen[1] += 1
            times.setdefault(key, set()).add(when)
            seen[2] = len(times[key])
        if trim is not None:
            trim(found)
        listing = [(k[0], k[1], last, n, uploads) for k, (last, n, uploads) in found.items()]
        return succeed((listing, max(self._last_rowid, after_rowid)))

    def disk_report(self, now: float) -> Tuple[Dict[str, Any], List[str]]:
        return {"writable": True, "heartbeat_at": None}, []

    # -- the OpenSenseMap outbox ------------------------------------------------

    def outbox_fetch(self, limit: int) -> "Deferred[List[Tuple[int, float, str]]]":
        return succeed([(i, at, entry) for i, (at, entry) in sorted(self._outbox.items())[:limit]])

    def outbox_delete(self, ids: Iterable[int]) -> "Deferred[int]":
        ids = list(ids)
        for i in ids:
            self._outbox.pop(i, None)
        return succeed(len(ids))

    def outbox_dead_letter(self, failures: Iterable[Tuple[int, str]], failed_at: float) -> "Deferred[int]":
        failures = list(failures)
        for i, reason in failures:
            entry = self._outbox.pop(i, None)
            if entry is not None:
                self._dead[i] = (entry[0], failed_at, entry[1], reason)
        return succeed(len(failures))

    def outbox_stats(self) -> "Deferred[Dict[str, Any]]":
        oldest = min((at for at, _ in self._outbox.values()), default=None)
        return succeed({"depth": len(self._outbox), "oldest_queued_at": oldest, "dead_letters": len(self._dead)})

    def dead_letters(self, limit: int = 100) -> "Deferred[List[Tuple[int, float, float, str, str]]]":
        newest = sorted(self._dead.items(), key=lambda item: -item[1][1])[:limit]
        return succeed([(i, queued, failed, entry, reason) for i, (queued, failed, entry, reason) in newest])


class FakeOsemClient:
    """
    The blocking OpenSenseMap client of :class:`co2logd.osem.uploader.OsemUploader`,
    in memory: it answers at once, keeps the "server's" boxes and accepted
    measurements, and follows the API's rules that the uploader meets (a new
    box needs a position; measurements at most a minute ahead of ``clock``,
    at most 2500 a request; one write to create a box plus one to set its
    metadata, one write to update it).

    Like :class:`~co2logd.osem.client.OsemClient` it fetches the box list
    once and keeps it until :meth:`forget`; a box removed on the server
    (:meth:`remove_box`) is noticed when data is posted to it (``BoxGone``).

    :param settings: ``DEFAULT_LAT``/``DEFAULT_LON`` for new boxes and
        ``OSEM_MAX_POSITION_CHANGE``
    :param clock: provides ``seconds()``, the server's "now"
    """

    def __init__(self, settings: Any, clock: Any):
        self.settings = settings
        self.clock = clock
        #: False: every call raises CredentialsRefused (a changed password)
        self.credentials_valid = True
        #: the server's boxes by name: {"sensors": set of keys, "lat", "lon", "height", "exposure", ...}
        self.boxes: Dict[str, Dict[str, Any]] = {}
        #: accepted measurements: (box name, sensor title, value, UNIX time)
        self.measurements: List[Tuple[str, str, float, float]] = []
        #: calls of writes_needed and deliver, and the write requests (box creations/updates) made
        self.calls = 0
        self.box_writes = 0
        self._failures: List[Exception] = []
        self._cached: Optional[Set[str]] = None  # box names as last fetched

    # -- switches for tests -------------------------------------------------------

    def fail_next(self, error: Exception, count: int = 1) -> None:
        """The next ``count`` calls raise ``error`` (RateLimited, ServerTrouble, a requests error …)."""
        self._failures.extend([error] * count)

    def clear_failures(self) -> None:
        """End an injected outage."""
        self._failures = []

    def remove_box(self, name: str) -> None:
        """The box is deleted on the server (the client's cached list does not know yet)."""
        del self.boxes[name]

    # -- the client's interface ----------------------------------------------------

    def forget(self) -> None:
        """Drop the cached box list; the next call fetches it again."""
        self._cached = None

    def writes_needed(self, plan: BoxPlan) -> int:
        """How many write requests (POST/PUT) making the box ready takes: 0, 1 or 2."""
        self._call()
        if plan.name not in self._known():
            return 2
        if plan.name not in self.boxes:
            return 0  # deleted on the server: the cached box is current as far as the client knows
        return 1 if self._changes(self.boxes[plan.name], plan) else 0

    def deliver(self, plan: BoxPlan, rows: Sequence[Tuple[SensorKey, float, float]]) -> int:
        """Make the box ready, then accept ``rows`` (sensor key, value, UNIX time) all or none; their number."""
        from co2logd.osem.client import BoxGone, Rejected  # the client needs the opensensemap extra

        self._call()
        if plan.name not in self._known():
            self._create(plan)
        elif plan.name not in self.boxes:  # deleted on the server since the list was fetched
            self.forget()
            raise BoxGone("Box not found")
        box = self.boxes[plan.name]
        changes = self._changes(box, plan)
        if changes:
            box.update(changes)
            self.box_writes += 1
        if len(rows) > MAX_MEASUREMENTS:
            raise Rejected("HTTP 422: Too many measurements")
        now = self.clock.seconds()
        for key, value, at in rows:
            if key not in box["sensors"]:
                raise Rejected("HTTP 400: Measurement for sensor {} does not belong to box".format(key))
            if at - now > 60:
                raise Rejected("HTTP 422: Timestamp {} is too far into the future.".format(at))
        self.measurements.extend((plan.name, key[0], float(value), float(at)) for key, value, at in rows)
        return len(rows)

    # -- inside ----------------------------------------------------------------------

    def _call(self) -> None:
        from co2logd.osem.client import CredentialsRefused

        self.calls += 1
        if not self.credentials_valid:
            raise CredentialsRefused("User and or password not valid!")
        if self._failures:
            raise self._failures.pop(0)

    def _known(self) -> Set[str]:
        if self._cached is None:
            self._cached = set(self.boxes)
        return self._cached

    def _position(self, box: Optional[Dict[str, Any]], plan: BoxPlan) -> Dict[str, Any]:
        """The plan's position, without lat/lon moves beyond OSEM_MAX_POSITION_CHANGE."""
        out = {}
        for name in ("lat", "lon", "height"):
            value = getattr(plan, name)
            if value is None:
                continue
            current = box.get(name) if box else None
            if name != "height" and current is not None and abs(current - value) > self.settings.OSEM_MAX_POSITION_CHANGE:
                continue
            out[name] = value
        return out

    def _changes(self, box: Dict[str, Any], plan: BoxPlan) -> Dict[str, Any]:
        wanted = dict(self._position(box, plan), exposure=plan.exposure, weblink=plan.weblink, grouptag=plan.grouptag)
        changes = {k: v for k, v in wanted.items() if box.get(k) != v}
        if not set(plan.sensors) <= box["sensors"]:
            changes["sensors"] = box["sensors"] | set(plan.sensors)
        return changes

    def _create(self, plan: BoxPlan) -> None:
        from co2logd.osem.client import Rejected

        lat = plan.lat if plan.lat is not None else self.settings.DEFAULT_LAT(box=plan.name)
        lon = plan.lon if plan.lon is not None else self.settings.DEFAULT_LON(box=plan.name)
        if lat is None or lon is None:
            raise Rejected(
                "No position for the new senseBox {!r}: send lat/lon columns or set DEFAULT_LAT/DEFAULT_LON".format(plan.name),
                whole_batch=True,
            )
        self.boxes[plan.name] = {
            "sensors": set(plan.sensors), "lat": lat, "lon": lon, "height": plan.height, "exposure": plan.exposure,
            "weblink": plan.weblink, "grouptag": plan.grouptag,
        }
        self._known().add(plan.name)
        self.box_writes += 2  # POST boxes, then PUT for what the API ignores on creation
