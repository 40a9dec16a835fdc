"""
Every HTTP limit below the resources: body size, concurrent connections, and
deadlines for receiving requests, so neither a huge upload nor a slow-loris
client can hold the server.

* :class:`BoundedRequest` answers a body over ``max_body`` bytes with 413:
  at once for a larger ``Content-Length``, as soon as a chunked body passes
  the limit;
* :class:`GuardedSite` answers a connection beyond ``max_connections`` with
  a 503 (``Retry-After``) and closes it at once;
* :class:`GuardedChannel` gives each request ``request_timeout`` seconds
  from its first byte (or from the connection, for the first request) to
  arrive whole, headers and body; a client trickling bytes slower than that
  gets a 408 and the connection is closed.  Between requests Twisted's idle
  timeout (the Site's ``timeout``) applies.

Each refusal is counted through the site's ``count(reason)`` callable
(reasons ``too-large``, ``too-many-connections``, ``request-timeout``) and
answered with co2logd's error shape ``{"error": "...", "reason": "..."}``.

On shutdown :meth:`GuardedSite.drain` lets requests in flight finish: idle
connections are closed at once, a request being received or answered gets
its response (with ``Connection: close``) and then its connection is
closed, new connections are refused with 503; whatever is still open after
the grace period is aborted.
"""

from __future__ import annotations

import json
import io
from typing import Any, Callable, List, Optional, Set, cast

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http, server
from twisted.web.iweb import INonQueuedRequestFactory
from zope.interface import implementer

from co2logd.net import host_port

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


def connected(protocol: Protocol) -> ITCPTransport:
    """
    The transport of a connected protocol.  Twisted types it as optional (it
    is None before ``makeConnection``); every caller here runs after.
    """
    transport = protocol.transport
    assert transport is not None
    return cast(ITCPTransport, transport)


def _ignore(reason: str) -> None:
    """The default ``count``: nothing is counted."""


class BoundedRequest(server.Request):
    """
    A request whose body may not exceed ``max_body`` bytes.

    A larger ``Content-Length`` is answered with 413 at once, before the body
    is read; a chunked body is cut off (and answered 413) as soon as it
    passes the limit.  Either way the refusal is counted with ``count`` and
    the connection is closed.  :class:`GuardedSite` builds these with its
    own limit and counter.
    """

    def __init__(self, channel: Any, *, max_body: int, count: Callable[[str], None] = _ignore):
        super().__init__(channel)
        self.max_body = max_body
        self.count = count
        self._body_bytes = 0
        self._refused = False

    def gotLength(self, length: Optional[int]) -> None:
        if length is not None and length > self.max_body:
            self._refuse(length)
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            self._refuse(self._body_bytes)
            return
        super().handleContentChunk(data)

    def _refuse(self, size: int) -> None:
        self._refused = True
        self.count("too-large")
        log.info("Refused a body of at least {size} bytes (limit {limit})", size=size, limit=self.max_body)
        transport = connected(self.channel)
        transport.write(raw_error(
            413, "Payload Too Large",
            "The payload is larger than the limit of {} bytes (MAX_BODY_SIZE)".format(self.max_body), "too-large",
        ))
        transport.loseConnection()


class GuardedChannel(http.HTTPChannel):
    """An HTTP channel whose every request must arrive within the site's ``request_timeout``."""

    _deadline = None
    _receiving = False  # bytes of a request have come, not yet all of it

    def connectionMade(self) -> None:
        """Take a place in the site's count; the first request's clock starts now."""
        self.factory.open_connections += 1
        self.factory.channels.add(self)
        super().connectionMade()
        self._arm()

    def dataReceived(self, data: bytes) -> None:
        """Bytes of a new request start its clock (the idle timeout has run until now)."""
        if data and not self._handlingRequest:
            self._receiving = True
            if self._deadline is None:
                self._arm()
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        """The whole request is here in time: stop its clock."""
        self._receiving = False
        self._disarm()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Give the place back."""
        self._disarm()
        self.factory.open_connections -= 1
        super().connectionLost(reason)
        self.factory.channel_gone(self)

    @property
    def in_flight(self) -> bool:
        """A request is being received or answered on this connection."""
        return self._receiving or bool(self.requests)

    def checkPersistence(self, request, version) -> bool:
        """While the site drains, every response closes its connection."""
        if self.factory.draining:
            request.responseHeaders.setRawHeaders(b"connection", [b"close"])
            return False
        return super().checkPersistence(request, version)

    def drain(self) -> None:
        """Close now when idle; else close once the request in flight is answered."""
        if not self.in_flight:
            self.loseConnection()
            return
        self.persistent = False
        for request in self.requests:
            if not request.startedWriting:
                request.responseHeaders.setRawHeaders(b"connection", [b"close"])

    def _arm(self) -> None:
        timeout = self.factory.request_timeout
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
            peer=host_port(connected(self).getPeer()),
            seconds=timeout,
        )
        connected(self).write(
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
        connected(self).write(
            raw_error(
                503, "Service Unavailable",
                "Too many open connections (HTTP_MAX_CONNECTIONS = {}); try again later".format(self.limit),
                "too-many-connections",
                "retry-after: {}\r\n".format(self.retry_after).encode("ascii"),
            )
        )
        connected(self).loseConnection()


class ShuttingDown(Protocol):
    """Answers 503 at once and closes: the server is stopping."""

    def connectionMade(self) -> None:
        """Say why, then go."""
        connected(self).write(
            raw_error(503, "Service Unavailable", "The server is shutting down; try again later", "shutting-down",
                      b"retry-after: 5\r\n")
        )
        connected(self).loseConnection()


@implementer(INonQueuedRequestFactory)
class _RequestFactory:
    """What Twisted calls to make each request: one bounded by the site's limit, counted by the site."""

    def __init__(self, site: "GuardedSite"):
        self.site = site

    def __call__(self, channel: Any) -> BoundedRequest:
        site = self.site
        return site.request_class(channel, max_body=site.max_body, count=site.count)


class GuardedSite(server.Site):
    """
    A Site that bounds request bodies, its open connections and the time
    each request may take to arrive.

    :param request_class: the :class:`BoundedRequest` subclass to build (with ``max_body`` and ``count``)
    :param max_body: largest request body in bytes; larger ones are refused with 413
    :param max_connections: connections open at once; more are refused with 503
    :param request_timeout: seconds for a request to arrive whole (None: no bound)
    :param count: called with a reason for every refusal
    :param retry_after: seconds a refused client is told to wait
    :param access_log: log a line per request (costly on a busy upload path; ``-v`` turns it on)
    :param shutdown_grace: seconds :meth:`drain` waits for requests in flight before aborting them
    """

    protocol = GuardedChannel  # type: ignore[assignment]  # a channel class, as HTTPFactory's default is

    def __init__(
        self,
        resource: Any,
        request_class: Callable[..., BoundedRequest] = BoundedRequest,
        *,
        max_body: int,
        max_connections: int,
        request_timeout: Optional[float],
        idle_timeout: Optional[float],
        count: Callable[[str], None] = _ignore,
        retry_after: int = 1,
        reactor=None,
        access_log: bool = False,
        shutdown_grace: float = 5.0,
    ):
        # no resource reads form fields from request.args: parsing every POST body
        # as a form would be wasted work on the upload path
        super().__init__(
            resource, requestFactory=_RequestFactory(self), timeout=idle_timeout, reactor=reactor, parsePOSTFormSubmission=False
        )
        self.request_class = request_class
        self.max_body = max_body
        self.access_log = access_log
        self.max_connections = max_connections
        self.request_timeout = request_timeout
        self.count = count
        self.retry_after = retry_after
        self.open_connections = 0
        self.channels: Set[GuardedChannel] = set()
        self.shutdown_grace = shutdown_grace
        self.draining = False
        self._drain_waiters: List[defer.Deferred] = []
        self._grace_call: Optional[IDelayedCall] = None

    def drain(self) -> defer.Deferred:
        """
        Fire once every connection is closed: requests in flight finish with
        their responses, for at most ``shutdown_grace`` seconds; the rest are
        aborted then.  New connections meanwhile get 503.
        """
        waiter: defer.Deferred = defer.Deferred()
        self._drain_waiters.append(waiter)
        if not self.draining:
            self.draining = True
            busy = [channel for channel in self.channels if channel.in_flight]
            if busy:
                log.info(
                    "Stopping: letting {n} HTTP requests in flight finish (up to {grace} s)",
                    n=len(busy), grace=self.shutdown_grace,
                )
            for channel in list(self.channels):
                channel.drain()
            if self.channels:
                self._grace_call = self.reactor.callLater(self.shutdown_grace, self._abort_the_rest)
        self._check_drained()
        return waiter

    def channel_gone(self, channel: GuardedChannel) -> None:
        """A connection closed; the drain may be complete."""
        self.channels.discard(channel)
        if self.draining:
            self._check_drained()

    def _check_drained(self) -> None:
        if self.channels:
            return
        if self._grace_call is not None and self._grace_call.active():
            self._grace_call.cancel()
        self._grace_call = None
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _abort_the_rest(self) -> None:
        self._grace_call = None
        if self.channels:
            log.warn(
                "Stopping: aborting {n} HTTP connections still busy after {grace} s (SHUTDOWN_GRACE_SECONDS)",
                n=len(self.channels), grace=self.shutdown_grace,
            )
        for channel in list(self.channels):
            connected(channel).abortConnection()

    def log(self, request) -> None:
        if self.access_log:
            super().log(request)

    def buildProtocol(self, addr):
        """A channel, or a refusal when ``max_connections`` are open or the site drains."""
        refusal: Protocol
        if self.draining:
            refusal = ShuttingDown()
            refusal.factory = self
            return refusal
        if self.open_connections >= self.max_connections:
            self.count("too-many-connections")
            log.info(
                "Refusing a connection from {peer}: {open} connections are open (HTTP_MAX_CONNECTIONS)",
                peer=host_port(addr),
                open=self.open_connections,
            )
            refusal = RefusedConnection(self.max_connections, self.retry_after)
            refusal.factory = self
            return refusal
        return super().buildProtocol(addr)
