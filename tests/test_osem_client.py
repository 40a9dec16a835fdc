"""
The OpenSenseMap client contract (``tests/osem_client_contract.py``) on the
real client over loopback and on the in-memory fake the uploader tests use.
"""

from __future__ import annotations

import collections
import time

from twisted.internet import defer, reactor, task
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from co2logd.osem.client import OsemClient, RateLimited, ServerTrouble
from co2logd.testing import FakeOpenSenseMap, FakeOsemClient, listen_fake_opensensemap
from tests.osem_client_contract import OsemClientContract, contract_settings

EMAIL, PASSWORD = "lab@example.org", "pw"


class RealClientContractTests(OsemClientContract, TestCase):
    """OsemClient (sensemapi, on a thread) against the fake API on a loopback port."""

    def setUp(self):
        self.api = FakeOpenSenseMap(reactor)
        self.api.add_user(EMAIL, PASSWORD, name="lab")
        server = listen_fake_opensensemap(self.api, reactor)
        self.addCleanup(server.stop)
        self.settings = contract_settings(OSEM_API=server.url, OSEM_EMAIL=EMAIL, OSEM_PASSWORD=PASSWORD)
        self.client = OsemClient(self.settings)

    def call(self, f, *args):
        """The blocking call on a thread, as the uploader makes it."""
        return deferToThread(f, *args)

    def now(self) -> float:
        """The fake API's clock is the reactor's: the time of day."""
        return time.time()

    def inject(self, status, retry_after=None):
        """The API answers the next request with ``status``."""
        self.api.inject(status, retry_after=retry_after)

    def refuse_credentials(self):
        """The account's password was changed on the server."""
        self.api.users[EMAIL]["password"] = "changed"

    def remove_box(self, name):
        """The box is deleted on the server."""
        box = self.api.box_named(name)
        del self.api.boxes[box["_id"]]
        self.api.users[EMAIL]["boxes"].remove(box["_id"])

    def delivered(self):
        """(box name, sensor title, value, time) the API accepted."""
        titles = {s["_id"]: (b["name"], s["title"]) for b in self.api.boxes.values() for s in b["sensors"]}
        return collections.Counter(
            titles[m["sensor"]] + (m["value"], round(m["createdAt"])) for m in self.api.measurements
        )


class FakeClientContractTests(OsemClientContract, TestCase):
    """FakeOsemClient in memory, its "now" on a task.Clock."""

    def setUp(self):
        self.clock = task.Clock()
        self.clock.advance(1_700_000_000)
        self.settings = contract_settings()
        self.client = FakeOsemClient(self.settings, self.clock)

    def call(self, f, *args):
        """The call, answered at once."""
        return defer.maybeDeferred(f, *args)

    def now(self) -> float:
        """The fake's clock."""
        return self.clock.seconds()

    def inject(self, status, retry_after=None):
        """The error the real client raises for that status, on the next call."""
        if status == 429:
            self.client.fail_next(RateLimited(float(retry_after) if retry_after else None))
        else:
            self.client.fail_next(ServerTrouble(status, "injected failure"))

    def refuse_credentials(self):
        """The password was changed on the server."""
        self.client.credentials_valid = False

    def remove_box(self, name):
        """The box is deleted on the server."""
        self.client.remove_box(name)

    def delivered(self):
        """(box name, sensor title, value, time) the fake accepted."""
        return collections.Counter((name, title, value, round(at)) for name, title, value, at in self.client.measurements)
