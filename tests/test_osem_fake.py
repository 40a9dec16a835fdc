"""
The fake OpenSenseMap, driven by the real ``sensemapi`` client in threads.

These tests pin down that the fake answers what sensemapi 0.5.0 expects,
so the uploader tests against it mean something.
"""

import datetime
import time

import pandas
from sensemapi.account import SenseMapAccount
from sensemapi.errors import OpenSenseMapAPIError, OpenSenseMapAPIInvalidCredentialsError
from sensemapi.senseBox import senseBox
from sensemapi.sensor import senseBoxSensor
from treq.testing import StubTreq
from twisted.internet import reactor, task
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from co2logd.osem.fake import FakeOpenSenseMap, listen


class FakeApiTests(TestCase):
    """sensemapi's calls against the fake behave as against the real API."""

    def setUp(self):
        self.api = FakeOpenSenseMap(reactor)
        self.api.add_user("alice@example.org", "secret-pw", name="alice")
        fake = listen(self.api, reactor)
        self.url = fake.url
        self.addCleanup(fake.stop)
        self.account = SenseMapAccount(
            api=self.url, email="alice@example.org", password="secret-pw",
            connection_timeout=5, response_timeout=5,
        )
        # no sign-out over the network when the account is collected
        self.addCleanup(self.account.__dict__.__setitem__, "_token", None)

    def new_box(self):
        """A box with one sensor, created through sensemapi."""
        box = senseBox(name="b1", exposure="indoor", grouptag="g", current_lat=48.5, current_lon=9.0)
        box.add_sensor(senseBoxSensor(title="co2", unit="ppm", type="scd30", icon="osem-not-available"))
        return self.account.new_box(box)

    @inlineCallbacks
    def test_sign_in_and_me(self):
        """Sign-in fills the account; users/me lists own boxes."""
        yield deferToThread(self.account.sign_in)
        self.assertEqual(self.account.username, "alice")
        created = yield deferToThread(self.new_box)
        yield deferToThread(self.account.get_own_boxes)
        self.assertEqual([b.id for b in self.account.boxes], [created.id])

    @inlineCallbacks
    def test_wrong_password(self):
        """A wrong password is the API's 403 that sensemapi reads as invalid credentials."""
        self.account.password = "wrong"
        with self.assertRaises(OpenSenseMapAPIInvalidCredentialsError):
            yield deferToThread(self.account.sign_in)

    @inlineCallbacks
    def test_expired_jwt_refreshes(self):
        """An invalid JWT → 403 → refresh → retried call succeeds, with a new token."""
        yield deferToThread(self.account.sign_in)
        old = self.account.token
        self.api.expire_tokens()
        yield deferToThread(self.account.get_details)
        self.assertNotEqual(self.account.token, old)
        self.assertIn(("POST", "/users/refresh-auth"), self.api.requests)

    @inlineCallbacks
    def test_stale_refresh_token_signs_in_again(self):
        """A refresh token that is no longer the user's latest → 403 → sensemapi signs in."""
        yield deferToThread(self.account.sign_in)
        self.api.expire_tokens()
        self.api.users["alice@example.org"]["refresh"] = "other"
        yield deferToThread(self.account.get_details)
        self.assertEqual(self.api.requests.count(("POST", "/users/sign-in")), 2)

    @inlineCallbacks
    def test_create_update_and_post(self):
        """Create a box, add a sensor by PUT, post CSV measurements: all recorded."""
        box = yield deferToThread(self.new_box)
        self.assertEqual(len(box.sensors), 1)
        self.assertEqual(box.grouptag, ["g"])
        box.add_sensor(senseBoxSensor(title="temperature", unit="°C", type="sht", icon="osem-thermometer"))
        box.weblink = "https://example.org"
        yield deferToThread(self.account.update_box_metadata, box)
        self.assertEqual(sorted(s.title for s in box.sensors), ["co2", "temperature"])
        self.assertTrue(all(s.id for s in box.sensors))
        self.assertEqual(self.api.boxes[box.id]["weblink"], "https://example.org")
        now = datetime.datetime.now(datetime.timezone.utc)
        frame = pandas.DataFrame.from_records(
            [(s.id, 1.5, now) for s in box.sensors], columns=("sensor_id", "value", "time")
        )
        ok = yield deferToThread(self.account.post_measurements, box.id, frame)
        self.assertTrue(ok)
        self.assertEqual(sorted(m["value"] for m in self.api.delivered(box.id)), [1.5, 1.5])
        fetched = yield deferToThread(self.account.get_box, box.id)
        self.assertEqual(fetched.sensors[0].last_value, 1.5)

    @inlineCallbacks
    def test_sensor_without_icon_is_deleted_by_put(self):
        """As on the real API: sensemapi sends an icon-less sensor as deleted, and it goes."""
        box = yield deferToThread(self.new_box)
        self.api.boxes[box.id]["sensors"].append(
            {"_id": "a" * 24, "title": "x", "unit": "u", "sensorType": "t", "icon": None, "last": None}
        )
        fetched = yield deferToThread(self.account.get_box, box.id)
        yield deferToThread(self.account.update_box_metadata, fetched)
        self.assertEqual(self.api.deleted_sensors, ["a" * 24])

    @inlineCallbacks
    def test_future_timestamp_rejected(self):
        """A timestamp more than a minute ahead of the server's clock is refused (422)."""
        box = yield deferToThread(self.new_box)
        future = datetime.datetime.fromtimestamp(time.time() + 120, datetime.timezone.utc)
        frame = pandas.DataFrame.from_records([(box.sensors[0].id, 1.0, future)], columns=("sensor_id", "value", "time"))
        with self.assertRaises(OpenSenseMapAPIError) as e:
            yield deferToThread(self.account.post_measurements, box.id, frame)
        self.assertIn("too far into the future", str(e.exception))
        self.assertEqual(self.api.delivered(), [])

    @inlineCallbacks
    def test_validation(self):
        """Unknown box 404; wrong sensor 400; too many lines 422; bad ids 422."""
        box = yield deferToThread(self.new_box)
        post = self.account.request
        url = self.url + "boxes/{}/data"
        csv = {"content-type": "text/csv"}
        cases = [
            (url.format("b" * 24), "{},1\n".format(box.sensors[0].id), 404),
            (url.format(box.id), "{},1\n".format("c" * 24), 400),
            (url.format(box.id), "nothex,1\n", 422),
            (url.format(box.id), "{},1\n".format(box.sensors[0].id) * 2501, 422),
            (url.format(box.id), "{},abc\n".format(box.sensors[0].id), 422),
            (url.format(box.id), "{},1,2024-01-01 00:00:00\n".format(box.sensors[0].id), 422),
        ]
        for target, body, status in cases:
            response = yield deferToThread(post, "post", target, headers=csv, data=body)
            self.assertEqual(response.status_code, status, body[:60])
            self.assertIsInstance(response.json()["message"], str)
        self.assertEqual(self.api.delivered(), [])

    @inlineCallbacks
    def test_outage(self):
        """Injected 503s answer with JSON errors; the next request is served."""
        box = yield deferToThread(self.new_box)
        self.api.inject(503, count=1)
        response = yield deferToThread(self.account.request, "get", self.url + "boxes/" + box.id)
        self.assertEqual(response.status_code, 503)
        self.assertIsInstance(response.json()["message"], str)
        response = yield deferToThread(self.account.request, "get", self.url + "boxes/" + box.id)
        self.assertEqual(response.status_code, 200)


class DelayTests(TestCase):
    """The fake's slow replies, on a task.Clock through treq's StubTreq (in memory)."""

    @inlineCallbacks
    def test_a_delayed_reply_comes_after_the_delay_and_not_before(self):
        """With delay = 0.2 s, a reply is held on the fake's clock for 0.2 s, then sent whole."""
        clock = task.Clock()
        api = FakeOpenSenseMap(clock)
        api.delay = 0.2
        http = StubTreq(api.resource())
        replied = http.get("http://opensensemap/boxes/" + "a" * 24)
        http.flush()
        self.assertNoResult(replied)
        clock.advance(0.19)
        http.flush()
        self.assertNoResult(replied)
        clock.advance(0.01)
        http.flush()
        response = self.successResultOf(replied)
        self.assertEqual(response.code, 404)
        body = yield response.json()
        self.assertEqual(body, {"code": "NotFound", "message": "Box not found"})
