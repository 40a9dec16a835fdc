"""
/health sees the disk, and nothing is acknowledged into a lost file (issue 12, finding 10).

Through real ports on real SQLite files: the heartbeat's committed write, an
unwritable ``-wal`` (``chattr +i``: these tests run as root, where ``chmod``
stops nothing), a full database (``PRAGMA max_page_count`` on the writer's
connection stands in for a full disk), too little free space, and database
files deleted or replaced under the running daemon, a ``python -m co2logd``
process for the case a restart must show.
"""

from __future__ import annotations

import glob
import http.client
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Tuple

import treq
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from co2logd.store.watch import file_id, is_disk_error
from co2logd.service import build_service
from tests import helpers
from tests.helpers import REPO, make_settings, rows_in

HEARTBEAT = 0.1


def chattr_works(directory: str) -> bool:
    """Can this process set the immutable flag here (root on a file system that has it)?"""
    probe = os.path.join(directory, "chattr-probe")
    open(probe, "w").close()
    try:
        if shutil.which("chattr") is None:
            return False
        ok = subprocess.run(["chattr", "+i", probe], capture_output=True).returncode == 0
        subprocess.run(["chattr", "-i", probe], capture_output=True)
        return ok
    finally:
        os.unlink(probe)


class DaemonMixin:
    """The daemon as build_service wires it, HTTP on a real port, heartbeat every 0.1 s."""

    def start(self, **settings):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.db = os.path.join(directory, "co2.sqlite")
        self.settings = make_settings(DB=self.db, HEALTH_HEARTBEAT_SECONDS=HEARTBEAT, **settings)
        self.daemon = build_service(self.settings, reactor, http=["tcp:0:interface=127.0.0.1"])
        self.daemon.privilegedStartService()
        self.daemon.startService()
        self.addCleanup(self.daemon.stopService)
        self.store = self.daemon.getServiceNamed("store")
        self.url = "http://127.0.0.1:{}".format(helpers.http_port_of(self.daemon))

    @defer.inlineCallbacks
    def upload(self, n: int):
        """POST one row ``{"n": n}``; fire with (status, JSON reply)."""
        response = yield treq.post(
            self.url + "/upload", data=json.dumps({"n": [n]}).encode(), headers={"Content-Type": "application/json"},
            persistent=False,
        )
        body = yield treq.json_content(response)
        return response.code, body

    @defer.inlineCallbacks
    def health(self):
        """GET /health: (status, report)."""
        response = yield treq.get(self.url + "/health", persistent=False)
        body = yield treq.content(response)
        return response.code, json.loads(body)

    @defer.inlineCallbacks
    def health_becomes(self, status: int, seconds: float = 5.0):
        """Poll /health until it answers ``status``; fire with the report."""
        deadline = reactor.seconds() + seconds
        while True:
            code, report = yield self.health()
            if code == status or reactor.seconds() > deadline:
                self.assertEqual(code, status, report)
                return report
            yield task.deferLater(reactor, HEARTBEAT, lambda: None)


class HeartbeatTests(DaemonMixin, unittest.TestCase):
    """The heartbeat is a committed write on the writer's connection; its failures turn /health 503."""

    @defer.inlineCallbacks
    def test_heartbeat_reaches_the_file(self):
        """Another connection reads the heartbeat row the daemon committed, and it moves on."""
        self.start()
        for _ in range(100):
            status, report = yield self.health()
            if report["database"]["heartbeat_at"] is not None:
                break
            yield task.deferLater(reactor, HEARTBEAT / 2, lambda: None)
        self.assertEqual(status, 200, report)
        self.assertTrue(report["database"]["writable"])

        def beat_at():
            connection = sqlite3.connect(self.db)
            try:
                return connection.execute("SELECT beat_at FROM co2logd_heartbeat").fetchone()[0]
            finally:
                connection.close()

        first = beat_at()
        yield task.deferLater(reactor, 3 * HEARTBEAT, lambda: None)
        self.assertGreater(beat_at(), first)

    @defer.inlineCallbacks
    def test_unwritable_wal(self):
        """An immutable -wal (writes fail with EPERM) is a 503 naming the I/O error; writable again, 200."""
        if not chattr_works(os.path.dirname(os.path.abspath(self.mktemp()))):
            raise unittest.SkipTest("needs chattr +i (root on a file system with the immutable flag)")
        self.start()
        status, _ = yield self.upload(1)
        self.assertEqual(status, 200)
        wal = self.db + "-wal"
        subprocess.run(["chattr", "+i", wal], check=True)
        self.addCleanup(subprocess.run, ["chattr", "-i", wal])
        report = yield self.health_becomes(503)
        self.assertFalse(report["database"]["writable"])
        self.assertIn("heartbeat write failed: disk I/O error", report["reasons"][0])
        status, body = yield self.upload(2)
        self.assertEqual(status, 503, body)
        subprocess.run(["chattr", "-i", wal], check=True)
        yield self.health_becomes(200)
        status, _ = yield self.upload(3)
        self.assertEqual(status, 200)
        self.assertEqual([r["n"] for r in rows_in(self.db)], [1, 3])

    @defer.inlineCallbacks
    def test_full_database(self):
        """A full database (max_page_count reached) refuses the upload 503 and /health says so until uploads fit again."""
        self.start()
        status, _ = yield self.upload(1)
        self.assertEqual(status, 200)

        def fill_up(connection):
            pages = connection.execute("PRAGMA page_count").fetchone()[0]
            connection.execute("PRAGMA max_page_count = {}".format(pages))

        yield self.store.pool.runWithConnection(fill_up)
        payload = json.dumps({"n": [2] * 2000, "pad": ["x" * 100] * 2000}).encode()
        response = yield treq.post(self.url + "/upload", data=payload, headers={"Content-Type": "application/json"}, persistent=False)
        body = yield treq.json_content(response)
        self.assertEqual(response.code, 503, body)
        status, report = yield self.health()
        self.assertEqual(status, 503, report)
        self.assertIn("the last upload could not be written: database or disk is full", report["reasons"])
        yield self.store.pool.runWithConnection(lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        status, _ = yield self.upload(3)
        self.assertEqual(status, 200)
        status, report = yield self.health()
        self.assertEqual(status, 200, report)

    @defer.inlineCallbacks
    def test_low_free_space(self):
        """Less free space than HEALTH_MIN_FREE_MB on the database's file system is a 503."""
        self.start(HEALTH_MIN_FREE_MB=1e12)  # an exabyte: more than any disk here
        report = yield self.health_becomes(503)
        self.assertRegex(report["reasons"][0], r"only [0-9.]+ MB are free on the database's file system")
        self.assertIn("free_mb", report["database"])


class LostFileTests(DaemonMixin, unittest.TestCase):
    """Files deleted or replaced under the running daemon: 503s, and what was stored is rescued."""

    @defer.inlineCallbacks
    def test_replaced_database(self):
        """Another file moved over the database: uploads 503 at once, /health names it, the rows go to a rescued copy."""
        self.start()
        for n in range(5):
            status, _ = yield self.upload(n)
            self.assertEqual(status, 200)
        other = self.db + ".other"
        sqlite3.connect(other).close()
        os.replace(other, self.db)
        status, body = yield self.upload(99)
        self.assertEqual(status, 503, body)
        self.assertEqual(body["reason"], "database")
        self.assertIn("was replaced while co2logd had it open", body["error"])
        report = yield self.health_becomes(503)
        self.assertIn("database file {} was replaced".format(self.db), report["reasons"][0])
        (rescued,) = glob.glob(self.db + ".rescued-*")
        self.assertIn(rescued, report["reasons"][0])
        self.assertEqual([r["n"] for r in rows_in(rescued)], [0, 1, 2, 3, 4])
        status, _ = yield self.upload(100)
        self.assertEqual(status, 503)

    @defer.inlineCallbacks
    def test_deleted_wal(self):
        """A deleted -wal: uploads 503, and its content is checkpointed into the database file, which keeps every acknowledged row."""
        self.start()
        for n in range(5):
            status, _ = yield self.upload(n)
            self.assertEqual(status, 200)
        os.unlink(self.db + "-wal")
        status, body = yield self.upload(99)
        self.assertEqual(status, 503, body)
        self.assertIn("checkpointed into {}".format(self.db), body["error"])
        report = yield self.health_becomes(503)
        self.assertIn("WAL file {}-wal was deleted".format(self.db), report["reasons"][0])
        yield self.daemon.stopService()
        self.assertEqual([r["n"] for r in rows_in(self.db)], [0, 1, 2, 3, 4])


def start_daemon(db: str, log_path: str) -> Tuple[subprocess.Popen, int]:
    """``python -m co2logd`` on ``db`` with a heartbeat every 0.1 s, on a port of its own; (process, port) once it listens."""
    config = db + ".cfg"
    with open(config, "w") as f:
        f.write("CO2LOGSERVER_HEALTH_HEARTBEAT_SECONDS = {}\n".format(HEARTBEAT))
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("CO2LOGSERVER_CONFIG", None)
    argv = [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", db, "--config", config]
    process, ports = helpers.start_daemon(argv, os.path.dirname(db), env, log_path)
    return process, ports["HTTP"]


def upload_loop(port: int, client: int, acknowledged: list, refused: list, stop: threading.Event) -> None:
    """Upload numbered rows until ``stop``; record every 200 and every 503."""
    seq = 0
    while not stop.is_set():
        seq += 1
        body = json.dumps({"client": [client], "seq": [seq]}).encode()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            connection.request("POST", "/upload", body, {"Content-Type": "application/json"})
            response = connection.getresponse()
            response.read()
        finally:
            connection.close()
        (acknowledged if response.status == 200 else refused).append((client, seq, response.status))
        time.sleep(0.005)


def delete_under_load(workdir: str):
    """Uploads from three clients while the database files are deleted; then a restart. Returns what it saw."""
    db = os.path.join(workdir, "co2.sqlite")
    log_path = os.path.join(workdir, "daemon.log")
    process, port = start_daemon(db, log_path)
    acknowledged: list = []
    refused: list = []
    stop = threading.Event()
    clients = [threading.Thread(target=upload_loop, args=(port, c, acknowledged, refused, stop)) for c in range(3)]
    try:
        for t in clients:
            t.start()
        time.sleep(1.0)
        before = len(acknowledged)
        for suffix in ("", "-wal", "-shm"):
            os.unlink(db + suffix)
        time.sleep(1.0)
        stop.set()
        for t in clients:
            t.join(15)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        connection.request("GET", "/health")
        response = connection.getresponse()
        health = (response.status, json.loads(response.read()))
        connection.close()
    finally:
        stop.set()
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    process, _ = start_daemon(db, log_path)
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    connection = sqlite3.connect(db)
    try:
        stored = set(connection.execute("SELECT client, seq FROM data").fetchall())
        integrity = connection.execute("PRAGMA integrity_check").fetchall()
    finally:
        connection.close()
    return before, acknowledged, refused, health, stored, integrity


class DeletedDatabaseTests(unittest.TestCase):
    """The attack of issue 12: the database files deleted under a running daemon lost 51 acknowledged uploads."""

    timeout = 90

    def test_deleted_under_load(self):
        """Deleted under load: uploads turn 503, /health 503, and after a restart every acknowledged row is there."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)

        def check(result):
            before, acknowledged, refused, (status, report), stored, integrity = result
            self.assertGreater(before, 10, "the load was too light to test anything")
            self.assertTrue(refused, "no upload was refused after the deletion")
            self.assertEqual({code for _, _, code in refused}, {503})
            self.assertEqual(status, 503, report)
            self.assertIn("was deleted while co2logd had it open", report["reasons"][0])
            self.assertEqual(integrity, [("ok",)])
            missing = [(c, s) for c, s, _ in acknowledged if (c, s) not in stored]
            self.assertEqual(missing, [], "acknowledged but not stored")

        return threads.deferToThread(delete_under_load, workdir).addCallback(check)


class PartsTests(unittest.TestCase):
    """The small parts: which errors count as disk errors, file identity."""

    def test_disk_errors(self):
        """Full, I/O and read-only errors are disk errors; a busy lock or bad SQL is not."""
        connection = sqlite3.connect(":memory:")
        with self.assertRaises(sqlite3.Error) as bad_sql:
            connection.execute("SELECT * FROM nowhere")
        self.assertFalse(is_disk_error(bad_sql.exception))
        connection.execute("CREATE TABLE t (x)")
        connection.execute("PRAGMA query_only = 1")
        with self.assertRaises(sqlite3.Error) as read_only:
            connection.execute("INSERT INTO t VALUES (1)")
        self.assertTrue(is_disk_error(read_only.exception))
        self.assertFalse(is_disk_error(ValueError("x")))

    def test_file_id(self):
        """The same file keeps its identity; a replacement or a deletion changes it."""
        path = self.mktemp()
        open(path, "w").close()
        first = file_id(path)
        self.assertEqual(file_id(path), first)
        other = path + ".new"
        open(other, "w").close()
        os.replace(other, path)
        self.assertNotEqual(file_id(path), first)
        os.unlink(path)
        self.assertIsNone(file_id(path))
