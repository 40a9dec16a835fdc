"""
The dashboard in a real browser: headless Chromium (Debian's ``chromium``)
loads it from a running site with data, the plot is drawn, and the page
requests nothing from anywhere but the daemon.

Chromium's network log (``--log-net-log``) records every URL request; the
page's own requests are told from the browser's background ones by their
initiator / network isolation key (the daemon's origin).  A control page
with an external image shows the check does catch such a request.  Host
resolution outside 127.0.0.1 is switched off, so nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from twisted.web.resource import Resource

from co2logd.web.site import make_site
from tests.helpers import SiteMixin, make_settings
from tests.test_dashboard import insert_rows, stored_time

CHROMIUM = "/usr/bin/chromium"


class LeakyPage(Resource):
    """A page that loads an image from elsewhere: the control for the request check."""

    isLeaf = True

    def render_GET(self, request):
        return b'<!DOCTYPE html><html><body><img src="http://example.invalid/x.png"></body></html>'


def chromium(url: str, profile: str, netlog: str, *extra: str) -> subprocess.CompletedProcess:
    """Run headless Chromium on ``url`` (in a thread: it blocks), logging the network."""
    return subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--user-data-dir=" + profile, "--log-net-log=" + netlog, *extra, url,
        ],
        capture_output=True,
        timeout=90,
    )


def page_requests(netlog_path: str, origin: str):
    """URLs the page (not the browser itself) asked for, from Chromium's network log."""
    with open(netlog_path, encoding="utf-8") as f:
        text = f.read()
    try:
        log = json.loads(text)
    except ValueError:  # the log of a browser that did not shut down cleanly lacks its end
        log = json.loads(text.rstrip().rstrip(",") + "]}")
    names = {v: k for k, v in log["constants"]["logEventTypes"].items()}
    site = "http://127.0.0.1"
    urls = []
    for event in log["events"]:
        params = event.get("params") or {}
        if names.get(event["type"]) != "URL_REQUEST_START_JOB" or "url" not in params:
            continue
        if params.get("initiator") == origin or str(params.get("network_isolation_key", "")).startswith(site):
            urls.append(params["url"])
    return urls


class BrowserTests(SiteMixin, unittest.TestCase):
    """Headless Chromium against a running site."""

    def setUp(self):
        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest("needs Debian's chromium at {} (apt-get install chromium)".format(CHROMIUM))
        self.make_ingest(make_settings(NAME="Browser test"), clock=reactor)
        now = time.time()
        insert_rows(
            self.db_path,
            [(stored_time(now - 60 * k), "udp:10.0.0.2", 600 + (k * 37) % 900, 20 + (k % 50) / 10, "office") for k in range(1440)],
        )
        self.store.columns.update(co2="INTEGER", temperature="REAL", box="TEXT")
        root_extra = {b"_leaky": LeakyPage()}
        site = make_site(self.settings, self.ingest, self.store, reactor, extra_children=root_extra)
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "http://127.0.0.1:{}".format(self.port.getHost().port)

    @defer.inlineCallbacks
    def browse(self, path: str, *extra: str):
        base = self.mktemp()
        os.makedirs(base)
        netlog = os.path.join(base, "net.json")
        result = yield threads.deferToThread(chromium, self.url + path, os.path.join(base, "profile"), netlog, *extra)
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        return result, page_requests(netlog, self.url)

    @defer.inlineCallbacks
    def test_dashboard_draws_plot_and_stays_local(self):
        """The DOM holds SVG paths with many points; every request of the page went to the daemon."""
        yield self.store.catch_up()  # rows written by another program are indexed on the maintenance timer
        result, requests = yield self.browse("/", "--dump-dom")
        dom = result.stdout.decode("utf-8")
        paths = re.findall(r'<path class="series" data-source="office" data-column="(\w+)" data-points="(\d+)"[^>]* d="([^"]*)"', dom)
        self.assertEqual([p[0] for p in paths], ["co2", "temperature"], dom[-3000:])
        for column, points, d in paths:
            self.assertGreater(int(points), 100, column)
            self.assertEqual(d.count("L") + d.count("M"), int(points))
        self.assertIn(self.url + "/", requests)
        self.assertIn(self.url + "/static/co2logd.css", requests)
        self.assertEqual([u for u in requests if not u.startswith(self.url + "/")], [])

    @defer.inlineCallbacks
    def test_request_check_catches_external_requests(self):
        """Control: a page loading an image from elsewhere is caught by the same check."""
        _, requests = yield self.browse("/_leaky", "--dump-dom")
        self.assertIn("http://example.invalid/x.png", requests)
