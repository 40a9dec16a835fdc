"""
Issue 12: uploads built to make the server work, through real ports.

Bounded parsing (finding 2): each parser counts rows and columns as it
goes and refuses at ``MAX_ROWS_PER_UPLOAD``/``MAX_COLUMNS``, so a body whose
rest would be an error of another kind is refused for its size, without
the rest being read.  Duplicate JSON/msgpack keys and non-ASCII names that
``lower()`` folds into ASCII ones are refused (finding 14).  A replay with
its Content-Timestamp header renamed Content-Counter is a 403 ``replay``
over every transport (finding 4).  Checksum work is one hash per algorithm,
with a cap on checksum headers (finding 6).
"""

from __future__ import annotations

import hashlib
import json
import time

import msgpack
import treq
from twisted.internet import defer
from twisted.web.http_headers import Headers
from twisted.trial import unittest

from co2logd import payloads
from co2logd.ingest import auth
from co2logd.errors import IngestError
from co2logd.settings import Settings
from tests.helpers import README_JSON, README_SALT, SiteMixin, make_settings, rows_in
from tests.test_serial import PtyMixin
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


def timestamp_upload(body: bytes = README_JSON):
    """A device's upload with Content-Timestamp (now) and the checksum over ``timestamp:T``, ``\\n``, body."""
    value = str(int(time.time()))
    digest = hashlib.md5(b"timestamp:" + value.encode() + b"\n" + body + README_SALT.encode()).hexdigest()
    return value, [("Content-Timestamp", value), ("Content-MD5-Salted", digest)]


def renamed(headers):
    """What an attacker sends again: the same headers with Content-Timestamp renamed Content-Counter."""
    return [("Content-Counter" if name == "Content-Timestamp" else name, value) for name, value in headers]


REPLAY = {"CHECKSUM_SALTS": [README_SALT], "REPLAY_PROTECTION": "optional"}


class RenamedReplayMixin:
    """Finding 4 over a transport with ``send(payload, headers)``: the claim's kind is signed."""

    @defer.inlineCallbacks
    def test_renamed_claim_is_a_replay(self):
        """Stored once with Content-Timestamp; the same bytes under Content-Counter are 403 replay."""
        yield self.start(**REPLAY)
        _, headers = timestamp_upload()
        outcome = yield self.send(README_JSON, headers)
        self.assertEqual(outcome, {"saved-in-db": 2})
        outcome = yield self.send(README_JSON, renamed(headers))
        self.assertEqual((outcome.get("status"), outcome.get("reason")), (403, "replay"), outcome)
        (count,), = yield self.store.pool.runQuery("SELECT count(*) FROM data")
        self.assertEqual(count, 2)

    @defer.inlineCallbacks
    def test_renamed_claim_is_a_replay_when_auth_is_required(self):
        """With UPLOAD_REQUIRES_AUTH the renamed copy is still named a replay, not only a bad checksum."""
        yield self.start(UPLOAD_REQUIRES_AUTH=True, **REPLAY)
        _, headers = timestamp_upload()
        self.assertEqual((yield self.send(README_JSON, headers)), {"saved-in-db": 2})
        outcome = yield self.send(README_JSON, renamed(headers))
        self.assertEqual((outcome.get("status"), outcome.get("reason")), (403, "replay"), outcome)

    @defer.inlineCallbacks
    def test_devices_without_a_claim_are_unchanged(self):
        """An old device's co2logserver checksum over the payload alone still matches."""
        yield self.start(UPLOAD_REQUIRES_AUTH=True, **REPLAY)
        digest = hashlib.md5(README_JSON + README_SALT.encode()).hexdigest()
        self.assertEqual((yield self.send(README_JSON, [("Content-MD5-Salted", digest)])), {"saved-in-db": 2})


class RenamedReplayOverUDPTests(RenamedReplayMixin, UDPTestMixin, TransportHarness, unittest.TestCase):
    """Finding 4 on a real UDP socket."""


class RenamedReplayOverSerialTests(RenamedReplayMixin, PtyMixin, TransportHarness, unittest.TestCase):
    """Finding 4 on a real pty."""


class RenamedReplayOverHTTPTests(SiteMixin, unittest.TestCase):
    """Finding 4 on a real HTTP port."""

    @defer.inlineCallbacks
    def test_renamed_claim_is_a_replay(self):
        """The captured upload with its header renamed is 403 replay; one copy stored."""
        self.start_site(make_settings(**REPLAY))
        _, headers = timestamp_upload()
        status, answer = yield self.post(README_JSON, "application/json", dict(headers))
        self.assertEqual((status, answer), (200, {"saved-in-db": 2}))
        status, answer = yield self.post(README_JSON, "application/json", dict(renamed(headers)))
        self.assertEqual((status, answer["reason"]), (403, "replay"), answer)
        self.assertEqual(len(rows_in(self.db_path)), 2)


class ChecksumWorkTests(SiteMixin, unittest.TestCase):
    """Finding 6: at most MAX_CHECKSUM_HEADERS headers, one pass over the body per algorithm."""

    @defer.inlineCallbacks
    def test_too_many_checksum_headers_are_refused_before_hashing(self):
        """Nine checksum headers are a 400 naming MAX_CHECKSUM_HEADERS; eight, one of them right, are fine."""
        self.start_site(make_settings(CHECKSUM_SALTS=["a", "b", README_SALT], UPLOAD_REQUIRES_AUTH=True))
        digests = []
        self.patch(auth, "salted_digests", lambda *args: digests.append(args[2]) or ["0" * 64] * 3)
        wrong = [("Content-SHA256-Salted", "{:064x}".format(i)) for i in range(8)]
        response = yield treq.post(self.url + "/upload", data=README_JSON, headers=Headers(
            {"Content-Type": ["application/json"], "Content-SHA256-Salted": [v for _, v in wrong] + ["0" * 64]}), persistent=False)
        answer = yield treq.json_content(response)
        self.assertEqual((response.code, answer["reason"]), (400, "too-many-checksums"), answer)
        self.assertIn("MAX_CHECKSUM_HEADERS", answer["error"])
        self.assertEqual(digests, [])  # refused before any hashing
        self.assertEqual(rows_in(self.db_path), [])

    @defer.inlineCallbacks
    def test_eight_headers_are_accepted(self):
        """Up to MAX_CHECKSUM_HEADERS headers are read; the right one authenticates."""
        self.start_site(make_settings(CHECKSUM_SALTS=["a", "b", README_SALT], UPLOAD_REQUIRES_AUTH=True))
        right = hashlib.md5(README_JSON + README_SALT.encode()).hexdigest()
        response = yield treq.post(self.url + "/upload", data=README_JSON, headers=Headers(
            {"Content-Type": ["application/json"], "Content-MD5-Salted": ["0" * 32] * 7 + [right]}), persistent=False)
        answer = yield treq.json_content(response)
        self.assertEqual((response.code, answer), (200, {"saved-in-db": 2}))
        self.assertEqual({r["matched_checksums"] for r in rows_in(self.db_path)}, {"md5"})

    def test_one_pass_over_the_body_per_algorithm(self):
        """Eight headers of two algorithms with three salts read the body twice, not 24 times."""
        hashed = []
        real_new = hashlib.new

        class Counting:
            def __init__(self, name):
                self.h = real_new(name)

            def update(self, data):
                hashed.append(len(data))
                self.h.update(data)

            def copy(self):
                twin = Counting.__new__(Counting)
                twin.h = self.h.copy()
                return twin

            def hexdigest(self, *args):
                return self.h.hexdigest(*args)

            @property
            def digest_size(self):
                return self.h.digest_size

        self.patch(auth.hashlib, "new", Counting)
        body = b"x" * 100_000
        headers = [("Content-MD5-Salted", "0" * 32)] * 4 + [("Content-SHA256-Salted", "0" * 64)] * 4
        settings = Settings.from_values({"CHECKSUM_SALTS": ["a", "b", "c"]}, environ={})
        matches = auth.Authenticator.from_settings(settings).check(body, headers, False)
        self.assertEqual(matches, {"md5": None, "sha256": None})
        self.assertEqual(sum(n for n in hashed if n == len(body)), 2 * len(body))


class SerialCSVHeaderTests(PtyMixin, TransportHarness, unittest.TestCase):
    """Finding 13 on a real pty: a row's checksum covers the CSV header line above it."""

    @defer.inlineCallbacks
    def test_signed_header_and_row_are_authenticated(self):
        """The checksum over ``header\\nrow`` marks the row authenticated."""
        yield self.start(CHECKSUM_SALTS=["psk"])
        digest = hashlib.md5(b"co2,temp\n400,20" + b"psk").hexdigest()
        self.write(b"co2,temp\r\nContent-MD5-Salted: " + digest.encode() + b"\r\n400,20\r\n")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        rows = yield self.store.pool.runQuery("SELECT co2, temp, matched_checksums, failed_checksums FROM data")
        self.assertEqual(rows, [(400, 20, "md5", "")])

    @defer.inlineCallbacks
    def test_forged_header_leaves_the_row_unauthenticated(self):
        """A forged header before a row signed without it: stored, but not marked authenticated."""
        yield self.start(CHECKSUM_SALTS=["psk"])
        digest = hashlib.md5(b"400,20" + b"psk").hexdigest()  # the row alone, as before issue 12
        self.write(b"temp,co2\r\nContent-MD5-Salted: " + digest.encode() + b"\r\n400,20\r\n")
        self.assertEqual((yield self.outcome()), {"saved-in-db": 1})
        rows = yield self.store.pool.runQuery("SELECT co2, temp, matched_checksums, failed_checksums FROM data")
        self.assertEqual(rows, [(20, 400, "", "md5")])

    @defer.inlineCallbacks
    def test_forged_header_is_refused_when_auth_is_required(self):
        """Under UPLOAD_REQUIRES_AUTH a row under a header its checksum does not cover is 403."""
        yield self.start(CHECKSUM_SALTS=["psk"], UPLOAD_REQUIRES_AUTH=True)
        digest = hashlib.md5(b"co2,temp\n400,20" + b"psk").hexdigest()
        self.write(b"temp,co2\r\nContent-MD5-Salted: " + digest.encode() + b"\r\n400,20\r\n")
        self.assertEqual((yield self.outcome())["reason"], "auth-invalid")
        self.assertEqual((yield self.store.pool.runQuery("SELECT count(*) FROM data")), [(0,)])


class ReservedRowidTests(SiteMixin, unittest.TestCase):
    """Finding 3 on a real HTTP port: rowid, _rowid_, oid cannot be uploaded, and old files with them still work."""

    @defer.inlineCallbacks
    def test_rowid_names_are_refused(self):
        """Every rowid alias, in any case and format, is a 400 naming it; nothing stored."""
        self.start_site()
        for name in ["rowid", "ROWID", "_rowid_", "oid", "Oid"]:
            status, answer = yield self.post(json.dumps({name: "x", "co2": 1}).encode(), "application/json")
            self.assertEqual((status, answer["reason"]), (400, "bad-column"), name)
            self.assertIn("rowid", answer["error"])
        status, answer = yield self.post(b"co2,oid\n1,2\n", "text/csv")
        self.assertEqual(status, 400)
        self.assertEqual(rows_in(self.db_path), [])

    def old_database(self, column: str, value) -> str:
        """A data table that an older co2logd let a ``column`` into, with 30 rows."""
        import sqlite3

        path = self.mktemp()
        connection = sqlite3.connect(path)
        connection.execute(
            'CREATE TABLE data (upload_time DATETIME, matched_checksums TEXT, failed_checksums TEXT, '
            'transport TEXT, co2 INTEGER, "{}" {})'.format(column, "TEXT" if isinstance(value, str) else "INTEGER")
        )
        now = time.time()
        for i in range(30):
            stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(now - 300 + i))
            connection.execute(
                'INSERT INTO data VALUES (?, NULL, NULL, ?, ?, ?)',
                (stamp + ".000000+00:00", "http", 400 + i, value if isinstance(value, str) else 1000 - i),
            )
        connection.commit()
        connection.close()
        return path

    @defer.inlineCallbacks
    def check_old_database(self, column: str, value):
        """Dashboard, plot, health and paging all work on a file whose table hides ``column``."""
        self.start_site(path=self.old_database(column, value))
        self.assertNotEqual(self.store.rowid, column)
        status, _, body = yield self.get("/")
        self.assertEqual(status, 200, body[:300])
        status, _, body = yield self.get("/plot?cols=co2&since=1h&width=400&height=150")
        self.assertEqual(status, 200, body[:300])
        status, _, body = yield self.get("/health")
        self.assertEqual(status, 200, body[:300])
        status, answer = yield self.post(b'{"co2": 999}', "application/json")
        self.assertEqual((status, answer), (200, {"saved-in-db": 1}))
        seen = []
        query = "after=0&number=7&format=json&cols=co2"
        for _ in range(10):
            response = yield treq.get(self.url + "/download?" + query, persistent=False)
            self.assertEqual(response.code, 200)
            data = yield treq.json_content(response)
            seen += [row["co2"] if isinstance(row, dict) else row[0] for row in (data.get("rows", data) if isinstance(data, dict) else data)]
            link = response.headers.getRawHeaders("link")
            if not link:
                break
            query = link[0].split("?", 1)[1].split(">", 1)[0]
        self.assertEqual(seen, list(range(400, 430)) + [999])

    def test_old_database_with_a_text_rowid_column(self):
        """A text ``rowid`` column (500s and a 503 health before issue 12) is read through ``_rowid_``."""
        return self.check_old_database("rowid", "abc")

    def test_old_database_with_an_integer_rowid_column(self):
        """An integer ``rowid`` column running backwards no longer misleads paging and counts."""
        return self.check_old_database("rowid", 7)

    def test_old_database_with_an_oid_column(self):
        """An ``oid`` column is harmless: ``rowid`` still names the rows."""
        return self.check_old_database("oid", "x")
