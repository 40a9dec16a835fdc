"""
The behaviour every transport shares, run over HTTP (UDP and serial run it
too): in memory through treq's ``StubTreq`` on the site's resource tree, and
once over a real port.
"""

import treq
from treq.testing import StubTreq
from twisted.internet import defer, reactor, task
from twisted.python.failure import Failure
from twisted.trial import unittest

from co2logd import payloads
from co2logd.web.site import make_root, make_site
from tests.transport_behaviour import TransportBehaviourMixin, TransportHarness

MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "form": "application/x-www-form-urlencoded",
    "msgpack": "application/msgpack",
}


def with_content_type(payload, headers):
    """The headers, plus the Content-Type a device always names when they lack one."""
    headers = dict(headers)
    if not any(name.lower() == "content-type" for name in headers):
        headers["Content-Type"] = MEDIA_TYPES[payloads.detect_format(payload)]
    return headers


def outcome_of(code, body):
    """The receipt, or the JSON error with the HTTP status added."""
    if code != 200:
        body["status"] = code
    return body


class HTTPBehaviourTests(TransportBehaviourMixin, unittest.TestCase):
    """The shared transport behaviour over HTTP in memory (StubTreq: no port, no socket)."""

    transport_label = "http"

    def start_transport(self, ingest, settings):
        self.http = StubTreq(make_root(settings, ingest, ingest.store, reactor))
        return defer.succeed(None)

    @defer.inlineCallbacks
    def answered(self, d):
        """The result of ``d``, pumping the in-memory connection while the store answers from its thread."""
        outcome: list = []
        d.addBoth(outcome.append)
        while not outcome:
            self.http.flush()
            yield task.deferLater(reactor, 0.001, lambda: None)
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    @defer.inlineCallbacks
    def send(self, payload, headers=()):
        """POST the payload; a device always names its Content-Type, so one is added if missing."""
        response = yield self.answered(
            self.http.post("http://co2logd/upload", data=payload, headers=with_content_type(payload, headers))
        )
        body = yield self.answered(response.json())
        return outcome_of(response.code, body)


class HTTPSocketTests(TransportHarness, unittest.TestCase):
    """The one HTTP test over a real port: the site as the daemon serves it (guards, body bound, access log)."""

    transport_label = "http"

    def start_transport(self, ingest, settings):
        site = make_site(settings, ingest, ingest.store, reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = "http://127.0.0.1:{}/upload".format(port.getHost().port)
        return defer.succeed(None)

    @defer.inlineCallbacks
    def send(self, payload, headers=()):
        """POST the payload over the socket."""
        response = yield treq.post(self.url, data=payload, headers=with_content_type(payload, headers), persistent=False)
        body = yield treq.json_content(response)
        return outcome_of(response.code, body)

    @defer.inlineCallbacks
    def test_uploads_over_a_real_port_are_stored(self):
        """A JSON table and a CSV table sent over 127.0.0.1 are stored, labelled http; a bad one is refused with 400."""
        yield self.start()
        outcome = yield self.send(b'{"co2": [400, 410]}')
        self.assertEqual(outcome, {"saved-in-db": 2})
        outcome = yield self.send(b"co2\n420")
        self.assertEqual(outcome, {"saved-in-db": 1})
        outcome = yield self.send(b"{not json", [("Content-Type", "application/json")])
        self.assertEqual(outcome["status"], 400)
        rows = yield self.rows()
        self.assertEqual([(r[0], r[1]) for r in rows], [(400, "http"), (410, "http"), (420, "http")])
