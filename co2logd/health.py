"""
What /health reports, and the small interface services use to report it.

A service in the daemon's service tree takes part by duck typing: if it has
a ``health()`` method, that method returns a :class:`ComponentHealth`-shaped
mapping::

    {"name": "serial /dev/ttyUSB0", "kind": "serial", "ok": False,
     "reason": "serial device /dev/ttyUSB0 is not connected", ...more fields}

The serial service and the HTTP listeners have ``health()``.  Services
without it are understood from what they already expose: a ``stats()``
mapping with ``"connected"``, a ``listening`` attribute (the UDP service), or
being a running listener whose name starts with ``http`` (strports services
of a ``.tac`` file).  Anything else is ignored.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import Attribute, Interface

from co2logd.activity import Source, SourceTracker

log = Logger()


class IHealthReporter(Interface):
    """Optional interface of services that know whether they work (duck typed, not checked)."""

    name = Attribute("The service name, shown in the report")

    def health() -> Dict[str, Any]:
        """``{"name", "kind", "ok": bool, "reason": str when not ok, ...}``"""


def component_health(service: Any) -> Optional[Dict[str, Any]]:
    """The health of one service, or None when it reports nothing."""
    name = getattr(service, "name", None) or type(service).__name__
    report = getattr(service, "health", None)
    if callable(report):
        return dict(report())
    stats = getattr(service, "stats", None)
    if callable(stats):
        try:
            values = stats()
        except Exception:
            log.failure("stats() of {name} failed", name=name)
            return {"name": name, "kind": "unknown", "ok": False, "reason": "{} cannot report its state".format(name)}
        if isinstance(values, dict) and "connected" in values:
            ok = bool(values["connected"])
            out = {"name": name, "kind": "serial", "ok": ok, "opened": values.get("opened")}
            if not ok:
                out["reason"] = "{} is not connected".format(name)
            return out
    if hasattr(service, "listening"):
        ok = service.listening is not None
        out = {"name": name, "kind": "udp", "ok": ok}
        if not ok:
            out["reason"] = "{} is not listening".format(name)
        return out
    if str(name).startswith("http"):
        ok = bool(getattr(service, "running", False))
        out = {"name": name, "kind": "http", "ok": ok}
        if not ok:
            out["reason"] = "{} is not running".format(name)
        return out
    return None


def silent_reasons(sources: Iterable[Source], unheard: List[str], now: float, settings) -> List[str]:
    """
    A reason per watched source that is silent, and per name in
    HEALTH_WATCHED_SOURCES never heard from; at most DASHBOARD_MAX_SOURCES,
    then how many more.
    """
    silent_after = settings.DASHBOARD_SILENT_SECONDS
    reasons = ["source {} (box {}) is silent".format(s.transport, s.box) for s in sources
               if s.watched and (s.silent_for(now) is None or s.silent_for(now) > silent_after)]
    reasons += ["watched source {} has not been heard from".format(name) for name in unheard]
    limit = settings.DASHBOARD_MAX_SOURCES
    if len(reasons) > limit:
        reasons = reasons[:limit] + ["{} more watched sources are silent".format(len(reasons) - limit)]
    return reasons


class HealthChecker:
    """
    Collects the health report: database, listeners, serial ports, sources,
    the OpenSenseMap outbox.  ``services`` is the root MultiService (or any
    iterable of services), read at every check so later children count.
    """

    def __init__(self, settings, store, clock, services: Iterable[Any] = (), sources: Optional[SourceTracker] = None):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.services = services
        self.sources = sources or SourceTracker(store, settings, clock)

    @defer.inlineCallbacks
    def check(self):
        """Fire with ``(healthy, report)``; the report lists every reason for being unhealthy."""
        settings = self.settings
        now = self.clock.seconds()
        reasons: List[str] = []
        report: Dict[str, Any] = {}
        # the heartbeat's last committed write, the file checks, disk errors of uploads (co2logd.store.watch)
        report["database"], database_reasons = self.store.disk_report(now)
        reasons += database_reasons
        components = []
        for service in list(self.services):
            health = component_health(service)
            if health is not None:
                components.append(health)
                if not health.get("ok", False):
                    reasons.append(health.get("reason") or "{} is not healthy".format(health.get("name")))
        report["components"] = components
        try:
            sources = yield self.sources.refresh()
            silent_after = settings.DASHBOARD_SILENT_SECONDS
            listing = self.sources.listing(sources)
            report["sources"] = [s.as_dict(now, silent_after) for s in listing.shown]
            report["sources_not_listed"] = {"sources": listing.more, "rows": listing.more_rows}
            reasons += silent_reasons(sources, self.sources.unheard(), now, settings)
        except Exception as e:
            report["sources"] = None
            reasons.append("the sources cannot be read: {}".format(e))
        if settings.OSEM_UPLOAD:
            try:
                stats = yield self.store.outbox_stats()
                oldest = stats.get("oldest_queued_at")
                age = None if oldest is None else max(0.0, now - oldest)
                report["outbox"] = {
                    "depth": stats["depth"],
                    "oldest_age_seconds": None if age is None else round(age, 1),
                    "dead_letters": stats["dead_letters"],
                }
                if age is not None and age > settings.HEALTH_OUTBOX_MAX_AGE:
                    reasons.append(
                        "the OpenSenseMap outbox is stuck: its oldest entry waits for {:.0f} s "
                        "(limit {} s)".format(age, settings.HEALTH_OUTBOX_MAX_AGE)
                    )
            except Exception as e:
                report["outbox"] = None
                reasons.append("the OpenSenseMap outbox cannot be read: {}".format(e))
        report["healthy"] = not reasons
        report["reasons"] = reasons
        report["time"] = now
        return not reasons, report
