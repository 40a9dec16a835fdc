"""
The UDP listener: one datagram = one upload.

A datagram is an optional HTTP-style header block, an empty line, and the
body (see :mod:`co2logd.transports.framing`); it goes to
``IngestService.ingest`` with the transport label ``udp:<sender address>``.
Nothing a sender puts in a datagram stops the listener: every refusal is
counted per source and reason, logged at most once per
``TRANSPORT_LOG_INTERVAL`` per source and reason, and (with ``UDP_ACK``)
answered with ``{"error": ...}`` so a node can retry.
"""

from __future__ import annotations

import json
import socket
import sys
from typing import Any, Dict, Optional, Tuple

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

from co2logd.errors import IngestError
from co2logd.ingest import Receipt, Upload
from co2logd.ingest.sequence import IN_FLIGHT
from co2logd.logs import gate
from co2logd.net import host_port
from co2logd.transports.counters import Counters, InFlight, RejectLog
from co2logd.transports.framing import error_reply, split_message

log = Logger(observer=gate)

SPEC_HELP = "use PORT or udp:PORT[:interface=ADDR], e.g. 8125 or udp:8125:interface=127.0.0.1"


def parse_udp_spec(text: str) -> Tuple[int, str]:
    """
    ``'8125'`` → ``(8125, '')``; ``'udp:8125:interface=127.0.0.1'`` →
    ``(8125, '127.0.0.1')``.  The interface runs to the end, so IPv6
    addresses (``interface=::1``) need no escaping; ``\\:`` is accepted too.
    Raises ValueError with one sentence otherwise.
    """
    spec = text.strip()
    rest = spec[4:] if spec.lower().startswith("udp:") else spec
    port_text, _, options = rest.partition(":")
    if port_text.lower().startswith("port="):
        port_text = port_text[5:]
    interface = ""
    if options:
        if not options.lower().startswith("interface="):
            raise ValueError("Invalid --udp value {!r}: {}".format(text, SPEC_HELP))
        interface = options[len("interface="):].replace("\\:", ":")
        if not interface:
            raise ValueError("Invalid --udp value {!r}: the interface is empty".format(text))
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError("Invalid --udp value {!r}: {}".format(text, SPEC_HELP))
    return int(port_text), interface


class UDPIngestProtocol(DatagramProtocol):
    """
    Frames datagrams into uploads for the ingest service.

    ``counters`` (per sender address) and ``pending`` (uploads waiting for
    the database) are there for /metrics and tests.  Every datagram names
    its sender as its node, so ingest suppresses repeated sequence numbers
    (``SEQUENCE_FIELD``).
    """

    noisy = False  # one "Listening for UDP uploads" line is enough

    def __init__(self, ingest, settings, clock):
        self.ingest = ingest
        self.settings = settings
        self.clock = clock
        self.counters = Counters()
        self.reject_log = RejectLog(log, clock, settings.TRANSPORT_LOG_INTERVAL)
        self.in_flight = InFlight()
        # callables given every outcome (the reply an ack would carry), for tests and metrics
        self.observers: list = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Hand one datagram to ingest; never let anything escape to the reactor."""
        try:
            self._received(datagram, addr)
        except Exception:
            log.failure("Unexpected error handling a datagram from {source}", source=host_port(addr))

    def _received(self, datagram: bytes, addr: Any) -> None:
        host = addr[0]
        counters = self.counters.source(host)
        counters.messages += 1
        settings = self.settings
        if len(datagram) > settings.UDP_MAX_DATAGRAM:
            return self._refused(
                IngestError(
                    413,
                    "too-large",
                    "The datagram is larger than {} bytes (UDP_MAX_DATAGRAM)".format(settings.UDP_MAX_DATAGRAM),
                ),
                addr,
            )
        if self.pending >= settings.UDP_MAX_PENDING:
            return self._refused(
                IngestError(503, "busy", "Too many uploads are waiting for the database; try again"), addr
            )
        try:
            upload = self.frame(datagram, host)
        except IngestError as e:
            return self._refused(e, addr)
        d = defer.maybeDeferred(self.ingest.ingest, upload)
        d.addCallbacks(self._stored, self._failed, callbackArgs=(addr,), errbackArgs=(addr,))
        self.in_flight.track(d)
        d.addErrback(lambda f: log.failure("Unexpected error acknowledging a datagram", f))
        return None

    def frame(self, datagram: bytes, host: str) -> Upload:
        """The datagram as an Upload (header block and body); a 400 IngestError when it cannot be framed."""
        frame = split_message(datagram)
        return Upload(frame.body, frame.content_type, frame.headers, "udp:" + host, node="udp:" + host)

    def _stored(self, receipt: Receipt, addr: Any) -> None:
        if receipt.duplicate is not None:
            log.debug("Duplicate upload {seq} from {source}", seq=receipt.seq, source=host_port(addr))
            if receipt.duplicate != IN_FLIGHT:  # the first copy's ack is still to come
                self._ack(addr, {"saved-in-db": 0, "duplicate": True, "seq": receipt.seq})
            return
        self.counters.source(addr[0]).rows += receipt.rows
        reply: Dict[str, Any] = receipt.as_dict()
        if receipt.seq is not None:
            reply["seq"] = receipt.seq
        self._ack(addr, reply)

    def _failed(self, failure, addr) -> None:
        error = failure.value
        if not isinstance(error, IngestError):
            log.failure("Ingest failed on a datagram from {source}", failure, source=host_port(addr))
            error = IngestError(500, "internal", "The server failed on this upload; nothing was saved")
        self._refused(error, addr, error.seq)

    def _refused(self, error: IngestError, addr: Any, seq: Optional[int] = None) -> None:
        host = addr[0]
        self.counters.source(host).rejects[error.reason] += 1
        self.reject_log.reject(host, error.reason, error.message, "udp")
        reply = error_reply(error)
        if seq is not None:
            reply["seq"] = seq
        self._ack(addr, reply)

    def _ack(self, addr: Any, reply: Dict[str, Any]) -> None:
        for observer in self.observers:
            observer(addr, reply)
        if not self.settings.UDP_ACK or self.transport is None:
            return
        try:
            self.transport.write(json.dumps(reply, separators=(",", ":")).encode("utf-8"), addr)
        except Exception as e:  # an unreachable sender must not matter to anyone else
            log.debug("Cannot acknowledge to {source}: {error}", source=host_port(addr), error=e)

    @property
    def pending(self) -> int:
        """Uploads waiting for the database."""
        return self.in_flight.count

    def idle(self) -> defer.Deferred:
        """Fires once no upload is waiting for the database."""
        return self.in_flight.idle()

    def stats(self) -> Dict[str, Any]:
        """Counters per source, for /metrics (sequence numbers per node are the ingest service's)."""
        return {"sources": self.counters.as_dict(), "pending": self.pending}


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """
    Ask for a ``size``-byte receive buffer, so a burst of datagrams waits in
    the kernel instead of being dropped while the reactor is busy; return
    what the kernel granted (Linux caps it at ``net.core.rmem_max`` and
    reports twice the request).
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except OSError as e:
        log.warn("Cannot set the UDP receive buffer to {size} bytes: {error}", size=size, error=e)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def effective_receive_buffer(reported: int) -> int:
    """
    The buffer in the setting's terms: Linux reports twice what it grants
    for data (the other half is its bookkeeping), see socket(7).
    """
    return reported // 2 if sys.platform.startswith("linux") else reported


class UDPService(Service):
    """
    Listens on one UDP port while running.

    The port is bound by :meth:`bind` (``makeService`` calls it before
    twistd forks; otherwise ``privilegedStartService``), so a port in use
    raises ``CannotListenError`` at start-up.  Stopping stops
    listening and waits for uploads still on their way to the database.
    """

    def __init__(self, port: int, interface: str, ingest, reactor, settings, protocol_class=UDPIngestProtocol):
        self.port_number = port
        self.interface = interface
        self.reactor = reactor
        self.settings = settings
        self.protocol = protocol_class(ingest, settings, reactor)
        self.listening = None
        self.setName("udp {}{}".format(port, ":" + interface if interface else ""))

    def bind(self) -> None:
        """Bind the port now (``makeService`` does, before twistd forks); a port in use raises ``CannotListenError``."""
        if self.listening is None:
            self.listening = self.reactor.listenUDP(
                self.port_number,
                self.protocol,
                interface=self.interface,
                # one more than allowed, so an oversize datagram shows as such
                maxPacketSize=self.settings.UDP_MAX_DATAGRAM + 1,
            )
            self.receive_buffer = effective_receive_buffer(
                set_receive_buffer(self.listening.socket, self.settings.UDP_RECEIVE_BUFFER)
            )

    def privilegedStartService(self) -> None:
        self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        self.bind()
        super().startService()
        requested = self.settings.UDP_RECEIVE_BUFFER
        address = host_port(self.listening.getHost())
        if self.receive_buffer < requested:
            log.warn(
                "Listening for UDP uploads on {address}, receive buffer {buffer} bytes: less than "
                "UDP_RECEIVE_BUFFER = {requested} bytes (the kernel caps it at net.core.rmem_max)",
                address=address, buffer=self.receive_buffer, requested=requested,
            )
        else:
            log.info(
                "Listening for UDP uploads on {address}, receive buffer {buffer} bytes (UDP_RECEIVE_BUFFER)",
                address=address, buffer=self.receive_buffer,
            )

    def abandon(self) -> None:
        """Stop listening without having run (start-up failed elsewhere)."""
        listening, self.listening = self.listening, None
        if listening is not None:
            listening.stopListening()

    def stopService(self) -> defer.Deferred:
        super().stopService()
        listening, self.listening = self.listening, None
        stopped = defer.maybeDeferred(listening.stopListening) if listening is not None else defer.succeed(None)
        return defer.gatherResults([stopped, self.protocol.idle()]).addCallback(lambda _: None)

    @property
    def port(self) -> Optional[int]:
        """The bound port number (useful with port 0), or None when not listening."""
        return self.listening.getHost().port if self.listening is not None else None

    def stats(self) -> Dict[str, Any]:
        """The protocol's counters."""
        return self.protocol.stats()


def udp_service(spec, ingest, reactor, settings) -> UDPService:
    """
    The service for one ``--udp`` value: a spec string (see
    :func:`parse_udp_spec`) or an already parsed ``(port, interface)``.
    """
    port, interface = parse_udp_spec(spec) if isinstance(spec, str) else spec
    return UDPService(port, interface, ingest, reactor, settings)
