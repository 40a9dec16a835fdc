"""
kill -9 of the daemon while a publisher sends QoS 1 messages through a real
Mosquitto: after a restart, every message the broker accepted is stored.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from typing import Tuple

from twisted.internet import threads
from twisted.trial import unittest

from tests import helpers
from tests.helpers import REPO
from tests.mosquitto import MISSING, Mosquitto

INFLIGHT = 200
KILLS = int(os.environ.get("CO2LOGD_MQTT_KILLS", "1"))  # more rounds: CO2LOGD_MQTT_KILLS=5


def start_daemon(db: str, broker_url: str, log_path: str) -> Tuple[subprocess.Popen, int]:
    """``python -m co2logd --mqtt …`` as a user starts it (default client id: from the database path); (process, HTTP port)."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("CO2LOGSERVER_CONFIG", None)
    config = os.path.join(os.path.dirname(db), "co2logd.conf")
    with open(config, "w") as f:
        f.write("CO2LOGSERVER_MQTT_MAX_INFLIGHT = {}\nCO2LOGSERVER_MQTT_RECONNECT_MAX_SECONDS = 1\n".format(INFLIGHT))
    argv = [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", db,
            "--config", config, "--mqtt", broker_url, "--mqtt-topic", "co2logd/#"]
    process, ports = helpers.start_daemon(argv, os.path.dirname(db), env, log_path)
    return process, ports["HTTP"]


def get(port: int, path: str):
    """(status, body) of a GET on the daemon."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:{}{}".format(port, path), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def mqtt_component(port: int):
    """The MQTT entry of /health, or None."""
    _, body = get(port, "/health")
    report = json.loads(body)
    return next((c for c in report.get("components", []) if c.get("kind") == "mqtt"), None)


def wait_subscribed(port: int, process, timeout: float = 30.0) -> None:
    """Until /health shows the MQTT subscription confirmed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        component = mqtt_component(port)
        if component is not None and component["ok"]:
            return
        if process.poll() is not None:
            raise AssertionError("the daemon exited")
        time.sleep(0.05)
    raise AssertionError("the daemon did not subscribe: {}".format(mqtt_component(port)))


class Publisher(threading.Thread):
    """
    Publishes numbered QoS 1 messages until stopped; ``accepted`` are the
    numbers the broker acknowledged.  Even numbers carry an Idempotency-Key
    user property, odd ones do not.
    """

    def __init__(self, broker_port: int):
        super().__init__(daemon=True)
        import paho.mqtt.client as mqtt

        self.accepted = set()
        self.stop = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.max_inflight_messages_set(100)
        self.broker_port = broker_port
        self.error = None

    def run(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        client = self.client
        client.connect("127.0.0.1", self.broker_port)
        client.loop_start()
        seq = 0
        try:
            while not self.stop.is_set():
                batch = []
                for _ in range(20):
                    properties = None
                    if seq % 2 == 0:
                        properties = Properties(PacketTypes.PUBLISH)
                        properties.UserProperty = [("Idempotency-Key", "crash-{}".format(seq))]
                    batch.append((seq, client.publish("co2logd/crash", json.dumps({"seq": seq}), qos=1, properties=properties)))
                    seq += 1
                for number, info in batch:
                    info.wait_for_publish(10)
                    if info.is_published():
                        self.accepted.add(number)
        except Exception as e:
            self.error = e
        finally:
            client.disconnect()
            client.loop_stop()


def stored_counts(db: str):
    """seq → how many rows hold it."""
    connection = sqlite3.connect(db, timeout=10)
    try:
        return dict(connection.execute("SELECT seq, count(*) FROM data GROUP BY seq").fetchall())
    except sqlite3.OperationalError:
        return {}
    finally:
        connection.close()


def crash_scenario(workdir: str):
    """Publish, kill -9 (KILLS times; publishing on while it is down), restart; return what was accepted and stored."""
    broker = Mosquitto(workdir)
    broker.start()
    db = os.path.join(workdir, "co2.sqlite")
    log_path = os.path.join(workdir, "daemon.log")
    process = None
    try:
        process, http_port = start_daemon(db, broker.url, log_path)
        wait_subscribed(http_port, process)
        publisher = Publisher(broker.port)
        publisher.start()
        for _ in range(KILLS):
            time.sleep(1.0)
            process.send_signal(signal.SIGKILL)  # in the middle of the stream
            process.wait(10)
            time.sleep(0.5)  # messages published now wait in the broker
            process, http_port = start_daemon(db, broker.url, log_path)
            wait_subscribed(http_port, process)
        time.sleep(0.5)
        publisher.stop.set()
        publisher.join(30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            counts = stored_counts(db)
            if set(counts) >= publisher.accepted:
                break
            time.sleep(0.2)
        time.sleep(0.5)  # anything still coming would come now
        counts = stored_counts(db)
        metrics = get(http_port, "/metrics")[1].decode()
        health = mqtt_component(http_port)
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        process = None
        return publisher, counts, metrics, health
    finally:
        if process is not None:
            process.kill()
            process.wait()
        broker.stop()


class MQTTCrashTests(unittest.TestCase):
    """SIGKILL while messages stream in loses none the broker accepted."""

    if MISSING:
        skip = MISSING
    timeout = 180

    def test_kill_9_loses_nothing_the_broker_accepted(self):
        """
        Every accepted message is stored after the restarts; a duplicate can
        only be a message without Idempotency-Key that was committed but not
        yet acknowledged when the daemon died (at most the in-flight window).
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)

        def check(result):
            publisher, counts, metrics, health = result
            self.assertIsNone(publisher.error)
            self.assertGreater(len(publisher.accepted), 100)
            missing = sorted(publisher.accepted - set(counts))
            self.assertEqual(missing, [], "accepted by the broker but not stored")
            keyed_twice = [seq for seq, n in counts.items() if seq % 2 == 0 and n > 1]
            self.assertEqual(keyed_twice, [], "stored twice despite an Idempotency-Key")
            unkeyed_twice = [seq for seq, n in counts.items() if seq % 2 == 1 and n > 1]
            self.assertLessEqual(len(unkeyed_twice), 2 * INFLIGHT)
            self.assertTrue(health["ok"], health)
            self.assertIn("co2logd_mqtt_messages_total", metrics)
            self.assertIn("co2logd_mqtt_connected", metrics)
            self.msg = "accepted {}, stored {}, duplicates without key {}".format(
                len(publisher.accepted), sum(counts.values()), len(unkeyed_twice)
            )

        return threads.deferToThread(crash_scenario, workdir).addCallback(check)
