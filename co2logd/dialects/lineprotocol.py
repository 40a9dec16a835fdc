"""
InfluxDB line protocol: bytes in, points out (and points back to bytes).

The grammar is the reference one (``influxdata/line-protocol``'s
``line-protocol.ebnf`` and the InfluxDB v2 line-protocol page)::

    <measurement>[,<tag_key>=<tag_value>...] <field_key>=<field_value>[,...] [<timestamp>]

* lines end with ``\\n`` or ``\\r\\n``; blank lines and lines whose first
  non-space character is ``#`` (comments) are skipped; runs of spaces
  separate the parts, and trailing spaces are allowed;
* escapes: in the measurement a backslash escapes comma and space; in tag
  keys, tag values and field keys it escapes comma, ``=`` and space; in
  string field values it escapes ``"``; everywhere two backslashes are one
  backslash, and a backslash before any other character is literal;
* control characters (0x00-0x1F, 0x7F) are refused outside string values
  (a tab in a comment is allowed); a measurement does not start with ``#``;
* field values: float (``1``, ``-1.5``, ``.5``, ``1.``, ``1e+78``), integer
  ``-?\\d+i`` (int64), unsigned ``\\d+u`` (uint64), string ``"..."`` (at most
  64 KiB of UTF-8, newlines allowed inside), boolean ``t T true True TRUE
  f F false False FALSE``; out-of-range numbers are invalid;
* the timestamp is an optional signed integer in the given precision, at
  most ±9223372036854775806 ns once scaled;
* a line repeating a tag key is invalid; a line repeating a field key keeps
  the last value (as InfluxDB does).

The body must be valid UTF-8.  Any invalid line makes :func:`parse` raise a
:class:`LineProtocolError` that names the line, so a batch is taken whole or
not at all.
"""

from __future__ import annotations

import math
import re
from typing import Any, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

FieldValue = Union[float, int, str, bool]

#: nanoseconds per unit, for every precision name the write APIs take
PRECISIONS: Dict[str, int] = {
    "ns": 1,
    "n": 1,
    "us": 1_000,
    "u": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
}

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
UINT64_MAX = 2**64 - 1
#: InfluxDB's MinNanoTime and MaxNanoTime
TIME_MIN, TIME_MAX = -9223372036854775806, 9223372036854775806
#: the longest string field value, in bytes of UTF-8
MAX_STRING_BYTES = 64 * 1024

_CTL = r"\x00-\x1f\x7f"
_ESC = r"\\[^\x00-\x1f\x7f]"  # a backslash and the printable character it escapes (or keeps)
# possessive runs (Python 3.11): no backtracking into a name, so a bad line fails in linear time
_MEASUREMENT = r"(?:[^{c} ,\\#]|{e})(?:[^{c} ,\\]++|{e})*+".format(c=_CTL, e=_ESC)
_KEY = r"(?:[^{c} ,=\\]++|{e})++".format(c=_CTL, e=_ESC)
_STRING = r'"(?:[^"\\]++|\\[\s\S])*+"'
_BOOL = r"(?:t(?:rue)?|T(?:rue|RUE)?|f(?:alse)?|F(?:alse|ALSE)?)"
_EXP = r"(?:[eE][+-]?[0-9]++)"
# float (default), integer "-?digits i", unsigned "digits u"
_NUMBER = r"(?:[0-9]++(?:[iu]|\.[0-9]*+{x}?|{x})?|-[0-9]++(?:i|\.[0-9]*+{x}?|{x})?|-?\.[0-9]++{x}?)".format(x=_EXP)
_VALUE = r"(?:{}|{}|{})".format(_NUMBER, _STRING, _BOOL)
_FIELD = r"{k}={v}".format(k=_KEY, v=_VALUE)
_POINT = r"({m})((?:,{k}={k})*+) +({f}(?:,{f})*)(?: +(-?[0-9]++))? *".format(m=_MEASUREMENT, k=_KEY, f=_FIELD)
_COMMENT = r"#[^\x00-\x08\x0a-\x1f\x7f]*"

#: a line without its end (for bodies known to hold no strings, escapes, comments or CR)
SIMPLE_LINE = r" *(?:{})?".format(_POINT)
#: one whole line, its end included; groups: measurement, tags, fields, timestamp
LINE = re.compile(r" *(?:{}|{})?(?:\r?\n|\r?\Z)".format(_POINT, _COMMENT))
_TAGS = re.compile(r",({k})=({k})".format(k=_KEY))
_FIELDS = re.compile(r"({k})=({s}|[^,]+)".format(k=_KEY, s=_STRING))

# for the diagnosis of a line that did not match
_D_MEASUREMENT = re.compile(_MEASUREMENT)
_D_KEY = re.compile(_KEY)
_D_VALUE = re.compile(_VALUE + r"(?=[ ,\r\n]|\Z)")
_D_STRING = re.compile(_STRING)
_D_TIMESTAMP = re.compile(r"-?[0-9]+")
_D_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

_UNESCAPE_MEASUREMENT = re.compile(r"\\([\\, ])")
_UNESCAPE_KEY = re.compile(r"\\([\\,= ])")
_UNESCAPE_STRING = re.compile(r'\\([\\"])')
_ESCAPE_MEASUREMENT = re.compile(r"([\\, ])")
_ESCAPE_KEY = re.compile(r"([\\,= ])")
_ESCAPE_STRING = re.compile(r'([\\"])')
_FORBIDDEN_IN_NAMES = re.compile(r"[\x00-\x1f\x7f]")

_BOOLS = {"t": True, "T": True, "true": True, "True": True, "TRUE": True,
          "f": False, "F": False, "false": False, "False": False, "FALSE": False}


class LineProtocolError(ValueError):
    """
    A line that is not valid line protocol.

    ``line`` is its number (1-based, physical lines), ``text`` the line as
    sent (cut to 200 characters) and ``reason`` what is wrong with it.
    """

    def __init__(self, line: int, text: str, reason: str):
        self.line = line
        self.text = text
        self.reason = reason
        super().__init__(str(self))

    def __str__(self) -> str:
        return "unable to parse line {} '{}': {}".format(self.line, self.text, self.reason)


class Point(NamedTuple):
    """One parsed line: its tags in the order sent, fields by key, timestamp in ns or None."""

    measurement: str
    tags: Tuple[Tuple[str, str], ...]
    fields: Dict[str, FieldValue]
    time_ns: Optional[int]
    line: int


def parse(body: Union[bytes, str], precision: str = "ns", max_points: Optional[int] = None) -> List[Point]:
    """
    Every point in ``body``; a :class:`LineProtocolError` for the first bad line.

    ``precision`` is a key of :data:`PRECISIONS`; ``max_points`` bounds the
    work: one more point raises a :class:`TooManyPoints`.
    """
    scale = PRECISIONS[precision]
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            good = body[: e.start].decode("utf-8")
            line = good.count("\n") + 1
            start = good.rfind("\n") + 1
            shown = body[start : body.find(b"\n", e.start) if b"\n" in body[e.start :] else len(body)]
            raise LineProtocolError(
                line, _shown(shown.decode("utf-8", "replace")), "invalid UTF-8 at column {}".format(e.start - start + 1)
            ) from None
    else:
        text = body
    points: List[Point] = []
    append = points.append
    end = len(text)
    pos = 0
    line = 1
    match = LINE.match
    tags_of = _TAGS.findall
    fields_of = _FIELDS.findall
    while pos < end:
        m = match(text, pos)
        if m is None:
            raise _diagnose(text, pos, line)
        measurement, tag_text, field_text, stamp = m.groups()
        if measurement is not None:
            if "\\" in measurement:
                measurement = _UNESCAPE_MEASUREMENT.sub(r"\1", measurement)
            if not tag_text:
                tags: Tuple[Tuple[str, str], ...] = ()
            elif "\\" in tag_text:
                tags = tuple((_UNESCAPE_KEY.sub(r"\1", k), _UNESCAPE_KEY.sub(r"\1", v)) for k, v in tags_of(tag_text))
            else:  # no escapes: every ',' and '=' is a separator
                tags = tuple(tuple(pair.split("=")) for pair in tag_text[1:].split(","))
            if len(tags) > 1 and len({k for k, _ in tags}) != len(tags):
                seen = set()
                for k, _ in tags:
                    if k in seen:
                        raise _error(text, pos, line, "duplicate tag key {!r}".format(k))
                    seen.add(k)
            fields: Dict[str, FieldValue] = {}
            if '"' in field_text or "\\" in field_text:
                pairs = fields_of(field_text)
            else:  # no strings, no escapes: every ',' and '=' is a separator
                pairs = [pair.split("=") for pair in field_text.split(",")]
            for key, raw in pairs:
                if "\\" in key:
                    key = _UNESCAPE_KEY.sub(r"\1", key)
                first = raw[0]
                value: FieldValue
                if first == '"':
                    string = raw[1:-1]
                    if "\\" in string:
                        string = _UNESCAPE_STRING.sub(r"\1", string)
                    value = string
                    if len(string) > MAX_STRING_BYTES // 4 and len(string.encode("utf-8")) > MAX_STRING_BYTES:
                        raise _error(
                            text, pos, line,
                            "string value of field {!r} is longer than {} bytes".format(key, MAX_STRING_BYTES),
                        )
                elif first in "tTfF":
                    value = _BOOLS[raw]
                else:
                    last = raw[-1]
                    if last == "i":
                        value = int(raw[:-1])
                        if not INT64_MIN <= value <= INT64_MAX:
                            raise _error(text, pos, line, "integer value of field {!r} is out of range (int64)".format(key))
                    elif last == "u":
                        value = int(raw[:-1])
                        if value > UINT64_MAX:
                            raise _error(text, pos, line, "unsigned value of field {!r} is out of range (uint64)".format(key))
                    else:
                        value = float(raw)
                        if math.isinf(value):
                            raise _error(text, pos, line, "float value of field {!r} is out of range".format(key))
                fields[key] = value
            if stamp is not None:
                time_ns: Optional[int] = int(stamp) * scale
                if not TIME_MIN <= time_ns <= TIME_MAX:  # type: ignore[operator]
                    raise _error(text, pos, line, "timestamp {} is out of range".format(stamp))
            else:
                time_ns = None
            if max_points is not None and len(points) >= max_points:
                raise TooManyPoints(max_points)
            append(Point(measurement, tags, fields, time_ns, line))
        pos = m.end()
        line += text.count("\n", m.start(), pos)
    return points


class TooManyPoints(ValueError):
    """The body holds more points than the caller allows."""

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__("more than {} points".format(limit))


def _shown(line: str) -> str:
    """A line as an error message quotes it: control characters escaped, at most 200 characters."""
    line = _FORBIDDEN_IN_NAMES.sub(lambda m: "\\x{:02x}".format(ord(m.group())), line)
    return line if len(line) <= 200 else line[:197] + "..."


def _line_at(text: str, pos: int) -> str:
    stop = text.find("\n", pos)
    return text[pos : stop if stop >= 0 else len(text)].rstrip("\r")


def _error(text: str, pos: int, line: int, reason: str) -> LineProtocolError:
    return LineProtocolError(line, _shown(_line_at(text, pos)), reason)


def _diagnose(text: str, pos: int, line: int) -> LineProtocolError:
    """Why the line at ``pos`` is not line protocol (it did not match :data:`LINE`)."""
    reason = _reason(text, pos)
    return _error(text, pos, line, reason)


def _reason(text: str, start: int) -> str:  # noqa: C901 - one branch per grammar element
    end = len(text)

    def at(i: int) -> str:
        return text[i] if i < end else ""

    def column(i: int) -> int:
        return i - start + 1

    def describe(c: str) -> str:
        return "end of line" if c in ("", "\n", "\r") else repr(c)

    i = start
    while at(i) == " ":
        i += 1
    if at(i) == "#":
        bad = _D_CONTROL.search(text, i)
        return "invalid control character {!r} in comment at column {}".format(bad.group() if bad else "", column(bad.start() if bad else i))
    m = _D_MEASUREMENT.match(text, i)
    if m is None:
        if at(i) == "\r":
            return "carriage return not followed by a newline at column {}".format(column(i))
        return "invalid character {} at the start of the measurement (column {})".format(describe(at(i)), column(i))
    i = m.end()
    tag_keys = set()
    while at(i) == ",":
        i += 1
        k = _D_KEY.match(text, i)
        if k is None:
            return "expected a tag key at column {}, found {}".format(column(i), describe(at(i)))
        i = k.end()
        if at(i) != "=":
            return "expected '=' after tag key {!r} at column {}, found {}".format(k.group(), column(i), describe(at(i)))
        i += 1
        v = _D_KEY.match(text, i)
        if v is None:
            return "expected a tag value after tag key {!r} at column {}, found {}".format(k.group(), column(i), describe(at(i)))
        i = v.end()
        tag_keys.add(k.group())
    if at(i) != " ":
        if at(i) in ("", "\n", "\r"):
            return "missing fields (a line needs at least one field)"
        return "invalid character {} at column {}".format(describe(at(i)), column(i))
    while at(i) == " ":
        i += 1
    if at(i) in ("", "\n", "\r"):
        return "missing fields (a line needs at least one field)"
    while True:
        k = _D_KEY.match(text, i)
        if k is None:
            return "expected a field key at column {}, found {}".format(column(i), describe(at(i)))
        i = k.end()
        if at(i) != "=":
            return "expected '=' after field key {!r} at column {}, found {}".format(k.group(), column(i), describe(at(i)))
        i += 1
        v = _D_VALUE.match(text, i)
        if v is None:
            if at(i) in ("", "\n", "\r", " ", ","):
                return "missing value for field {!r} at column {}".format(k.group(), column(i))
            if at(i) == '"':
                closed = _D_STRING.match(text, i)
                if closed is not None:
                    return "unexpected character {} after a field value at column {}".format(
                        describe(at(closed.end())), column(closed.end())
                    )
                return "unterminated string value for field {!r} at column {}".format(k.group(), column(i))
            stop = i
            while stop < end and text[stop] not in " ,\r\n":
                stop += 1
            return "invalid value {!r} for field {!r} at column {}".format(text[i:stop][:40], k.group(), column(i))
        i = v.end()
        if at(i) == ",":
            i += 1
            continue
        break
    if at(i) not in ("", "\n", "\r", " "):
        return "unexpected character {} after a field value at column {}".format(describe(at(i)), column(i))
    while at(i) == " ":
        i += 1
    if at(i) not in ("", "\n", "\r"):
        t = _D_TIMESTAMP.match(text, i)
        stop = i
        while stop < end and text[stop] not in " \r\n":
            stop += 1
        if t is None or t.end() != stop:
            return "invalid timestamp {!r} at column {}".format(text[i:stop][:40], column(i))
        i = stop
        while at(i) == " ":
            i += 1
        if at(i) not in ("", "\n", "\r"):
            return "unexpected text after the timestamp at column {}".format(column(i))
    if at(i) == "\r" and at(i + 1) not in ("\n", ""):
        return "carriage return not followed by a newline at column {}".format(column(i))
    return "invalid line"


# -- the other way round: points to line protocol ----------------------------


def escape_measurement(name: str) -> str:
    """A measurement name as line protocol writes it."""
    _check_name(name, "measurement")
    if name.startswith("#"):  # it would read as a comment, and '\#' keeps its backslash
        raise ValueError("a measurement starting with '#' cannot be written")
    return _ESCAPE_MEASUREMENT.sub(r"\\\1", name)


def escape_key(name: str, what: str = "key") -> str:
    """A tag key, tag value or field key as line protocol writes it."""
    _check_name(name, what)
    return _ESCAPE_KEY.sub(r"\\\1", name)


def _check_name(name: str, what: str) -> None:
    if not name:
        raise ValueError("an empty {} cannot be written".format(what))
    if _FORBIDDEN_IN_NAMES.search(name):
        raise ValueError("a {} with control characters cannot be written".format(what))


def format_value(value: FieldValue) -> str:
    """A field value as line protocol writes it: floats plain, ints with ``i``, text quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Unsigned):
        return value.text
    if isinstance(value, int):
        return "{}i".format(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            raise ValueError("NaN and infinities cannot be written")
        return repr(value)
    if isinstance(value, str):
        return '"' + _ESCAPE_STRING.sub(r"\\\1", value) + '"'
    raise TypeError("no line protocol type for {!r}".format(value))


def format_line(
    measurement: str,
    tags: Union[Mapping[str, str], Sequence[Tuple[str, str]]],
    fields: Union[Mapping[str, Any], Sequence[Tuple[str, Any]]],
    time: Optional[int] = None,
) -> str:
    """One line of line protocol (no newline).  ``fields`` values may be :class:`Unsigned`."""
    tag_items: Iterable[Tuple[str, str]] = tags.items() if isinstance(tags, Mapping) else tags
    field_items: Iterable[Tuple[str, Any]] = fields.items() if isinstance(fields, Mapping) else fields
    series = escape_measurement(measurement) + "".join(
        ",{}={}".format(escape_key(k, "tag key"), escape_key(v, "tag value")) for k, v in tag_items
    )
    field_set = ",".join(
        "{}={}".format(escape_key(k, "field key"), format_value(v))
        for k, v in field_items
    )
    if not field_set:
        raise ValueError("a line needs at least one field")
    return series + " " + field_set + ("" if time is None else " {}".format(time))


class Unsigned(int):
    """An integer written as an unsigned (``u``) field value."""

    @property
    def text(self) -> str:
        """The value with its ``u`` suffix."""
        return "{}u".format(int(self))
