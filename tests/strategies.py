"""
Hypothesis strategies and settings profiles shared by the property tests and the fuzz runs.

Profiles: ``ci`` (the default: few examples, so the suite stays fast) and
``long`` (many examples), chosen with ``HYPOTHESIS_PROFILE=long``.
"""

from __future__ import annotations

import csv
import io
import json
import os
from typing import Any, Dict, List, Tuple
from urllib.parse import urlencode

import msgpack
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from co2logd import payloads

settings.register_profile(
    "ci",
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "long",
    max_examples=5000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# -- names and values ----------------------------------------------------------

identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,15}", fullmatch=True)
int64 = st.integers(min_value=payloads.SQLITE_INT_MIN, max_value=payloads.SQLITE_INT_MAX)
finite_floats = st.floats(allow_nan=False, allow_infinity=False)
json_scalars = st.one_of(st.none(), st.booleans(), int64, finite_floats, st.text(max_size=20))


def _stays_text(cell: str) -> bool:
    """A string that CSV and form parsing give back as text (not a number, not empty)."""
    return cell != "" and payloads.text_value(cell) == cell


text_cells = st.text(max_size=20).filter(_stays_text)
# what survives a trip through text: numbers come back as numbers, '' as null
text_scalars = st.one_of(st.none(), int64, finite_floats, text_cells)


@st.composite
def tables(draw, values=json_scalars, min_columns=1, max_columns=6, max_rows=8) -> Dict[str, List[Any]]:
    """A rectangular table: distinct column names, equally long columns."""
    names = draw(st.lists(identifiers, min_size=min_columns, max_size=max_columns, unique=True))
    nrows = draw(st.integers(min_value=0, max_value=max_rows))
    return {name: draw(st.lists(values, min_size=nrows, max_size=nrows)) for name in names}


# -- encoders: a table as a device sends it ------------------------------------


def encode_json(table: Dict[str, List[Any]]) -> bytes:
    """The JSON object-of-lists shape."""
    return json.dumps(table).encode("utf-8")


def encode_json_rows(table: Dict[str, List[Any]]) -> bytes:
    """The JSON list-of-row-objects shape."""
    nrows = payloads.row_count(table)
    return json.dumps([{k: v[i] for k, v in table.items()} for i in range(nrows)]).encode("utf-8")


def encode_msgpack(table: Dict[str, List[Any]]) -> bytes:
    """The msgpack object-of-lists shape."""
    return msgpack.packb(table, use_bin_type=True)


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def encode_csv(table: Dict[str, List[Any]]) -> bytes:
    """A header line, then one line per row."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(list(table))
    for row in zip(*table.values()):
        writer.writerow([_text(v) for v in row])
    return out.getvalue().encode("utf-8")


def encode_form(table: Dict[str, List[Any]]) -> bytes:
    """Repeated keys, row by row, as co2logserver's README shows."""
    pairs: List[Tuple[str, str]] = []
    for row in zip(*table.values()):
        pairs.extend((name, _text(value)) for name, value in zip(table, row))
    return urlencode(pairs).encode("ascii")


ENCODERS = {
    "application/json": encode_json,
    "application/msgpack": encode_msgpack,
    "text/csv": encode_csv,
    "application/x-www-form-urlencoded": encode_form,
}

# -- hostile input -------------------------------------------------------------

content_types = st.one_of(
    st.none(),
    st.sampled_from(sorted(payloads.MEDIA_TYPES)),
    st.sampled_from(sorted(payloads.MEDIA_TYPES)).map(lambda t: t.upper() + "; charset=utf-8"),
    st.text(max_size=30),
)

header_names = st.from_regex(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,20}", fullmatch=True)
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=40
).map(lambda v: v.strip(" \t"))


@st.composite
def mutated(draw, data: bytes) -> bytes:
    """A valid payload with a few bytes flipped, cut or inserted."""
    out = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        action = draw(st.sampled_from(["flip", "cut", "insert"]))
        position = draw(st.integers(min_value=0, max_value=len(out)))
        if action == "flip" and position < len(out):
            out[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif action == "cut":
            del out[position:position + draw(st.integers(min_value=1, max_value=8))]
        else:
            out[position:position] = draw(st.binary(min_size=1, max_size=4))
    return bytes(out)


nasty_fragments = st.sampled_from(
    [
        b"[" * 5000,
        b'{"a":' * 3000,
        b'{"a": 1e999}',
        b'{"a": NaN}',
        b'{"a": "\\ud800"}',
        b'{"a": 123456789012345678901234567890}',
        b"a,b\n" + b"9" * 30 + b",1",
        b"a=" + b"9" * 5000,
        b'{"a": [[1]]}',
        b'{"": 1}',
        b'{"A": 1, "a": 2}',
        b'{"time_upload_utc": 1}',
        b'{"x y": 1}',
        b"\x91" * 5000,
        b"\xdd\xff\xff\xff\xff",
        b"\xc1",
        b"a,a\n1,2",
        b'"',
        b"\x00\xff\xfe",
        b"a\n1\n2,3",
    ]
)


# -- InfluxDB line protocol ----------------------------------------------------------


@st.composite
def _line_protocol_line(draw) -> str:
    """A valid line (every field type, escapes in names), sometimes a comment or a blank line."""
    from co2logd.dialects.lineprotocol import INT64_MAX, INT64_MIN, Unsigned, format_line

    kind = draw(st.sampled_from(["point"] * 8 + ["comment", "blank"]))
    if kind == "comment":
        return "# " + draw(st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=20))
    if kind == "blank":
        return ""
    keys = st.sampled_from(["co2", "temp", "hum", "box", "Time", "a b", "x,y", "k=v", "_x", "measurement", "transport", "CO2"])
    names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FF, blacklist_characters="#\x7f"), min_size=1, max_size=8)
    field_values = st.one_of(
        st.floats(allow_nan=False, allow_infinity=False), st.integers(INT64_MIN, INT64_MAX),
        st.integers(0, 2**64 - 1).map(Unsigned), st.booleans(), st.text(max_size=10),
    )
    tags = draw(st.dictionaries(keys, names, max_size=3))
    fields = draw(st.dictionaries(keys, field_values, min_size=1, max_size=4))
    time = draw(st.none() | st.integers(-(10**12), 2 * 10**12))
    return format_line(draw(names), tags, fields, time)


line_protocol_lines = _line_protocol_line()
