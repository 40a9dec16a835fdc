"""
The whole daemon as build_service wires it: HTTP, UDP and OpenSenseMap
forwarding in one process, on real loopback ports and a real SQLite file.
"""

import treq
from twisted.internet import defer, protocol, reactor, task
from twisted.trial import unittest

from co2logd.service import build_service
from co2logd.testing import FakeOpenSenseMap, listen_fake_opensensemap
from co2logd.transports.udp import UDPService
from tests.helpers import http_port_of, make_settings, rows_in

EMAIL, PASSWORD = "lab@example.org", "secret"


def udp_service_of(daemon):
    """The daemon's UDP listener service."""
    return next(child for child in daemon if isinstance(child, UDPService))


class WholeDaemonTests(unittest.TestCase):
    """One upload over HTTP and one over UDP reach the database and the OpenSenseMap."""

    @defer.inlineCallbacks
    def test_http_and_udp_forwarded(self):
        """Rows from both transports are stored, labelled, and forwarded at once (the upload wakes the idle uploader)."""
        api = FakeOpenSenseMap(reactor)
        api.add_user(EMAIL, PASSWORD)
        fake = listen_fake_opensensemap(api, reactor)
        self.addCleanup(fake.stop)
        db = self.mktemp()
        settings = make_settings(
            DB=db, OSEM_UPLOAD=True, OSEM_API=fake.url, OSEM_EMAIL=EMAIL, OSEM_PASSWORD=PASSWORD,
            OSEM_AUTH_CACHE=False, OSEM_REQUEST_CACHE=False, OSEM_POLL_SECONDS=60.0,
            OSEM_REQUESTS_PER_MINUTE=60000.0, OSEM_REQUEST_BURST=100, DEFAULT_LAT=lambda box: 48.5,
            DEFAULT_LON=lambda box: 9.05,
        )
        daemon = build_service(settings, reactor, http=["tcp:0:interface=127.0.0.1"], udp=["udp:0:interface=127.0.0.1"])
        daemon.privilegedStartService()
        daemon.startService()
        self.addCleanup(daemon.stopService)
        http_port = http_port_of(daemon)
        udp_port = udp_service_of(daemon).port

        response = yield treq.post(
            "http://127.0.0.1:{}/upload".format(http_port),
            data=b'{"scd30_co2_ppm": [640, 650], "box": ["lab", "lab"]}',
            headers={"Content-Type": "application/json"}, persistent=False,
        )
        reply = yield treq.json_content(response)
        self.assertEqual(reply, {"saved-in-db": 2, "osem-queued": 2})

        sender = protocol.DatagramProtocol()
        udp = reactor.listenUDP(0, sender, interface="127.0.0.1")
        self.addCleanup(udp.stopListening)
        udp.write(b'{"scd30_co2_ppm": 700, "box": "lab"}', ("127.0.0.1", udp_port))

        for _ in range(200):
            if len(api.measurements) >= 3:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)
        self.assertEqual(sorted(float(m["value"]) for m in api.measurements), [640.0, 650.0, 700.0])
        rows = rows_in(db)
        self.assertEqual([r["transport"] for r in rows], ["http", "http", "udp:127.0.0.1"])
        self.assertEqual(len(api.boxes), 1)
