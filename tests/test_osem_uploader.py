"""
The OpenSenseMap uploader.

Its rules (batches, backoff, ``Retry-After``, the request budget, refused
credentials, dead letters) run on a ``task.Clock`` with the
:class:`~co2logd.testing.FakeOsemClient` (which ``tests/test_osem_client.py``
checks against the real client) and the
:class:`~co2logd.testing.MemoryStore` (checked against the SQLite store by
``tests/store_behaviour.py``), both answered at once: no test waits for
real time to pass.  One class runs the whole chain for real: SQLite store,
sensemapi on the uploader's thread, the fake API on a loopback port.
"""

import collections
import json
import random
import time

from twisted.internet import defer, reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from co2logd.ingest import IngestService, Upload
from co2logd.osem import outbox_entries_for
from co2logd.osem.client import RateLimited, ServerTrouble
from co2logd.osem.fake import FakeOpenSenseMap, listen
from co2logd.osem.uploader import OsemUploader, TokenBucket
from co2logd.settings import Settings
from co2logd.store import Store
from co2logd.testing import FakeOsemClient, MemoryStore

EMAIL, PASSWORD = "site@example.org", "pw"
T0 = 1_700_000_000.0


class TokenBucketTests(SynchronousTestCase):
    """The request budget."""

    def test_burst_then_rate(self):
        """A full bucket allows a burst; afterwards requests wait for the refill rate."""
        clock = task.Clock()
        bucket = TokenBucket(clock, rate=10 / 60.0, capacity=4)
        for _ in range(4):
            self.assertEqual(bucket.delay(1), 0)
            bucket.take(1)
        self.assertAlmostEqual(bucket.delay(1), 6.0)
        clock.advance(6)
        self.assertEqual(bucket.delay(1), 0)

    def test_window_stays_under_api_limit(self):
        """With the defaults no 60 s window sees more than 14 requests (API limit: 15)."""
        clock = task.Clock()
        settings = Settings.from_values({}, environ={})
        bucket = TokenBucket(clock, settings.OSEM_REQUESTS_PER_MINUTE / 60.0, settings.OSEM_REQUEST_BURST)
        sent = []
        while clock.seconds() < 600:
            wait = bucket.delay(1)
            clock.advance(max(wait, 0.01))
            if bucket.delay(1) == 0:
                bucket.take(1)
                sent.append(clock.seconds())
        worst = max(sum(1 for t in sent if start <= t < start + 60) for start in sent)
        self.assertLessEqual(worst, 14)


def uploader_settings(**values) -> Settings:
    """Uploading on, short delays, a budget that never binds unless a test sets one."""
    settings = {
        "OSEM_UPLOAD": True,
        "OSEM_EMAIL": EMAIL,
        "OSEM_PASSWORD": PASSWORD,
        "OSEM_AUTH_CACHE": False,
        "OSEM_REQUEST_CACHE": False,
        "OSEM_BACKOFF_BASE": 0.05,
        "OSEM_BACKOFF_MAX": 0.2,
        "OSEM_POLL_SECONDS": 0.05,
        "OSEM_AUTH_RETRY_SECONDS": 0.3,
        "OSEM_REQUEST_TIMEOUT": 3.0,
        "OSEM_REQUESTS_PER_MINUTE": 60000.0,
        "OSEM_REQUEST_BURST": 100,
    }
    settings.update(values)
    return Settings.from_values(settings, environ={})


def table(box, n, start, **extra):
    """``n`` rows for ``box``, times ``start``…, values distinct."""
    rows = {
        "box": [box] * n,
        "time": [start + i for i in range(n)],
        "scd30_co2_ppm": [400 + i for i in range(n)],
        "sht_temperature_c": [20 + i / 10.0 for i in range(n)],
    }
    rows.update({k: [v] * n for k, v in extra.items()})
    return rows


def expected(box, n, start, name="co2logserver senseBox {}"):
    """The measurements :func:`table` should lead to: (box name, title, value, time)."""
    c = collections.Counter()
    for i in range(n):
        c[(name.format(box), "co2", float(400 + i), start + i)] += 1
        c[(name.format(box), "temperature", round(20 + i / 10.0, 3), start + i)] += 1
    return c


class Behind:
    """A clock ``seconds`` behind another (an API whose clock is slow)."""

    def __init__(self, clock, seconds: float):
        self.clock = clock
        self.behind = seconds

    def seconds(self) -> float:
        return self.clock.seconds() - self.behind


class CountingStore:
    """
    A store, counting its calls in flight: when none is, the uploader waits
    only on its clock (or for nothing), so a test may move the clock on.
    (MemoryStore answers at once; a SQLite store answers from its thread.)
    """

    def __init__(self, store):
        self.store = store
        self.in_flight = 0

    def __getattr__(self, name):
        attribute = getattr(self.store, name)
        if not callable(attribute) or name.startswith("_") or name in ("startService", "stopService"):
            return attribute

        def call(*args, **kwargs):
            result = attribute(*args, **kwargs)
            if not isinstance(result, defer.Deferred):
                return result
            self.in_flight += 1

            def done(outcome):
                self.in_flight -= 1
                return outcome

            return result.addBoth(done)

        return call


class UploaderClockTests(TestCase):
    """The uploader's rules on a task.Clock with the verified fake client and the in-memory store."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(T0)

    @inlineCallbacks
    def start(self, store=None, client_clock=None, run_blocking=defer.maybeDeferred, **values):
        """A daemon's worth of objects on one clock (``store``: keep an earlier one, as a restart on the same file)."""
        self.settings = uploader_settings(DB_SYNCHRONOUS="OFF", **values)
        if store is None:
            memory = MemoryStore(self.settings)
            memory.startService()
            self.addCleanup(memory.stopService)
            store = CountingStore(memory)
        self.store = store
        self.ingest = IngestService(
            self.settings, store, self.clock, outbox_entries=outbox_entries_for(self.settings, self.clock)
        )
        if not hasattr(self, "client"):
            self.client = FakeOsemClient(self.settings, client_clock or self.clock)
        self.uploader = OsemUploader(
            self.settings, store, reactor=None, clock=self.clock, client=self.client, rng=random.Random(4),
            run_blocking=run_blocking,
        )
        self.uploader.startService()
        self.addCleanup(self.uploader.stopService)
        yield self.settle()

    @inlineCallbacks
    def settle(self):
        """Until the store has answered every call (and the uploader made no new one meanwhile)."""
        while True:
            while self.store.in_flight:
                yield task.deferLater(reactor, 0.001, lambda: None)
            yield task.deferLater(reactor, 0, lambda: None)
            if not self.store.in_flight:
                return

    @inlineCallbacks
    def upload(self, rows):
        """One JSON upload through the ingest service; its receipt."""
        receipt = yield self.ingest.ingest(Upload(json.dumps(rows).encode(), "application/json", {}, "http"))
        yield self.settle()
        return receipt.as_dict()

    @inlineCallbacks
    def depth(self):
        """Entries waiting in the outbox."""
        stats = yield self.store.outbox_stats()
        yield self.settle()
        return stats["depth"]

    def delivered(self):
        """(box name, title, value, time) the fake API accepted."""
        return collections.Counter((n, t, v, round(at)) for n, t, v, at in self.client.measurements)

    @inlineCallbacks
    def run_until(self, condition, limit: int = 10_000):
        """Move the clock from one timer to the next (the store answering in between) until ``condition()`` holds."""
        for _ in range(limit):
            yield self.settle()
            met = condition()
            if isinstance(met, defer.Deferred):
                met = yield met
            if met:
                return
            calls = self.clock.getDelayedCalls()
            if not calls:
                break
            self.clock.advance(max(0.0, min(c.getTime() for c in calls) - self.clock.seconds()))
        self.fail("condition never met")

    @inlineCallbacks
    def advance(self, seconds: float):
        """Move the clock on by ``seconds``, stopping at every timer on the way (the store answering in between)."""
        end = self.clock.seconds() + seconds
        while True:
            yield self.settle()
            due = [c.getTime() for c in self.clock.getDelayedCalls() if c.getTime() <= end]
            if not due:
                break
            self.clock.advance(max(0.0, min(due) - self.clock.seconds()))
        self.clock.advance(max(0.0, end - self.clock.seconds()))
        yield self.settle()

    def empty(self):
        """Fires with True once the outbox is empty."""
        return self.depth().addCallback(lambda depth: depth == 0)

    @inlineCallbacks
    def test_boxes_and_sensors_created_and_updated(self):
        """A new box is created with its sensors (two writes); later metadata changes update it (one write)."""
        yield self.start()
        receipt = yield self.upload(table("kitchen", 3, T0 - 3600, lat=48.5, lon=9.05))
        self.assertEqual(receipt, {"saved-in-db": 3, "osem-queued": 6})
        yield self.run_until(self.empty)
        box = self.client.boxes["co2logserver senseBox kitchen"]
        self.assertEqual(sorted(key[0] for key in box["sensors"]), ["co2", "temperature"])
        self.assertEqual((box["weblink"], box["grouptag"]), (self.settings.OSEM_DEFAULT_WEBLINK, "co2logserver"))
        self.assertEqual((box["lat"], box["lon"]), (48.5, 9.05))
        self.assertEqual(self.client.box_writes, 2)
        yield self.upload({"box": ["kitchen"], "time": [T0 - 3590], "lat": [48.6], "lon": [9.05], "bme_pressure_hpa": [1013.2]})
        yield self.run_until(self.empty)
        self.assertEqual(sorted(key[0] for key in box["sensors"]), ["co2", "pressure", "temperature"])
        self.assertEqual((box["lat"], box["lon"]), (48.6, 9.05))
        self.assertEqual(self.client.box_writes, 3)

    @inlineCallbacks
    def test_every_measurement_exactly_once(self):
        """Many uploads for several boxes, small batches: every measurement arrives once."""
        yield self.start(OSEM_BATCH_SIZE=50)
        start = int(T0) - 7200
        wanted = collections.Counter()
        for k, box in enumerate(["a", "b", "c"] * 3):
            first = start + 100 * k
            yield self.upload(table(box, 40, first, lat=10.0, lon=20.0))
            wanted += expected(box, 40, first)
        yield self.run_until(self.empty)
        self.assertEqual(self.delivered(), wanted)
        deliveries = self.client.calls // 2  # each batch: writes_needed, then deliver
        self.assertGreaterEqual(deliveries, 720 // 50)

    @inlineCallbacks
    def test_outage_then_recovery(self):
        """503s for a while keep the rows queued; after recovery all arrive once."""
        yield self.start()
        self.client.fail_next(ServerTrouble(503, "injected failure"), count=10_000)
        start = int(T0) - 3600
        yield self.upload(table("x", 20, start, lat=1.0, lon=1.0))
        yield self.run_until(lambda: self.client.calls >= 5)
        self.assertEqual((yield self.depth()), 20)
        self.client.clear_failures()
        yield self.run_until(self.empty)
        self.assertEqual(self.delivered(), expected("x", 20, start))

    @inlineCallbacks
    def test_backoff_grows_and_is_capped(self):
        """Each failure doubles the wait (with jitter: half to all of it) up to OSEM_BACKOFF_MAX."""
        yield self.start(OSEM_BACKOFF_BASE=1.0, OSEM_BACKOFF_MAX=8.0)
        self.client.fail_next(ServerTrouble(503, "injected failure"), count=10_000)
        yield self.upload(table("w", 1, int(T0) - 3600, lat=1.0, lon=1.0))
        attempts = []
        for _ in range(7):
            calls = self.client.calls
            yield self.run_until(lambda: self.client.calls > calls)
            attempts.append(self.clock.seconds())
        waits = [b - a for a, b in zip(attempts, attempts[1:])]
        for n, wait in enumerate(waits):
            ceiling = min(8.0, 2.0 ** n)
            self.assertTrue(ceiling / 2 <= wait <= ceiling, (n, wait, waits))

    @inlineCallbacks
    def test_new_uploads_do_not_cut_a_backoff_short(self):
        """During an outage, nudges from new uploads leave the backoff alone (no request storm)."""
        yield self.start(OSEM_BACKOFF_BASE=5.0, OSEM_BACKOFF_MAX=5.0)
        self.client.fail_next(ServerTrouble(503, "injected failure"), count=10_000)
        start = int(T0) - 3600
        yield self.upload(table("z", 1, start, lat=1.0, lon=1.0))
        self.uploader.nudge()
        yield self.run_until(lambda: self.uploader.failures >= 1)
        calls_after_failure = self.client.calls
        failed_at = self.clock.seconds()
        for i in range(20):
            yield self.upload(table("z", 1, start + 1 + i))
            self.uploader.nudge()
        yield self.advance(2.49)  # the backoff is 2.5 to 5 s
        self.assertEqual((self.client.calls, self.uploader.failures), (calls_after_failure, 1))
        yield self.run_until(lambda: self.client.calls > calls_after_failure)
        self.assertGreaterEqual(self.clock.seconds() - failed_at, 2.5)

    @inlineCallbacks
    def test_429_honours_retry_after(self):
        """A 429 with Retry-After: 1 delays the next attempt by one second of the clock (the backoff is 0.05 s)."""
        yield self.start()
        start = int(T0) - 3600
        yield self.upload(table("y", 2, start, lat=1.0, lon=1.0))
        yield self.run_until(self.empty)
        self.client.fail_next(RateLimited(1.0))
        yield self.upload(table("y", 2, start + 10))
        yield self.run_until(lambda: self.uploader.failures == 1)
        refused_at, calls = self.clock.seconds(), self.client.calls
        yield self.advance(0.99)
        self.assertEqual(self.client.calls, calls)
        yield self.advance(0.01)
        self.assertGreater(self.client.calls, calls)
        yield self.run_until(self.empty)
        self.assertEqual(self.clock.seconds() - refused_at, 1.0)
        self.assertEqual(self.delivered(), expected("y", 2, start) + expected("y", 2, start + 10))

    @inlineCallbacks
    def test_request_budget_paces_writes(self):
        """With a budget of 6 writes a minute and no burst left, deliveries come 10 s apart."""
        yield self.start(OSEM_REQUESTS_PER_MINUTE=6.0, OSEM_REQUEST_BURST=1, OSEM_BATCH_SIZE=2)
        start = int(T0) - 3600
        yield self.upload(table("p", 1, start, lat=1.0, lon=1.0))
        yield self.run_until(self.empty)  # box creation: three writes, the budget is spent
        yield self.upload(table("p", 3, start + 10))
        delivered_at = []
        for _ in range(3):
            count = len(self.client.measurements)
            yield self.run_until(lambda: len(self.client.measurements) > count)
            delivered_at.append(self.clock.seconds())
        gaps = [b - a for a, b in zip(delivered_at, delivered_at[1:])]
        self.assertEqual([round(g, 6) for g in gaps], [10.0, 10.0])

    @inlineCallbacks
    def test_slow_api_uploads_stay_fast(self):
        """With every API call 0.5 s long, uploads are answered at once; delivery follows on the clock."""
        yield self.start(run_blocking=lambda f, *args: task.deferLater(self.clock, 0.5, f, *args))
        start = int(T0) - 3600
        wanted = collections.Counter()
        for k in range(5):
            receipt = yield self.upload(table("slow", 3, start + 10 * k, lat=1.0, lon=1.0))
            self.assertEqual(receipt, {"saved-in-db": 3, "osem-queued": 6})
            wanted += expected("slow", 3, start + 10 * k)
        self.assertEqual(self.delivered(), collections.Counter())
        yield self.run_until(self.empty)
        self.assertEqual(self.delivered(), wanted)

    @inlineCallbacks
    def test_restart_during_outage(self):
        """Stopped during an outage with rows queued, a new uploader on the same store delivers them."""
        yield self.start()
        self.client.fail_next(ServerTrouble(503, "injected failure"), count=10_000)
        start = int(T0) - 3600
        yield self.upload(table("r", 10, start, lat=1.0, lon=1.0))
        yield self.run_until(lambda: self.client.calls >= 3)
        yield self.uploader.stopService()
        self.client.clear_failures()
        yield self.start(store=self.store)
        yield self.upload(table("r", 10, start + 100))
        yield self.run_until(self.empty)
        self.assertEqual(self.delivered(), expected("r", 10, start) + expected("r", 10, start + 100))

    @inlineCallbacks
    def test_permanent_rejection_goes_to_dead_letters(self):
        """A measurement the API refuses (too far in its future) is dead-lettered alone; the rest arrive."""
        yield self.start(client_clock=Behind(self.clock, 600))  # the API's clock is 10 minutes behind ours
        old = int(T0) - 3600
        rows = table("d", 9, old, lat=1.0, lon=1.0)
        rows["time"][4] = int(T0) - 2  # in the past for us, the future for the API
        yield self.upload(rows)
        yield self.run_until(self.empty)
        dead = yield self.store.dead_letters()
        self.assertEqual(len(dead), 1)
        self.assertIn("too far into the future", dead[0][4])
        self.assertEqual(json.loads(dead[0][3])["sensors"][0][4], 404.0)
        self.assertEqual(sum(self.delivered().values()), 16)

    @inlineCallbacks
    def test_bad_credentials_retried_slowly(self):
        """Refused credentials are retried every OSEM_AUTH_RETRY_SECONDS (0.3 s), not in a loop; then delivery."""
        yield self.start()
        self.client.credentials_valid = False
        start = int(T0) - 3600
        yield self.upload(table("c", 2, start, lat=1.0, lon=1.0))
        self.uploader.wake()
        yield self.settle()
        calls = self.client.calls
        yield self.advance(1.0)
        self.assertEqual(self.client.calls - calls, 3)  # at 0.3, 0.6 and 0.9 s
        self.client.credentials_valid = True
        yield self.run_until(self.empty)
        self.assertEqual(self.delivered(), expected("c", 2, start))


def wait_until(predicate, timeout=15.0, step=0.02):
    """Poll ``predicate`` (may return a Deferred) on the reactor until true (bounded)."""
    deadline = time.monotonic() + timeout

    @inlineCallbacks
    def loop():
        while True:
            result = predicate()
            if hasattr(result, "addCallback"):
                result = yield result
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError("condition not met within {}s".format(timeout))
            yield task.deferLater(reactor, step, lambda: None)

    return loop()


class UploaderOverLoopbackTests(TestCase):
    """The whole chain for real: SQLite store, sensemapi on the uploader's thread, the fake API on loopback."""

    timeout = 60

    def setUp(self):
        self.api = FakeOpenSenseMap(reactor)
        self.api.add_user(EMAIL, PASSWORD, name="site")
        self.server = listen(self.api, reactor)
        self.addCleanup(self.server.stop)
        self.settings = uploader_settings(OSEM_API=self.server.url, DB_SYNCHRONOUS="NORMAL")
        self.store = Store.open(self.mktemp(), self.settings)
        self.store.startService()
        self.ingest = IngestService(
            self.settings, self.store, reactor, outbox_entries=outbox_entries_for(self.settings, reactor)
        )
        self.uploader = OsemUploader(self.settings, self.store, reactor)
        self.uploader.startService()
        self.addCleanup(self.store.stopService)
        self.addCleanup(self.uploader.stopService)  # cleanups run last-added first: the uploader, then the store

    def upload(self, rows):
        """One JSON upload through the ingest service."""
        return self.ingest.ingest(Upload(json.dumps(rows).encode(), "application/json", {}, "http"))

    def empty_outbox(self):
        """Fires when the outbox is empty."""
        return wait_until(lambda: self.store.outbox_stats().addCallback(lambda s: s["depth"] == 0))

    @inlineCallbacks
    def test_boxes_and_sensors_created_and_updated(self):
        """A new box is created with its sensors and weblink; later metadata changes update it."""
        start = int(time.time()) - 3600
        receipt = yield self.upload(table("kitchen", 3, start, lat=48.5, lon=9.05))
        self.assertEqual(receipt.as_dict(), {"saved-in-db": 3, "osem-queued": 6})
        yield self.empty_outbox()
        box = self.api.box_named("co2logserver senseBox kitchen")
        self.assertEqual(sorted(s["title"] for s in box["sensors"]), ["co2", "temperature"])
        self.assertEqual(box["weblink"], self.settings.OSEM_DEFAULT_WEBLINK)
        self.assertEqual(box["grouptag"], ["co2logserver"])
        self.assertEqual(box["location"][:2], (9.05, 48.5))
        puts = self.api.requests.count(("PUT", "/boxes/" + box["_id"]))
        yield self.upload({"box": ["kitchen"], "time": [start + 10], "lat": [48.6], "lon": [9.05], "bme_pressure_hpa": [1013.2]})
        yield self.empty_outbox()
        self.assertEqual(sorted(s["title"] for s in box["sensors"]), ["co2", "pressure", "temperature"])
        self.assertEqual(box["location"][:2], (9.05, 48.6))
        self.assertEqual(self.api.requests.count(("PUT", "/boxes/" + box["_id"])), puts + 1)
        self.assertEqual(self.api.requests.count(("GET", "/users/me")), 2)  # sign-up check after create + first fetch
        self.assertEqual(self.api.deleted_sensors, [])

    @inlineCallbacks
    def test_existing_box_sensors_are_never_deleted(self):
        """A box that already exists, with a sensor lacking an icon, gets updated without losing it."""
        start = int(time.time()) - 3600
        yield self.upload(table("lab", 1, start, lat=1.5, lon=2.5))
        yield self.empty_outbox()
        box = self.api.box_named("co2logserver senseBox lab")
        box["sensors"].append({"_id": "a" * 24, "title": "old", "unit": "u", "sensorType": "t", "icon": None, "last": None})
        self.uploader.client.forget()  # the uploader is idle: make it fetch the box again
        yield self.upload(table("lab", 1, start + 5, lat=1.6, lon=2.5))
        yield self.empty_outbox()
        self.assertEqual(self.api.deleted_sensors, [])
        self.assertIn("a" * 24, [s["_id"] for s in box["sensors"]])
        self.assertEqual(box["location"][:2], (2.5, 1.6))
