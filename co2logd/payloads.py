"""
Payloads: bytes and a content type in, a table (column → list of values) out.

The shapes are co2logserver's (a JSON/msgpack object of lists, CSV with a
header line, repeated form keys), plus a JSON/msgpack object of scalars (one
row) and a list of row objects.  Values are numbers, strings, booleans or
null; anything else is refused with an :class:`~co2logd.errors.IngestError`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from typing import Any, Dict, Iterable, List, Optional, Tuple
from urllib.parse import parse_qsl

import msgpack

from co2logd.errors import IngestError, bad_request

Table = Dict[str, List[Any]]

MEDIA_TYPES = {
    "application/json": "json",
    "text/json": "json",
    "text/csv": "csv",
    "application/csv": "csv",
    "application/x-www-form-urlencoded": "form",
    "application/msgpack": "msgpack",
    "application/x-msgpack": "msgpack",
    "application/vnd.msgpack": "msgpack",
}

SCALARS = (str, int, float, bool, type(None))
INTEGER = re.compile(r"[+-]?[0-9]+\Z")
DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\Z")
MSGPACK_MAP_MARKERS = set(range(0x80, 0x90)) | {0xDE, 0xDF}
MSGPACK_ARRAY_MARKERS = set(range(0x90, 0xA0)) | {0xDC, 0xDD}
MSGPACK_MARKERS = frozenset(MSGPACK_MAP_MARKERS | MSGPACK_ARRAY_MARKERS)
# SQLite stores integers in 64 bits; a larger one could not be written
SQLITE_INT_MIN, SQLITE_INT_MAX = -(2**63), 2**63 - 1


def media_type(content_type: Optional[str]) -> str:
    """``'Application/JSON; charset=utf-8'`` → ``'application/json'``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def format_of(content_type: Optional[str], body: bytes) -> str:
    """
    The payload format named by the content type, or detected from the body
    when the transport has none (``None``).  An unknown or empty content type
    is a 415.
    """
    if content_type is None:
        return detect_format(body)
    mtype = media_type(content_type)
    try:
        return MEDIA_TYPES[mtype]
    except KeyError:
        raise IngestError(
            415,
            "content-type",
            "Invalid Content-Type '{}': use one of {}".format(
                mtype, ", ".join(sorted(MEDIA_TYPES))
            ),
        )


def detect_format(body: bytes) -> str:
    """Guess the format of a body that came without a content type."""
    if body[:1] and body[0] in MSGPACK_MARKERS:
        return "msgpack"
    head = body.lstrip()[:1]
    if head in (b"{", b"["):
        return "json"
    first_line = body.split(b"\n", 1)[0]
    if b"=" in first_line and b"," not in first_line:
        return "form"
    return "csv"


def parse(body: bytes, content_type: Optional[str]) -> Table:
    """Turn a payload into a table; raise IngestError (400/415) when it is not one."""
    fmt = format_of(content_type, body)
    if not body.strip():
        raise bad_request("The payload is empty")
    return PARSERS[fmt](body)


def text_value(cell: str) -> Any:
    """A text cell as co2logserver reads it: int or float where it parses, else text."""
    if cell == "":
        return None
    if INTEGER.match(cell) and len(cell) <= 20:
        number = int(cell)
        if SQLITE_INT_MIN <= number <= SQLITE_INT_MAX:
            return number
    if DECIMAL.match(cell):
        # integers beyond 64 bits too; text where not even a float holds them
        number = float(cell)
        return number if math.isfinite(number) else cell
    return cell


def _decode(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request("The {} payload is not valid UTF-8 ({})".format(what, e.reason))


def _reject_constant(name: str) -> Any:
    raise ValueError("{} is not a number JSON allows".format(name))


# one decoder for every upload: json.loads(..., parse_constant=...) would build one per call
_JSON_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json(body: bytes) -> Table:
    """A JSON object of lists or scalars, or a list of row objects."""
    try:
        text = _decode(body, "JSON")
        if text.startswith("\ufeff"):  # what json.loads says about a BOM
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        data = _JSON_DECODER.decode(text)
    except ValueError as e:
        raise bad_request("Invalid JSON: {}".format(e))
    except RecursionError:
        raise bad_request("Invalid JSON: nested too deeply")
    table = table_from_structure(data, "JSON")
    if b"\\u" in body:
        # only a \uXXXX escape can make a lone surrogate, which SQLite cannot store
        _check_encodable(table.items(), "JSON")
    return table


def parse_msgpack(body: bytes) -> Table:
    """The JSON shapes, msgpack-encoded."""
    try:
        data = msgpack.unpackb(body, raw=False, strict_map_key=True, use_list=True)
    except msgpack.ExtraData:
        raise bad_request("Invalid msgpack: extra bytes after the first object")
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        raise bad_request("Invalid msgpack: {}".format(e or type(e).__name__))
    return table_from_structure(data, "msgpack")


def parse_csv(body: bytes) -> Table:
    """A header line, then rows with as many cells as the header."""
    text = _decode(body, "CSV")
    try:
        lines = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error as e:
        raise bad_request("Invalid CSV: {}".format(e))
    header, rows = lines[0], lines[1:]
    _check_unique(header, "CSV header")
    table: Table = {name: [] for name in header}
    columns = list(table.values())
    for number, row in enumerate(rows, start=2):
        if len(row) != len(header):
            raise bad_request(
                "Invalid CSV: line {} has {} cells, the header has {}".format(
                    number, len(row), len(header)
                )
            )
        for column, cell in zip(columns, row):
            column.append(text_value(cell))
    return table


def parse_form(body: bytes) -> Table:
    """``time_utc=43&co2=1223&time_utc=23&co2=2351``: repeated keys make rows."""
    text = _decode(body, "form")
    try:
        pairs = parse_qsl(text.strip(), keep_blank_values=True, strict_parsing=True, max_num_fields=1_000_000)
    except ValueError as e:
        raise bad_request("Invalid form data: {}".format(e))
    table: Table = {}
    for name, value in pairs:
        table.setdefault(name, []).append(text_value(value))
    return pad(table)


PARSERS = {
    "json": parse_json,
    "msgpack": parse_msgpack,
    "csv": parse_csv,
    "form": parse_form,
}


def table_from_structure(data: Any, what: str) -> Table:
    """Object of lists → table; object of scalars → one row; list of objects → rows."""
    if isinstance(data, dict):
        if not data:
            raise bad_request("The {} object has no columns".format(what))
        _check_keys(data, what)
        if all(isinstance(v, list) for v in data.values()):
            table = data  # the parsers' own fresh lists: no copy needed
        elif not any(isinstance(v, list) for v in data.values()):
            table = {k: [v] for k, v in data.items()}
        else:
            raise bad_request(
                "The {} object mixes lists and single values: give every column a list, "
                "or every column one value".format(what)
            )
        _check_scalars(table.items(), what)
        return pad(table)
    if isinstance(data, list):
        if not data:
            raise bad_request("The {} list has no rows".format(what))
        table = {}
        for index, row in enumerate(data):
            if not isinstance(row, dict):
                raise bad_request(
                    "The {} list must hold row objects; item {} is {}".format(
                        what, index, type(row).__name__
                    )
                )
            _check_keys(row, what)
            for name, value in row.items():
                column = table.get(name)
                if column is None:
                    column = table[name] = [None] * index
                column.append(value)
            for column in table.values():
                if len(column) == index:
                    column.append(None)
        _check_scalars(table.items(), what)
        return table
    raise bad_request(
        "The {} payload must be an object of columns or a list of rows, not {}".format(
            what, type(data).__name__
        )
    )


def pad(table: Table) -> Table:
    """Pad shorter columns with None, as co2logserver does."""
    length = max((len(v) for v in table.values()), default=0)
    for column in table.values():
        if len(column) < length:
            column.extend([None] * (length - len(column)))
    return table


def row_count(table: Table) -> int:
    """Number of rows in a (padded) table."""
    return max((len(v) for v in table.values()), default=0)


def _check_keys(obj: Dict[Any, Any], what: str) -> None:
    for key in obj:
        if not isinstance(key, str):
            raise bad_request("{} column names must be strings, not {!r}".format(what, key), "bad-column")


def _check_unique(names: Iterable[str], what: str) -> None:
    seen = set()
    for name in names:
        if name in seen:
            raise bad_request("The {} names the column {!r} twice".format(what, name), "bad-column")
        seen.add(name)


def _check_scalars(columns: Iterable[Tuple[str, List[Any]]], what: str) -> None:
    for name, values in columns:
        for value in values:
            if not isinstance(value, SCALARS):
                raise bad_request(
                    "Column {!r} holds a {} value; only numbers, strings, booleans and null "
                    "are allowed".format(name, type(value).__name__)
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise bad_request("Column {!r} holds {}, which is not a finite number".format(name, value))
            if isinstance(value, int) and not SQLITE_INT_MIN <= value <= SQLITE_INT_MAX:
                raise bad_request(
                    "Column {!r} holds an integer that does not fit in 64 bits".format(name)
                )


def _check_encodable(columns: Iterable[Tuple[str, List[Any]]], what: str) -> None:
    for name, values in columns:
        for value in values:
            if isinstance(value, str):
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:
                    raise bad_request(
                        "Column {!r} of the {} payload holds text that is not valid Unicode "
                        "(a lone surrogate escape)".format(name, what)
                    )
