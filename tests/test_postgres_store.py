"""
The PostgreSQL store's own behaviour: the retry after a dead connection,
never after a lost COMMIT, values that do not fit, two stores adding one
column at once, outbox leases, and downloads identical to SQLite's.
"""

from __future__ import annotations

import datetime
from typing import Any, List

import treq
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from co2logd.dburl import parse_db
from co2logd.ingest import IngestService
from co2logd.store import Store, StoreUnavailable, ValueRefused, WriteRequest
from co2logd.web.site import make_site
from tests import pgserver
from tests.helpers import make_settings

SKIP = pgserver.skip_reason()
WHEN = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
FIXED = [("time_upload_utc", WHEN), ("matched_checksums", None), ("failed_checksums", None), ("transport", "http")]


class PostgresStoreTests(unittest.TestCase):
    """One database per test on the shared server."""

    skip = SKIP

    def setUp(self) -> None:
        self.server = pgserver.shared_server()
        self.db = self.server.create_database()
        self.url = parse_db(self.server.url(self.db))

    def open_store(self, **settings: Any):
        from co2logd.store.postgres import PostgresStore

        store = PostgresStore.open(self.url, make_settings(**settings))
        store.startService()
        self.addCleanup(store.stopService)
        return store

    def sql(self, statement: str) -> List[tuple]:
        return self.server.execute(statement, dbname=self.db)

    @defer.inlineCallbacks
    def test_dead_connection_is_retried_once(self) -> Any:
        """After PostgreSQL ended every connection (a restart does), the next write runs again on a fresh one and succeeds once."""
        store = self.open_store()
        yield store.write(WriteRequest(["co2"], [(1,)], {"co2": int}, FIXED))
        yield threads.deferToThread(
            self.sql, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'co2logd'")
        n = yield store.write(WriteRequest(["co2"], [(2,)], {}, FIXED))
        self.assertEqual(n, 1)
        self.assertEqual(store.counters["retried"], 1)
        rows = yield threads.deferToThread(self.sql, "SELECT co2 FROM data ORDER BY rowid")
        self.assertEqual(rows, [(1,), (2,)])

    def test_lost_commit_is_not_retried(self) -> None:
        """A connection that dies during COMMIT is reported (the write may have landed), never run again."""
        import psycopg

        store = self.open_store()
        calls = []

        class Raw:
            closed = False
            broken = False

            def commit(self) -> None:
                self.broken = True
                raise psycopg.OperationalError("server closed the connection unexpectedly")

        class Pooled:
            _connection = Raw()

            def drop(self) -> None:
                calls.append("drop")

            def reconnect(self) -> None:
                calls.append("reconnect")

        def work(raw):
            calls.append("work")

        with self.assertRaises(StoreUnavailable) as caught:
            store._in_transaction(Pooled(), work, False)
        self.assertIn("may or may not be stored", str(caught.exception))
        self.assertEqual(calls, ["work", "drop"])

    def test_dead_before_commit_is_marked_for_the_retry(self) -> None:
        """A connection that dies while the statements run (before COMMIT) is dropped and marked safe to run again."""
        import psycopg

        from co2logd.store.postgres import _DeadBeforeCommit

        store = self.open_store()

        class Raw:
            closed = False
            broken = False

        raw = Raw()

        class Pooled:
            _connection = raw

            def drop(self) -> None:
                pass

        def work(connection):
            raw.broken = True
            raise psycopg.OperationalError("terminating connection due to administrator command")

        self.assertRaises(_DeadBeforeCommit, store._in_transaction, Pooled(), work, False)

    @defer.inlineCallbacks
    def test_value_that_does_not_fit_is_refused(self) -> Any:
        """Text into a bigint column refuses the whole upload: no row, no new column of it."""
        store = self.open_store()
        yield store.write(WriteRequest(["co2"], [(400,)], {"co2": int}, FIXED))
        bad = store.write(WriteRequest(["co2", "extra"], [(401, 1), ("n/a", 2)], {"extra": int}, FIXED))
        error = yield self.assertFailure(bad, ValueRefused)
        self.assertIn("'n/a' is not an integer", str(error))
        self.assertEqual((yield store.count()), 1)
        self.assertNotIn("extra", store.columns)

    @defer.inlineCallbacks
    def test_two_stores_add_the_same_columns_at_once(self) -> Any:
        """Two stores (two gateways) writing uploads that add the same new columns at the same moment all succeed."""
        a, b = self.open_store(), self.open_store()
        writes = []
        for k in range(20):
            for store in (a, b):
                writes.append(store.write(WriteRequest(["c{}".format(k)], [(k,)], {"c{}".format(k): int}, FIXED)))
        results = yield defer.DeferredList(writes, consumeErrors=True)
        self.assertEqual([ok for ok, _ in results], [True] * 40, [r for ok, r in results if not ok][:1])
        self.assertEqual((yield a.count()), 40)
        self.assertEqual(a.columns.get("c19"), "bigint")

    @defer.inlineCallbacks
    def test_outbox_leases_one_gateway_per_box(self) -> Any:
        """A box's entries go to one gateway; other boxes to the other; an expired lease frees them for anyone."""
        import json

        a, b = self.open_store(), self.open_store()
        entries = [json.dumps({"name": "box{}".format(i % 2), "n": i}) for i in range(6)]
        yield a.write(WriteRequest(["co2"], [(1,)], {"co2": int}, FIXED, outbox=entries, queued_at=1.0))
        first = yield a.outbox_fetch(2)  # the two oldest: one of box0, one of box1
        taken = yield b.outbox_fetch(10)  # nothing of the boxes a holds
        self.assertEqual(len(first), 2)
        self.assertEqual(taken, [])
        again = yield a.outbox_fetch(10)  # a's own leases are a's again
        self.assertEqual(len(again), 6)
        yield threads.deferToThread(self.sql, "UPDATE co2logd_osem_outbox SET lease_until = now() - interval '1 second'")
        stolen = yield b.outbox_fetch(10)
        self.assertEqual(len(stolen), 6)
        yield b.outbox_delete([i for i, _, _ in stolen])
        self.assertEqual((yield a.outbox_stats())["depth"], 0)


class SameDownloadsTests(unittest.TestCase):
    """The same uploads through the same site give the same downloads on SQLite and on PostgreSQL."""

    skip = SKIP

    @defer.inlineCallbacks
    def site_for(self, store, settings):
        clock = task.Clock()
        clock.advance(1_714_564_800.25)
        ingest = IngestService(settings, store, clock)
        port = reactor.listenTCP(0, make_site(settings, ingest, store, reactor), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        url = "http://127.0.0.1:{}".format(port.getHost().port)
        for body, content_type in [
            (b'{"time_utc":[43,23],"co2":[1223,2351]}', "application/json"),
            (b"time_utc,co2,temp,note\n44,1224,20.5,a\n45,,21,", "text/csv"),
            (b'[{"co2": 5, "flag": true, "box": "lab"}, {"co2": 6, "ratio": 0.1}]', "application/json"),
        ]:
            response = yield treq.post(url + "/upload", data=body, headers={"Content-Type": content_type}, persistent=False)
            self.assertEqual(response.code, 200, (yield treq.content(response)))
            yield treq.content(response)
        return url

    @defer.inlineCallbacks
    def test_downloads_match(self) -> Any:
        """html, csv and json, whole, by columns, limited and paged: byte for byte the same."""
        from co2logd.store.postgres import PostgresStore

        settings = make_settings()
        sqlite = Store.open(self.mktemp(), settings)
        sqlite.startService()
        self.addCleanup(sqlite.stopService)
        server = pgserver.shared_server()
        pg = PostgresStore.open(parse_db(server.url(server.create_database())), settings)
        pg.startService()
        self.addCleanup(pg.stopService)
        urls = []
        for store in (sqlite, pg):
            urls.append((yield self.site_for(store, settings)))
        for query in ["format=csv", "format=json", "format=html", "format=csv&cols=co2,note",
                      "format=json&number=2", "format=csv&cols=co2&number=3&page=2"]:
            bodies = []
            for url in urls:
                response = yield treq.get(url + "/download?" + query, persistent=False)
                bodies.append((response.code, (yield treq.content(response))))
            self.assertEqual(bodies[1], bodies[0], query)

    @defer.inlineCallbacks
    def test_value_that_does_not_fit_is_a_400(self) -> Any:
        """Over HTTP, text into a number column is a 400 naming the value (no retry will help), and nothing is stored."""
        from co2logd.store.postgres import PostgresStore

        settings = make_settings()
        server = pgserver.shared_server()
        pg = PostgresStore.open(parse_db(server.url(server.create_database())), settings)
        pg.startService()
        self.addCleanup(pg.stopService)
        url = yield self.site_for(pg, settings)
        response = yield treq.post(url + "/upload", data=b'{"co2": ["n/a"]}', headers={"Content-Type": "application/json"},
                                   persistent=False)
        body = yield treq.json_content(response)
        self.assertEqual(response.code, 400)
        self.assertEqual(body["reason"], "value")
        self.assertIn("'n/a' is not an integer", body["error"])
        self.assertEqual((yield pg.count()), 6)  # only the rows site_for uploaded


class LockTimeoutTests(unittest.TestCase):
    """A new column that cannot get the table's lock in time."""

    skip = SKIP

    @defer.inlineCallbacks
    def test_lock_wait_is_busy(self) -> Any:
        """While another session holds the table, an upload adding a column fails as busy (503 busy) after the lock timeout."""
        import psycopg

        from co2logd.store import StoreBusy
        from co2logd.store.postgres import PostgresStore

        server = pgserver.shared_server()
        db = server.create_database()
        store = PostgresStore.open(parse_db(server.url(db)), make_settings())
        store.startService()
        self.addCleanup(store.stopService)
        holder = psycopg.connect(server.conninfo(db))
        self.addCleanup(holder.close)
        holder.execute("LOCK TABLE data IN ACCESS SHARE MODE")  # what a streaming download holds
        try:
            blocked = store.write(WriteRequest(["new"], [(1,)], {"new": int}, FIXED))
            yield self.assertFailure(blocked, StoreBusy)
        finally:
            holder.rollback()
        self.assertEqual((yield store.write(WriteRequest(["new"], [(1,)], {"new": int}, FIXED))), 1)
