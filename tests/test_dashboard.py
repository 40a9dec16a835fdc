"""
The dashboard, /plot, /health, /metrics and the download extras (issue 5).

Unit tests of the time ranges, the downsampling (on a real SQLite store) and
the SVG drawing; end-to-end tests fetch every page from a real port.
"""

from __future__ import annotations

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
from co2logd.plot import Panel, path_points, render_svg
from co2logd.store import WriteRequest, upload_time_index
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


class UploadTimeIndexTests(StoreMixin, unittest.TestCase):
    """The upload-time index (schema version 2) under the configured names."""

    def test_upload_time_index(self):
        """Schema version 2 indexes the upload-time column, under the configured names."""
        settings = make_settings(DATA_TABLE_NAME="readings", UPLOAD_TIME_COL="received")
        self.make_store(settings)
        connection = sqlite3.connect(self.db_path)
        indexes = connection.execute("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'").fetchall()
        connection.close()
        self.assertIn(upload_time_index(settings), [name for name, _, _ in indexes])
        self.assertEqual(upload_time_index(settings), "readings_received_idx")


class SourceActivityTests(StoreMixin, unittest.TestCase):
    """``Store.source_activity``: per source, the last upload time and row count, read in chunks."""

    @defer.inlineCallbacks
    def test_chunks_add_up(self):
        """Read 7 rows per interaction, the sources are what the rows say; asking again reads only new rows."""
        self.make_store()
        self.store.rollups.activity_chunk_rows = 7
        rng = random.Random(4)
        rows = [(stored_time(T0 + rng.uniform(0, 1000)), rng.choice(["http", "udp:10.0.0.1"]), 1, 1.0, rng.choice(["a", "b", None]))
                for _ in range(100)]
        insert_rows(self.db_path, rows)
        found, last = yield self.store.source_activity("box")
        expected = {}
        for when, transport, _, _, box in rows:
            old_when, count = expected.get((transport, box), ("", 0))
            expected[(transport, box)] = (max(old_when, when), count + 1)
        self.assertEqual({(t, b): (w, n) for t, b, w, n, _ in found}, expected)
        self.assertTrue(all(uploads == n for _, _, _, n, uploads in found))  # every row its own upload time
        self.assertEqual(last, 100)
        insert_rows(self.db_path, [(stored_time(T0 + 5000), "serial:/dev/ttyUSB0", 1, 1.0, "c")])
        found, last = yield self.store.source_activity("box", last)
        self.assertEqual((found, last), ([("serial:/dev/ttyUSB0", "c", stored_time(T0 + 5000), 1, 1)], 101))
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

    def test_cut_uses_every_span(self):
        """A long bucket: days in the middle, then 6 hours, hours, 10 minutes and minutes toward each end."""
        us = 1_000_000
        day = 86400
        lo, hi = day - 6 * 3600 - 3600 - 600 - 60 - 1, 3 * day + 6 * 3600 + 3600 + 600 + 60 + 1
        piece = rollup.cut(lo * us, hi * us)
        self.assertEqual(piece.periods, [
            (day, day, 3 * day),
            (21600, day - 21600, day), (21600, 3 * day, 3 * day + 21600),
            (3600, day - 21600 - 3600, day - 21600), (3600, 3 * day + 21600, 3 * day + 21600 + 3600),
            (600, day - 21600 - 3600 - 600, day - 21600 - 3600), (600, 3 * day + 25200, 3 * day + 25800),
            (60, day - 21600 - 3600 - 600 - 60, day - 21600 - 3600 - 600), (60, 3 * day + 25800, 3 * day + 25860),
        ])
        self.assertEqual(piece.exact, [(lo * us, (lo + 1) * us), ((hi - 1) * us, hi * us)])
        covered = sum(end - first for _, first, end in piece.periods) + sum(b - a for a, b in piece.exact) // us
        self.assertEqual(covered, hi - lo)

    def test_whole_range_uses_spans_dividing_the_step(self):
        """Inner bounds 20 minutes apart: 10-minute periods in the middle, never hours (an hour would span two buckets)."""
        bounds = [1000.5] + [float(1200 * k) for k in range(1, 10)] + [12345.0]
        piece = rollup.whole_range_piece(bounds)
        self.assertEqual({span for span, _, _ in piece.periods}, {600, 60})
        self.assertEqual(rollup.equal_steps(bounds), (1200, 1200))
        self.assertIsNone(rollup.equal_steps([0.0, 60.0, 180.0, 200.0, 300.0]))
        self.assertIsNone(rollup.whole_range_piece([0.0, 30.5, 100.0]))  # inner bound not whole seconds

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
        co2 = Panel("co2", [("kitchen", [(i, 800 + i, 900 + 2 * i) for i in range(700)])], bands=[1000, 1400])
        temperature = Panel("temperature", [("kitchen", [(i, 20.0, 21.5) for i in range(0, 700, 2)])])
        empty = Panel("humidity", [("kitchen", [])])
        svg = render_svg([co2, temperature, empty], T0, T0 + 86400, width=800, panel_height=200, labels=["kitchen"])
        root = ET.fromstring(svg)
        self.assertEqual(root.get("viewBox"), "0 0 800 618")  # a legend line, then the panels
        panels = [g for g in root.findall(SVG + "g") if g.get("class") == "panel"]
        self.assertEqual([p.get("data-column") for p in panels], ["co2", "temperature", "humidity"])
        paths = {p.get("data-column"): p for p in root.iter(SVG + "path")}
        self.assertEqual(int(paths["co2"].get("data-points")), 1400)
        self.assertEqual(len(re.findall(r"[ML]", paths["co2"].get("d"))), 1400)
        self.assertEqual(paths["humidity"].get("d"), "")
        self.assertEqual(len([r for r in panels[0].iter(SVG + "rect") if r.get("class") == "band"]), 3)
        self.assertEqual([r for r in panels[1].iter(SVG + "rect") if r.get("class") == "band"], [])
        self.assertIn("no data in this range", [t.text for t in panels[2].iter(SVG + "text")])
        labels = [t.text for t in panels[0].iter(SVG + "text") if t.get("class") == "axis xlabel"]
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
        paths = {}
        for match in re.findall(r"<svg.*?</svg>", page, re.S):
            for p in ET.fromstring(match).iter(SVG + "path"):
                paths[p.get("data-column")] = int(p.get("data-points"))
        self.assertEqual(set(paths), {"co2", "temperature"})
        self.assertGreater(paths["co2"], 0)
        self.assertRegex(page, r'<tr data-source="kitchen"><th>.*kitchen</th><td>[^<]*</td><td class="num">655</td>')
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
        self.assertEqual(svg.get("viewBox"), "0 0 400 168")  # a legend line, then one panel
        (path,) = list(svg.iter(SVG + "path"))
        self.assertEqual(path.get("data-points"), "2")  # one bucket: its min and its max
        self.assertEqual(path.get("data-source"), "kitchen")
        status, _, body = yield self.get("/plot?cols=co2&box=nowhere")
        self.assertEqual(list(ET.fromstring(body).iter(SVG + "path")), [])
        self.assertIn(b"no data in this range", body)
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
        yield self.store.write(WriteRequest(["co2"], [], {}, outbox=['{"x": 1}'], queued_at=reactor.seconds() - 60))
        status, report = yield self.health()
        self.assertEqual(status, 200)
        self.assertEqual(report["outbox"]["depth"], 1)
        yield self.store.write(WriteRequest(["co2"], [], {}, outbox=['{"x": 2}'], queued_at=reactor.seconds() - 3600))
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
        """
        HEALTH_SILENT_SOURCES: a source heard in HEALTH_SILENT_MIN_UPLOADS
        uploads and then silent longer than DASHBOARD_SILENT_SECONDS makes
        /health 503; one heard only once does not (issue 12, finding 9).
        """
        self.start(HEALTH_SILENT_SOURCES=True, DASHBOARD_SILENT_SECONDS=60, HEALTH_SILENT_MIN_UPLOADS=3)
        self.store.columns.update(co2="INTEGER", temperature="REAL", box="TEXT")
        insert_rows(self.db_path, [(stored_time(reactor.seconds() - 600), "udp:10.0.0.8", 1, 1.0, "once")])
        status, report = yield self.health()
        self.assertEqual((status, report["reasons"]), (200, []))
        insert_rows(self.db_path, [(stored_time(reactor.seconds() - 900 + k), "udp:10.0.0.9", 1, 1.0, "shed") for k in range(3)])
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
        yield self.store.write(WriteRequest(["co2"], [], {}, outbox=["{}"], queued_at=reactor.seconds() - 30))
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
