"""
When each source (transport, box) was last heard from, kept bounded.

The first look scans the data table once; later looks read only the rows
added since (the store's ``source_activity`` takes the last rowid seen), so
the dashboard and /health stay cheap on a large table.

Anyone who can upload can invent sources (a box value per row, a spoofed UDP
sender address), so the table is bounded, lest one upload with a million
made-up boxes fill memory and every page that lists sources:

* at most ``SOURCES_MAX_TRACKED`` sources are kept: the watched ones, then
  the busiest (most uploads), then the most recently heard; the others are
  dropped (a dropped source that uploads again comes back with its counts
  starting afresh);
* a source silent for ``SOURCES_FORGET_SECONDS`` is forgotten (unless it is
  listed in ``HEALTH_WATCHED_SOURCES``);
* a source is *watched* (its silence makes /health 503) when its box or
  transport is listed in ``HEALTH_WATCHED_SOURCES`` (heard or not), or,
  with ``HEALTH_SILENT_SOURCES`` on, once it has been heard in
  ``HEALTH_SILENT_MIN_UPLOADS`` uploads: one upload with a made-up box or
  from a spoofed address is not enough.

Pages list at most ``DASHBOARD_MAX_SOURCES`` of them (:meth:`SourceTracker.listing`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime

from co2logd.charts.timerange import parse_stored_time
from co2logd.settings import Settings
from co2logd.store.interfaces import IStore


SourceKey = Tuple[Optional[str], Any]  # (transport, box)

#: ``source_activity`` keeps up to this many times SOURCES_MAX_TRACKED new sources while it reads
TRIM_SLACK = 2


class Source:
    """One source: its last upload time (text as stored, and UNIX seconds), row and upload counts."""

    def __init__(self, transport: Optional[str], box: Any, last: Optional[str], rows: int, uploads: int = 1, watched: bool = False):
        self.transport = transport
        self.box = box
        self.last = last
        self.last_seconds = parse_stored_time(last)
        self.rows = rows
        self.uploads = uploads
        self.watched = watched

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
            "uploads": self.uploads,
            "silent": age is None or age > silent_after,
            "watched": self.watched,
        }


class Listing:
    """The sources a page shows (busiest first) and what is left out."""

    def __init__(self, shown: List[Source], more: int, more_rows: int):
        self.shown = shown
        self.more = more
        self.more_rows = more_rows


def listed(settings, transport: Optional[str], box: Any) -> bool:
    """Is this source named in ``HEALTH_WATCHED_SOURCES`` (by its box or its transport)?"""
    names = settings.HEALTH_WATCHED_SOURCES
    return bool(names) and ((box is not None and str(box) in names) or (transport is not None and transport in names))


def trim_found(found: Dict[SourceKey, List[Any]], settings, known: frozenset) -> None:
    """
    Bound the sources ``source_activity`` collects while it reads (run in its
    thread): sources already tracked and listed ones stay, of the new ones
    the SOURCES_MAX_TRACKED busiest and newest.  ``found`` maps a source to
    ``[last upload time, rows, uploads]``.
    """
    limit = settings.SOURCES_MAX_TRACKED
    if len(found) <= len(known) + TRIM_SLACK * limit:
        return
    new = [k for k in found if k not in known and not listed(settings, k[0], k[1])]
    # stored upload times sort as text in time order: no parsing in this loop
    new.sort(key=lambda k: (found[k][2], str(found[k][0] or "")), reverse=True)
    for key in new[limit:]:
        del found[key]


class SourceTracker:
    """Keeps the per-source summary current with incremental queries, bounded (see the module)."""

    def __init__(self, store: IStore, settings: Settings, clock: Optional[IReactorTime] = None):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.after_rowid = 0
        self.sources: Dict[SourceKey, Source] = {}
        self._running: Optional[defer.Deferred] = None

    def refresh(self) -> defer.Deferred:
        """Fire with the sources, busiest first, after reading rows added since the last refresh."""
        if self._running is not None:  # join the query in flight rather than start a second one
            d: defer.Deferred = defer.Deferred()

            def joined(result: Any) -> Any:
                d.callback(self.sorted())
                return result

            self._running.addBoth(joined)
            return d
        box = self.settings.OSEM_BOX_COL if self.settings.OSEM_BOX_COL in self.store.columns else None
        known = frozenset(self.sources)
        self._running = self.store.source_activity(
            box, self.after_rowid, trim=lambda found: trim_found(found, self.settings, known)
        )

        def merge(result):
            rows, last_rowid = result
            for transport, box_value, last, count, uploads in rows:
                key = (transport, box_value)
                old = self.sources.get(key)
                if old is not None:
                    last = max((t for t in (last, old.last) if t), default=None)
                    count += old.rows
                    uploads += old.uploads
                self.sources[key] = Source(transport, box_value, last, count, uploads)
            self.after_rowid = last_rowid
            self._bound()
            return self.sorted()

        def done(result):
            self._running = None
            return result

        return self._running.addCallback(merge).addBoth(done)

    def _bound(self) -> None:
        """Mark the watched sources, forget the long-silent ones, keep at most SOURCES_MAX_TRACKED."""
        settings = self.settings
        for source in self.sources.values():
            source.watched = self.is_watched(source)
        forget_after = settings.SOURCES_FORGET_SECONDS
        if forget_after and self.clock is not None:
            cutoff = self.clock.seconds() - forget_after
            for key, source in list(self.sources.items()):
                if source.last_seconds is not None and source.last_seconds < cutoff and not listed(settings, *key):
                    del self.sources[key]
        extra = len(self.sources) - settings.SOURCES_MAX_TRACKED
        if extra > 0:
            ranked = sorted(self.sources.items(), key=lambda item: self._rank(item[1]))
            for key, _ in ranked[:extra]:
                del self.sources[key]

    def _rank(self, source: Source) -> Tuple[bool, int, float]:
        """Sources ranked low are dropped first: not listed, fewest uploads, longest silent."""
        return (listed(self.settings, source.transport, source.box), source.uploads, source.last_seconds or 0)

    def is_watched(self, source: Source) -> bool:
        """
        Listed in HEALTH_WATCHED_SOURCES, or (with HEALTH_SILENT_SOURCES on)
        heard in at least HEALTH_SILENT_MIN_UPLOADS uploads.
        """
        if listed(self.settings, source.transport, source.box):
            return True
        return self.settings.HEALTH_SILENT_SOURCES and source.uploads >= self.settings.HEALTH_SILENT_MIN_UPLOADS

    def unheard(self) -> List[str]:
        """Names in HEALTH_WATCHED_SOURCES that match no source known now."""
        names = set(self.settings.HEALTH_WATCHED_SOURCES)
        for transport, box in self.sources:
            names.discard(transport)
            names.discard(None if box is None else str(box))
        return sorted(n for n in names if n is not None)

    def sorted(self) -> List[Source]:
        """The sources, busiest (most uploads, then rows) first, then most recently heard."""
        return sorted(
            self.sources.values(), key=lambda s: (s.uploads, s.rows, s.last_seconds or 0), reverse=True
        )

    def listing(self, sources: List[Source]) -> Listing:
        """The first DASHBOARD_MAX_SOURCES of ``sources`` (as :meth:`sorted` orders them) and a count of the rest."""
        limit = self.settings.DASHBOARD_MAX_SOURCES
        rest = sources[limit:]
        return Listing(sources[:limit], len(rest), sum(s.rows for s in rest))
