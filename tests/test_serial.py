"""
The serial listener, end to end on real pseudo-terminals (``os.openpty``),
with the real ingest service and a real SQLite store; the watchdog and the
backoff on ``task.Clock`` with the verified fake port.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from co2logd.settings import Settings
from co2logd.transports import serial as serial_module
from co2logd.transports.serial import (
    SerialDeviceError,
    SerialIngestProtocol,
    parse_serial_spec,
    serial_service,
)
from co2logd.transports.testing import FakeSerialDevices
from tests.transport_behaviour import TransportBehaviourMixin, TransportHarness, md5_salted


class ParseSerialSpecTests(unittest.TestCase):
    """``--serial`` values."""

    def test_device_with_and_without_baud(self):
        """The baud rate defaults to 9600."""
        self.assertEqual(parse_serial_spec("/dev/ttyACM0"), ("/dev/ttyACM0", 9600))
        self.assertEqual(parse_serial_spec("/dev/ttyUSB0:115200"), ("/dev/ttyUSB0", 115200))
        self.assertEqual(parse_serial_spec("COM3:57600"), ("COM3", 57600))

    def test_by_id_and_by_path_names_keep_their_colons(self):
        """Only a trailing ``:DIGITS`` is a baud rate."""
        by_id = "/dev/serial/by-id/usb-Arduino__www.arduino.cc__0043_75833353035351E0A1B1-if00"
        self.assertEqual(parse_serial_spec(by_id), (by_id, 9600))
        self.assertEqual(parse_serial_spec(by_id + ":19200"), (by_id, 19200))
        by_path = "/dev/serial/by-path/pci-0000:00:14.0-usb-0:1:1.0-port0"
        self.assertEqual(parse_serial_spec(by_path), (by_path, 9600))

    def test_an_existing_file_ending_in_digits_is_a_device(self):
        """A path that exists is taken whole, even when it ends in ``:DIGITS``."""
        directory = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, directory)
        path = os.path.join(directory, "usb-0:2")
        open(path, "w").close()
        self.addCleanup(os.remove, path)
        self.assertEqual(parse_serial_spec(path), (path, 9600))

    def test_bad_values(self):
        """An empty device or an impossible baud rate is a one-sentence ValueError."""
        for bad in ["", ":9600", "/dev/ttyS0:0", "/dev/ttyS0:99999999"]:
            with self.assertRaises(ValueError) as caught:
                parse_serial_spec(bad)
            self.assertIn("--serial", str(caught.exception))


class PtyMixin:
    """A real pty behind a symlink (as /dev/serial/by-id names are), and a listener on it."""

    settings_values: dict = {}

    def new_pty(self):
        """Open a pty pair and point the device symlink at its terminal side."""
        master, slave = os.openpty()
        name = os.ttyname(slave)
        if not hasattr(self, "fds"):
            # closed once each: a number closed twice may belong to the reactor by then
            self.fds = set()
            self.addCleanup(lambda: [self.close_fd(fd) for fd in list(self.fds)])
        self.fds.update((master, slave))
        if not hasattr(self, "link"):
            self.link = os.path.join(tempfile.mkdtemp(), "usb-Arduino_test-if00")
            self.addCleanup(os.rmdir, os.path.dirname(self.link))
            self.addCleanup(self._remove, self.link)
        tmp = self.link + ".new"
        os.symlink(name, tmp)
        os.replace(tmp, self.link)
        self.master = master
        return master, slave

    def close_fd(self, fd):
        """Close a pty descriptor of this test, once."""
        if fd in self.fds:
            self.fds.discard(fd)
            os.close(fd)

    @staticmethod
    def _remove(path):
        if os.path.lexists(path):
            os.remove(path)

    @property
    def transport_label(self):
        return "serial:" + self.link

    def start_transport(self, ingest, settings):
        master, slave = self.new_pty()
        service = serial_service(self.link, ingest, reactor, settings)
        service.reconnect_first_delay = 0.05
        service.startService()  # the port is open from here on: writing is safe now
        self.addCleanup(service.stopService)
        self.close_fd(slave)  # the listener holds its own descriptor
        self.service = service
        self.outcomes = defer.DeferredQueue()
        service.protocol.observers.append(lambda source, reply: self.outcomes.put((source, reply)))
        return defer.succeed(service)

    def write(self, data: bytes):
        """What the board prints."""
        os.write(self.master, data)

    def outcome(self):
        """The next upload's outcome (receipt or error)."""
        return self.outcomes.get().addTimeout(10, reactor).addCallback(lambda pair: pair[1])

    def send(self, payload, headers=()):
        block = b"".join("{}: {}\r\n".format(k, v).encode("latin-1") for k, v in headers)
        self.write(block + (b"\r\n" if headers else b"") + payload + b"\r\n")
        return self.outcome()


class SerialBehaviourTests(PtyMixin, TransportBehaviourMixin, unittest.TestCase):
    """The shared transport behaviour over a real pty."""


class SerialLineTests(PtyMixin, TransportHarness, unittest.TestCase):
    """The line formats, CSV mode, auth lines, gateways, long lines, comments."""

    @defer.inlineCallbacks
    def test_key_value_pairs_emontx_style(self):
        """``key:value,key:value`` (and with ``=``) lines are records."""
        yield self.start()
        self.write(b"ct1:100,ct2:-3, vrms:230.5,note:\r\n")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        self.write(b"ct1=7,ct2=8\n")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        rows = yield self.rows("ct1, ct2, vrms, note")
        self.assertEqual([r[:4] for r in rows], [(100, -3, 230.5, None), (7, 8, None, None)])

    @defer.inlineCallbacks
    def test_csv_header_then_rows_until_the_next_header(self):
        """A header line of names sets the columns for the rows that follow."""
        yield self.start()
        self.write(b"time_s,co2,temp\r\n1,400,20.5\r\n2, 410 ,21\r\n")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        self.write(b"co2,hum\n500,40\n")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        rows = yield self.store.pool.runQuery("SELECT time_s, co2, temp, hum FROM data ORDER BY rowid")
        self.assertEqual(rows, [(1, 400, 20.5, None), (2, 410, 21, None), (None, 500, None, 40)])

    @defer.inlineCallbacks
    def test_csv_row_with_the_wrong_number_of_cells(self):
        """A row that does not fit its header is refused; the next one lands."""
        yield self.start()
        self.write(b"time_s,co2\n1,2,3\n4,5\n")
        refused = yield self.outcome()
        self.assertEqual(refused["reason"], "csv-columns")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})

    @defer.inlineCallbacks
    def test_comments_and_human_text_are_counted_never_fatal(self):
        """``#`` lines are ignored and counted; other text is counted as unparseable."""
        yield self.start()
        self.write(b"# SCD30 warming up\r\n\r\nHello from the Arduino!\r\n\xff\xfe,\x00\r\n{\"co2\": 1}\r\n")
        self.assertEqual((yield self.outcome())["reason"], "unparseable")
        self.assertEqual((yield self.outcome())["reason"], "unparseable")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        stats = self.service.stats()
        self.assertEqual(stats["ignored"], {"comment": 1})
        self.assertEqual(stats["sources"][self.link]["rejects"], {"unparseable": 2})

    @defer.inlineCallbacks
    def test_lines_split_across_writes_and_bare_lf(self):
        """A line may arrive in pieces; ``\\n`` and ``\\r\\n`` both end it."""
        yield self.start()
        self.write(b'{"co2"')
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.write(b": 3}\n{\"co2\": 4}\r")
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.write(b"\n")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})

    @defer.inlineCallbacks
    def test_too_long_line_is_dropped_and_reading_goes_on(self):
        """A line over SERIAL_MAX_LINE is counted and dropped, not the port."""
        yield self.start(SERIAL_MAX_LINE=64)
        self.write(b'{"co2": [' + b"1," * 100 + b"1]}\n" + b'{"co2": 2}\n')
        self.assertEqual((yield self.outcome())["reason"], "too-long")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        self.write(b"x" * 200)
        yield task.deferLater(reactor, 0.05, lambda: None)
        self.write(b"y" * 200 + b"\n" + b'{"co2": 3}\n')
        self.assertEqual((yield self.outcome())["reason"], "too-long")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        rows = yield self.rows()
        self.assertEqual([r[0] for r in rows], [2, 3])

    @defer.inlineCallbacks
    def test_auth_header_lines_on_a_csv_row(self):
        """The checksum of the CSV header line and the row line as printed authenticates a CSV row."""
        yield self.start(CHECKSUM_SALTS=["psk"], UPLOAD_REQUIRES_AUTH=True)
        row = b"1,650"
        signed = md5_salted(b"time_s,co2\n" + row, "psk").encode()
        self.write(b"time_s,co2\r\nContent-MD5-Salted: " + signed + b"\r\n\r\n" + row + b"\r\n")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        self.write(b"Content-MD5-Salted: " + md5_salted(row, "nope").encode() + b"\r\n\r\n2,651\r\n")
        self.assertEqual((yield self.outcome())["reason"], "auth-invalid")
        self.write(b"3,652\r\n")
        self.assertEqual((yield self.outcome())["reason"], "auth-missing")
        rows = yield self.rows()
        self.assertEqual([r[0::2] for r in rows], [(650, "md5")])

    @defer.inlineCallbacks
    def test_auth_header_lines_on_key_value_pairs(self):
        """Checksums over a key:value line are honoured; headers apply to one line only."""
        yield self.start(CHECKSUM_SALTS=["psk"], UPLOAD_REQUIRES_AUTH=True)
        line = b"co2:700,temp:19.5"
        digest = hashlib.sha256(line + b"psk").hexdigest().encode()
        self.write(b"Content-SHA256-Salted: " + digest + b"\r\n" + line + b"\r\n")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        self.write(line + b"\r\n")
        self.assertEqual((yield self.outcome())["reason"], "auth-missing")

    @defer.inlineCallbacks
    def test_content_type_header_line(self):
        """A Content-Type line names the format of the next line."""
        yield self.start()
        self.write(b"Content-Type: text/html\r\n\r\n{\"co2\": 1}\r\n")
        self.assertEqual((yield self.outcome())["reason"], "content-type")

    @defer.inlineCallbacks
    def test_gateway_prefix_becomes_a_column_per_node(self):
        """``12 {...}`` / ``OK 13 ...``: the node id lands in ``box``, nodes stay apart."""
        yield self.start(SERIAL_GATEWAY_PATTERN=r"^(?:OK )?(?P<box>\d+) ")
        self.write(b'12 {"co2":640}\r\nOK 13 co2:700\r\n12 time_s,co2\r\n13 time_s,hum\r\n12 1,641\r\n13 1,55\r\n')
        for _ in range(4):
            self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        self.write(b"> gateway ready\r\n")
        refused = yield self.outcome()
        self.assertEqual(refused["reason"], "no-gateway-prefix")
        rows = yield self.store.pool.runQuery("SELECT box, co2, hum, transport FROM data ORDER BY rowid")
        self.assertEqual(
            [r[:3] for r in rows], [(12, 640, None), (13, 700, None), (12, 641, None), (13, None, 55)]
        )
        self.assertEqual({r[3] for r in rows}, {self.transport_label})
        sources = self.service.stats()["sources"]
        self.assertEqual(sources[self.link + " box=12"]["rows"], 2)

    @defer.inlineCallbacks
    def test_sequence_numbers_drop_retransmissions_per_node(self):
        """A gateway passing on a packet twice stores it once; nodes count separately."""
        yield self.start(SERIAL_GATEWAY_PATTERN=r"^(?P<box>\d+) ", SEQUENCE_FIELD="seq")
        self.write(b'12 {"seq":1,"co2":1}\n')
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1, "seq": 1})
        self.write(b'12 {"seq":1,"co2":1}\n')
        self.assertEqual((yield self.outcome()), {"saved-in-db": 0, "duplicate": True, "seq": 1})
        self.write(b'13 seq:1,co2:2\n')
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1, "seq": 1})
        self.write(b'12 seq=3,co2=3\n')
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1, "seq": 3})
        nodes = self.ingest.sequences.as_dict()
        self.assertEqual(nodes[str(("serial:" + self.link + " box=12", None))], {"last": 3, "stored": 2, "duplicates": 1, "lost": 1, "restarts": 0})
        rows = yield self.rows()
        self.assertEqual([r[0] for r in rows], [1, 2, 3])

    @defer.inlineCallbacks
    def test_device_vanishes_and_reappears_at_the_same_path(self):
        """Pty closed (unplugged): HTTP keeps serving; a new pty at the symlink is reopened."""
        import treq

        from co2logd.web.site import make_site

        yield self.start()
        site = make_site(self.settings, self.ingest, self.store, reactor)
        http = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(http.stopListening)
        self.write(b'{"co2": 1}\n')
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        self.close_fd(self.master)  # unplugged
        while self.service.port is not None:
            yield task.deferLater(reactor, 0.02, lambda: None)
        response = yield treq.post(
            "http://127.0.0.1:{}/upload".format(http.getHost().port),
            data=b'{"co2": 2}',
            headers={"Content-Type": "application/json"},
            persistent=False,
        )
        self.assertEqual(json.loads((yield response.content())), {"saved-in-db": 1})
        yield task.deferLater(reactor, 0.3, lambda: None)  # a few failed reopen attempts
        self.assertEqual(self.service.opened, 1)
        master, slave = self.new_pty()  # plugged in again, at the same by-id path
        while self.service.port is None:
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.close_fd(slave)
        self.assertEqual(self.service.opened, 2)
        self.write(b'{"co2": 3}\n')
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        rows = yield self.rows()
        self.assertEqual([(r[0], r[1]) for r in rows], [(1, self.transport_label), (2, "http"), (3, self.transport_label)])

    @defer.inlineCallbacks
    def test_missing_required_device_at_start_is_a_clear_error(self):
        """A required device that is not there fails startService with one line naming it."""
        yield self.start()
        service = serial_service(
            "/dev/does-not-exist-co2logd:115200", self.ingest, reactor, self.settings, required=True
        )
        with self.assertRaises(SerialDeviceError) as caught:
            service.startService()
        self.assertEqual(
            str(caught.exception), "cannot open serial device /dev/does-not-exist-co2logd: No such file or directory"
        )
        self.assertFalse(service.running)

    @defer.inlineCallbacks
    def test_device_missing_at_start_is_waited_for(self):
        """Not plugged in at start: the service runs, /health's reason names it, and it is read once it appears."""
        yield self.start()
        link = os.path.join(tempfile.mkdtemp(), "usb-late-if00")
        self.addCleanup(os.rmdir, os.path.dirname(link))
        self.addCleanup(self._remove, link)
        service = serial_service(link, self.ingest, reactor, self.settings)
        service.reconnect_first_delay = service._delay = 0.05
        service.startService()
        self.addCleanup(service.stopService)
        self.assertTrue(service.running)
        health = service.health()
        self.assertFalse(health["ok"])
        self.assertEqual(health["reason"], "serial {} is not connected (No such file or directory)".format(link))
        self.assertTrue(health["waiting"])
        master, slave = os.openpty()
        self.addCleanup(os.close, master)
        os.symlink(os.ttyname(slave), link)
        for _ in range(100):
            if service.port is not None:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        os.close(slave)
        self.assertTrue(service.health()["ok"])
        outcomes = defer.DeferredQueue()
        service.protocol.observers.append(lambda source, reply: outcomes.put(reply))
        os.write(master, b'{"co2": 7}\n')
        reply = yield outcomes.get().addTimeout(10, reactor)
        self.assertEqual(reply, {"saved-in-db": 1})


class RecordingIngest:
    """Records uploads; every one is stored as one row."""

    def __init__(self):
        self.uploads = []
        self.received = []

    def ingest(self, upload):
        from co2logd.ingest import Receipt

        self.received.append(upload)
        self.uploads.append((upload.body, upload.content_type, upload.transport))
        return defer.succeed(Receipt(1))


class SerialServiceClockTests(unittest.TestCase):
    """Reopening and the watchdog on ``task.Clock`` with the fake port."""

    def setUp(self):
        self.clock = task.Clock()
        self.bench = FakeSerialDevices()
        self.ingest = RecordingIngest()

    def service(self, **values):
        settings = Settings.from_values(values)
        service = serial_service("/dev/ttyACM0", self.ingest, self.clock, settings, port_factory=self.bench.open)
        self.addCleanup(service.stopService)
        return service

    def test_reopen_with_backoff_until_the_device_returns(self):
        """1, 2, 4, 8 s ... capped at SERIAL_RECONNECT_MAX_SECONDS; reset once open."""
        self.bench.plug("/dev/ttyACM0")
        service = self.service(SERIAL_RECONNECT_MAX_SECONDS=5)
        service.startService()
        self.bench.unplug("/dev/ttyACM0")
        self.assertIsNone(service.port)
        attempts = []
        for step in [1, 2, 4, 5, 5]:
            before = len(self.bench.opens)
            self.clock.advance(step - 0.01)
            self.assertEqual(len(self.bench.opens), before)
            self.clock.advance(0.01)
            attempts.append(len(self.bench.opens) - before)
        self.assertEqual(attempts, [1] * 5)
        self.bench.plug("/dev/ttyACM0")
        self.clock.advance(5)
        self.assertIsNotNone(service.port)
        self.assertEqual(service.opened, 2)
        self.bench.write("/dev/ttyACM0", b'{"co2": 1}\n')
        self.assertEqual(self.ingest.uploads, [(b'{"co2": 1}', "application/json", "serial:/dev/ttyACM0")])
        self.bench.unplug("/dev/ttyACM0")
        self.bench.plug("/dev/ttyACM0")
        self.clock.advance(1)  # the delay started again from 1 s
        self.assertEqual(service.opened, 3)

    def test_a_rebuilt_body_carries_the_bytes_the_device_signed(self):
        """A CSV row goes to ingest as a rebuilt body with the header line and row it was signed as; its checksum untouched."""
        self.bench.plug("/dev/ttyACM0")
        service = self.service()
        service.startService()
        self.bench.write("/dev/ttyACM0", b"time_s, co2\nContent-MD5-Salted: 0123456789abcdef0123456789abcdef\n1,641\n")
        [upload] = self.ingest.received
        self.assertEqual((upload.body, upload.content_type), (b"time_s,co2\n1,641", "text/csv"))
        self.assertEqual(upload.signed, b"time_s, co2\n1,641")
        self.assertEqual(upload.headers, (("Content-MD5-Salted", "0123456789abcdef0123456789abcdef"),))
        self.assertEqual(upload.node, "serial:/dev/ttyACM0")

    def test_watchdog_reopens_a_silent_port(self):
        """No data for SERIAL_WATCHDOG_SECONDS closes the port; it is reopened."""
        self.bench.plug("/dev/ttyACM0")
        service = self.service(SERIAL_WATCHDOG_SECONDS=30)
        service.startService()
        self.clock.advance(20)
        self.bench.write("/dev/ttyACM0", b"# alive\n")
        self.clock.advance(20)  # 40 s since opening, only 20 s of silence
        self.assertEqual((service.opened, service.watchdog_reopens), (1, 0))
        self.clock.advance(10)
        self.assertEqual(service.watchdog_reopens, 1)
        self.assertIsNone(service.port)
        self.clock.advance(1)
        self.assertEqual(service.opened, 2)
        self.clock.advance(29)
        self.assertEqual(service.watchdog_reopens, 1)
        self.clock.advance(1)
        self.assertEqual(service.watchdog_reopens, 2)

    def test_no_watchdog_by_default(self):
        """Without SERIAL_WATCHDOG_SECONDS a quiet port stays open."""
        self.bench.plug("/dev/ttyACM0")
        service = self.service()
        service.startService()
        self.clock.advance(24 * 3600)
        self.assertEqual((service.opened, service.watchdog_reopens), (1, 0))
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_cancels_reopening(self):
        """A stopped service leaves no timer behind and does not reopen."""
        self.bench.plug("/dev/ttyACM0")
        service = self.service(SERIAL_WATCHDOG_SECONDS=5)
        service.startService()
        self.bench.unplug("/dev/ttyACM0")
        self.successResultOf(service.stopService())
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_stop_closes_the_port(self):
        """stopService closes an open port and fires once it is closed."""
        self.bench.plug("/dev/ttyACM0")
        service = self.service()
        service.startService()
        self.successResultOf(service.stopService())
        self.assertEqual(self.bench.ports, {})

    def test_missing_at_start_waits_with_the_same_backoff(self):
        """A device missing at start is tried again after 1, 2, 4 s, like an unplugged one; health names it."""
        service = self.service(SERIAL_RECONNECT_MAX_SECONDS=5)
        service.startService()
        self.assertTrue(service.running)
        self.assertEqual(
            service.health()["reason"], "serial /dev/ttyACM0 is not connected (No such file or directory)"
        )
        attempts = []
        for step in [1, 2, 4, 5]:
            before = len(self.bench.opens)
            self.clock.advance(step - 0.01)
            self.assertEqual(len(self.bench.opens), before)
            self.clock.advance(0.01)
            attempts.append(len(self.bench.opens) - before)
        self.assertEqual(attempts, [1] * 4)
        self.bench.plug("/dev/ttyACM0")
        self.clock.advance(5)
        self.assertEqual((service.opened, service.health()["ok"]), (1, True))
        self.bench.write("/dev/ttyACM0", b'{"co2": 1}\n')
        self.assertEqual(len(self.ingest.uploads), 1)

    def test_fake_open_fails_like_the_real_port(self):
        """The fake's missing device gives the same start-up error as a real one (when required)."""
        service = self.service()
        service.required = True
        with self.assertRaises(SerialDeviceError) as caught:
            service.startService()
        self.assertEqual(str(caught.exception), "cannot open serial device /dev/ttyACM0: No such file or directory")


class SerialProtocolUnitTests(unittest.TestCase):
    """Line classification without a port."""

    def protocol(self, **values):
        ingest = RecordingIngest()
        protocol = SerialIngestProtocol(ingest, Settings.from_values(values), task.Clock(), "/dev/x")
        return protocol, ingest

    def test_formats(self):
        """Each line format reaches ingest with its content type."""
        protocol, ingest = self.protocol()
        for line in [b'{"a":1}', b"[{\"a\":1}]", b"a=1&b=2", b"a:1,b:2", b"a:1", b"a,b", b"1,2"]:
            protocol.lineReceived(line)
        self.assertEqual(
            [(body, ctype) for body, ctype, _ in ingest.uploads],
            [
                (b'{"a":1}', "application/json"),
                (b'[{"a":1}]', "application/json"),
                (b"a=1&b=2", "application/x-www-form-urlencoded"),
                (b"a=1&b=2", "application/x-www-form-urlencoded"),
                (b"a=1", "application/x-www-form-urlencoded"),
                (b"a,b\n1,2", "text/csv"),
            ],
        )

    def test_a_bug_in_a_line_does_not_stop_the_protocol(self):
        """An unexpected exception is logged and the next line is read."""
        protocol, ingest = self.protocol()
        self.patch(serial_module, "read_line", lambda line, state: 1 / 0)
        protocol.lineReceived(b'{"a":1}')
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
