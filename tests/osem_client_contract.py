"""
What the uploader may rely on from its OpenSenseMap client, as one suite.

:class:`OsemClientContract` runs on the real
:class:`~co2logd.osem.client.OsemClient` talking over loopback to
:class:`~co2logd.osem.fake.FakeOpenSenseMap`, and on
:class:`co2logd.testing.FakeOsemClient` in memory
(``tests/test_osem_client.py``).  Because both pass it, uploader tests that
use the in-memory fake on a ``task.Clock`` describe what happens with the
real client.

A subject provides: ``client``, ``call(f, *args)`` (a Deferred of the
blocking call), ``now()``, ``inject(status, retry_after=None)`` (the next
request fails with that HTTP status), ``refuse_credentials()``,
``remove_box(name)`` (deleted on the server) and ``delivered()`` (a Counter of
(box name, sensor title, value, time) the server accepted).
"""

from __future__ import annotations

import collections
from typing import Any, List, Optional, Sequence, Tuple

from twisted.internet import defer

from co2logd.osem.client import BoxGone, BoxPlan, CredentialsRefused, RateLimited, Rejected, ServerTrouble
from co2logd.osem.mapping import Entry, SensorKey
from co2logd.settings import Settings

CO2 = ("co2", "ppm", "SCD30", "osem-co2")
TEMPERATURE = ("temperature", "°C", "SHT31", "osem-thermometer")


def contract_settings(**values: Any) -> Settings:
    """Settings for a client under contract: no caches, short timeouts, no default position."""
    base = {"OSEM_AUTH_CACHE": False, "OSEM_REQUEST_CACHE": False, "OSEM_REQUEST_TIMEOUT": 5.0}
    base.update(values)
    return Settings.from_values(base, environ={})


def entries(name: str, times: Sequence[float], sensors=(CO2,), position: Optional[Tuple[float, float]] = (48.5, 9.05)):
    """One entry per time for box ``name``, each sensor valued 400 + the entry's index."""
    lat, lon = position if position is not None else (None, None)
    return [
        Entry(name, name, "indoor", lat, lon, None, at, [SensorKey(*key, value=400.0 + i) for key in sensors])
        for i, at in enumerate(times)
    ]


def batch(settings: Settings, batch_entries: List[Entry]):
    """(plan, rows) as the uploader builds them for one batch."""
    plan = BoxPlan(settings, batch_entries)
    rows = [(s.key, s.value, e.time) for e in batch_entries for s in e.sensors]
    return plan, rows


def accepted(name: str, batch_entries: List[Entry]) -> collections.Counter:
    """What the server holds after ``batch_entries`` of box ``name`` were delivered."""
    return collections.Counter((name, s.title, s.value, round(e.time)) for e in batch_entries for s in e.sensors)


class OsemClientContract:
    """The client's behaviour at the uploader's interface (writes_needed, deliver, forget)."""

    settings: Settings

    @defer.inlineCallbacks
    def test_a_new_box_takes_two_writes_then_none(self):
        """An unknown box needs 2 write requests; after a delivery of n rows (n returned, all stored) it needs none."""
        sent = entries("kitchen", [self.now() - 60, self.now() - 30])
        plan, rows = batch(self.settings, sent)
        self.assertEqual((yield self.call(self.client.writes_needed, plan)), 2)
        self.assertEqual((yield self.call(self.client.deliver, plan, rows)), 2)
        self.assertEqual(self.delivered(), accepted("kitchen", sent))
        self.assertEqual((yield self.call(self.client.writes_needed, plan)), 0)

    @defer.inlineCallbacks
    def test_a_new_sensor_or_position_takes_one_write(self):
        """Once the box exists, a plan with a new sensor or a new position needs one write, then none."""
        first = entries("lab", [self.now() - 60])
        yield self.call(self.client.deliver, *batch(self.settings, first))
        for later in (
            entries("lab", [self.now() - 30], sensors=(CO2, TEMPERATURE)),
            entries("lab", [self.now() - 20], position=(48.6, 9.05)),
        ):
            plan, rows = batch(self.settings, later)
            self.assertEqual((yield self.call(self.client.writes_needed, plan)), 1)
            self.assertEqual((yield self.call(self.client.deliver, plan, rows)), len(rows))
            self.assertEqual((yield self.call(self.client.writes_needed, plan)), 0)

    @defer.inlineCallbacks
    def test_a_new_box_without_position_is_refused_whole(self):
        """No lat/lon and no DEFAULT_LAT/LON: Rejected for the whole batch, nothing stored."""
        plan, rows = batch(self.settings, entries("nowhere", [self.now() - 60], position=None))
        error = yield self.assertFailure(self.call(self.client.deliver, plan, rows), Rejected)
        self.assertTrue(error.whole_batch)
        self.assertIn("No position for the new senseBox 'nowhere'", str(error))
        self.assertEqual(self.delivered(), collections.Counter())

    @defer.inlineCallbacks
    def test_a_measurement_from_the_future_is_refused(self):
        """A time more than a minute ahead of the server's clock: Rejected (not the whole batch), none of the batch stored."""
        sent = entries("ahead", [self.now() - 60, self.now() + 600])
        error = yield self.assertFailure(self.call(self.client.deliver, *batch(self.settings, sent)), Rejected)
        self.assertFalse(error.whole_batch)
        self.assertIn("too far into the future", str(error))
        self.assertEqual(self.delivered(), collections.Counter())

    @defer.inlineCallbacks
    def test_refused_credentials(self):
        """A wrong password: CredentialsRefused, from the first call on."""
        self.refuse_credentials()
        plan, rows = batch(self.settings, entries("any", [self.now() - 60]))
        yield self.assertFailure(self.call(self.client.writes_needed, plan), CredentialsRefused)
        yield self.assertFailure(self.call(self.client.deliver, plan, rows), CredentialsRefused)

    @defer.inlineCallbacks
    def test_429_is_rate_limited_with_retry_after(self):
        """A 429 with Retry-After: 7 is RateLimited(retry_after=7.0); the next call goes through."""
        sent = entries("busy", [self.now() - 60])
        plan, rows = batch(self.settings, sent)
        self.inject(429, retry_after="7")
        error = yield self.assertFailure(self.call(self.client.writes_needed, plan), RateLimited)
        self.assertEqual(error.retry_after, 7.0)
        self.assertEqual((yield self.call(self.client.deliver, plan, rows)), 1)
        self.assertEqual(self.delivered(), accepted("busy", sent))

    @defer.inlineCallbacks
    def test_503_is_server_trouble(self):
        """A 503 is ServerTrouble with the status; nothing is stored."""
        self.inject(503)
        error = yield self.assertFailure(
            self.call(self.client.deliver, *batch(self.settings, entries("down", [self.now() - 60]))), ServerTrouble
        )
        self.assertEqual(error.status, 503)
        self.assertEqual(self.delivered(), collections.Counter())

    @defer.inlineCallbacks
    def test_a_box_deleted_on_the_server_is_gone_then_created_again(self):
        """Data for a box deleted meanwhile: BoxGone; the client forgot its boxes, so the next plan creates it (2 writes)."""
        plan, rows = batch(self.settings, entries("moved", [self.now() - 60]))
        yield self.call(self.client.deliver, plan, rows)
        self.remove_box("moved")
        yield self.assertFailure(self.call(self.client.deliver, plan, rows), BoxGone)
        self.assertEqual((yield self.call(self.client.writes_needed, plan)), 2)
        self.assertEqual((yield self.call(self.client.deliver, plan, rows)), 1)
