"""
Several co2logd daemons on one PostgreSQL database, end to end: real
``python -m co2logd`` processes, a real PostgreSQL 15 (tests/pgserver.py),
HTTP on 127.0.0.1; kill -9 of a daemon and a PostgreSQL restart under load.
"""

from __future__ import annotations

import collections
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from tests import pgserver
from tests.helpers import REPO, http_port_of, start_daemon

SKIP = pgserver.skip_reason()


class Daemon:
    """One ``python -m co2logd`` on a PostgreSQL URL, HTTP on a free loopback port."""

    def __init__(self, test: unittest.TestCase, url: str, config: Optional[str] = None, udp: bool = False):
        self.log_path = test.mktemp() + ".log"
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        env = dict(os.environ, PYTHONPATH=REPO)
        env.pop("CO2LOGSERVER_CONFIG", None)
        args = [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", url]
        if config:
            args += ["--config", config]
        if udp:
            args += ["--udp", "udp:0:interface=127.0.0.1"]
        self.process, ports = start_daemon(
            args, os.path.dirname(self.log_path), env, self.log_path, ("HTTP", "UDP") if udp else ("HTTP",))
        self.port = ports["HTTP"]
        self.udp_port = ports.get("UDP")
        test.addCleanup(self.stop)

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def request(self, method: str, path: str, body: bytes = b"", headers: Optional[Dict[str, str]] = None) -> Tuple[int, bytes, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body, headers or {})
            response = connection.getresponse()
            return response.status, response.read(), response
        finally:
            connection.close()

    def upload(self, table: Dict[str, List[Any]]) -> Tuple[int, bytes, Any]:
        return self.request("POST", "/upload", json.dumps(table).encode(), {"Content-Type": "application/json"})


def database_rows(server: pgserver.PostgresServer, db: str, sql: str) -> List[tuple]:
    return server.execute(sql, dbname=db)


class UploadLoad:
    """Client threads uploading numbered rows to daemons until stopped; records every answer."""

    def __init__(self, daemons: List[Daemon], clients: int, columns: int = 0):
        self.daemons = daemons
        self.clients = clients
        self.columns = columns
        self.acknowledged: List[Tuple[int, int]] = []
        self.statuses: collections.Counter = collections.Counter()
        self.retry_after_missing = 0
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(c,)) for c in range(clients)]

    def start(self) -> "UploadLoad":
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def run(self, client: int) -> None:
        seq = 0
        while not self.stop.is_set() and seq < 2000:
            seq += 1
            daemon = self.daemons[(client + seq) % len(self.daemons)]
            table: Dict[str, List[Any]] = {"client": [client], "seq": [seq], "gw": [(client + seq) % len(self.daemons)]}
            if self.columns:
                table["new_{}".format(seq % self.columns)] = [seq * 1.5]
            try:
                status, _, response = daemon.upload(table)
            except (OSError, http.client.HTTPException):
                self.statuses["connection"] += 1  # the daemon is gone: not acknowledged
                time.sleep(0.05)
                continue
            self.statuses[status] += 1
            if status == 200:
                self.acknowledged.append((client, seq))
            elif status == 503:
                if response.getheader("Retry-After") is None:
                    self.retry_after_missing += 1
                time.sleep(0.05)


class GatewayTests(unittest.TestCase):
    """Two gateways on one database."""

    skip = SKIP

    def setUp(self) -> None:
        self.server = pgserver.shared_server()
        self.db = self.server.create_database()
        self.url = self.server.url(self.db)

    def test_concurrent_uploads_with_new_columns(self) -> None:
        """Two gateways add the same new columns at the same moments: every upload succeeds, every row is there, either gateway shows all."""
        a, b = Daemon(self, self.url), Daemon(self, self.url)
        load = UploadLoad([a, b], clients=6, columns=12).start()
        time.sleep(4)
        load.finish()
        self.assertEqual(set(load.statuses), {200}, (load.statuses, a.log()[-3000:], b.log()[-3000:]))
        stored = database_rows(self.server, self.db, "SELECT client, seq FROM data")
        self.assertEqual(sorted(stored), sorted(load.acknowledged))
        columns = {name for (name,) in database_rows(
            self.server, self.db, "SELECT column_name FROM information_schema.columns WHERE table_name = 'data'")}
        self.assertTrue({"new_{}".format(k) for k in range(12)} <= columns)
        status, body, _ = b.request("GET", "/download?format=json&cols=gw")
        self.assertEqual(status, 200)
        self.assertEqual({row["gw"] for row in json.loads(body)}, {0, 1})  # gateway b shows a's rows too

    def test_replayed_to_the_other_gateway_is_refused(self) -> None:
        """An upload with an idempotency key accepted by gateway A is a repeat at gateway B: stored once."""
        a, b = Daemon(self, self.url), Daemon(self, self.url)
        body = json.dumps({"co2": [400]}).encode()
        headers = {"Content-Type": "application/json", "Idempotency-Key": "k-1"}
        first = a.request("POST", "/upload", body, headers)
        again = b.request("POST", "/upload", body, headers)
        self.assertEqual((first[0], again[0]), (200, 200), (first[1], again[1]))
        self.assertEqual(database_rows(self.server, self.db, "SELECT count(*) FROM data"), [(1,)])

    def test_kill_9_under_load(self) -> None:
        """A gateway killed with SIGKILL under load: every acknowledged row is in the database; the other gateway goes on."""
        a, b = Daemon(self, self.url), Daemon(self, self.url)
        load = UploadLoad([a, b], clients=6).start()
        time.sleep(2)
        a.process.send_signal(signal.SIGKILL)
        a.process.wait(10)
        time.sleep(1)
        load.finish()
        stored = set(database_rows(self.server, self.db, "SELECT client, seq FROM data"))
        self.assertTrue(set(load.acknowledged) <= stored, set(load.acknowledged) - stored)
        self.assertEqual(len(stored), len(database_rows(self.server, self.db, "SELECT client, seq FROM data")))
        self.assertEqual(b.upload({"after": [1]})[0], 200)
        self.assertNotIn(500, load.statuses)


class RestartTests(unittest.TestCase):
    """PostgreSQL restarted under load (a server of its own)."""

    skip = SKIP

    def test_postgres_restarted_under_load(self) -> None:
        """
        During the restart uploads get 503 with Retry-After (never a 500) and
        /health says PostgreSQL does not answer; afterwards the store has
        reconnected by itself, and every acknowledged row is stored.
        """
        server = pgserver.PostgresServer()
        self.addCleanup(server.destroy)
        server.start()
        db = server.create_database()
        daemon = Daemon(self, server.url(db), udp=True)
        udp_port = daemon.udp_port
        load = UploadLoad([daemon], clients=4).start()
        time.sleep(1.5)
        server.stop("fast")
        time.sleep(1.0)
        health_status, health, _ = daemon.request("GET", "/health")
        down_status = daemon.upload({"during": [1]})
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.sendto(b'{"udp": 1}', ("127.0.0.1", udp_port))
        sender.close()
        time.sleep(0.5)
        server.start()
        time.sleep(2.0)
        load.finish()
        self.assertEqual(health_status, 503, health)
        self.assertIn("PostgreSQL", json.loads(health)["reasons"][0])
        self.assertEqual(down_status[0], 503)
        self.assertIsNotNone(down_status[2].getheader("Retry-After"))
        self.assertNotIn(500, load.statuses)
        self.assertEqual(load.retry_after_missing, 0)
        self.assertGreater(load.statuses[503], 0)
        after = daemon.upload({"after": [1]})
        self.assertEqual(after[0], 200, after[1])
        stored = set(server.execute("SELECT client, seq FROM data WHERE client IS NOT NULL", dbname=db))
        self.assertTrue(set(load.acknowledged) <= stored, set(load.acknowledged) - stored)
        metrics = daemon.request("GET", "/metrics")[1].decode()
        self.assertIn('co2logd_rejects_total{reason="store",transport="udp"} 1.0', metrics)
        self.assertNotIn("Traceback", daemon.log())


class SharedOutboxTests(unittest.TestCase):
    """Two gateways (two service trees, each its own pool and uploader) drain one outbox into the fake OpenSenseMap."""

    skip = SKIP

    @defer.inlineCallbacks
    def test_each_entry_delivered_exactly_once(self):
        """Uploads to both gateways for six boxes: every measurement reaches the OpenSenseMap once, the outbox ends empty."""
        import treq

        from co2logd.service import build_service
        from co2logd.testing import FakeOpenSenseMap, listen_fake_opensensemap
        from tests.helpers import make_settings

        server = pgserver.shared_server()
        db = server.create_database()
        api = FakeOpenSenseMap(reactor)
        api.add_user("lab@example.org", "secret")
        fake = listen_fake_opensensemap(api, reactor)
        self.addCleanup(fake.stop)
        settings = make_settings(
            DB=server.url(db), OSEM_UPLOAD=True, OSEM_API=fake.url, OSEM_EMAIL="lab@example.org", OSEM_PASSWORD="secret",
            OSEM_AUTH_CACHE=False, OSEM_REQUEST_CACHE=False, OSEM_POLL_SECONDS=0.05,
            OSEM_REQUESTS_PER_MINUTE=60000.0, OSEM_REQUEST_BURST=1000, DEFAULT_LAT=lambda box: 48.5,
            DEFAULT_LON=lambda box: 9.05,
        )
        ports = []
        for _ in range(2):
            daemon = build_service(settings, reactor, http=["tcp:0:interface=127.0.0.1"])
            daemon.privilegedStartService()
            daemon.startService()
            self.addCleanup(daemon.stopService)
            ports.append(http_port_of(daemon))
        sent = 0
        for i in range(60):
            box = "box{}".format(i % 6)
            body = json.dumps({"scd30_co2_ppm": [1000 * i + k for k in range(5)], "box": [box] * 5}).encode()
            response = yield treq.post(
                "http://127.0.0.1:{}/upload".format(ports[i % 2]), data=body,
                headers={"Content-Type": "application/json"}, persistent=False,
            )
            self.assertEqual(response.code, 200, (yield treq.content(response)))
            yield treq.content(response)
            sent += 5
        for _ in range(600):
            if len(api.measurements) >= sent:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        yield task.deferLater(reactor, 0.5, lambda: None)  # a duplicate would arrive now
        values = sorted(float(m["value"]) for m in api.measurements)
        self.assertEqual(len(values), sent)
        self.assertEqual(len(set(values)), sent)
        self.assertEqual(len(api.boxes), 6)
        depth = yield threads.deferToThread(server.execute, "SELECT count(*) FROM co2logd_osem_outbox", db)
        self.assertEqual(depth, [(0,)])
