"""
/download only as fast as the client reads (issue 12, finding 7).

A real client on a real port asks for a download of some megabytes and stops
reading (``transport.pauseProducing``, a small receive buffer; the server's
send buffer made small too, so the kernel holds little).  The server must
then hold about one chunk: its transport's buffer stays bounded, the
producer is paused and has read only a few chunks.  When the client reads
again the whole response arrives, the same bytes a fast client gets.  A
client that goes away stops the reading; one that stalls too long is cut off.
"""

from __future__ import annotations

import socket

import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from co2logd.store import WriteRequest
from co2logd.web.producer import RowProducer
from tests.helpers import SiteMixin, make_settings

ROWS = 40_000
CHUNK = 200


class SlowClient(protocol.Protocol):
    """Sends one HTTP/1.0 request (the body then ends with the connection), reads only when told."""

    def __init__(self, path: bytes):
        self.path = path
        self.received = bytearray()
        self.closed: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"GET " + self.path + b" HTTP/1.0\r\nHost: x\r\n\r\n")
        self.transport.pauseProducing()  # read nothing

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason) -> None:
        self.closed.callback(bytes(self.received))

    def body(self) -> bytes:
        return bytes(self.received).partition(b"\r\n\r\n")[2]


def buffered(transport) -> int:
    """Bytes the server's TCP transport holds for the client (Twisted's write buffer)."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class FlowControlTests(SiteMixin, unittest.TestCase):
    """A slow client costs the server about one chunk."""

    timeout = 120

    @defer.inlineCallbacks
    def start_with_rows(self, **settings):
        self.start_site(make_settings(DOWNLOAD_CHUNK_ROWS=CHUNK, MAX_LIMIT_OF_ROWS=ROWS, **settings))
        columns = ["co2", "temperature", "note"]
        rows = [[400 + i % 700, 20.5 + i % 10, "row {} of the download test".format(i)] for i in range(ROWS)]
        yield self.store.write(WriteRequest(columns, rows, {"co2": int, "temperature": float, "note": str}))
        # the server side of every connection, to look at its buffer
        self.channels = []
        build = self.site.buildProtocol

        def remember(addr):
            channel = build(addr)
            self.channels.append(channel)
            return channel

        self.site.buildProtocol = remember
        # the producers the downloads use, to see how far they read
        self.producers = []
        original = RowProducer.begin

        def begin(producer):
            self.producers.append(producer)
            return original(producer)

        self.patch(RowProducer, "begin", begin)

    @defer.inlineCallbacks
    def connect_slow(self, path: bytes):
        """A SlowClient with a 4 KiB receive buffer; its server channel's send buffer shrunk to 16 KiB."""
        known = len(self.channels)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", self.port.getHost().port))
        sock.setblocking(False)
        client = SlowClient(path)
        factory = protocol.Factory.forProtocol(lambda: client)
        reactor.adoptStreamConnection(sock.fileno(), socket.AF_INET, factory)
        sock.close()  # the reactor has its own copy
        self.addCleanup(lambda: client.transport.connected and client.transport.abortConnection())
        for _ in range(100):
            if len(self.channels) > known:
                break
            yield task.deferLater(reactor, 0.01, lambda: None)
        channel = self.channels[known]
        channel.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
        return client, channel

    @defer.inlineCallbacks
    def settle(self, channel, seconds: float = 1.0):
        """Wait until the server has stopped writing (its buffer no longer grows); fire with the buffer's size."""
        last = -1
        for _ in range(int(seconds / 0.05) * 10):
            yield task.deferLater(reactor, 0.05, lambda: None)
            now = buffered(channel.transport)
            if now == last and self.producers and not self.producers[-1].fetching:
                return now
            last = now
        return last

    @defer.inlineCallbacks
    def test_paused_client_holds_one_chunk(self):
        """A client that stops reading: the server buffers under 200 KiB of a multi-MB JSON download; resumed, the bytes are whole and the same as a fast client's."""
        yield self.start_with_rows()
        path = b"/download?format=json&number=" + str(ROWS).encode()
        client, channel = yield self.connect_slow(path)
        held = yield self.settle(channel)
        producer = self.producers[-1]
        self.assertTrue(producer.paused, "the producer was never paused")
        self.assertLess(held, 200_000, "the server buffers {} bytes for a client that reads nothing".format(held))
        self.assertLess(producer.chunks, ROWS // CHUNK // 4, "the server read ahead of the client")
        stored = yield self.store.write(WriteRequest(["co2"], [[1]], {}))  # the paused download's cursor does not block writes
        self.assertEqual(stored, 1)
        client.transport.resumeProducing()
        whole = yield client.closed
        fast = yield treq.get(self.url + path.decode(), persistent=False).addCallback(treq.content)
        self.assertGreater(len(fast), 3_000_000)
        self.assertEqual(whole.partition(b"\r\n\r\n")[2], fast)

    @defer.inlineCallbacks
    def test_every_format_is_the_same_slow_or_fast(self):
        """HTML and CSV (with paging) stream through the producer to the same bytes a fast client reads."""
        yield self.start_with_rows()
        for path in (b"/download?number=5000", b"/download?format=csv&number=3000&after=100&order_by=co2,desc"):
            client, channel = yield self.connect_slow(path)
            yield self.settle(channel, 0.5)
            client.transport.resumeProducing()
            whole = yield client.closed
            response = yield treq.get(self.url + path.decode(), persistent=False)
            fast = yield treq.content(response)
            self.assertEqual(whole.partition(b"\r\n\r\n")[2], fast, path)

    @defer.inlineCallbacks
    def test_client_gone_stops_reading(self):
        """A paused client that hangs up: the producer stops, reads no more chunks and closes the cursor."""
        yield self.start_with_rows()
        client, channel = yield self.connect_slow(b"/download?format=json&number=" + str(ROWS).encode())
        yield self.settle(channel)
        producer = self.producers[-1]
        client.transport.abortConnection()
        yield producer.done
        chunks = producer.chunks
        self.assertTrue(producer.stopped)
        self.assertIsNone(producer.stream.cursor)
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(producer.chunks, chunks)
        self.assertLess(chunks, ROWS // CHUNK // 4)

    @defer.inlineCallbacks
    def test_stalled_client_is_cut_off(self):
        """A client that reads nothing for HTTP_IDLE_TIMEOUT seconds is disconnected and its cursor closed."""
        yield self.start_with_rows(HTTP_IDLE_TIMEOUT=0.5)
        client, channel = yield self.connect_slow(b"/download?format=json&number=" + str(ROWS).encode())
        yield self.settle(channel)
        producer = self.producers[-1]
        yield producer.done
        for _ in range(100):
            if not channel.transport.connected:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertFalse(channel.transport.connected, "the server kept the stalled connection")
        client.transport.resumeProducing()  # the client reads what got through, then sees the connection closed
        received = yield client.closed
        self.assertTrue(producer.stopped)
        self.assertIsNone(producer.stream.cursor)
        self.assertFalse(received.endswith(b"\n]\n"), "the whole download arrived")

    @defer.inlineCallbacks
    def test_head_reads_no_rows(self):
        """HEAD /download answers the headers without reading the table."""
        yield self.start_with_rows()
        response = yield treq.request("HEAD", self.url + "/download?format=csv", persistent=False)
        yield treq.content(response)
        self.assertEqual(response.code, 200)
        self.assertEqual(response.headers.getRawHeaders("content-type"), ["text/csv; charset=utf-8"])
        self.assertEqual(self.producers[-1].chunks, 0)


class FakeStream:
    """Rows in chunks, each fetch a Deferred the test fires; counts fetches and closes."""

    def __init__(self, chunks):
        self.chunks = list(chunks)
        self.pending = []
        self.closes = 0

    def next_chunk(self):
        d = defer.Deferred()
        self.pending.append(d)
        return d

    def deliver(self):
        """Fire the fetch in flight with the next chunk (or the end)."""
        self.pending.pop(0).callback(self.chunks.pop(0) if self.chunks else [])

    def close(self):
        self.closes += 1
        return defer.succeed(None)


class FakeRequest:
    """What RowProducer uses of a Request: producer registration, write, finish, notifyFinish."""

    def __init__(self, method=b"GET", connected=True):
        self.method = method
        self.channel = object() if connected else None
        self.producer = None
        self.written = []
        self.finished = 0
        self._disconnected = not connected

    def registerProducer(self, producer, streaming):
        assert streaming and self.producer is None
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def write(self, data):
        self.written.append(data)

    def finish(self):
        self.finished += 1

    def notifyFinish(self):
        return defer.Deferred()

    def getClientAddress(self):
        return "127.0.0.1"


class RowProducerTests(unittest.TestCase):
    """RowProducer alone, on a FakeRequest and a Clock: one fetch at a time, none while paused."""

    def make(self, chunks, method=b"GET"):
        self.request = FakeRequest(method)
        self.stream = FakeStream(chunks)
        self.clock = task.Clock()
        self.producer = RowProducer(
            self.request, self.stream, b"[", lambda rows: b"".join(rows), lambda: b"]", clock=self.clock, stall_timeout=5
        )
        return self.producer.begin()

    def test_no_fetch_while_paused(self):
        """Paused, it fetches nothing more (the one in flight is written); resumed, it goes on to the end."""
        done = self.make([[b"a"], [b"b"], [b"c"]])
        self.assertEqual(len(self.stream.pending), 1)
        self.producer.pauseProducing()
        self.stream.deliver()
        self.assertEqual(self.stream.pending, [])
        self.producer.resumeProducing()
        self.stream.deliver()
        self.stream.deliver()
        self.stream.deliver()
        self.assertEqual(b"".join(self.request.written), b"[abc]")
        self.assertEqual(self.request.finished, 1)
        self.assertEqual(self.stream.closes, 1)
        self.assertIsNone(self.request.producer)
        self.successResultOf(done)

    def test_head(self):
        """HEAD: the start and the end, no fetch."""
        done = self.make([[b"a"]], method=b"HEAD")
        self.assertEqual((self.stream.pending, b"".join(self.request.written)), ([], b"[]"))
        self.successResultOf(done)

    def test_stop_while_fetching(self):
        """Stopped with a fetch in flight: its rows are dropped, nothing more is fetched, the cursor is closed once."""
        done = self.make([[b"a"], [b"b"]])
        self.producer.stopProducing()
        self.assertEqual(self.stream.closes, 0)
        self.stream.deliver()
        self.assertEqual(self.stream.pending, [])
        self.assertEqual(self.stream.closes, 1)
        self.assertEqual(b"".join(self.request.written), b"[")
        self.successResultOf(done)

    def test_gone_before_start(self):
        """A client that left before the rows started: nothing is fetched or written."""
        request = FakeRequest(connected=False)
        stream = FakeStream([[b"a"]])
        done = RowProducer(request, stream, b"[", lambda rows: b"", lambda: b"]").begin()
        self.successResultOf(done)
        self.assertEqual((stream.pending, stream.closes, request.written), ([], 1, []))

    def test_stall_timer(self):
        """Paused for stall_timeout seconds on the clock: stopped; resumed in time: not."""
        self.make([[b"a"]])
        self.producer.pauseProducing()
        self.clock.advance(4)
        self.producer.resumeProducing()
        self.clock.advance(10)
        self.assertFalse(self.producer.stopped)
        self.producer.pauseProducing()
        self.request.channel = type("Channel", (), {"transport": None})()
        self.clock.advance(5)
        self.assertTrue(self.producer.stopped)


class ChunkSizeTests(unittest.TestCase):
    """Rows per chunk: the setting, fewer for wide tables."""

    def test_chunk_rows(self):
        """DOWNLOAD_CHUNK_ROWS for narrow tables, at most DOWNLOAD_CHUNK_CELLS cells for wide ones, never 0."""
        from co2logd.web.download import DOWNLOAD_CHUNK_CELLS, chunk_rows

        self.assertEqual(chunk_rows(500, 8), 500)
        self.assertEqual(chunk_rows(500, 404), DOWNLOAD_CHUNK_CELLS // 404)
        self.assertEqual(chunk_rows(500, 10 * DOWNLOAD_CHUNK_CELLS), 1)
        self.assertEqual(chunk_rows(500, 0), 500)


class CooperativeFormattingTests(unittest.TestCase):
    """A chunk formatted in slices by a Cooperator on a Clock: the reactor gets turns between slices."""

    def make(self):
        self.request = FakeRequest()
        self.stream = FakeStream([[b"a", b"b", b"c", b"d", b"e"]])
        self.clock = task.Clock()
        cooperator = task.Cooperator(
            scheduler=lambda work: self.clock.callLater(1, work),  # a turn of the reactor: one advance(1)
            terminationPredicateFactory=lambda: lambda: True,  # one slice per turn
        )
        self.producer = RowProducer(
            self.request, self.stream, b"[", lambda rows: b"".join(rows), lambda: b"]", cooperator=cooperator, slice_rows=2
        )
        return self.producer.begin()

    def test_slices(self):
        """Five rows in slices of two: one slice per turn, then the next fetch, then the end."""
        done = self.make()
        self.stream.deliver()
        self.assertEqual(self.request.written, [b"["])
        self.clock.advance(1)
        self.assertEqual(self.request.written, [b"[", b"ab"])
        self.assertEqual(self.stream.pending, [])  # no fetch while the chunk is being written
        self.clock.advance(1)
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(b"".join(self.request.written), b"[abcde")
        self.stream.deliver()
        self.assertEqual(b"".join(self.request.written), b"[abcde]")
        self.successResultOf(done)

    def test_stop_between_slices(self):
        """The client goes away mid-chunk: the slices stop, the cursor is closed once."""
        done = self.make()
        self.stream.deliver()
        self.clock.advance(1)
        self.producer.stopProducing()
        self.clock.advance(1)
        self.clock.advance(1)
        self.assertEqual(self.request.written, [b"[", b"ab"])
        self.assertEqual((self.stream.pending, self.stream.closes), ([], 1))
        self.successResultOf(done)
