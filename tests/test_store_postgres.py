"""The store behaviour suite on the PostgreSQL store (a throw-away PostgreSQL 15, tests/pgserver.py)."""

from typing import Any

from twisted.trial import unittest

from tests import pgserver
from tests.helpers import make_settings
from tests.store_behaviour import StoreBehaviourMixin

SKIP = pgserver.skip_reason()


class PostgresStoreBehaviourTests(StoreBehaviourMixin, unittest.TestCase):
    """Every IStore behaviour, on :class:`co2logd.store.postgres.PostgresStore` (a database of its own per test)."""

    skip = SKIP

    def make_store(self, settings: Any = None) -> Any:
        from co2logd.dburl import parse_db
        from co2logd.store.postgres import PostgresStore

        server = pgserver.shared_server()
        store = PostgresStore.open(parse_db(server.url(server.create_database())), settings or make_settings())
        store.startService()
        self.addCleanup(store.stopService)
        return store

    def write_two_sources(self, store: Any) -> Any:
        """As the mixin's, but box b's text value goes to a text column: PostgreSQL's columns hold one type."""
        from co2logd.store import WriteRequest
        from tests.store_behaviour import at, fixed

        return store.write(WriteRequest(
            ["box", "time", "co2", "note"],
            [("a", at(0), 400, None), ("a", at(60), 401, None), ("a", at(120), 402, None),
             ("b", at(30), 500, None), ("b", at(90), None, "n/a")],
            {"box": str, "time": str, "co2": int, "note": str},
            fixed(),
        ))
