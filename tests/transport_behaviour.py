"""
Behaviour every transport shares, written once and run over each of them.

A test case mixes :class:`TransportBehaviourMixin` (or only the
:class:`TransportHarness`, for transport-specific tests) into
``twisted.trial.unittest.TestCase`` and provides:

* ``start_transport(ingest, settings)`` → Deferred: start the listener in
  front of ``ingest`` (and ``addCleanup`` it);
* ``send(payload, headers)`` → Deferred firing with the outcome as a dict:
  the receipt (``{"saved-in-db": N}``) or ``{"error": ..., "status": ...,
  "reason": ...}`` (what a UDP ack or an HTTP JSON response carries);
  ``payload`` is one line of text for line-oriented transports;
* ``transport_label``: what the transport column must hold;
* ``settings_values``: settings every test of this transport needs.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Dict, Sequence, Tuple

from twisted.internet import defer, reactor

from co2logd.ingest import IngestService
from co2logd.settings import Settings
from co2logd.store import Store

SALT = "my-super-secret-psk"


def md5_salted(payload: bytes, salt: str = SALT) -> str:
    """The ``Content-MD5-Salted`` value a device computes."""
    return hashlib.md5(payload + salt.encode()).hexdigest()


class TransportHarness:
    """Start a store, the ingest service and a transport; read the rows back."""

    settings_values: Dict[str, Any] = {}
    transport_label = "?"

    # -- to be provided by the transport's test case ---------------------------

    def start_transport(self, ingest, settings) -> defer.Deferred:
        raise NotImplementedError

    def send(self, payload: bytes, headers: Sequence[Tuple[str, str]] = ()) -> defer.Deferred:
        raise NotImplementedError

    # -- helpers ---------------------------------------------------------------

    @defer.inlineCallbacks
    def start(self, **values):
        """A real store on a temp SQLite file, the real ingest service, the transport."""
        merged = dict(self.settings_values)
        merged.update(values)
        settings = Settings.from_values(merged)
        store = Store.open(self.mktemp(), settings)
        store.startService()
        self.addCleanup(store.stopService)
        ingest = IngestService(settings, store, reactor)
        self.store = store
        self.ingest = ingest
        self.settings = settings
        yield self.start_transport(ingest, settings)

    def rows(self, columns: str = "co2") -> defer.Deferred:
        """All rows of the data table: the given columns plus the transport column."""
        return self.store.pool.runQuery(
            "SELECT {}, transport, matched_checksums, failed_checksums FROM data ORDER BY rowid".format(columns)
        )


class TransportBehaviourMixin(TransportHarness):
    """Shared assertions: formats, auth, rejects, the transport column."""

    @defer.inlineCallbacks
    def test_json_table_is_stored_with_its_transport(self):
        """A JSON object of lists lands as rows labelled with the transport."""
        yield self.start()
        outcome = yield self.send(b'{"co2":[640,650],"time_utc":[1,2]}')
        self.assertEqual(outcome, {"saved-in-db": 2})
        rows = yield self.rows("co2, time_utc")
        self.assertEqual(
            [r[:3] for r in rows], [(640, 1, self.transport_label), (650, 2, self.transport_label)]
        )

    @defer.inlineCallbacks
    def test_json_object_of_scalars_is_one_row(self):
        """A JSON object of single values is one row."""
        yield self.start()
        outcome = yield self.send(b'{"co2": 612.5, "box": "kitchen"}')
        self.assertEqual(outcome, {"saved-in-db": 1})
        rows = yield self.rows("co2, box")
        self.assertEqual([r[:2] for r in rows], [(612.5, "kitchen")])

    @defer.inlineCallbacks
    def test_form_record_is_stored(self):
        """A form-encoded record is detected and its numbers converted."""
        yield self.start()
        outcome = yield self.send(b"co2=700&temp=21.5")
        self.assertEqual(outcome, {"saved-in-db": 1})
        rows = yield self.rows("co2, temp")
        self.assertEqual([r[:2] for r in rows], [(700, 21.5)])

    @defer.inlineCallbacks
    def test_declared_content_type_is_honoured(self):
        """A Content-Type header names the format instead of detection."""
        yield self.start()
        outcome = yield self.send(b'{"co2":[1]}', [("Content-Type", "application/json; charset=utf-8")])
        self.assertEqual(outcome, {"saved-in-db": 1})

    @defer.inlineCallbacks
    def test_unknown_content_type_is_refused(self):
        """A Content-Type co2logd does not know is a 415, and nothing is stored."""
        yield self.start()
        outcome = yield self.send(b'{"co2":[1]}', [("Content-Type", "image/png")])
        self.assertEqual((outcome["status"], outcome["reason"]), (415, "content-type"))
        count = yield self.store.count()
        self.assertEqual(count, 0)

    @defer.inlineCallbacks
    def test_bad_payload_is_refused_and_the_next_one_lands(self):
        """An unparseable payload is refused with a 400; the listener keeps serving."""
        yield self.start()
        outcome = yield self.send(b'{"co2": [1, 2}')
        self.assertEqual(outcome["status"], 400)
        self.assertIn("error", outcome)
        outcome = yield self.send(b'{"co2": 5}')
        self.assertEqual(outcome, {"saved-in-db": 1})

    @defer.inlineCallbacks
    def test_unsafe_column_name_is_refused(self):
        """A column name that is not a safe identifier never reaches SQL."""
        yield self.start()
        outcome = yield self.send(b'{"co2; DROP TABLE data": 5}')
        self.assertEqual((outcome["status"], outcome["reason"]), (400, "bad-column"))

    @defer.inlineCallbacks
    def test_auth_with_the_right_checksum_is_stored(self):
        """With UPLOAD_REQUIRES_AUTH, the right salted MD5 stores and is recorded."""
        yield self.start(CHECKSUM_SALTS=[SALT], UPLOAD_REQUIRES_AUTH=True)
        payload = b'{"co2":[1223,2351]}'
        outcome = yield self.send(payload, [("Content-MD5-Salted", md5_salted(payload))])
        self.assertEqual(outcome, {"saved-in-db": 2})
        rows = yield self.rows()
        self.assertEqual([r[2:] for r in rows], [("md5", "")] * 2)

    @defer.inlineCallbacks
    def test_auth_with_a_wrong_checksum_is_refused(self):
        """A checksum made with another salt is a 403 auth-invalid; nothing stored."""
        yield self.start(CHECKSUM_SALTS=[SALT], UPLOAD_REQUIRES_AUTH=True)
        payload = b'{"co2":[1223,2351]}'
        outcome = yield self.send(payload, [("Content-MD5-Salted", md5_salted(payload, "wrong"))])
        self.assertEqual((outcome["status"], outcome["reason"]), (403, "auth-invalid"))
        count = yield self.store.count()
        self.assertEqual(count, 0)

    @defer.inlineCallbacks
    def test_auth_missing_is_refused(self):
        """No checksum at all is a 403 auth-missing when auth is required."""
        yield self.start(CHECKSUM_SALTS=[SALT], UPLOAD_REQUIRES_AUTH=True)
        outcome = yield self.send(b'{"co2":[1]}')
        self.assertEqual((outcome["status"], outcome["reason"]), (403, "auth-missing"))
        count = yield self.store.count()
        self.assertEqual(count, 0)

    @defer.inlineCallbacks
    def test_checksums_are_recorded_when_auth_is_optional(self):
        """Without UPLOAD_REQUIRES_AUTH a failing checksum is stored and recorded as failed."""
        yield self.start(CHECKSUM_SALTS=[SALT])
        payload = b'{"co2":[7]}'
        outcome = yield self.send(payload, [("Content-MD5-Salted", md5_salted(payload, "other"))])
        self.assertEqual(outcome, {"saved-in-db": 1})
        rows = yield self.rows()
        self.assertEqual([r[2:] for r in rows], [("", "md5")])


def outcome_of(reply: bytes) -> Dict[str, Any]:
    """A JSON reply as the dict the shared tests compare (``seq`` left out)."""
    data = json.loads(reply)
    data.pop("seq", None)
    return data
