"""The ingest service: parse → auth → normalise → store, the same for every transport."""

import sqlite3

from twisted.internet import defer
from twisted.trial import unittest

from co2logd.errors import IngestError
from co2logd.ingest import Upload
from tests.helpers import README_JSON, README_MD5, README_SALT, StoreMixin, make_settings, rows_in


class IngestTests(StoreMixin, unittest.TestCase):
    """What gets stored, and what is refused."""

    @defer.inlineCallbacks
    def refused(self, body, content_type="application/json", status=400, headers=None):
        """Assert an IngestError with ``status`` and that nothing was stored."""
        before = rows_in(self.db_path)
        columns_before = dict(self.store.columns)
        e = yield self.assertFailure(self.ingest.ingest(Upload(body, content_type, headers or {}, "test")), IngestError)
        self.assertEqual(e.status, status, e.message)
        self.assertEqual(rows_in(self.db_path), before)
        self.assertEqual(self.store.columns, columns_before)
        return e

    @defer.inlineCallbacks
    def test_rows_get_the_automatic_columns(self):
        """Upload time (from the clock), auth columns and transport are set on every row."""
        self.make_ingest()
        receipt = yield self.ingest.ingest(Upload(README_JSON, "application/json", {}, "udp:10.0.0.7"))
        self.assertEqual(receipt.as_dict(), {"saved-in-db": 2})
        rows = rows_in(self.db_path)
        self.assertEqual([(r["time_utc"], r["co2"]) for r in rows], [(43, 1223), (23, 2351)])
        self.assertEqual(rows[0]["time_upload_utc"], "2023-11-14 22:13:20+00:00")
        self.assertEqual(rows[0]["transport"], "udp:10.0.0.7")
        self.assertIsNone(rows[0]["matched_checksums"])

    @defer.inlineCallbacks
    def test_column_names_are_lowercased(self):
        """CO2 and Co2 are the column co2."""
        self.make_ingest()
        yield self.ingest.ingest(Upload(b'{"CO2": [1]}', "application/json", {}, "test"))
        yield self.ingest.ingest(Upload(b'{"Co2": [2]}', "application/json", {}, "test"))
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [1, 2])

    @defer.inlineCallbacks
    def test_time_columns_are_converted(self):
        """Columns in TIME_COLS pass TIME_CONVERTER; a failing value is kept as it was."""
        self.make_ingest()
        yield self.ingest.ingest(Upload(b'{"time": [43, "soon"], "co2": [1, 2]}', "application/json", {}, "test"))
        self.assertEqual([r["time"] for r in rows_in(self.db_path)], ["1970-01-01 00:00:43+00:00", "soon"])

    @defer.inlineCallbacks
    def test_accept_new_column_hook(self):
        """A column ACCEPT_NEW_COLUMN refuses is dropped, the rest stored."""
        self.make_ingest(make_settings(ACCEPT_NEW_COLUMN=lambda col: col != "junk"))
        yield self.ingest.ingest(Upload(b'{"co2": [1], "junk": [2]}', "application/json", {}, "test"))
        self.assertNotIn("junk", self.store.columns)
        self.assertEqual(rows_in(self.db_path)[0]["co2"], 1)

    @defer.inlineCallbacks
    def test_only_automatic_columns_store_nothing(self):
        """Nothing left but automatic columns: saved-in-db 0 unless ALLOW_EMPTY_ROWS."""
        self.make_ingest(make_settings(ACCEPT_NEW_COLUMN=lambda col: False))
        receipt = yield self.ingest.ingest(Upload(b'{"junk": [2]}', "application/json", {}, "test"))
        self.assertEqual(receipt.as_dict(), {"saved-in-db": 0})
        self.assertEqual(rows_in(self.db_path), [])

    @defer.inlineCallbacks
    def test_allow_empty_rows(self):
        """With ALLOW_EMPTY_ROWS a row of only automatic columns is stored."""
        self.make_ingest(make_settings(ACCEPT_NEW_COLUMN=lambda col: False, ALLOW_EMPTY_ROWS=True))
        receipt = yield self.ingest.ingest(Upload(b'{"junk": [2]}', "application/json", {}, "test"))
        self.assertEqual(receipt.rows, 1)

    @defer.inlineCallbacks
    def test_auth_required(self):
        """Required auth: the README checksum is stored with matched_checksums=md5; missing/wrong refused."""
        self.make_ingest(make_settings(CHECKSUM_SALTS=[README_SALT], UPLOAD_REQUIRES_AUTH=True))
        receipt = yield self.ingest.ingest(Upload(README_JSON, "application/json", {"Content-MD5-Salted": README_MD5}, "test"))
        self.assertEqual(receipt.rows, 2)
        self.assertEqual({(r["matched_checksums"], r["failed_checksums"]) for r in rows_in(self.db_path)}, {("md5", "")})
        e = yield self.refused(README_JSON, status=403)
        self.assertEqual(e.reason, "auth-missing")
        e = yield self.refused(README_JSON, headers={"Content-MD5-Salted": "0" * 32}, status=403)
        self.assertEqual(e.reason, "auth-invalid")
        e = yield self.refused(README_JSON + b" ", headers={"Content-MD5-Salted": README_MD5}, status=403)

    @defer.inlineCallbacks
    def test_unsafe_names_are_refused(self):
        """Names that are not safe identifiers are refused and never reach SQL."""
        self.make_ingest()
        for name in ['co2"; DROP TABLE data; --', "co 2", "1co2", "co₂", "", "sqlite_master", "a" * 65,
                     "time_upload_utc", "transport"]:
            body = ('{"%s": [1]}' % name.replace('"', '\\"')).encode("utf-8")
            e = yield self.refused(body)
            self.assertEqual(e.reason, "bad-column")
        yield self.refused(b'{"co2": [1], "CO2": [2]}')

    @defer.inlineCallbacks
    def test_limits(self):
        """Too many rows, too many new columns, too large a body: refused, nothing stored."""
        self.make_ingest(make_settings(MAX_ROWS_PER_UPLOAD=3, MAX_NEW_COLUMNS_PER_UPLOAD=2, MAX_BODY_SIZE=100))
        yield self.refused(b'{"a": [1, 2, 3, 4]}')
        yield self.refused(b'{"a": 1, "b": 2, "c": 3}')
        yield self.refused(b'{"a": [' + b"1," * 60 + b"1]}", status=413)

    @defer.inlineCallbacks
    def test_total_columns_limit(self):
        """The table may not grow beyond MAX_COLUMNS."""
        self.make_ingest(make_settings(MAX_COLUMNS=6))
        yield self.ingest.ingest(Upload(b'{"a": 1, "b": 2}', "application/json", {}, "test"))
        e = yield self.refused(b'{"c": 1}')
        self.assertIn("limit", e.message)

    @defer.inlineCallbacks
    def test_store_failure_is_503_and_counted(self):
        """A database error fails the upload with 503; the error is logged, nothing half-stored."""
        self.make_ingest()

        def broken(*args, **kwargs):
            return defer.fail(sqlite3.OperationalError("disk I/O error"))

        self.store.write = broken
        e = yield self.assertFailure(self.ingest.ingest(Upload(README_JSON, "application/json", {}, "http")), IngestError)
        self.assertEqual(e.status, 503)
        self.assertEqual(self.ingest.counters["rejects"][("http", "store")], 1)
        self.flushLoggedErrors(sqlite3.OperationalError)

    @defer.inlineCallbacks
    def test_extra_columns(self):
        """extra_columns (e.g. a gateway's node id) are set on every row."""
        self.make_ingest()
        yield self.ingest.ingest(Upload(README_JSON, "application/json", {}, "serial:/dev/x", extra_columns={"box": "12"}))
        self.assertEqual([r["box"] for r in rows_in(self.db_path)], ["12", "12"])

    @defer.inlineCallbacks
    def test_counters(self):
        """Uploads, rows and rejects are counted per transport kind."""
        self.make_ingest()
        yield self.ingest.ingest(Upload(README_JSON, "application/json", {}, "udp:1.2.3.4"))
        yield self.assertFailure(self.ingest.ingest(Upload(b"{", "application/json", {}, "udp:1.2.3.4")), IngestError)
        self.assertEqual(self.ingest.counters["uploads"]["udp"], 1)
        self.assertEqual(self.ingest.counters["rows"]["udp"], 2)
        self.assertEqual(self.ingest.counters["rejects"][("udp", "parse")], 1)
