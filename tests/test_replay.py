"""
Replay protection (Content-Counter / Content-Timestamp under the salted
checksum) and idempotent uploads (Idempotency-Key), through the ingest
service on a real store, over HTTP, UDP and serial.
"""

from __future__ import annotations

import hashlib
import json

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from co2logd.errors import IngestError
from co2logd.ingest import Upload
from co2logd.transports.serial import SerialIngestProtocol
from co2logd.transports.udp import UDPIngestProtocol
from tests.helpers import README_JSON, README_SALT, SiteMixin, StoreMixin, make_settings, rows_in

# the worked example of docs/security.md
EXAMPLE_COUNTER_MD5 = "34d36216b5d0f869f243b3ca2788d34e"  # Content-Counter: 42
EXAMPLE_DEVICE_MD5 = "73fd19a2f67873e308973dc3d1d974e8"  # Content-Counter: kitchen:42
EXAMPLE_COUNTER_SHA256 = "f174e7c5192497fab5113b98dde1bb7c1b0f73695abda8a24908e174e4fe00a8"


def signed(counter: str, body: bytes = README_JSON, salt: str = README_SALT, header: str = "Content-Counter", algorithm: str = "md5"):
    """The headers a device sends: the counter (or timestamp) and the checksum over it and the body."""
    kind = b"counter:" if header.lower() == "content-counter" else b"timestamp:"
    digest = hashlib.new(algorithm, kind + counter.encode() + b"\n" + body + salt.encode()).hexdigest()
    return [(header, counter), ("Content-{}-Salted".format(algorithm.upper()), digest)]


def old_style(body: bytes = README_JSON, salt: str = README_SALT):
    """co2logserver's checksum over the body alone."""
    return [("Content-MD5-Salted", hashlib.md5(body + salt.encode()).hexdigest())]


class ReplayTestMixin(StoreMixin):
    """An ingest service with the given settings on a store in a temporary file."""

    def start(self, path=None, **values):
        values.setdefault("CHECKSUM_SALTS", [README_SALT])
        self.make_ingest(make_settings(**values), path=path)
        return self.ingest

    def send(self, headers, body=README_JSON, transport="http"):
        return self.ingest.ingest(Upload(body, "application/json", headers, transport))

    @defer.inlineCallbacks
    def refused(self, headers, body=README_JSON, status=403, reason="replay"):
        try:
            yield self.send(headers, body)
        except IngestError as e:
            self.assertEqual((e.status, e.reason), (status, reason), e.message)
            return e
        self.fail("the upload was stored")


class WorkedExampleTests(unittest.TestCase):
    """The header values docs/security.md shows are what a device computes."""

    def test_counter_example(self):
        """hex(MD5(b"counter:42" + b"\\n" + payload + salt)), and with a device name and SHA-256."""
        self.assertEqual(signed("42")[1][1], EXAMPLE_COUNTER_MD5)
        self.assertEqual(signed("kitchen:42")[1][1], EXAMPLE_DEVICE_MD5)
        self.assertEqual(signed("42", algorithm="sha256")[1][1], EXAMPLE_COUNTER_SHA256)


class CounterTests(ReplayTestMixin, unittest.TestCase):
    """Content-Counter: each number once, in increasing order, per salt and device."""

    @defer.inlineCallbacks
    def test_off_by_default(self):
        """Without REPLAY_PROTECTION the header means nothing: old devices keep working, replays too."""
        self.start(UPLOAD_REQUIRES_AUTH=True)
        for _ in range(2):
            receipt = yield self.send(old_style() + [("Content-Counter", "1")])
            self.assertEqual(receipt.rows, 2)

    @defer.inlineCallbacks
    def test_worked_example_accepted_then_replay_refused(self):
        """The example upload is stored once; the same bytes again are a 403 replay, counted."""
        self.start(REPLAY_PROTECTION="optional", UPLOAD_REQUIRES_AUTH=True)
        headers = [("Content-Counter", "42"), ("Content-MD5-Salted", EXAMPLE_COUNTER_MD5)]
        receipt = yield self.send(headers)
        self.assertEqual(receipt.rows, 2)
        e = yield self.refused(headers)
        self.assertIn("42", e.message)
        self.assertEqual(self.ingest.counters["rejects"][("http", "replay")], 1)
        self.assertEqual([r["matched_checksums"] for r in rows_in(self.db_path)], ["md5", "md5"])

    @defer.inlineCallbacks
    def test_lower_or_equal_counters_are_refused_higher_ones_accepted(self):
        """Out of order is refused as a replay; gaps are fine (lost uploads)."""
        self.start(REPLAY_PROTECTION="optional")
        yield self.send(signed("5"))
        yield self.refused(signed("4"))
        yield self.refused(signed("5"))
        yield self.send(signed("9"))
        self.assertEqual(len(rows_in(self.db_path)), 4)

    @defer.inlineCallbacks
    def test_counters_survive_a_restart(self):
        """A new store and ingest service on the same file still refuse the old counter."""
        self.start(REPLAY_PROTECTION="optional")
        yield self.send(signed("7"))
        yield self.store.stopService()
        path = self.db_path
        self.start(path=path, REPLAY_PROTECTION="optional")
        self.assertIsNone(self.store.replay_last("anything"))  # nothing in memory: the database decides
        yield self.refused(signed("7"))
        yield self.send(signed("8"))

    @defer.inlineCallbacks
    def test_two_copies_at_once_one_is_stored(self):
        """Copies sent at the same moment go into one transaction: the second is refused there."""
        self.start(REPLAY_PROTECTION="optional")
        results = yield defer.DeferredList([self.send(signed("3")), self.send(signed("3"))], consumeErrors=True)
        outcomes = sorted("stored" if ok else value.value.reason for ok, value in results)
        self.assertEqual(outcomes, ["replay", "stored"])
        self.assertEqual(len(rows_in(self.db_path)), 2)

    @defer.inlineCallbacks
    def test_devices_sharing_a_salt_count_separately(self):
        """kitchen:5 and hall:5 are both fresh; kitchen:5 again is not."""
        self.start(REPLAY_PROTECTION="optional")
        yield self.send(signed("kitchen:5"))
        yield self.send(signed("hall:5"))
        yield self.refused(signed("kitchen:5"))

    @defer.inlineCallbacks
    def test_optional_mode_takes_old_devices_as_before(self):
        """optional: an upload without a counter is taken (and may be replayed), as co2logserver did."""
        self.start(REPLAY_PROTECTION="optional", UPLOAD_REQUIRES_AUTH=True)
        yield self.send(old_style())
        yield self.send(old_style())

    @defer.inlineCallbacks
    def test_the_counter_must_be_under_the_checksum(self):
        """A checksum over the body alone does not cover the counter: auth fails (403 auth-invalid)."""
        self.start(REPLAY_PROTECTION="optional", UPLOAD_REQUIRES_AUTH=True)
        yield self.refused(old_style() + [("Content-Counter", "1")], reason="auth-invalid")

    @defer.inlineCallbacks
    def test_required_everywhere(self):
        """required: no counter is a 403 replay-missing; an unauthenticated counter too."""
        self.start(REPLAY_PROTECTION="required")
        yield self.refused(old_style(), reason="replay-missing")
        yield self.refused([("Content-Counter", "1")], reason="replay-missing")
        yield self.send(signed("1"))

    @defer.inlineCallbacks
    def test_required_per_salt(self):
        """REPLAY_REQUIRED_SALTS: uploads under that salt need a counter, others do not."""
        self.start(CHECKSUM_SALTS=["old-fleet", "new-fleet"], REPLAY_REQUIRED_SALTS=["new-fleet"])
        yield self.send(old_style(salt="old-fleet"))
        yield self.refused(old_style(salt="new-fleet"), reason="replay-missing")
        yield self.send(signed("1", salt="new-fleet"))
        yield self.refused(signed("1", salt="new-fleet"))

    @defer.inlineCallbacks
    def test_malformed_counters_are_400(self):
        """Not a number, zero, a fraction, or both headers: 400 bad-counter."""
        self.start(REPLAY_PROTECTION="optional")
        for value in ["x", "0", "1.5", "-3", "a b:3", "99999999999999999999"]:
            yield self.refused([("Content-Counter", value)], status=400, reason="bad-counter")
        yield self.refused(signed("1") + [("Content-Timestamp", "1")], status=400, reason="bad-counter")


class TimestampTests(ReplayTestMixin, unittest.TestCase):
    """Content-Timestamp: within REPLAY_WINDOW_SECONDS of the server's clock, and increasing."""

    @defer.inlineCallbacks
    def test_window_and_order(self):
        """Now is fine, now again is a replay, now+1 fine, far in the past or future refused."""
        self.start(REPLAY_PROTECTION="optional", REPLAY_WINDOW_SECONDS=60)
        now = int(self.clock.seconds())
        header = "Content-Timestamp"
        yield self.send(signed(str(now), header=header))
        yield self.refused(signed(str(now), header=header))
        yield self.send(signed("{}.5".format(now), header=header))
        e = yield self.refused(signed(str(now - 3600), header=header))
        self.assertIn("REPLAY_WINDOW_SECONDS", e.message)
        yield self.refused(signed(str(now + 3600), header=header))
        self.clock.advance(30)
        yield self.send(signed(str(now + 30), header=header))


class IdempotencyTests(ReplayTestMixin, unittest.TestCase):
    """Idempotency-Key: stored once, repeats get the original receipt."""

    @defer.inlineCallbacks
    def test_repeat_gets_the_original_receipt_and_stores_nothing(self):
        """The second upload with the key answers {"saved-in-db": 2} and adds no rows."""
        self.start()
        first = yield self.send([("Idempotency-Key", "dev7-1001")])
        again = yield self.send([("Idempotency-Key", "dev7-1001")])
        self.assertEqual((first.as_dict(), first.replayed), ({"saved-in-db": 2}, False))
        self.assertEqual((again.as_dict(), again.replayed), ({"saved-in-db": 2}, True))
        self.assertEqual(len(rows_in(self.db_path)), 2)
        self.assertEqual(self.ingest.counters["repeats"]["http"], 1)

    @defer.inlineCallbacks
    def test_same_key_other_body_is_409(self):
        """A key reused for a different upload is refused, nothing stored."""
        self.start()
        yield self.send([("Idempotency-Key", "k")])
        yield self.refused([("Idempotency-Key", "k")], body=b'{"co2": 1}', status=409, reason="idempotency-conflict")
        self.assertEqual(len(rows_in(self.db_path)), 2)

    @defer.inlineCallbacks
    def test_copies_at_once_are_stored_once(self):
        """Three copies sent together: one write, three identical receipts."""
        self.start()
        receipts = yield defer.gatherResults([self.send([("Idempotency-Key", "burst")]) for _ in range(3)])
        self.assertEqual([r.as_dict() for r in receipts], [{"saved-in-db": 2}] * 3)
        self.assertEqual(sorted(r.replayed for r in receipts), [False, True, True])
        self.assertEqual(len(rows_in(self.db_path)), 2)

    @defer.inlineCallbacks
    def test_refused_upload_does_not_take_the_key(self):
        """A key whose upload was refused (bad JSON) can be used by the corrected upload."""
        self.start()
        yield self.refused([("Idempotency-Key", "k")], body=b"{", status=400, reason="parse")
        receipt = yield self.send([("Idempotency-Key", "k")])
        self.assertFalse(receipt.replayed)

    @defer.inlineCallbacks
    def test_retention_and_expiry(self):
        """After IDEMPOTENCY_RETENTION_SECONDS the key is new again; the service deletes old keys."""
        self.start(IDEMPOTENCY_RETENTION_SECONDS=100)
        self.ingest.startService()
        self.addCleanup(self.ingest.stopService)
        yield self.send([("Idempotency-Key", "k")])
        self.clock.advance(101)  # the expiry loop runs every 100 s
        receipt = yield self.send([("Idempotency-Key", "k")])
        self.assertFalse(receipt.replayed)
        self.assertEqual(len(rows_in(self.db_path)), 4)
        self.clock.advance(101)
        yield self.wait_for_keys(0)

    @defer.inlineCallbacks
    def wait_for_keys(self, n):
        """Poll the key table (the expiry runs on the store's thread), bounded."""
        import sqlite3

        for _ in range(100):
            connection = sqlite3.connect(self.db_path)
            count = connection.execute("SELECT count(*) FROM co2logd_idempotency").fetchone()[0]
            connection.close()
            if count == n:
                return
            yield task.deferLater(reactor, 0.02, lambda: None)
        self.fail("{} keys left, expected {}".format(count, n))

    @defer.inlineCallbacks
    def test_keys_are_per_salt_and_survive_restarts(self):
        """The same key under another salt is another upload; after a restart a repeat is still recognised."""
        self.start(CHECKSUM_SALTS=["a", "b"])
        yield self.send(old_style(salt="a") + [("Idempotency-Key", "k")])
        other = yield self.send(old_style(salt="b") + [("Idempotency-Key", "k")])
        self.assertFalse(other.replayed)
        yield self.store.stopService()
        self.start(path=self.db_path, CHECKSUM_SALTS=["a", "b"])
        again = yield self.send(old_style(salt="a") + [("Idempotency-Key", "k")])
        self.assertTrue(again.replayed)
        self.assertEqual(len(rows_in(self.db_path)), 4)

    @defer.inlineCallbacks
    def test_retry_with_the_same_counter_and_key(self):
        """A device that retries an upload (same counter, same key) gets its receipt, not a 403."""
        self.start(REPLAY_PROTECTION="required")
        headers = signed("11") + [("Idempotency-Key", "dev-11")]
        yield self.send(headers)
        again = yield self.send(headers)
        self.assertTrue(again.replayed)
        yield self.refused(signed("11"))  # without the key it is a replay

    @defer.inlineCallbacks
    def test_bad_keys_are_400(self):
        """Empty, too long, spaces, two keys: 400 bad-idempotency-key."""
        self.start()
        for headers in ([("Idempotency-Key", "")], [("Idempotency-Key", "x" * 256)], [("Idempotency-Key", "a b")],
                        [("Idempotency-Key", "a"), ("Idempotency-Key", "b")]):
            yield self.refused(headers, status=400, reason="bad-idempotency-key")


class HTTPTests(SiteMixin, unittest.TestCase):
    """Both features over HTTP."""

    @defer.inlineCallbacks
    def test_replay_and_repeat_over_http(self):
        """403 {"error", "reason": "replay"}; a repeated key gets the receipt and Idempotent-Replayed."""
        import treq

        self.start_site(make_settings(CHECKSUM_SALTS=[README_SALT], REPLAY_PROTECTION="optional"))
        headers = dict(signed("42"))
        status, body = yield self.post(README_JSON, "application/json", headers)
        self.assertEqual((status, body), (200, {"saved-in-db": 2}))
        status, body = yield self.post(README_JSON, "application/json", headers)
        self.assertEqual((status, body["reason"]), (403, "replay"))
        key = {"Idempotency-Key": "abc", "Content-Type": "application/json"}
        for expected in (None, [b"true"]):
            response = yield treq.post(self.url + "/upload", data=README_JSON, headers=key, persistent=False)
            self.assertEqual(json.loads((yield treq.content(response))), {"saved-in-db": 2})
            self.assertEqual(response.headers.getRawHeaders(b"idempotent-replayed"), expected)
        status, _, metrics = yield self.get("/metrics")
        self.assertIn(b'co2logd_idempotent_repeats_total{transport="http"} 1.0', metrics)
        self.assertIn(b'co2logd_rejects_total{reason="replay",transport="http"} 1.0', metrics)


class DatagramAndLineTests(ReplayTestMixin, unittest.TestCase):
    """UDP header blocks and serial header lines carry the same headers."""

    @defer.inlineCallbacks
    def test_udp(self):
        """A replayed datagram is refused with reason replay; a repeated key gets the receipt."""
        self.start(REPLAY_PROTECTION="optional")
        protocol = UDPIngestProtocol(self.ingest, self.settings, self.clock)
        replies = []
        protocol.observers.append(lambda addr, reply: replies.append(reply))
        block = "".join("{}: {}\r\n".format(k, v) for k, v in signed("5")).encode() + b"\r\n"
        for _ in range(2):
            protocol.datagramReceived(block + README_JSON, ("127.0.0.1", 9))
            yield protocol.idle()
        keyed = b"Content-Type: application/json\r\nIdempotency-Key: u1\r\n\r\n" + README_JSON
        for _ in range(2):
            protocol.datagramReceived(keyed, ("127.0.0.1", 9))
            yield protocol.idle()
        self.assertEqual(replies[0], {"saved-in-db": 2})
        self.assertEqual(replies[1]["reason"], "replay")
        self.assertEqual(replies[2:], [{"saved-in-db": 2}] * 2)
        self.assertEqual(len(rows_in(self.db_path)), 4)

    @defer.inlineCallbacks
    def test_serial_csv_row_with_a_counter(self):
        """The device signs counter + CSV header line + row; the listener re-signs the CSV body it builds; a resent line is refused."""
        self.start(REPLAY_PROTECTION="required")
        protocol = SerialIngestProtocol(self.ingest, self.settings, self.clock, "/dev/ttyX")
        replies = []
        protocol.observers.append(lambda source, reply: replies.append(reply))
        protocol.dataReceived(b"time,co2\n")
        line = b"1700000000,640"
        lines = b"".join("{}: {}\n".format(k, v).encode() for k, v in signed("1", body=b"time,co2\n" + line)) + line + b"\n"
        protocol.dataReceived(lines)
        yield protocol.idle()
        protocol.dataReceived(lines)
        yield protocol.idle()
        self.assertEqual(replies[0], {"saved-in-db": 1})
        self.assertEqual(replies[1]["reason"], "replay")
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [640])

    @defer.inlineCallbacks
    def test_serial_malformed_counter_is_a_counted_refusal(self):
        """A bad Content-Counter line before a CSV row is refused as bad-counter, not logged as a bug."""
        self.start(REPLAY_PROTECTION="optional")
        protocol = SerialIngestProtocol(self.ingest, self.settings, self.clock, "/dev/ttyX")
        replies = []
        protocol.observers.append(lambda source, reply: replies.append(reply))
        protocol.dataReceived(b"time,co2\nContent-Counter: x\nContent-MD5-Salted: " + b"0" * 32 + b"\n1700000000,640\n")
        yield protocol.idle()
        self.assertEqual([r.get("reason") for r in replies], ["bad-counter"])
        self.assertEqual(self.flushLoggedErrors(), [])
