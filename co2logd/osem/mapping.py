"""
Rows → OpenSenseMap outbox entries, with co2logserver 0.1.2's mapping rules.

The ingest service calls the function made by :func:`outbox_entries_for`
with the rows of one upload (lower-cased column names, time columns already
converted) inside the transaction that stores them.  Every row with at least
one forwardable measurement becomes one entry, a JSON object::

    {"box": "kitchen",                       # value of OSEM_BOX_COL (or its default)
     "name": "co2logserver senseBox kitchen", # OSEM_BOX_NAME_GENERATOR
     "exposure": "indoor",                    # OSEM_EXPOSURE_DETERMINER
     "lat": 48.5, "lon": 9.05, "height": null,
     "time": 1714564800.0,                    # measurement time, UNIX seconds UTC
     "sensors": [["co2", "ppm", "scd30", "osem-not-available", 412.5]]}

``sensors`` holds ``[title, unit, sensor type, icon, value]`` per sensor
column: everything the uploader needs, so a later change of hooks does not
re-interpret queued rows.  Box metadata that only depends on settings
(grouptag, weblink, description, default positions) is applied by the
uploader.

Deliberate differences from co2logserver 0.1.2: latitude must lie within
±90 and longitude within ±180 (0.1.2 swapped the two ranges), non-numeric
values are not forwarded (the API would refuse the whole request), and a
failing hook skips the value or row instead of failing the upload.
"""

from __future__ import annotations

import datetime
import json
import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from co2logd.logs import gate
from co2logd.settings import Settings

log = Logger(observer=gate)

Row = Mapping[str, Any]
EntriesFunction = Callable[[Sequence[Row]], Tuple[List[str], int]]

UTC = datetime.timezone.utc


class Entry:
    """One decoded outbox entry (see the module docstring for its fields)."""

    __slots__ = ("box", "name", "exposure", "lat", "lon", "height", "time", "sensors")

    def __init__(self, box, name, exposure, lat, lon, height, time, sensors):
        self.box = box
        self.name = name
        self.exposure = exposure
        self.lat = lat
        self.lon = lon
        self.height = height
        self.time = time
        self.sensors = sensors

    @classmethod
    def decode(cls, text: str) -> "Entry":
        """Parse an entry's JSON; raises ValueError/KeyError/TypeError if malformed."""
        d = json.loads(text)
        sensors = [SensorKey.from_list(s) for s in d["sensors"]]
        return cls(
            d["box"], str(d["name"]), d.get("exposure"), d.get("lat"), d.get("lon"),
            d.get("height"), float(d["time"]), sensors,
        )

    def encode(self) -> str:
        """The compact JSON stored in the outbox."""
        return json.dumps(
            {
                "box": self.box,
                "name": self.name,
                "exposure": self.exposure,
                "lat": self.lat,
                "lon": self.lon,
                "height": self.height,
                "time": self.time,
                "sensors": [s.as_list() for s in self.sensors],
            },
            separators=(",", ":"),
            default=str,
        )


class SensorKey:
    """A sensor as co2logserver identifies it (title, unit, type, icon) plus a value."""

    __slots__ = ("title", "unit", "type", "icon", "value")

    def __init__(self, title: str, unit: str, type: str, icon: str, value: float):
        self.title = title
        self.unit = unit
        self.type = type
        self.icon = icon
        self.value = value

    @property
    def key(self) -> Tuple[str, str, str, str]:
        """What identifies the sensor within a box."""
        return (self.title, self.unit, self.type, self.icon)

    @classmethod
    def from_list(cls, values: Sequence[Any]) -> "SensorKey":
        """From the ``[title, unit, type, icon, value]`` list of an entry."""
        title, unit, type_, icon, value = values
        return cls(str(title), str(unit), str(type_), str(icon), float(value))

    def as_list(self) -> List[Any]:
        """The ``[title, unit, type, icon, value]`` list stored in an entry."""
        return [self.title, self.unit, self.type, self.icon, self.value]


def _position(row: Row, column: str, limit: Optional[float]) -> Optional[float]:
    if column not in row or row[column] is None:
        return None
    try:
        value = float(row[column])
    except (TypeError, ValueError):
        log.warn("Ignoring invalid {column} value {value!r} for the OpenSenseMap", column=column, value=row[column])
        return None
    if not math.isfinite(value) or (limit is not None and not -limit <= value <= limit):
        log.warn("Ignoring out-of-range {column} value {value!r} for the OpenSenseMap", column=column, value=value)
        return None
    return value


def _numeric(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return float(int(value))
    if isinstance(value, (int, float)) and math.isfinite(value):
        return value
    return None


def _as_utc(value: datetime.datetime) -> datetime.datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Mapper:
    """
    co2logserver 0.1.2's column → senseBox/sensor rules, applied per row.

    :param settings: the :class:`co2logd.settings.Settings`
    :param clock: provides ``seconds()``: "now" for rows without a measurement time
        (None for a mapper only asked about sensors, as the plot's unit lookup is)
    """

    def __init__(self, settings: Settings, clock: Optional[IReactorTime]):
        self.settings = settings
        self.clock = clock
        self.excluded = {
            c.lower()
            for c in (
                settings.OSEM_LAT_COL,
                settings.OSEM_LON_COL,
                settings.OSEM_HEIGHT_COL,
                settings.OSEM_TIME_COL,
                settings.OSEM_BOX_COL,
                settings.MATCHED_CHECKSUMS_COL,
                settings.FAILED_CHECKSUMS_COL,
            )
        }
        self._sensors: Dict[str, Optional[Tuple[str, str, str, str]]] = {}

    def __call__(self, rows: Sequence[Row]) -> Tuple[List[str], int]:
        """Entries (JSON strings) for the forwardable rows, and their measurement count."""
        assert self.clock is not None, "a Mapper that maps rows needs a clock"
        now = self.clock.seconds()
        entries: List[str] = []
        count = 0
        for row in rows:
            try:
                entry = self.entry(row, now)
            except Exception:
                log.failure("An OSEM_* hook failed on a row; it is not forwarded")
                continue
            if entry is not None:
                entries.append(entry.encode())
                count += len(entry.sensors)
        return entries, count

    def sensor_for(self, column: str) -> Optional[Tuple[str, str, str, str]]:
        """(title, unit, type, icon) of a sensor column, None if not forwarded (cached)."""
        if column in self._sensors:
            return self._sensors[column]
        s = self.settings
        sensor = None
        if column not in self.excluded and s.OSEM_COL_REDIRECT(column):
            match = s.OSEM_COL_REGEX.search(column)
            if match:
                groups = match.groupdict()
                kwargs = dict(groups, column=column)
                title = s.OSEM_SENSOR_TITLE_GENERATOR(**kwargs)
                unit = s.OSEM_UNIT_COVERTER(groups.get("unit"))
                icon = s.OSEM_ICON_DETERMINER(kwargs)
                sensor = (str(title), str(unit), str(groups.get("type")), str(icon))
            else:
                log.debug("Column {column} is not a sensor column; not forwarded", column=column)
        self._sensors[column] = sensor
        return sensor

    def entry(self, row: Row, now: float) -> Optional[Entry]:
        """The outbox entry for one row, or None when nothing of it is forwarded."""
        s = self.settings
        box = row.get(s.OSEM_BOX_COL.lower())
        if not box and not box == 0:
            box = s.OSEM_BOX_COL_DEFAULT
        if not s.OSEM_BOX_REDIRECT(box):
            log.debug("Box {box!r} is not forwarded (OSEM_BOX_REDIRECT)", box=box)
            return None
        name = s.OSEM_BOX_NAME_GENERATOR(servername=s.NAME, box=box)
        time_value = row.get(s.OSEM_TIME_COL.lower())
        if isinstance(time_value, datetime.datetime):
            measured = _as_utc(time_value).timestamp()
        else:
            measured = now
        if now - measured < s.OSEM_MIN_SECONDS_BETWEEN_UPLOADS:
            # co2logserver: skip measurements less than the minimum age old
            # (with the default of 0: measurements from the future)
            log.debug("Measurement at {time} is too recent to forward", time=measured)
            return None
        sensors: List[SensorKey] = []
        for column, value in row.items():
            if value is None:
                continue
            sensor = self.sensor_for(column)
            if sensor is None:
                continue
            try:
                value = s.OSEM_VALUE_FILTER(box=name, col=column, val=value)
            except Exception as e:
                log.warn(
                    "OSEM_VALUE_FILTER failed on {column}={value!r} ({error}); forwarding it unfiltered",
                    column=column, value=value, error=e,
                )
            number = _numeric(value)
            if number is None:
                log.info("Not forwarding non-numeric {column}={value!r}", column=column, value=value)
                continue
            sensors.append(SensorKey(*sensor, value=number))
        if not sensors:
            return None
        return Entry(
            box=box if isinstance(box, (str, int, float)) else str(box),
            name=str(name),
            exposure=s.OSEM_EXPOSURE_DETERMINER(box=box),
            lat=_position(row, s.OSEM_LAT_COL.lower(), 90.0),
            lon=_position(row, s.OSEM_LON_COL.lower(), 180.0),
            height=_position(row, s.OSEM_HEIGHT_COL.lower(), None),
            time=measured,
            sensors=sensors,
        )


def outbox_entries_for(settings, clock) -> Optional[EntriesFunction]:
    """
    The ``outbox_entries`` function for :class:`co2logd.ingest.IngestService`,
    or None when ``OSEM_UPLOAD`` is off.

    :param clock: provides ``seconds()`` (the reactor); the measurement time of
        rows without a time column
    """
    if not settings.OSEM_UPLOAD:
        return None
    return Mapper(settings, clock)
