"""
The dashboard, /plot, /health, /metrics and the download extras (issue 5).

Unit tests of the time ranges, the downsampling (on a real SQLite store) and
the SVG drawing; end-to-end tests fetch every page from a real port.
"""

from __future__ import annotations

import bisect
import datetime
import json
import random
import re
import sqlite3
import xml.etree.ElementTree as ET

import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, reactor
from twisted.trial import unittest

from co2logd import rollup
from co2logd.plot import Panel, bucket_edges, path_points, render_svg
from co2logd.store import upload_time_index
from co2logd.timerange import TimeRange, TimeRangeError, parse_time, time_text
from co2logd.transports.serial import SerialService
from co2logd.transports.testing import FakeSerialDevices
from co2logd.web.site import make_site
from tests.helpers import SiteMixin, StoreMixin, make_settings, salted

SVG = "{http://www.w3.org/2000/svg}"
T0 = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


def stored_time(seconds: float) -> str:
    """An upload time as the ingest service stores it."""
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).isoformat(" ")


def insert_rows(path: str, rows, columns=("time_upload_utc", "transport", "co2", "temperature", "box")) -> None:
    """Put rows straight into the data table, adding missing columns (as a long-running daemon would have)."""
    connection = sqlite3.connect(path)
    try:
        have = {r[1] for r in connection.execute("PRAGMA table_info(data)")}
        for name, declared in (("co2", "INTEGER"), ("temperature", "REAL"), ("box", "TEXT")):
            if name in columns and name not in have:
                connection.execute('ALTER TABLE data ADD COLUMN "{}" {}'.format(name, declared))
        connection.executemany(
            "INSERT INTO data ({}) VALUES ({})".format(", ".join('"{}"'.format(c) for c in columns), ", ".join("?" * len(columns))),
            rows,
        )
        connection.commit()
    finally:
        connection.close()


class TimeRangeTests(unittest.TestCase):
    """What ``since``/``until`` accept, and bounds that compare like stored times."""

    def test_relative_absolute_and_unix(self):
        """Durations count back from now; ISO dates are UTC; plain numbers are UNIX seconds."""
        self.assertEqual(parse_time("24h", T0), T0 - 86400)
        self.assertEqual(parse_time("90m", T0), T0 - 5400)
        self.assertEqual(parse_time("1y", T0), T0 - 365 * 86400)
        self.assertEqual(parse_time("2023-11-14", T0), 1699920000)
        self.assertEqual(parse_time("2023-11-14T22:13:20Z", 0), T0)
        self.assertEqual(parse_time("2023-11-15T00:13:20+02:00", 0), T0)
        self.assertEqual(parse_time("1700000000", 0), T0)
        self.assertRaises(TimeRangeError, parse_time, "yesterday", T0)

    def test_range_defaults_and_empty(self):
        """No arguments: the last day; 'since' counts back from 'until'; an empty range is refused."""
        r = TimeRange.from_args(None, None, T0)
        self.assertEqual((r.since, r.until), (T0 - 86400, T0))
        r = TimeRange.from_args("1h", "2023-11-14", T0)
        self.assertEqual((r.since, r.until), (1699920000 - 3600, 1699920000))
        self.assertRaises(TimeRangeError, TimeRange.from_args, "2024-01-02", "2024-01-01", T0)

    def test_bounds_sort_like_stored_times(self):
        """A bound sorts before every stored time at or after it and after every one before it."""
        times = [T0, T0 + 0.5, T0 + 1, T0 + 1.000001, T0 + 59.999999, T0 + 60]
        for bound in times:
            for t in times:
                self.assertEqual(stored_time(t) >= time_text(bound), t >= bound, (t, bound))


class DownsamplingTests(StoreMixin, unittest.TestCase):
    """``Store.plot_buckets`` on a real SQLite file: exact min and max per bucket."""

    def expected(self, rows, edges, column_index, where=lambda row: True):
        """Per bucket index: (min, max) of the numeric values, computed in Python."""
        out = {}
        for row in rows:
            value = row[column_index]
            if not where(row) or not isinstance(value, (int, float)):
                continue
            t = row[0]
            for i in range(len(edges) - 1):
                if edges[i] <= t < edges[i + 1]:
                    low, high = out.get(i, (value, value))
                    out[i] = (min(low, value), max(high, value))
                    break
        return out

    @defer.inlineCallbacks
    def test_every_min_and_max_survives(self):
        """
        5000 rows at random times (inserted out of time order, with text and
        nulls among the numbers) into 97 buckets: every bucket's min and max
        of every column is exactly what the rows hold.
        """
        self.make_store()
        rng = random.Random(5)
        rows = []
        for _ in range(5000):
            t = T0 + rng.uniform(-100, 10000)
            co2 = rng.choice([rng.randint(300, 5000), rng.randint(300, 5000), None, "n/a"])
            rows.append((t, rng.choice(["http", "udp:10.0.0.2"]), co2, rng.gauss(20, 3), rng.choice(["a", "b"])))
        insert_rows(self.db_path, [(stored_time(r[0]),) + r[1:] for r in rows])
        self.store.columns.update(co2="INTEGER", temperature="REAL", box="TEXT")
        edges = bucket_edges(T0, T0 + 9000, 97)
        result = yield self.store.plot_buckets(["co2", "temperature"], [time_text(e) for e in edges])
        got_co2 = {i: pairs[0] for i, pairs in result if pairs[0][0] is not None}
        got_temperature = {i: pairs[1] for i, pairs in result}
        self.assertEqual(got_co2, self.expected(rows, edges, 2))
        self.assertEqual(got_temperature, self.expected(rows, edges, 3))
        self.assertEqual(len(got_temperature), 97)

    @defer.inlineCallbacks
    def test_filters(self):
        """Only rows matching the filters count."""
        self.make_store()
        rows = [(T0 + i, "udp:10.0.0.{}".format(i % 2), i, 0.0, "a" if i % 3 else "b") for i in range(600)]
        insert_rows(self.db_path, [(stored_time(r[0]),) + r[1:] for r in rows])
        self.store.columns.update(co2="INTEGER", temperature="REAL", box="TEXT")
        edges = bucket_edges(T0, T0 + 600, 6)
        result = yield self.store.plot_buckets(
            ["co2"], [time_text(e) for e in edges], [("box", "b"), ("transport", "udp:10.0.0.1")]
        )
        self.assertEqual(
            {i: pairs[0] for i, pairs in result},
            self.expected(rows, edges, 2, lambda r: r[4] == "b" and r[1] == "udp:10.0.0.1"),
        )

    def test_upload_time_index(self):
        """Schema version 2 indexes the upload-time column, under the configured names."""
        settings = make_settings(DATA_TABLE_NAME="readings", UPLOAD_TIME_COL="received")
        self.make_store(settings)
        connection = sqlite3.connect(self.db_path)
        indexes = connection.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'").fetchall()
        connection.close()
        self.assertIn(upload_time_index(settings), [name for name, _, _ in indexes])
        self.assertEqual(upload_time_index(settings), "readings_received_idx")


HOUR = 3600


def text_expected(rows, bounds, column, where=lambda row: True):
    """
    Per bucket index: (min, max) of ``column``'s numeric values, computed in
    Python from ``rows`` (dicts with the stored upload time as text), bucketed
    by text comparison as SQLite compares the stored times.
    """
    out = {}
    for row in rows:
        value, when = row.get(column), row["time_upload_utc"]
        if not where(row) or not isinstance(when, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        i = bisect.bisect_right(bounds, when) - 1
        if 0 <= i < len(bounds) - 1:
            low, high = out.get(i, (value, value))
            out[i] = (min(low, value), max(high, value))
    return out


class RollupTests(StoreMixin, unittest.TestCase):
    """
    Plots of long ranges read the minute and hour rollups for whole periods
    and the rows only at the ragged ends, and stay exact: the same answer as
    reading every row, and as Python computes from the rows.
    """

    def setUp(self):
        self.make_store()
        self.store.rollup_chunk_rows = 997  # many interactions, chunk edges inside minutes
        self.store.rollup_cost = 0  # always roll up first (test_cheaper_to_read_first is about the choice)
        self.rows = []

    def add(self, rows, declared=(("co2", "INTEGER"), ("temperature", "REAL"), ("box", "TEXT"))):
        """Insert rows (dicts) with plain sqlite3, in the given order, adding missing columns."""
        connection = sqlite3.connect(self.db_path)
        have = {r[1] for r in connection.execute("PRAGMA table_info(data)")}
        for name, kind in declared:
            if name not in have:
                connection.execute('ALTER TABLE data ADD COLUMN "{}" {}'.format(name, kind))
            self.store.columns[name] = kind
        for row in rows:
            names = sorted(row)
            connection.execute(
                "INSERT INTO data ({}) VALUES ({})".format(", ".join('"{}"'.format(n) for n in names), ", ".join("?" * len(names))),
                [row[n] for n in names],
            )
        connection.commit()
        connection.close()
        self.rows += rows

    def random_rows(self, rng, count, since, until):
        """Rows at random times (not in time order), text and nulls among the numbers, several sources."""
        rows = []
        for _ in range(count):
            rows.append({
                "time_upload_utc": stored_time(rng.uniform(since, until)),
                "transport": rng.choice(["http", "udp:10.0.0.2", "serial:/dev/ttyUSB0"]),
                "box": rng.choice(["a", "b", "7", None]),
                "co2": rng.choice([rng.randint(300, 5000), rng.randint(300, 5000), None, "n/a", b"\x00"]),
                "temperature": rng.choice([rng.gauss(20, 3), rng.randint(-5, 40)]),
            })
        return rows

    @defer.inlineCallbacks
    def check(self, columns, bounds, filters=(), where=lambda row: True):
        """The rollup answer equals the all-rows answer and Python's; fire with it."""
        result = yield self.store.plot_buckets(columns, bounds, filters)
        exact = yield self.store.plot_buckets(columns, bounds, filters, rollups=False)
        self.assertEqual(result, exact)
        for k, column in enumerate(columns):
            got = {i: pairs[k] for i, pairs in result if pairs[k][0] is not None}
            self.assertEqual(got, text_expected(self.rows, bounds, column, where), column)
        return result

    def rollup_rows(self, span=None):
        """The rollup table, read with plain sqlite3: [(col, span, start, source, lo, hi, n)]."""
        connection = sqlite3.connect(self.db_path)
        try:
            sql = "SELECT col, span, start, source, lo, hi, n FROM co2logd_rollup"
            if span:
                return connection.execute(sql + " WHERE span = ?", (span,)).fetchall()
            return connection.execute(sql).fetchall()
        finally:
            connection.close()

    @defer.inlineCallbacks
    def test_long_ranges_are_exact(self):
        """
        6000 rows over three days, out of time order, with text, blobs and
        nulls among the numbers, from several sources: plots of 40, 150 and
        500 buckets (whole hours, whole minutes and ragged ends) are exact,
        filtered or not.
        """
        rng = random.Random(55)
        self.add(self.random_rows(rng, 6000, T0 - 500, T0 + 3 * 86400))
        for buckets in (40, 150, 500):
            bounds = [time_text(e) for e in bucket_edges(T0 - 1000.25, T0 + 3 * 86400 + 7, buckets)]
            yield self.check(["co2", "temperature"], bounds)
        self.assertTrue(self.rollup_rows(rollup.HOUR))
        bounds = [time_text(e) for e in bucket_edges(T0, T0 + 2 * 86400, 90)]
        yield self.check(["co2", "temperature"], bounds, [("box", "b")], lambda r: r["box"] == "b")
        yield self.check(["temperature"], bounds, [("transport", "http"), ("box", "a")],
                         lambda r: r["box"] == "a" and r["transport"] == "http")

    @defer.inlineCallbacks
    def test_counts_match_the_rows(self):
        """Each hour's count of numeric values per source is what the rows hold; minutes add up to hours."""
        rng = random.Random(3)
        self.add(self.random_rows(rng, 3000, T0, T0 + 86400))
        yield self.check(["co2"], [time_text(e) for e in bucket_edges(T0 - 3600, T0 + 90000, 30)])
        rows = self.rollup_rows()
        minutes = sum(n for _, span, *_, n in rows if span == rollup.MINUTE)
        hours = sum(n for _, span, *_, n in rows if span == rollup.HOUR)
        numeric = sum(1 for r in self.rows if isinstance(r["co2"], int))
        self.assertEqual((minutes, hours), (numeric, numeric))

    @defer.inlineCallbacks
    def test_whole_periods_come_from_the_rollups(self):
        """A long plot reads hours from the rollup table, not from the rows (changed behind its back, it shows)."""
        self.add([{"time_upload_utc": stored_time(T0 + 60 * k), "co2": 400 + k % 7} for k in range(24 * 60)])
        bounds = [time_text(e) for e in bucket_edges(T0 - T0 % HOUR, T0 - T0 % HOUR + 26 * HOUR, 13)]
        before = yield self.store.plot_buckets(["co2"], bounds)
        self.assertEqual(max(high for _, ((_, high),) in before), 406)
        connection = sqlite3.connect(self.db_path)
        connection.execute("UPDATE co2logd_rollup SET hi = 9999 WHERE span = 3600")
        connection.commit()
        connection.close()
        after = yield self.store.plot_buckets(["co2"], bounds)
        self.assertEqual(max(high for _, ((_, high),) in after), 9999)

    @defer.inlineCallbacks
    def test_rows_arriving_late_with_older_times(self):
        """
        After a plot filled the rollups, rows with older upload times (a clock
        stepped back, a slow writer, another program) are folded into their
        periods by the next plot: new extremes show.
        """
        rng = random.Random(8)
        self.add(self.random_rows(rng, 2000, T0, T0 + 86400))
        bounds = [time_text(e) for e in bucket_edges(T0, T0 + 86400, 48)]
        yield self.check(["co2", "temperature"], bounds)
        late = [
            {"time_upload_utc": stored_time(T0 + 3600 * 5 + 17), "transport": "http", "box": "a", "co2": 99999, "temperature": -40.5},
            {"time_upload_utc": stored_time(T0 + 3600 * 9 + 1), "transport": "udp:10.0.0.9", "box": "z", "co2": 1, "temperature": 80},
        ]
        self.add(late)
        result = yield self.check(["co2", "temperature"], bounds)
        values = [v for _, pairs in result for pair in pairs for v in pair]
        self.assertIn(99999, values)
        self.assertIn(-40.5, values)
        yield self.check(["co2"], bounds, [("box", "z")], lambda r: r["box"] == "z")

    @defer.inlineCallbacks
    def test_columns_added_later(self):
        """A column added (and first plotted) after others were rolled up is rolled up from its first row."""
        rng = random.Random(9)
        self.add(self.random_rows(rng, 1500, T0, T0 + 86400))
        bounds = [time_text(e) for e in bucket_edges(T0, T0 + 2 * 86400, 60)]
        yield self.check(["co2"], bounds)
        humid = [{"time_upload_utc": stored_time(rng.uniform(T0 + 3600, T0 + 2 * 86400)), "transport": "http",
                  "humidity": rng.choice([rng.uniform(20, 90), "wet", None])} for _ in range(1500)]
        self.add(humid, declared=(("humidity", "REAL"),))
        yield self.check(["co2", "humidity", "temperature"], bounds)
        yield self.check(["humidity"], bounds)

    @defer.inlineCallbacks
    def test_odd_upload_times_are_read_as_they_are(self):
        """
        Upload times not of the usual shape (a 'T', an impossible minute,
        no seconds, garbage, a number, NULL) are in no rollup but count
        exactly where their text sorts, as when every row is read.
        """
        rng = random.Random(10)
        self.add(self.random_rows(rng, 800, T0, T0 + 86400))
        day = stored_time(T0 + 7200)[:10]
        odd = ["{}T23:10:00".format(day), "{} 12:61:30".format(day), "{} 13:30".format(day), "2023-99-99 99:99:99", "soon", 1700003600, None]
        self.add([{"time_upload_utc": t, "transport": "http", "box": "a", "co2": 10000 + k, "temperature": 100.0 + k}
                  for k, t in enumerate(odd)])
        bounds = [time_text(e) for e in bucket_edges(T0 - 86400, T0 + 2 * 86400, 36)]
        result = yield self.check(["co2", "temperature"], bounds)
        values = {v for _, pairs in result for pair in pairs for v in pair}
        self.assertTrue({10000, 10002}.issubset(values))  # 10001 and 10002 share a bucket
        midnight = parse_time(day, 0)
        halves = [time_text(midnight + 1800 * k) for k in range(49)]  # "13:30" sorts before the edge "13:30:00"
        yield self.check(["co2"], halves)
        yield self.check(["co2"], bounds, [("box", "a")], lambda r: r["box"] == "a")

    @defer.inlineCallbacks
    def test_filter_values_convert_as_the_column_does(self):
        """box=7 (a number) selects the rows whose TEXT box column holds '7', through the rollups as through the rows."""
        rng = random.Random(11)
        self.add(self.random_rows(rng, 1500, T0, T0 + 86400))
        bounds = [time_text(e) for e in bucket_edges(T0, T0 + 86400, 24)]
        result = yield self.check(["co2"], bounds, [("box", 7)], lambda r: r["box"] == "7")
        self.assertTrue(result)

    @defer.inlineCallbacks
    def test_rebuilt_after_rows_are_deleted(self):
        """Rows deleted from the end (rowids below the rolled-up mark) or a reset state make the rollups rebuild."""
        rng = random.Random(12)
        self.add(self.random_rows(rng, 1000, T0, T0 + 86400))
        bounds = [time_text(e) for e in bucket_edges(T0, T0 + 86400, 24)]
        yield self.check(["co2", "temperature"], bounds)
        connection = sqlite3.connect(self.db_path)
        connection.execute("DELETE FROM data WHERE rowid > 600")
        connection.commit()
        connection.close()
        del self.rows[600:]
        yield self.check(["co2", "temperature"], bounds)
        connection = sqlite3.connect(self.db_path)
        connection.execute("UPDATE data SET co2 = 77777 WHERE rowid = 5")
        connection.execute("DELETE FROM co2logd_rollup_state")
        connection.commit()
        connection.close()
        self.rows[4]["co2"] = 77777
        yield self.check(["co2", "temperature"], bounds)
        numeric = sum(1 for r in self.rows if isinstance(r["co2"], int))
        self.assertEqual(sum(n for c, span, *_, n in self.rollup_rows(rollup.HOUR) if c == "co2"), numeric)

    @defer.inlineCallbacks
    def test_first_fill_lets_uploads_through(self):
        """
        A first fill of many rows runs in chunks: an upload written while it
        runs is committed before the plot is answered, and the plot still
        sees every row committed before it answered (the upload's included).
        """
        self.store.rollup_chunk_rows = 1000
        self.add([{"time_upload_utc": stored_time(T0 + k), "transport": "http", "co2": 500} for k in range(20000)])
        interactions = []
        real = self.store.pool.runWithConnection

        def counting(*args, **kwargs):
            interactions.append(args[0])
            return real(*args, **kwargs)

        self.patch(self.store.pool, "runWithConnection", counting)
        order = []
        bounds = [time_text(e) for e in bucket_edges(T0, T0 + 86400, 24)]
        plot = self.store.plot_buckets(["co2"], bounds)
        plot.addCallback(lambda result: (order.append("plot"), result)[1])
        write = self.store.write(["time_upload_utc", "transport", "co2"], [(stored_time(T0 + 30), "http", 9)], {})
        write.addCallback(lambda _: order.append("write"))
        result = yield plot
        yield write
        self.assertEqual(order, ["write", "plot"])
        self.assertGreaterEqual(len(interactions), 20)
        self.assertEqual(result[0], (0, [(9, 500)]))


    @defer.inlineCallbacks
    def test_cheaper_to_read_first(self):
        """
        When catching up would cost more than reading the range (the first
        plot of a day on a big table), the rows are read, the rollups fill
        in the background, and the next plot uses them.
        """
        self.store.rollup_cost = 3
        self.add([{"time_upload_utc": stored_time(T0 + k), "transport": "http", "co2": k % 1000} for k in range(30000)])
        bounds = [time_text(e) for e in bucket_edges(T0 + 28000, T0 + 30000, 10)]  # 2000 rows: cheaper to read
        yield self.check(["co2"], bounds)
        yield self.store.rollups_idle()
        connection = sqlite3.connect(self.db_path)
        (done,) = connection.execute("SELECT done_rowid FROM co2logd_rollup_state WHERE col = 'co2'").fetchone()
        connection.execute("UPDATE co2logd_rollup SET hi = 9999 WHERE span = 60")
        connection.commit()
        connection.close()
        self.assertEqual(done, 30000)
        result = yield self.store.plot_buckets(["co2"], bounds)
        self.assertEqual(max(high for _, ((_, high),) in result), 9999)  # now from the (tampered) rollups


class SourceActivityTests(StoreMixin, unittest.TestCase):
    """``Store.source_activity``: per source, the last upload time and row count, read in chunks."""

    @defer.inlineCallbacks
    def test_chunks_add_up(self):
        """Read 7 rows per interaction, the sources are what the rows say; asking again reads only new rows."""
        self.make_store()
        self.store.activity_chunk_rows = 7
        rng = random.Random(4)
        rows = [(stored_time(T0 + rng.uniform(0, 1000)), rng.choice(["http", "udp:10.0.0.1"]), 1, 1.0, rng.choice(["a", "b", None]))
                for _ in range(100)]
        insert_rows(self.db_path, rows)
        found, last = yield self.store.source_activity("box")
        expected = {}
        for when, transport, _, _, box in rows:
            old_when, count = expected.get((transport, box), ("", 0))
            expected[(transport, box)] = (max(old_when, when), count + 1)
        self.assertEqual({(t, b): (w, n) for t, b, w, n in found}, expected)
        self.assertEqual(last, 100)
        insert_rows(self.db_path, [(stored_time(T0 + 5000), "serial:/dev/ttyUSB0", 1, 1.0, "c")])
        found, last = yield self.store.source_activity("box", last)
        self.assertEqual((found, last), ([("serial:/dev/ttyUSB0", "c", stored_time(T0 + 5000), 1)], 101))
        found, last = yield self.store.source_activity("box", last)
        self.assertEqual((found, last), ([], 101))


class RowCountTests(StoreMixin, unittest.TestCase):
    """``Store.row_count``: the dashboard's row count, counting only new rows after the first time."""

    @defer.inlineCallbacks
    def test_counts_new_rows_and_recounts_after_deletions(self):
        """It follows appended rows, and counts afresh when the last rows were deleted."""
        self.make_store()
        self.assertEqual((yield self.store.row_count()), 0)
        insert_rows(self.db_path, [(stored_time(T0 + k), "http", k, 1.0, "a") for k in range(50)])
        self.assertEqual((yield self.store.row_count()), 50)
        insert_rows(self.db_path, [(stored_time(T0 + k), "http", k, 1.0, "a") for k in range(7)])
        self.assertEqual((yield self.store.row_count()), 57)
        connection = sqlite3.connect(self.db_path)
        connection.execute("DELETE FROM data WHERE rowid > 40")
        connection.commit()
        connection.close()
        self.assertEqual((yield self.store.row_count()), 40)
        self.assertEqual((yield self.store.count()), 40)


class RollupArithmeticTests(unittest.TestCase):
    """How a bucket is cut into whole hours, whole minutes and ragged ends."""

    def test_cut(self):
        """Hours in the middle, minutes beside them, rows only for the ends shorter than a minute."""
        us = 1_000_000
        piece = rollup.cut(int((7200 - 90.5) * us), int((4 * 3600 + 61) * us))
        self.assertEqual(piece.exact, [(int((7200 - 90.5) * us), (7200 - 60) * us), ((4 * 3600 + 60) * us, (4 * 3600 + 61) * us)])
        self.assertEqual(piece.periods, [(3600, 7200, 4 * 3600), (60, 7200 - 60, 7200), (60, 4 * 3600, 4 * 3600 + 60)])
        piece = rollup.cut(30 * us, 200 * us)  # no whole hour
        self.assertEqual((piece.exact, piece.periods), ([(30 * us, 60 * us), (180 * us, 200 * us)], [(60, 60, 180)]))
        piece = rollup.cut(30 * us, 80 * us)  # no whole minute
        self.assertEqual((piece.exact, piece.periods), ([(30 * us, 80 * us)], []))
        piece = rollup.cut(3600 * us, 7200 * us)  # exactly one hour
        self.assertEqual((piece.exact, piece.periods), ([], [(3600, 3600, 7200)]))

    def test_plan(self):
        """Short buckets (no whole minute) and unreadable bounds need no rollups; bounds stay as given."""
        self.assertIsNone(rollup.plan([time_text(T0 + k * 30) for k in range(10)]))
        self.assertIsNone(rollup.plan(["soon", "later"]))
        bounds = [time_text(T0 + 0.25), time_text(T0 + 3 * 3600 + 0.5)]
        (piece,) = rollup.plan(bounds)
        self.assertEqual(piece.exact[0][0], bounds[0])
        self.assertEqual(piece.exact[-1][1], bounds[1])
        self.assertEqual(rollup.minute_start("2023-11-14 22:13"), 1699999980)
        for bad in ("2023-11-14T22:13", "2023-11-14 22:61", "2023-02-30 10:00", None):
            self.assertIsNone(rollup.minute_start(bad))


class DrawingTests(unittest.TestCase):
    """The SVG: the min and max of every bucket are on the line; bands; empty panels."""

    def test_path_visits_every_min_and_max(self):
        """Each bucket contributes a point at its min and one at its max."""
        rng = random.Random(1)
        buckets = [(i, v, v + rng.randint(0, 50)) for i, v in ((i, rng.randint(0, 1000)) for i in range(0, 300, 1))]
        points = path_points(buckets, lambda i: float(i), lambda v: float(v))
        for index, low, high in buckets:
            ys = {y for _, x, y in points if x == index}
            self.assertEqual(ys, {low, high})

    def test_gap_breaks_the_line(self):
        """A silence much longer than the usual spacing starts a new line (M), short ones do not."""
        buckets = [(i, 1.0, 1.0) for i in list(range(0, 50)) + list(range(200, 250))]
        commands = [c for c, _, _ in path_points(buckets, float, float)]
        self.assertEqual(commands.count("M"), 2)
        self.assertEqual(commands[50], "M")

    def test_svg_document(self):
        """One panel per column, a drawn path, CO2 bands only behind CO2, 'no data' for an empty panel."""
        co2 = Panel("co2", [(i, 800 + i, 900 + 2 * i) for i in range(700)], bands=[1000, 1400])
        temperature = Panel("temperature", [(i, 20.0, 21.5) for i in range(0, 700, 2)])
        empty = Panel("humidity", [])
        svg = render_svg([co2, temperature, empty], T0, T0 + 86400, width=800, panel_height=200)
        root = ET.fromstring(svg)
        self.assertEqual(root.get("viewBox"), "0 0 800 600")
        panels = root.findall(SVG + "g")
        self.assertEqual([p.get("data-column") for p in panels], ["co2", "temperature", "humidity"])
        paths = {p.get("data-column"): p for p in root.iter(SVG + "path")}
        self.assertEqual(int(paths["co2"].get("data-points")), 1400)
        self.assertEqual(len(re.findall(r"[ML]", paths["co2"].get("d"))), 1400)
        self.assertEqual(paths["humidity"].get("d"), "")
        self.assertEqual(len([r for r in panels[0].iter(SVG + "rect") if r.get("class") == "band"]), 3)
        self.assertEqual([r for r in panels[1].iter(SVG + "rect") if r.get("class") == "band"], [])
        self.assertIn("no data in this range", [t.text for t in panels[2].iter(SVG + "text")])
        labels = [t.text for t in panels[0].iter(SVG + "text") if t.get("class") == "xlabel"]
        self.assertIn("00:00", labels)


class FakeUploader:
    """Stands in for the OpenSenseMap uploader: the name and counters /metrics reads."""

    name = "osem-uploader"

    def __init__(self):
        self.counters = {"delivered": 7, "requests": 3, "failures": 1, "dead_letters": 2}


class DaemonSiteMixin(SiteMixin):
    """SiteMixin's real site, given the daemon's services for /health and /metrics."""

    def start(self, services=(), **settings):
        self.make_ingest(make_settings(**settings), clock=reactor)
        self.site = make_site(self.settings, self.ingest, self.store, reactor, services=services)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "http://127.0.0.1:{}".format(self.port.getHost().port)


class PagesTests(DaemonSiteMixin, unittest.TestCase):
    """Every page, fetched from a real port over a real store."""

    @defer.inlineCallbacks
    def post_sample(self, box="kitchen", co2=(612, 655)):
        status, body = yield self.post(
            json.dumps({"co2": list(co2), "temperature": [21.5, 21.75], "box": [box, box]}).encode(), "application/json"
        )
        self.assertEqual(status, 200, body)

    @defer.inlineCallbacks
    def test_dashboard(self):
        """Name, count, plot with points, latest values, sources with a silent one marked, links."""
        self.start(NAME="<garden>", DASHBOARD_SILENT_SECONDS=3600)
        yield self.post_sample()
        old = reactor.seconds() - 2 * 86400
        insert_rows(self.db_path, [(stored_time(old), "udp:10.0.0.9", 500, 19.0, "shed")])
        status, headers, body = yield self.get("/")
        self.assertEqual(status, 200)
        page = body.decode("utf-8")
        self.assertIn("&lt;garden&gt;", page)
        self.assertIn("<strong>3</strong>", page)
        for link in ('href="/download"', 'href="/uploadhelp"', 'href="/health"', 'href="/metrics"', 'href="/static/co2logd.css"'):
            self.assertIn(link, page)
        svg = ET.fromstring(re.search(r"<svg.*?</svg>", page, re.S).group(0))
        paths = {p.get("data-column"): int(p.get("data-points")) for p in svg.iter(SVG + "path")}
        self.assertEqual(set(paths), {"co2", "temperature"})
        self.assertGreater(paths["co2"], 0)
        self.assertRegex(page, r"<th>co2</th><td class=\"num\">655</td>")
        self.assertRegex(page, r'<tr class="heard"><td><a [^>]*>http</a></td><td>kitchen</td>')
        self.assertRegex(page, r'<tr class="silent"><td><a [^>]*>udp:10.0.0.9</a></td><td>shed</td>')
        self.assertNotRegex(page, r"(src|href)=\"(https?:)?//")
        csv_link = re.search(r'href="(/download\?[^"]*)">CSV for this range', page).group(1).replace("&amp;", "&")
        status, _, csv = yield self.get(csv_link)
        self.assertEqual(status, 200)
        self.assertEqual(csv.decode().splitlines()[0], "time_upload_utc,transport,co2,temperature")
        self.assertEqual(len(csv.decode().splitlines()), 3)  # the old row is outside the last day
        status, _, body = yield self.get("/index?since=7d&box=shed")
        self.assertEqual(status, 200)
        self.assertIn(b"box = shed", body)
        status, _, _ = yield self.get("/?since=never")
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_plot(self):
        """/plot serves SVG with the asked columns and refuses unknown columns and bad times."""
        self.start()
        yield self.post_sample(co2=(612, 1655))
        status, headers, body = yield self.get("/plot?cols=co2&since=1h&width=400&height=150")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["image/svg+xml; charset=utf-8"])
        svg = ET.fromstring(body)
        self.assertEqual(svg.get("viewBox"), "0 0 400 150")
        (path,) = list(svg.iter(SVG + "path"))
        self.assertEqual(path.get("data-points"), "2")  # one bucket: its min and its max
        status, _, body = yield self.get("/plot?cols=co2&box=nowhere")
        self.assertEqual(ET.fromstring(body).find(".//" + SVG + "path").get("data-points"), "0")
        for bad in ("cols=nope", "since=soon", "width=5", "since=2024-01-02&until=2024-01-01"):
            status, _, body = yield self.get("/plot?" + bad)
            self.assertEqual(status, 400, bad)
            self.assertIn("error", json.loads(body))

    @defer.inlineCallbacks
    def test_static_and_upload_help(self):
        """The style sheet comes from package data; directories are not listed; upload help still works."""
        self.start()
        status, headers, body = yield self.get("/static/co2logd.css")
        self.assertEqual((status, headers.getRawHeaders("content-type")), (200, ["text/css"]))
        self.assertIn(b"font-family", body)
        status, _, _ = yield self.get("/static/")
        self.assertEqual(status, 404)
        status, _, _ = yield self.get("/uploadhelp")
        self.assertEqual(status, 200)


class HealthTests(DaemonSiteMixin, unittest.TestCase):
    """GET /health: 200 when all is well, 503 with reasons when not."""

    @defer.inlineCallbacks
    def health(self):
        status, headers, body = yield self.get("/health")
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        return status, json.loads(body)

    @defer.inlineCallbacks
    def test_serial_port_gone(self):
        """A serial device that goes away turns /health 503, naming it; plugged back in, 200 again."""
        devices = FakeSerialDevices()
        devices.plug("/dev/ttyFAKE0")
        serial = SerialService("/dev/ttyFAKE0", 9600, None, reactor, make_settings(), port_factory=devices.open)
        serial.startService()
        self.addCleanup(serial.stopService)
        self.start(services=[serial])
        yield self.post(b'{"co2": [500]}', "application/json")
        status, report = yield self.health()
        self.assertEqual((status, report["healthy"], report["reasons"]), (200, True, []))
        self.assertTrue(report["database"]["writable"])
        self.assertEqual(report["components"][0]["kind"], "serial")
        self.assertEqual([s["transport"] for s in report["sources"]], ["http"])
        devices.unplug("/dev/ttyFAKE0")
        status, report = yield self.health()
        self.assertEqual(status, 503)
        self.assertEqual(report["reasons"], ["serial /dev/ttyFAKE0 is not connected"])

    @defer.inlineCallbacks
    def test_outbox_stuck(self):
        """With forwarding on, an outbox entry older than HEALTH_OUTBOX_MAX_AGE makes /health 503."""
        self.start(OSEM_UPLOAD=True, HEALTH_OUTBOX_MAX_AGE=600)
        yield self.store.write(["co2"], [], {}, outbox=['{"x": 1}'], queued_at=reactor.seconds() - 60)
        status, report = yield self.health()
        self.assertEqual(status, 200)
        self.assertEqual(report["outbox"]["depth"], 1)
        yield self.store.write(["co2"], [], {}, outbox=['{"x": 2}'], queued_at=reactor.seconds() - 3600)
        status, report = yield self.health()
        self.assertEqual(status, 503)
        self.assertEqual(report["outbox"]["depth"], 2)
        self.assertGreaterEqual(report["outbox"]["oldest_age_seconds"], 3600)
        self.assertIn("OpenSenseMap outbox is stuck", report["reasons"][0])

    @defer.inlineCallbacks
    def test_read_only_database(self):
        """An upload the database refuses with a disk error (read-only here) makes /health 503 until an upload is written again."""
        self.start()
        yield self.store.pool.runWithConnection(lambda c: c.execute("PRAGMA query_only = 1"))
        status, _ = yield self.post(b'{"co2": [500]}', "application/json")
        self.assertEqual(status, 503)
        status, report = yield self.health()
        self.assertEqual(status, 503)
        self.assertEqual(report["database"]["writable"], False)
        self.assertIn("readonly", report["reasons"][0])
        yield self.store.pool.runWithConnection(lambda c: c.execute("PRAGMA query_only = 0"))
        status, _ = yield self.post(b'{"co2": [501]}', "application/json")
        self.assertEqual(status, 200)
        status, report = yield self.health()
        self.assertEqual(status, 200, report)

    @defer.inlineCallbacks
    def test_silent_sources_can_count(self):
        """HEALTH_SILENT_SOURCES: a source silent longer than DASHBOARD_SILENT_SECONDS makes /health 503."""
        self.start(HEALTH_SILENT_SOURCES=True, DASHBOARD_SILENT_SECONDS=60)
        self.store.columns.update(co2="INTEGER", temperature="REAL", box="TEXT")
        insert_rows(self.db_path, [(stored_time(reactor.seconds() - 600), "udp:10.0.0.9", 1, 1.0, "shed")])
        status, report = yield self.health()
        self.assertEqual(status, 503)
        self.assertEqual(report["reasons"], ["source udp:10.0.0.9 (box shed) is silent"])


class MetricsTests(DaemonSiteMixin, unittest.TestCase):
    """GET /metrics in the Prometheus text format, read back with prometheus_client's parser."""

    @defer.inlineCallbacks
    def scrape(self):
        status, headers, body = yield self.get("/metrics")
        self.assertEqual(status, 200)
        self.assertTrue(headers.getRawHeaders("content-type")[0].startswith("text/plain"))
        samples = {}
        for family in text_string_to_metric_families(body.decode("utf-8")):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples

    @defer.inlineCallbacks
    def test_counters(self):
        """Uploads, rows, rejects, auth failures, write latency, listeners, uploader and outbox."""
        devices = FakeSerialDevices()
        devices.plug("/dev/ttyFAKE0")
        settings = make_settings(CHECKSUM_SALTS=["s"], UPLOAD_REQUIRES_AUTH=True, OSEM_UPLOAD=True)
        serial = SerialService("/dev/ttyFAKE0", 9600, None, reactor, settings, port_factory=devices.open)
        serial.startService()
        self.addCleanup(serial.stopService)
        devices.unplug("/dev/ttyFAKE0")
        self.start([serial, FakeUploader()], CHECKSUM_SALTS=["s"], UPLOAD_REQUIRES_AUTH=True, OSEM_UPLOAD=True)
        body = b'{"co2": [1, 2, 3]}'
        for _ in range(2):
            status, _ = yield self.post(body, "application/json", {"Content-MD5-Salted": salted(body, "s")})
            self.assertEqual(status, 200)
        status, _ = yield self.post(body, "application/json", {"Content-MD5-Salted": "0" * 32})
        self.assertEqual(status, 403)
        status, _ = yield self.post(b"{", "application/json", {"Content-MD5-Salted": salted(b"{", "s")})
        self.assertEqual(status, 400)
        yield self.store.write(["co2"], [], {}, outbox=["{}"], queued_at=reactor.seconds() - 30)
        m = yield self.scrape()
        self.assertEqual(m[("co2logd_uploads_total", (("transport", "http"),))], 2)
        self.assertEqual(m[("co2logd_rows_total", (("transport", "http"),))], 6)
        self.assertEqual(m[("co2logd_rejects_total", (("reason", "auth-invalid"), ("transport", "http")))], 1)
        self.assertEqual(m[("co2logd_rejects_total", (("reason", "parse"), ("transport", "http")))], 1)
        self.assertEqual(m[("co2logd_auth_failures_total", (("transport", "http"),))], 1)
        self.assertEqual(m[("co2logd_db_write_seconds_count", ())], 3)  # two uploads and the outbox write
        self.assertEqual(m[("co2logd_serial_connected", (("device", "/dev/ttyFAKE0"),))], 0)
        self.assertEqual(m[("co2logd_serial_reconnects_total", (("device", "/dev/ttyFAKE0"),))], 0)
        self.assertEqual(m[("co2logd_osem_events_total", (("event", "dead_letters"),))], 2)
        self.assertEqual(m[("co2logd_osem_events_total", (("event", "requests"),))], 3)
        self.assertEqual(m[("co2logd_outbox_depth", ())], 1)
        self.assertGreaterEqual(m[("co2logd_outbox_oldest_age_seconds", ())], 30)

    @defer.inlineCallbacks
    def test_registries_are_per_site(self):
        """Two sites in one process keep separate counts."""
        self.start()
        yield self.post(b'{"co2": [1]}', "application/json")
        first = self.url
        self.start()
        m = yield self.scrape()
        self.assertNotIn(("co2logd_uploads_total", (("transport", "http"),)), m)
        self.url = first
        m = yield self.scrape()
        self.assertEqual(m[("co2logd_uploads_total", (("transport", "http"),))], 1)


class DownloadExtrasTests(SiteMixin, unittest.TestCase):
    """/download: since/until, box and source filters, paging with after=."""

    @defer.inlineCallbacks
    def setUp(self):
        self.start_site(make_settings(MAX_LIMIT_OF_ROWS=7))
        yield self.post(b'{"co2": [0]}', "application/json")
        now = reactor.seconds()
        self.rows = [(stored_time(now - 3600 * k), "udp:10.0.0.{}".format(k % 2), k, 0.5, "b{}".format(k % 3)) for k in range(1, 31)]
        insert_rows(self.db_path, self.rows)
        self.store.columns.update(temperature="REAL", box="TEXT")  # added behind the store's back

    @defer.inlineCallbacks
    def co2_values(self, query):
        status, headers, body = yield self.get("/download?format=json&cols=co2&" + query)
        self.assertEqual(status, 200, body)
        return [r["co2"] for r in json.loads(body)], headers

    @defer.inlineCallbacks
    def test_time_range_and_filters(self):
        """since/until select by upload time; box and source by equality."""
        values, _ = yield self.co2_values("since=330m")
        self.assertEqual(sorted(values), [0, 1, 2, 3, 4, 5])
        values, _ = yield self.co2_values("since=3h&until=330m")  # 'since' counts back from 'until'
        self.assertEqual(sorted(values), [6, 7, 8])
        values, _ = yield self.co2_values("box=b1&source=udp:10.0.0.0")
        self.assertEqual(sorted(values), [4, 10, 16, 22, 28])
        for bad in ("since=whenever", "after=x", "box=1&source=http&after=-1"):
            status, _, _ = yield self.get("/download?" + bad)
            self.assertEqual(status, 400, bad)

    @defer.inlineCallbacks
    def test_paging_visits_every_row_once(self):
        """Following rel=next from after=0 yields every matching row exactly once, then stops."""
        query = "source=udp:10.0.0.1&after=0"
        seen = []
        for _ in range(10):
            values, headers = yield self.co2_values(query)
            seen += values
            link = headers.getRawHeaders("link")
            if not link:
                break
            query = re.match(r'<[^?]*\?([^>]*)>; rel="next"', link[0]).group(1)
            self.assertNotIn("format=json&format", query)
        self.assertEqual(seen, [k for k in range(1, 31) if k % 2])

    @defer.inlineCallbacks
    def test_html_next_link(self):
        """The HTML table ends with a link to the next page."""
        status, _, body = yield self.get("/download?after=0")
        self.assertIn(b'rel="next"', body)
        response = yield treq.get(self.url + "/download?after=0&format=csv", persistent=False)
        self.assertIn(b"after=", response.headers.getRawHeaders(b"link")[0])
        yield treq.content(response)
