"""
Flow control for downloads: rows go to the client only as fast as it reads
them, so a client that reads slowly (or not at all) holds one chunk, not the table.

:class:`RowProducer` is an ``IPushProducer`` registered on the request.  It
fetches the next chunk of rows from the store (a thread hop through adbapi)
only while the transport is not paused, formats it and writes it; when the
client stops reading, Twisted's transport pauses it once its buffer passes
its ``bufferSize`` (64 KiB), so a slow client holds about one chunk plus that
buffer, not the whole response.  A client that reads nothing for
``stall_timeout`` seconds is disconnected (it would otherwise keep a
connection slot and a read cursor open for ever); one that goes away stops
the fetching and closes the cursor.  With a ``Cooperator``, a chunk is
formatted and written in slices, a slice per turn, so twenty downloads
filling their sockets at once still leave the reactor time for other
requests.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet import task
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
    :param cooperator: formats each chunk ``slice_rows`` rows per step as a
        cooperative task (so many downloads at once still leave the reactor
        time for other requests); None: a chunk at once
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
        cooperator: Optional[task.Cooperator] = None,
        slice_rows: int = 0,
    ):
        self.request = request
        self.stream = stream
        self.start_bytes = start
        self.format_rows = format_rows
        self.end = end
        self.clock = clock
        self.stall_timeout = stall_timeout
        self.cooperator = cooperator
        self.slice_rows = slice_rows
        self._work: Optional[task.CooperativeTask] = None
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
        if self.request.channel is None:  # the client left while the query started
            self.stopProducing()
            return self.done
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
        if self._work is not None:
            self._work.stop()  # its errback closes the cursor
        elif not self.fetching:
            self._close()

    # -- the loop ------------------------------------------------------------------

    def _pump(self) -> None:
        if self.paused or self.fetching or self.stopped or self.finished:
            return
        self.fetching = True
        self.stream.next_chunk().addCallbacks(self._got, self._failed)

    def _got(self, rows: list) -> None:
        self.chunks += 1
        if self.stopped:
            self.fetching = False
            self._close()
            return
        if not rows:
            self.fetching = False
            self._finish()
            return
        if self.cooperator is None or not self.slice_rows or len(rows) <= self.slice_rows:
            self.fetching = False
            self.request.write(self.format_rows(rows))  # may pause us at once
            self._pump()
            return
        self._work = self.cooperator.cooperate(self._slices(rows))
        self._work.whenDone().addCallbacks(self._formatted, self._not_formatted)

    def _slices(self, rows: list):
        for start in range(0, len(rows), self.slice_rows):
            self.request.write(self.format_rows(rows[start : start + self.slice_rows]))
            yield None

    def _formatted(self, _: Any) -> None:
        self._work = None
        self.fetching = False
        self._pump()

    def _not_formatted(self, failure: Failure) -> None:
        self._work = None
        if failure.check(task.TaskStopped):  # stopProducing: the client went away
            self.fetching = False
            self._close()
        else:
            self._failed(failure)

    def _finish(self) -> None:
        self.finished = True
        self._cancel_stall()
        self._unregister()
        finish_quietly(self.request, self.end())
        self._close()

    def _failed(self, failure: Failure) -> None:
        self.fetching = False
        log.failure("A download failed after {chunks} chunks", failure, chunks=self.chunks)
        self.finished = True
        self._cancel_stall()
        self._unregister()
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

    def _unregister(self) -> None:
        if self.request.channel is not None:
            self.request.unregisterProducer()
        else:
            self.request.producer = None  # the channel is gone with its producer

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
