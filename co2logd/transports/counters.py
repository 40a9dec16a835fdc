"""
Per-source counters and rate-limited reject logging for the listeners.

A sender can produce rejects as fast as the network carries them; the log
must not grow at that rate.  :class:`RejectLog` writes at most one line per
(source, reason) per interval, saying how many were left out since.
"""

from __future__ import annotations

import collections
from typing import Any, Dict, List, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

OTHER_SOURCES = "other"


class SourceCounters:
    """What one source sent: messages, rows stored, rejects by reason."""

    __slots__ = ("messages", "rows", "rejects")

    def __init__(self) -> None:
        self.messages = 0
        self.rows = 0
        self.rejects: collections.Counter = collections.Counter()

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

    def __init__(self, log: Logger, clock: IReactorTime, interval: float, max_keys: int = 4096):
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
        self._waiting: List[defer.Deferred] = []

    def track(self, d: defer.Deferred) -> defer.Deferred:
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

    def idle(self) -> defer.Deferred:
        """Fires once no upload is waiting for the database."""
        if self.count == 0:
            return defer.succeed(None)
        d: defer.Deferred = defer.Deferred()
        self._waiting.append(d)
        return d
