"""
Stream listeners that bind before twistd forks.

:class:`EndpointListener` replaces ``strports.service``: its :meth:`bind`
listens on a server endpoint at once, so ``makeService`` can bind every port
while still in the foreground process.  A port in use then ends start-up
with one line on the terminal, before twistd daemonizes or writes a pidfile,
instead of failing inside ``startService`` after the fork.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from co2logd.net import host_port
from co2logd.status.interfaces import IHealthReporter

log = Logger()


@implementer(IHealthReporter)
class EndpointListener(Service):
    """
    Listens with one server endpoint while running.

    :meth:`bind` may be called before the reactor runs (endpoints that
    listen synchronously, as TCP, UNIX and systemd ones do, fail or succeed
    at once); ``privilegedStartService`` binds if that was not done yet.
    """

    def __init__(self, endpoint: IStreamServerEndpoint, factory: IProtocolFactory, description: str, kind: str = "http"):
        self.endpoint = endpoint
        self.factory = factory
        self.description = description
        self.kind = kind
        self.port: Optional[IListeningPort] = None
        self._pending: Optional[defer.Deferred] = None
        self.setName("{} {}".format(kind, description))

    def bind(self) -> None:
        """Listen now; a failure that is known at once (a port in use) is raised here."""
        if self.port is not None or self._pending is not None:
            return
        outcome: list = []
        d = self.endpoint.listen(self.factory)
        d.addBoth(outcome.append)
        if outcome:
            result = outcome[0]
            if isinstance(result, Failure):
                result.raiseException()
            self.port = result
            return
        # an endpoint that listens later: keep the Deferred, report failures in the log
        self._pending = defer.Deferred()
        d.addBoth(self._listened)

    def _listened(self, result: Any) -> None:
        pending, self._pending = self._pending, None
        if isinstance(result, Failure):
            log.failure("Cannot listen on {description}", result, description=self.description)
        else:
            self.port = result
            log.info("Listening for {kind} on {address}", kind=self.kind.upper(), address=self.address)
        if pending is not None:
            pending.callback(None)

    @property
    def address(self) -> Optional[str]:
        """Where it listens (``host:port`` with the real port), or None when not listening."""
        return host_port(self.port.getHost()) if self.port is not None else None

    def privilegedStartService(self) -> None:
        self.bind()
        super().privilegedStartService()

    def startService(self) -> None:
        self.bind()
        super().startService()
        if self.port is not None:
            log.info("Listening for {kind} on {address}", kind=self.kind.upper(), address=self.address)

    def stopService(self) -> defer.Deferred:
        """
        Stop listening, then let the factory drain its connections (requests
        in flight finish) when it can (``drain()``, as the co2logd Site has).
        """
        super().stopService()
        port, self.port = self.port, None
        stopped = defer.maybeDeferred(port.stopListening) if port is not None else defer.succeed(None)
        drain = getattr(self.factory, "drain", None)
        if drain is not None:
            stopped.addCallback(lambda _: drain())
        return stopped

    def abandon(self) -> None:
        """Stop listening without having run (start-up failed elsewhere)."""
        port, self.port = self.port, None
        if port is not None:
            port.stopListening()

    def health(self) -> Dict[str, Any]:
        """``ok`` while listening."""
        report: Dict[str, Any] = {"name": self.name, "kind": self.kind, "ok": self.port is not None}
        if self.port is None:
            report["reason"] = "{} is not listening".format(self.name)
        else:
            report["address"] = self.address
        return report
