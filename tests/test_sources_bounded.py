"""
Sources bounded (issue 12, finding 9): made-up boxes and spoofed UDP senders
cannot blow up the dashboard, /health or memory, nor turn /health 503 for
good.  Everything over real ports on 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import socket
import sqlite3

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from co2logd.activity import SourceTracker, trim_found
from co2logd.timerange import time_text
from co2logd.transports.udp import udp_service
from co2logd.web.site import make_site
from tests.helpers import SiteMixin, StoreMixin, make_settings

T0 = 1_700_000_000.0


def sleep(seconds: float) -> defer.Deferred:
    return task.deferLater(reactor, seconds, lambda: None)


class SourcesBoundedTests(SiteMixin, unittest.TestCase):
    """The dashboard and /health of a site whose sources were invented by its uploaders."""

    def start(self, **settings):
        self.make_ingest(make_settings(**settings), clock=reactor)
        self.site = make_site(self.settings, self.ingest, self.store, reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "http://127.0.0.1:{}".format(self.port.getHost().port)

    @defer.inlineCallbacks
    def health(self):
        status, _, body = yield self.get("/health")
        return status, body, json.loads(body)

    @defer.inlineCallbacks
    def test_far_more_boxes_than_tracked(self):
        """
        One upload of 50 times SOURCES_MAX_TRACKED distinct boxes (the attack
        sent 100,000 against the default 1000; benchmarks/attack_sources.py
        runs it at that size) leaves / and /health small and /health 200.
        """
        self.start(HEALTH_SILENT_SOURCES=True, SOURCES_MAX_TRACKED=100)
        n = 5_000
        body = json.dumps({"co2": [400 + i % 500 for i in range(n)], "box": ["b{}".format(i) for i in range(n)]}).encode()
        status, receipt = yield self.post(body, "application/json")
        self.assertEqual((status, receipt), (200, {"saved-in-db": n}))
        status, _, page = yield self.get("/")
        self.assertEqual(status, 200)
        self.assertLess(len(page), 60_000)
        self.assertEqual(page.count(b'<tr class="heard">'), 20)
        self.assertRegex(page.decode(), r"\d+ more sources \(\d+ rows\) not listed")
        status, body, report = yield self.health()
        self.assertEqual(status, 200, report["reasons"])
        self.assertLess(len(body), 20_000)
        self.assertEqual(len(report["sources"]), 20)
        tracked = 20 + report["sources_not_listed"]["sources"]
        self.assertLessEqual(tracked, 100)  # SOURCES_MAX_TRACKED
        self.assertEqual(report["sources_not_listed"]["rows"], tracked - 20)

    @defer.inlineCallbacks
    def test_made_up_box_does_not_make_health_fail(self):
        """With HEALTH_SILENT_SOURCES, one upload from a made-up box that then falls silent leaves /health 200."""
        self.start(HEALTH_SILENT_SOURCES=True, DASHBOARD_SILENT_SECONDS=0.2)
        status, _ = yield self.post(b'{"co2": [500], "box": ["made-up"]}', "application/json")
        self.assertEqual(status, 200)
        yield sleep(0.5)
        status, _, report = yield self.health()
        self.assertEqual((status, report["reasons"]), (200, []))
        self.assertEqual([(s["box"], s["silent"], s["watched"]) for s in report["sources"]], [("made-up", True, False)])

    @defer.inlineCallbacks
    def test_established_source_is_watched_then_forgotten(self):
        """A box heard in HEALTH_SILENT_MIN_UPLOADS uploads makes /health 503 when silent, until SOURCES_FORGET_SECONDS forget it."""
        self.start(HEALTH_SILENT_SOURCES=True, DASHBOARD_SILENT_SECONDS=0.3, HEALTH_SILENT_MIN_UPLOADS=3, SOURCES_FORGET_SECONDS=1.5)
        for _ in range(3):
            status, _ = yield self.post(b'{"co2": [500], "box": ["kitchen"]}', "application/json")
            self.assertEqual(status, 200)
            yield sleep(0.01)  # distinct upload times
        status, _, report = yield self.health()
        self.assertEqual(status, 200)
        self.assertEqual(report["sources"][0]["uploads"], 3)
        yield sleep(0.6)
        status, _, report = yield self.health()
        self.assertEqual((status, report["reasons"]), (503, ["source http (box kitchen) is silent"]))
        yield sleep(1.2)
        status, _, report = yield self.health()
        self.assertEqual((status, report["sources"]), (200, []))
        status, _, page = yield self.get("/")
        self.assertIn(b"No data received yet", page)

    @defer.inlineCallbacks
    def test_listed_source(self):
        """A box in HEALTH_WATCHED_SOURCES is watched from its first upload, and missed before it: 503 both ways."""
        self.start(HEALTH_WATCHED_SOURCES=["garden"], DASHBOARD_SILENT_SECONDS=0.2, SOURCES_FORGET_SECONDS=0.5)
        status, _, report = yield self.health()
        self.assertEqual((status, report["reasons"]), (503, ["watched source garden has not been heard from"]))
        status, _ = yield self.post(b'{"co2": [500], "box": ["garden"]}', "application/json")
        status, _, report = yield self.health()
        self.assertEqual((status, report["reasons"]), (200, []))
        yield sleep(0.8)  # silent, and past SOURCES_FORGET_SECONDS: a listed source is not forgotten
        status, _, report = yield self.health()
        self.assertEqual((status, report["reasons"]), (503, ["source http (box garden) is silent"]))

    @defer.inlineCallbacks
    def test_spoofed_udp_senders(self):
        """Datagrams from 40 loopback addresses: at most SOURCES_MAX_TRACKED kept, DASHBOARD_MAX_SOURCES listed."""
        self.start(SOURCES_MAX_TRACKED=10, DASHBOARD_MAX_SOURCES=5)
        service = udp_service((0, "127.0.0.1"), self.ingest, reactor, self.settings)
        service.startService()
        self.addCleanup(service.stopService)
        senders = 40
        for k in range(senders):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(("127.0.0.{}".format(k + 2), 0))
                s.sendto(b'{"co2": 600}', ("127.0.0.1", service.port))
        for _ in range(200):  # bounded wait for the datagrams to be stored
            count = yield self.store.row_count()
            if count == senders:
                break
            yield sleep(0.05)
        self.assertEqual(count, senders)
        status, body, report = yield self.health()
        self.assertEqual(status, 200)
        self.assertEqual(len(report["sources"]), 5)
        self.assertTrue(all(s["transport"].startswith("udp:127.0.0.") for s in report["sources"]))
        self.assertEqual(report["sources_not_listed"], {"sources": 5, "rows": 5})
        status, _, page = yield self.get("/")
        self.assertEqual(len(re.findall(rb'<tr class="(?:heard|silent)"><td><a [^>]*>udp:127\.0\.0\.', page)), 5)
        self.assertIn(b"5 more sources (5 rows) not listed", page)


class TrackerTests(StoreMixin, unittest.TestCase):
    """The source table's bounds, on a real store (unit level)."""

    def insert(self, rows) -> None:
        """(seconds, transport, box) rows straight into the data table."""
        connection = sqlite3.connect(self.db_path)
        try:
            if "box" not in {r[1] for r in connection.execute("PRAGMA table_info(data)")}:
                connection.execute('ALTER TABLE data ADD COLUMN "box" TEXT')
            connection.executemany(
                "INSERT INTO data (time_upload_utc, transport, box) VALUES (?, ?, ?)",
                [(time_text(t), transport, box) for t, transport, box in rows],
            )
            connection.commit()
        finally:
            connection.close()
        self.store.columns["box"] = "TEXT"

    @defer.inlineCallbacks
    def test_busiest_and_listed_are_kept(self):
        """Read 7 rows at a time, 60 one-off boxes do not push out a box of 5 uploads or a listed one; at most 5 kept."""
        self.make_store(make_settings(SOURCES_MAX_TRACKED=5, HEALTH_WATCHED_SOURCES=["listed"]))
        self.store.rollups.activity_chunk_rows = 7
        clock = task.Clock()
        clock.advance(T0 + 1000)
        tracker = SourceTracker(self.store, self.settings, clock)
        self.insert([(T0 + k, "http", "kitchen") for k in range(5)] + [(T0 + 10, "http", "listed")])
        yield tracker.refresh()
        self.insert([(T0 + 100 + k, "udp:10.0.0.{}".format(k), None) for k in range(60)])
        sources = yield tracker.refresh()
        self.assertEqual(len(sources), 5)
        self.assertEqual((sources[0].box, sources[0].uploads), ("kitchen", 5))
        self.assertIn("listed", [s.box for s in sources])
        listing = tracker.listing(sources)
        self.assertEqual((len(listing.shown), listing.more, listing.more_rows), (5, 0, 0))

    def test_trim_found(self):
        """While reading, new sources beyond twice the cap are cut to the cap: known and listed ones stay."""
        settings = make_settings(SOURCES_MAX_TRACKED=3, HEALTH_WATCHED_SOURCES=["listed"])
        found = {("http", "b{}".format(k)): [time_text(T0 + k), 1, 1] for k in range(20)}
        found[("http", "known")] = [time_text(T0), 1, 1]
        found[("http", "listed")] = [time_text(T0), 1, 1]
        found[("http", "busy")] = [time_text(T0), 9, 9]
        trim_found(found, settings, frozenset({("http", "known")}))
        self.assertEqual(set(found), {("http", "known"), ("http", "listed"), ("http", "busy"), ("http", "b19"), ("http", "b18")})

    @defer.inlineCallbacks
    def test_forgetting(self):
        """A source silent for SOURCES_FORGET_SECONDS is dropped; a new upload brings it back."""
        self.make_store(make_settings(SOURCES_FORGET_SECONDS=100))
        clock = task.Clock()
        clock.advance(T0)
        tracker = SourceTracker(self.store, self.settings, clock)
        self.insert([(T0 - 50, "http", "a"), (T0 - 150, "http", "b")])
        sources = yield tracker.refresh()
        self.assertEqual([s.box for s in sources], ["a"])
        clock.advance(60)
        self.assertEqual((yield tracker.refresh()), [])
        self.insert([(T0 + 60, "http", "a")])
        sources = yield tracker.refresh()
        self.assertEqual([(s.box, s.rows) for s in sources], [("a", 1)])
