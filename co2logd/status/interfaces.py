"""
How services report to ``/health`` and ``/metrics``.

A service in the daemon's tree declares what it reports with
``@implementer(...)``; the health checker and the metrics collector ask
``providedBy`` and read only what the interface names.  A service that
provides none of them is not listed.
"""

from __future__ import annotations

from typing import Any, Dict

from zope.interface import Attribute, Interface


class IHealthReporter(Interface):
    """A service that knows whether it works: ``/health`` lists its report."""

    name = Attribute("The service name, shown in the report")

    def health() -> Dict[str, Any]:
        """
        ``{"name": str, "kind": str, "ok": bool, "reason": str (when not ok),
        ...more fields}``; a service that is not ok makes ``/health`` 503.
        """


class IListenerStats(Interface):
    """A transport listener (a UDP port, a serial device) counting what it receives, for ``/metrics``."""

    name = Attribute("The service name: the listener label of the metrics")
    kind = Attribute('What it listens on: "udp" or "serial"')

    def stats() -> Dict[str, Any]:
        """
        At least ``{"sources": {source: {"messages": int, "rows": int,
        "rejects": {reason: int}}}}``.
        """


class ISerialDeviceStats(IListenerStats):
    """A serial listener: whether its device is open, and how often it was opened."""

    device = Attribute("The device path: the label of the serial metrics")
    connected = Attribute("True while the device is open")
    opened = Attribute("How often the device was opened (reopens are this minus one)")


class IForwarderStats(Interface):
    """The OpenSenseMap uploader's event counts, for ``/metrics``."""

    counters = Attribute("Dict[str, int]: requests, failures, delivered, dead_letters")
