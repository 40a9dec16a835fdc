"""
The dashboard tells the truth (issue 10), and its reads never write (issue 12, finding 8).

Specifications, each through a real port over a real SQLite file: rows sit
at their measurement time, one line per source with a legend, latest values
per source honouring the filters, unusable times counted, sensible default
panels with units, 1 h and "all" ranges, an empty range that says where the
data is; and dashboard and plot views that never touch the writer.
"""

from __future__ import annotations

import json
import random
import re
import sqlite3
import xml.etree.ElementTree as ET
from typing import Dict, List

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from co2logd.ingest import Upload
from co2logd.store import mtime
from co2logd.rollup import SPANS, STEPS
from co2logd.plot import HTML_AREA, OKABE_ITO
from co2logd.store import Store
from co2logd.web.plot import main_columns, unit_for
from tests.helpers import SiteMixin, StoreMixin, make_settings

SVG = "{http://www.w3.org/2000/svg}"
DAY = 86400


def panels(page: str) -> Dict[str, ET.Element]:
    """The dashboard's panels by column: each panel's SVG of lines, parsed."""
    out = {}
    for column, svg in re.findall(r'<figure class="panel" data-column="([^"]+)">.*?(<svg.*?</svg>)', page, re.S):
        out[column] = ET.fromstring(svg)
    return out


def xs(path: ET.Element) -> List[float]:
    """The x coordinates of a path's points."""
    return [float(x) for x in re.findall(r"[ML](-?[\d.]+),", path.get("d"))]


class TruthMixin(SiteMixin):
    """A real site over a real store; helpers to upload and to read the dashboard."""

    def start(self, **settings):
        self.start_site(make_settings(**settings))
        self.now = reactor.seconds()

    @defer.inlineCallbacks
    def upload(self, table):
        status, body = yield self.post(json.dumps(table).encode(), "application/json")
        self.assertEqual(status, 200, body)

    @defer.inlineCallbacks
    def page(self, query=""):
        status, _, body = yield self.get("/" + query)
        self.assertEqual(status, 200, body[:2000])
        return body.decode("utf-8")


class MeasurementTimeTests(TruthMixin, unittest.TestCase):
    """Rows are drawn, selected and rolled up by their measurement time."""

    @defer.inlineCallbacks
    def test_a_day_in_one_upload_fills_the_day(self):
        """
        A day of readings every 2 s sent in one upload (co2logserver's columns
        format with a ``time`` column) spans at least 90% of the 24 h plot's
        width, on the dashboard and on /plot, before and after the rollups
        are filled.
        """
        self.start()
        start = int(self.now) - DAY + 60
        times = list(range(start, int(self.now) - 60, 2))
        yield self.upload({"time": times, "co2": [400 + (t // 600) % 50 for t in times]})
        for caught_up in (False, True):
            if caught_up:
                yield self.store.catch_up()
            page = yield self.page("?since=24h")
            (path,) = panels(page)["co2"].iter(SVG + "path")
            x = xs(path)
            self.assertGreaterEqual((max(x) - min(x)) / HTML_AREA, 0.9, caught_up)
            status, _, body = yield self.get("/plot?cols=co2&since=24h&width=800")
            (path,) = ET.fromstring(body).iter(SVG + "path")
            x = xs(path)
            self.assertGreaterEqual((max(x) - min(x)) / (800 - 58 - 14), 0.9, caught_up)

    @defer.inlineCallbacks
    def test_since_until_select_by_measurement_time(self):
        """Readings measured three days ago, uploaded now, are in a range of three days ago, not in the last hour."""
        self.start()
        old = int(self.now) - 3 * DAY
        yield self.upload({"time": [old, old + 60], "co2": [500, 900]})
        status, _, body = yield self.get("/plot?cols=co2&since=1h")
        self.assertEqual(list(ET.fromstring(body).iter(SVG + "path")), [])
        status, _, body = yield self.get("/plot?cols=co2&since={}&until={}".format(old - 600, old + 600))
        (path,) = ET.fromstring(body).iter(SVG + "path")
        self.assertEqual(path.get("data-points"), "2")

    @defer.inlineCallbacks
    def test_unusable_times_are_counted_and_do_not_stretch_the_axis(self):
        """
        Text that is no time, a time in 1938 and one five years ahead are
        drawn at their upload time, counted on the page, and ``since=all``
        still ends near now.
        """
        self.start()
        t = int(self.now) - 600
        yield self.upload({"time": [t, "soon", -1_000_000_000, int(self.now) + 5 * 365 * DAY, None],
                           "co2": [400, 410, 420, 430, 440]})
        page = yield self.page("?since=1h")
        self.assertRegex(page, r'id="unusable-time"[^>]*><strong>3</strong> rows without a usable time')
        page = yield self.page("?since=all")
        since, until = re.search(r'data-since="([\d.]+)" data-until="([\d.]+)"', page).groups()
        self.assertLess(float(until), self.now + 3600)
        self.assertGreater(float(since), self.now - 2 * DAY)
        (path,) = panels(page)["co2"].iter(SVG + "path")
        self.assertGreater(int(path.get("data-points")), 0)

    @defer.inlineCallbacks
    def test_backfill_lands_in_its_own_buckets(self):
        """
        A backfill of ten days ago, uploaded after the rollups were filled,
        is rolled up into the minutes of its measurement time: the rollup
        answer equals reading the rows, and the values sit ten days back.
        """
        self.start()
        now = int(self.now)
        yield self.upload({"time": list(range(now - 7200, now, 30)), "co2": [500] * 240})
        yield self.page()  # the dashboard asks for rollups of its columns
        yield self.store.catch_up()
        old = now - 10 * DAY
        rng = random.Random(4)
        values = [rng.randint(300, 3000) for _ in range(2000)]
        yield self.upload({"time": list(range(old, old + 2000 * 7, 7)), "co2": values})
        yield self.store.catch_up()
        bounds = [now - 30 * DAY + k * (30 * DAY / 300) for k in range(301)]
        rolled = yield self.store.plot_series(["co2"], bounds)
        exact = yield self.store.plot_series(["co2"], bounds, rollups=False)
        self.assertEqual(rolled.buckets, exact.buckets)
        (label,) = rolled.series
        got = rolled.column_buckets(label, 0)
        i = int((old - bounds[0]) // (30 * DAY / 300))
        self.assertEqual(got[0][0], i)
        self.assertEqual(min(b[1] for b in got[:-1]), min(values))
        self.assertEqual(max(b[2] for b in got[:-1]), max(values))
        connection = sqlite3.connect(self.db_path)
        minutes = connection.execute("SELECT min(start) FROM co2logd_rollup WHERE span = 60").fetchone()[0]
        connection.close()
        self.assertEqual(minutes, old // 60 * 60)


class SeriesTests(TruthMixin, unittest.TestCase):
    """One line per source, a legend, latest values per source, the busiest few."""

    @defer.inlineCallbacks
    def two_boxes(self):
        t = int(self.now) - 3600
        yield self.upload({"time": list(range(t, t + 600, 10)), "co2": [600] * 60, "box": ["kitchen"] * 60})
        yield self.upload({"time": list(range(t, t + 600, 10)), "co2": [900] * 60, "box": ["garden"] * 60})

    @defer.inlineCallbacks
    def test_two_sources_two_lines_and_a_legend(self):
        """Two boxes: two series paths in different Okabe–Ito colours, two legend entries, on the dashboard and /plot."""
        self.start()
        yield self.two_boxes()
        page = yield self.page()
        paths = list(panels(page)["co2"].iter(SVG + "path"))
        self.assertEqual(sorted(p.get("data-source") for p in paths), ["garden", "kitchen"])
        colours = {p.get("stroke") for p in paths}
        self.assertEqual(len(colours), 2)
        self.assertTrue(colours <= set(OKABE_ITO))
        self.assertEqual(sorted(re.findall(r'class="legend-entry" data-source="([^"]+)"', page)), ["garden", "kitchen"])
        status, _, body = yield self.get("/plot?cols=co2")
        svg = ET.fromstring(body)
        self.assertEqual(sorted(p.get("data-source") for p in svg.iter(SVG + "path")), ["garden", "kitchen"])
        legend = [g for g in svg.iter(SVG + "g") if g.get("class") == "legend-entry"]
        self.assertEqual(sorted(g.get("data-source") for g in legend), ["garden", "kitchen"])

    @defer.inlineCallbacks
    def test_filter_values_beyond_sqlite_integers_match_nothing_and_never_fail(self):
        """``?source=`` and ``?box=`` with 30-digit numbers: the dashboard and /plot answer 200 with no line."""
        self.start()
        yield self.two_boxes()
        huge = "9" * 30
        for query in ("?source=" + huge, "?box=" + huge, "?box=-" + huge):
            page = yield self.page(query)
            self.assertEqual(list(panels(page)["co2"].iter(SVG + "path")), [])
            status, _, _ = yield self.get("/plot" + query)
            self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_filters_narrow_to_one_source_and_latest_follows(self):
        """``?box=garden``: one line, and the latest values are garden's, with its time."""
        self.start()
        yield self.two_boxes()
        page = yield self.page("?box=garden")
        paths = list(panels(page)["co2"].iter(SVG + "path"))
        self.assertEqual([p.get("data-source") for p in paths], ["garden"])
        latest = re.search(r'<table id="latest">.*?</table>', page, re.S).group(0)
        self.assertEqual(re.findall(r'<tr data-source="([^"]+)"', latest), ["garden"])
        self.assertIn('<td class="num">900</td>', latest)
        self.assertNotIn("600", latest.split("</tr>", 1)[1])
        page = yield self.page()
        latest = re.search(r'<table id="latest">.*?</table>', page, re.S).group(0)
        self.assertEqual(sorted(re.findall(r'<tr data-source="([^"]+)"', latest)), ["garden", "kitchen"])

    @defer.inlineCallbacks
    def test_busiest_few_and_how_many_are_left_out(self):
        """With PLOT_MAX_SERIES=2 and four boxes, the two busiest are drawn and the page says 2 are left out."""
        self.start(PLOT_MAX_SERIES=2)
        t = int(self.now) - 3600
        for box, n in (("a", 5), ("b", 40), ("c", 30), ("d", 10)):
            yield self.upload({"time": list(range(t, t + n)), "co2": [500] * n, "box": [box] * n})
        page = yield self.page()
        self.assertEqual(sorted(p.get("data-source") for p in panels(page)["co2"].iter(SVG + "path")), ["b", "c"])
        self.assertIn("2 more sources not shown", page)


class PanelTests(TruthMixin, unittest.TestCase):
    """Default panels, units, ranges, and an empty range that points at the data."""

    def test_default_panels_skip_times_counters_and_uptime(self):
        """time_utc, uptime_s, *_utc, the sequence field and counters get no panel; DASHBOARD_COLUMNS still chooses."""
        columns = {"time_upload_utc": "DATETIME", "transport": "TEXT", "time_utc": "INTEGER", "uptime_s": "INTEGER",
                   "seq": "INTEGER", "frame_counter": "INTEGER", "scd30_co2_ppm": "INTEGER",
                   "bme280_temperature_c": "REAL", "gps_fix_utc": "REAL"}
        settings = make_settings(SEQUENCE_FIELD="seq")
        self.assertEqual(main_columns(settings, columns), ["scd30_co2_ppm", "bme280_temperature_c"])
        settings = make_settings(DASHBOARD_COLUMNS=["uptime_s"])
        self.assertEqual(main_columns(settings, columns), ["uptime_s"])

    def test_units(self):
        """Units from the names by the OpenSenseMap rule, DASHBOARD_UNITS first."""
        settings = make_settings()
        self.assertEqual(unit_for(settings, "scd30_co2_ppm"), "ppm")
        self.assertEqual(unit_for(settings, "bme280_temperature_c"), "°C")
        self.assertEqual(unit_for(settings, "co2"), "")
        self.assertEqual(unit_for(make_settings(DASHBOARD_UNITS={"CO2": "ppm"}), "co2"), "ppm")

    @defer.inlineCallbacks
    def test_panels_units_on_the_page(self):
        """The README example and an Arduino sketch's columns: panels of the measurements only, with units."""
        self.start()
        t = int(self.now) - 300
        yield self.upload({"time_utc": [t, t + 1], "uptime_s": [5, 6], "scd30_co2_ppm": [500, 510],
                           "bme280_temperature_c": [21.5, 21.6]})
        page = yield self.page()
        self.assertEqual(sorted(panels(page)), ["bme280_temperature_c", "scd30_co2_ppm"])
        self.assertIn("<figcaption>scd30_co2_ppm (ppm)</figcaption>", page)
        self.assertIn("<figcaption>bme280_temperature_c (°C)</figcaption>", page)

    @defer.inlineCallbacks
    def test_ranges_and_no_data(self):
        """
        The chooser offers 1h to all; data from three days ago is not in the
        last hour, which says so and links to the range where it is, and
        ``since=all`` shows it.
        """
        self.start()
        old = int(self.now) - 3 * DAY
        yield self.upload({"time": [old, old + 60], "co2": [500, 900]})
        page = yield self.page("?since=1h")
        self.assertEqual(re.findall(r'data-range="([^"]+)"', page), ["1h", "6h", "24h", "7d", "30d", "365d", "all"])
        no_data = re.search(r'<p id="no-data"[^>]*>.*?</p>', page, re.S).group(0)
        link = re.search(r'href="([^"]+)"', no_data).group(1).replace("&amp;", "&")
        page = yield self.page(link[1:])
        (path,) = panels(page)["co2"].iter(SVG + "path")
        self.assertEqual(path.get("data-points"), "2")
        self.assertNotIn('id="no-data"', page)
        page = yield self.page("?since=all")
        (path,) = panels(page)["co2"].iter(SVG + "path")
        self.assertEqual(path.get("data-points"), "2")


class ReadsNeverWriteTests(TruthMixin, unittest.TestCase):
    """Dashboard and plot views run on read-only connections: the writer never hears of them."""

    @defer.inlineCallbacks
    def test_views_do_not_touch_the_writer(self):
        """
        After the rollups are filled, ten dashboard and ten plot views make
        no call on the writer's connection (no transaction, no fsync), and
        the read connections refuse writes.
        """
        self.start()
        t = int(self.now) - 7200
        yield self.upload({"time": list(range(t, t + 7000, 5)), "co2": [500] * 1400, "box": ["a"] * 1400})
        yield self.page()
        yield self.store.catch_up()
        self.store._maintenance.stop()  # the timer's own work is not a view's
        calls = []
        for name in ("runWithConnection", "runInteraction", "runQuery", "runOperation"):
            real = getattr(self.store.pool, name)
            self.patch(self.store.pool, name, lambda *a, _real=real, _name=name, **k: (calls.append((_name, a[:1])), _real(*a, **k))[1])
        for query in ("", "?since=1h", "?box=a", "?since=all", "?since=7d"):
            yield self.page(query)
            yield self.page(query)
        for query in ("cols=co2", "cols=co2&since=6h", "cols=co2&box=a&since=all"):
            for _ in range(3):
                status, _, _ = yield self.get("/plot?" + query)
                self.assertEqual(status, 200)
        self.assertEqual(calls, [])
        (only,) = yield self.store.read_pool.runQuery("PRAGMA query_only")
        self.assertEqual(only, (1,))
        with self.assertRaises(sqlite3.OperationalError):
            yield self.store.read_pool.runOperation("DELETE FROM data")


class SharedRenderTests(TruthMixin, unittest.TestCase):
    """Pollers cannot multiply the dashboard's work: identical views share one render for DASHBOARD_CACHE_SECONDS."""

    @defer.inlineCallbacks
    def test_identical_views_share_a_render(self):
        """Eight concurrent views of ``/`` and two more right after run one plot query; another range runs its own."""
        self.start()
        yield self.upload({"time": [int(self.now) - 60], "co2": [500]})
        calls = []
        real = self.store.plot_series
        self.patch(self.store, "plot_series", lambda *a, **k: (calls.append(a), real(*a, **k))[1])
        pages = yield defer.gatherResults([self.page() for _ in range(8)])
        pages += [(yield self.page()), (yield self.page())]
        self.assertEqual(len(calls), 1)
        self.assertEqual(len(set(pages)), 1)
        yield self.page("?since=1h")
        self.assertEqual(len(calls), 2)


class MaintenanceTests(StoreMixin, unittest.TestCase):
    """The side table and rollups are kept by a timer on the injected clock, rows from other programs included."""

    @defer.inlineCallbacks
    def test_timer_indexes_rows_written_by_others(self):
        """Rows another program wrote are indexed (measurement time, kind) on the clock's tick, not by a view."""
        self.settings = make_settings()
        self.db_path = self.mktemp()
        clock = task.Clock()
        store = Store.open(self.db_path, self.settings, clock=clock)
        store.startService()
        self.addCleanup(store.stopService)
        yield store.catch_up()
        connection = sqlite3.connect(self.db_path)
        connection.execute('ALTER TABLE data ADD COLUMN "time" DATETIME')
        connection.executemany(
            'INSERT INTO data (time_upload_utc, transport, "time") VALUES (?, ?, ?)',
            [("2024-05-01 12:00:00+00:00", "http", "2024-04-01 00:00:00+00:00"),
             ("2024-05-01 12:00:00+00:00", "http", "garbage"),
             ("2024-05-01 12:00:00+00:00", "http", None)],
        )
        connection.commit()
        store.columns["time"] = "DATETIME"
        self.assertIsNone(store.rollups.maintaining)
        clock.advance(store.rollups.maintenance_interval)
        self.assertIsNotNone(store.rollups.maintaining)
        yield store.rollups.maintaining
        rows = connection.execute("SELECT row, t, kind FROM co2logd_mtime ORDER BY row").fetchall()
        connection.close()
        self.assertEqual(rows, [(1, 1711929600.0, mtime.MEASURED), (2, 1714564800.0, mtime.UNUSABLE),
                                (3, 1714564800.0, mtime.UPLOAD)])

    @defer.inlineCallbacks
    def test_upgrade_backfills_an_older_database(self):
        """
        A database from before schema version 6 (rows, no side table) is
        upgraded on open and its rows are indexed by the maintenance timer:
        a plot then shows them at their measurement time.
        """
        settings = make_settings()
        path = self.mktemp()
        store = Store.open(path, settings)
        yield store.stopService()
        connection = sqlite3.connect(path)
        connection.execute('ALTER TABLE data ADD COLUMN "time" DATETIME')
        connection.execute('ALTER TABLE data ADD COLUMN "co2" INTEGER')
        connection.executemany(
            'INSERT INTO data (time_upload_utc, transport, "time", co2) VALUES (?, ?, ?, ?)',
            [("2024-05-02 00:00:00+00:00", "http", "2024-05-01 00:{:02d}:00+00:00".format(m), 400 + m) for m in range(60)],
        )
        connection.execute("DROP TABLE co2logd_mtime")
        connection.execute("DROP TABLE co2logd_mtime_state")
        connection.execute("DELETE FROM co2logd_schema_version WHERE version >= 6")
        connection.commit()
        connection.close()
        clock = task.Clock()
        store = Store.open(path, settings, clock=clock)
        store.startService()
        self.addCleanup(store.stopService)
        yield store.catch_up()
        day = 1714521600.0  # 2024-05-01 00:00 UTC
        data = yield store.plot_series(["co2"], [day + k * 600 for k in range(7)], rollups=False)
        self.assertEqual(data.series, ["http"])
        self.assertEqual(data.column_buckets("http", 0), [(k, 400 + 10 * k, 409 + 10 * k) for k in range(6)])

    @defer.inlineCallbacks
    def test_dashboard_time_col_chooses_and_a_change_rebuilds(self):
        """DASHBOARD_TIME_COL names the time column; opening with another setting rebuilds the side table."""
        path = self.mktemp()
        rows = [("2024-05-02 00:00:00+00:00", "http", "2024-05-01 00:00:00+00:00", "2024-04-01 00:00:00+00:00")]

        @defer.inlineCallbacks
        def times(**values):
            settings = make_settings(TIME_COLS=["time", "sensor_time"], **values)
            store = Store.open(path, settings, clock=task.Clock())
            store.startService()
            if rows:
                connection = sqlite3.connect(path)
                connection.execute('ALTER TABLE data ADD COLUMN "time" DATETIME')
                connection.execute('ALTER TABLE data ADD COLUMN "sensor_time" DATETIME')
                connection.executemany('INSERT INTO data (time_upload_utc, transport, "time", sensor_time) VALUES (?, ?, ?, ?)', rows)
                connection.commit()
                connection.close()
                del rows[:]
            yield store.catch_up()
            found = yield store.read_pool.runQuery("SELECT t FROM co2logd_mtime")
            yield store.stopService()
            return [t for (t,) in found]

        self.assertEqual((yield times()), [1714521600.0])  # the first of TIME_COLS
        self.assertEqual((yield times(DASHBOARD_TIME_COL="sensor_time")), [1711929600.0])

    @defer.inlineCallbacks
    def test_small_uploads_fold_into_current_rollups_in_their_own_transaction(self):
        """
        With the rollups current, a small upload is folded in by the writer
        (the same commit), so maintenance has nothing to do and no extra
        transaction follows; a plot still equals reading the rows.
        """
        clock = task.Clock()
        clock.advance(1714521600 + 3600)  # uploaded an hour after the readings
        self.make_ingest(make_settings(), clock=clock)
        self.store._maintenance.stop()  # only the writer may fold here
        yield self.ingest_json({"time": [1714521600 + k for k in range(100)], "co2": list(range(100))})
        self.store.want_rollups(["co2"])
        yield self.store.catch_up()
        yield self.ingest_json({"time": [1714521600 + 200 + k for k in range(10)], "co2": [5000 + k for k in range(10)]})
        (done,) = yield self.store.read_pool.runQuery("SELECT done_rowid FROM co2logd_rollup_state WHERE col = 'co2'")
        self.assertEqual(done, (110,))
        bounds = [1714521600.0 + 60 * k for k in range(6)]
        rolled = yield self.store.plot_series(["co2"], bounds)
        exact = yield self.store.plot_series(["co2"], bounds, rollups=False)
        self.assertEqual(rolled.buckets, exact.buckets)
        self.assertEqual(rolled.series, ["http"], rolled.buckets)
        self.assertEqual(rolled.column_buckets("http", 0)[-1], (3, 5000, 5009))

    def ingest_json(self, table):
        """An upload through the ingest service (as HTTP would hand it over)."""
        return self.ingest.ingest(Upload(json.dumps(table).encode(), "application/json", [], "http"))


class RollupAnswerTests(StoreMixin, unittest.TestCase):
    """A plot answered from the rollups equals the same plot read from the rows, whatever the range."""

    T0 = 1714521600  # 2024-05-01 00:00 UTC

    @defer.inlineCallbacks
    def fill(self, tail: bool = False):
        """
        Ten days of readings from three boxes at irregular times, sent in
        uploads out of time order (a backfill of the first days last); with
        ``tail``, the last upload is left beyond the rollups' watermark.
        """
        clock = task.Clock()
        clock.advance(self.T0 + 11 * DAY)
        self.make_ingest(make_settings(), clock=clock)
        self.store._maintenance.stop()  # maintenance runs when the test says
        rng = random.Random(10)
        uploads = []
        for box in range(3):
            for day in range(10):
                times = sorted(rng.sample(range(self.T0 + day * DAY, self.T0 + (day + 1) * DAY), 150))
                uploads.append({"time": times, "co2": [rng.randint(400, 2000) for _ in times],
                                "temperature": [round(rng.uniform(15, 30), 2) for _ in times],
                                "box": ["box{}".format(box)] * len(times)})
        uploads.sort(key=lambda u: (u["time"][0] < self.T0 + 3 * DAY, rng.random()))
        for upload in uploads[:-1]:
            yield self.ingest.ingest(Upload(json.dumps(upload).encode(), "application/json", [], "http"))
        self.store.want_rollups(["co2", "temperature"])
        yield self.store.catch_up()
        if tail:
            self.store.rollups.fold_in_writer_rows = 0  # not folded by the writer: read from the rows beyond the mark
        yield self.ingest.ingest(Upload(json.dumps(uploads[-1]).encode(), "application/json", [], "http"))
        if tail:  # indexed (plots show it) but not rolled up
            (top,) = yield self.store.read_pool.runQuery("SELECT max(rowid) FROM data")
            yield self.store.rollups.indexed_through(top[0])
        else:
            yield self.store.catch_up()

    @defer.inlineCallbacks
    def compare(self, bounds, filters=()):
        answered = []
        original = self.store.rollups._rollup_answer
        self.store.rollups._rollup_answer = lambda *a: answered.append(1) or original(*a)
        try:
            rolled = yield self.store.plot_series(["co2", "temperature"], bounds, filters)
        finally:
            del self.store.rollups._rollup_answer
        exact = yield self.store.plot_series(["co2", "temperature"], bounds, filters, rollups=False)
        self.assertEqual(answered, [1], "the rollups did not answer")
        self.assertEqual(rolled.series, exact.series)
        self.assertTrue(exact.buckets)
        differ = [  # the first few differences only: a diff of thousands of buckets takes minutes to print
            (label, i, rolled.buckets.get(label, {}).get(i), exact.buckets.get(label, {}).get(i))
            for label in sorted(set(rolled.buckets) | set(exact.buckets))
            for i in sorted(set(rolled.buckets.get(label, {})) | set(exact.buckets.get(label, {})))
            if rolled.buckets.get(label, {}).get(i) != exact.buckets.get(label, {}).get(i)
        ]
        self.assertEqual(differ[:5], [], "{} of the buckets differ (bounds {}...)".format(len(differ), bounds[:3]))

    @defer.inlineCallbacks
    def test_rollups_equal_rows(self):
        """Bucket edges of every step (minutes to days), ragged ends, unequal steps and a filter: rollups and rows agree."""
        from co2logd.plot import bucket_edges

        yield self.fill()
        end = self.T0 + 10 * DAY
        for since, until, buckets in [(self.T0 - 1234.5, end + 77.25, 780), (self.T0 + 3 * DAY + 17.5, end - 5, 700),
                                      (self.T0 + DAY + 0.5, self.T0 + 2 * DAY + 0.5, 720), (self.T0 + 5 * DAY, self.T0 + 5 * DAY + 3 * 3600, 100),
                                      (self.T0 - 30 * DAY, end + 1, 20), (self.T0 + 3599, self.T0 + 4000, 3)]:
            yield self.compare(bucket_edges(since, until, buckets))
        yield self.compare([self.T0 - 10.5, self.T0 + 3600, self.T0 + 6 * 3600, self.T0 + 2 * DAY, end + 0.5])  # unequal steps
        yield self.compare(bucket_edges(self.T0, end, 300), [("box", "box1")])

    @defer.inlineCallbacks
    def test_rows_beyond_the_watermark(self):
        """An upload not yet rolled up is read from its rows, merged into the rollups' buckets."""
        from co2logd.plot import bucket_edges

        yield self.fill(tail=True)
        (done,) = yield self.store.read_pool.runQuery("SELECT min(done_rowid) FROM co2logd_rollup_state")
        (top,) = yield self.store.read_pool.runQuery("SELECT max(rowid) FROM data")
        self.assertEqual(top[0] - done[0], 150)
        yield self.compare(bucket_edges(self.T0 - 0.5, self.T0 + 10 * DAY + 0.5, 780))


class EdgeTests(unittest.TestCase):
    """Bucket edges on whole minutes and hours, so rollups answer whole buckets."""

    def test_edges(self):
        """Long buckets get whole-minute or whole-hour inner edges, never more buckets than asked; short ones stay even."""
        from co2logd.plot import bucket_edges

        since, until = 1714521600.5 - DAY, 1714521600.5
        edges = bucket_edges(since, until, 800)
        self.assertEqual((edges[0], edges[-1]), (since, until))
        self.assertLessEqual(len(edges) - 1, 800)
        self.assertTrue(all(e % 60 == 0 for e in edges[1:-1]))
        edges = bucket_edges(until - 365 * DAY, until, 800)
        self.assertLessEqual(len(edges) - 1, 800)
        self.assertTrue(all(e % 3600 == 0 for e in edges[1:-1]))
        edges = bucket_edges(until - 3600, until, 800)
        self.assertEqual(len(edges), 801)
        for days in (1, 7, 30, 365, 3000):  # a step the rollup spans divide, at most 5 periods of one
            inner = bucket_edges(until - days * DAY, until, 782)[1:-1]
            step = inner[1] - inner[0]
            self.assertTrue(step in STEPS or step % DAY == 0, step)
            self.assertTrue(any(step % span == 0 and step // span <= 5 for span in SPANS), step)
