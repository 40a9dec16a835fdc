"""
The UDP listener, end to end: real sockets on 127.0.0.1, the real ingest
service and a real SQLite store on a temp file.
"""

from __future__ import annotations

import json
import random

import msgpack
from twisted.internet import defer, reactor, task
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from co2logd.settings import Settings
from co2logd.transports.listener import RejectLog
from co2logd.transports.udp import UDPIngestProtocol, parse_udp_spec, udp_service
from tests.transport_behaviour import TransportBehaviourMixin, TransportHarness, md5_salted, outcome_of


class ParseUDPSpecTests(unittest.TestCase):
    """``--udp`` values."""

    def test_bare_port(self):
        """A bare number is a port on every interface."""
        self.assertEqual(parse_udp_spec("8125"), (8125, ""))

    def test_udp_prefix_and_interface(self):
        """``udp:PORT:interface=ADDR`` binds one interface."""
        self.assertEqual(parse_udp_spec("udp:8125"), (8125, ""))
        self.assertEqual(parse_udp_spec("udp:8125:interface=127.0.0.1"), (8125, "127.0.0.1"))

    def test_ipv6_interface(self):
        """An IPv6 interface needs no escaping, but escaped colons work too."""
        self.assertEqual(parse_udp_spec("udp:8125:interface=::1"), (8125, "::1"))
        self.assertEqual(parse_udp_spec("udp:8125:interface=\\:\\:1"), (8125, "::1"))

    def test_bad_values_raise_one_sentence(self):
        """Anything else is a ValueError naming the accepted forms."""
        for bad in ["", "udp:", "tcp:80", "udp:http", "70000", "udp:80:bind=1.2.3.4", "udp:80:interface="]:
            with self.assertRaises(ValueError) as caught:
                parse_udp_spec(bad)
            self.assertIn("--udp", str(caught.exception))


class Client(DatagramProtocol):
    """A sender on 127.0.0.1 that queues the acknowledgements it gets."""

    def __init__(self):
        self.replies = defer.DeferredQueue()

    def datagramReceived(self, datagram, addr):
        self.replies.put(datagram)


def frame(payload: bytes, headers=()) -> bytes:
    """A datagram: header lines, an empty line, the payload (no block without headers)."""
    if not headers:
        return payload
    block = b"".join("{}: {}\r\n".format(k, v).encode("latin-1") for k, v in headers)
    return block + b"\r\n" + payload


class UDPTestMixin:
    """Start a real listener on 127.0.0.1 and a real client socket."""

    settings_values = {"UDP_ACK": True}
    transport_label = "udp:127.0.0.1"

    def start_transport(self, ingest, settings):
        service = udp_service((0, "127.0.0.1"), ingest, reactor, settings)
        service.startService()
        self.addCleanup(service.stopService)
        self.service = service
        self.client = Client()
        port = reactor.listenUDP(0, self.client, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return defer.succeed(service)

    def send_datagram(self, datagram: bytes):
        """Send raw bytes; fire with the parsed acknowledgement."""
        self.client.transport.write(datagram, ("127.0.0.1", self.service.port))
        return self.client.replies.get().addTimeout(10, reactor).addCallback(json.loads)

    def send(self, payload, headers=()):
        return self.send_datagram(frame(payload, headers)).addCallback(
            lambda reply: outcome_of(json.dumps(reply))
        )


class UDPBehaviourTests(UDPTestMixin, TransportBehaviourMixin, unittest.TestCase):
    """The shared transport behaviour over UDP."""


class UDPTests(UDPTestMixin, TransportHarness, unittest.TestCase):
    """What only UDP does: binary bodies, datagram limits, acks, sequences, floods."""

    @defer.inlineCallbacks
    def test_csv_datagram_is_detected(self):
        """A CSV datagram (header line, rows) is detected without a Content-Type."""
        yield self.start()
        outcome = yield self.send(b"time_utc,co2\n43,1223\n23,2351\n")
        self.assertEqual(outcome, {"saved-in-db": 2})

    @defer.inlineCallbacks
    def test_msgpack_is_detected_and_declared(self):
        """msgpack maps are detected, and accepted with a declared content type."""
        yield self.start()
        body = msgpack.packb({"co2": [400, 410]})
        outcome = yield self.send(body)
        self.assertEqual(outcome, {"saved-in-db": 2})
        outcome = yield self.send(body, [("Content-Type", "application/x-msgpack")])
        self.assertEqual(outcome, {"saved-in-db": 2})

    @defer.inlineCallbacks
    def test_msgpack_with_salted_checksum_over_binary_body(self):
        """Auth covers the exact binary body after the header block."""
        yield self.start(CHECKSUM_SALTS=["s3cret"], UPLOAD_REQUIRES_AUTH=True)
        body = msgpack.packb({"co2": 1, "blob": "\r\n\r\n"})
        outcome = yield self.send(body, [("Content-MD5-Salted", md5_salted(body, "s3cret"))])
        self.assertEqual(outcome, {"saved-in-db": 1})

    @defer.inlineCallbacks
    def test_oversize_datagram_is_refused(self):
        """A datagram over UDP_MAX_DATAGRAM is a 413, counted for its sender."""
        yield self.start(UDP_MAX_DATAGRAM=100)
        reply = yield self.send_datagram(b'{"co2":[' + b"1," * 100 + b"1]}")
        self.assertEqual((reply["status"], reply["reason"]), (413, "too-large"))
        counters = self.service.stats()["sources"]["127.0.0.1"]
        self.assertEqual(counters, {"messages": 1, "rows": 0, "rejects": {"too-large": 1}})

    @defer.inlineCallbacks
    def test_unfinished_header_block_is_refused(self):
        """A header block without the empty line is a 400 naming the problem."""
        yield self.start()
        reply = yield self.send_datagram(b"Content-Type: application/json\r\n{\"co2\": 1}")
        self.assertEqual((reply["status"], reply["reason"]), (400, "header"))
        self.assertIn("empty line", reply["error"])

    @defer.inlineCallbacks
    def test_empty_header_block(self):
        """A datagram starting with an empty line has an empty header block."""
        yield self.start()
        reply = yield self.send_datagram(b'\n{"co2": 1}')
        self.assertEqual(reply, {"saved-in-db": 1})

    @defer.inlineCallbacks
    def test_counters_per_source(self):
        """Messages, rows and rejects by reason are counted per sender address."""
        yield self.start()
        yield self.send(b'{"co2":[1,2,3]}')
        yield self.send(b"not, a\nvalid csv\n")
        yield self.send(b'{"co2":[1]}', [("Content-Type", "text/html")])
        counters = self.service.stats()["sources"]["127.0.0.1"]
        self.assertEqual(counters, {"messages": 3, "rows": 3, "rejects": {"parse": 1, "content-type": 1}})

    @defer.inlineCallbacks
    def test_no_ack_by_default(self):
        """Without UDP_ACK the upload is stored and nothing is sent back."""
        yield self.start(UDP_ACK=False)
        outcomes = defer.DeferredQueue()
        self.service.protocol.observers.append(lambda addr, reply: outcomes.put(reply))
        self.client.transport.write(b'{"co2": 9}', ("127.0.0.1", self.service.port))
        outcome = yield outcomes.get().addTimeout(10, reactor)
        self.assertEqual(outcome, {"saved-in-db": 1})
        yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(len(self.client.replies.pending), 0)
        rows = yield self.rows()
        self.assertEqual(len(rows), 1)

    @defer.inlineCallbacks
    def test_sequence_numbers_suppress_duplicates_and_count_losses(self):
        """A retried number is acknowledged but not stored twice; gaps count as lost."""
        yield self.start(SEQUENCE_FIELD="seq")
        first = yield self.send_datagram(b'{"seq": 1, "co2": 500}')
        self.assertEqual(first, {"saved-in-db": 1, "seq": 1})
        retry = yield self.send_datagram(b'{"seq": 1, "co2": 500}')
        self.assertEqual(retry, {"saved-in-db": 0, "duplicate": True, "seq": 1})
        yield self.send_datagram(b'{"seq": 4, "co2": 501}')
        node = self.ingest.sequences.as_dict()["('udp:127.0.0.1', None)"]
        self.assertEqual((node["stored"], node["duplicates"], node["lost"], node["last"]), (2, 1, 2, 4))
        yield self.send_datagram(b'{"seq": 3, "co2": 502}')  # late, no longer lost
        node = self.ingest.sequences.as_dict()["('udp:127.0.0.1', None)"]
        self.assertEqual((node["stored"], node["lost"]), (3, 1))
        rows = yield self.rows()
        self.assertEqual([r[0] for r in rows], [500, 501, 502])

    @defer.inlineCallbacks
    def test_sequence_numbers_are_per_box(self):
        """Two boxes behind one address number their uploads independently."""
        yield self.start(SEQUENCE_FIELD="seq")
        a = yield self.send_datagram(b'{"seq": 1, "box": "a", "co2": 1}')
        b = yield self.send_datagram(b'{"seq": 1, "box": "b", "co2": 2}')
        self.assertEqual((a["saved-in-db"], b["saved-in-db"]), (1, 1))

    @defer.inlineCallbacks
    def test_a_failed_upload_may_be_retried_with_the_same_number(self):
        """A refused upload does not use up its sequence number."""
        yield self.start(SEQUENCE_FIELD="seq", CHECKSUM_SALTS=["s"], UPLOAD_REQUIRES_AUTH=True)
        body = b'{"seq": 7, "co2": 1}'
        refused = yield self.send_datagram(body)
        self.assertEqual((refused["reason"], refused["seq"]), ("auth-missing", 7))
        stored = yield self.send_datagram(frame(body, [("Content-MD5-Salted", md5_salted(body, "s"))]))
        self.assertEqual(stored, {"saved-in-db": 1, "seq": 7})

    @defer.inlineCallbacks
    def test_flood_of_random_datagrams_then_a_good_one_lands(self):
        """1,000+ random and malformed datagrams do not stop the listener."""
        yield self.start(UDP_ACK=False)
        outcomes = []
        good = defer.Deferred()

        def observe(addr, reply):
            outcomes.append(reply)
            if reply.get("saved-in-db") == 1 and not good.called:
                good.callback(reply)

        self.service.protocol.observers.append(observe)
        rng = random.Random(3)
        prefixes = [b"", b"Content-Type: text/csv\r\n\r\n", b"Content-MD5-Salted: zz\n\n", b"\n",
                    b"Content-Type: application/x-msgpack\n\n", b"X: y\r\n", b"{", b"\x81", b"a=1&"]
        for burst in range(25):
            for _ in range(48):
                body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 300)))
                self.client.transport.write(rng.choice(prefixes) + body, ("127.0.0.1", self.service.port))
            # let the listener read, so the kernel buffer never overflows
            yield task.deferLater(reactor, 0.01, lambda: None)
        self.client.transport.write(b'{"co2": 4242}', ("127.0.0.1", self.service.port))
        yield good.addTimeout(20, reactor)
        rows = yield self.rows()
        self.assertIn(4242, [r[0] for r in rows])
        counters = self.service.stats()["sources"]["127.0.0.1"]
        self.assertEqual(counters["messages"], 1201)
        yield self.service.protocol.idle()
        self.assertEqual(len(outcomes), 1201)
        self.assertEqual(sum(counters["rejects"].values()) + sum(1 for o in outcomes if "saved-in-db" in o), 1201)

    @defer.inlineCallbacks
    def test_port_in_use_raises_at_start(self):
        """A second listener on a bound port fails in startService, loudly."""
        yield self.start()
        other = udp_service((self.service.port, "127.0.0.1"), self.ingest, reactor, self.settings)
        self.assertRaises(CannotListenError, other.startService)
        self.assertFalse(other.running)

    @defer.inlineCallbacks
    def test_receive_buffer_is_enlarged(self):
        """UDP_RECEIVE_BUFFER is asked of the kernel, so bursts wait instead of being dropped."""
        import socket

        yield self.start(UDP_RECEIVE_BUFFER=100_000)
        granted = self.service.listening.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
        self.assertGreaterEqual(granted, 100_000)  # Linux grants twice the request, up to rmem_max

    @defer.inlineCallbacks
    def test_stop_waits_for_uploads_in_flight(self):
        """stopService fires only after pending uploads reached the database."""
        yield self.start(UDP_ACK=False)
        held = defer.Deferred()
        real = self.ingest.ingest
        self.ingest.ingest = lambda *a, **k: held.addCallback(lambda _: real(*a, **k))
        self.client.transport.write(b'{"co2": 1}', ("127.0.0.1", self.service.port))
        while self.service.protocol.pending == 0:
            yield task.deferLater(reactor, 0.01, lambda: None)
        stopped = self.service.stopService()
        self.assertNoResult(stopped)
        held.callback(None)
        yield stopped
        rows = yield self.rows()
        self.assertEqual(len(rows), 1)


class FakeIngest:
    """An ingest service that fails in ways the real one should not."""

    def __init__(self, error):
        self.error = error

    def ingest(self, upload):
        raise self.error


class UDPProtocolUnitTests(unittest.TestCase):
    """The protocol without sockets."""

    def test_an_ingest_bug_does_not_stop_the_listener(self):
        """An unexpected exception is logged, counted as internal and answered."""
        settings = Settings.from_values({"UDP_ACK": True})
        protocol = UDPIngestProtocol(FakeIngest(RuntimeError("boom")), settings, task.Clock())
        sent = []
        protocol.transport = type("T", (), {"write": lambda self, data, addr: sent.append(data)})()
        protocol.datagramReceived(b'{"co2": 1}', ("10.0.0.1", 5))
        protocol.datagramReceived(b'{"co2": 1}', ("10.0.0.1", 5))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 2)
        self.assertEqual(json.loads(sent[0])["reason"], "internal")
        self.assertEqual(protocol.counters.source("10.0.0.1").rejects["internal"], 2)
        self.assertEqual(protocol.pending, 0)

    def test_busy_when_too_many_uploads_wait(self):
        """Past UDP_MAX_PENDING, datagrams are refused as busy instead of queueing."""
        settings = Settings.from_values({"UDP_MAX_PENDING": 2})

        class Slow:
            def ingest(self, *args, **kwargs):
                return defer.Deferred()

        protocol = UDPIngestProtocol(Slow(), settings, task.Clock())
        for _ in range(3):
            protocol.datagramReceived(b'{"co2": 1}', ("10.0.0.2", 5))
        self.assertEqual(protocol.pending, 2)
        self.assertEqual(protocol.counters.source("10.0.0.2").rejects["busy"], 1)


class RejectLogTests(unittest.TestCase):
    """Reject log lines are rate-limited per source and reason."""

    def test_one_line_per_interval_with_the_count_left_out(self):
        """Within the interval repeats are counted, then reported with the next line."""
        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock = task.Clock()
        from co2logd.transports import udp

        reject_log = RejectLog(udp.log, clock, 60)
        logged = [reject_log.reject("10.0.0.1", "parse", "bad", "udp") for _ in range(5)]
        self.assertEqual(logged, [True, False, False, False, False])
        self.assertTrue(reject_log.reject("10.0.0.2", "parse", "bad", "udp"))
        self.assertTrue(reject_log.reject("10.0.0.1", "auth-missing", "no", "udp"))
        clock.advance(60)
        self.assertTrue(reject_log.reject("10.0.0.1", "parse", "bad", "udp"))
        mine = [e for e in events if e.get("source") == "10.0.0.1" and e.get("reason") == "parse"]
        self.assertEqual([e["suppressed"] for e in mine], [0, 4])
