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
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from co2logd.errors import IngestError
from co2logd.ingest import IngestService, Upload
from co2logd.logs import gate
from co2logd.net import host_port
from co2logd.settings import Settings
from co2logd.status.interfaces import IHealthReporter, IListenerStats
from co2logd.transports.framing import split_message
from co2logd.transports.listener import Listener

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

    def __init__(self, ingest: IngestService, settings: Settings, clock: IReactorTime):
        self.ingest = ingest
        self.settings = settings
        self.clock = clock
        self.listener = Listener(ingest, clock, log, settings.TRANSPORT_LOG_INTERVAL, "udp", answer=self._ack)
        self.counters = self.listener.counters
        # callables given (addr, reply) for every outcome (the reply an ack would carry), for tests and metrics
        self.observers = self.listener.observers

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        """Hand one datagram to ingest; never let anything escape to the reactor."""
        try:
            self._received(datagram, addr)
        except Exception:
            log.failure("Unexpected error handling a datagram from {source}", source=host_port(addr))

    def _received(self, datagram: bytes, addr: Any) -> None:
        host = addr[0]
        listener = self.listener
        listener.received(host)
        settings = self.settings
        if len(datagram) > settings.UDP_MAX_DATAGRAM:
            return listener.refuse(
                IngestError(
                    413,
                    "too-large",
                    "The datagram is larger than {} bytes (UDP_MAX_DATAGRAM)".format(settings.UDP_MAX_DATAGRAM),
                ),
                host,
                addr,
            )
        if listener.pending >= settings.UDP_MAX_PENDING:
            return listener.refuse(
                IngestError(503, "busy", "Too many uploads are waiting for the database; try again"), host, addr
            )
        try:
            upload = self.frame(datagram, host)
        except IngestError as e:
            return listener.refuse(e, host, addr)
        listener.submit(upload, host, addr)
        return None

    def frame(self, datagram: bytes, host: str) -> Upload:
        """The datagram as an Upload (header block and body); a 400 IngestError when it cannot be framed."""
        frame = split_message(datagram)
        label = "udp:" + host
        return Upload(frame.body, frame.content_type, frame.headers, label, node=label)

    def _ack(self, addr: Any, reply: Dict[str, Any]) -> None:
        if not self.settings.UDP_ACK or self.transport is None:
            return
        try:
            self.transport.write(json.dumps(reply, separators=(",", ":")).encode("utf-8"), addr)
        except Exception as e:  # an unreachable sender must not matter to anyone else
            log.debug("Cannot acknowledge to {source}: {error}", source=host_port(addr), error=e)

    @property
    def pending(self) -> int:
        """Uploads waiting for the database."""
        return self.listener.pending

    def idle(self) -> defer.Deferred:
        """Fires once no upload is waiting for the database."""
        return self.listener.idle()

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


@implementer(IHealthReporter, IListenerStats)
class UDPService(Service):
    """
    Listens on one UDP port while running.

    The port is bound by :meth:`bind` (``makeService`` calls it before
    twistd forks; otherwise ``privilegedStartService``), so a port in use
    raises ``CannotListenError`` at start-up.  Stopping stops
    listening and waits for uploads still on their way to the database.
    """

    kind = "udp"

    def __init__(self, port: int, interface: str, ingest: IngestService, reactor: Any, settings: Settings, protocol_class: type = UDPIngestProtocol):  # reactor: IReactorUDP and IReactorTime
        self.port_number = port
        self.interface = interface
        self.reactor = reactor
        self.settings = settings
        self.protocol = protocol_class(ingest, settings, reactor)
        self.listening: Optional[Any] = None  # the listening UDP port while bound
        self.setName("udp {}{}".format(port, ":" + interface if interface else ""))

    def bind(self) -> None:
        """Bind the port now (``makeService`` does, before twistd forks); a port in use raises ``CannotListenError``."""
        if self.listening is None:
            self.listening = listening = self.reactor.listenUDP(
                self.port_number,
                self.protocol,
                interface=self.interface,
                # one more than allowed, so an oversize datagram shows as such
                maxPacketSize=self.settings.UDP_MAX_DATAGRAM + 1,
            )
            self.receive_buffer = effective_receive_buffer(
                set_receive_buffer(listening.socket, self.settings.UDP_RECEIVE_BUFFER)
            )

    def privilegedStartService(self) -> None:
        self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        self.bind()
        super().startService()
        requested = self.settings.UDP_RECEIVE_BUFFER
        assert self.listening is not None  # bound just above
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

    def health(self) -> Dict[str, Any]:
        """``ok`` while listening."""
        report: Dict[str, Any] = {"name": self.name, "kind": self.kind, "ok": self.listening is not None}
        if self.listening is None:
            report["reason"] = "{} is not listening".format(self.name)
        return report


def udp_service(spec, ingest, reactor, settings) -> UDPService:
    """
    The service for one ``--udp`` value: a spec string (see
    :func:`parse_udp_spec`) or an already parsed ``(port, interface)``.
    """
    port, interface = parse_udp_spec(spec) if isinstance(spec, str) else spec
    return UDPService(port, interface, ingest, reactor, settings)
