"""
The HTTP limits of issue 7 on a real socket: concurrent connections,
request deadlines against slow-loris clients, idle keep-alive connections,
and the counting of every refusal.  Every client here is bounded in time.
"""

from __future__ import annotations

import json
import socket
import time

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.helpers import README_JSON, SiteMixin, make_settings

UPLOAD = (
    b"POST /upload HTTP/1.1\r\nHost: co2logd\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(README_JSON)).encode() + b"\r\n\r\n" + README_JSON
)


def read_response(sock: socket.socket, deadline: float) -> bytes:
    """Read until the server closes or a whole response (by Content-Length) is in; bounded by ``deadline``."""
    data = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        head, sep, body = data.partition(b"\r\n\r\n")
        if sep and b"transfer-encoding: chunked" in head.lower() and body.endswith(b"0\r\n\r\n"):
            return data
        if sep:
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:") and len(body) >= int(line.split(b":")[1]):
                    return data
    return data


def status_of(response: bytes) -> int:
    """The status code of a raw response (0 for none)."""
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/1.1 ") else 0


def body_of(response: bytes):
    """The JSON body of a raw (not chunked) response."""
    return json.loads(response.partition(b"\r\n\r\n")[2])


def is_closed(sock: socket.socket, wait: float) -> bool:
    """True if the server closes the connection within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except ConnectionResetError:
        return True


class LimitsSiteMixin(SiteMixin):
    """A real site with small HTTP limits and a way to open raw client sockets."""

    def start(self, **values):
        url = self.start_site(make_settings(**values))
        self.port_number = self.port.getHost().port
        return url

    def connect(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port_number), timeout=10)
        self.addCleanup(sock.close)
        return sock

    def rejects(self, reason):
        return self.ingest.counters["rejects"][("http", reason)]


class SlowLorisTests(LimitsSiteMixin, unittest.TestCase):
    """A client that trickles its request is cut off at HTTP_REQUEST_TIMEOUT, whatever it does."""

    @defer.inlineCallbacks
    def test_trickled_headers_get_408_and_the_server_keeps_serving(self):
        """One header byte every 0.1 s resets no clock: 408 after about a second, others served meanwhile."""
        self.start(HTTP_REQUEST_TIMEOUT=1, HTTP_IDLE_TIMEOUT=30)
        sock = self.connect()

        def trickle():
            started = time.monotonic()
            for byte in UPLOAD[:-len(README_JSON) - 4]:  # headers only, never their end
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break  # the server closed on us: what we wait for
                sock.settimeout(0.1)
                try:
                    if sock.recv(65536, socket.MSG_PEEK):
                        break
                except socket.timeout:
                    pass
                if time.monotonic() - started > 8:
                    break
            response = read_response(sock, time.monotonic() + 5)
            return response, time.monotonic() - started

        trickling = threads.deferToThread(trickle)
        # the server answers others while the slow client trickles
        status, body = yield self.post(README_JSON, "application/json")
        self.assertEqual((status, body), (200, {"saved-in-db": 2}))
        response, seconds = yield trickling
        self.assertEqual(status_of(response), 408, response)
        self.assertIn("HTTP_REQUEST_TIMEOUT", body_of(response)["error"])
        self.assertTrue(0.9 < seconds < 4, seconds)
        closed = yield threads.deferToThread(is_closed, sock, 5)
        self.assertTrue(closed)
        self.assertEqual(self.rejects("request-timeout"), 1)

    @defer.inlineCallbacks
    def test_trickled_body_gets_408(self):
        """Headers in time, then the body a byte at a time: 408 too."""
        self.start(HTTP_REQUEST_TIMEOUT=1)
        sock = self.connect()

        def trickle_body():
            head, _, body = UPLOAD.partition(b"\r\n\r\n")
            sock.sendall(head + b"\r\n\r\n")
            started = time.monotonic()
            for byte in body[:-1]:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    break
                time.sleep(0.1)
                if time.monotonic() - started > 3:
                    break
            return read_response(sock, time.monotonic() + 5)

        response = yield threads.deferToThread(trickle_body)
        self.assertEqual(status_of(response), 408, response)
        self.assertEqual(self.rejects("request-timeout"), 1)
        self.assertEqual(self.ingest.counters["uploads"]["http"], 0)

    @defer.inlineCallbacks
    def test_silent_connection_is_closed(self):
        """A client that connects and says nothing holds no place for longer than the deadline."""
        self.start(HTTP_REQUEST_TIMEOUT=0.5, HTTP_IDLE_TIMEOUT=30)
        sock = self.connect()
        started = time.monotonic()
        response = yield threads.deferToThread(read_response, sock, started + 5)
        self.assertEqual(status_of(response), 408, response)
        self.assertLess(time.monotonic() - started, 3)

    @defer.inlineCallbacks
    def test_keep_alive_pause_is_not_a_slow_request(self):
        """Between requests the idle timeout applies: a pause longer than the request deadline is fine."""
        self.start(HTTP_REQUEST_TIMEOUT=0.5, HTTP_IDLE_TIMEOUT=30)
        sock = self.connect()

        def two_requests():
            sock.sendall(UPLOAD)
            first = read_response(sock, time.monotonic() + 5)
            time.sleep(1.0)
            sock.sendall(UPLOAD)
            second = read_response(sock, time.monotonic() + 5)
            return first, second

        first, second = yield threads.deferToThread(two_requests)
        self.assertEqual((status_of(first), status_of(second)), (200, 200))
        self.assertEqual(self.rejects("request-timeout"), 0)

    @defer.inlineCallbacks
    def test_idle_keep_alive_connection_is_closed(self):
        """After a request, a connection idle for HTTP_IDLE_TIMEOUT is closed."""
        self.start(HTTP_REQUEST_TIMEOUT=30, HTTP_IDLE_TIMEOUT=0.5)
        sock = self.connect()

        def request_then_idle():
            sock.sendall(UPLOAD)
            response = read_response(sock, time.monotonic() + 5)
            started = time.monotonic()
            return response, is_closed(sock, 5), time.monotonic() - started

        response, closed, seconds = yield threads.deferToThread(request_then_idle)
        self.assertEqual(status_of(response), 200)
        self.assertTrue(closed)
        self.assertLess(seconds, 3)


class ConnectionLimitTests(LimitsSiteMixin, unittest.TestCase):
    """HTTP_MAX_CONNECTIONS: one more is answered 503 and closed; a freed place is taken again."""

    @defer.inlineCallbacks
    def test_connections_beyond_the_bound_are_refused(self):
        """With a bound of 2, the third connection gets a JSON 503 with Retry-After, counted."""
        self.start(HTTP_MAX_CONNECTIONS=2, HTTP_REQUEST_TIMEOUT=30)
        holders = [self.connect(), self.connect()]
        yield self.wait_for(lambda: self.site.open_connections == 2)
        third = self.connect()
        response = yield threads.deferToThread(read_response, third, time.monotonic() + 5)
        self.assertEqual(status_of(response), 503, response)
        self.assertIn(b"retry-after: 1", response.lower())
        self.assertIn("HTTP_MAX_CONNECTIONS", body_of(response)["error"])
        self.assertEqual(self.rejects("too-many-connections"), 1)
        holders[0].close()
        yield self.wait_for(lambda: self.site.open_connections == 1)
        fourth = self.connect()

        def upload():
            fourth.sendall(UPLOAD)
            return read_response(fourth, time.monotonic() + 5)

        response = yield threads.deferToThread(upload)
        self.assertEqual(status_of(response), 200, response)

    @defer.inlineCallbacks
    def wait_for(self, condition, timeout=5.0):
        """Poll the reactor-side ``condition`` (bounded)."""
        from twisted.internet import reactor, task

        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                self.fail("condition not met within {} s".format(timeout))
            yield task.deferLater(reactor, 0.02, lambda: None)


class BodySizeCountTests(LimitsSiteMixin, unittest.TestCase):
    """MAX_BODY_SIZE: the early 413 is counted as an HTTP reject."""

    @defer.inlineCallbacks
    def test_oversized_content_length_is_counted(self):
        """A Content-Length above the limit: 413 before the body is read, counted as too-large."""
        self.start(MAX_BODY_SIZE=100)
        sock = self.connect()

        def send():
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            return read_response(sock, time.monotonic() + 5)

        response = yield threads.deferToThread(send)
        self.assertEqual(status_of(response), 413, response)
        self.assertIn("100 bytes", body_of(response)["error"])
        self.assertEqual(self.rejects("too-large"), 1)


class IngestLimitTests(LimitsSiteMixin, unittest.TestCase):
    """Every ingest limit: its status, its own reason, the setting named in the message, counted, nothing stored."""

    @defer.inlineCallbacks
    def test_each_limit(self):
        """Rows, new columns, total columns, column-name length and body size, over HTTP."""
        self.start(
            MAX_ROWS_PER_UPLOAD=3, MAX_NEW_COLUMNS_PER_UPLOAD=2, MAX_COLUMNS=7,
            MAX_COLUMN_NAME_LENGTH=8, MAX_BODY_SIZE=200,
        )
        status, _ = yield self.post(b'{"a": 1, "b": 2}', "application/json")
        self.assertEqual(status, 200)
        cases = [
            (b'{"a": [1, 2, 3, 4]}', 400, "too-many-rows", "MAX_ROWS_PER_UPLOAD"),
            (b'{"c": 1, "d": 2, "e": 3}', 400, "too-many-new-columns", "MAX_NEW_COLUMNS_PER_UPLOAD"),
            (b'{"c": 1, "d": 2}', 400, "too-many-columns", "MAX_COLUMNS"),
            (b'{"abcdefghi": 1}', 400, "bad-column", "MAX_COLUMN_NAME_LENGTH"),
            (b'{"a": [' + b"1," * 100 + b"1]}", 413, "too-large", "MAX_BODY_SIZE"),
        ]
        for body, expected_status, reason, setting in cases:
            status, reply = yield self.post(body, "application/json")
            self.assertEqual((status, reply.get("reason")), (expected_status, reason), body)
            self.assertIn(setting, reply["error"])
            self.assertEqual(self.rejects(reason), 1, reason)
        self.assertEqual(self.ingest.counters["rows"]["http"], 1)
        self.assertEqual(set(self.store.columns) & {"a", "b", "c", "d", "e", "abcdefghi"}, {"a", "b"})
