"""
Big uploads are staged in short steps and made visible in one commit (issue 10, co2logd/store/staging.py):
other uploads commit in between, no reader sees part of a big upload, a failed or
crashed one leaves nothing, and the receipt comes after the commit.
"""

import datetime
import os
import sqlite3
import subprocess
import sys
import textwrap

from twisted.internet import defer, reactor
from twisted.trial import unittest

from co2logd.store import staging
from co2logd.store.interfaces import ReplayAdvance, StoreBusy, WriteRequest
from co2logd.store.staging import stage_tables
from tests.helpers import StoreMixin, make_settings, rows_in

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXED = [("time_upload_utc", datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc)), ("transport", "http")]


def request(values, **kwargs):
    """A write of one co2 value per row."""
    return WriteRequest(["co2"], [(v,) for v in values], {"co2": int}, FIXED, **kwargs)


def visible(path):
    """(co2 values, measurement-time rows) another connection sees: only what is committed."""
    connection = sqlite3.connect(path)
    try:
        values = [v for (v,) in connection.execute("SELECT co2 FROM data ORDER BY rowid")]
        (indexed,) = connection.execute("SELECT count(*) FROM co2logd_mtime").fetchone()
        return values, indexed
    finally:
        connection.close()


class StagedWriteTests(StoreMixin, unittest.TestCase):
    """Staging through a real store on a real SQLite file (small thresholds, so 100 rows are big)."""

    def setUp(self):
        for name, value in (("STAGE_ABOVE_ROWS", 10), ("STAGE_CHUNK_ROWS", 7)):
            self.patch(staging, name, value)
        self.store = self.make_store(make_settings())
        self.store.rollups.fold_in_writer_rows = 10
        self.store.rollups.index_chunk_rows = 9
        return self.store.write(request([0]))

    @defer.inlineCallbacks
    def test_others_commit_between_the_steps_and_see_nothing_of_it(self):
        """
        While a 100-row upload is staged, 7 rows a step, a small upload made
        meanwhile commits before it, and another connection sees none of the
        big upload's rows until all of them are there, indexed, in order.
        """
        store = self.store
        seen, order, small = [], [], []
        step = staging.Stage.step

        def watched(stage, connection, rows, chunk_rows):
            more = step(stage, connection, rows, chunk_rows)
            seen.append(visible(self.db_path)[0])
            if stage.staged == 21:  # in the database thread: the small upload is made from the reactor
                reactor.callFromThread(lambda: small.append(
                    store.write(request([-1])).addCallback(lambda n: order.append(("small", n)))))
            return more

        self.patch(staging.Stage, "step", watched)
        big = yield store.write(request(range(1, 101))).addCallback(
            lambda n: (order.append(("big", n)), visible(self.db_path))[1])
        yield defer.gatherResults(small)
        self.assertEqual(order, [("small", 1), ("big", 100)])
        self.assertEqual(len(seen), 15)  # ceil(100 / 7) steps
        self.assertTrue(all(not set(values) & set(range(1, 101)) for values in seen), seen)
        values, indexed = big
        self.assertEqual(values, [0, -1] + list(range(1, 101)))  # acknowledged: committed, in order
        self.assertEqual(indexed, 102)  # and indexed, so a plot shows them
        tables = yield store.pool.runWithConnection(stage_tables)
        self.assertEqual(tables, [])

    @defer.inlineCallbacks
    def test_a_refused_big_upload_leaves_nothing(self):
        """A big upload refused in its savepoint (a replayed counter) stores none of its rows; an upload in its group is kept."""
        store = self.store
        yield store.write(request([5], replay=ReplayAdvance("box", 10, 0.0)))
        refused = store.write(request(range(1, 51), replay=ReplayAdvance("box", 3, 0.0)))
        kept = store.write(request([7]))
        yield kept
        yield self.assertFailure(refused, Exception)
        self.assertEqual(visible(self.db_path)[0], [0, 5, 7])
        tables = yield store.pool.runWithConnection(stage_tables)
        self.assertEqual(tables, [])

    @defer.inlineCallbacks
    def test_staged_rows_count_against_the_queue_limit(self):
        """Rows being staged make the store busy like queued rows; once published it takes writes again."""
        store = self.store
        store.writer.queue_limit = 50
        big = store.write(request(range(50)))
        self.assertTrue(store.busy)
        yield self.assertFailure(store.write(request([1])), StoreBusy)
        yield big
        self.assertFalse(store.busy)
        self.assertEqual((yield store.write(request([1]))), 1)

    @defer.inlineCallbacks
    def test_stop_waits_for_a_staged_upload(self):
        """Stopping the store while a big upload is staged commits it first (its sender gets the receipt)."""
        store = self.store
        big = store.write(request(range(1, 41)))
        yield store.stopService()
        self.assertEqual((yield big), 40)
        self.assertEqual(len(rows_in(self.db_path)), 41)

    @defer.inlineCallbacks
    def test_uploads_stay_fully_synced_after_maintenance(self):
        """Maintenance commits without an fsync of its own; the writer's uploads are synced as configured afterwards."""
        store = self.store
        modes = []
        index_chunk = store.rollups._index_chunk

        def chunk(connection, filled, high):
            modes.append(connection.execute("PRAGMA synchronous").fetchone()[0])
            return index_chunk(connection, filled, high)

        store.rollups._index_chunk = chunk
        yield store.write(request(range(40)))  # big: indexed in short transactions after its commit
        yield store.catch_up()
        self.assertEqual(set(modes), {1})  # NORMAL
        mode = yield store.pool.runWithConnection(lambda c: c.execute("PRAGMA synchronous").fetchone()[0])
        self.assertEqual(mode, 2)  # FULL, the default DB_SYNCHRONOUS


class StagingCrashTests(unittest.TestCase):
    """A process killed while staging leaves nothing of the upload: TEMP tables die with it."""

    def test_kill_while_staging(self):
        """os._exit in the middle of staging a 5,000-row upload: the file holds the earlier row only, and no staging table."""
        path = os.path.abspath(self.mktemp())
        script = textwrap.dedent("""
            import datetime, os, sys
            from twisted.internet import reactor
            from co2logd.settings import Settings
            from co2logd.store import Store, staging
            from co2logd.store.interfaces import WriteRequest
            store = Store.open(sys.argv[1], Settings.from_values({}, environ={}))
            staging.STAGE_CHUNK_ROWS = 500
            step = staging.Stage.step
            def dying(stage, connection, rows, chunk_rows):
                more = step(stage, connection, rows, chunk_rows)
                if stage.staged >= 2500:
                    os._exit(9)  # no cleanup, no close: as a crash
                return more
            staging.Stage.step = dying
            fixed = [("time_upload_utc", datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone.utc))]
            def start():
                store.startService()
                store.write(WriteRequest(["co2"], [(1,)], {"co2": int}, fixed)).addCallback(
                    lambda _: store.write(WriteRequest(["co2"], [(k,) for k in range(100, 5100)], {}, fixed)))
            reactor.callWhenRunning(start)
            reactor.callLater(60, os._exit, 3)
            reactor.run()
        """)
        done = subprocess.run([sys.executable, "-c", script, path], cwd=REPO, timeout=120,
                              env=dict(os.environ, PYTHONPATH=REPO), capture_output=True)
        self.assertEqual(done.returncode, 9, done.stderr[-2000:])
        connection = sqlite3.connect(path)
        try:
            self.assertEqual(connection.execute("PRAGMA integrity_check").fetchone(), ("ok",))
            self.assertEqual(connection.execute("SELECT co2 FROM data").fetchall(), [(1,)])
            self.assertEqual(connection.execute(
                "SELECT name FROM sqlite_master WHERE name LIKE 'co2logd_stage%'").fetchall(), [])
        finally:
            connection.close()
