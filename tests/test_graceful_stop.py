"""
Graceful stop (issue 12, finding 11): on SIGTERM co2logd stops accepting,
lets HTTP uploads in flight finish with their receipts (for at most
``SHUTDOWN_GRACE_SECONDS``), and closes the database last.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Tuple

from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from co2logd.service import build_service
from tests import helpers
from tests.helpers import README_JSON, REPO, http_ports_of, make_settings, rows_in

TIMEOUT = 60


def start_daemon(cwd: str, grace: float) -> Tuple[subprocess.Popen, int, str]:
    """python -m co2logd on a port of its own with the given SHUTDOWN_GRACE_SECONDS; (process, port, log path) once it listens."""
    with open(os.path.join(cwd, "config.py"), "w") as f:
        f.write("CO2LOGD_SHUTDOWN_GRACE_SECONDS = {}\n".format(grace))
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("CO2LOGSERVER_CONFIG", None)
    log_path = cwd + ".output"
    argv = [sys.executable, "-m", "co2logd", "--config", "config.py", "--http", "tcp:0:interface=127.0.0.1"]
    process, ports = helpers.start_daemon(argv, cwd, env, log_path)
    return process, ports["HTTP"], log_path


def request_head(body: bytes) -> bytes:
    """The request line and headers of a JSON upload of ``body``."""
    return (
        b"POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n"
    )


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes (or 20 s pass)."""
    sock.settimeout(20)
    chunks = []
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    except (socket.timeout, ConnectionResetError):
        pass
    return b"".join(chunks)


def response_body(reply: bytes) -> bytes:
    """The body of a raw HTTP/1.1 response, chunked or not."""
    head, _, body = reply.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return body
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out


class GracefulStopProcessTests(unittest.TestCase):
    """SIGTERM to a running python -m co2logd with uploads in flight."""

    def upload_across_sigterm(self, cwd: str) -> dict:
        """Send half an upload, SIGTERM the daemon, send the rest; what the client and the process saw."""
        process, port, log_path = start_daemon(cwd, grace=10)
        out: dict = {}
        try:
            idle = socket.create_connection(("127.0.0.1", port), timeout=10)  # a keep-alive client, idle
            busy = socket.create_connection(("127.0.0.1", port), timeout=10)
            busy.sendall(request_head(README_JSON) + README_JSON[:10])
            time.sleep(0.5)  # the daemon has read the first half
            process.send_signal(signal.SIGTERM)
            out["idle_closed"] = read_all(idle)  # closed at once, without an answer
            time.sleep(0.5)
            out["refused"] = self.try_connect(port)
            busy.sendall(README_JSON[10:])
            out["reply"] = read_all(busy)
            out["code"] = process.wait(timeout=TIMEOUT)
            idle.close()
            busy.close()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=TIMEOUT)
            out["output"] = helpers.read_from(log_path)
        return out

    @staticmethod
    def try_connect(port: int) -> bool:
        """True when a new connection is accepted (it must not be: the listener is closed)."""
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            return True
        except OSError:
            return False

    @defer.inlineCallbacks
    def test_upload_in_flight_gets_its_receipt(self):
        """The upload whose body was still arriving at SIGTERM is stored and answered 200 with its receipt."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        out = yield threads.deferToThread(self.upload_across_sigterm, cwd)
        reply = out["reply"]
        self.assertTrue(reply.startswith(b"HTTP/1.1 200 "), (reply, out["output"]))
        self.assertIn(b"connection: close", reply.partition(b"\r\n\r\n")[0].lower())
        self.assertEqual(json.loads(response_body(reply)), {"saved-in-db": 2})
        self.assertEqual(out["idle_closed"], b"")
        self.assertFalse(out["refused"])
        self.assertIn(out["code"], (0, -signal.SIGTERM), out["output"])
        # it stopped once the upload was answered, before the grace period (10 s) ran out
        self.assertNotIn("still busy after", out["output"])
        self.assertEqual([r["co2"] for r in rows_in(os.path.join(cwd, "co2.sqlite"))], [1223, 2351])
        self.assertIn("letting 1 HTTP requests in flight finish", out["output"])
        self.assertNotIn("Traceback", out["output"])

    def stuck_client(self, cwd: str) -> dict:
        """A client that never sends the rest of its body: cut after the grace period."""
        process, port, log_path = start_daemon(cwd, grace=1)
        out: dict = {}
        try:
            stuck = socket.create_connection(("127.0.0.1", port), timeout=10)
            stuck.sendall(request_head(README_JSON) + README_JSON[:10])
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            out["code"] = process.wait(timeout=TIMEOUT)
            out["reply"] = read_all(stuck)
            stuck.close()
        finally:
            if process.poll() is None:
                process.kill()
            process.wait(timeout=TIMEOUT)
            out["output"] = helpers.read_from(log_path)
        return out

    @defer.inlineCallbacks
    def test_grace_is_bounded(self):
        """A request that never completes holds the stop for SHUTDOWN_GRACE_SECONDS, no longer."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        out = yield threads.deferToThread(self.stuck_client, cwd)
        self.assertIn(out["code"], (0, -signal.SIGTERM), out["output"])
        self.assertEqual(out["reply"], b"")
        self.assertIn("aborting 1 HTTP connections still busy after 1 s", out["output"])
        self.assertEqual(rows_in(os.path.join(cwd, "co2.sqlite")), [])


class DrainTests(unittest.TestCase):
    """The site's drain on a real loopback port, in process."""

    @defer.inlineCallbacks
    def test_new_connections_while_draining_get_503(self):
        """While an upload finishes, a second HTTP listener's new connection is answered 503 shutting-down."""
        settings = make_settings(DB=self.mktemp(), SHUTDOWN_GRACE_SECONDS=10)
        # two listeners on ports of their own (the backlog only makes the two descriptions differ)
        daemon = build_service(
            settings, reactor, http=["tcp:0:interface=127.0.0.1", "tcp:0:interface=127.0.0.1:backlog=50"]
        )
        daemon.bind()
        daemon.privilegedStartService()
        daemon.startService()
        first, _ = http_ports_of(daemon)
        busy = yield threads.deferToThread(socket.create_connection, ("127.0.0.1", first), 10)
        self.addCleanup(busy.close)
        busy.sendall(request_head(README_JSON) + README_JSON[:5])
        yield task.deferLater(reactor, 0.2, lambda: None)
        stopped = daemon.stopService()
        yield task.deferLater(reactor, 0.1, lambda: None)
        self.assertFalse(stopped.called)  # waiting for the upload in flight
        # the last-added listener stopped listening; the other one refuses politely while draining
        late = yield threads.deferToThread(socket.create_connection, ("127.0.0.1", first), 10)
        self.addCleanup(late.close)
        refusal = yield threads.deferToThread(read_all, late)
        self.assertTrue(refusal.startswith(b"HTTP/1.1 503 "), refusal)
        self.assertIn(b'"reason": "shutting-down"', refusal)
        busy.sendall(README_JSON[5:])
        reply = yield threads.deferToThread(read_all, busy)
        self.assertEqual(json.loads(response_body(reply)), {"saved-in-db": 2})
        yield stopped
        self.assertEqual(len(rows_in(settings.DB)), 2)
