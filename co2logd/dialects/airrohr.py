"""
sensor.community's airrohr firmware, "Send data to own API": its JSON body → one row.

The firmware POSTs (``Content-Type: application/json``, header
``X-Sensor: esp8266-<chipid>`` or ``esp32-<chipid>``)::

    {"esp8266id": "1234567", "software_version": "NRZ-2024-135", "sensordatavalues": [
      {"value_type": "SDS_P1", "value": "12.30"}, {"value_type": "signal", "value": "-38"}, ...]}

Values are always strings.  The row gets ``box`` (``OSEM_BOX_COL``) =
``esp8266-<id>`` (or the ``X-Sensor`` name, which also covers ESP32 ids),
``software_version``, and one column per ``value_type`` lower-cased, holding
a number when the string is one (``"12.30"`` → 12.3, ``"612"`` → 612, an old
firmware's ``"-59 dBm"`` → -59) and the text otherwise (``GPS_timestamp``).
The firmware sends no timestamp: the row's time is its upload time.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from co2logd.errors import bad_request

# a number, maybe with a trailing unit as old firmware sent the WiFi signal ("-59 dBm"); group 2 marks a float
_NUMBER = re.compile(r"\s*([+-]?[0-9]*(\.[0-9]*)?(?:[eE][+-]?[0-9]+)?)(?: +[A-Za-z%°µ/]{1,8})?\s*\Z")
_DIGIT = re.compile(r"[0-9]")
_SENSOR_NAME = re.compile(r"esp(?:8266|32)-[0-9A-Za-z]{1,32}\Z")
_ID = re.compile(r"[0-9A-Za-z]{1,32}\Z")

MAX_VALUES = 256


def is_airrohr(document: Any) -> bool:
    """A JSON object with ``esp8266id`` and ``sensordatavalues``: airrohr's body."""
    return isinstance(document, dict) and "esp8266id" in document and "sensordatavalues" in document


def value_of(text: Any) -> Any:
    """A reading as stored: an int or float when the string is numeric (a unit may follow), else the text."""
    if isinstance(text, bool) or text is None:
        return text
    if isinstance(text, (int, float)):
        return text
    if not isinstance(text, str):
        raise bad_request("airrohr: a value must be a string, number, boolean or null")
    match = _NUMBER.match(text)
    if match is None:
        return text
    number = match.group(1)
    if not _DIGIT.search(number.partition("e")[0].partition("E")[0]):  # "", ".", "e5": no digits before the exponent
        return text
    if match.group(2) is None and "e" not in number and "E" not in number:
        integer = int(number)
        return integer if -(2**63) <= integer < 2**63 else text  # beyond SQLite's integers: kept as sent
    value = float(number)
    return text if math.isinf(value) else value


def source_of(document: Mapping[str, Any], x_sensor: Optional[str]) -> str:
    """``esp8266-<id>``, or the ``X-Sensor`` header's name for the same id (``esp32-<hex>``)."""
    chip = document.get("esp8266id")
    if isinstance(chip, int) and not isinstance(chip, bool):
        chip = str(chip)
    if not isinstance(chip, str) or not _ID.match(chip):
        raise bad_request("airrohr: esp8266id must be the chip id (1 to 32 letters and digits)")
    if x_sensor is not None:
        x_sensor = x_sensor.strip()
        if _SENSOR_NAME.match(x_sensor) and x_sensor.rpartition("-")[2] == chip:
            return x_sensor
    return "esp8266-" + chip


def row_of(document: Mapping[str, Any], x_sensor: Optional[str], box_column: str) -> Dict[str, Any]:
    """The one row of an airrohr body (column → value); a 400 IngestError when it is malformed."""
    row: Dict[str, Any] = {box_column: source_of(document, x_sensor)}
    version = document.get("software_version")
    if version is not None:
        if not isinstance(version, str):
            raise bad_request("airrohr: software_version must be a string")
        row["software_version"] = version
    values = document["sensordatavalues"]
    if not isinstance(values, list):
        raise bad_request("airrohr: sensordatavalues must be a list of {value_type, value} objects")
    if len(values) > MAX_VALUES:
        raise bad_request("airrohr: more than {} sensordatavalues".format(MAX_VALUES))
    for item in values:
        if not isinstance(item, dict) or not isinstance(item.get("value_type"), str) or "value" not in item:
            raise bad_request("airrohr: each of sensordatavalues must be an object with value_type and value")
        name = item["value_type"].lower()
        if name in (box_column, "software_version"):
            raise bad_request("airrohr: the value_type {!r} would overwrite the {!r} column".format(item["value_type"], name))
        row[name] = value_of(item["value"])
    return row


def table_of(document: Mapping[str, Any], x_sensor: Optional[str], box_column: str) -> Tuple[Dict[str, List[Any]], int]:
    """The table (one row) of an airrohr body."""
    row = row_of(document, x_sensor, box_column)
    return {name: [value] for name, value in row.items()}, 1
