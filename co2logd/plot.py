"""
Server-side SVG plots of downsampled time series.

The store hands over, per column and source, the min and max of every
pixel-wide bucket of measurement time (:meth:`co2logd.store.Store.plot_series`);
this module only draws them: one panel per column, a line per source in
Okabe–Ito colours, the CO2 guidance bands behind columns that hold CO2.
:func:`render_svg` is the stand-alone ``/plot``; :func:`render_html_panel`
the dashboard's, whose axis labels and legend are HTML text so they keep
the page's size on a phone.  Drawing both extremes of
every bucket means no spike is lost however many rows a pixel covers.

Plain text in, plain text out: no reactor, no database, no JavaScript.
"""

from __future__ import annotations

import datetime
import html
import math
import re
from typing import Dict, List, Optional, Sequence, Tuple

from co2logd.rollup import STEPS

Bucket = Tuple[int, float, float]  # (bucket index, min, max)

LEFT, RIGHT, TOP, BOTTOM = 58, 14, 24, 22
# Okabe & Ito's palette for colour-blind readers (black and yellow last: least legible on white)
OKABE_ITO = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")
BAND_FILLS = ("#e3f4e1", "#fff4cc", "#fde0dc")
TIME_STEPS = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 61 * 86400, 91 * 86400, 182 * 86400, 365 * 86400,
]


def plot_area_width(width: int) -> int:
    """Pixels of the drawing area of a plot ``width`` wide: one time bucket each."""
    return max(10, width - LEFT - RIGHT)


def bucket_edges(since: float, until: float, buckets: int) -> List[float]:
    """
    At most ``buckets + 1`` times from ``since`` to ``until``: equally spaced,
    and when a bucket spans a minute or more, on whole periods from the
    epoch, a step from :data:`co2logd.rollup.STEPS` (2 minutes, 20 minutes,
    12 hours...) or whole days, so the rollups answer every bucket but the
    two at the ends without reading rows, from a few periods each.
    """
    raw = (until - since) / buckets
    if raw < 60:
        return [since + i * raw for i in range(buckets)] + [until]
    steps = [s for s in STEPS if s >= raw]
    step = steps.pop(0) if steps else math.ceil(raw / 86400) * 86400
    while True:
        first = math.floor(since / step) * step + step
        inner = [float(t) for t in range(int(first), int(math.ceil(until)), int(step)) if since < t < until]
        if len(inner) + 1 <= buckets:
            return [since] + inner + [until]
        step = steps.pop(0) if steps else (step // 86400 + 1) * 86400


class Panel:
    """One column: its unit, one series of buckets per source (label, buckets), and the CO2 bands if any."""

    def __init__(
        self,
        column: str,
        series: Sequence[Tuple[str, Sequence[Bucket]]] = (),
        bands: Sequence[float] = (),
        unit: str = "",
        edges: Optional[Sequence[float]] = None,
    ):
        self.column = column
        #: the buckets' time edges (bucket i is drawn at its middle); None: bucket i is at x = i + 0.5
        self.edges = list(edges) if edges is not None else None
        self.series = [(label, list(buckets)) for label, buckets in series]
        self.bands = sorted(bands)
        self.unit = unit

    @property
    def buckets(self) -> List[Bucket]:
        """Every series' buckets together (for the value axis)."""
        return [b for _, buckets in self.series for b in buckets]

    @property
    def title(self) -> str:
        """The column name with its unit, like ``scd30_co2_ppm (ppm)``."""
        return "{} ({})".format(self.column, self.unit) if self.unit else self.column


def colours_for(labels: Sequence[str]) -> Dict[str, str]:
    """A colour per series label, in order, from the Okabe–Ito palette (colour-blind safe)."""
    return {label: OKABE_ITO[k % len(OKABE_ITO)] for k, label in enumerate(labels)}


def nice_step(span: float, count: int) -> float:
    """A 1/2/5×10ⁿ step giving about ``count`` intervals over ``span``."""
    if span <= 0:
        return 1.0
    raw = span / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        if raw <= factor * magnitude:
            return factor * magnitude
    return 10 * magnitude


def value_domain(buckets: Sequence[Bucket]) -> Tuple[float, float, float]:
    """(low, high, tick step) covering every bucket, on tick boundaries."""
    low = min(b[1] for b in buckets)
    high = max(b[2] for b in buckets)
    if high == low:
        low, high = low - 1, high + 1
    step = nice_step(high - low, 4)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def format_value(value: float, step: float) -> str:
    """A tick label with as many decimals as the step needs."""
    decimals = max(0, -int(math.floor(math.log10(step)))) if step < 1 else 0
    return "{:.{}f}".format(value, decimals)


def time_ticks(since: float, until: float, width: int) -> Tuple[List[float], str]:
    """Tick times on UTC multiples of a round step, and their strftime format."""
    span = until - since
    wanted = max(2, width // 110)
    step = next((s for s in TIME_STEPS if span / s <= wanted), TIME_STEPS[-1])
    first = math.ceil(since / step) * step
    ticks = []
    t = first
    while t <= until and len(ticks) < 100:
        ticks.append(t)
        t += step
    if step >= 86400:
        fmt = "%Y-%m-%d" if span > 120 * 86400 else "%m-%d"
    elif span > 86400:
        fmt = "%m-%d %H:%M"
    elif step < 60:
        fmt = "%H:%M:%S"
    else:
        fmt = "%H:%M"
    return ticks, fmt


def path_points(buckets: Sequence[Bucket], x_of, y_of) -> List[Tuple[str, float, float]]:
    """
    The polyline through every bucket's min and max, as (command, x, y).

    Within a bucket the extreme nearer the previous point comes first, so
    the line does not zigzag needlessly; a gap much wider than the usual
    spacing (a silent sensor) starts a new line instead of bridging it.
    """
    if not buckets:
        return []
    gaps = sorted(b[0] - a[0] for a, b in zip(buckets, buckets[1:]))
    usual = gaps[len(gaps) // 2] if gaps else 1
    break_after = max(2, 5 * usual)
    points: List[Tuple[str, float, float]] = []
    previous_index: Optional[int] = None
    previous_y: Optional[float] = None
    for index, low, high in buckets:
        x = x_of(index)
        y_low, y_high = y_of(low), y_of(high)
        move = previous_index is None or index - previous_index > break_after
        if previous_y is not None and abs(previous_y - y_high) < abs(previous_y - y_low):
            ys = [y_high, y_low]
        else:
            ys = [y_low, y_high]
        if y_low == y_high:
            ys = [y_low]
        for k, y in enumerate(ys):
            points.append(("M" if move and k == 0 else "L", x, y))
        previous_index, previous_y = index, ys[-1]
    return points


def _num(value: float) -> str:
    return "{:.1f}".format(value).rstrip("0").rstrip(".")


class Frame:
    """Where one panel draws: value and time scales over a plot area ``area`` buckets wide."""

    def __init__(self, panel: Panel, since: float, until: float, area: int, y0: float, y1: float):
        self.since, self.until, self.area, self.y0, self.y1 = since, until, area, y0, y1
        self.low, self.high, self.step = value_domain(panel.buckets) if panel.buckets else (0.0, 1.0, 1.0)

    def y_of(self, value: float) -> float:
        return self.y1 - (value - self.low) / (self.high - self.low) * (self.y1 - self.y0)

    def x_of_time(self, t: float) -> float:
        return (t - self.since) / (self.until - self.since) * self.area

    def value_ticks(self) -> List[float]:
        ticks, value = [], self.low
        while value <= self.high + self.step / 2 and len(ticks) < 50:
            ticks.append(value)
            value += self.step
        return ticks


def _body(panel: Panel, frame: Frame, colours: Dict[str, str], left: float, scaled: bool) -> List[str]:
    """Bands, grid and one path per series, x from ``left``; ``scaled``: the SVG is stretched, keep strokes thin."""
    out = []
    stretch = ' vector-effect="non-scaling-stroke"' if scaled else ""
    area, low, high = frame.area, frame.low, frame.high
    if panel.bands and panel.buckets:
        edges = [low] + [b for b in panel.bands if low < b < high] + [high]
        for a, b in zip(edges, edges[1:]):
            level = sum(1 for t in panel.bands if t <= a)
            fill = BAND_FILLS[min(level, len(BAND_FILLS) - 1)]
            out.append('<rect class="band" x="{}" y="{}" width="{}" height="{}" fill="{}"/>'.format(
                _num(left), _num(frame.y_of(b)), area, _num(frame.y_of(a) - frame.y_of(b)), fill))
        for threshold in panel.bands:
            if low < threshold < high:
                out.append('<line class="threshold" x1="{0}" x2="{1}" y1="{2}" y2="{2}"{3}/>'.format(
                    _num(left), _num(left + area), _num(frame.y_of(threshold)), stretch))
    if panel.buckets:
        for value in frame.value_ticks():
            out.append('<line class="grid" x1="{0}" x2="{1}" y1="{2}" y2="{2}"{3}/>'.format(
                _num(left), _num(left + area), _num(frame.y_of(value)), stretch))
        for t in time_ticks(frame.since, frame.until, area)[0]:
            x = _num(left + frame.x_of_time(t))
            out.append('<line class="grid" x1="{0}" x2="{0}" y1="{1}" y2="{2}"{3}/>'.format(
                x, _num(frame.y0), _num(frame.y1), stretch))
    edges = panel.edges
    if edges is None:
        def x_of(i: int) -> float:
            return left + i + 0.5
    else:
        def x_of(i: int) -> float:
            return left + frame.x_of_time((edges[i] + edges[i + 1]) / 2)
    for label, buckets in panel.series:
        points = path_points(buckets, x_of, frame.y_of)
        d = "".join(["%s%.1f,%.1f" % point for point in points])
        out.append('<path class="series" data-source="{s}" data-column="{c}" data-points="{n}" stroke="{colour}"{v} d="{d}"/>'.format(
            s=html.escape(label), c=html.escape(panel.column), n=len(points), colour=colours.get(label, OKABE_ITO[0]),
            v=stretch, d=d))
    return out


def render_panel(panel: Panel, colours: Dict[str, str], since: float, until: float, width: int, height: int, top: float) -> List[str]:
    """The SVG elements of one panel whose box starts at ``top`` (the stand-alone /plot)."""
    area = plot_area_width(width)
    frame = Frame(panel, since, until, area, top + TOP, top + height - BOTTOM)
    out = [
        '<g class="panel" data-column="{}">'.format(html.escape(panel.column)),
        '<text class="title" x="{}" y="{}">{}</text>'.format(LEFT, _num(top + TOP - 7), html.escape(panel.title)),
    ]
    out += _body(panel, frame, colours, LEFT, scaled=False)
    if not panel.buckets:
        out.append('<text class="empty" x="{}" y="{}">no data in this range</text>'.format(
            _num(LEFT + area / 2), _num((frame.y0 + frame.y1) / 2)))
    else:
        for value in frame.value_ticks():
            out.append('<text class="axis ylabel" x="{}" y="{}">{}</text>'.format(
                LEFT - 4, _num(frame.y_of(value) + 4), format_value(value, frame.step)))
        ticks, fmt = time_ticks(since, until, area)
        for t in ticks:
            out.append('<text class="axis xlabel" x="{}" y="{}">{}</text>'.format(
                _num(LEFT + frame.x_of_time(t)), _num(frame.y1 + 15), _tick_label(t, fmt)))
    out.append('<rect class="frame" x="{}" y="{}" width="{}" height="{}"/>'.format(LEFT, _num(frame.y0), area, _num(frame.y1 - frame.y0)))
    out.append("</g>")
    return out


def _tick_label(t: float, fmt: str) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(fmt)


STYLE = (
    "text{font:11px sans-serif;fill:#333}.title{font-weight:bold;font-size:12px}"
    ".ylabel{text-anchor:end}.xlabel{text-anchor:middle}.empty{text-anchor:middle;fill:#888}"
    ".grid{stroke:#e4e4e4;stroke-width:1}.frame{fill:none;stroke:#999}"
    ".threshold{stroke:#b07a00;stroke-dasharray:4 3}"
    ".series{fill:none;stroke-width:1.5;stroke-linejoin:round}"
)
LEGEND_HEIGHT = 18


def render_svg(
    panels: Sequence[Panel],
    since: float,
    until: float,
    width: int = 800,
    panel_height: int = 180,
    title: str = "",
    labels: Sequence[str] = (),
    left_out: int = 0,
) -> str:
    """
    A whole SVG document (``GET /plot``): a legend line (one entry per
    series label, and how many sources are left out), then the panels
    stacked, sized ``width`` × (legend + panels × ``panel_height``).
    """
    colours = colours_for(labels)
    legend = LEGEND_HEIGHT if labels or left_out else 0
    height = legend + max(1, len(panels)) * panel_height
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        'role="img" aria-label="{t}">'.format(w=width, h=height, t=html.escape(title or "plot")),
        "<style>{}</style>".format(STYLE),
    ]
    x = float(LEFT)
    for label in labels:
        out.append(
            '<g class="legend-entry" data-source="{s}"><rect x="{x}" y="4" width="14" height="4" fill="{c}"/>'
            '<text x="{tx}" y="12">{s}</text></g>'.format(s=html.escape(label), x=_num(x), c=colours[label], tx=_num(x + 18))
        )
        x += 30 + 7 * len(label)
    if left_out:
        out.append('<text class="left-out" x="{}" y="12">{} more source{} not shown</text>'.format(
            _num(x), left_out, "" if left_out == 1 else "s"))
    for k, panel in enumerate(panels):
        out += render_panel(panel, colours, since, until, width, panel_height, legend + k * panel_height)
    out.append("</svg>")
    return "\n".join(out)


#: the dashboard's drawing area in SVG units (stretched to the page width, so text is never drawn inside it)
HTML_AREA, HTML_HEIGHT = 800, 160


def render_html_panel(panel: Panel, colours: Dict[str, str], since: float, until: float) -> str:
    """
    One dashboard panel as HTML: title with unit, value labels in a column
    of their own and time labels under the plot as HTML text (so their
    size is the page's, not scaled with the SVG), and the lines in an SVG
    stretched to the width left (``preserveAspectRatio="none"``: one unit
    per time bucket across, strokes kept thin).
    """
    frame = Frame(panel, since, until, HTML_AREA, 0.0, float(HTML_HEIGHT))
    svg = [
        '<svg class="lines" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" preserveAspectRatio="none" '
        'data-since="{s}" data-until="{u}" role="img" aria-label="{t}">'.format(
            w=HTML_AREA, h=HTML_HEIGHT, s=_num(since), u=_num(until), t=html.escape(panel.title)),
    ]
    svg += _body(panel, frame, colours, 0.0, scaled=True)
    svg.append("</svg>")
    ylabels, xlabels = [], []
    if panel.buckets:
        for value in frame.value_ticks():
            ylabels.append('<span class="axis" style="top:{:.2f}%">{}</span>'.format(
                100.0 * frame.y_of(value) / HTML_HEIGHT, format_value(value, frame.step)))
        ticks, fmt = time_ticks(since, until, 560)  # a tick per ~110 px of a typical screen
        for t in ticks:
            xlabels.append('<span class="axis" style="left:{:.2f}%">{}</span>'.format(
                100.0 * frame.x_of_time(t) / HTML_AREA, _tick_label(t, fmt)))
    empty = "" if panel.buckets else '<p class="empty">no data in this range</p>'
    return (
        '<figure class="panel" data-column="{c}"><figcaption>{title}</figcaption>'
        '<div class="chart"><div class="yaxis">{y}</div><div class="area">{svg}{empty}'
        '<div class="xaxis">{x}</div></div></div></figure>'.format(
            c=html.escape(panel.column), title=html.escape(panel.title), y="".join(ylabels),
            svg="".join(svg), empty=empty, x="".join(xlabels))
    )


def render_html_legend(labels: Sequence[str], left_out: int = 0) -> str:
    """The dashboard's legend: one entry per series, and how many sources are left out."""
    colours = colours_for(labels)
    entries = "".join(
        '<li class="legend-entry" data-source="{s}"><span class="swatch" style="background:{c}"></span>{s}</li>'.format(
            s=html.escape(label), c=colours[label])
        for label in labels
    )
    more = '<li class="left-out">{} more source{} not shown (busiest first)</li>'.format(
        left_out, "" if left_out == 1 else "s") if left_out else ""
    return '<ul class="legend">{}{}</ul>'.format(entries, more) if entries or more else ""


def bands_for(column: str, pattern: "re.Pattern[str]", bands: Sequence[float]) -> Sequence[float]:
    """The guidance bands when ``column`` matches ``pattern``, else none."""
    return bands if pattern.search(column) else ()
