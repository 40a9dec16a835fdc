"""
Which client sent a ``POST /upload`` body: airrohr, The Things Stack, ChirpStack, or none of them.

:func:`recognise` looks for each dialect's marker keys in the bytes before
parsing anything, so an ordinary co2logd upload pays one substring search
and is parsed once, by the ingest service, as before.
"""

from __future__ import annotations

import datetime
import json
from typing import Any, Dict, List, Optional, Union

from co2logd import payloads
from co2logd.dialects import airrohr, lorawan
from co2logd.errors import IngestError

Table = Dict[str, List[Any]]


class Recognised:
    """A dialect's upload: its table, de-duplication key, and the dialect's name (``airrohr``, ``ttn``, ``chirpstack``)."""

    def __init__(self, dialect: str, table: Table, dedup_key: Optional[str] = None):
        self.dialect = dialect
        self.table = table
        self.dedup_key = dedup_key


class Skipped:
    """A dialect's message that stores nothing (acknowledged and counted): ``reason`` says why."""

    def __init__(self, dialect: str, reason: str):
        self.dialect = dialect
        self.reason = reason


Outcome = Union[Recognised, Skipped, None]


def _media_type(content_type: Optional[str]) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def recognise(
    body: bytes, content_type: Optional[str], event: Optional[str], x_sensor: Optional[str], box_column: str, time_column: str
) -> Outcome:
    """
    The dialect of an upload body, None for co2logd's own formats.

    ``event`` is the ``event`` query parameter (ChirpStack), ``x_sensor``
    the ``X-Sensor`` header (airrohr).  A recognised body that is malformed
    is a 400 IngestError; ChirpStack's protobuf encoding is a 415.
    """
    media = _media_type(content_type)
    if event is not None and media in ("application/octet-stream", "application/protobuf", "application/x-protobuf"):
        raise IngestError(
            415, "content-type",
            "ChirpStack's protobuf encoding is not supported: set the HTTP integration's payload encoding to JSON",
        )
    is_chirpstack = event is not None and b'"deviceInfo"' in body
    is_airrohr = b'"sensordatavalues"' in body and b'"esp8266id"' in body
    is_ttn = b'"end_device_ids"' in body
    if not (is_chirpstack or is_airrohr or is_ttn):
        return None
    if media not in ("application/json", "text/json", ""):
        return None
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON after all: the ingest service says what is wrong with it
    if is_chirpstack and lorawan.is_chirpstack(document, event):
        return _outcome("chirpstack", lorawan.chirpstack(document, event or "", box_column, time_column))
    if is_airrohr and airrohr.is_airrohr(document):
        table, _ = airrohr.table_of(document, x_sensor, box_column)
        payloads.check_values(table, "airrohr body")
        return Recognised("airrohr", table)
    if is_ttn and lorawan.is_ttn(document):
        return _outcome("ttn", lorawan.ttn(document, box_column, time_column))
    return None


def _outcome(dialect: str, result: lorawan.Result) -> Union[Recognised, Skipped]:
    if isinstance(result, lorawan.Skip):
        return Skipped(dialect, result.reason)
    table, _ = result.table()
    # the uplink time is a datetime made here; every other value came from the message
    payloads.check_values({name: values for name, values in table.items() if not isinstance(values[0], datetime.datetime)}, "decoded payload")
    return Recognised(dialect, table, result.dedup_key)

