"""
Server-side SVG plots of downsampled time series.

The store hands over, per column, the min and max of every pixel-wide time
bucket (:meth:`co2logd.store.Store.plot_buckets`); this module only draws
them: one panel per column, stacked over a shared UTC time axis, with the
CO2 guidance bands behind columns that hold CO2.  Drawing both extremes of
every bucket means no spike is lost however many rows a pixel covers.

Plain text in, plain text out: no reactor, no database, no JavaScript.
"""

from __future__ import annotations

import datetime
import html
import math
import re
from typing import List, Optional, Sequence, Tuple

Bucket = Tuple[int, float, float]  # (bucket index, min, max)

LEFT, RIGHT, TOP, BOTTOM = 58, 14, 24, 22
COLOURS = ("#1f6fb2", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#16a085")
BAND_FILLS = ("#e3f4e1", "#fff4cc", "#fde0dc")
TIME_STEPS = [
    1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 2 * 3600, 3 * 3600, 6 * 3600, 12 * 3600,
    86400, 2 * 86400, 7 * 86400, 14 * 86400, 30 * 86400, 61 * 86400, 91 * 86400, 182 * 86400, 365 * 86400,
]


def plot_area_width(width: int) -> int:
    """Pixels of the drawing area of a plot ``width`` wide: one time bucket each."""
    return max(10, width - LEFT - RIGHT)


def bucket_edges(since: float, until: float, buckets: int) -> List[float]:
    """``buckets + 1`` equally spaced times from ``since`` to ``until``."""
    step = (until - since) / buckets
    return [since + i * step for i in range(buckets)] + [until]


class Panel:
    """One column's buckets, and whether the CO2 bands belong behind it."""

    def __init__(self, column: str, buckets: Sequence[Bucket], bands: Sequence[float] = ()):
        self.column = column
        self.buckets = list(buckets)
        self.bands = sorted(bands)


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


def render_panel(panel: Panel, colour: str, since: float, until: float, width: int, height: int, top: float) -> List[str]:
    """The SVG elements of one panel whose box starts at ``top``."""
    area = plot_area_width(width)
    y0, y1 = top + TOP, top + height - BOTTOM
    out = [
        '<g class="panel" data-column="{}">'.format(html.escape(panel.column)),
        '<text class="title" x="{}" y="{}">{}</text>'.format(LEFT, _num(top + TOP - 7), html.escape(panel.column)),
    ]
    if not panel.buckets:
        out.append('<rect class="frame" x="{}" y="{}" width="{}" height="{}"/>'.format(LEFT, _num(y0), area, _num(y1 - y0)))
        out.append('<text class="empty" x="{}" y="{}">no data in this range</text>'.format(_num(LEFT + area / 2), _num((y0 + y1) / 2)))
        out.append('<path class="series" data-column="{}" data-points="0" d=""/></g>'.format(html.escape(panel.column)))
        return out
    low, high, step = value_domain(panel.buckets)

    def y_of(value: float) -> float:
        return y1 - (value - low) / (high - low) * (y1 - y0)

    def x_of(index: int) -> float:
        return LEFT + index + 0.5

    if panel.bands:
        edges = [low] + [b for b in panel.bands if low < b < high] + [high]
        for k, (a, b) in enumerate(zip(edges, edges[1:])):
            level = sum(1 for t in panel.bands if t <= a)
            fill = BAND_FILLS[min(level, len(BAND_FILLS) - 1)]
            out.append('<rect class="band" x="{}" y="{}" width="{}" height="{}" fill="{}"/>'.format(
                LEFT, _num(y_of(b)), area, _num(y_of(a) - y_of(b)), fill))
        for threshold in panel.bands:
            if low < threshold < high:
                out.append('<line class="threshold" x1="{0}" x2="{1}" y1="{2}" y2="{2}"/>'.format(
                    LEFT, LEFT + area, _num(y_of(threshold))))
    value = low
    while value <= high + step / 2:
        y = _num(y_of(value))
        out.append('<line class="grid" x1="{0}" x2="{1}" y1="{2}" y2="{2}"/>'.format(LEFT, LEFT + area, y))
        out.append('<text class="ylabel" x="{}" y="{}">{}</text>'.format(LEFT - 4, _num(float(y) + 4), format_value(value, step)))
        value += step
    ticks, fmt = time_ticks(since, until, area)
    for t in ticks:
        x = _num(LEFT + (t - since) / (until - since) * area)
        out.append('<line class="grid" x1="{0}" x2="{0}" y1="{1}" y2="{2}"/>'.format(x, _num(y0), _num(y1)))
        label = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(fmt)
        out.append('<text class="xlabel" x="{}" y="{}">{}</text>'.format(x, _num(y1 + 15), label))
    out.append('<rect class="frame" x="{}" y="{}" width="{}" height="{}"/>'.format(LEFT, _num(y0), area, _num(y1 - y0)))
    points = path_points(panel.buckets, x_of, y_of)
    d = "".join("{}{},{}".format(c, _num(x), _num(y)) for c, x, y in points)
    out.append('<path class="series" data-column="{}" data-points="{}" stroke="{}" d="{}"/>'.format(
        html.escape(panel.column), len(points), colour, d))
    out.append("</g>")
    return out


STYLE = (
    "text{font:11px sans-serif;fill:#333}.title{font-weight:bold;font-size:12px}"
    ".ylabel{text-anchor:end}.xlabel{text-anchor:middle}.empty{text-anchor:middle;fill:#888}"
    ".grid{stroke:#e4e4e4;stroke-width:1}.frame{fill:none;stroke:#999}"
    ".threshold{stroke:#b07a00;stroke-dasharray:4 3}"
    ".series{fill:none;stroke-width:1.3;stroke-linejoin:round}"
)


def render_svg(panels: Sequence[Panel], since: float, until: float, width: int = 800, panel_height: int = 180, title: str = "") -> str:
    """A whole SVG document: the panels stacked, sized ``width`` × (panels × ``panel_height``)."""
    height = max(1, len(panels)) * panel_height
    out = [
        '<svg xmlns="http://www.w3.org/2000/svg" class="plot" viewBox="0 0 {w} {h}" width="{w}" height="{h}" '
        'role="img" aria-label="{t}">'.format(w=width, h=height, t=html.escape(title or "plot")),
        "<style>{}</style>".format(STYLE),
    ]
    for k, panel in enumerate(panels):
        out += render_panel(panel, COLOURS[k % len(COLOURS)], since, until, width, panel_height, k * panel_height)
    out.append("</svg>")
    return "\n".join(out)


def bands_for(column: str, pattern: "re.Pattern[str]", bands: Sequence[float]) -> Sequence[float]:
    """The guidance bands when ``column`` matches ``pattern``, else none."""
    return bands if pattern.search(column) else ()
