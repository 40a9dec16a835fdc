"""
Line-protocol points → a co2logd table (column → list of values).

One row per point:

* ``measurement`` holds the measurement name, ``time`` the point's time as
  an aware UTC datetime (nanoseconds cut to microseconds; a point without a
  timestamp gets the time of arrival);
* every tag is a text column, every field a column of its type (float,
  integer, text; booleans as 0/1 integers);
* keys are lower-cased (the ingest service then checks them as for every
  upload).

Refused with a :class:`~co2logd.errors.IngestError` 400 (the whole batch): a
line whose keys collide once lower-cased (two keys, a tag and a field, or a
key named ``measurement`` or ``time``), and an unsigned value above the
64-bit signed range SQLite stores.  Points with the same measurement, tag
set and time are one point, as in InfluxDB: their fields are merged, the
later value winning.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from co2logd.dialects import lineprotocol
from co2logd.dialects.lineprotocol import INT64_MAX, Point
from co2logd.errors import IngestError

Table = Dict[str, List[Any]]

MEASUREMENT_COLUMN = "measurement"
TIME_COLUMN = "time"
RESERVED = frozenset((MEASUREMENT_COLUMN, TIME_COLUMN))
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def refusal(point: Point, reason: str) -> IngestError:
    """The 400 for a point that parses but cannot be stored; it names the line."""
    return IngestError(400, "bad-column", "unable to store line {}: {}".format(point.line, reason))


def time_of(time_ns: int) -> datetime.datetime:
    """Nanoseconds since the epoch as an aware UTC datetime (cut to microseconds)."""
    return EPOCH + datetime.timedelta(microseconds=time_ns // 1000)


def table_of(points: Sequence[Point], now: float) -> Tuple[Table, int]:
    """
    The table for ``points`` and its row count; ``now`` (UNIX seconds) is
    the time of points without a timestamp.
    """
    arrival: Optional[datetime.datetime] = None
    rows: List[Dict[str, Any]] = []
    index: Dict[Any, int] = {}
    columns: Dict[str, None] = {MEASUREMENT_COLUMN: None, TIME_COLUMN: None}
    for point in points:
        row: Dict[str, Any] = {}
        for key, value in point.tags:
            name = key.lower()
            if name in RESERVED:
                raise refusal(point, "the tag {!r} would overwrite the {!r} column".format(key, name))
            if name in row:
                raise refusal(point, "the tags {!r} collide once lower-cased".format(name))
            row[name] = value
        tags = set(row)
        for key, field in point.fields.items():
            name = key.lower()
            if name in RESERVED:
                raise refusal(point, "the field {!r} would overwrite the {!r} column".format(key, name))
            if name in tags:
                raise refusal(point, "the tag and the field {!r} would share one column".format(name))
            if name in row:
                raise refusal(point, "the fields {!r} collide once lower-cased".format(name))
            if type(field) is int and field > INT64_MAX:
                raise refusal(
                    point,
                    "the unsigned value of field {!r} is above {} (64-bit signed integers are stored)".format(key, INT64_MAX),
                )
            row[name] = field
        if point.time_ns is None:
            if arrival is None:
                arrival = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
            when = arrival
        else:
            when = time_of(point.time_ns)
        identity = (point.measurement, tuple(sorted(point.tags)) if point.tags else (), point.time_ns)
        at = index.get(identity)
        if at is not None:  # InfluxDB's duplicate point: one point, fields merged, the later value wins
            rows[at].update(row)
        else:
            row[MEASUREMENT_COLUMN] = point.measurement
            row[TIME_COLUMN] = when
            index[identity] = len(rows)
            rows.append(row)
        for name in row:
            if name not in columns:
                columns[name] = None
    table: Table = {name: [row.get(name) for row in rows] for name in columns}
    return table, len(rows)


# -- the fast way for the common batch ----------------------------------------------

# a body whose every line is a point, a blank line or a comment, with no string
# values, escapes or carriage returns: Telegraf's numeric batches
_SIMPLE_BODY = re.compile(r"(?:{line}\n)*+(?:{line})?".format(line=lineprotocol.SIMPLE_LINE))


def table_of_body(body: bytes, precision: str, now: float, max_points: Optional[int] = None) -> Tuple[Table, int]:
    """
    :func:`table_of` of :func:`~co2logd.dialects.lineprotocol.parse`: the
    same table in a fraction of the time for bodies without strings,
    escapes, comments or CRLF (others take the general way).  A body one
    refuses the other refuses too, though with several problems the message
    may name another one first.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or '"' in text or "\\" in text or "\r" in text or "#" in text or _SIMPLE_BODY.fullmatch(text) is None:
        return table_of(lineprotocol.parse(body, precision, max_points), now)
    scale = lineprotocol.PRECISIONS[precision]
    arrival: Optional[datetime.datetime] = None
    lines = text.split("\n")
    size = len(lines)
    # columns filled by row number (a duplicate point writes into its first row), cut to the rows at the end
    measurements: List[Any] = [None] * size
    times: List[Any] = [None] * size
    columns: Dict[str, List[Any]] = {MEASUREMENT_COLUMN: measurements, TIME_COLUMN: times}
    index: Dict[Any, int] = {}
    tag_cache: Dict[str, Tuple[Tuple[Tuple[str, str], ...], Any]] = {}
    key_cache: Dict[str, str] = {}
    bools = _BOOLS
    nrows = 0
    count = 0
    for number, line in enumerate(lines, 1):
        parts = line.split(" ")
        if len(parts) != 3 or not parts[0]:
            parts = [part for part in parts if part]
            if not parts:
                continue
        count += 1
        if max_points is not None and count > max_points:
            raise lineprotocol.TooManyPoints(max_points)
        measurement, comma, tag_text = parts[0].partition(",")
        if len(parts) > 2:
            stamp = parts[2]
            time_ns: Optional[int] = int(stamp) * scale
            if not lineprotocol.TIME_MIN <= time_ns <= lineprotocol.TIME_MAX:  # type: ignore[operator]
                raise _error_at(line, number, "timestamp {} is out of range".format(stamp))
        else:
            time_ns = None
        if comma:
            cached = tag_cache.get(tag_text)
            if cached is None:
                cached = tag_cache[tag_text] = _tags(tag_text, number, line)
            tags, series_key = cached
        else:
            tags = series_key = ()
        identity = (measurement, series_key, time_ns)
        row = index.get(identity)
        if row is None:  # else InfluxDB's duplicate point: one point, fields merged, the later value wins
            row = index[identity] = nrows
            nrows += 1
            measurements[row] = measurement
            if time_ns is None:
                if arrival is None:
                    arrival = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
                times[row] = arrival
            else:
                times[row] = EPOCH + datetime.timedelta(microseconds=time_ns // 1000)
        for tag, tag_value in tags:
            column = columns.get(tag)
            if column is None:
                column = columns[tag] = [None] * size
            column[row] = tag_value
        seen: Dict[str, str] = {}
        for pair in parts[1].split(","):
            field_key, _, raw = pair.partition("=")
            known = key_cache.get(field_key)
            if known is not None:
                column_name = known
            else:
                column_name = key_cache[field_key] = field_key.lower()
                if column_name in RESERVED:
                    raise _line_refusal(number, "the field {!r} would overwrite the {!r} column".format(field_key, column_name))
            if column_name in seen:
                if seen[column_name] != field_key:
                    raise _line_refusal(number, "the fields {!r} collide once lower-cased".format(column_name))
            elif tags and any(column_name == tag for tag, _ in tags):
                raise _line_refusal(number, "the tag and the field {!r} would share one column".format(column_name))
            seen[column_name] = field_key
            first = raw[0]
            value: Any
            if first in "tTfF":
                value = bools[raw]
            else:
                last = raw[-1]
                if last == "i":
                    value = int(raw[:-1])
                    if len(raw) > 19 and not lineprotocol.INT64_MIN <= value <= lineprotocol.INT64_MAX:
                        raise _error_at(line, number, "integer value of field {!r} is out of range (int64)".format(field_key))
                elif last == "u":
                    value = int(raw[:-1])
                    if value > INT64_MAX:
                        if value > lineprotocol.UINT64_MAX:
                            raise _error_at(line, number, "unsigned value of field {!r} is out of range (uint64)".format(field_key))
                        raise _line_refusal(
                            number, "the unsigned value of field {!r} is above {} (64-bit signed integers are stored)".format(field_key, INT64_MAX)
                        )
                else:
                    value = float(raw)
                    if value in _INFINITIES:
                        raise _error_at(line, number, "float value of field {!r} is out of range".format(field_key))
            column = columns.get(column_name)
            if column is None:
                column = columns[column_name] = [None] * size
            column[row] = value
    if nrows < size:
        for name, column in columns.items():
            del column[nrows:]
    return columns, nrows


_INFINITIES = (float("inf"), float("-inf"))
_BOOLS = {"t": True, "T": True, "true": True, "True": True, "TRUE": True,
          "f": False, "F": False, "false": False, "False": False, "FALSE": False}


def _tags(tag_text: str, number: int, line: str) -> Tuple[Tuple[Tuple[str, str], ...], Any]:
    """A line's tags (lower-cased names, checked) and the sorted tag set that identifies its series."""
    pairs = [pair.split("=") for pair in tag_text.split(",")]
    tags: Dict[str, str] = {}
    seen = set()
    for key, value in pairs:
        if key in seen:
            raise lineprotocol.LineProtocolError(number, lineprotocol._shown(line), "duplicate tag key {!r}".format(key))
        seen.add(key)
        name = key.lower()
        if name in RESERVED:
            raise _line_refusal(number, "the tag {!r} would overwrite the {!r} column".format(key, name))
        if name in tags:
            raise _line_refusal(number, "the tags {!r} collide once lower-cased".format(name))
        tags[name] = value
    return tuple(tags.items()), tuple(sorted((key, value) for key, value in pairs))


def _line_refusal(number: int, reason: str) -> IngestError:
    return IngestError(400, "bad-column", "unable to store line {}: {}".format(number, reason))


def _error_at(line: str, number: int, reason: str) -> lineprotocol.LineProtocolError:
    return lineprotocol.LineProtocolError(number, lineprotocol._shown(line), reason)
