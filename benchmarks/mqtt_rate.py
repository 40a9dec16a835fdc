"""
How many single-row QoS 1 MQTT messages per second does co2logd store, end
to end through a real Mosquitto, with none lost?

    python benchmarks/mqtt_rate.py                     # 20,000 messages per scenario
    python benchmarks/mqtt_rate.py --messages 50000 --inflight 1000 --synchronous FULL

Starts Mosquitto (tests/mosquitto.py: a config of its own, a free port) and
``python -m co2logd --mqtt … --mqtt-topic bench/#`` on a temporary database,
then measures:

  live     a publisher sends N messages ``{"seq": i, "co2": …}`` (QoS 1, one
           row each) while co2logd runs; messages/s from the first publish
           until the N-th row is committed
  backlog  N messages published while co2logd is stopped wait in the broker
           (persistent session); co2logd starts and drains them: messages/s
           from its start until the N-th row is committed

and, as baselines in the same run:

  publish  the publisher alone: N QoS 1 messages to a topic nobody reads
           (the rate the broker accepts them from one Python client)
  drain    a bare paho subscriber that acknowledges at once (no database):
           the backlog drained with paho's automatic PUBACK

Every scenario checks that each of the N numbers is stored exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)

from tests.mosquitto import Mosquitto, free_port  # noqa: E402


def payload(i: int) -> bytes:
    """One row: a sequence number and a CO2 value."""
    return b'{"seq":%d,"co2":%d}' % (i, 400 + i % 600)


def publish(port: int, topic: str, n: int) -> float:
    """Publish ``n`` QoS 1 messages as fast as the broker takes them; returns the seconds it took."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    done = threading.Event()
    acked = [0]

    def on_publish(client, userdata, mid, reason_code, properties):
        acked[0] += 1
        if acked[0] == n:
            done.set()

    client.on_publish = on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    start = time.perf_counter()
    for i in range(n):
        client.publish(topic, payload(i), qos=1)
    if not done.wait(300):
        raise SystemExit("the broker acknowledged only {} of {} messages".format(acked[0], n))
    seconds = time.perf_counter() - start
    client.disconnect()
    client.loop_stop()
    return seconds


def stored(db: str, topic: str):
    """(rows, distinct seq) stored from ``topic``."""
    connection = sqlite3.connect(db, timeout=30)
    try:
        return connection.execute(
            "SELECT count(*), count(DISTINCT seq) FROM data WHERE transport = ?", ("mqtt:" + topic,)
        ).fetchone()
    except sqlite3.OperationalError:
        return (0, 0)
    finally:
        connection.close()


def row_count(db: str) -> int:
    connection = sqlite3.connect(db, timeout=30)
    try:
        return connection.execute("SELECT max(rowid) FROM data").fetchone()[0] or 0
    except sqlite3.OperationalError:
        return 0
    finally:
        connection.close()


def wait_rows(db: str, n: int, timeout: float = 600):
    """Poll (cheaply: the largest rowid) until ``n`` rows are stored; returns the time.perf_counter() then."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if row_count(db) >= n:
            return time.perf_counter()
        time.sleep(0.05)
    raise SystemExit("only {} of {} rows stored".format(row_count(db), n))


class Daemon:
    """co2logd with MQTT on a database in ``directory``."""

    def __init__(self, directory: str, broker_url: str, args):
        self.directory = directory
        self.db = os.path.join(directory, "bench.sqlite")
        config = os.path.join(directory, "bench_config.py")
        with open(config, "w") as f:
            f.write("CO2LOGSERVER_DB_SYNCHRONOUS = {!r}\n".format(args.synchronous))
            f.write("CO2LOGSERVER_MQTT_MAX_INFLIGHT = {}\n".format(args.inflight))
            f.write("CO2LOGSERVER_MQTT_CLIENT_ID = 'co2logd-bench'\n")
        self.argv = [sys.executable, "-m", "co2logd", "--db", self.db, "--config", config,
                     "--mqtt", broker_url, "--mqtt-topic", "bench/#"]
        self.process = None

    def start(self) -> None:
        self.http = free_port()
        env = dict(os.environ, PYTHONPATH=REPO)
        env.pop("CO2LOGSERVER_CONFIG", None)
        log = open(os.path.join(self.directory, "daemon.log"), "ab")
        self.process = subprocess.Popen(self.argv + ["--http", "tcp:{}:interface=127.0.0.1".format(self.http)],
                                        cwd=self.directory, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_subscribed(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit("co2logd exited; see daemon.log in " + self.directory)
            try:
                with urllib.request.urlopen("http://127.0.0.1:{}/health".format(self.http), timeout=5) as r:
                    body = r.read()
            except urllib.error.HTTPError as e:
                body = e.read()
            except OSError:
                time.sleep(0.05)
                continue
            components = json.loads(body).get("components", [])
            if any(c.get("kind") == "mqtt" and c.get("ok") for c in components):
                return
            time.sleep(0.05)
        raise SystemExit("co2logd did not subscribe")

    def metrics(self) -> str:
        with urllib.request.urlopen("http://127.0.0.1:{}/metrics".format(self.http), timeout=10) as r:
            return r.read().decode()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(60)
            self.process = None


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    with open("/proc/{}/stat".format(pid)) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def metric(text: str, name: str) -> float:
    """The sum of a metric's samples in the exposition text."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " ") or ("{" in name and line.startswith(name[:-1])):
            total += float(line.rsplit(" ", 1)[1])
    return total


def bare_drain(port: int, n: int) -> float:
    """A paho subscriber with automatic PUBACK drains ``n`` queued messages; returns messages/s."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def client():
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bare-drain", protocol=mqtt.MQTTv5)
        p = Properties(PacketTypes.CONNECT)
        p.SessionExpiryInterval = 0xFFFFFFFF
        p.ReceiveMaximum = 1000
        return c, p

    c, p = client()
    subscribed = threading.Event()
    c.on_subscribe = lambda *a: subscribed.set()
    c.connect("127.0.0.1", port, clean_start=True, properties=p)
    c.loop_start()
    c.subscribe("drain/#", qos=1)
    subscribed.wait(10)
    c.disconnect()
    c.loop_stop()
    publish(port, "drain/x", n)
    c, p = client()
    got = [0]
    done = threading.Event()

    def on_message(client, userdata, message):
        got[0] += 1
        if got[0] == n:
            done.set()

    c.on_message = on_message
    start = time.perf_counter()
    c.connect("127.0.0.1", port, clean_start=False, properties=p)
    c.loop_start()
    done.wait(300)
    seconds = time.perf_counter() - start
    c.disconnect()
    c.loop_stop()
    return n / seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--inflight", type=int, default=1000, help="MQTT_MAX_INFLIGHT (Receive Maximum)")
    parser.add_argument("--synchronous", default="FULL", help="DB_SYNCHRONOUS")
    args = parser.parse_args()
    n = args.messages
    directory = tempfile.mkdtemp(prefix="co2logd-mqtt-bench-")
    broker = Mosquitto(os.path.join(directory))
    broker.start()
    results = {}
    try:
        seconds = publish(broker.port, "nobody/reads", n)
        results["publish"] = n / seconds
        results["drain"] = bare_drain(broker.port, n)

        daemon = Daemon(directory, broker.url, args)
        daemon.start()
        daemon.wait_subscribed()
        cpu_daemon, cpu_broker = cpu_seconds(daemon.process.pid), cpu_seconds(broker.process.pid)
        start = time.perf_counter()
        threading.Thread(target=publish, args=(broker.port, "bench/live", n), daemon=True).start()
        end = wait_rows(daemon.db, n)
        results["live"] = n / (end - start)
        cpu_daemon = cpu_seconds(daemon.process.pid) - cpu_daemon
        cpu_broker = cpu_seconds(broker.process.pid) - cpu_broker
        rows, distinct = stored(daemon.db, "bench/live")
        live_ok = rows == n and distinct == n
        daemon.stop()

        publish(broker.port, "bench/backlog", n)
        start = time.perf_counter()
        daemon.start()
        end = wait_rows(daemon.db, 2 * n)
        results["backlog"] = n / (end - start)
        time.sleep(0.5)
        rows, distinct = stored(daemon.db, "bench/backlog")
        backlog_ok = rows == n and distinct == n
        daemon.wait_subscribed()
        text = daemon.metrics()
        daemon.stop()
    finally:
        broker.stop()

    print("co2logd MQTT ingest: {} single-row QoS 1 messages per scenario, DB_SYNCHRONOUS={}, MQTT_MAX_INFLIGHT={}, "
          "{} CPUs".format(n, args.synchronous, args.inflight, os.cpu_count()))
    print("{:<10} {:>12}  {}".format("scenario", "messages/s", "note"))
    print("{:<10} {:>12.0f}  one Python publisher, nobody subscribed (baseline)".format("publish", results["publish"]))
    print("{:<10} {:>12.0f}  bare paho subscriber, automatic PUBACK, no database (baseline)".format("drain", results["drain"]))
    print("{:<10} {:>12.0f}  stored while publishing; {}; {:.0%} of publish".format(
        "live", results["live"], "all stored once" if live_ok else "LOSS OR DUPLICATES", results["live"] / results["publish"]))
    print("{:<10} {:>12.0f}  queued while stopped, drained at start; {}; {:.0%} of drain".format(
        "backlog", results["backlog"], "all stored once" if backlog_ok else "LOSS OR DUPLICATES", results["backlog"] / results["drain"]))
    print("CPU per message while live: co2logd {:.0f} µs (all its threads: reactor, paho's network thread, "
          "the database writer), Mosquitto {:.0f} µs; co2logd alone could store about {:.0f}/s on one free core".format(
              cpu_daemon / n * 1e6, cpu_broker / n * 1e6, n / cpu_daemon))
    print("daemon after backlog: transactions {:.0f}, messages stored {:.0f}, store retries {:.0f}".format(
        metric(text, 'co2logd_db_write_events_total{event="transactions"}'), metric(text, "co2logd_mqtt_messages_total"),
        metric(text, "co2logd_mqtt_store_retries_total")))
    return 0 if live_ok and backlog_ok else 1


if __name__ == "__main__":
    sys.exit(main())
