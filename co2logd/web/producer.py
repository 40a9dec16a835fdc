"""
Flow control for downloads (issue 12, finding 7): rows go to the client only
as fast as it reads them.

:class:`RowProducer` is an ``IPushProducer`` registered on the request.  It
fetches the next chunk of rows from the store (a thread hop through adbapi)
only while the transport is not paused, formats it and writes it; when the
client stops reading, Twisted's transport pauses it once its buffer passes
its ``bufferSize`` (64 KiB), so a slow client holds about one chunk plus that
buffer, not the whole response.  A client that reads nothing for
``stall_timeout`` seconds is disconnected (it would otherwise keep a
connection slot and a read cursor open for ever); one that goes away stops
the fetching and closes the cursor.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from co2logd.web.common import finish_quietly

log = Logger()


@implementer(IPushProducer)
class RowProducer:
    """
    Streams a :class:`co2logd.store.RowStream` through a formatter into a request.

    :param request: the request, headers set; nothing written yet
    :param stream: the rows (``next_chunk()``, ``close()``)
    :param start: bytes before the rows
    :param format_rows: a chunk of rows → bytes
    :param end: called once after the last chunk → bytes after the rows
    :param clock: for the stall timeout (None: no timeout)
    :param stall_timeout: seconds a paused download may stay paused
    """

    def __init__(
        self,
        request,
        stream,
        start: bytes,
        format_rows: Callable[[list], bytes],
        end: Callable[[], bytes],
        clock=None,
        stall_timeout: Optional[float] = None,
    ):
        self.request = request
        self.stream = stream
        self.start_bytes = start
        self.format_rows = format_rows
        self.end = end
        self.clock = clock
        self.stall_timeout = stall_timeout
        self.paused = False
        self.fetching = False
        self.stopped = False  # the client went away (or stalled): fetch nothing more
        self.finished = False
        self.chunks = 0  # chunks fetched so far
        self._closed = False
        self._stall: Optional[IDelayedCall] = None
        #: fires once the response is finished or abandoned and the cursor is closed
        self.done: Deferred = Deferred()

    def begin(self) -> Deferred:
        """Register on the request, write the start, pump; fire :attr:`done` at the end."""
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())
        self.request.registerProducer(self, True)
        self.request.write(self.start_bytes)
        if self.request.method == b"HEAD":  # no body is sent: read no rows
            self._finish()
        else:
            self._pump()
        return self.done

    # -- IPushProducer -----------------------------------------------------------

    def pauseProducing(self) -> None:
        """The transport's buffer is full: fetch nothing until it drains."""
        self.paused = True
        if self.clock is not None and self.stall_timeout and self._stall is None and not self.stopped:
            self._stall = self.clock.callLater(self.stall_timeout, self._stalled)

    def resumeProducing(self) -> None:
        """The client reads again: go on."""
        self.paused = False
        self._cancel_stall()
        self._pump()

    def stopProducing(self) -> None:
        """The connection is gone: stop fetching and release the cursor."""
        if self.stopped or self.finished:
            return
        self.stopped = True
        self._cancel_stall()
        if not self.fetching:
            self._close()

    # -- the loop ------------------------------------------------------------------

    def _pump(self) -> None:
        if self.paused or self.fetching or self.stopped or self.finished:
            return
        self.fetching = True
        self.stream.next_chunk().addCallbacks(self._got, self._failed)

    def _got(self, rows: list) -> None:
        self.fetching = False
        self.chunks += 1
        if self.stopped:
            self._close()
            return
        if not rows:
            self._finish()
            return
        self.request.write(self.format_rows(rows))  # may pause us at once
        self._pump()

    def _finish(self) -> None:
        self.finished = True
        self._cancel_stall()
        self.request.unregisterProducer()
        finish_quietly(self.request, self.end())
        self._close()

    def _failed(self, failure: Failure) -> None:
        self.fetching = False
        log.failure("A download failed after {chunks} chunks", failure, chunks=self.chunks)
        self.finished = True
        self._cancel_stall()
        self.request.unregisterProducer()
        finish_quietly(self.request)  # the client sees a cut-off response
        self._close()

    def _stalled(self) -> None:
        self._stall = None
        log.info(
            "Closing a download to {peer}: it read nothing for {seconds} s",
            peer=str(self.request.getClientAddress()),
            seconds=self.stall_timeout,
        )
        self.stopProducing()
        transport: Any = self.request.channel.transport if self.request.channel is not None else None
        if transport is not None:
            transport.abortConnection()

    def _cancel_stall(self) -> None:
        if self._stall is not None:
            if self._stall.active():
                self._stall.cancel()
            self._stall = None

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True

        def closed(result: Any) -> None:
            self.done.callback(None)

        def not_closed(failure: Failure) -> None:
            log.failure("Closing a download's cursor failed", failure)
            self.done.callback(None)

        self.stream.close().addCallbacks(closed, not_closed)
