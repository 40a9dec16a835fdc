"""
Issue 12: uploads built to make the server work, through real ports.

Bounded parsing (finding 2): each parser counts rows and columns as it
goes and refuses at ``MAX_ROWS_PER_UPLOAD``/``MAX_COLUMNS``, so a body whose
rest would be an error of another kind is refused for its size, without
the rest being read.  Duplicate JSON/msgpack keys and non-ASCII names that
``lower()`` folds into ASCII ones are refused (finding 14).
"""

from __future__ import annotations

import json

import msgpack
from twisted.internet import defer
from twisted.trial import unittest

from co2logd import payloads
from co2logd.errors import IngestError
from tests.helpers import SiteMixin, make_settings, rows_in
from tests.test_udp import UDPTestMixin
from tests.transport_behaviour import TransportHarness

LIMITS = {"MAX_ROWS_PER_UPLOAD": 10, "MAX_COLUMNS": 20}


class BoundedParsingOverHTTPTests(SiteMixin, unittest.TestCase):
    """Finding 2 on a real HTTP port: refusals come at the limit, before the rest of the body."""

    @defer.inlineCallbacks
    def refused_as(self, body: bytes, content_type: str, reason: str):
        """POST ``body``; assert a 400 with ``reason`` and that nothing was stored."""
        status, answer = yield self.post(body, content_type)
        self.assertEqual((status, answer.get("reason")), (400, reason), answer)
        self.assertEqual(rows_in(self.db_path), [])

    @defer.inlineCallbacks
    def test_csv_rows_past_the_limit(self):
        """Row 11 of a CSV is refused before its broken line 13 is read."""
        self.start_site(make_settings(**LIMITS))
        body = b"co2\n" + b"1\n" * 11 + b"1,2,3\n"
        yield self.refused_as(body, "text/csv", "too-many-rows")

    @defer.inlineCallbacks
    def test_csv_header_wider_than_the_table(self):
        """A CSV header of 21 names is refused before its rows are read."""
        self.start_site(make_settings(**LIMITS))
        header = ",".join("c{}".format(i) for i in range(21)).encode()
        yield self.refused_as(header + b"\n1,2\n", "text/csv", "too-many-columns")

    @defer.inlineCallbacks
    def test_form_rows_past_the_limit(self):
        """The 11th value of a form key is refused before a malformed field after it."""
        self.start_site(make_settings(**LIMITS))
        yield self.refused_as(b"&".join([b"co2=1"] * 11) + b"&broken", "application/x-www-form-urlencoded", "too-many-rows")

    @defer.inlineCallbacks
    def test_form_columns_past_the_limit(self):
        """The 21st form key is refused before a malformed field after it."""
        self.start_site(make_settings(**LIMITS))
        body = b"&".join(b"c%d=1" % i for i in range(21)) + b"&broken"
        yield self.refused_as(body, "application/x-www-form-urlencoded", "too-many-columns")

    @defer.inlineCallbacks
    def test_json_row_objects_past_the_limit(self):
        """The 12th row object is refused before the JSON's broken end is reached."""
        self.start_site(make_settings(**LIMITS))
        body = b"[" + b",".join([b'{"co2":1}'] * 12) + b",}"
        yield self.refused_as(body, "application/json", "too-many-rows")

    @defer.inlineCallbacks
    def test_json_row_objects_with_too_many_names(self):
        """Row objects naming 21 columns between them are refused before padding or value checks."""
        self.start_site(make_settings(**LIMITS))
        rows = [{"a{}".format(i): 1, "b{}".format(i): 1, "c{}".format(i): 1} for i in range(7)]
        body = json.dumps(rows + [{"bad": [1]}]).encode()
        yield self.refused_as(body, "application/json", "too-many-columns")

    @defer.inlineCallbacks
    def test_json_column_too_long_is_refused_before_its_values_are_checked(self):
        """An 11-value column is refused for its length, before a bad value elsewhere is looked at."""
        self.start_site(make_settings(**LIMITS))
        body = json.dumps({"co2": [1] * 11, "bad": [[1]]}).encode()
        yield self.refused_as(body, "application/json", "too-many-rows")

    @defer.inlineCallbacks
    def test_msgpack_column_too_long(self):
        """The msgpack unpacker refuses an 11-value array before building it."""
        self.start_site(make_settings(**LIMITS))
        body = msgpack.packb({"co2": [1] * 11, "bad": [[1]]})
        yield self.refused_as(body, "application/msgpack", "too-many-rows")

    @defer.inlineCallbacks
    def test_msgpack_map_too_wide(self):
        """The msgpack unpacker refuses a 21-key map before building it."""
        self.start_site(make_settings(**LIMITS))
        body = msgpack.packb({"c{}".format(i): [[1]] for i in range(21)})
        yield self.refused_as(body, "application/msgpack", "too-many-columns")

    @defer.inlineCallbacks
    def test_uploads_at_the_limits_are_stored(self):
        """Exactly 10 rows, padded, are taken."""
        self.start_site(make_settings(**LIMITS))
        status, answer = yield self.post(json.dumps({"a": [1] * 10, "b": [2]}).encode(), "application/json")
        self.assertEqual((status, answer), (200, {"saved-in-db": 10}))
        status, answer = yield self.post(json.dumps([{"a": 1}] * 9 + [{"b": 2}]).encode(), "application/json")
        self.assertEqual((status, answer), (200, {"saved-in-db": 10}))
        rows = rows_in(self.db_path)
        self.assertEqual([(r["a"], r["b"]) for r in rows[-2:]], [(1, None), (None, 2)])


class BoundedParsingOverUDPTests(UDPTestMixin, TransportHarness, unittest.TestCase):
    """Finding 2 on a real UDP socket: the framing reuses the bounded parsers."""

    @defer.inlineCallbacks
    def test_csv_datagram_past_the_row_limit(self):
        """A datagram of 11 CSV rows and a broken line is refused for its rows."""
        yield self.start(**LIMITS)
        outcome = yield self.send(b"co2\n" + b"1\n" * 11 + b"1,2,3\n")
        self.assertEqual((outcome["status"], outcome["reason"]), (400, "too-many-rows"))
        self.assertEqual((yield self.store.pool.runQuery("SELECT count(*) FROM data")), [(0,)])


class DuplicateKeysAndFoldingTests(SiteMixin, unittest.TestCase):
    """Finding 14 on a real HTTP port: no silent choice between two values, no look-alike names."""

    @defer.inlineCallbacks
    def test_duplicate_json_key_is_refused_by_name(self):
        """``{"co2":1,"co2":2}`` is a 400 naming co2; nothing stored."""
        self.start_site()
        status, answer = yield self.post(b'{"co2": 1, "temp": 3, "co2": 2}', "application/json")
        self.assertEqual((status, answer["reason"]), (400, "bad-column"))
        self.assertIn("'co2' twice", answer["error"])
        status, answer = yield self.post(b'[{"co2": 1}, {"co2": 2, "co2": 3}]', "application/json")
        self.assertEqual(status, 400)
        self.assertIn("'co2' twice", answer["error"])
        self.assertEqual(rows_in(self.db_path), [])

    @defer.inlineCallbacks
    def test_duplicate_msgpack_key_is_refused_by_name(self):
        """A msgpack map with a key twice is a 400 naming it."""
        self.start_site()
        body = b"\x82\xa3co2\x01\xa3co2\x02"  # fixmap of 2: "co2": 1, "co2": 2
        status, answer = yield self.post(body, "application/msgpack")
        self.assertEqual(status, 400)
        self.assertIn("'co2' twice", answer["error"])
        self.assertEqual(rows_in(self.db_path), [])

    @defer.inlineCallbacks
    def test_names_that_fold_into_ascii_are_refused(self):
        """KELVIN SIGN lower-cases to ASCII 'k' and fullwidth letters are not ASCII: both are 400."""
        self.start_site()
        for name in ["\u212a", "co2_\u212a", "\uff4b", "Stra\u00dfe"]:
            body = json.dumps({name: 1}).encode()
            status, answer = yield self.post(body, "application/json")
            self.assertEqual((status, answer["reason"]), (400, "bad-column"), name)
        status, answer = yield self.post(b'{"k": 1}', "application/json")
        self.assertEqual(status, 200)
        rows = rows_in(self.db_path)
        self.assertEqual([r["k"] for r in rows], [1])


class LimitsUnitTests(unittest.TestCase):
    """The parsers' own counting, without a port."""

    def test_every_format_refuses_past_the_limits(self):
        """Each parser raises too-many-rows/-columns for a small Limits."""
        limits = payloads.Limits(max_rows=3, max_columns=2)
        cases = [
            (b"a\n1\n2\n3\n4\n", "text/csv", "too-many-rows"),
            (b"a,b,c\n1,2,3\n", "text/csv", "too-many-columns"),
            (b"a=1&a=2&a=3&a=4", "application/x-www-form-urlencoded", "too-many-rows"),
            (b"a=1&b=2&c=3", "application/x-www-form-urlencoded", "too-many-columns"),
            (b'{"a":[1,2,3,4]}', "application/json", "too-many-rows"),
            (b'{"a":1,"b":2,"c":3}', "application/json", "too-many-columns"),
            (b'[{"a":1},{"a":1},{"a":1},{"a":1}]', "application/json", "too-many-rows"),
            (b'[{"a":1},{"b":1},{"c":1}]', "application/json", "too-many-columns"),
            (msgpack.packb({"a": [1, 2, 3, 4]}), "application/msgpack", "too-many-rows"),
            (msgpack.packb([{"a": 1}, {"b": 1}, {"c": 1}]), "application/msgpack", "too-many-columns"),
        ]
        for body, content_type, reason in cases:
            error = self.assertRaises(IngestError, payloads.parse, body, content_type, limits)
            self.assertEqual((error.status, error.reason), (400, reason), body)

    def test_sparse_row_objects_are_placed_in_their_rows(self):
        """The linear row-object table keeps every value in its own row."""
        table = payloads.table_from_structure([{"a": 1}, {"b": 2}, {"a": 3, "c": 4}], "JSON")
        self.assertEqual(table, {"a": [1, None, 3], "b": [None, 2, None], "c": [None, None, 4]})
