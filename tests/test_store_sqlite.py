"""The store behaviour suite on the SQLite store (a real file through adbapi)."""

from typing import Any

from twisted.trial import unittest

from co2logd.store import Store
from tests.helpers import make_settings
from tests.store_behaviour import StoreBehaviourMixin


class SQLiteStoreBehaviourTests(StoreBehaviourMixin, unittest.TestCase):
    """Every IStore behaviour, on :class:`co2logd.store.Store`."""

    def make_store(self, settings: Any = None) -> Store:
        store = Store.open(self.mktemp(), settings or make_settings())
        store.startService()
        self.addCleanup(store.stopService)
        return store
