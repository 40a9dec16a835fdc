"""
Time ranges for plots, downloads and the dashboard.

Users write ``since=24h``, ``until=2024-05-01``, ``since=1714521600``; the
database holds the upload time as ISO text (``2024-05-01 12:00:00.250000+00:00``,
what :func:`co2logd.store.sqlite.sql_value` writes).  Bounds are turned into text of
the same shape so the comparison is a plain text comparison the index on the
upload-time column can serve, with no per-row parsing.
"""

from __future__ import annotations

import datetime
import re
from typing import Optional

UTC = datetime.timezone.utc

RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w|y)\s*$", re.IGNORECASE)
UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}


class TimeRangeError(ValueError):
    """A time the user wrote that co2logd cannot read; the message says what is accepted."""


# the times a datetime can show (years 1 to 9999, a day of margin for offsets)
EARLIEST = -62135510400.0
LATEST = 253402214400.0


def parse_time(text: str, now: float) -> float:
    """
    UNIX seconds for ``text``: a duration back from ``now`` (``90s``, ``15m``,
    ``24h``, ``7d``, ``2w``, ``1y``), UNIX seconds, or an ISO date/time (UTC
    unless it carries an offset).  A time outside the years 1 to 9999 (or
    not a number at all, like ``nan``) is a TimeRangeError too.
    """
    seconds = _parse_time(text, now)
    if not EARLIEST <= seconds <= LATEST:  # also False for nan
        raise TimeRangeError("The time {!r} is outside the years 1 to 9999".format(text.strip()[:40]))
    return seconds


def _parse_time(text: str, now: float) -> float:
    text = text.strip()
    match = RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * UNITS[match.group(2).lower()]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise TimeRangeError(
            "Cannot read the time {!r}: use a duration back from now (24h, 7d, 90m, 1y), "
            "UNIX seconds or an ISO date like 2024-05-01 or 2024-05-01T12:00".format(text)
        )
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def time_text(seconds: float) -> str:
    """
    UNIX seconds as a bound comparable with stored upload times: UTC,
    ``YYYY-MM-DD HH:MM:SS`` with ``.ffffff`` only when there is a fraction
    (the stored values follow the same rule, and ``+`` sorts before ``.``).
    """
    when = datetime.datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
    spec = "microseconds" if when.microsecond else "seconds"
    return when.isoformat(" ", timespec=spec)


def parse_stored_time(text: Optional[str]) -> Optional[float]:
    """UNIX seconds of a stored upload time (naive text taken as UTC); None if unreadable."""
    if not text:
        return None
    try:
        when = datetime.datetime.fromisoformat(str(text))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def human_age(seconds: float) -> str:
    """A short, rounded duration: ``45 s``, ``12 min``, ``3 h``, ``5 d``."""
    seconds = max(0.0, seconds)
    for limit, unit, size in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return "{} {}".format(int(seconds // size), unit)
    return "{} d".format(int(seconds // 86400))


class TimeRange:
    """A validated ``[since, until)`` in UNIX seconds, with the defaults filled in."""

    def __init__(self, since: float, until: float):
        if not until > since:
            raise TimeRangeError("The range is empty: 'until' must be later than 'since'")
        self.since = since
        self.until = until

    @classmethod
    def from_args(cls, since: Optional[str], until: Optional[str], now: float, default_since: str = "24h") -> "TimeRange":
        """
        Read ``since``/``until`` query arguments.  A duration in ``until``
        counts back from now, one in ``since`` back from ``until``; missing
        or empty: ``default_since`` and now.
        """
        end = parse_time(until, now) if until else now
        return cls(parse_time(since or default_since, end), end)

    @property
    def seconds(self) -> float:
        """The length of the range."""
        return self.until - self.since
