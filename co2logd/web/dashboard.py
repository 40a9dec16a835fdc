"""
``GET /`` (and ``/index``): the dashboard.

Server name and row count (as co2logserver's index page), plots of the main
columns for the chosen range (the last day by default), each numeric
column's latest value, every source (transport, box) with the time it was
last heard from (silent ones marked), the OpenSenseMap outbox when
forwarding is on, and links to download, upload help, /health and /metrics.

Everything comes from co2logd itself: the HTML template and the style sheet
are package data, the plots are inline SVG, there is no script.
"""

from __future__ import annotations

import datetime
import string
from importlib import resources
from typing import Any, Dict, List
from urllib.parse import urlencode

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from co2logd.activity import SourceTracker
from co2logd.timerange import TimeRangeError, human_age, parse_stored_time
from co2logd.web.common import escape, finish_quietly, page, query_args
from co2logd.web.plot import PlotError, PlotSpec, numeric_columns, plot_query, render_plot

log = Logger()

RANGES = ("6h", "24h", "7d", "30d", "365d")


def template(name: str) -> string.Template:
    """A template shipped in ``co2logd/web/templates``."""
    text = resources.files("co2logd.web").joinpath("templates", name).read_text(encoding="utf-8")
    return string.Template(text)


def static_directory() -> str:
    """The directory of ``co2logd/web/static`` (package data; the package is not zipped)."""
    return str(resources.files("co2logd.web").joinpath("static"))


def utc_text(seconds: float) -> str:
    """``2024-05-01 12:00:00`` in UTC."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def format_number(value: Any) -> str:
    """Numbers as people read them: integers plain, floats to 4 significant digits."""
    if isinstance(value, float):
        return "{:.4g}".format(value)
    return str(value)


class DashboardResource(Resource):
    """The dashboard; ``?since=&until=&box=&source=`` choose what the plots show."""

    isLeaf = True

    def __init__(self, settings, store, clock, sources: SourceTracker, services=None):
        super().__init__()
        self.settings = settings
        self.store = store
        self.clock = clock
        self.sources = sources
        self.services = services
        self.template = template("dashboard.html")

    def render_GET(self, request):
        args = query_args(request)
        now = self.clock.seconds()
        plot_args = dict(args)
        plot_args.pop("cols", None)  # the dashboard always shows its main columns
        try:
            spec = PlotSpec.from_args(plot_args, self.settings, self.store.columns, now)
        except (PlotError, TimeRangeError) as e:
            request.setResponseCode(400)
            return page(self.settings.NAME, "<h1>{}</h1><p>{}</p><p><a href=\"/\">Dashboard</a></p>".format(
                escape(self.settings.NAME), escape(str(e))))
        d = self._gather(spec)
        d.addCallback(self._render, request, spec, args, now)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _gather(self, spec: PlotSpec) -> defer.Deferred:
        numeric = numeric_columns(self.settings, self.store.columns)
        calls = [
            self.store.row_count(),
            self.store.latest_values(numeric),
            self.sources.refresh(),
            render_plot(self.store, self.settings, spec, title="{} plots".format(self.settings.NAME)),
        ]
        if self.settings.OSEM_UPLOAD:
            calls.append(self.store.outbox_stats())
        return defer.gatherResults(calls, consumeErrors=True)

    def _render(self, results: List[Any], request, spec: PlotSpec, args: Dict[str, str], now: float) -> None:
        count, latest, sources, svg = results[:4]
        outbox = results[4] if len(results) > 4 else None
        settings = self.settings
        filters = {k: args[k] for k in ("box", "source") if args.get(k)}
        chosen = args.get("since") or "24h"
        ranges = " ".join(
            "<strong>{}</strong>".format(r) if r == chosen and not args.get("until")
            else '<a href="/?{}">{}</a>'.format(escape(urlencode(dict(filters, since=r))), r)
            for r in RANGES
        )
        tr = spec.time_range
        range_title = "{} to {}".format(utc_text(tr.since), utc_text(tr.until))
        if filters:
            range_title += " · " + ", ".join("{} = {}".format(k, v) for k, v in sorted(filters.items()))
        query = plot_query(spec, filters)
        csv_args = dict(query, format="csv", after="0")
        csv_args["cols"] = ",".join([settings.UPLOAD_TIME_COL, settings.TRANSPORT_COL] + spec.columns)
        upload_help = ' · <a href="/uploadhelp">How to upload data</a>' if settings.UPLOAD_HELP else ""
        refresh = settings.DASHBOARD_REFRESH_SECONDS
        values = {
            "name": escape(settings.NAME),
            "count": count,
            "upload_help": upload_help,
            "refresh": '<meta http-equiv="refresh" content="{}">\n'.format(int(refresh)) if refresh else "",
            "range_title": escape(range_title),
            "ranges": ranges,
            "plot": svg,
            "plot_link": escape("/plot?" + urlencode(query)),
            "csv_link": escape("/download?" + urlencode(csv_args)),
            "latest": self._latest_table(latest, now),
            "sources": self._sources_table(sources, now),
            "osem": self._osem(outbox, now),
            "now": escape(utc_text(now)),
        }
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        finish_quietly(request, self.template.substitute(values).encode("utf-8"))

    def _latest_table(self, latest: Dict[str, Any], now: float) -> str:
        if not latest:
            return "<p>No numeric data yet.</p>"
        rows = []
        for column in numeric_columns(self.settings, self.store.columns):
            if column not in latest:
                continue
            value, when = latest[column]
            seconds = parse_stored_time(when)
            age = " ({} ago)".format(human_age(now - seconds)) if seconds is not None else ""
            rows.append('<tr><th>{}</th><td class="num">{}</td><td>{}{}</td></tr>'.format(
                escape(column), escape(format_number(value)), escape(str(when)[:19]), escape(age)))
        return "<table><tr><th>column</th><th>latest</th><th>at</th></tr>\n{}</table>".format("\n".join(rows))

    def _sources_table(self, sources, now: float) -> str:
        if not sources:
            return "<p>No data received yet.</p>"
        limit = self.settings.DASHBOARD_SILENT_SECONDS
        listing = self.sources.listing(sources)  # at most DASHBOARD_MAX_SOURCES, busiest first
        rows = []
        for source in listing.shown:
            age = source.silent_for(now)
            silent = age is None or age > limit
            status = '<span class="badge">silent</span>' if silent else '<span class="ok">ok</span>'
            link = "/?" + urlencode({k: v for k, v in (("source", source.transport), ("box", source.box)) if v is not None})
            rows.append(
                '<tr class="{cls}"><td><a href="{link}">{transport}</a></td><td>{box}</td><td>{last}</td>'
                '<td class="num">{age}</td><td class="num">{rows}</td><td>{status}</td></tr>'.format(
                    cls="silent" if silent else "heard",
                    link=escape(link),
                    transport=escape(source.transport if source.transport is not None else "(unknown)"),
                    box=escape(source.box),
                    last=escape(str(source.last or "")[:19]),
                    age=escape(human_age(age) if age is not None else "?"),
                    rows=source.rows,
                    status=status,
                )
            )
        more = ""
        if listing.more:
            more = '<p class="more">{} more source{} ({} rows) not listed: the least busy.</p>'.format(
                listing.more, "" if listing.more == 1 else "s", listing.more_rows)
        return (
            "<p>Silent: nothing for more than {}.</p><table><tr><th>transport</th><th>box</th><th>last heard</th>"
            "<th>ago</th><th>rows</th><th></th></tr>\n{}</table>{}".format(escape(human_age(limit)), "\n".join(rows), more)
        )

    def _osem(self, outbox, now: float) -> str:
        if outbox is None:
            return ""
        oldest = outbox.get("oldest_queued_at")
        age = "" if oldest is None else " (oldest waiting {})".format(human_age(now - oldest))
        stuck = oldest is not None and now - oldest > self.settings.HEALTH_OUTBOX_MAX_AGE
        dead = outbox["dead_letters"]
        return (
            '<section class="osem"><h2>OpenSenseMap</h2><p>Outbox: <strong{cls}>{depth}</strong> entries waiting{age}. '
            'Dead letters: <strong{dcls}>{dead}</strong>.</p></section>'.format(
                cls=' class="warn"' if stuck else "",
                depth=outbox["depth"],
                age=escape(age),
                dcls=' class="warn"' if dead else "",
                dead=dead,
            )
        )

    def _failed(self, failure, request) -> None:
        log.failure("Dashboard failed", failure)
        request.setResponseCode(500)
        finish_quietly(request, page(self.settings.NAME, "<p>The database cannot be read.</p>"))
