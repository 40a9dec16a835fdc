"""
What every listener (UDP, serial) does with a framed upload: hand it to the
ingest service, count and log its outcome, and answer.

A sender can produce rejects as fast as the network carries them; the log
must not grow at that rate.  :class:`RejectLog` writes at most one line per
(source, reason) per interval, saying how many were left out since.

:class:`Listener` ties the parts together.  A transport calls
:meth:`Listener.received` for every message it counts, :meth:`Listener.submit`
with an :class:`~co2logd.ingest.Upload` it framed, or
:meth:`Listener.refuse` with an :class:`~co2logd.errors.IngestError` for one
it could not frame.  Every outcome becomes one reply (:func:`reply_for`):
the receipt, a duplicate notice, or ``{"error": ...}``; the reply goes to
the ``observers`` and to the transport's ``answer`` (a UDP ack).
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from co2logd.errors import IngestError
from co2logd.ingest import Receipt, Upload
from co2logd.ingest.sequence import IN_FLIGHT
from co2logd.transports.framing import error_reply

OTHER_SOURCES = "other"

#: called with (reply_to, reply) for every outcome
Answer = Callable[[Any, Dict[str, Any]], None]


class SourceCounters:
    """What one source sent: messages, rows stored, rejects by reason."""

    __slots__ = ("messages", "rows", "rejects")

    def __init__(self) -> None:
        self.messages = 0
        self.rows = 0
        self.rejects: collections.Counter[str] = collections.Counter()

    def as_dict(self) -> Dict[str, Any]:
        """Plain data for /metrics and /health."""
        return {"messages": self.messages, "rows": self.rows, "rejects": dict(self.rejects)}


class Counters:
    """
    Counters per source, at most ``max_sources`` of them.

    Past the bound, new sources share the ``"other"`` entry: spoofed source
    addresses cannot grow memory without limit.
    """

    def __init__(self, max_sources: int = 1024):
        self.max_sources = max_sources
        self.sources: Dict[str, SourceCounters] = {}

    def source(self, name: str) -> SourceCounters:
        """The counters of one source (created on first use)."""
        counters = self.sources.get(name)
        if counters is None:
            if len(self.sources) >= self.max_sources:
                name = OTHER_SOURCES
                counters = self.sources.get(name)
            if counters is None:
                counters = self.sources[name] = SourceCounters()
        return counters

    def totals(self) -> SourceCounters:
        """The sum over all sources."""
        total = SourceCounters()
        for counters in self.sources.values():
            total.messages += counters.messages
            total.rows += counters.rows
            total.rejects.update(counters.rejects)
        return total

    def as_dict(self) -> Dict[str, Dict[str, Any]]:
        """Source → counters, plain data."""
        return {name: c.as_dict() for name, c in self.sources.items()}


class RejectLog:
    """At most one log line per (source, reason) every ``interval`` seconds."""

    def __init__(self, log: Logger, clock: Any, interval: float, max_keys: int = 4096):
        self.log = log
        self.clock = clock
        self.interval = interval
        self.max_keys = max_keys
        # key → (time of the last line, rejects left out since)
        self._last: Dict[Tuple[str, str], Tuple[float, int]] = {}

    def reject(self, source: str, reason: str, message: str, transport: str) -> bool:
        """Log this reject unless one like it was logged recently; True when logged."""
        now = self.clock.seconds()
        key = (source, reason)
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._forget_old(now)
        suppressed = last[1] if last is not None else 0
        self._last[key] = (now, 0)
        self.log.warn(
            "Rejected upload from {source} over {transport}: {reason}: {message}"
            + (" ({suppressed} more like it were not logged)" if suppressed else ""),
            source=source,
            transport=transport,
            reason=reason,
            message=message,
            suppressed=suppressed,
            interval=self.interval,
        )
        return True

    def _forget_old(self, now: float) -> None:
        for key, (when, _) in list(self._last.items()):
            if now - when >= self.interval:
                del self._last[key]
        if len(self._last) >= self.max_keys:
            self._last.clear()


class InFlight:
    """Uploads handed to the ingest service and not yet settled; :meth:`idle` waits for none."""

    def __init__(self) -> None:
        self.count = 0
        self._waiting: List["defer.Deferred[None]"] = []

    def track(self, d: "defer.Deferred[Any]") -> "defer.Deferred[Any]":
        """Count ``d`` until it fires; returns it, its result untouched."""
        self.count += 1
        return d.addBoth(self._settled)

    def _settled(self, result: Any) -> Any:
        self.count -= 1
        if self.count == 0:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)
        return result

    def idle(self) -> "defer.Deferred[None]":
        """Fires once no upload is waiting for the database."""
        if self.count == 0:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d


def reply_for(receipt: Receipt) -> Optional[Dict[str, Any]]:
    """
    The answer for a receipt: ``{"saved-in-db": N}`` (+ ``osem-queued``,
    + ``seq``); for a duplicate ``{"saved-in-db": 0, "duplicate": true,
    "seq": N}``; None while a copy of it is still being stored (that copy's
    answer is still to come).
    """
    if receipt.duplicate == IN_FLIGHT:
        return None
    reply: Dict[str, Any] = {"saved-in-db": 0, "duplicate": True} if receipt.duplicate else receipt.as_dict()
    if receipt.seq is not None:
        reply["seq"] = receipt.seq
    return reply


def refusal_reply(error: IngestError) -> Dict[str, Any]:
    """The answer for a refused upload: ``{"error", "status", "reason"}`` (+ ``seq``)."""
    reply = error_reply(error)
    if error.seq is not None:
        reply["seq"] = error.seq
    return reply


class Listener:
    """
    The bookkeeping a listener shares with every other: per-source counters,
    rate-limited reject logs, uploads in flight, and one reply per outcome.

    :param ingest: provides ``ingest(upload)`` → Deferred[Receipt]
    :param transport: the name in reject log lines (``"udp"``, ``"serial"``)
    :param answer: given (reply_to, reply) after the observers, e.g. to send an ack
    """

    def __init__(self, ingest: Any, clock: Any, log: Logger, interval: float, transport: str, answer: Optional[Answer] = None):
        self.ingest = ingest
        self.log = log
        self.transport = transport
        self.answer = answer
        self.counters = Counters()
        self.reject_log = RejectLog(log, clock, interval)
        self.in_flight = InFlight()
        #: callables given (reply_to, reply) for every outcome, for tests and metrics
        self.observers: List[Answer] = []

    def received(self, source: str) -> None:
        """Count one message from ``source``."""
        self.counters.source(source).messages += 1

    def submit(self, upload: Upload, source: str, reply_to: Any) -> "defer.Deferred[None]":
        """Hand ``upload`` to ingest; count, log and answer its outcome once it settles."""
        d = defer.maybeDeferred(self.ingest.ingest, upload)
        d.addCallbacks(self._stored, self._failed, callbackArgs=(source, reply_to), errbackArgs=(source, reply_to))
        self.in_flight.track(d)
        d.addErrback(lambda f: self.log.failure("Unexpected error answering an upload from {source}", f, source=source))
        return d

    def refuse(self, error: IngestError, source: str, reply_to: Any) -> None:
        """Count, log (rate-limited) and answer a refused upload."""
        self.counters.source(source).rejects[error.reason] += 1
        self.reject_log.reject(source, error.reason, error.message, self.transport)
        self.notify(reply_to, refusal_reply(error))

    def notify(self, reply_to: Any, reply: Dict[str, Any]) -> None:
        """Give one reply to the observers, then to ``answer``."""
        for observer in self.observers:
            observer(reply_to, reply)
        if self.answer is not None:
            self.answer(reply_to, reply)

    def _stored(self, receipt: Receipt, source: str, reply_to: Any) -> None:
        if receipt.duplicate is not None:
            self.log.debug("Duplicate upload {seq} from {source}", seq=receipt.seq, source=source)
        self.counters.source(source).rows += receipt.rows
        reply = reply_for(receipt)
        if reply is not None:
            self.notify(reply_to, reply)

    def _failed(self, failure: Failure, source: str, reply_to: Any) -> None:
        error = failure.value
        if not isinstance(error, IngestError):
            self.log.failure("Ingest failed on an upload from {source}", failure, source=source)
            error = IngestError(500, "internal", "The server failed on this upload; nothing was saved")
        self.refuse(error, source, reply_to)

    @property
    def pending(self) -> int:
        """Uploads waiting for the database."""
        return self.in_flight.count

    def idle(self) -> "defer.Deferred[None]":
        """Fires once no upload is waiting for the database."""
        return self.in_flight.idle()
