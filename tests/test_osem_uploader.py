"""
The OpenSenseMap uploader end to end: real Store on a SQLite file, real
IngestService with the outbox mapping, the uploader with the real sensemapi
client on its own thread, and the fake API on a real loopback port.
"""

import collections
import json
import time

from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from co2logd.ingest import IngestService, Upload
from co2logd.osem import outbox_entries_for
from co2logd.osem.fake import FakeOpenSenseMap, listen
from co2logd.osem.uploader import OsemUploader, TokenBucket
from co2logd.settings import Settings
from co2logd.store import Store

EMAIL, PASSWORD = "site@example.org", "pw"


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


class Site:
    """A daemon's worth of objects on one database file, talking to the fake."""

    def __init__(self, test, path, url, **values):
        settings = {
            "OSEM_UPLOAD": True,
            "OSEM_API": url,
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
            "DB_SYNCHRONOUS": "NORMAL",
            "DB": path,
        }
        settings.update(values)
        self.settings = Settings.from_values(settings, environ={})
        self.store = Store.open(path, self.settings)
        self.store.startService()
        self.ingest = IngestService(
            self.settings, self.store, reactor, outbox_entries=outbox_entries_for(self.settings, reactor)
        )
        self.uploader = OsemUploader(self.settings, self.store, reactor)
        self.uploader.startService()
        test.addCleanup(self.stop)
        self.stopped = False

    @inlineCallbacks
    def stop(self):
        """Uploader first, then the database (the service tree's order)."""
        if self.stopped:
            return
        self.stopped = True
        yield self.uploader.stopService()
        yield self.store.stopService()

    def upload(self, table):
        """One JSON upload through the ingest service."""
        return self.ingest.ingest(Upload(json.dumps(table).encode(), "application/json", {}, "http"))


def wait_until(predicate, timeout=15.0, step=0.02):
    """Poll ``predicate`` (may return a Deferred) on the reactor until true."""
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


class UploaderTests(TestCase):
    """The scenarios of issue 4."""

    timeout = 60

    def setUp(self):
        self.api = FakeOpenSenseMap(reactor)
        self.api.add_user(EMAIL, PASSWORD, name="site")
        self.server = listen(self.api, reactor)
        self.addCleanup(self.server.stop)
        self.path = self.mktemp()

    def site(self, **values):
        """A new store + ingest + uploader on this test's database file."""
        return Site(self, self.path, self.server.url, **values)

    def empty_outbox(self, site):
        """Fires when the outbox is empty."""
        return wait_until(lambda: site.store.outbox_stats().addCallback(lambda s: s["depth"] == 0))

    def delivered(self):
        """Counter of (box name, title, value, time) the fake accepted."""
        titles = {}
        for box in self.api.boxes.values():
            for s in box["sensors"]:
                titles[s["_id"]] = (box["name"], s["title"])
        return collections.Counter(
            titles[m["sensor"]] + (m["value"], round(m["createdAt"])) for m in self.api.measurements
        )

    def table(self, box, n, start, **extra):
        """``n`` rows for ``box``, times ``start``…, values distinct."""
        rows = {
            "box": [box] * n,
            "time": [start + i for i in range(n)],
            "scd30_co2_ppm": [400 + i for i in range(n)],
            "sht_temperature_c": [20 + i / 10.0 for i in range(n)],
        }
        rows.update({k: [v] * n for k, v in extra.items()})
        return rows

    def expected(self, box, n, start, name="co2logserver senseBox {}"):
        """The measurements :meth:`table` should lead to."""
        c = collections.Counter()
        for i in range(n):
            c[(name.format(box), "co2", float(400 + i), start + i)] += 1
            c[(name.format(box), "temperature", round(20 + i / 10.0, 3), start + i)] += 1
        return c

    @inlineCallbacks
    def test_boxes_and_sensors_created_and_updated(self):
        """A new box is created with its sensors and weblink; later metadata changes update it."""
        site = self.site()
        start = int(time.time()) - 3600
        receipt = yield site.upload(self.table("kitchen", 3, start, lat=48.5, lon=9.05))
        self.assertEqual(receipt.as_dict(), {"saved-in-db": 3, "osem-queued": 6})
        yield self.empty_outbox(site)
        box = self.api.box_named("co2logserver senseBox kitchen")
        self.assertEqual(sorted(s["title"] for s in box["sensors"]), ["co2", "temperature"])
        self.assertEqual(box["weblink"], site.settings.OSEM_DEFAULT_WEBLINK)
        self.assertEqual(box["grouptag"], ["co2logserver"])
        self.assertEqual(box["location"][:2], (9.05, 48.5))
        puts = self.api.requests.count(("PUT", "/boxes/" + box["_id"]))
        yield site.upload({"box": ["kitchen"], "time": [start + 10], "lat": [48.6], "lon": [9.05], "bme_pressure_hpa": [1013.2]})
        yield self.empty_outbox(site)
        self.assertEqual(sorted(s["title"] for s in box["sensors"]), ["co2", "pressure", "temperature"])
        self.assertEqual(box["location"][:2], (9.05, 48.6))
        self.assertEqual(self.api.requests.count(("PUT", "/boxes/" + box["_id"])), puts + 1)
        self.assertEqual(self.api.requests.count(("GET", "/users/me")), 2)  # sign-up check after create + first fetch
        self.assertEqual(self.api.deleted_sensors, [])

    @inlineCallbacks
    def test_existing_box_sensors_are_never_deleted(self):
        """A box that already exists, with a sensor lacking an icon, gets updated without losing it."""
        site = self.site()
        start = int(time.time()) - 3600
        yield site.upload(self.table("lab", 1, start, lat=1.5, lon=2.5))
        yield self.empty_outbox(site)
        box = self.api.box_named("co2logserver senseBox lab")
        box["sensors"].append({"_id": "a" * 24, "title": "old", "unit": "u", "sensorType": "t", "icon": None, "last": None})
        site.uploader.client.forget()  # the uploader is idle: make it fetch the box again
        yield site.upload(self.table("lab", 1, start + 5, lat=1.6, lon=2.5))
        yield self.empty_outbox(site)
        self.assertEqual(self.api.deleted_sensors, [])
        self.assertIn("a" * 24, [s["_id"] for s in box["sensors"]])
        self.assertEqual(box["location"][:2], (2.5, 1.6))

    @inlineCallbacks
    def test_every_measurement_exactly_once(self):
        """Many uploads for several boxes, small batches: every measurement arrives once."""
        site = self.site(OSEM_BATCH_SIZE=50)
        start = int(time.time()) - 7200
        expected = collections.Counter()
        for k, box in enumerate(["a", "b", "c"] * 3):
            first = start + 100 * k
            yield site.upload(self.table(box, 40, first, lat=10.0, lon=20.0))
            expected += self.expected(box, 40, first)
        yield self.empty_outbox(site)
        self.assertEqual(self.delivered(), expected)
        posts = [p for m, p in self.api.requests if m == "POST" and p.endswith("/data")]
        self.assertGreaterEqual(len(posts), 720 // 50)

    @inlineCallbacks
    def test_outage_then_recovery(self):
        """503s for a while keep the rows queued; after recovery all arrive once."""
        site = self.site()
        self.api.inject(503, count=10_000)
        start = int(time.time()) - 3600
        yield site.upload(self.table("x", 20, start, lat=1.0, lon=1.0))
        yield wait_until(lambda: len(self.api.requests) >= 5)
        stats = yield site.store.outbox_stats()
        self.assertEqual(stats["depth"], 20)
        self.api.clear_failures()
        yield self.empty_outbox(site)
        self.assertEqual(self.delivered(), self.expected("x", 20, start))

    @inlineCallbacks
    def test_new_uploads_do_not_cut_a_backoff_short(self):
        """During an outage, nudges from new uploads leave the backoff alone (no request storm)."""
        site = self.site(OSEM_BACKOFF_BASE=5.0, OSEM_BACKOFF_MAX=5.0)
        self.api.inject(503, count=10_000)
        start = int(time.time()) - 3600
        yield site.upload(self.table("z", 1, start, lat=1.0, lon=1.0))
        site.uploader.nudge()
        yield wait_until(lambda: site.uploader.failures >= 1)
        requests_after_failure = len(self.api.requests)
        for i in range(20):
            yield site.upload(self.table("z", 1, start + 1 + i))
            site.uploader.nudge()
        yield task.deferLater(reactor, 0.3, lambda: None)
        self.assertEqual(len(self.api.requests), requests_after_failure)
        self.assertEqual(site.uploader.failures, 1)

    @inlineCallbacks
    def test_429_honours_retry_after(self):
        """A 429 with Retry-After: 1 delays the next attempt by at least a second (backoff is 0.05 s)."""
        site = self.site()
        start = int(time.time()) - 3600
        yield site.upload(self.table("y", 2, start, lat=1.0, lon=1.0))
        yield self.empty_outbox(site)
        self.api.inject(429, retry_after="1", method="POST", path="/data$")
        began = time.monotonic()
        yield site.upload(self.table("y", 2, start + 10))
        yield self.empty_outbox(site)
        self.assertGreaterEqual(time.monotonic() - began, 1.0)
        self.assertEqual(self.delivered(), self.expected("y", 2, start) + self.expected("y", 2, start + 10))

    @inlineCallbacks
    def test_slow_api_uploads_stay_fast(self):
        """With every API reply 0.5 s late, uploads still return at once; delivery follows."""
        self.api.delay = 0.5
        site = self.site()
        start = int(time.time()) - 3600
        durations = []
        expected = collections.Counter()
        for k in range(5):
            began = time.monotonic()
            yield site.upload(self.table("slow", 3, start + 10 * k, lat=1.0, lon=1.0))
            durations.append(time.monotonic() - began)
            expected += self.expected("slow", 3, start + 10 * k)
        self.assertLess(max(durations), 0.4)
        yield self.empty_outbox(site)
        self.assertEqual(self.delivered(), expected)

    @inlineCallbacks
    def test_restart_during_outage(self):
        """Stopped during an outage with rows queued, a new daemon on the same file delivers them."""
        self.api.inject(503, count=10_000)
        first = self.site()
        start = int(time.time()) - 3600
        yield first.upload(self.table("r", 10, start, lat=1.0, lon=1.0))
        yield wait_until(lambda: len(self.api.requests) >= 3)
        yield first.stop()
        self.api.clear_failures()
        second = self.site()
        yield second.upload(self.table("r", 10, start + 100))
        yield self.empty_outbox(second)
        self.assertEqual(self.delivered(), self.expected("r", 10, start) + self.expected("r", 10, start + 100))

    @inlineCallbacks
    def test_permanent_rejection_goes_to_dead_letters(self):
        """A measurement the API refuses (timestamp too far in the future) is dead-lettered; the rest arrive."""
        self.api.skew = -600  # the API's clock is 10 minutes behind ours
        site = self.site()
        old = int(time.time()) - 3600
        table = self.table("d", 9, old, lat=1.0, lon=1.0)
        table["time"][4] = int(time.time()) - 2  # in the past for us, the future for the API
        yield site.upload(table)
        yield self.empty_outbox(site)
        dead = yield site.store.dead_letters()
        self.assertEqual(len(dead), 1)
        self.assertIn("too far into the future", dead[0][4])
        self.assertEqual(json.loads(dead[0][3])["sensors"][0][4], 404.0)
        self.assertEqual(sum(self.delivered().values()), 16)

    @inlineCallbacks
    def test_bad_credentials_retried_slowly(self):
        """Refused credentials are logged clearly and retried after OSEM_AUTH_RETRY_SECONDS, not in a loop."""
        self.api.users[EMAIL]["password"] = "changed"
        site = self.site()
        start = int(time.time()) - 3600
        yield site.upload(self.table("c", 2, start, lat=1.0, lon=1.0))
        yield task.deferLater(reactor, 1.0, lambda: None)
        attempts = self.api.requests.count(("POST", "/users/sign-in"))
        self.assertGreaterEqual(attempts, 1)
        self.assertLessEqual(attempts, 5)  # 1 s / 0.3 s
        self.api.users[EMAIL]["password"] = PASSWORD
        yield self.empty_outbox(site)
        self.assertEqual(self.delivered(), self.expected("c", 2, start))
