"""
Arithmetic of the plot rollups: periods, and buckets cut into pieces.

The store keeps, per plotted column and per source (transport, box), the
min, max and count of the numeric values of every minute and every hour of
measurement time (:meth:`co2logd.store.Store.plot_series`, :mod:`co2logd.mtime`).  A plot bucket
``[lo, hi)`` is answered from whole hours in its middle, whole minutes next
to them, and the rows themselves only in the ragged ends shorter than a
minute, so the answer is the exact min and max of the bucket's rows while
a bucket spanning days reads a few dozen summaries instead of every row.

Times here are integer microseconds since the epoch (UTC), so period edges
are exact; the store compares them as stored text (:func:`co2logd.charts.timerange.time_text`).
No SQL, no reactor.
"""

from __future__ import annotations

import datetime
import re
from typing import List, Optional, Sequence, Tuple

MINUTE = 60
HOUR = 3600
SPANS = (MINUTE, HOUR)
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


def cut(lo: int, hi: int) -> Piece:
    """
    Cut the bucket ``[lo, hi)`` (microseconds) into whole hours, whole
    minutes around them and ragged ends shorter than a minute.
    """
    m1, m2 = _ceil(lo, MINUTE * SECOND_US), hi // (MINUTE * SECOND_US) * MINUTE * SECOND_US
    if m1 >= m2:
        return Piece([(lo, hi)] if lo < hi else [], [])
    exact = []
    if lo < m1:
        exact.append((lo, m1))
    if m2 < hi:
        exact.append((m2, hi))
    h1, h2 = _ceil(lo, HOUR * SECOND_US), hi // (HOUR * SECOND_US) * HOUR * SECOND_US
    s = SECOND_US
    if h1 < h2:
        periods = [(HOUR, h1 // s, h2 // s)]
        if m1 < h1:
            periods.append((MINUTE, m1 // s, h1 // s))
        if h2 < m2:
            periods.append((MINUTE, h2 // s, m2 // s))
    else:
        periods = [(MINUTE, m1 // s, m2 // s)]
    return Piece(exact, periods)


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
    When every inner bound (UNIX seconds) is a whole hour, or a whole
    minute, the pieces of the whole range ``[bounds[0], bounds[-1])`` as one
    :class:`Piece` (hours only where inner bounds are whole hours): each of
    its periods then lies inside exactly one bucket, so a plot can read each
    span once for the whole range.  None otherwise.
    """
    inner = bounds[1:-1]
    if len(bounds) < 2 or any(b != int(b) for b in inner):
        return None
    if all(int(b) % HOUR == 0 for b in inner):
        piece = cut(int(round(bounds[0] * SECOND_US)), int(round(bounds[-1] * SECOND_US)))
    elif all(int(b) % MINUTE == 0 for b in inner):
        lo, hi = int(round(bounds[0] * SECOND_US)), int(round(bounds[-1] * SECOND_US))
        m1, m2 = _ceil(lo, MINUTE * SECOND_US), hi // (MINUTE * SECOND_US) * MINUTE * SECOND_US
        if m1 >= m2:
            return None
        piece = Piece([r for r in ((lo, m1), (m2, hi)) if r[0] < r[1]], [(MINUTE, m1 // SECOND_US, m2 // SECOND_US)])
    else:
        return None
    texts = {int(round(bounds[0] * SECOND_US)): bounds[0], int(round(bounds[-1] * SECOND_US)): bounds[-1]}
    piece.exact = [(texts.get(x, x / SECOND_US), texts.get(y, y / SECOND_US)) for x, y in piece.exact]
    return piece if piece.periods else None


def text_of(us: int) -> str:
    """Microseconds since the epoch as :func:`co2logd.charts.timerange.time_text` writes them."""
    when = EPOCH + datetime.timedelta(microseconds=us)
    return when.isoformat(" ", timespec="microseconds" if when.microsecond else "seconds")


def merge(pair: Tuple, low, high) -> Tuple:
    """A (min, max) pair widened by ``low`` and ``high`` (None: nothing yet)."""
    if low is None:
        return pair
    old_low, old_high = pair
    return (low if old_low is None or low < old_low else old_low, high if old_high is None or high > old_high else old_high)
