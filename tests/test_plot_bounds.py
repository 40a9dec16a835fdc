"""
Bounded plots (issue 12, finding 1): repeated columns are drawn once, and
columns, width × height and the answer's size are capped, over a real port
with a day of 1 Hz data.
"""

from __future__ import annotations

import datetime
import json
import sqlite3
import xml.etree.ElementTree as ET

from twisted.internet import defer, reactor
from twisted.trial import unittest

from co2logd.charts.svg import plot_area_width
from co2logd.web.site import make_site
from tests.helpers import SiteMixin, make_settings

SVG = "{http://www.w3.org/2000/svg}"
DAY = 86400


def fill_day(path: str, end: float) -> None:
    """A day of 1 Hz rows (co2, temperature) ending at ``end``, written straight into the data table."""
    utc = datetime.timezone.utc
    connection = sqlite3.connect(path)
    try:
        connection.execute('ALTER TABLE data ADD COLUMN "co2" INTEGER')
        connection.execute('ALTER TABLE data ADD COLUMN "temperature" REAL')
        connection.executemany(
            "INSERT INTO data (time_upload_utc, transport, co2, temperature) VALUES (?, 'http', ?, ?)",
            (
                (datetime.datetime.fromtimestamp(end - DAY + i, utc).isoformat(" "), 400 + i % 1000, 20 + (i % 97) / 10)
                for i in range(DAY)
            ),
        )
        connection.commit()
    finally:
        connection.close()


class PlotBoundsTests(SiteMixin, unittest.TestCase):
    """``/plot`` with repeated columns, too many columns and oversized plots, from a real port."""

    @defer.inlineCallbacks
    def start(self, **settings):
        """A site over a store holding a day of 1 Hz data up to now (indexed by the store's maintenance)."""
        self.make_ingest(make_settings(**settings), clock=reactor)
        self.end = int(reactor.seconds())
        fill_day(self.db_path, self.end)
        self.store.columns.update(co2="INTEGER", temperature="REAL")
        self.site = make_site(self.settings, self.ingest, self.store, reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "http://127.0.0.1:{}".format(self.port.getHost().port)
        yield self.store.catch_up()  # rows written by another program are indexed on the maintenance timer

    @defer.inlineCallbacks
    def test_repeated_column_is_drawn_once(self):
        """``cols=co2`` forty times answers one panel of at most two points per pixel, the same SVG as ``cols=co2``."""
        yield self.start()
        since = "since={}&until={}".format(self.end - DAY, self.end + 1)
        status, _, single = yield self.get("/plot?cols=co2&" + since)
        self.assertEqual(status, 200)
        status, _, body = yield self.get("/plot?cols=" + ",".join(["co2"] * 40) + "&" + since)
        self.assertEqual(status, 200, body[:300])
        self.assertLess(len(body), 100_000)
        svg = ET.fromstring(body)
        paths = list(svg.iter(SVG + "path"))
        self.assertEqual([p.get("data-column") for p in paths], ["co2"])
        points = int(paths[0].get("data-points"))
        self.assertGreater(points, 0)
        self.assertLessEqual(points, 2 * plot_area_width(800))
        self.assertEqual(svg.get("height"), "198")  # a legend line and one 180 px panel
        self.assertEqual(body, single)

    @defer.inlineCallbacks
    def test_each_panel_is_bounded_by_its_width(self):
        """Two columns, one repeated: two panels, each at most two points per bucket, however the URL repeats them."""
        yield self.start()
        status, _, body = yield self.get("/plot?cols=co2,temperature,co2,temperature,co2&since=24h&width=4000&height=100")
        self.assertEqual(status, 200, body[:300])
        paths = list(ET.fromstring(body).iter(SVG + "path"))
        self.assertEqual([p.get("data-column") for p in paths], ["co2", "temperature"])
        for path in paths:
            self.assertLessEqual(int(path.get("data-points")), 2 * plot_area_width(4000))

    @defer.inlineCallbacks
    def test_too_many_columns(self):
        """More than PLOT_MAX_COLUMNS distinct columns is a 400 naming the setting; repeats do not count."""
        yield self.start(PLOT_MAX_COLUMNS=1)
        status, _, body = yield self.get("/plot?cols=co2,temperature&since=24h")
        self.assertEqual(status, 400)
        self.assertIn("PLOT_MAX_COLUMNS", json.loads(body)["error"])
        status, _, _ = yield self.get("/plot?cols=co2,co2,CO2&since=24h")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_too_many_pixels(self):
        """Columns × width × height beyond PLOT_MAX_PIXELS is a 400 naming the setting, on /plot and the dashboard."""
        yield self.start()
        status, _, body = yield self.get("/plot?cols=co2&width=4000&height=1000")  # 4,000,000 pixels
        self.assertEqual(status, 400)
        self.assertIn("PLOT_MAX_PIXELS", json.loads(body)["error"])
        status, _, body = yield self.get("/plot?cols=co2,temperature&width=2000&height=500")  # 2,000,000: allowed
        self.assertEqual(status, 200)
        status, _, body = yield self.get("/?width=4000&height=1000")
        self.assertEqual(status, 400)
        self.assertIn(b"PLOT_MAX_PIXELS", body)
        for bad in ("width=4001", "width=199", "height=79", "height=1001"):
            status, _, body = yield self.get("/plot?cols=co2&" + bad)
            self.assertEqual(status, 400, bad)
            self.assertIn("must be a whole number", json.loads(body)["error"])
