"""
The MQTT transport against a real Mosquitto broker (tests/mosquitto.py):
every payload convention end to end, PUBACK after the commit, persistent
sessions, a stalled database, refusals acknowledged once, reconnects.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from co2logd.transports.mqtt import MQTTService
from tests.helpers import README_SALT, StoreMixin, make_settings, rows_in, salted
import shutil

from tests.mosquitto import MISSING, Mosquitto, make_certificates, publish


def wait_until(predicate, timeout: float = 20.0, what: str = "the condition", report=lambda: ""):
    """Poll ``predicate`` on the reactor every 20 ms; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout

    @defer.inlineCallbacks
    def poll():
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for {} {}".format(what, report()))
            yield task.deferLater(reactor, 0.02, lambda: None)

    return poll()


class BrokerMixin(StoreMixin):
    """A broker of the test's own, a real store and ingest, and MQTT services on them."""

    users = None

    def start_broker(self) -> Mosquitto:
        directory = self.mktemp()
        os.makedirs(directory)
        self.broker = Mosquitto(directory, users=self.users)
        self.broker.start()
        self.addCleanup(self.broker.stop)
        return self.broker

    def setup_store(self, **values):
        values.setdefault("MQTT_CLIENT_ID", "co2logd-test-" + self.id().rsplit(".", 1)[-1][-20:])
        values.setdefault("MQTT_RECONNECT_MAX_SECONDS", 1)
        settings = make_settings(**values)
        self.make_ingest(settings, clock=reactor)

    def start_mqtt(self, url=None, topics=("tele/+/SENSOR", "+/sensor/+/state", "co2logd/#")) -> MQTTService:
        service = MQTTService(self.ingest, self.settings, reactor, broker=url or self.broker.url, topics=list(topics))
        service.startService()
        self.addCleanup(lambda: service.running and service.stopService())
        return service

    def publish(self, messages, **kwargs):
        """Publish from a thread; fires once the broker acknowledged all of them."""
        return threads.deferToThread(publish, self.broker.port, messages, **kwargs)

    def rows(self):
        return rows_in(self.db_path)


class ConventionTests(BrokerMixin, unittest.TestCase):
    """Each payload convention, published to Mosquitto, ends up in the database; every message is acknowledged."""

    if MISSING:
        skip = MISSING

    @defer.inlineCallbacks
    def test_conventions_end_to_end(self):
        """Tasmota, ESPHome, JSON with a salted checksum as user property, CSV behind a header block, line protocol."""
        self.start_broker()
        self.setup_store(CHECKSUM_SALTS=[README_SALT], MQTT_TASMOTA_TIMEZONE="UTC")
        service = self.start_mqtt(topics=["tele/+/SENSOR", "+/sensor/+/state", "co2logd/#", "telegraf/#"])
        yield wait_until(lambda: service.is_subscribed, what="the subscription")
        own = b'{"co2": [700, 710], "box": ["hall", "hall"]}'
        messages = [
            ("tele/tasmota_1/SENSOR", b'{"Time":"2024-05-01T12:00:00","SCD30":{"CarbonDioxide":814,"Temperature":24.7},"TempUnit":"C"}'),
            ("livingroom/sensor/co2/state", b"905"),
            ("co2logd/hall", own, {"Content-MD5-Salted": salted(own, README_SALT)}, "application/json"),
            ("co2logd/cellar", b"Content-Type: text/csv\nIdempotency-Key: cellar-1\n\nco2,box\n1200,cellar\n"),
            ("co2logd/hall/status", b"online"),  # not data: acknowledged, nothing stored
            ("telegraf/gw1/air", b"air,host=gw1 co2=640i 1714564800000000000\n"),  # Telegraf's MQTT output
        ]
        yield self.publish(messages)
        yield wait_until(lambda: service.counters["acks"] == len(messages), what="all PUBACKs", report=service.stats)
        rows = self.rows()
        self.assertEqual(len(rows), 6)
        tasmota = rows[0]
        self.assertEqual((tasmota["scd30_carbondioxide"], tasmota["scd30_temperature"], tasmota["box"]), (814, 24.7, "tasmota_1"))
        self.assertEqual(tasmota["time"], "2024-05-01 12:00:00+00:00")
        self.assertEqual(tasmota["transport"], "mqtt:tele/tasmota_1/SENSOR")
        self.assertEqual((rows[1]["co2"], rows[1]["box"], rows[1]["transport"]), (905, "livingroom", "mqtt:livingroom/sensor/+/state"))
        self.assertEqual([(r["co2"], r["box"], r["matched_checksums"]) for r in rows[2:4]], [(700, "hall", "md5"), (710, "hall", "md5")])
        by_box = {r["box"]: r for r in rows}  # the key's lookup lets the cellar's row commit after later ones
        self.assertEqual(by_box["cellar"]["co2"], 1200)
        self.assertEqual((by_box["gw1"]["co2"], by_box["gw1"]["time"]), (640, "2024-05-01 12:00:00+00:00"))
        self.assertEqual(dict(service.counters["outcomes"]), {"stored": 5, "not-data": 1})


class DurabilityTests(BrokerMixin, unittest.TestCase):
    """PUBACK after the commit: what the broker holds is never lost."""

    if MISSING:
        skip = MISSING

    @defer.inlineCallbacks
    def test_published_while_down_arrive_after_start(self):
        """Messages published while co2logd is stopped wait in the broker (persistent session) and are stored at the next start."""
        self.start_broker()
        self.setup_store()
        first = self.start_mqtt(topics=["co2logd/#"])
        yield wait_until(lambda: first.is_subscribed, what="the subscription")
        yield first.stopService()
        yield self.publish([("co2logd/n", json.dumps({"seq": i}).encode()) for i in range(200)])
        second = self.start_mqtt(topics=["co2logd/#"])
        yield wait_until(lambda: second.counters["acks"] == 200, what="200 PUBACKs", report=second.stats)
        self.assertEqual(sorted(r["seq"] for r in self.rows()), list(range(200)))

    @defer.inlineCallbacks
    def test_published_while_down_mqtt311(self):
        """The same with MQTT 3.1.1 (clean_session false): the session survives co2logd's absence."""
        self.start_broker()
        self.setup_store(MQTT_PROTOCOL="3.1.1")
        first = self.start_mqtt(topics=["co2logd/#"])
        yield wait_until(lambda: first.is_subscribed, what="the subscription")
        yield first.stopService()
        yield self.publish([("co2logd/n", json.dumps({"seq": i}).encode()) for i in range(50)], protocol="3.1.1")
        second = self.start_mqtt(topics=["co2logd/#"])
        yield wait_until(lambda: second.counters["acks"] == 50, what="50 PUBACKs", report=second.stats)
        self.assertEqual(sorted(r["seq"] for r in self.rows()), list(range(50)))

    @defer.inlineCallbacks
    def test_bad_payloads_refused_and_acknowledged_once(self):
        """A payload that can never be stored is counted, acknowledged, and not sent again after a restart."""
        self.start_broker()
        self.setup_store()
        first = self.start_mqtt()
        yield wait_until(lambda: first.is_subscribed, what="the subscription")
        yield self.publish([("tele/dev/SENSOR", b"{not json"), ("co2logd/x", b'{"bad name!": 1}'), ("dev/sensor/co2/state", b"lots")])
        yield wait_until(lambda: first.counters["acks"] == 3, what="three PUBACKs", report=first.stats)
        self.assertEqual(dict(first.counters["outcomes"]), {"refused": 3})
        self.assertEqual(dict(first.counters["refused"]), {"parse": 2, "bad-column": 1})
        yield first.stopService()
        second = self.start_mqtt()
        yield wait_until(lambda: second.is_subscribed, what="the subscription")
        yield self.publish([("co2logd/x", b'{"co2": 1}')])
        yield wait_until(lambda: second.counters["acks"] == 1, what="the good message", report=second.stats)
        # the broker sends what it still holds before anything new: the refused three did not come again
        self.assertEqual(second.counters["messages"], 1)
        self.assertEqual(len(self.rows()), 1)

    @defer.inlineCallbacks
    def test_database_stall_delays_pubacks(self):
        """
        While another process holds the database's write lock, messages are
        received but not acknowledged; once it lets go, all are stored and
        acknowledged, none twice.
        """
        self.start_broker()
        self.setup_store()
        service = self.start_mqtt(topics=["co2logd/#"])
        yield wait_until(lambda: service.is_subscribed, what="the subscription")
        blocker = sqlite3.connect(self.db_path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN EXCLUSIVE")  # the stall: no writer gets in (store's busy_timeout is 5 s)
        try:
            yield self.publish([("co2logd/n", json.dumps({"seq": i}).encode()) for i in range(50)])
            yield wait_until(lambda: service.counters["messages"] == 50, what="50 messages received")
            yield task.deferLater(reactor, 1.0, lambda: None)
            self.assertEqual(service.counters["acks"], 0)
            self.assertEqual(len(service.pending), 50)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        yield wait_until(lambda: service.counters["acks"] == 50, what="50 PUBACKs", report=service.stats)
        self.assertEqual(sorted(r["seq"] for r in self.rows()), list(range(50)))

    @defer.inlineCallbacks
    def test_busy_writer_holds_acks_and_retries(self):
        """A write queue that is full (StoreBusy, 503) holds the PUBACKs back and tries again: nothing is dropped."""
        self.start_broker()
        self.setup_store(WRITE_QUEUE_MAX_ROWS=1)
        service = self.start_mqtt(topics=["co2logd/#"])
        yield wait_until(lambda: service.is_subscribed, what="the subscription")
        rows = [{"seq": [i, i + 1000]} for i in range(40)]  # two rows each: always more than the queue takes
        yield self.publish([("co2logd/n", json.dumps(r).encode()) for r in rows])
        yield wait_until(lambda: service.counters["acks"] == 40, timeout=60, what="40 PUBACKs", report=service.stats)
        self.assertGreater(service.counters["store_retries"], 0)
        self.assertEqual(len(self.rows()), 80)


class ConnectionTests(BrokerMixin, unittest.TestCase):
    """A broker that is down at start is waited for; a lost broker is reconnected; credentials."""

    if MISSING:
        skip = MISSING
    users = {"co2logd": "s3cret pass"}

    @defer.inlineCallbacks
    def test_broker_down_at_start_then_restarted(self):
        """
        Start with no broker: /health says why; the broker comes: connected and
        storing; the broker restarts: reconnected (counted) and the session kept.
        """
        broker = self.start_broker()
        port = broker.port
        broker.stop()
        self.setup_store()
        service = self.start_mqtt(url="mqtt://co2logd:s3cret%20pass@127.0.0.1:{}".format(port), topics=["co2logd/#"])
        yield task.deferLater(reactor, 0.5, lambda: None)
        health = service.health()
        self.assertFalse(health["ok"])
        self.assertIn("not connected", health["reason"])
        self.assertNotIn("s3cret", json.dumps(health))
        broker.start(port=port)
        yield wait_until(lambda: service.is_subscribed, what="the subscription")
        self.assertTrue(service.health()["ok"])
        broker.restart()
        yield wait_until(lambda: service.counters["reconnects"] == 1 and service.is_subscribed, what="the reconnect")
        yield self.publish([("co2logd/x", b'{"co2": 5}')], username="co2logd", password="s3cret pass")
        yield wait_until(lambda: service.counters["acks"] == 1, what="the PUBACK", report=service.stats)
        self.assertEqual(self.rows()[0]["co2"], 5)

    @defer.inlineCallbacks
    def test_wrong_password(self):
        """Refused credentials: not connected, /health gives the broker's reason without the password."""
        self.start_broker()
        self.setup_store()
        service = self.start_mqtt(url="mqtt://co2logd:wrong-pw@127.0.0.1:{}".format(self.broker.port))
        yield wait_until(lambda: service.counters["connect_failures"] > 0, what="a refused connection")
        health = service.health()
        self.assertFalse(health["ok"])
        self.assertIn("Not authorized", health["reason"])
        self.assertNotIn("wrong-pw", json.dumps(health))


class TLSTests(BrokerMixin, unittest.TestCase):
    """mqtts:// with a private CA (MQTT_CA_FILE) and broker credentials."""

    if MISSING:
        skip = MISSING
    elif shutil.which("openssl") is None:
        skip = "the openssl command (Debian package openssl) is needed to make the test certificates"

    @defer.inlineCallbacks
    def test_tls_with_private_ca(self):
        """With the CA file: connected over TLS, stored; without it: the certificate is refused, not connected."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        ca, cert, key = make_certificates(directory)
        self.broker = Mosquitto(directory, users={"co2logd": "pw"}, tls=(cert, key))
        self.broker.start()
        self.addCleanup(self.broker.stop)
        self.setup_store(MQTT_CA_FILE=ca)
        url = "mqtts://co2logd:pw@127.0.0.1:{}".format(self.broker.port)
        service = self.start_mqtt(url=url, topics=["co2logd/#"])
        yield wait_until(lambda: service.is_subscribed, what="the subscription over TLS")
        yield self.publish([("co2logd/tls", b'{"co2": 42}')], username="co2logd", password="pw", ca_file=ca)
        yield wait_until(lambda: service.counters["acks"] == 1, what="the PUBACK", report=service.stats)
        self.assertEqual(self.rows()[0]["co2"], 42)
        yield service.stopService()

        self.settings = self.settings.replace(MQTT_CA_FILE=None, MQTT_CLIENT_ID="co2logd-test-no-ca")
        untrusting = self.start_mqtt(url=url, topics=["co2logd/#"])
        yield wait_until(lambda: untrusting.counters["connect_failures"] > 0, what="a refused certificate")
        self.assertFalse(untrusting.health()["ok"])


class TrustedTopicTests(BrokerMixin, unittest.TestCase):
    """UPLOAD_REQUIRES_AUTH: signed messages anywhere, unsigned ones only on MQTT_TRUSTED_TOPICS."""

    if MISSING:
        skip = MISSING

    @defer.inlineCallbacks
    def test_trusted_topics(self):
        """Tasmota on a trusted topic is stored; ESPHome elsewhere is refused (auth-missing, acknowledged); a signed Tasmota message passes anywhere."""
        self.start_broker()
        self.setup_store(UPLOAD_REQUIRES_AUTH=True, CHECKSUM_SALTS=[README_SALT], MQTT_TRUSTED_TOPICS=["tele/+/SENSOR"])
        service = self.start_mqtt(topics=["tele/#", "+/sensor/+/state"])
        yield wait_until(lambda: service.is_subscribed, what="the subscription")
        yield self.publish([
            ("tele/trusted/SENSOR", b'{"X":{"Y":1}}'),
            ("node/sensor/co2/state", b"700"),
            ("node/sensor/co2/state", b"701", {"Content-MD5-Salted": salted(b"701", README_SALT)}),
        ])
        yield wait_until(lambda: service.counters["acks"] == 3, what="three PUBACKs", report=service.stats)
        rows = self.rows()
        self.assertEqual(sorted((r["box"], r.get("x_y"), r.get("co2")) for r in rows), [("node", None, 701), ("trusted", 1, None)])
        self.assertEqual(dict(service.counters["refused"]), {"auth-missing": 1})
        signed_row = next(r for r in rows if r["box"] == "node")
        self.assertEqual(signed_row["matched_checksums"], "md5")
