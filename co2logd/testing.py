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

The store needs no fake: :meth:`co2logd.store.Store.open` on a temporary
file is the real thing and fast enough for tests.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Set, Tuple

from co2logd.osem.fake import MAX_MEASUREMENTS, FakeOpenSenseMap
from co2logd.osem.fake import listen as listen_fake_opensensemap
from co2logd.transports.testing import FakeSerialDevices, FakeSerialPort

if TYPE_CHECKING:
    from co2logd.osem.client import BoxPlan

__all__ = ["FakeOpenSenseMap", "listen_fake_opensensemap", "FakeOsemClient", "FakeSerialDevices", "FakeSerialPort"]

SensorKey = Tuple[str, str, str, str]


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
