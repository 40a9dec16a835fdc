"""
When each source (transport, box) was last heard from.

The first look scans the data table once; later looks read only the rows
added since (the store's ``source_activity`` takes the last rowid seen), so
the dashboard and /health stay cheap on a large table.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer

from co2logd.timerange import parse_stored_time

SourceKey = Tuple[Optional[str], Any]  # (transport, box)


class Source:
    """One source: its last upload time (text as stored, and UNIX seconds) and row count."""

    def __init__(self, transport: Optional[str], box: Any, last: Optional[str], rows: int):
        self.transport = transport
        self.box = box
        self.last = last
        self.last_seconds = parse_stored_time(last)
        self.rows = rows

    def silent_for(self, now: float) -> Optional[float]:
        """Seconds since the last upload (None when unknown)."""
        return None if self.last_seconds is None else now - self.last_seconds

    def as_dict(self, now: float, silent_after: float) -> Dict[str, Any]:
        """Plain data for /health."""
        age = self.silent_for(now)
        return {
            "transport": self.transport,
            "box": self.box,
            "last": self.last,
            "age_seconds": None if age is None else round(age, 1),
            "rows": self.rows,
            "silent": age is None or age > silent_after,
        }


class SourceTracker:
    """Keeps the per-source summary current with incremental queries."""

    def __init__(self, store, settings):
        self.store = store
        self.settings = settings
        self.after_rowid = 0
        self.sources: Dict[SourceKey, Source] = {}
        self._running: Optional[defer.Deferred] = None

    def refresh(self) -> defer.Deferred:
        """Fire with the sources, newest first, after reading rows added since the last refresh."""
        if self._running is not None:  # join the query in flight rather than start a second one
            d: defer.Deferred = defer.Deferred()
            self._running.addBoth(lambda result: (d.callback(self.sorted()), result)[1])
            return d
        box = self.settings.OSEM_BOX_COL if self.settings.OSEM_BOX_COL in self.store.columns else None
        self._running = self.store.source_activity(box, self.after_rowid)

        def merge(result):
            rows, last_rowid = result
            for transport, box_value, last, count in rows:
                key = (transport, box_value)
                old = self.sources.get(key)
                if old is not None:
                    last = max((t for t in (last, old.last) if t), default=None)
                    count += old.rows
                self.sources[key] = Source(transport, box_value, last, count)
            self.after_rowid = last_rowid
            return self.sorted()

        def done(result):
            self._running = None
            return result

        return self._running.addCallback(merge).addBoth(done)

    def sorted(self) -> List[Source]:
        """The sources, most recently heard first."""
        return sorted(self.sources.values(), key=lambda s: s.last_seconds or 0, reverse=True)
