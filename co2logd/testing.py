"""
Verified fakes shipped with co2logd, for its own tests and for anyone who
builds on it.  Each one is exercised by the suite against the real thing's
interface.

* :class:`FakeOpenSenseMap` / :func:`listen_fake_opensensemap`: the
  OpenSenseMap API as the ``sensemapi`` client sees it, as a twisted.web
  resource on loopback (checked with the real client in
  ``tests/test_osem_fake.py``).
* :class:`FakeSerialDevices`: a serial port factory for
  :class:`co2logd.transports.serial.SerialService` without a device
  (checked beside real pseudo-terminals in ``tests/test_serial.py``).

The store needs no fake: :meth:`co2logd.store.Store.open` on a temporary
file is the real thing and fast enough for tests.
"""

from co2logd.osem.fake import FakeOpenSenseMap
from co2logd.osem.fake import listen as listen_fake_opensensemap
from co2logd.transports.testing import FakeSerialDevices, FakeSerialPort

__all__ = ["FakeOpenSenseMap", "listen_fake_opensensemap", "FakeSerialDevices", "FakeSerialPort"]
