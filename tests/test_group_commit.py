"""Group commit: uploads that arrive together share one transaction, fail alone, and are acknowledged after COMMIT."""

import sqlite3
import threading

import treq
from twisted.internet import defer
from twisted.trial import unittest

from co2logd.errors import IngestError
from co2logd.ingest import Upload
from co2logd.store import StoreBusy, WriteRequest
from tests.helpers import SiteMixin, StoreMixin, make_settings, rows_in


def committed_count(path, table="data"):
    """Rows another connection sees: only what has been committed."""
    connection = sqlite3.connect(path)
    try:
        return connection.execute('SELECT count(*) FROM "{}"'.format(table)).fetchone()[0]
    finally:
        connection.close()


def table_columns(path, table="data"):
    """The data table's columns as SQLite has them on disk."""
    connection = sqlite3.connect(path)
    try:
        return [r[0] for r in connection.execute("SELECT name FROM pragma_table_info(?)", (table,))]
    finally:
        connection.close()


class WriterHeld:
    """
    Holds the store's only database thread until released, with an empty
    write in flight behind it: every write made meanwhile waits in the queue
    and goes into the next transaction together.
    """

    def __init__(self, test, store):
        self.event = threading.Event()
        held = store.pool.runWithConnection(lambda connection: self.event.wait(10))
        self.done = defer.gatherResults([held, store.write(WriteRequest([], [], {}))])
        test.addCleanup(self.release)

    def release(self):
        """Let the database thread go on; fires when the held call and the empty write have ended."""
        self.event.set()
        return self.done


class GroupCommitTests(StoreMixin, unittest.TestCase):
    """Writes queued while a transaction is in flight go into the next one together."""

    @defer.inlineCallbacks
    def test_uploads_arriving_together_share_one_transaction(self):
        """Four writes made while the first is in flight are written as one group, all rows kept."""
        store = self.make_store()
        first = store.write(WriteRequest(["co2"], [(0,)], {"co2": int}))
        together = [store.write(WriteRequest(["co2"], [(i,), (i + 10,)], {})) for i in range(1, 5)]
        counts = yield defer.gatherResults([first] + together)
        self.assertEqual(counts, [1, 2, 2, 2, 2])
        self.assertEqual(store.write_stats["transactions"], 2)
        self.assertEqual(store.write_stats["largest_group"], 4)
        self.assertEqual(store.write_stats["uploads"], 5)
        self.assertEqual(sorted(r["co2"] for r in rows_in(self.db_path)), [0, 1, 2, 3, 4, 11, 12, 13, 14])

    @defer.inlineCallbacks
    def test_each_deferred_fires_after_commit(self):
        """When a caller's Deferred fires, another connection already sees its rows."""
        store = self.make_store()
        seen = []

        def check(count, expected_at_least):
            seen.append(committed_count(self.db_path) >= expected_at_least)
            return count

        ds = [store.write(WriteRequest(["co2"], [(1,)], {"co2": int})).addCallback(check, 1)]
        ds += [store.write(WriteRequest(["co2"], [(i,)], {})).addCallback(check, 1 + i) for i in range(1, 4)]
        yield defer.gatherResults(ds)
        self.assertEqual(seen, [True] * 4)

    @defer.inlineCallbacks
    def test_a_failing_upload_does_not_fail_the_others(self):
        """In one group: a short row fails its upload alone; its new column is undone; the others and their columns commit."""
        store = self.make_store()
        held = WriterHeld(self, store)
        good = store.write(WriteRequest(["co2", "label"], [(1, "a")], {"co2": int, "label": str}))
        bad = store.write(WriteRequest(["co2", "broken"], [(2, "x"), (3,)], {"broken": str}))
        also_good = store.write(WriteRequest(["co2", "ratio"], [(4, 0.5)], {"co2": int, "ratio": float}))
        yield held.release()
        self.assertEqual((yield good), 1)
        yield self.assertFailure(bad, sqlite3.Error)
        self.assertEqual((yield also_good), 1)
        self.assertEqual((store.write_stats["transactions"], store.write_stats["largest_group"]), (2, 3))
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [1, 4])
        self.assertNotIn("broken", table_columns(self.db_path))
        self.assertNotIn("broken", store.columns)
        self.assertEqual((store.columns["label"], store.columns["ratio"]), ("TEXT", "REAL"))

    @defer.inlineCallbacks
    def test_a_failing_alter_table_is_undone_alone(self):
        """An upload whose ALTER TABLE fails is refused; the upload before it in the group commits."""
        store = self.make_store()
        held = WriterHeld(self, store)
        good = store.write(WriteRequest(["co2"], [(1,)], {"co2": int}))
        # another program added "key" behind the store's back: the store's ALTER TABLE itself fails
        connection = sqlite3.connect(self.db_path)
        connection.execute("ALTER TABLE data ADD COLUMN key INTEGER")
        connection.commit()
        connection.close()
        bad = store.write(WriteRequest(["co2", "key"], [(2, 2)], {"key": int}))
        yield held.release()
        self.assertEqual((yield good), 1)
        yield self.assertFailure(bad, sqlite3.Error)
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [1])
        self.assertEqual(table_columns(self.db_path).count("key"), 1)
        self.assertNotIn("key", store.columns)

    @defer.inlineCallbacks
    def test_same_new_column_twice_in_one_group(self):
        """Two uploads of one group adding the same column: it is added once, both commit."""
        store = self.make_store()
        held = WriterHeld(self, store)
        ds = [store.write(WriteRequest(["co2"], [(i,)], {"co2": int})) for i in range(3)]
        yield held.release()
        self.assertEqual((yield defer.gatherResults(ds)), [1, 1, 1])
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [0, 1, 2])

    @defer.inlineCallbacks
    def test_callers_writing_from_callbacks_join_the_next_group(self):
        """A write made when an acknowledgement fires is queued, not lost, and committed."""
        store = self.make_store()
        follow_ups = []

        def again(count):
            follow_ups.append(store.write(WriteRequest(["co2"], [(99,)], {})))
            return count

        yield store.write(WriteRequest(["co2"], [(1,)], {"co2": int})).addCallback(again)
        self.assertEqual((yield follow_ups[0]), 1)
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [1, 99])

    @defer.inlineCallbacks
    def test_stop_waits_for_queued_writes(self):
        """Stopping the store commits what is queued before the pool closes."""
        store = self.make_store()
        held = WriterHeld(self, store)
        ds = [store.write(WriteRequest(["co2"], [(i,)], {"co2": int})) for i in range(3)]
        stopped = store.stopService()
        self.assertNoResult(stopped)
        yield held.release()
        yield stopped
        self.assertEqual((yield defer.gatherResults(ds)), [1, 1, 1])
        self.assertEqual(committed_count(self.db_path), 3)


class BackpressureTests(StoreMixin, unittest.TestCase):
    """A bounded queue: when the writer falls behind, writes and uploads are refused at once."""

    @defer.inlineCallbacks
    def test_store_refuses_when_queue_is_full(self):
        """With WRITE_QUEUE_MAX_ROWS=3, a write after 3 queued rows fails with StoreBusy; it recovers once drained."""
        store = self.make_store(make_settings(WRITE_QUEUE_MAX_ROWS=3))
        held = WriterHeld(self, store)
        queued = [store.write(WriteRequest(["co2"], [(1,)], {"co2": int})), store.write(WriteRequest(["co2"], [(2,), (3,), (4,)], {}))]
        self.assertTrue(store.busy)
        yield self.assertFailure(store.write(WriteRequest(["co2"], [(5,)], {})), StoreBusy)
        self.assertEqual(store.write_stats["busy"], 1)
        yield held.release()
        yield defer.gatherResults(queued)
        self.assertFalse(store.busy)
        self.assertEqual((yield store.write(WriteRequest(["co2"], [(6,)], {}))), 1)
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [1, 2, 3, 4, 6])

    @defer.inlineCallbacks
    def test_ingest_fails_fast_with_503_busy(self):
        """Ingest refuses with IngestError(503, "busy") and a retry_after, counts it, and stores nothing of it."""
        ingest = self.make_ingest(make_settings(WRITE_QUEUE_MAX_ROWS=2, WRITE_RETRY_AFTER_SECONDS=7))
        held = WriterHeld(self, self.store)
        first = ingest.ingest(Upload(b'{"co2": [1]}', "application/json", {}, "udp:10.0.0.1"))
        second = ingest.ingest(Upload(b'{"co2": [2, 3]}', "application/json", {}, "udp:10.0.0.1"))
        e = yield self.assertFailure(
            ingest.ingest(Upload(b'{"co2": [4]}', "application/json", {}, "udp:10.0.0.1")), IngestError
        )
        self.assertEqual((e.status, e.reason, e.retry_after), (503, "busy", 7))
        self.assertEqual(ingest.counters["rejects"][("udp", "busy")], 1)
        yield held.release()
        receipts = yield defer.gatherResults([first, second])
        self.assertEqual([r.rows for r in receipts], [1, 2])
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [1, 2, 3])

    @defer.inlineCallbacks
    def test_a_failing_upload_through_ingest_does_not_fail_its_group(self):
        """A value the database cannot bind (from a TIME_CONVERTER) fails its upload with 503; the group's others are stored."""
        settings = make_settings(TIME_CONVERTER=lambda value, column: object() if value == 666 else value)
        ingest = self.make_ingest(settings)
        self.flushLoggedErrors()
        held = WriterHeld(self, self.store)
        ok = [ingest.ingest(Upload(b'{"time": [%d], "co2": [1]}' % t, "application/json", {}, "http")) for t in (1, 2)]
        bad = ingest.ingest(Upload(b'{"time": [666], "co2": [1]}', "application/json", {}, "http"))
        ok.append(ingest.ingest(Upload(b'{"time": [3], "co2": [1]}', "application/json", {}, "http")))
        yield held.release()
        receipts = yield defer.gatherResults(ok)
        self.assertEqual([r.rows for r in receipts], [1, 1, 1])
        e = yield self.assertFailure(bad, IngestError)
        self.assertEqual((e.status, e.reason), (503, "store"))
        self.assertEqual(len(self.flushLoggedErrors(sqlite3.Error)), 1)
        self.assertEqual([r["time"] for r in rows_in(self.db_path)], [1, 2, 3])


class HTTPBackpressureTests(SiteMixin, unittest.TestCase):
    """Over HTTP a full queue is a 503 with Retry-After."""

    @defer.inlineCallbacks
    def test_busy_is_503_with_retry_after(self):
        """POST /upload while the writer is behind: 503, Retry-After from the settings, a JSON error."""
        self.start_site(make_settings(WRITE_QUEUE_MAX_ROWS=1, WRITE_RETRY_AFTER_SECONDS=3))
        held = WriterHeld(self, self.store)
        queued = self.store.write(WriteRequest(["co2"], [(1,), (2,)], {"co2": int}))
        response = yield treq.post(
            self.url + "/upload", data=b'{"co2": [3]}', headers={"Content-Type": "application/json"}, persistent=False
        )
        body = yield treq.json_content(response)
        self.assertEqual(response.code, 503)
        self.assertEqual(response.headers.getRawHeaders("retry-after"), ["3"])
        self.assertIn("busy", body["error"])
        yield held.release()
        yield queued
        status, body = yield self.post(b'{"co2": [3]}', "application/json")
        self.assertEqual((status, body), (200, {"saved-in-db": 1}))
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [1, 2, 3])
