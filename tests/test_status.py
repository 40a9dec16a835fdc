"""The services report to /health and /metrics through the interfaces they declare."""

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from co2logd.listeners import EndpointListener
from co2logd.osem.checks import OsemMisconfigured, OsemProblem
from co2logd.status.health import component_health
from co2logd.status.interfaces import IForwarderStats, IHealthReporter, IListenerStats, ISerialDeviceStats
from co2logd.transports.serial import SerialService
from co2logd.transports.udp import UDPService
from co2logd.testing import FakeSerialDevices
from tests.helpers import make_settings


class DeclaredInterfacesTests(SynchronousTestCase):
    """Each service provides, and really implements, what the checker and the collector ask for."""

    def test_serial(self):
        """A serial service reports health and device statistics; unplugged, it is not ok."""
        devices = FakeSerialDevices()
        service = SerialService("/dev/ttyX", 9600, None, Clock(), make_settings(), port_factory=devices.open)
        self.assertTrue(verifyObject(IHealthReporter, service))
        self.assertTrue(verifyObject(ISerialDeviceStats, service))
        self.assertEqual((service.kind, service.connected), ("serial", False))
        report = component_health(service)
        self.assertEqual((report["kind"], report["ok"]), ("serial", False))

    def test_udp(self):
        """A UDP service reports health (not listening before it binds) and listener statistics."""
        service = UDPService(0, "127.0.0.1", None, Clock(), make_settings())
        self.assertTrue(verifyObject(IHealthReporter, service))
        self.assertTrue(verifyObject(IListenerStats, service))
        self.assertFalse(ISerialDeviceStats.providedBy(service))
        self.assertEqual(component_health(service), {
            "name": "udp 0:127.0.0.1", "kind": "udp", "ok": False, "reason": "udp 0:127.0.0.1 is not listening",
        })

    def test_http_listener_and_osem_stand_in(self):
        """The HTTP listener and the OpenSenseMap stand-in report health."""
        listener = EndpointListener(None, None, "tcp:0")
        self.assertTrue(verifyObject(IHealthReporter, listener))
        self.assertEqual(component_health(listener)["ok"], False)
        stand_in = OsemMisconfigured(OsemProblem(None, "no credentials"))
        self.assertTrue(verifyObject(IHealthReporter, stand_in))
        self.assertEqual(component_health(stand_in)["reason"], "no credentials")

    def test_uploader(self):
        """The uploader declares its event counters for /metrics."""
        from co2logd.osem.uploader import OsemUploader

        uploader = OsemUploader(make_settings(), None, Clock())
        self.assertTrue(verifyObject(IForwarderStats, uploader))

    def test_other_services_are_not_listed(self):
        """A service that declares nothing is not in /health, whatever attributes it has."""

        class Lookalike:
            name = "http lookalike"
            listening = object()

            def stats(self):
                return {"connected": True}

        self.assertIsNone(component_health(Lookalike()))

    def test_a_failing_report_is_a_reason(self):
        """A health() that raises makes the component not ok, with a reason, instead of breaking /health."""
        listener = EndpointListener(None, None, "tcp:0")
        listener.health = lambda: 1 / 0
        report = component_health(listener)
        self.assertEqual((report["ok"], report["reason"]), (False, "http tcp:0 cannot report its state"))
        self.flushLoggedErrors(ZeroDivisionError)
