"""
A verified fake of serial devices for tests without a pseudo-terminal.

:class:`FakeSerialDevices` is a bench of devices a test plugs in, writes to
and unplugs; its :meth:`~FakeSerialDevices.open` is a ``port_factory`` for
:class:`co2logd.transports.serial.SerialService`.  ``tests/test_serial.py``
runs the same reopen scenario on it and on a real pty.
"""

from __future__ import annotations

import errno
from typing import Dict, List, Set

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.python.failure import Failure


class FakeSerialPort:
    """An open fake port: the protocol's transport."""

    disconnecting = False

    def __init__(self, protocol, device: str, baudrate: int, bench: "FakeSerialDevices"):
        self.protocol = protocol
        self.device = device
        self.baudrate = baudrate
        self.bench = bench
        self.connected = True
        self.written: List[bytes] = []

    def write(self, data: bytes) -> None:
        """Bytes the protocol sends to the device."""
        self.written.append(data)

    def loseConnection(self) -> None:
        """Close the port, as ``SerialPort.loseConnection`` ends up doing."""
        self._lost(ConnectionDone())

    def _lost(self, reason: Exception) -> None:
        if not self.connected:
            return
        self.connected = False
        self.disconnecting = True
        if self.bench.ports.get(self.device) is self:
            del self.bench.ports[self.device]
        self.protocol.connectionLost(Failure(reason))


class FakeSerialDevices:
    """Devices by path; ``open`` fails like pyserial for a path that is not plugged in."""

    def __init__(self) -> None:
        self.plugged: Set[str] = set()
        self.ports: Dict[str, FakeSerialPort] = {}
        self.opens: List[str] = []

    def plug(self, device: str) -> None:
        """The device appears at ``device``."""
        self.plugged.add(device)

    def unplug(self, device: str) -> None:
        """The device goes away; an open port on it is lost."""
        self.plugged.discard(device)
        port = self.ports.get(device)
        if port is not None:
            port._lost(ConnectionLost("the device went away"))

    def write(self, device: str, data: bytes) -> None:
        """The device sends ``data``."""
        self.ports[device].protocol.dataReceived(data)

    def open(self, protocol, device: str, reactor, baudrate: int = 9600) -> FakeSerialPort:
        """The ``port_factory``: connect ``protocol`` to a plugged-in device."""
        self.opens.append(device)
        if device not in self.plugged:
            raise OSError(errno.ENOENT, "could not open port {}".format(device), device)
        port = FakeSerialPort(protocol, device, baudrate, self)
        self.ports[device] = port
        protocol.makeConnection(port)
        return port
