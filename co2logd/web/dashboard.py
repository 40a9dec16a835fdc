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
from co2logd.store.mtime import time_columns
from co2logd.plot import HTML_AREA, bucket_edges, colours_for, render_html_legend, render_html_panel
from co2logd.timerange import TimeRangeError, human_age
from co2logd.web.common import escape, finish_quietly, page, query_args
from co2logd.web.plot import PlotError, PlotSpec, main_columns, plot_panels, plot_query, resolve_range

log = Logger()

RANGES = ("1h", "6h", "24h", "7d", "30d", "365d", "all")


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


def iso_z(seconds: float) -> str:
    """``2024-05-01T12:00:00Z``: a since/until value for links."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


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
        store.want_rollups(main_columns(settings, store.columns))
        self._cache: Dict[Any, Any] = {}  # query → (expires, page)
        self._inflight: Dict[Any, List[Any]] = {}  # query → requests waiting for its render

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
        # identical views share one render: one in flight, and its page for DASHBOARD_CACHE_SECONDS
        # (pollers cannot multiply the work; the page's own data are at most that much older)
        key = tuple(sorted(args.items()))
        cached = self._cache.get(key)
        if cached is not None and cached[0] > now:
            self._send(request, cached[1])
            return NOT_DONE_YET
        waiting = self._inflight.get(key)
        if waiting is not None:
            waiting.append(request)
            return NOT_DONE_YET
        self._inflight[key] = [request]
        d = resolve_range(self.store, spec, now)
        d.addCallback(self._gather)
        d.addCallback(self._render, spec, args, now)
        d.addCallbacks(self._deliver, self._failed, callbackArgs=(key, now), errbackArgs=(key,))
        return NOT_DONE_YET

    def _deliver(self, body: bytes, key, now: float) -> None:
        if self.settings.DASHBOARD_CACHE_SECONDS > 0:
            if len(self._cache) >= 32:  # a bound, not an LRU: distinct views are few
                self._cache.clear()
            self._cache[key] = (now + self.settings.DASHBOARD_CACHE_SECONDS, body)
        for request in self._inflight.pop(key, []):
            self._send(request, body)

    def _send(self, request, body: bytes) -> None:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-cache")
        finish_quietly(request, body)

    def _gather(self, spec: PlotSpec) -> defer.Deferred:
        tr = spec.time_range
        bounds = bucket_edges(tr.since, tr.until, HTML_AREA)
        calls = [
            self.store.row_count(),
            self.store.latest_by_source(spec.columns, spec.filters, self.settings.PLOT_MAX_SERIES),
            self.sources.refresh(),
            plot_panels(self.store, self.settings, spec, bounds),
            self.store.unusable_times(tr.since, tr.until, spec.filters),
            self.store.time_extent(spec.filters),
        ]
        if self.settings.OSEM_UPLOAD:
            calls.append(self.store.outbox_stats())
        return defer.gatherResults(calls, consumeErrors=True)

    def _render(self, results: List[Any], spec: PlotSpec, args: Dict[str, str], now: float) -> bytes:
        count, latest, sources, (panels, labels, left_out), unusable, extent = results[:6]
        outbox = results[6] if len(results) > 6 else None
        settings = self.settings
        filters = {k: args[k] for k in ("box", "source") if args.get(k)}
        chosen = "all" if spec.whole else (args.get("since") or "24h")
        ranges = " ".join(
            '<strong data-range="{r}">{r}</strong>'.format(r=r) if r == chosen and not args.get("until")
            else '<a data-range="{r}" href="/?{q}">{r}</a>'.format(r=r, q=escape(urlencode(dict(filters, since=r))))
            for r in RANGES
        )
        tr = spec.time_range
        range_title = "{} to {}".format(utc_text(tr.since), utc_text(tr.until))
        if filters:
            range_title += " · " + ", ".join("{} = {}".format(k, v) for k, v in sorted(filters.items()))
        query = plot_query(spec, filters)
        csv_args = dict(query, format="csv", after="0")
        csv_args["cols"] = ",".join(
            [settings.UPLOAD_TIME_COL, settings.TRANSPORT_COL]
            + [c for c in time_columns(settings, self.store.columns)]
            + spec.columns
        )
        upload_help = ' · <a href="/uploadhelp">How to upload data</a>' if settings.UPLOAD_HELP else ""
        refresh = settings.DASHBOARD_REFRESH_SECONDS
        colours = colours_for(labels)
        plot = render_html_legend(labels, left_out) + "".join(
            render_html_panel(panel, colours, tr.since, tr.until) for panel in panels
        )
        if not any(panel.buckets for panel in panels):
            plot = self._no_data(extent, filters) + plot
        if unusable:
            plot = (
                '<p id="unusable-time" class="note"><strong>{}</strong> row{} without a usable time '
                "(text, or before 1970, or over a year after the upload): drawn at the upload time.</p>".format(
                    unusable, "" if unusable == 1 else "s")
            ) + plot
        values = {
            "name": escape(settings.NAME),
            "count": count,
            "upload_help": upload_help,
            "refresh": '<meta http-equiv="refresh" content="{}">\n'.format(int(refresh)) if refresh else "",
            "range_title": escape(range_title),
            "ranges": ranges,
            "plot": plot,
            "plot_link": escape("/plot?" + urlencode(query)),
            "csv_link": escape("/download?" + urlencode(csv_args)),
            "latest": self._latest_table(latest, spec.columns, now, colours),
            "sources": self._sources_table(sources, now),
            "osem": self._osem(outbox, now),
            "now": escape(utc_text(now)),
        }
        return self.template.substitute(values).encode("utf-8")

    def _no_data(self, extent, filters: Dict[str, str]) -> str:
        """The empty range said plainly, with a link to the last day that has data."""
        if extent is None:
            return '<p id="no-data" class="note">No data yet{}.</p>'.format(" for this source" if filters else "")
        low, high = extent
        since = max(low, high - 86400)
        link = "/?" + urlencode(dict(filters, since=iso_z(since), until=iso_z(high + 1)))
        return (
            '<p id="no-data" class="note">No data in this range. The newest data is from {newest}: '
            '<a href="{link}">show {start} to {end}</a> (or <a href="{all}">all data</a>).</p>'.format(
                newest=escape(utc_text(high)), link=escape(link), start=escape(utc_text(since)),
                end=escape(utc_text(high)), all=escape("/?" + urlencode(dict(filters, since="all"))))
        )

    def _latest_table(self, latest, columns: List[str], now: float, colours: Dict[str, str]) -> str:
        """Per source the newest value of each panel's column, with its measurement time."""
        if not latest:
            return '<table id="latest"></table><p>No numeric data yet.</p>'
        head = "".join("<th>{}</th>".format(escape(c)) for c in columns)
        rows = []
        for label, when, values in latest:
            swatch = '<span class="swatch" style="background:{}"></span>'.format(colours[label]) if label in colours else ""
            cells = "".join(
                '<td class="num">{}</td>'.format(escape(format_number(values[c])) if c in values else "")
                for c in columns
            )
            rows.append('<tr data-source="{s}"><th>{sw}{s}</th><td>{at} ({age} ago)</td>{cells}</tr>'.format(
                s=escape(label), sw=swatch, at=escape(utc_text(when)), age=escape(human_age(now - when)), cells=cells))
        return '<table id="latest"><tr><th>source</th><th>measured at</th>{}</tr>\n{}</table>'.format(head, "\n".join(rows))

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

    def _failed(self, failure, key) -> None:
        log.failure("Dashboard failed", failure)
        for request in self._inflight.pop(key, []):
            request.setResponseCode(500)
            finish_quietly(request, page(self.settings.NAME, "<p>The database cannot be read.</p>"))
