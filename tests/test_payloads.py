"""Payload parsing: co2logserver's four formats, co2logd's extra shapes, and refusals."""

from twisted.trial import unittest

from co2logd import payloads
from co2logd.errors import IngestError
from tests.helpers import README_CSV, README_FORM, README_JSON, README_MSGPACK

README_TABLE = {"time_utc": [43, 23], "co2": [1223, 2351]}


class ReadmeExamplesTests(unittest.TestCase):
    """The original README's four examples all give the same two-row table."""

    def test_json(self):
        """The JSON table example parses to two rows."""
        self.assertEqual(payloads.parse(README_JSON, "application/json"), README_TABLE)

    def test_csv(self):
        """The CSV example parses, numbers turned into numbers."""
        self.assertEqual(payloads.parse(README_CSV, "text/csv"), README_TABLE)

    def test_form(self):
        """Repeated form keys make rows."""
        self.assertEqual(payloads.parse(README_FORM, "application/x-www-form-urlencoded"), README_TABLE)

    def test_msgpack(self):
        """The msgpack hex example parses, under both msgpack media types."""
        self.assertEqual(payloads.parse(README_MSGPACK, "application/msgpack"), README_TABLE)
        self.assertEqual(payloads.parse(README_MSGPACK, "application/x-msgpack"), README_TABLE)


class ShapeTests(unittest.TestCase):
    """The shapes co2logd accepts beyond co2logserver's."""

    def test_content_type_parameters(self):
        """'; charset=utf-8' and upper case in the media type are accepted."""
        self.assertEqual(payloads.parse(README_JSON, "Application/JSON; charset=utf-8"), README_TABLE)

    def test_object_of_scalars_is_one_row(self):
        """{"co2": 640} is one row."""
        self.assertEqual(payloads.parse(b'{"co2": 640, "ok": true}', "application/json"), {"co2": [640], "ok": [True]})

    def test_list_of_row_objects(self):
        """A list of row objects becomes a table; missing keys are null."""
        table = payloads.parse(b'[{"a": 1}, {"b": "x"}, {"a": 3, "b": null}]', "application/json")
        self.assertEqual(table, {"a": [1, None, 3], "b": [None, "x", None]})

    def test_unequal_columns_are_padded(self):
        """Shorter columns get nulls at the end, as co2logserver does."""
        self.assertEqual(payloads.parse(b'{"a": [1, 2, 3], "b": [4]}', "application/json"), {"a": [1, 2, 3], "b": [4, None, None]})

    def test_csv_values(self):
        """CSV cells: ints, floats, text; an empty cell is null."""
        table = payloads.parse(b"a,b,c\r\n1,2.5,hello\r\n-3,,1e3\r\n", "text/csv")
        self.assertEqual(table, {"a": [1, -3], "b": [2.5, None], "c": ["hello", 1000.0]})

    def test_text_value_keeps_words(self):
        """Only plain decimal numbers become numbers ('nan', '1_000' stay text)."""
        self.assertEqual([payloads.text_value(v) for v in ["nan", "1_000", "0x10", "12"]], ["nan", "1_000", "0x10", 12])


class DetectionTests(unittest.TestCase):
    """Without a content type (UDP, serial) the format is detected."""

    def test_detects_each_format(self):
        """msgpack map, JSON, form and CSV are each recognised."""
        for body in (README_MSGPACK, README_JSON, README_FORM, README_CSV):
            self.assertEqual(payloads.parse(body, None), README_TABLE)


class RefusalTests(unittest.TestCase):
    """Bad payloads are refused with a clear 4xx, never an exception of another kind."""

    def assertRefused(self, body, content_type="application/json", status=400, word=None):
        e = self.assertRaises(IngestError, payloads.parse, body, content_type)
        self.assertEqual(e.status, status)
        if word:
            self.assertIn(word, e.message)
        return e

    def test_invalid_json(self):
        """Broken JSON: 400 naming JSON."""
        self.assertRefused(b'{"co2": [1,', word="JSON")

    def test_empty(self):
        """An empty body: 400."""
        self.assertRefused(b"", word="empty")
        self.assertRefused(b"  \n", "text/csv", word="empty")

    def test_empty_object_and_list(self):
        """{} and [] hold nothing."""
        self.assertRefused(b"{}")
        self.assertRefused(b"[]")

    def test_nested_values(self):
        """Nested lists or objects as values are refused."""
        self.assertRefused(b'{"co2": [[1, 2]]}', word="co2")
        self.assertRefused(b'{"co2": {"a": 1}}', word="co2")

    def test_top_level_scalar(self):
        """A bare number or string is not a table."""
        self.assertRefused(b"42")
        self.assertRefused(b'"text"')

    def test_list_of_non_objects(self):
        """A list of numbers is not a list of rows."""
        self.assertRefused(b"[1, 2, 3]", word="row objects")

    def test_mixed_lists_and_scalars(self):
        """An object mixing lists and single values is ambiguous."""
        self.assertRefused(b'{"a": [1, 2], "b": 3}', word="mixes")

    def test_nan_and_infinity(self):
        """NaN and Infinity are not numbers JSON allows."""
        self.assertRefused(b'{"a": [NaN]}')
        self.assertRefused(b'{"a": [Infinity]}')
        self.assertRefused(b'{"a": [1e999]}', word="finite")

    def test_ragged_csv(self):
        """A CSV row with more or fewer cells than the header: 400 naming the line."""
        self.assertRefused(b"a,b\n1,2,3\n", "text/csv", word="line 2")
        self.assertRefused(b"a,b\n1,2\n3\n", "text/csv", word="line 3")

    def test_duplicate_csv_header(self):
        """A CSV header naming a column twice is refused."""
        self.assertRefused(b"a,a\n1,2\n", "text/csv", word="twice")

    def test_msgpack_garbage(self):
        """Bytes that are not msgpack are refused; so is trailing data."""
        self.assertRefused(b"\xc1\xc1\xc1", "application/msgpack", word="msgpack")
        self.assertRefused(README_MSGPACK + b"\x01", "application/msgpack", word="extra")

    def test_msgpack_binary_values(self):
        """msgpack bin values are not one of the allowed value types."""
        import msgpack

        self.assertRefused(msgpack.packb({"a": [b"\x00"]}), "application/msgpack")

    def test_non_utf8(self):
        """Text formats must be UTF-8."""
        self.assertRefused(b"a,b\n\xff,1\n", "text/csv", word="UTF-8")

    def test_bad_form(self):
        """A form body with a field lacking '=' is refused."""
        self.assertRefused(b"a=1&b", "application/x-www-form-urlencoded", word="form")

    def test_unknown_content_type(self):
        """An unknown or empty media type is 415."""
        self.assertRefused(README_JSON, "text/plain", status=415, word="Content-Type")
        self.assertRefused(README_JSON, "", status=415)
