"""
Readers take their turn (issue 12, finding 8): dashboard pages and plots are
served at most ``VIEWS_PER_SECOND`` a second, all clients together; views
beyond that wait for their slot, and past ``VIEWS_MAX_WAIT_SECONDS`` are
refused with a 503 ``busy``, while uploads are answered at once.
"""

from __future__ import annotations

import json

from twisted.internet import defer, reactor, task
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.trial import unittest

from co2logd.web.pacing import ViewPacer
from tests.helpers import SiteMixin, make_settings


class ViewPacerTests(unittest.TestCase):
    """Evenly spaced slots on the clock."""

    def test_views_within_the_rate_run_at_once(self):
        """Views a slot apart never wait."""
        clock = task.Clock()
        pacer = ViewPacer(clock, rate=4, max_wait=1)
        for _ in range(3):
            self.assertEqual(pacer.admit(), 0)
            clock.advance(0.25)

    def test_a_burst_is_spread_over_slots(self):
        """Views arriving together wait 0, 1/rate, 2/rate... seconds."""
        pacer = ViewPacer(task.Clock(), rate=4, max_wait=1)
        self.assertEqual([pacer.admit() for _ in range(5)], [0, 0.25, 0.5, 0.75, 1.0])

    def test_a_view_that_would_wait_too_long_is_refused_and_takes_no_slot(self):
        """Past ``max_wait`` admit says None, and the next view's slot is unchanged."""
        clock = task.Clock()
        pacer = ViewPacer(clock, rate=2, max_wait=1)
        self.assertEqual([pacer.admit() for _ in range(3)], [0, 0.5, 1.0])
        self.assertIsNone(pacer.admit())
        clock.advance(0.5)
        self.assertEqual(pacer.admit(), 1.0)

    def test_rate_zero_admits_everything(self):
        """``VIEWS_PER_SECOND = 0`` turns pacing off."""
        pacer = ViewPacer(task.Clock(), rate=0, max_wait=0)
        self.assertEqual({pacer.admit() for _ in range(100)}, {0})


class PacedViewsOverHTTPTests(SiteMixin, unittest.TestCase):
    """A burst of dashboard and plot views against a real port."""

    @defer.inlineCallbacks
    def test_a_burst_of_views_waits_its_turn_and_the_rest_is_busy(self):
        """
        With 1 view/s and 1 s of waiting allowed, 6 views sent together: 2
        are served (the second in the next slot), 4 are refused at once with
        503 ``busy`` and Retry-After; an upload sent behind the burst is
        stored before the waiting view is answered.  (Slots of a whole
        second keep the burst "together" on a busy machine; the slot
        arithmetic itself is checked on a task.Clock above.)
        """
        self.start_site(make_settings(VIEWS_PER_SECOND=1, VIEWS_MAX_WAIT_SECONDS=1))
        code, _ = yield self.post(b'{"co2": [500]}', "application/json")
        self.assertEqual(code, 200)

        finished = {}  # name -> (order of the answer, result)

        def noted(d, name):
            return d.addCallback(lambda result: finished.setdefault(name, (len(finished), result)))

        paths = ["/", "/plot", "/", "/plot", "/", "/plot"]
        views = [noted(self.get(path), i) for i, path in enumerate(paths)]
        upload = noted(self.post(b'{"co2": [600]}', "application/json"), "upload")
        yield defer.gatherResults(views + [upload])

        codes = sorted(finished[i][1][0] for i in range(len(paths)))
        self.assertEqual(codes, [200, 200, 503, 503, 503, 503])
        busy = [finished[i][1] for i in range(len(paths)) if finished[i][1][0] == 503]
        for _, headers, body in busy:
            self.assertEqual(json.loads(body)["reason"], "busy")
            self.assertEqual(headers.getRawHeaders("retry-after"), ["1"])
        last_view = max(finished[i][0] for i in range(len(paths)) if finished[i][1][0] == 200)
        self.assertEqual(finished["upload"][1], (200, {"saved-in-db": 1}))
        self.assertLess(finished["upload"][0], last_view)

    @defer.inlineCallbacks
    def test_a_client_gone_while_waiting_leaves_no_error(self):
        """A view whose client hangs up before its slot logs no error, and the site keeps serving."""
        self.start_site(make_settings(VIEWS_PER_SECOND=2, VIEWS_MAX_WAIT_SECONDS=5))
        first = self.get("/plot")
        endpoint = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port.getHost().port)
        impatient = yield connectProtocol(endpoint, Protocol())
        impatient.transport.write(b"GET /plot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        yield task.deferLater(reactor, 0.1, lambda: None)  # its slot is 0.5 s away
        impatient.transport.loseConnection()
        code, _, _ = yield first
        self.assertEqual(code, 200)
        yield task.deferLater(reactor, 0.6, lambda: None)  # past the slot it gave up
        code, _, _ = yield self.get("/plot")
        self.assertEqual(code, 200)
