"""
HTTP limits below the resources: concurrent connections, and deadlines for
receiving requests, so a slow-loris client cannot hold the server.

* :class:`GuardedSite` answers a connection beyond ``max_connections`` with
  a 503 (``Retry-After``) and closes it at once;
* :class:`GuardedChannel` gives each request ``request_timeout`` seconds
  from its first byte (or from the connection, for the first request) to
  arrive whole, headers and body; a client trickling bytes slower than that
  gets a 408 and the connection is closed.  Between requests Twisted's idle
  timeout (the Site's ``timeout``) applies.

Each refusal is counted through the site's ``count(reason)`` callable
(reasons ``too-many-connections``, ``request-timeout``) and answered with
co2logd's error shape ``{"error": "..."}``.
"""

from __future__ import annotations

import json
from typing import Callable, Optional

from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.web import http, server

log = Logger()


def raw_error(status: int, phrase: str, message: str, reason: str, extra_headers: bytes = b"") -> bytes:
    """A complete HTTP/1.1 error response with a JSON body (error, reason) that closes the connection."""
    body = json.dumps({"error": message, "reason": reason}).encode("utf-8")
    return (
        "HTTP/1.1 {} {}\r\n".format(status, phrase).encode("ascii")
        + b"content-type: application/json\r\nconnection: close\r\n"
        + extra_headers
        + b"content-length: " + str(len(body)).encode("ascii") + b"\r\n\r\n"
        + body
    )


def _ignore(reason: str) -> None:
    """The default ``count``: nothing is counted."""


class GuardedChannel(http.HTTPChannel):
    """An HTTP channel whose every request must arrive within the site's ``request_timeout``."""

    _deadline = None

    def connectionMade(self) -> None:
        """Take a place in the site's count; the first request's clock starts now."""
        self.factory.open_connections += 1
        super().connectionMade()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        """Bytes of a new request start its clock (the idle timeout has run until now)."""
        if data and self._deadline is None and not self._handlingRequest:
            self._arm()
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        """The whole request is here in time: stop its clock."""
        self._disarm()
        super().allContentReceived()

    def connectionLost(self, reason) -> None:
        """Give the place back."""
        self._disarm()
        self.factory.open_connections -= 1
        super().connectionLost(reason)

    def _arm(self) -> None:
        timeout = getattr(self.factory, "request_timeout", None)
        if timeout:
            self._deadline = self.callLater(timeout, self._too_slow)

    def _disarm(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def _too_slow(self) -> None:
        self._deadline = None
        timeout = self.factory.request_timeout
        self.factory.count("request-timeout")
        log.info(
            "Closing the connection of {peer}: no whole request within {seconds} s",
            peer=str(self.transport.getPeer()),
            seconds=timeout,
        )
        self.transport.write(
            raw_error(
                408, "Request Timeout",
                "The request did not arrive within {} seconds (HTTP_REQUEST_TIMEOUT)".format(timeout),
                "request-timeout",
            )
        )
        # closes once the answer is written, and aborts a client that never reads it
        self.timeoutConnection()


class RefusedConnection(Protocol):
    """Answers 503 at once and closes: the site has ``max_connections`` open already."""

    def __init__(self, limit: int, retry_after: int):
        self.limit = limit
        self.retry_after = retry_after

    def connectionMade(self) -> None:
        """Say why, then go."""
        self.transport.write(
            raw_error(
                503, "Service Unavailable",
                "Too many open connections (HTTP_MAX_CONNECTIONS = {}); try again later".format(self.limit),
                "too-many-connections",
                "retry-after: {}\r\n".format(self.retry_after).encode("ascii"),
            )
        )
        self.transport.loseConnection()


class GuardedSite(server.Site):
    """
    A Site that bounds its open connections and the time each request may take to arrive.

    :param max_connections: connections open at once; more are refused with 503
    :param request_timeout: seconds for a request to arrive whole (None: no bound)
    :param count: called with a reason for every refusal
    :param retry_after: seconds a refused client is told to wait
    :param access_log: log a line per request (costly on a busy upload path; ``-v`` turns it on)
    """

    protocol = GuardedChannel

    def __init__(
        self,
        resource,
        requestFactory=None,
        *,
        max_connections: int,
        request_timeout: Optional[float],
        idle_timeout: Optional[float],
        count: Callable[[str], None] = _ignore,
        retry_after: int = 1,
        reactor=None,
        access_log: bool = False,
    ):
        # no resource reads form fields from request.args: parsing every POST body
        # as a form would be wasted work on the upload path
        super().__init__(
            resource, requestFactory=requestFactory, timeout=idle_timeout, reactor=reactor, parsePOSTFormSubmission=False
        )
        self.access_log = access_log
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.count = count
        self.retry_after = retry_after
        self.open_connections = 0

    def log(self, request) -> None:
        if self.access_log:
            super().log(request)

    def buildProtocol(self, addr):
        """A channel, or a refusal when ``max_connections`` are open."""
        if self.open_connections >= self.max_connections:
            self.count("too-many-connections")
            log.info(
                "Refusing a connection from {peer}: {open} connections are open (HTTP_MAX_CONNECTIONS)",
                peer=getattr(addr, "host", addr),
                open=self.open_connections,
            )
            refusal = RefusedConnection(self.max_connections, self.retry_after)
            refusal.factory = self
            return refusal
        return super().buildProtocol(addr)
