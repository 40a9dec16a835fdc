"""
The serial listener: lines from a USB-attached board, one upload per line.

Each line (``\\n`` or ``\\r\\n``, at most ``SERIAL_MAX_LINE`` bytes) is, in
this order of recognition:

* empty: ignored;
* ``# ...``: a comment for humans, counted and logged at debug level;
* ``Name: value`` with a hyphen in the name (``Content-Type``,
  ``Content-MD5-Salted``): a header for the next body line (an empty line
  may end the header block, as in HTTP, but need not); after a
  ``Content-Type`` header the next line goes to ingest as it is, in that
  format, and the rules below do not apply to it;
* ``{...}`` or ``[...]``: JSON (an object of columns, of single values, or
  a list of row objects);
* ``name,name,...`` where every cell is a column name (a letter or ``_``,
  then letters, digits, ``_``) and there is at least one comma: a **CSV
  header**, remembered until the next header (or until the port is
  reopened); it stores nothing itself;
* ``key:value,key:value`` or ``key=value,key=value`` (emonTx style);
* ``key=value&key=value``: a form-encoded record;
* a line with as many comma-separated cells as the current CSV header: a
  CSV row of it;
* anything else: counted and logged (rate-limited) as ``unparseable``.

Column names never contain a hyphen, so a ``key:value`` record is never
taken for a header.  Salted checksums are computed by the device over the
exact line; for a CSV row over the CSV header line as it was printed, one
``\\n`` and the row line, so the header that gives the row its column names
is signed too (a forged header line makes the row's checksum fail: its rows
are not marked authenticated, and are refused under
``UPLOAD_REQUIRES_AUTH``).  When co2logd turns a line into another
body for the ingest service (CSV rows, key:value pairs), the upload carries
the bytes the device signed, and ingest checks the checksums over those, so
``matched_checksums``/``failed_checksums`` and ``AUTH_CHECKER`` see what the
device sent.

With ``SERIAL_GATEWAY_PATTERN`` (a regex matched at the start of every
line, e.g. ``^(?:OK )?(?P<box>\\d+) ``) the named groups become columns of
the line's rows, and headers and CSV header lines are kept per node.

With ``SEQUENCE_FIELD`` a line whose sequence number was stored before
(from the same node) is not stored again: radio gateways pass on
retransmitted packets.
"""

from __future__ import annotations

import collections
import os
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver

from co2logd.errors import IngestError, bad_request
from co2logd.ingest import Upload
from co2logd.logs import gate
from co2logd.transports.listener import Listener
from co2logd.transports.serial_lines import Node, NodeState, node_name, read_line, split_gateway

log = Logger(observer=gate)

DEFAULT_BAUD = 9600
RECONNECT_FIRST_DELAY = 1.0
MAX_NODES = 256


def parse_serial_spec(text: str) -> Tuple[str, int]:
    """
    ``'/dev/ttyUSB0:115200'`` → ``('/dev/ttyUSB0', 115200)``; without a
    baud rate 9600.  Only a trailing ``:DIGITS`` is a baud rate, and not
    when the whole value names an existing file, so ``/dev/serial/by-id/``
    and ``by-path`` names (which contain colons) work.  Raises ValueError
    with one sentence otherwise.
    """
    spec = text.strip()
    device, baud = spec, DEFAULT_BAUD
    match = re.fullmatch(r"(.+):([0-9]+)", spec)
    if match and not os.path.exists(spec):
        device, baud = match.group(1), int(match.group(2))
    if not device or device.startswith(":"):
        raise ValueError("Invalid --serial value {!r}: use DEVICE[:BAUD], e.g. /dev/ttyACM0:115200".format(text))
    if not 50 <= baud <= 4_000_000:
        raise ValueError("Invalid --serial value {!r}: the baud rate {} is not between 50 and 4000000".format(text, baud))
    return device, baud


class SerialDeviceError(Exception):
    """A serial device that cannot be opened at start-up; the message is one line."""


class SerialIngestProtocol(LineReceiver):
    """
    Turns serial lines into uploads for the ingest service.

    One instance serves a device across reopenings; per-connection state
    (line buffer, headers, CSV header) is reset on every ``connectionMade``.
    ``counters`` are per node (the device itself without a gateway pattern).
    """

    delimiter = b"\n"

    def __init__(self, ingest, settings, clock, device: str):
        self.ingest = ingest
        self.settings = settings
        self.clock = clock
        self.device = device
        self.label = "serial:" + device
        self.MAX_LENGTH = settings.SERIAL_MAX_LINE
        self.gateway = settings.SERIAL_GATEWAY_PATTERN
        self.listener = Listener(ingest, clock, log, settings.TRANSPORT_LOG_INTERVAL, "serial")
        self.counters = self.listener.counters
        self.ignored: collections.Counter = collections.Counter()
        self.nodes: "collections.OrderedDict[Node, NodeState]" = collections.OrderedDict()
        self.last_data = clock.seconds()
        self._discarding = False
        self._refeed: Optional[bytes] = None
        self.on_lost: Optional[Callable[[Any], None]] = None
        # callables given (source, reply) for every upload's outcome, for tests and metrics
        self.observers: List[Callable[[Any, Dict[str, Any]], None]] = self.listener.observers

    # -- connection ---------------------------------------------------------------

    def connectionMade(self) -> None:
        """A freshly opened port: forget what was half-read on the last one."""
        self.clearLineBuffer()
        self.nodes.clear()
        self._discarding = False
        self.last_data = self.clock.seconds()

    def connectionLost(self, reason: Any = None) -> None:
        """Tell the service, which reopens the port."""
        if self.on_lost is not None:
            self.on_lost(reason)

    def dataReceived(self, data: bytes) -> None:
        """Split into lines; go on after a line that was too long."""
        self.last_data = self.clock.seconds()
        super().dataReceived(data)
        while self._refeed is not None:
            rest, self._refeed = self._refeed, None
            super().dataReceived(rest)

    def lineLengthExceeded(self, line: bytes) -> None:
        """Drop the long line (counted), not the connection, and read on."""
        if not self._discarding:
            self._rejected(self.device, bad_request(
                "A line is longer than {} bytes (SERIAL_MAX_LINE)".format(self.MAX_LENGTH), "too-long"
            ))
        end = line.find(self.delimiter)
        if end < 0:
            self._discarding = True  # its end is still to come
        else:
            self._discarding = False
            self._refeed = line[end + 1:]

    # -- lines --------------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        """One line; nothing in it may stop the listener."""
        if self._discarding:
            self._discarding = False  # the tail of a line that was too long
            return
        try:
            self._line(line.strip())
        except Exception:
            log.failure("Unexpected error handling a line from {device}", device=self.device)

    def _line(self, line: bytes) -> None:
        if not line:
            return  # an empty line ends a header block; headers wait for the body line anyway
        if line.startswith(b"#"):
            return self._comment(self.device, line)
        node: Node = None
        extra: Dict[str, Any] = {}
        if self.gateway is not None:
            try:
                extra, node, line = split_gateway(self.gateway, line)
            except IngestError as e:
                return self._rejected(self.device, e)
            if not line:
                return None
            if line.startswith(b"#"):
                return self._comment(node_name(self.device, node), line)
        source = node_name(self.device, node)
        state = self._state(node)
        self.listener.received(source)
        try:
            found = read_line(line, state)
        except IngestError as e:
            return self._rejected(source, e)
        if found is not None:
            upload = Upload(
                found.body, found.content_type, found.headers, self.label,
                signed=found.signed, extra_columns=extra, node="serial:" + source,
            )
            self.listener.submit(upload, source, source)
        return None

    def _comment(self, source: str, line: bytes) -> None:
        self.ignored["comment"] += 1
        log.debug("{device} says: {line}", device=source, line=line.decode("utf-8", "replace"))

    def _rejected(self, source: str, error: IngestError) -> None:
        self.listener.refuse(error, source, source)

    def _state(self, node: Node) -> NodeState:
        state = self.nodes.get(node)
        if state is None:
            if len(self.nodes) >= MAX_NODES:
                self.nodes.popitem(last=False)
            state = self.nodes[node] = NodeState()
        else:
            self.nodes.move_to_end(node)
        return state

    @property
    def pending(self) -> int:
        """Uploads waiting for the database."""
        return self.listener.pending

    def idle(self) -> defer.Deferred:
        """Fires once no upload is waiting for the database."""
        return self.listener.idle()


def open_serial_port(protocol, device: str, reactor, baudrate: int):
    """The real port factory: ``twisted.internet.serialport.SerialPort``."""
    from twisted.internet.serialport import SerialPort

    return SerialPort(protocol, device, reactor, baudrate=baudrate)


def describe_open_error(error: BaseException) -> str:
    """pyserial's ``[Errno 2] could not open port ...`` as a short reason."""
    errno = getattr(error, "errno", None)
    if not isinstance(errno, int) and getattr(error, "args", None) and isinstance(error.args[0], int):
        errno = error.args[0]
    if isinstance(errno, int):
        return os.strerror(errno)
    return str(error) or type(error).__name__


class SerialService(Service):
    """
    Keeps one serial device open while running.

    The port is opened in ``startService``.  A device that cannot be opened
    then (not plugged in at boot) is waited for like one that goes away
    later (USB unplugged): it is reopened with exponential backoff (1 s
    doubling up to ``SERIAL_RECONNECT_MAX_SECONDS``) at the same path, so it
    is found when it comes; meanwhile ``/health`` names it.  A ``required``
    device that cannot be opened at start raises :class:`SerialDeviceError`
    instead (``makeService`` checks it exists before that).  With ``SERIAL_WATCHDOG_SECONDS`` a port
    that sends nothing for that long is closed and reopened.
    """

    def __init__(self, device: str, baud: int, ingest, reactor, settings, port_factory=open_serial_port, required: bool = False):
        self.device = device
        self.required = required
        self.last_error: Optional[str] = None  # why the device cannot be opened, while it cannot
        self.baud = baud
        self.reactor = reactor
        self.settings = settings
        self.port_factory = port_factory
        self.protocol = SerialIngestProtocol(ingest, settings, reactor, device)
        self.protocol.on_lost = self._lost
        self.port = None
        self.opened = 0  # how often the port was (re)opened
        self.watchdog_reopens = 0
        self.reconnect_first_delay = RECONNECT_FIRST_DELAY
        self._delay = RECONNECT_FIRST_DELAY
        self._retry = None
        self._watchdog = None
        self._closed: Optional[defer.Deferred] = None
        self.setName("serial {}".format(device))

    def startService(self) -> None:
        try:
            self._open()
        except Exception as e:
            reason = describe_open_error(e)
            if self.required:
                raise SerialDeviceError("cannot open serial device {}: {}".format(self.device, reason)) from e
            super().startService()
            self.last_error = reason
            log.warn(
                "Serial device {device} cannot be opened ({reason}); waiting for it, next try in {delay}s",
                device=self.device,
                reason=reason,
                delay=self._delay,
            )
            self._schedule_reopen()
            return
        super().startService()
        log.info("Reading serial device {device} at {baud} baud", device=self.device, baud=self.baud)

    def _open(self) -> None:
        self.port = self.port_factory(self.protocol, self.device, self.reactor, baudrate=self.baud)
        self.opened += 1
        self._delay = self.reconnect_first_delay
        self._arm_watchdog(self.settings.SERIAL_WATCHDOG_SECONDS)

    def _lost(self, reason: Any) -> None:
        self.port = None
        self._cancel("_watchdog")
        if not self.running:
            closed, self._closed = self._closed, None
            if closed is not None:
                closed.callback(None)
            return
        log.warn(
            "Serial device {device} went away ({reason}); reopening it in {delay}s",
            device=self.device,
            reason=getattr(reason, "value", reason),
            delay=self._delay,
        )
        self._schedule_reopen()

    def _schedule_reopen(self) -> None:
        self._retry = self.reactor.callLater(self._delay, self._reopen)
        self._delay = min(self._delay * 2, self.settings.SERIAL_RECONNECT_MAX_SECONDS)

    def _reopen(self) -> None:
        self._retry = None
        if not self.running:
            return
        try:
            self._open()
        except Exception as e:
            self.last_error = describe_open_error(e)
            log.info(
                "Serial device {device} still cannot be opened ({reason}); next try in {delay}s",
                device=self.device,
                reason=self.last_error,
                delay=self._delay,
            )
            self._schedule_reopen()
            return
        self.last_error = None
        log.info("Serial device {device} opened", device=self.device)

    def _arm_watchdog(self, delay: float) -> None:
        if self.settings.SERIAL_WATCHDOG_SECONDS > 0:
            self._cancel("_watchdog")
            self._watchdog = self.reactor.callLater(delay, self._check_silence)

    def _check_silence(self) -> None:
        self._watchdog = None
        limit = self.settings.SERIAL_WATCHDOG_SECONDS
        silent = self.reactor.seconds() - self.protocol.last_data
        if silent < limit:
            self._arm_watchdog(limit - silent)
            return
        if self.port is not None:
            log.warn(
                "Serial device {device} sent nothing for {seconds}s; reopening it",
                device=self.device,
                seconds=silent,
            )
            self.watchdog_reopens += 1
            self.port.loseConnection()

    def _cancel(self, name: str) -> None:
        call = getattr(self, name)
        setattr(self, name, None)
        if call is not None and call.active():
            call.cancel()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        self._cancel("_retry")
        self._cancel("_watchdog")
        waits = [self.protocol.idle()]
        if self.port is not None:
            self._closed = defer.Deferred()
            waits.append(self._closed)
            self.port.loseConnection()
        return defer.gatherResults(waits).addCallback(lambda _: None)

    def health(self) -> Dict[str, Any]:
        """``ok`` while the device is open; else the reason, and that it is waited for."""
        ok = self.port is not None
        report: Dict[str, Any] = {
            "name": self.name, "kind": "serial", "ok": ok, "device": self.device,
            "opened": self.opened, "required": self.required,
        }
        if not ok:
            why = " ({})".format(self.last_error) if self.last_error else ""
            report["reason"] = "{} is not connected{}".format(self.name, why)
            report["waiting"] = self.running
        return report

    def stats(self) -> Dict[str, Any]:
        """Counters per source, comments ignored, how often the port was opened."""
        return {
            "sources": self.protocol.counters.as_dict(),
            "ignored": dict(self.protocol.ignored),
            "opened": self.opened,
            "watchdog_reopens": self.watchdog_reopens,
            "connected": self.port is not None,
        }


def serial_service(spec, ingest, reactor, settings, port_factory=open_serial_port, required: bool = False) -> SerialService:
    """
    The service for one ``--serial`` value: a spec string (see
    :func:`parse_serial_spec`) or an already parsed ``(device, baud)``.
    """
    device, baud = parse_serial_spec(spec) if isinstance(spec, str) else spec
    return SerialService(device, baud, ingest, reactor, settings, port_factory=port_factory, required=required)
