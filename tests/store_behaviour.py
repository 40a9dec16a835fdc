"""
What every :class:`co2logd.store.IStore` does, as one mixin run on each store.

A test case mixes :class:`StoreBehaviourMixin` in and provides
``make_store(settings)``: a started store, stopped by the test's cleanup.
``tests/test_store_sqlite.py`` runs it on the SQLite store and
``tests/test_store_memory.py`` on :class:`co2logd.testing.MemoryStore`.
"""

from __future__ import annotations

import datetime
from typing import Any, List, Optional, Tuple

from twisted.internet import defer
from zope.interface.verify import verifyObject

from co2logd.store import (
    DuplicateUpload,
    IdempotencyClaim,
    IRowStream,
    IStore,
    Query,
    ReplayAdvance,
    ReplayRefused,
    StoreError,
    WriteRequest,
)
from tests.helpers import make_settings

WHEN = datetime.datetime(2024, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
T0 = WHEN.timestamp()


def fixed(transport: str = "http", when: datetime.datetime = WHEN) -> List[Tuple[str, Any]]:
    """The columns the ingest service fills for every row."""
    return [("time_upload_utc", when), ("matched_checksums", None), ("failed_checksums", None), ("transport", transport)]


def at(seconds: float) -> str:
    """A measurement time as stored text, ``seconds`` after :data:`WHEN`."""
    return (WHEN + datetime.timedelta(seconds=seconds)).isoformat(" ")


class StoreBehaviourMixin:
    """The behaviour of a store, through :class:`IStore` only."""

    def make_store(self, settings: Any = None) -> Any:
        """A started store on ``settings`` (default settings when None), stopped at cleanup."""
        raise NotImplementedError

    def store_with(self, **settings: Any) -> Any:
        return self.make_store(make_settings(**settings) if settings else None)

    @defer.inlineCallbacks
    def read_all(self, store: Any, columns: Optional[List[str]] = None, chunk_rows: int = 1000) -> Any:
        """Every row of ``columns`` (default: all), in rowid order, through select."""
        stream = yield store.select(Query(columns or [], order_by=(store.rowid, "asc")), chunk_rows)
        rows = []
        while True:
            chunk = yield stream.next_chunk()
            if not chunk:
                break
            rows.extend(tuple(r) for r in chunk)
        return stream.header, rows

    # -- the interface ------------------------------------------------------

    def test_provides_the_interface(self) -> None:
        """The store provides IStore with every method's signature."""
        self.assertTrue(verifyObject(IStore, self.store_with()))

    # -- writing --------------------------------------------------------------

    @defer.inlineCallbacks
    def test_write_adds_columns_and_rows(self) -> Any:
        """New columns are added, rows land after the fixed columns, and the column cache follows."""
        store = self.store_with()
        n = yield store.write(
            WriteRequest(["co2", "label"], [(400, "a"), (410, "b")], {"co2": int, "label": str}, fixed("udp:1.2.3.4"))
        )
        self.assertEqual(n, 2)
        self.assertIn("co2", store.columns)
        self.assertIn("label", store.columns)
        header, rows = yield self.read_all(store, ["co2", "label", "transport"])
        self.assertEqual(header, ["co2", "label", "transport"])
        self.assertEqual(rows, [(400, "a", "udp:1.2.3.4"), (410, "b", "udp:1.2.3.4")])
        self.assertEqual((yield store.count()), 2)
        self.assertEqual((yield store.row_count()), 2)

    @defer.inlineCallbacks
    def test_python_values_are_stored_as_co2logserver_stored_them(self) -> Any:
        """Datetimes come back as co2logserver's text, booleans as 0/1, numbers and text as they were."""
        store = self.store_with()
        values = (WHEN, True, 1.5, "x", None)
        names = ["when", "flag", "ratio", "note", "nothing"]
        yield store.write(WriteRequest(names, [values], {n: type(v) for n, v in zip(names, values)}, fixed()))
        _, rows = yield self.read_all(store, names + ["time_upload_utc"])
        self.assertEqual(rows, [("2024-05-01 12:00:00+00:00", 1, 1.5, "x", None, "2024-05-01 12:00:00+00:00")])

    @defer.inlineCallbacks
    def test_a_failed_write_keeps_nothing(self) -> Any:
        """A row short of a value fails the write: neither its new column nor any of its rows remain."""
        store = self.store_with()
        bad = store.write(WriteRequest(["co2"], [(1,), ()], {"co2": int}, fixed(), outbox=["entry"]))
        failure = yield self.assertFailure(bad, Exception)
        self.assertNotIsInstance(failure, (ReplayRefused, DuplicateUpload))
        self.assertNotIn("co2", store.columns)
        self.assertEqual((yield store.count()), 0)
        self.assertEqual((yield store.outbox_stats())["depth"], 0)
        self.assertEqual((yield store.write(WriteRequest(["co2"], [(2,)], {"co2": int}, fixed()))), 1)

    @defer.inlineCallbacks
    def test_an_upload_without_data_columns(self) -> Any:
        """Rows of the fixed columns alone are stored (ALLOW_EMPTY_ROWS)."""
        store = self.store_with()
        self.assertEqual((yield store.write(WriteRequest([], [()], {}, fixed("serial:x")))), 1)
        _, rows = yield self.read_all(store, ["transport"])
        self.assertEqual(rows, [("serial:x",)])

    @defer.inlineCallbacks
    def test_write_after_stop_fails_at_once(self) -> Any:
        """A write made once stopService began fails at once with StoreError, not never."""
        store = self.store_with()
        yield store.write(WriteRequest(["co2"], [(1,)], {"co2": int}, fixed()))
        yield defer.maybeDeferred(store.stopService)
        d = store.write(WriteRequest(["co2"], [(2,)], {}, fixed()))
        self.assertTrue(d.called, "the write after stop did not answer at once")
        failure = self.failureResultOf(d, StoreError)
        self.assertIn("stopping", str(failure.value))

    @defer.inlineCallbacks
    def test_observers_hear_every_write(self) -> Any:
        """An observer is told each write's latency and its rows, or None when it failed."""
        store = self.store_with()
        heard: List[Tuple[float, Optional[int]]] = []
        store.add_observer(lambda seconds, rows: heard.append((seconds, rows)))
        yield store.write(WriteRequest(["co2"], [(1,), (2,)], {"co2": int}, fixed()))
        yield self.assertFailure(store.write(WriteRequest(["co2"], [()], {}, fixed())), Exception)
        self.assertEqual([rows for _, rows in heard], [2, None])
        self.assertTrue(all(seconds >= 0 for seconds, _ in heard))

    # -- freshness ------------------------------------------------------------

    @defer.inlineCallbacks
    def test_replay_numbers_only_grow(self) -> Any:
        """A number not larger than the stored one refuses the whole write; a larger one is kept."""
        store = self.store_with()
        self.assertIsNone(store.replay_last("counter:s:dev"))
        write = lambda n, co2: store.write(  # noqa: E731
            WriteRequest(["co2"], [(co2,)], {"co2": int}, fixed(), replay=ReplayAdvance("counter:s:dev", n, T0))
        )
        yield write(5, 1)
        self.assertEqual(store.replay_last("counter:s:dev"), 5)
        failure = yield self.assertFailure(write(5, 2), ReplayRefused)
        self.assertEqual(failure.advance.number, 5)
        yield self.assertFailure(write(4, 3), ReplayRefused)
        yield write(6, 4)
        self.assertEqual(store.replay_last("counter:s:dev"), 6)
        _, rows = yield self.read_all(store, ["co2"])
        self.assertEqual(rows, [(1,), (4,)])

    @defer.inlineCallbacks
    def test_an_idempotency_key_is_taken_once(self) -> Any:
        """A key held within the retention refuses a second write; its record is looked up; expiry frees it."""
        store = self.store_with()

        def write(co2: int, now: float) -> Any:
            claim = IdempotencyClaim("-:key-1", "digest", '{"saved-in-db": 1}', now, now - 100)
            return store.write(WriteRequest(["co2"], [(co2,)], {"co2": int}, fixed(), idempotency=claim))

        yield write(1, 1000.0)
        self.assertEqual((yield store.idempotency_lookup("-:key-1", 900.0)), ("digest", '{"saved-in-db": 1}'))
        self.assertIsNone((yield store.idempotency_lookup("-:key-1", 1001.0)))
        self.assertIsNone((yield store.idempotency_lookup("-:other", 0.0)))
        failure = yield self.assertFailure(write(2, 1050.0), DuplicateUpload)
        self.assertEqual(failure.key, "-:key-1")
        yield write(3, 1200.0)  # the key is older than the write's cutoff: taken over
        self.assertEqual((yield store.idempotency_expire(1200.0)), 0)
        self.assertEqual((yield store.idempotency_expire(1201.0)), 1)
        self.assertIsNone((yield store.idempotency_lookup("-:key-1", 0.0)))
        _, rows = yield self.read_all(store, ["co2"])
        self.assertEqual(rows, [(1,), (3,)])

    @defer.inlineCallbacks
    def test_a_refused_claim_leaves_the_key_free(self) -> Any:
        """A write refused as a replay does not take its idempotency key either."""
        store = self.store_with()
        yield store.write(WriteRequest([], [()], {}, fixed(), replay=ReplayAdvance("k", 9, T0)))
        claim = IdempotencyClaim("-:key-2", "d", "{}", 10.0, 0.0)
        refused = store.write(WriteRequest([], [()], {}, fixed(), replay=ReplayAdvance("k", 9, T0), idempotency=claim))
        yield self.assertFailure(refused, ReplayRefused)
        self.assertIsNone((yield store.idempotency_lookup("-:key-2", 0.0)))

    # -- download -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_select_bounds_order_limit_and_chunks(self) -> Any:
        """select() applies bounds, order and limit, and streams a chunk at a time."""
        store = self.store_with()
        yield store.write(WriteRequest(["co2"], [(i,) for i in range(10)], {"co2": int}, fixed()))
        query = Query(["co2"], [("co2", ">=", 2), ("co2", "<=", 8)], ("co2", "desc"), 5)
        stream = yield store.select(query, 2)
        self.assertTrue(IRowStream.providedBy(stream))
        chunks = []
        while True:
            chunk = yield stream.next_chunk()
            if not chunk:
                break
            chunks.append([r[0] for r in chunk])
        self.assertEqual(chunks, [[8, 7], [6, 5], [4]])

    @defer.inlineCallbacks
    def test_a_stream_closed_early(self) -> Any:
        """close() ends a stream early; the store goes on answering."""
        store = self.store_with()
        yield store.write(WriteRequest(["co2"], [(i,) for i in range(5)], {"co2": int}, fixed()))
        stream = yield store.select(Query(["co2"]), 2)
        self.assertEqual(len((yield stream.next_chunk())), 2)
        yield stream.close()
        self.assertEqual((yield store.count()), 5)

    @defer.inlineCallbacks
    def test_rowid_paging(self) -> Any:
        """rowid_at gives where the next page starts, and None past the end."""
        store = self.store_with()
        yield store.write(WriteRequest(["co2"], [(i,) for i in range(6)], {"co2": int}, fixed()))
        probe = Query([store.rowid], [(store.rowid, ">=", 1)], (store.rowid, "asc"), 1)  # as /download probes
        first = yield store.rowid_at(probe, 0)
        fourth = yield store.rowid_at(probe, 3)
        self.assertEqual(fourth - first, 3)
        self.assertIsNone((yield store.rowid_at(probe, 6)))
        _, rows = yield self.read_all(store, ["co2"])
        page = Query(["co2"], [(store.rowid, ">=", fourth)], (store.rowid, "asc"))
        stream = yield store.select(page, 10)
        self.assertEqual((yield stream.next_chunk()), [r for r in rows[3:]])

    # -- the outbox -------------------------------------------------------------

    @defer.inlineCallbacks
    def test_outbox_entries_come_with_the_rows(self) -> Any:
        """Entries are queued with the rows, fetched oldest first, delivered or dead-lettered."""
        store = self.store_with()
        yield store.write(WriteRequest(["co2"], [(1,)], {"co2": int}, fixed(), outbox=["e1", "e2", "e3"], queued_at=5.0))
        self.assertEqual((yield store.outbox_stats()), {"depth": 3, "oldest_queued_at": 5.0, "dead_letters": 0})
        entries = yield store.outbox_fetch(2)
        self.assertEqual([(queued, entry) for _, queued, entry in entries], [(5.0, "e1"), (5.0, "e2")])
        yield store.outbox_dead_letter([(entries[0][0], "refused")], 6.0)
        yield store.outbox_delete([entries[1][0]])
        self.assertEqual((yield store.outbox_stats()), {"depth": 1, "oldest_queued_at": 5.0, "dead_letters": 1})
        dead = yield store.dead_letters(10)
        self.assertEqual([(queued, failed, entry, reason) for _, queued, failed, entry, reason in dead], [(5.0, 6.0, "e1", "refused")])
        (left,) = yield store.outbox_fetch(10)
        self.assertEqual(left[2], "e3")

    # -- the dashboard, /plot and /health ----------------------------------------

    @defer.inlineCallbacks
    def write_two_sources(self, store: Any) -> Any:
        """Box a: co2 400..402 one minute apart; box b: co2 500 and text; one row without a time."""
        yield store.write(WriteRequest(
            ["box", "time", "co2"],
            [("a", at(0), 400), ("a", at(60), 401), ("a", at(120), 402), ("b", at(30), 500), ("b", at(90), "n/a")],
            {"box": str, "time": str, "co2": int},
            fixed(),
        ))

    @defer.inlineCallbacks
    def test_plot_series_min_and_max_per_bucket_and_source(self) -> Any:
        """Per source and bucket of measurement time: min and max of the numeric values, busiest first."""
        store = self.store_with()
        yield self.write_two_sources(store)
        yield store.catch_up()
        data = yield store.plot_series(["co2"], [T0, T0 + 60, T0 + 180], [], 6, True)
        self.assertEqual(data.series, ["a", "b"])
        self.assertEqual(data.column_buckets("a", 0), [(0, 400, 400), (1, 401, 402)])
        self.assertEqual(data.column_buckets("b", 0), [(0, 500, 500)])
        self.assertEqual(data.left_out, 0)
        only_b = yield store.plot_series(["co2"], [T0, T0 + 180], [("box", "b")], 6, True)
        self.assertEqual(only_b.series, ["b"])
        busiest = yield store.plot_series(["co2"], [T0, T0 + 180], [], 1, True)
        self.assertEqual((busiest.series, busiest.left_out), (["a"], 1))

    @defer.inlineCallbacks
    def test_time_extent_and_latest_by_source(self) -> Any:
        """The measurement-time range of the rows, and each source's newest numeric values."""
        store = self.store_with()
        self.assertIsNone((yield store.time_extent([])))
        yield self.write_two_sources(store)
        self.assertEqual((yield store.time_extent([])), (T0, T0 + 120))
        self.assertEqual((yield store.time_extent([("box", "b")])), (T0 + 30, T0 + 90))
        latest = yield store.latest_by_source(["co2"], [], 6)
        self.assertEqual(latest, [("a", T0 + 120, {"co2": 402}), ("b", T0 + 90, {"co2": 500})])
        self.assertEqual((yield store.unusable_times(T0 - 3600, T0 + 3600, [])), 0)

    @defer.inlineCallbacks
    def test_unusable_times_are_counted(self) -> Any:
        """A row whose time column holds no readable time sits at its upload time and is counted."""
        store = self.store_with()
        yield store.write(WriteRequest(["time", "co2"], [("garbage", 1), (at(5), 2)], {"time": str, "co2": int}, fixed()))
        self.assertEqual((yield store.unusable_times(T0 - 10, T0 + 10, [])), 1)
        self.assertEqual((yield store.time_extent([])), (T0, T0 + 5))

    @defer.inlineCallbacks
    def test_source_activity_reads_only_new_rows(self) -> Any:
        """Per (transport, box): last upload time, rows and uploads; then only the rows after the rowid given back."""
        store = self.store_with()
        later = WHEN + datetime.timedelta(minutes=1)
        yield store.write(WriteRequest(["box"], [("a",), ("a",)], {"box": str}, fixed("http")))
        yield store.write(WriteRequest(["box"], [("a",)], {}, fixed("http", later)))
        yield store.write(WriteRequest(["box"], [("b",)], {}, fixed("udp:h")))
        found, last = yield store.source_activity("box", 0, None)
        self.assertEqual(
            sorted(found),
            [("http", "a", later.isoformat(" "), 3, 2), ("udp:h", "b", WHEN.isoformat(" "), 1, 1)],
        )
        yield store.write(WriteRequest(["box"], [("b",)], {}, fixed("udp:h", later)))
        more, newer = yield store.source_activity("box", last, None)
        self.assertEqual(more, [("udp:h", "b", later.isoformat(" "), 1, 1)])
        self.assertGreater(newer, last)

    def test_a_new_store_is_healthy(self) -> None:
        """disk_report of a working store has no reasons and says writable."""
        report, reasons = self.store_with().disk_report(T0)
        self.assertEqual((report["writable"], reasons), (True, []))
