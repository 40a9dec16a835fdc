"""
The dashboard as a phone shows it: headless Chromium (Debian's ``chromium``)
loads it at 390 CSS px width from a running site holding a day of data from
two sources, each sent in one upload with a ``time`` column.

The page itself has no script, so the test site serves a same-origin probe
page beside it: the dashboard in a 390 px wide iframe (its viewport is then
390 px wide, media queries included) and a script that, once the frame has
loaded, measures what it rendered: every axis label's and legend entry's
font size as drawn (SVG text scaled by its screen transform, as an inline
SVG shrinks with the page), the series paths with their computed stroke
colours, the legend entries and the latest-values rows.  (HTML text is
scaled by the ratio of its box on screen to its layout box, which catches
CSS transforms.)  ``--dump-dom``
prints the probe page with the measurements in it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from typing import Any, Dict

import treq
from twisted.internet import defer, reactor, threads
from twisted.trial import unittest
from twisted.web.resource import Resource

from co2logd.web.site import make_site
from tests.helpers import SiteMixin, make_settings
from tests.test_browser import CHROMIUM

PHONE_WIDTH = 390
MIN_TEXT_PX = 10.0

PROBE = """<!DOCTYPE html><html><head><meta charset="utf-8"><script>
function probe(frame) {
  var w = frame.contentWindow, d = frame.contentDocument, out = {width: w.innerWidth};
  function shown(el) { return el.getClientRects().length > 0 && el.textContent.trim() !== ""; }
  function drawn(el) {
    // the font size in CSS px as rendered: SVG text is scaled with its viewBox,
    // HTML text by any CSS transform (its box on screen against its layout box)
    var px = parseFloat(w.getComputedStyle(el).fontSize), m = el.getScreenCTM ? el.getScreenCTM() : null;
    if (m) { px *= Math.sqrt(Math.abs(m.a * m.d - m.b * m.c)); }
    else if (el.offsetHeight > 0) { px *= el.getBoundingClientRect().height / el.offsetHeight; }
    return px;
  }
  function texts(selector) {
    var found = [];
    d.querySelectorAll(selector).forEach(function (el) {
      var inner = el.querySelectorAll("text, tspan");
      (inner.length ? Array.prototype.slice.call(inner) : [el]).forEach(function (t) {
        if (shown(t)) { found.push({text: t.textContent.trim().slice(0, 40), px: drawn(t)}); }
      });
    });
    return found;
  }
  out.axis = texts(".axis");
  out.legend = texts(".legend-entry");
  out.svg_text = texts("svg text");  // all of it, to show in a failure
  out.series = Array.prototype.map.call(d.querySelectorAll("path.series[data-source]"), function (p) {
    return {source: p.getAttribute("data-source"), stroke: w.getComputedStyle(p).stroke,
            length: (p.getAttribute("d") || "").length};
  });
  out.legend_sources = Array.prototype.map.call(d.querySelectorAll(".legend-entry[data-source]"), function (e) {
    return e.getAttribute("data-source");
  });
  out.latest_sources = Array.prototype.map.call(d.querySelectorAll("#latest tr[data-source]"), function (e) {
    return e.getAttribute("data-source");
  });
  out.overflow = d.documentElement.scrollWidth - w.innerWidth;
  document.getElementById("result").textContent = JSON.stringify(out);
}
</script></head><body style="margin:0">
<iframe src="/" style="width:%dpx;height:2400px;border:0" onload="probe(this)"></iframe>
<pre id="result"></pre>
</body></html>""" % PHONE_WIDTH


class ProbePage(Resource):
    """The probe: the dashboard in a phone-wide frame and the script measuring it."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
        return PROBE.encode("utf-8")


def day_upload(end: float, box: str, base: int) -> bytes:
    """A day of minutely readings from one box, in one upload with a ``time`` column (UNIX seconds)."""
    times = [int(end) - 60 * k for k in range(1440, 0, -1)]
    return json.dumps({
        "time": times,
        "co2": [base + int(300 * math.sin(t / 7000.0)) for t in times],
        "temperature": [round(20 + 2 * math.sin(t / 9000.0), 2) for t in times],
        "box": [box] * len(times),
    }).encode()


def run_probe(url: str, profile: str) -> Dict[str, Any]:
    """Load the probe page in headless Chromium (blocking: call it in a thread) and return its measurements."""
    result = subprocess.run(
        [
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--hide-scrollbars",
            "--user-data-dir=" + profile, "--window-size=800,2600", "--dump-dom", url,
        ],
        capture_output=True,
        timeout=90,
    )
    if result.returncode != 0:
        raise AssertionError("chromium failed: " + result.stderr.decode("utf-8", "replace")[-2000:])
    found = re.search(r'<pre id="result">(.*?)</pre>', result.stdout.decode("utf-8"), re.S)
    if not found or not found.group(1).strip():
        raise AssertionError("the probe did not run: " + result.stdout.decode("utf-8", "replace")[-2000:])
    return json.loads(found.group(1).replace("&amp;", "&").replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))


class PhoneWidthTests(SiteMixin, unittest.TestCase):
    """The dashboard at 390 px with a day of data from two boxes, measured in headless Chromium."""

    @defer.inlineCallbacks
    def setUp(self):
        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest("needs Debian's chromium at {} (apt-get install chromium)".format(CHROMIUM))
        self.make_ingest(make_settings(NAME="Phone test", DASHBOARD_REFRESH_SECONDS=0), clock=reactor)
        site = make_site(self.settings, self.ingest, self.store, reactor, extra_children={b"_phone": ProbePage()})
        self.port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "http://127.0.0.1:{}".format(self.port.getHost().port)
        now = time.time()
        for box, base in (("office", 700), ("kitchen", 500)):
            response = yield treq.post(self.url + "/upload", data=day_upload(now, box, base),
                                       headers={"Content-Type": "application/json"}, persistent=False)
            body = yield treq.json_content(response)
            self.assertEqual((response.code, body.get("saved-in-db")), (200, 1440), body)

    @defer.inlineCallbacks
    def probe(self) -> defer.Deferred:
        profile = self.mktemp()
        os.makedirs(profile)
        measured = yield threads.deferToThread(run_probe, self.url + "/_phone", profile)
        self.assertEqual(measured["width"], PHONE_WIDTH)
        return measured

    @defer.inlineCallbacks
    def test_text_readable_at_phone_width(self):
        """Every axis label and legend entry is drawn at least 10 CSS px tall at 390 px width."""
        measured = yield self.probe()
        self.assertGreaterEqual(len(measured["axis"]), 4, "axis labels: {}; all SVG text: {}".format(
            measured["axis"], measured["svg_text"]))
        self.assertGreaterEqual(len(measured["legend"]), 2, measured["legend"])
        small = [t for t in measured["axis"] + measured["legend"] if t["px"] < MIN_TEXT_PX - 0.01]
        self.assertEqual(small, [], "text drawn smaller than {} px at {} px width".format(MIN_TEXT_PX, PHONE_WIDTH))

    @defer.inlineCallbacks
    def test_two_sources_two_lines_and_legend(self):
        """Two boxes give two series with distinct stroke colours, two legend entries and two latest rows."""
        measured = yield self.probe()
        strokes: Dict[str, set] = {}
        for path in measured["series"]:
            self.assertGreater(path["length"], 100, path)
            strokes.setdefault(path["source"], set()).add(path["stroke"])
        self.assertEqual(len(strokes), 2, measured["series"])
        first, second = strokes.values()
        self.assertFalse(first & second, "both sources are drawn in {}".format(first & second))
        self.assertEqual(sorted(set(measured["legend_sources"])), sorted(strokes), measured["legend_sources"])
        self.assertEqual(sorted(set(measured["latest_sources"])), sorted(strokes), measured["latest_sources"])
