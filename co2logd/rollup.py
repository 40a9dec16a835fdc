"""
Arithmetic of the plot rollups: periods, and buckets cut into pieces.

The store keeps, per plotted column and per source (transport, box), the
min, max and count of the numeric values of every period of measurement
time of each span in :data:`SPANS` (minute, 10 minutes, hour, 6 hours, day;
each span divides the next, all aligned on the epoch; see
:meth:`co2logd.store.Store.plot_series`, :mod:`co2logd.store.mtime`).  A plot
bucket ``[lo, hi)`` is answered from whole periods of the largest span that
fits in its middle, smaller spans toward its ends, and the rows themselves
only in the ragged ends shorter than a minute, so the answer is the exact
min and max of the bucket's rows while a bucket spanning days reads a few
summaries instead of every row.  Plot buckets are cut on whole periods
(:func:`co2logd.plot.bucket_edges` picks steps from :data:`STEPS`), so a
year's view reads a few thousand 6-hour summaries, not 500,000 minutes.

Times here are integer microseconds since the epoch (UTC), so period edges
are exact; the store compares them as stored text (:func:`co2logd.timerange.time_text`).
No SQL, no reactor.
"""

from __future__ import annotations

import datetime
import re
from typing import List, Optional, Sequence, Tuple

MINUTE = 60
HOUR = 3600
DAY = 86400
#: the rollup periods, shortest first: each divides the next
SPANS = (MINUTE, 10 * MINUTE, HOUR, 6 * HOUR, DAY)
#: plot bucket steps of a minute and more: each a multiple of a span, at most 5 periods of it
#: (beyond the last: whole days)
STEPS = (60, 120, 180, 300, 600, 1200, 1800, 3600, 7200, 10800, 21600, 43200, 86400)
SECOND_US = 1_000_000
EPOCH = datetime.datetime(1970, 1, 1)

MINUTE_KEY = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}\Z")


def minute_start(key: Optional[str]) -> Optional[int]:
    """
    UNIX seconds of a minute key ``YYYY-MM-DD HH:MM`` (the first 16
    characters of a stored upload time), or None if it is not a real minute.
    """
    if key is None or not MINUTE_KEY.match(key):
        return None
    try:
        when = datetime.datetime.strptime(key, "%Y-%m-%d %H:%M")
    except ValueError:
        return None
    return (when - EPOCH) // datetime.timedelta(seconds=1)


def micros(text: str) -> Optional[int]:
    """Microseconds since the epoch of a bucket bound as stored text (naive = UTC), or None."""
    try:
        when = datetime.datetime.fromisoformat(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is not None:
        when = when.astimezone(datetime.timezone.utc).replace(tzinfo=None)
    return (when - EPOCH) // datetime.timedelta(microseconds=1)


class Piece:
    """
    How one bucket is answered: ``exact`` time ranges (microseconds from
    :func:`cut`, stored-time text from :func:`plan`; read from the rows) and ``periods`` as ``(span, first start, end start)`` in
    seconds (read from the rollups of that span: starts in ``[first, end)``).
    """

    __slots__ = ("exact", "periods")

    def __init__(self, exact: List[Tuple[int, int]], periods: List[Tuple[int, int, int]]):
        self.exact = exact
        self.periods = periods


def _ceil(value: int, step: int) -> int:
    return -(-value // step) * step


def cut(lo: int, hi: int, spans: Sequence[int] = SPANS) -> Piece:
    """
    Cut the bucket ``[lo, hi)`` (microseconds) into whole periods of the
    largest of ``spans`` (shortest first, each dividing the next) that fits,
    periods of the smaller spans around them and ragged ends shorter than
    the smallest span.  Periods come largest first, then the left side's
    before the right side's; exact ranges left to right.
    """
    periods: List[Tuple[int, int, int]] = []
    exact: List[Tuple[int, int]] = []
    _cover(lo, hi, sorted(spans, reverse=True), periods, exact)
    exact.sort()
    return Piece(exact, _ordered(periods))


def _cover(lo: int, hi: int, spans: Sequence[int], periods: list, exact: list) -> None:
    for k, span in enumerate(spans):
        unit = span * SECOND_US
        a, b = _ceil(lo, unit), hi // unit * unit
        if a < b:
            periods.append((span, a // SECOND_US, b // SECOND_US))
            _cover(lo, a, spans[k + 1:], periods, exact)
            _cover(b, hi, spans[k + 1:], periods, exact)
            return
    if lo < hi:
        exact.append((lo, hi))


def _ordered(periods: List[Tuple[int, int, int]]) -> List[Tuple[int, int, int]]:
    """Largest span first, then by start (the left side before the right)."""
    return sorted(periods, key=lambda p: (-p[0], p[1]))


def span_dividing(values: Sequence[float]) -> Optional[int]:
    """The largest of :data:`SPANS` that divides every one of ``values`` (whole seconds), or None."""
    if any(v != int(v) for v in values):
        return None
    for span in reversed(SPANS):
        if all(int(v) % span == 0 for v in values):
            return span
    return None


def plan(bounds: Sequence[str]) -> Optional[List[Piece]]:
    """
    The pieces of every bucket ``[bounds[i], bounds[i+1])``, or None when the
    rollups would not help (no bucket holds a whole minute) or a bound
    cannot be read.
    """
    edges = [micros(b) for b in bounds]
    if len(edges) < 2 or any(e is None for e in edges):
        return None
    pieces = []
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        piece = cut(a, b)  # type: ignore[arg-type]
        texts = {a: bounds[i], b: bounds[i + 1]}  # the bucket's own bounds stay as given
        piece.exact = [(texts.get(x) or text_of(x), texts.get(y) or text_of(y)) for x, y in piece.exact]
        pieces.append(piece)
    if not any(p.periods for p in pieces):
        return None
    return pieces


def plan_seconds(bounds: Sequence[float]) -> Optional[List[Piece]]:
    """
    :func:`plan` for bounds in UNIX seconds (measurement time): ``exact``
    ranges in seconds too, the buckets' own bounds kept as given.  None when
    no bucket holds a whole minute.
    """
    if len(bounds) < 2:
        return None
    edges = [int(round(b * SECOND_US)) for b in bounds]
    pieces = []
    for i, (a, b) in enumerate(zip(edges, edges[1:])):
        piece = cut(a, b)
        texts = {a: bounds[i], b: bounds[i + 1]}
        piece.exact = [(texts.get(x, x / SECOND_US), texts.get(y, y / SECOND_US)) for x, y in piece.exact]
        pieces.append(piece)
    if not any(p.periods for p in pieces):
        return None
    return pieces


def whole_range_piece(bounds: Sequence[float]) -> Optional[Piece]:
    """
    When every inner bound (UNIX seconds) is a whole period of some span,
    the pieces of the whole range ``[bounds[0], bounds[-1])`` as one
    :class:`Piece`, using only spans up to the largest that divides every
    inner bound: each of its periods then lies inside exactly one bucket,
    so a plot can read each span once for the whole range.  None otherwise.
    """
    inner = bounds[1:-1]
    if len(bounds) < 2:
        return None
    largest = span_dividing(inner) if inner else SPANS[-1]
    if largest is None:
        return None
    lo, hi = int(round(bounds[0] * SECOND_US)), int(round(bounds[-1] * SECOND_US))
    piece = cut(lo, hi, [s for s in SPANS if s <= largest])
    texts = {lo: bounds[0], hi: bounds[-1]}
    piece.exact = [(texts.get(x, x / SECOND_US), texts.get(y, y / SECOND_US)) for x, y in piece.exact]
    return piece if piece.periods else None


def equal_steps(bounds: Sequence[float]) -> Optional[Tuple[int, int]]:
    """
    ``(first inner bound, step)`` in whole seconds when the inner bounds are
    equally spaced whole seconds (as :func:`co2logd.plot.bucket_edges` cuts
    them), so a period's bucket is arithmetic; None otherwise.
    """
    inner = bounds[1:-1]
    if not inner or any(b != int(b) for b in inner):
        return None
    if len(inner) == 1:
        return int(inner[0]), 1
    step = int(inner[1]) - int(inner[0])
    if step <= 0 or any(int(b) - int(a) != step for a, b in zip(inner, inner[1:])):
        return None
    return int(inner[0]), step


def counting_span(since: float, until: float) -> int:
    """The span whose periods count a range's rows per source well enough to rank sources: at least 6 per range."""
    for span in reversed(SPANS):
        if until - since >= 6 * span:
            return span
    return SPANS[0]


def text_of(us: int) -> str:
    """Microseconds since the epoch as :func:`co2logd.timerange.time_text` writes them."""
    when = EPOCH + datetime.timedelta(microseconds=us)
    return when.isoformat(" ", timespec="microseconds" if when.microsecond else "seconds")


def merge(pair: Tuple, low, high) -> Tuple:
    """A (min, max) pair widened by ``low`` and ``high`` (None: nothing yet)."""
    if low is None:
        return pair
    old_low, old_high = pair
    return (low if old_low is None or low < old_low else old_low, high if old_high is None or high > old_high else old_high)
