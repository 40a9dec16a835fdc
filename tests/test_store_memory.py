"""The store behaviour suite on the in-memory fake."""

from typing import Any

from twisted.trial import unittest

from co2logd.store import StoreBusy, WriteRequest
from co2logd.testing import MemoryStore
from tests.helpers import make_settings
from tests.store_behaviour import StoreBehaviourMixin, fixed


class MemoryStoreBehaviourTests(StoreBehaviourMixin, unittest.TestCase):
    """Every IStore behaviour, on :class:`co2logd.testing.MemoryStore`."""

    def make_store(self, settings: Any = None) -> MemoryStore:
        store = MemoryStore(settings or make_settings())
        store.startService()
        self.addCleanup(store.stopService)
        return store


class MemoryStoreTests(unittest.SynchronousTestCase):
    """What only the fake has: answers without a reactor, and busy on request."""

    def test_busy_on_request(self) -> None:
        """With ``busy`` set, writes fail at once with StoreBusy and are counted."""
        store = MemoryStore(make_settings())
        store.busy = True
        self.failureResultOf(store.write(WriteRequest(["co2"], [(1,)], {"co2": int}, fixed())), StoreBusy)
        self.assertEqual(store.write_stats["busy"], 1)
        store.busy = False
        self.assertEqual(self.successResultOf(store.write(WriteRequest(["co2"], [(1,)], {"co2": int}, fixed()))), 1)
