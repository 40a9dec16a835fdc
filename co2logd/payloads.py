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
import threading
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple
from urllib.parse import unquote_plus

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


class Limits:
    """
    The most rows and columns one upload may hold (``MAX_ROWS_PER_UPLOAD``,
    ``MAX_COLUMNS``).  The parsers count while they parse and refuse as soon
    as a limit is passed, so a refusal costs time linear in the body and
    padding never makes more than ``max_rows × max_columns`` cells.
    """

    __slots__ = ("max_rows", "max_columns", "_local")

    def __init__(self, max_rows: int = 100_000, max_columns: int = 1000):
        self.max_rows = max_rows
        self.max_columns = max_columns
        self._local = threading.local()

    def json_decoder(self) -> "Tuple[json.JSONDecoder, _Objects]":
        """
        This thread's JSON decoder for these limits and its counting hook:
        built once, as building one per upload costs as much as decoding a
        small one.
        """
        cached = getattr(self._local, "json", None)
        if cached is None:
            hook = _Objects(self, "JSON")
            cached = self._local.json = (json.JSONDecoder(parse_constant=_reject_constant, object_pairs_hook=hook), hook)
        return cached

    @classmethod
    def from_settings(cls, settings) -> "Limits":
        """Build from :class:`co2logd.settings.Settings`."""
        return cls(settings.MAX_ROWS_PER_UPLOAD, settings.MAX_COLUMNS)

    def too_many_rows(self) -> IngestError:
        """The 400 for an upload with more rows than allowed."""
        return bad_request(
            "The upload has more than {} rows (MAX_ROWS_PER_UPLOAD)".format(self.max_rows), "too-many-rows"
        )

    def too_many_columns(self) -> IngestError:
        """The 400 for an upload with more columns than the table may have."""
        return bad_request(
            "The upload has more than {} columns (MAX_COLUMNS)".format(self.max_columns), "too-many-columns"
        )


DEFAULT_LIMITS = Limits()


def parse(body: bytes, content_type: Optional[str], limits: Limits = DEFAULT_LIMITS) -> Table:
    """Turn a payload into a table; raise IngestError (400/415) when it is not one."""
    fmt = format_of(content_type, body)
    if not body.strip():
        raise bad_request("The payload is empty")
    return PARSERS[fmt](body, limits)


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
        real = float(cell)
        return real if math.isfinite(real) else cell
    return cell


def _decode(body: bytes, what: str) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad_request("The {} payload is not valid UTF-8 ({})".format(what, e.reason))


def _reject_constant(name: str) -> Any:
    raise ValueError("{} is not a number JSON allows".format(name))


class _Objects:
    """
    ``object_pairs_hook`` for JSON and msgpack: builds each object, refusing
    a key given twice (a dict would keep the last one silently), an object
    with more members than columns allowed, and more objects than rows.
    """

    __slots__ = ("limits", "count", "what")

    def __init__(self, limits: Limits, what: str):
        self.limits = limits
        self.count = 0
        self.what = what

    def __call__(self, pairs: List[Tuple[Any, Any]]) -> Dict[Any, Any]:
        self.count += 1
        # a list of row objects has one object per row; an object of columns is one more
        if self.count > self.limits.max_rows + 1:
            raise self.limits.too_many_rows()
        if len(pairs) > self.limits.max_columns:
            raise self.limits.too_many_columns()
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen = set()
            for key, _ in pairs:
                if key in seen:
                    raise bad_request(
                        "The {} object gives the key {!r} twice".format(self.what, key), "bad-column"
                    )
                seen.add(key)
        return obj


def parse_json(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Table:
    """A JSON object of lists or scalars, or a list of row objects."""
    try:
        text = _decode(body, "JSON")
        if text.startswith("\ufeff"):  # what json.loads says about a BOM
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        decoder, hook = limits.json_decoder()
        hook.count = 0
        data = decoder.decode(text)
    except ValueError as e:
        raise bad_request("Invalid JSON: {}".format(e))
    except RecursionError:
        raise bad_request("Invalid JSON: nested too deeply")
    table = table_from_structure(data, "JSON", limits)
    if b"\\u" in body:
        # only a \uXXXX escape can make a lone surrogate, which SQLite cannot store
        _check_encodable(table.items(), "JSON")
    return table


def parse_msgpack(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Table:
    """The JSON shapes, msgpack-encoded."""
    try:
        data = msgpack.unpackb(
            body,
            raw=False,
            strict_map_key=True,
            use_list=True,
            object_pairs_hook=_Objects(limits, "msgpack"),
            # the unpacker refuses a longer array or map before building it
            max_array_len=limits.max_rows,
            max_map_len=limits.max_columns,
        )
    except msgpack.ExtraData:
        raise bad_request("Invalid msgpack: extra bytes after the first object")
    except (ValueError, TypeError, msgpack.UnpackException) as e:
        if "max_array_len" in str(e):
            raise limits.too_many_rows()
        if "max_map_len" in str(e):
            raise limits.too_many_columns()
        raise bad_request("Invalid msgpack: {}".format(e or type(e).__name__))
    return table_from_structure(data, "msgpack", limits)


def parse_csv(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Table:
    """A header line, then rows with as many cells as the header."""
    text = _decode(body, "CSV")
    header: Optional[List[str]] = None
    columns: List[List[Any]] = []
    count = 0
    try:
        for row in csv.reader(io.StringIO(text, newline="")):
            if not row:
                continue
            if header is None:
                header = row
                if len(header) > limits.max_columns:
                    raise limits.too_many_columns()
                _check_unique(header, "CSV header")
                columns = [[] for _ in header]
                continue
            count += 1
            if count > limits.max_rows:
                raise limits.too_many_rows()
            if len(row) != len(header):
                raise bad_request(
                    "Invalid CSV: line {} has {} cells, the header has {}".format(count + 1, len(row), len(header))
                )
            for column, cell in zip(columns, row):
                column.append(text_value(cell))
    except csv.Error as e:
        raise bad_request("Invalid CSV: {}".format(e))
    if header is None:
        raise bad_request("The CSV payload has no header line")
    return dict(zip(header, columns))


def _form_fields(text: str) -> Iterator[str]:
    """The ``&``-separated fields, one at a time (no list of them all)."""
    start = 0
    while True:
        end = text.find("&", start)
        if end < 0:
            yield text[start:]
            return
        yield text[start:end]
        start = end + 1


def parse_form(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Table:
    """``time_utc=43&co2=1223&time_utc=23&co2=2351``: repeated keys make rows."""
    text = _decode(body, "form").strip()
    table: Table = {}
    for field in _form_fields(text):
        # what parse_qsl(strict_parsing=True, keep_blank_values=True) does, counting as it goes
        name, equals, value = field.partition("=")
        if not equals:
            raise bad_request("Invalid form data: bad query field: {!r}".format(field[:80]))
        if "%" in name or "+" in name:
            name = unquote_plus(name)
        if "%" in value or "+" in value:
            value = unquote_plus(value)
        column = table.get(name)
        if column is None:
            if len(table) >= limits.max_columns:
                raise limits.too_many_columns()
            column = table[name] = []
        elif len(column) >= limits.max_rows:
            raise limits.too_many_rows()
        column.append(text_value(value))
    return pad(table)


PARSERS: Dict[str, Callable[[bytes, Limits], Table]] = {
    "json": parse_json,
    "msgpack": parse_msgpack,
    "csv": parse_csv,
    "form": parse_form,
}


def table_from_structure(data: Any, what: str, limits: Limits = DEFAULT_LIMITS) -> Table:
    """
    Object of lists → table; object of scalars → one row; list of objects → rows.

    Linear in the input: limits are checked before any padding.
    """
    if isinstance(data, dict):
        if not data:
            raise bad_request("The {} object has no columns".format(what))
        _check_keys(data, what)
        if len(data) > limits.max_columns:
            raise limits.too_many_columns()
        if all(isinstance(v, list) for v in data.values()):
            table = data  # the parsers' own fresh lists: no copy needed
            if max(map(len, table.values())) > limits.max_rows:
                raise limits.too_many_rows()
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
        if len(data) > limits.max_rows:
            raise limits.too_many_rows()
        first = data[0]
        if type(first) is dict and all(type(row) is dict and row.keys() == first.keys() for row in data):
            # the usual upload: every row names the same columns
            _check_keys(first, what)
            if len(first) > limits.max_columns:
                raise limits.too_many_columns()
            table = {name: [row[name] for row in data] for name in first}
            _check_scalars(table.items(), what)
            return table
        # each column's values and the rows they are in; the dense columns are
        # built once at the end, so a row never costs more than its own cells
        values: Dict[str, List[Any]] = {}
        rows: Dict[str, List[int]] = {}
        for index, row in enumerate(data):
            if not isinstance(row, dict):
                raise bad_request(
                    "The {} list must hold row objects; item {} is {}".format(
                        what, index, type(row).__name__
                    )
                )
            _check_keys(row, what)
            for name, value in row.items():
                column = values.get(name)
                if column is None:
                    if len(values) >= limits.max_columns:
                        raise limits.too_many_columns()
                    column = values[name] = []
                    rows[name] = []
                column.append(value)
                rows[name].append(index)
        _check_scalars(values.items(), what)
        count = len(data)
        table = {}
        for name, column in values.items():
            if len(column) == count:
                table[name] = column
            else:
                dense: List[Any] = [None] * count
                for index, value in zip(rows[name], column):
                    dense[index] = value
                table[name] = dense
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


def check_values(table: Table, what: str) -> None:
    """A 400 for a value SQLite cannot store as given: not a scalar, not finite, beyond 64 bits, unencodable text."""
    _check_scalars(table.items(), what)
    _check_encodable(table.items(), what)


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
