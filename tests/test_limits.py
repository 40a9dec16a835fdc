"""
The HTTP limits of issue 7: concurrent connections, request deadlines
against slow-loris clients, idle keep-alive connections (in memory, on a
``MemoryReactorClock``), and the counting of every refusal (on a real
socket).
"""

from __future__ import annotations

import json
import socket
import time

from twisted.internet import defer, reactor, task, threads
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial import unittest

from co2logd.web.site import make_site
from tests.helpers import README_JSON, SiteMixin, StoreMixin, make_settings

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
    """The JSON body of a raw response, chunked or not."""
    head, _, body = response.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return json.loads(body)
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return json.loads(out)


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


class MemorySiteMixin(StoreMixin):
    """
    The site with small HTTP limits, its deadlines on a ``MemoryReactorClock``
    and its clients in memory (``StringTransport``); the store is real.
    """

    def start(self, **values):
        self.reactor = MemoryReactorClock()
        self.make_ingest(make_settings(**values), clock=self.reactor)
        self.site = make_site(self.settings, self.ingest, self.store, self.reactor)
        self.clients = 0

    def connect(self):
        """A new client connection: (protocol, transport); the transport records what the server sent."""
        self.clients += 1
        peer = IPv4Address("TCP", "127.0.0.1", 40000 + self.clients)
        protocol = self.site.buildProtocol(peer)
        transport = StringTransport(peerAddress=peer, hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        protocol.makeConnection(transport)
        self.addCleanup(self.close, protocol, transport)
        return protocol, transport

    @staticmethod
    def close(protocol, transport):
        """The client goes away (if the server did not close the connection already)."""
        if not transport.connected:
            return
        transport.connected = False
        protocol.connectionLost(Failure(ConnectionDone()))

    def trickle(self, protocol, data: bytes, seconds: float, every: float = 0.125) -> bytes:
        """
        Send ``data`` a byte every ``every`` seconds of the clock for
        ``seconds`` (the first byte at once); return what was not sent.
        Steps of 1/8 s add up exactly.
        """
        steps = int(seconds / every)
        for byte in data[:steps]:
            protocol.dataReceived(bytes([byte]))
            self.reactor.advance(every)
        return data[steps:]

    @defer.inlineCallbacks
    def answered(self, transport, timeout: float = 10.0):
        """Fires with the response once the server wrote a whole one (the store answers on its own thread)."""
        deadline = time.monotonic() + timeout
        while not read_whole(transport.value()):
            if time.monotonic() > deadline:
                self.fail("no whole response within {} s: {!r}".format(timeout, transport.value()))
            yield task.deferLater(reactor, 0.005, lambda: None)
        return transport.value()

    def rejects(self, reason):
        return self.ingest.counters["rejects"][("http", reason)]


def read_whole(data: bytes) -> bool:
    """True when ``data`` holds a whole response (by Content-Length or the last chunk)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    if b"transfer-encoding: chunked" in head.lower():
        return body.endswith(b"0\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":")[1])
    return False


class SlowLorisTests(MemorySiteMixin, unittest.TestCase):
    """A client that trickles its request is cut off at HTTP_REQUEST_TIMEOUT, whatever it does."""

    @defer.inlineCallbacks
    def test_trickled_headers_get_408_and_the_server_keeps_serving(self):
        """One header byte every 1/8 s resets no clock: 408 at one second, not before; others served meanwhile."""
        self.start(HTTP_REQUEST_TIMEOUT=1, HTTP_IDLE_TIMEOUT=30)
        slow, slow_transport = self.connect()
        rest = self.trickle(slow, UPLOAD[:-len(README_JSON) - 4], 0.5)  # headers, never their end
        # the server answers others while the slow client trickles
        other, other_transport = self.connect()
        other.dataReceived(UPLOAD)
        response = yield self.answered(other_transport)
        self.assertEqual((status_of(response), body_of(response)), (200, {"saved-in-db": 2}))
        rest = self.trickle(slow, rest, 0.375)
        slow.dataReceived(rest[:1])
        self.reactor.advance(0.0625)
        self.assertEqual((slow_transport.value(), slow_transport.disconnecting), (b"", False))
        self.reactor.advance(0.0625)
        response = slow_transport.value()
        self.assertEqual(status_of(response), 408, response)
        self.assertIn("HTTP_REQUEST_TIMEOUT", body_of(response)["error"])
        self.assertTrue(slow_transport.disconnecting)
        self.assertEqual(self.rejects("request-timeout"), 1)

    def test_trickled_body_gets_408(self):
        """Headers in time, then the body a byte every 1/8 s: 408 at the deadline, nothing stored."""
        self.start(HTTP_REQUEST_TIMEOUT=1)
        protocol, transport = self.connect()
        head, _, body = UPLOAD.partition(b"\r\n\r\n")
        protocol.dataReceived(head + b"\r\n\r\n")
        self.trickle(protocol, body[:-1], 0.875)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(0.125)
        self.assertEqual(status_of(transport.value()), 408, transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.rejects("request-timeout"), 1)
        self.assertEqual(self.ingest.counters["uploads"]["http"], 0)

    def test_silent_connection_is_closed(self):
        """A client that connects and says nothing holds its place until the deadline, not beyond."""
        self.start(HTTP_REQUEST_TIMEOUT=0.5, HTTP_IDLE_TIMEOUT=30)
        _, transport = self.connect()
        self.reactor.advance(0.49)
        self.assertEqual((transport.value(), transport.disconnecting), (b"", False))
        self.reactor.advance(0.01)
        self.assertEqual(status_of(transport.value()), 408, transport.value())
        self.assertTrue(transport.disconnecting)

    @defer.inlineCallbacks
    def test_keep_alive_pause_is_not_a_slow_request(self):
        """Between requests the idle timeout applies: a pause longer than the request deadline is fine."""
        self.start(HTTP_REQUEST_TIMEOUT=0.5, HTTP_IDLE_TIMEOUT=30)
        protocol, transport = self.connect()
        protocol.dataReceived(UPLOAD)
        first = yield self.answered(transport)
        transport.clear()
        self.reactor.advance(1.0)
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(UPLOAD)
        second = yield self.answered(transport)
        self.assertEqual((status_of(first), status_of(second)), (200, 200))
        self.assertEqual(self.rejects("request-timeout"), 0)

    @defer.inlineCallbacks
    def test_idle_keep_alive_connection_is_closed(self):
        """After a request, a connection idle for HTTP_IDLE_TIMEOUT is closed, not before."""
        self.start(HTTP_REQUEST_TIMEOUT=30, HTTP_IDLE_TIMEOUT=0.5)
        protocol, transport = self.connect()
        protocol.dataReceived(UPLOAD)
        response = yield self.answered(transport)
        self.assertEqual(status_of(response), 200)
        self.reactor.advance(0.49)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.01)
        self.assertTrue(transport.disconnecting)


class ConnectionLimitTests(MemorySiteMixin, unittest.TestCase):
    """HTTP_MAX_CONNECTIONS: one more is answered 503 and closed; a freed place is taken again."""

    @defer.inlineCallbacks
    def test_connections_beyond_the_bound_are_refused(self):
        """With a bound of 2, the third connection gets a JSON 503 with Retry-After, counted."""
        self.start(HTTP_MAX_CONNECTIONS=2, HTTP_REQUEST_TIMEOUT=30)
        holders = [self.connect(), self.connect()]
        self.assertEqual(self.site.open_connections, 2)
        _, third = self.connect()
        response = third.value()
        self.assertEqual(status_of(response), 503, response)
        self.assertIn(b"retry-after: 1", response.lower())
        self.assertIn("HTTP_MAX_CONNECTIONS", body_of(response)["error"])
        self.assertTrue(third.disconnecting)
        self.assertEqual(self.rejects("too-many-connections"), 1)
        self.close(*holders[0])
        self.assertEqual(self.site.open_connections, 1)
        fourth, transport = self.connect()
        fourth.dataReceived(UPLOAD)
        response = yield self.answered(transport)
        self.assertEqual(status_of(response), 200, response)


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
