"""
co2logserver 0.1.2's default hooks and values, with its behaviour.

These are the defaults of the hook settings (``AUTH_CHECKER``,
``TIME_CONVERTER``, the ``OSEM_*`` determiners...).  A config file may replace
each with its own function.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Mapping, Optional


def default_auth_checker(matches: Mapping[str, Optional[str]]) -> bool:
    """At least one checksum given, and every given checksum matched."""
    return bool(len(matches)) and all(matches.values())


def utc_datetime_from_unix_timestamp(seconds: Any) -> datetime.datetime:
    """UNIX seconds (whole seconds, as co2logserver) as an aware UTC datetime."""
    return datetime.datetime(
        1970, 1, 1, tzinfo=datetime.timezone.utc
    ) + datetime.timedelta(seconds=int(seconds))


def default_time_converter(val: Any, col: str) -> datetime.datetime:
    """Convert UNIX seconds in a time column to a UTC datetime."""
    return utc_datetime_from_unix_timestamp(val)


def accept_every_column(col: str) -> bool:
    """Accept every new column."""
    return True


def redirect_everything(_: Any) -> bool:
    """Forward every column / box to the OpenSenseMap."""
    return True


def round_to_three_places(box: Any, col: str, val: Any) -> Any:
    """Round values to three decimal places before forwarding."""
    return round(val, 3)


def no_default_position(box: Any) -> None:
    """No fallback position for a new senseBox."""
    return None


def exposure_from_box_name(box: Any) -> str:
    """co2logserver's rule: the first of indoor/outdoor/mobile containing the box value."""
    return next((x for x in ("indoor", "outdoor", "mobile") if str(box) in x), "mobile")


def unit_converter(unit: str) -> str:
    """Map short unit names to the OpenSenseMap's (c → °C, percent → %)."""
    return {"c": "°C", "percent": "%", "perc": "%"}.get(unit.lower(), unit)


OSEM_ICONS = [
    "osem-moisture",
    "osem-temperature-celsius",
    "osem-temperature-fahrenheit",
    "osem-thermometer",
    "osem-windspeed",
    "osem-sprinkles",
    "osem-brightness",
    "osem-barometer",
    "osem-humidity",
    "osem-not-available",
    "osem-gauge",
    "osem-umbrella",
    "osem-clock",
    "osem-shock",
    "osem-fire",
    "osem-volume-up",
    "osem-cloud",
    "osem-dashboard",
    "osem-particulate-matter",
    "osem-signal",
    "osem-microphone",
    "osem-wifi",
    "osem-battery",
    "osem-radioactive",
]


def icon_from_quantity(d: Mapping[str, str]) -> str:
    """The first OpenSenseMap icon whose name contains the quantity."""
    return next((icon for icon in OSEM_ICONS if d["quantity"] in icon), "osem-not-available")


DEFAULT_COL_REGEX = re.compile(r"^(?P<type>[^_]+)_(?P<quantity>[^_]+)_(?P<unit>.*)$")

# the default name and sensor-title generators are bound str.format methods
box_name_from_server_and_box = "{servername} senseBox {box}".format
sensor_title_from_quantity = "{quantity}".format
