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
from typing import Any, Dict, List, Optional, Sequence, Tuple

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
        for key, value in point.fields.items():
            name = key.lower()
            if name in RESERVED:
                raise refusal(point, "the field {!r} would overwrite the {!r} column".format(key, name))
            if name in tags:
                raise refusal(point, "the tag and the field {!r} would share one column".format(name))
            if name in row:
                raise refusal(point, "the fields {!r} collide once lower-cased".format(name))
            if type(value) is int and value > INT64_MAX:
                raise refusal(
                    point,
                    "the unsigned value of field {!r} is above {} (64-bit signed integers are stored)".format(key, INT64_MAX),
                )
            row[name] = value
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
