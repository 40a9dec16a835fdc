"""The behaviour every transport shares, run over HTTP (UDP and serial run it too)."""

import treq
from twisted.internet import defer, reactor
from twisted.trial import unittest

from co2logd import payloads
from co2logd.web.site import make_site
from tests.transport_behaviour import TransportBehaviourMixin

MEDIA_TYPES = {
    "json": "application/json",
    "csv": "text/csv",
    "form": "application/x-www-form-urlencoded",
    "msgpack": "application/msgpack",
}


class HTTPBehaviourTests(TransportBehaviourMixin, unittest.TestCase):
    """The shared transport behaviour over a real HTTP port."""

    transport_label = "http"

    def start_transport(self, ingest, settings):
        site = make_site(settings, ingest, ingest.store, reactor)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = "http://127.0.0.1:{}/upload".format(port.getHost().port)
        return defer.succeed(None)

    @defer.inlineCallbacks
    def send(self, payload, headers=()):
        """POST the payload; a device always names its Content-Type, so one is added if missing."""
        headers = dict(headers)
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = MEDIA_TYPES[payloads.detect_format(payload)]
        response = yield treq.post(self.url, data=payload, headers=headers, persistent=False)
        outcome = yield treq.json_content(response)
        if response.code != 200:
            outcome["status"] = response.code
        return outcome
