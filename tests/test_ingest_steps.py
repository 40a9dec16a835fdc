"""The ingest service's values and steps in memory: Upload, Receipt, PreparedUpload, sequence numbers, signed bytes."""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional, Tuple

from twisted.internet import defer, task
from twisted.trial import unittest

from co2logd import payloads
from co2logd.errors import IngestError
from co2logd.ingest import MISSING_CONTENT_TYPE, IngestService, PreparedUpload, Receipt, Upload
from co2logd.ingest.sequence import DUPLICATE, IN_FLIGHT
from co2logd.ingest import service as service_module
from co2logd.store import WriteRequest
from co2logd.testing import MemoryStore
from tests.helpers import make_settings, salted


class HeldStore(MemoryStore):
    """
    The memory store, whose writes wait until the test settles them: a
    test decides when (and whether) each write commits.
    """

    def __init__(self, settings: Any) -> None:
        super().__init__(settings)
        self.held: List[Tuple[WriteRequest, "defer.Deferred[int]"]] = []

    def write(self, request: WriteRequest) -> "defer.Deferred[int]":
        d: defer.Deferred[int] = defer.Deferred()
        self.held.append((request, d))
        return d

    def commit(self, index: int = -1) -> None:
        """Write the request at ``index`` now and fire its Deferred with the outcome."""
        request, d = self.held[index]
        MemoryStore.write(self, request).chainDeferred(d)

    def fail(self, index: int = -1) -> None:
        """Fail the write at ``index`` as a disk error would."""
        self.held[index][1].errback(RuntimeError("disk on fire"))


def make_ingest(**values: Any) -> Tuple[IngestService, HeldStore]:
    settings = make_settings(**values)
    store = HeldStore(settings)
    clock = task.Clock()
    clock.advance(1_700_000_000)
    return IngestService(settings, store, clock), store


class UploadTests(unittest.SynchronousTestCase):
    """The value a transport hands over."""

    def test_headers_become_text_pairs(self):
        """A mapping, or bytes pairs as twisted.web gives them, are kept as a tuple of text pairs."""
        self.assertEqual(Upload(b"", None, {"Content-Type": "text/csv"}).headers, (("Content-Type", "text/csv"),))
        self.assertEqual(Upload(b"", None, [(b"X-A", b"\xe9")]).headers, (("X-A", "\xe9"),))

    def test_frozen(self):
        """An Upload cannot be changed after it is made."""
        upload = Upload(b"{}", "application/json")
        with self.assertRaises(dataclasses.FrozenInstanceError):
            upload.body = b"[]"  # type: ignore[misc]

    def test_kind_and_signed_bytes(self):
        """The transport's kind counts uploads; the signed bytes are the body unless given."""
        upload = Upload(b"a=1", None, (), "udp:10.0.0.7")
        self.assertEqual((upload.kind, upload.signed_bytes), ("udp", b"a=1"))
        self.assertEqual(Upload(b"a=1", None, signed=b"h\na=1").signed_bytes, b"h\na=1")

    def test_receipt_body_leaves_out_sequence_fields(self):
        """seq and duplicate are for the transports; the answer body is co2logserver's."""
        receipt = Receipt(3, 2, seq=9, duplicate=None)
        self.assertEqual(receipt.as_dict(), {"saved-in-db": 3, "osem-queued": 2})
        self.assertEqual(PreparedUpload(["c"], [(1,)], {}, [], [], None).receipt(1), Receipt(1))


class SequenceStepTests(unittest.SynchronousTestCase):
    """Numbered uploads (SEQUENCE_FIELD) from a named node, on a clock, with writes the test settles."""

    def test_missing_content_type_is_refused(self):
        """The HTTP resource's missing header is a 415, not format detection."""
        ingest, store = make_ingest()
        failure = self.failureResultOf(ingest.ingest(Upload(b'{"co2": 1}', MISSING_CONTENT_TYPE)), IngestError)
        self.assertEqual((failure.value.status, failure.value.reason), (415, "content-type"))
        self.assertEqual(store.held, [])

    def test_a_stored_number_is_a_duplicate(self):
        """The same number again from the same node stores nothing and says so."""
        ingest, store = make_ingest(SEQUENCE_FIELD="seq")
        first = ingest.ingest(Upload(b'{"seq": 5, "co2": 1}', None, node="udp:10.0.0.7"))
        store.commit()
        self.assertEqual(self.successResultOf(first), Receipt(1, seq=5))
        again = self.successResultOf(ingest.ingest(Upload(b'{"seq": 5, "co2": 1}', None, node="udp:10.0.0.7")))
        self.assertEqual(again, Receipt(0, seq=5, duplicate=DUPLICATE))
        self.assertEqual(len(store.held), 1)
        self.assertEqual(ingest.counters["uploads"]["http"], 1)

    def test_a_copy_while_the_first_is_written_is_in_flight(self):
        """A repeat that arrives before the first copy commits is IN_FLIGHT; after a failure the number is free again."""
        ingest, store = make_ingest(SEQUENCE_FIELD="seq")
        upload = Upload(b'{"seq": 5, "co2": 1}', None, node="udp:10.0.0.7")
        first = ingest.ingest(upload)
        self.assertEqual(self.successResultOf(ingest.ingest(upload)).duplicate, IN_FLIGHT)
        store.fail()
        error = self.failureResultOf(first, IngestError).value
        self.assertEqual((error.status, error.reason, error.seq), (503, "store", 5))
        self.flushLoggedErrors(RuntimeError)
        retry = ingest.ingest(upload)
        store.commit()
        self.assertEqual(self.successResultOf(retry).rows, 1)

    def test_refusals_carry_the_number(self):
        """A refused numbered upload's error names its number, so an ack can say which one failed."""
        ingest, store = make_ingest(SEQUENCE_FIELD="seq", CHECKSUM_SALTS=["s"], UPLOAD_REQUIRES_AUTH=True)
        error = self.failureResultOf(ingest.ingest(Upload(b'{"seq": 7}', None, node="n")), IngestError).value
        self.assertEqual((error.reason, error.seq), ("auth-missing", 7))

    def test_nodes_and_boxes_number_apart(self):
        """Other nodes, and other boxes of one node, may use the same number; uploads without a node are never duplicates."""
        ingest, store = make_ingest(SEQUENCE_FIELD="seq")
        uploads = [
            Upload(b'{"seq": 1, "co2": 1}', None, node="a"),
            Upload(b'{"seq": 1, "co2": 1}', None, node="b"),
            Upload(b'{"seq": 1, "box": 2, "co2": 1}', None, node="a"),
            Upload(b'{"seq": 1, "co2": 1}', None),
            Upload(b'{"seq": 1, "co2": 1}', None),
        ]
        results = []
        for upload in uploads:
            results.append(ingest.ingest(upload))
            store.commit()
        self.assertEqual([self.successResultOf(d).rows for d in results], [1, 1, 1, 1, 1])
        self.assertEqual(sorted(ingest.sequences.as_dict()), ["('a', 2)", "('a', None)", "('b', None)"])

    def test_a_numbered_upload_is_parsed_once(self):
        """The sequence step's parse is the one the rows are built from."""
        ingest, store = make_ingest(SEQUENCE_FIELD="seq")
        calls = []
        original = payloads.parse

        def counting(*args: Any, **kwargs: Any) -> payloads.Table:
            calls.append(args[0])
            return original(*args, **kwargs)

        self.patch(service_module.payloads, "parse", counting)
        ingest.ingest(Upload(b'{"seq": 1, "co2": 1}', None, node="a"))
        ingest.ingest(Upload(b'{"co2": 2}', None, node="a"))
        self.assertEqual(calls, [b'{"seq": 1, "co2": 1}', b'{"co2": 2}'])


class SignedBytesTests(unittest.SynchronousTestCase):
    """Checksums are checked over what the sender signed, which need not be the body."""

    def upload(self, signed_with: bytes, signed: Optional[bytes]) -> Any:
        ingest, store = make_ingest(CHECKSUM_SALTS=["s"])
        headers = [("Content-MD5-Salted", salted(signed_with, "s"))]
        d = ingest.ingest(Upload(b"time_s,co2\n1,641", "text/csv", headers, "serial:/dev/x", signed=signed))
        store.commit()
        self.successResultOf(d)
        [row] = store.rows.values()
        return row

    def test_checksum_over_the_signed_bytes_matches(self):
        """A CSV row signed with its header line as printed authenticates the rebuilt body."""
        row = self.upload(b"time_s, co2\n1,641", signed=b"time_s, co2\n1,641")
        self.assertEqual((row["matched_checksums"], row["failed_checksums"]), ("md5", ""))

    def test_checksum_over_the_body_does_not_stand_for_the_signed_bytes(self):
        """When signed bytes are given, a checksum of the rebuilt body proves nothing."""
        row = self.upload(b"time_s,co2\n1,641", signed=b"time_s, co2\n1,641")
        self.assertEqual((row["matched_checksums"], row["failed_checksums"]), ("", "md5"))


class FreshnessStepTests(unittest.SynchronousTestCase):
    """Replay counters and idempotency keys on the memory store and a clock."""

    def signed(self, body: bytes, counter: int, key: Optional[str] = None) -> Upload:
        headers = [("Content-Counter", str(counter)), ("Content-MD5-Salted", salted(b"counter:%d\n" % counter + body, "s"))]
        if key is not None:
            headers.append(("Idempotency-Key", key))
        return Upload(body, "application/json", headers)

    def test_a_counter_not_larger_is_a_replay(self):
        """Once counter 5 is stored, 5 again is refused as a replay and nothing more is written."""
        ingest, store = make_ingest(CHECKSUM_SALTS=["s"], REPLAY_PROTECTION="required")
        first = ingest.ingest(self.signed(b'{"co2": 1}', 5))
        store.commit()
        self.assertEqual(self.successResultOf(first).rows, 1)
        error = self.failureResultOf(ingest.ingest(self.signed(b'{"co2": 1}', 5)), IngestError).value
        self.assertEqual((error.status, error.reason), (403, "replay"))
        self.assertEqual(len(store.rows), 1)

    def test_a_repeat_with_its_key_gets_the_first_receipt(self):
        """The same Idempotency-Key and body answer with the stored receipt, even though the counter is used up."""
        ingest, store = make_ingest(CHECKSUM_SALTS=["s"], REPLAY_PROTECTION="required")
        first = ingest.ingest(self.signed(b'{"co2": [1, 2]}', 7, key="k1"))
        store.commit()
        self.assertEqual(self.successResultOf(first), Receipt(2))
        again = self.successResultOf(ingest.ingest(self.signed(b'{"co2": [1, 2]}', 7, key="k1")))
        self.assertEqual((again.rows, again.replayed), (2, True))
        self.assertEqual((len(store.rows), ingest.counters["repeats"]["http"]), (2, 1))
