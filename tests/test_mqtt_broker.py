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
from tests.mosquitto import MISSING, Mosquitto, publish


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
        """Tasmota, ESPHome, JSON with a salted checksum as user property, CSV behind a header block."""
        self.start_broker()
        self.setup_store(CHECKSUM_SALTS=[README_SALT], MQTT_TASMOTA_TIMEZONE="UTC")
        service = self.start_mqtt()
        yield wait_until(lambda: service.is_subscribed, what="the subscription")
        own = b'{"co2": [700, 710], "box": ["hall", "hall"]}'
        messages = [
            ("tele/tasmota_1/SENSOR", b'{"Time":"2024-05-01T12:00:00","SCD30":{"CarbonDioxide":814,"Temperature":24.7},"TempUnit":"C"}'),
            ("livingroom/sensor/co2/state", b"905"),
            ("co2logd/hall", own, {"Content-MD5-Salted": salted(own, README_SALT)}, "application/json"),
            ("co2logd/cellar", b"Content-Type: text/csv\nIdempotency-Key: cellar-1\n\nco2,box\n1200,cellar\n"),
            ("co2logd/hall/status", b"online"),  # not data: acknowledged, nothing stored
        ]
        yield self.publish(messages)
        yield wait_until(lambda: service.counters["acks"] == len(messages), what="five PUBACKs", report=service.stats)
        rows = self.rows()
        self.assertEqual(len(rows), 5)
        tasmota = rows[0]
        self.assertEqual((tasmota["scd30_carbondioxide"], tasmota["scd30_temperature"], tasmota["box"]), (814, 24.7, "tasmota_1"))
        self.assertEqual(tasmota["time"], "2024-05-01 12:00:00+00:00")
        self.assertEqual(tasmota["transport"], "mqtt:tele/tasmota_1/SENSOR")
        self.assertEqual((rows[1]["co2"], rows[1]["box"], rows[1]["transport"]), (905, "livingroom", "mqtt:livingroom/sensor/+/state"))
        self.assertEqual([(r["co2"], r["box"], r["matched_checksums"]) for r in rows[2:4]], [(700, "hall", "md5"), (710, "hall", "md5")])
        self.assertEqual((rows[4]["co2"], rows[4]["box"]), (1200, "cellar"))
        self.assertEqual(dict(service.counters["outcomes"]), {"stored": 4, "not-data": 1})
