"""
``GET /plot``: an SVG of numeric columns over a time range.

``/plot?cols=co2,temperature&since=24h&until=…&box=…&source=…&width=800&height=180``.
The database reduces the range to min/max per pixel-wide bucket of
measurement time and per source (:meth:`co2logd.store.Store.plot_series`),
:mod:`co2logd.charts.svg` draws a line per source.  ``since=all`` is the data's
own range.  The dashboard draws the same panels as HTML.

The work and the answer are bounded before the query runs: a column asked
for twice is drawn once, at most ``PLOT_MAX_COLUMNS`` distinct columns and
``PLOT_MAX_PIXELS`` columns × width × panel height, and every panel holds at
most one min/max pair per pixel-wide bucket and source, for at most
``PLOT_MAX_SERIES`` sources (so at most two path points per pixel of width
and source).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from co2logd.charts.svg import Panel, bands_for, bucket_edges, plot_area_width, render_svg
from co2logd.charts.timerange import TimeRange, TimeRangeError, time_text
from co2logd.osem.mapping import Mapper
from co2logd.settings import Settings
from co2logd.store.interfaces import IStore
from co2logd.web.common import error_reply, finish_quietly, query_args, row_filters


log = Logger()

NUMERIC_TYPES = ("INTEGER", "REAL", "INT", "FLOAT", "DOUBLE", "NUMERIC")
MAX_MAIN_COLUMNS = 4
MIN_WIDTH, MAX_WIDTH = 200, 4000  # pixels of the whole plot
MIN_PANEL_HEIGHT, MAX_PANEL_HEIGHT = 80, 1000  # pixels of each column's panel


class PlotError(ValueError):
    """A plot request co2logd cannot draw; the message says why."""


def numeric_columns(settings, columns: Mapping[str, str]) -> List[str]:
    """Data columns declared numeric, in table order (automatic, time and label columns left out)."""
    skip = set(settings.automatic_columns) | {c.lower() for c in settings.TIME_COLS}
    skip |= {settings.OSEM_BOX_COL, settings.SEQUENCE_FIELD or ""}
    return [
        name for name, declared in columns.items()
        if name not in skip and (declared or "").upper() in NUMERIC_TYPES
    ]


#: names of columns that count or clock rather than measure: no default panel (a plot of
#: uptime or a sequence number is a straight line that crowds out the measurements)
NOT_MEASUREMENTS = re.compile(
    r"(_utc$|(^|_)(time|timestamp|ts|epoch|date|uptime|millis|seq|sequence|counter|id)(_|$)|^uptime)"
)


def main_columns(settings, columns: Mapping[str, str]) -> List[str]:
    """
    The dashboard's columns: ``DASHBOARD_COLUMNS`` that exist, else up to
    four numeric columns, CO2 first, leaving out positions, time columns
    (``TIME_COLS``, ``*_utc``), uptimes, and sequence numbers and counters
    (``SEQUENCE_FIELD``, ``*_seq``, ``counter``…).
    """
    numeric = numeric_columns(settings, columns)
    if settings.DASHBOARD_COLUMNS is not None:
        chosen = unique(c for c in (w.lower() for w in settings.DASHBOARD_COLUMNS) if c in numeric)
        return chosen[:settings.PLOT_MAX_COLUMNS]
    skip = {settings.OSEM_LAT_COL, settings.OSEM_LON_COL, settings.OSEM_HEIGHT_COL, settings.OSEM_TIME_COL}
    skip.add(settings.DASHBOARD_TIME_COL or "")
    candidates = [c for c in numeric if c not in skip and not NOT_MEASUREMENTS.search(c)]
    co2 = [c for c in candidates if settings.PLOT_CO2_COLUMN_REGEX.search(c)]
    return (co2 + [c for c in candidates if c not in co2])[:min(MAX_MAIN_COLUMNS, settings.PLOT_MAX_COLUMNS)]


def unique(names: Iterable[str]) -> List[str]:
    """``names`` without repeats, in first-seen order."""
    return list(dict.fromkeys(names))


def _bounded_int(args: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    text = args.get(name, "")
    if text == "":
        return default
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        raise PlotError("{} must be a whole number from {} to {}".format(name, low, high))
    return int(text)


class PlotSpec:
    """What to draw: columns, time range, size and row filters, validated."""

    def __init__(
        self,
        columns: Sequence[str],
        time_range: TimeRange,
        width: int = 800,
        panel_height: int = 180,
        filters: Sequence[Tuple[str, Any]] = (),
        whole: bool = False,
    ):
        self.columns = unique(columns)  # a column asked for twice is drawn once
        self.time_range = time_range
        self.width = width
        self.panel_height = panel_height
        self.filters = list(filters)
        #: ``since=all``: the range is the data's, found by :func:`resolve_range`
        self.whole = whole

    @classmethod
    def from_args(cls, args: Mapping[str, str], settings, columns: Mapping[str, str], now: float) -> "PlotSpec":
        """
        Read the query arguments; raise PlotError or TimeRangeError with a
        clear message.  Repeated columns collapse into one; more than
        ``PLOT_MAX_COLUMNS`` distinct columns, or more than
        ``PLOT_MAX_PIXELS`` columns × width × panel height, are refused
        before anything is read.
        """
        wanted = unique(c.strip().lower() for c in args.get("cols", "").split(",") if c.strip())
        if len(wanted) > settings.PLOT_MAX_COLUMNS:
            raise PlotError("Too many columns: {} asked for, at most {} (PLOT_MAX_COLUMNS)".format(
                len(wanted), settings.PLOT_MAX_COLUMNS))
        unknown = [c for c in wanted if c not in columns]
        if unknown:
            raise PlotError("Unknown column(s): {}".format(", ".join(unknown)))
        whole = args.get("since", "").strip().lower() == "all"
        if whole and args.get("until"):
            raise PlotError("since=all takes no until")
        chosen = wanted or main_columns(settings, columns)
        width = _bounded_int(args, "width", 800, MIN_WIDTH, MAX_WIDTH)
        height = _bounded_int(args, "height", 180, MIN_PANEL_HEIGHT, MAX_PANEL_HEIGHT)
        pixels = max(1, len(chosen)) * width * height
        if pixels > settings.PLOT_MAX_PIXELS:
            raise PlotError(
                "Plot too large: {} column(s) × width {} × height {} = {} pixels, at most {} (PLOT_MAX_PIXELS); "
                "ask for fewer columns or a smaller width or height".format(
                    max(1, len(chosen)), width, height, pixels, settings.PLOT_MAX_PIXELS)
            )
        return cls(
            chosen,
            TimeRange.from_args(None if whole else args.get("since"), args.get("until"), now),
            width,
            height,
            row_filters(settings, columns, args, PlotError),
            whole,
        )


def resolve_range(store, spec: PlotSpec, now: float) -> defer.Deferred:
    """
    Fire with ``spec`` once its range is known: for ``since=all`` the
    measurement times of the data the filters select (to now, or to the
    newest row if that is later), else as given.
    """
    if not spec.whole:
        return defer.succeed(spec)

    def found(extent):
        if extent is not None:
            low, high = extent
            spec.time_range = TimeRange(min(low, now - 60), max(now, high + 1))
        return spec

    return store.time_extent(spec.filters).addCallback(found)


def unit_for(settings, column: str) -> str:
    """
    A column's unit: ``DASHBOARD_UNITS``, else what its name says by the
    OpenSenseMap mapping's rule (``scd30_co2_ppm`` → ppm,
    ``bme280_temperature_c`` → °C), else none.
    """
    if column in settings.DASHBOARD_UNITS:
        return settings.DASHBOARD_UNITS[column]
    try:
        sensor = Mapper(settings, None).sensor_for(column)
    except Exception:  # a user's OSEM_* hook: a unit is not worth an error page
        return ""
    return sensor[1] if sensor and sensor[1] not in ("None", "") else ""


def plot_panels(store, settings, spec: PlotSpec, bounds: Sequence[float]) -> defer.Deferred:
    """Fire with ``(panels, series labels, sources left out)`` for ``spec`` over ``bounds``."""
    if not spec.columns:
        return defer.succeed(([], [], 0))

    def build(data):
        panels = [
            Panel(
                column,
                [(label, data.column_buckets(label, k)) for label in data.series],
                bands_for(column, settings.PLOT_CO2_COLUMN_REGEX, settings.PLOT_CO2_BANDS),
                unit_for(settings, column),
                bounds,
            )
            for k, column in enumerate(spec.columns)
        ]
        return panels, data.series, data.left_out

    return store.plot_series(spec.columns, bounds, spec.filters, settings.PLOT_MAX_SERIES).addCallback(build)


def render_plot(store, settings, spec: PlotSpec, title: str = "", now: Optional[float] = None) -> defer.Deferred:
    """Fire with the SVG text for ``spec``: one pixel-wide bucket per time step, a line per source."""

    def draw(spec):
        tr = spec.time_range
        bounds = bucket_edges(tr.since, tr.until, plot_area_width(spec.width))
        return plot_panels(store, settings, spec, bounds).addCallback(
            lambda found: render_svg(found[0], tr.since, tr.until, spec.width, spec.panel_height,
                                     title or ", ".join(spec.columns), found[1], found[2])
        )

    return resolve_range(store, spec, spec.time_range.until if now is None else now).addCallback(draw)


class PlotResource(Resource):
    """Serves ``image/svg+xml`` plots; 400 with a JSON error for a bad request."""

    isLeaf = True

    def __init__(self, settings: Settings, store: IStore, clock: IReactorTime):
        super().__init__()
        self.settings = settings
        self.store = store
        self.clock = clock

    def render_GET(self, request):
        args = query_args(request)
        now = self.clock.seconds()
        try:
            spec = PlotSpec.from_args(args, self.settings, self.store.columns, now)
        except (PlotError, TimeRangeError) as e:
            return error_reply(request, 400, str(e))

        def done(svg: str) -> None:
            request.setHeader(b"content-type", b"image/svg+xml; charset=utf-8")
            request.setHeader(b"cache-control", b"no-cache")
            finish_quietly(request, svg.encode("utf-8"))

        def failed(failure) -> None:
            log.failure("Plot failed", failure)
            finish_quietly(request, error_reply(request, 500, "The plot could not be drawn"))

        render_plot(self.store, self.settings, spec, now=now).addCallbacks(done, failed)
        return NOT_DONE_YET


def plot_query(spec: PlotSpec, extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Query arguments that reproduce ``spec`` (absolute times), for links."""
    args = {
        "cols": ",".join(spec.columns),
        "since": time_text(spec.time_range.since).replace(" ", "T") + "Z",
        "until": time_text(spec.time_range.until).replace(" ", "T") + "Z",
    }
    args.update(extra or {})
    return args
