"""The line-protocol parser and serialiser (co2logd.dialects.lineprotocol) against the reference grammar."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from co2logd.dialects import lineprotocol as lp
from co2logd.dialects.lineprotocol import LineProtocolError, Point, Unsigned, format_line, parse

from tests import strategies  # noqa: F401  (loads the hypothesis profile)


def one(body, precision="ns"):
    """The single point of ``body``."""
    points = parse(body, precision)
    assert len(points) == 1, points
    return points[0]


class ValidLines(unittest.TestCase):
    """Lines the reference grammar accepts, and what they hold."""

    def test_reference_example(self):
        """The docs' example: tags in order, a string field, a timestamp."""
        p = one(b'myMeasurement,tag1=value1,tag2=value2 fieldKey="fieldValue" 1556813561098000000')
        self.assertEqual(
            p, Point("myMeasurement", (("tag1", "value1"), ("tag2", "value2")), {"fieldKey": "fieldValue"}, 1556813561098000000, 1)
        )

    def test_floats(self):
        """Every float form of the grammar, exponents included, is a float."""
        for text, value in [
            ("1", 1.0), ("1.0", 1.0), ("-1.234456e+78", -1.234456e78), (".5", 0.5), ("1.", 1.0), ("-.5", -0.5),
            ("1e5", 1e5), ("1E-5", 1e-5), ("1.e3", 1e3), (".5e1", 5.0), ("007", 7.0), ("-0", -0.0), ("1.0e-4", 1e-4),
        ]:
            value_parsed = one("m f={}".format(text).encode()).fields["f"]
            self.assertIs(type(value_parsed), float, text)
            self.assertEqual(value_parsed, value, text)

    def test_integers(self):
        """``i`` integers over the whole int64 range, ``u`` over uint64."""
        self.assertEqual(one(b"m f=-9223372036854775808i").fields["f"], -(2**63))
        self.assertEqual(one(b"m f=9223372036854775807i").fields["f"], 2**63 - 1)
        self.assertEqual(one(b"m f=0u,g=18446744073709551615u").fields, {"f": 0, "g": 2**64 - 1})
        self.assertIs(type(one(b"m f=1i").fields["f"]), int)

    def test_booleans(self):
        """All ten boolean spellings; quoted ones are strings."""
        for text in ["t", "T", "true", "True", "TRUE"]:
            self.assertIs(one("m f={}".format(text).encode()).fields["f"], True)
        for text in ["f", "F", "false", "False", "FALSE"]:
            self.assertIs(one("m f={}".format(text).encode()).fields["f"], False)
        self.assertEqual(one(b'm f="true"').fields["f"], "true")
        self.assertEqual(one(b'm f="1"').fields["f"], "1")

    def test_strings(self):
        """String values: escaped quote and backslash, other backslashes literal, commas, spaces, newlines and '=' inside."""
        self.assertEqual(one(br'm f="a \"b\" c"').fields["f"], 'a "b" c')
        self.assertEqual(one(br'm f="back\\slash"').fields["f"], "back\\slash")
        self.assertEqual(one(br'm f="a\nb\tc\d"').fields["f"], r"a\nb\tc\d")
        self.assertEqual(one(b'm f="x, y=z w",g=1').fields, {"f": "x, y=z w", "g": 1.0})
        self.assertEqual(parse(b'm f="two\nlines"\nn g=1')[1].line, 3)
        self.assertEqual(one('m f="Launch 🚀"'.encode()).fields["f"], "Launch 🚀")
        self.assertEqual(one(b'm f=""').fields["f"], "")
        self.assertEqual(one(b"m f=\"it's\"").fields["f"], "it's")

    def test_escapes_in_names(self):
        """Measurement: comma and space; tag keys, tag values, field keys: comma, '=' and space."""
        p = one(br"my\ Meas\,ure=ment,tag\ Key1=tag\ Value1,t\=k=v\,w field\ Key\,x\=y=100")
        self.assertEqual(p.measurement, "my Meas,ure=ment")
        self.assertEqual(p.tags, (("tag Key1", "tag Value1"), ("t=k", "v,w")))
        self.assertEqual(p.fields, {"field Key,x=y": 100.0})
        self.assertEqual(one(br"m\=x f=1").measurement, r"m\=x")  # '=' is not escaped in a measurement
        self.assertEqual(one(br"\#m f=1").measurement, "\\#m")  # an escape sequence, kept: '#' is no escaped character
        self.assertRaises(ValueError, format_line, "#m", {}, {"f": 1.0})
        self.assertEqual(one(b'm"x,t"=v"\' f"=1').measurement, 'm"x')

    def test_backslashes(self):
        """The docs' table: \\ is \\, \\\\ is \\, \\\\\\ is \\\\, and so on; before other characters literal."""
        for sent, meant in [("\\", "\\"), ("\\\\", "\\"), ("\\\\\\", "\\\\"), ("\\\\\\\\", "\\\\"), ("\\\\\\\\\\", "\\\\\\")]:
            self.assertEqual(one("m,t=a{}b f=1".format(sent).encode()).tags[0][1], "a{}b".format(meant), sent)
            self.assertEqual(one("m{}x f=1".format(sent).encode()).measurement, "m{}x".format(meant), sent)
        self.assertEqual(one(br"m,t=a\\ f=1").tags, (("t", "a\\"),))  # \\ then the separating space
        self.assertEqual(one(br"m,t=C:\dir f=1").tags, (("t", "C:\\dir"),))

    def test_layout(self):
        """Comments, blank lines, CRLF, leading, repeated and trailing spaces; a final CR."""
        body = b"# a comment\n\n   \n  # indented comment\twith tab\r\n  m,t=1  f=1   123   \r\nn g=2i\r"
        points = parse(body)
        self.assertEqual([(p.measurement, p.time_ns, p.line) for p in points], [("m", 123, 5), ("n", None, 6)])
        self.assertEqual(parse(b""), [])
        self.assertEqual(parse(b"\n\n# only comments\n"), [])

    def test_timestamps_and_precision(self):
        """The timestamp scales by precision; negative ones and the range ends are valid."""
        self.assertEqual(one(b"m f=1 -1").time_ns, -1)
        self.assertEqual(one(b"m f=1 9223372036854775806").time_ns, 9223372036854775806)
        self.assertEqual(one(b"m f=1 -9223372036854775806").time_ns, -9223372036854775806)
        for precision, scale in [("ns", 1), ("n", 1), ("us", 1000), ("u", 1000), ("ms", 10**6), ("s", 10**9), ("m", 60 * 10**9), ("h", 3600 * 10**9)]:
            self.assertEqual(one(b"m f=1 7", precision).time_ns, 7 * scale)
        self.assertIsNone(one(b"m f=1").time_ns)

    def test_duplicate_field_keeps_last(self):
        """A repeated field key keeps its last value, as InfluxDB does."""
        self.assertEqual(one(b"m f=1,f=2i").fields, {"f": 2})

    def test_long_string_limit(self):
        """A string value of 64 KiB is taken; one byte more is not."""
        self.assertEqual(len(one(b'm f="' + b"x" * 65536 + b'"').fields["f"]), 65536)
        self.assertRaises(LineProtocolError, parse, b'm f="' + b"x" * 65537 + b'"')
        self.assertRaises(LineProtocolError, parse, 'm f="{}"'.format("é" * 32769).encode())


INVALID = [
    (b"m", "missing fields"),
    (b"m ", "missing fields"),
    (b"m,t=1", "missing fields"),
    (b"m f=", "missing value"),
    (b"m f", "expected '='"),
    (b"m =1", "expected a field key"),
    (b" f=1", "missing fields"),  # leading spaces are skipped: 'f=1' is the measurement
    (b"#m f=1\nm\x00 f=1", "invalid character"),
    (b",t=1 f=1", "measurement"),
    (b"m,=1 f=1", "tag key"),
    (b"m,t= f=1", "tag value"),
    (b"m,t f=1", "expected '='"),
    (b"m, f=1", "tag key"),
    (b"m,t=1, f=1", "tag key"),
    (b"m,t=a=b f=1", "invalid character"),
    (b"m,t=a,t=b f=1", "duplicate tag key"),
    (b"m f=1,", "field key"),
    (b"m f=1,,g=2", "field key"),
    (b"m f=1 g=2", "timestamp"),
    (b"m f=1 12x", "timestamp"),
    (b"m f=1 1.5", "timestamp"),
    (b"m f=1 1 2", "after the timestamp"),
    (b"m f=1 9223372036854775807", "out of range"),
    (b"m f=1 -9223372036854775807", "out of range"),
    (b"m f=1.5i", "invalid value"),
    (b"m f=1.5u", "invalid value"),
    (b"m f=-1u", "invalid value"),
    (b"m f=1iu", "invalid value"),
    (b"m f=+1", "invalid value"),
    (b"m f=1e", "invalid value"),
    (b"m f=.", "invalid value"),
    (b"m f=-", "invalid value"),
    (b"m f=1_000", "invalid value"),
    (b"m f=0x10", "invalid value"),
    (b"m f=NaN", "invalid value"),
    (b"m f=Inf", "invalid value"),
    (b"m f=inf", "invalid value"),
    (b"m f=1e400", "out of range"),
    (b"m f=9223372036854775808i", "out of range"),
    (b"m f=-9223372036854775809i", "out of range"),
    (b"m f=18446744073709551616u", "out of range"),
    (b"m f=tru", "invalid value"),
    (b"m f=yes", "invalid value"),
    (b"m f=true1", "invalid value"),
    (b"m f='a'", "invalid value"),
    (b'm f="abc', "unterminated string"),
    (b'm f="a"b', "after a field value"),
    (b"m f=\xd9\xa1", "invalid value"),  # an Arabic-Indic digit is no digit
    (b"m\tx f=1", "invalid character"),
    (b"m,t=a\tb f=1", "invalid character"),
    (b"m f\x01=1", "expected '='"),
    (b"m f=1\rn g=2", "carriage return"),
    (b"\rm f=1", "carriage return"),
    (b"#comment\x01\nm f=1", "control character"),
    (b"m f=1\n\xff f=1", "UTF-8"),
    (b'm f="\xff"', "UTF-8"),
    (b"m\\\tx f=1", "invalid character"),
]


class InvalidLines(unittest.TestCase):
    """Lines the reference grammar refuses: each a LineProtocolError naming the line and why."""

    def test_invalid(self):
        """Each invalid body raises with its reason."""
        for body, words in INVALID:
            with self.subTest(body=body):
                with self.assertRaises(LineProtocolError) as caught:
                    parse(body)
                self.assertIn(words, caught.exception.reason, body)

    def test_names_the_line(self):
        """The error carries the line number and its text, as InfluxDB's 'unable to parse' message."""
        with self.assertRaises(LineProtocolError) as caught:
            parse(b"m f=1\n# note\nm f=2\nbad line here\nm f=3")
        self.assertEqual(caught.exception.line, 4)
        self.assertEqual(caught.exception.text, "bad line here")
        self.assertTrue(str(caught.exception).startswith("unable to parse line 4 'bad line here': "))

    def test_too_many_points(self):
        """``max_points`` stops at one point more."""
        self.assertEqual(len(parse(b"m f=1\nm f=2", max_points=2)), 2)
        self.assertRaises(lp.TooManyPoints, parse, b"m f=1\nm f=2\nm f=3", max_points=2)


# -- round trip ----------------------------------------------------------------

printable = st.characters(blacklist_categories=("Cs",), blacklist_characters="".join(map(chr, list(range(32)) + [127])))
names = st.text(printable, min_size=1, max_size=12)
plain_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
field_values = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(min_value=lp.INT64_MIN, max_value=lp.INT64_MAX),
    st.integers(min_value=0, max_value=lp.UINT64_MAX).map(Unsigned),
    st.booleans(),
    st.text(st.characters(blacklist_categories=("Cs",)), max_size=20),
)
timestamps = st.none() | st.integers(min_value=lp.TIME_MIN, max_value=lp.TIME_MAX)


@st.composite
def points(draw, keys=names):
    """A measurement, distinct tag keys, fields and maybe a timestamp."""
    tag_keys = draw(st.lists(keys, unique=True, max_size=4))
    tags = tuple((k, draw(names)) for k in tag_keys)
    fields = draw(st.dictionaries(keys, field_values, min_size=1, max_size=5))
    measurement = draw(names.filter(lambda name: not name.startswith("#")))
    return measurement, tags, fields, draw(timestamps)


def same(a, b) -> bool:
    """Equal values of equal types (floats by bits, so -0.0 is not 0.0)."""
    if type(a) is float and type(b) is float:
        return math.copysign(1, a) == math.copysign(1, b) and a == b
    return type(a) is type(b) and a == b


class RoundTrip(unittest.TestCase):
    """Generate → serialise → parse gives the points back, exactly."""

    @given(st.lists(points(), min_size=1, max_size=5), st.sampled_from(["\n", "\r\n"]), st.booleans())
    def test_round_trip(self, generated, newline, comments):
        """Any names (escapes of every kind), every field type, both line ends, comments between lines."""
        lines = []
        for measurement, tags, fields, time in generated:
            if comments:
                lines.append("# a comment, with = and \\ and \"")
            lines.append(format_line(measurement, tags, fields, time))
        parsed = parse(newline.join(lines).encode("utf-8"))
        self.assertEqual(len(parsed), len(generated))
        for point, (measurement, tags, fields, time) in zip(parsed, generated):
            self.assertEqual(point.measurement, measurement)
            self.assertEqual(point.tags, tags)
            self.assertEqual(point.time_ns, time)
            self.assertEqual(list(point.fields), list(fields))
            for key, value in fields.items():
                expected = int(value) if isinstance(value, Unsigned) else value
                self.assertTrue(same(point.fields[key], expected), (key, point.fields[key], expected))

    @given(st.binary(max_size=200))
    def test_any_bytes(self, body):
        """Any bytes parse or raise LineProtocolError: never another exception."""
        try:
            parse(body)
        except LineProtocolError as e:
            self.assertGreaterEqual(e.line, 1)

    @given(st.lists(points(plain_keys), min_size=1, max_size=3), st.integers(0, 40), st.binary(min_size=1, max_size=3))
    def test_mangled(self, generated, where, junk):
        """Valid text with bytes spliced in parses or raises LineProtocolError."""
        body = "\n".join(format_line(*p) for p in generated).encode()
        body = body[:where] + junk + body[where:]
        try:
            parse(body)
        except LineProtocolError:
            pass


class FastTable(unittest.TestCase):
    """influx.table_of_body (the fast way for plain batches) gives what table_of(parse(...)) gives."""

    def outcome(self, function):
        """("stored", table, rows), or ("refused",)."""
        from co2logd.errors import IngestError

        try:
            table, rows = function()
        except (LineProtocolError, IngestError, lp.TooManyPoints):
            return ("refused",)
        return ("stored", table, list(table), rows)

    def same(self, body: bytes, precision: str = "ns") -> None:
        """Both ways agree on ``body``: the same table (columns in the same order), or both refuse it."""
        from co2logd.dialects import influx

        slow = self.outcome(lambda: influx.table_of(parse(body, precision, 50), 7.5))
        fast = self.outcome(lambda: influx.table_of_body(body, precision, 7.5, 50))
        self.assertEqual(fast, slow, body)

    @given(st.lists(points(plain_keys), min_size=1, max_size=6), st.sampled_from(["ns", "s", "h"]), st.booleans())
    def test_generated(self, generated, precision, repeat):
        """Generated batches (plain keys, every type, merges when repeated, blank lines) agree."""
        lines = [format_line(m, t, {k: v for k, v in f.items() if not isinstance(v, str)} or {"x": 1.0}, ts) for m, t, f, ts in generated]
        if repeat:
            lines = lines + ["", "  "] + lines
        self.same("\n".join(lines).encode(), precision)

    @given(st.lists(st.sampled_from([
        "m f=1", "m,a=1 f=1i 5", "m,a=1 A=2", "m,t=1,T=2 f=1", "m F=1,f=2", "m f=1,f=2", "m time=1", "m,measurement=x f=1",
        "m f=9223372036854775808u", "m f=18446744073709551616u", "m f=9223372036854775808i", "m f=1e400", "m f=1 9223372036854775807",
        "m,a=1,a=2 f=1", "m f=", "m  f=1  2  ", " m f=t", "m f=1 -5", "m,b=2,a=1 g=2 5", "m,a=1,b=2 h=3u 5", "m f=-0",
    ]), min_size=1, max_size=5))
    def test_edges(self, lines):
        """Collisions, ranges, duplicates, merges and spaces: the same answer both ways."""
        self.same("\n".join(lines).encode())
