"""The bookkeeping every listener shares: counters, reject logs, uploads in flight, one reply per outcome."""

from typing import Any, List

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.trial import unittest

from co2logd.errors import IngestError
from co2logd.ingest import Receipt, Upload
from co2logd.ingest.sequence import DUPLICATE, IN_FLIGHT
from co2logd.transports.listener import Listener, reply_for


class HeldIngest:
    """Every upload waits on a Deferred the test fires."""

    def __init__(self):
        self.calls: List[defer.Deferred] = []

    def ingest(self, upload: Upload) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.calls.append(d)
        return d


class ListenerTests(unittest.SynchronousTestCase):
    """Outcomes to replies, counted per source, observers before the answer."""

    def setUp(self):
        self.ingest = HeldIngest()
        self.answers: List[Any] = []
        self.listener = Listener(self.ingest, task.Clock(), Logger(), 60.0, "udp", answer=lambda to, reply: self.answers.append((to, reply)))
        self.seen: List[Any] = []
        self.listener.observers.append(lambda to, reply: self.seen.append((to, reply)))

    def submit(self) -> defer.Deferred:
        self.listener.received("10.0.0.7")
        self.listener.submit(Upload(b"{}", None), "10.0.0.7", ("10.0.0.7", 5))
        return self.ingest.calls[-1]

    def test_stored(self):
        """The receipt (with its number) goes to the observers and the answer; rows are counted; nothing stays in flight."""
        d = self.submit()
        self.assertEqual(self.listener.pending, 1)
        idle = self.listener.idle()
        d.callback(Receipt(2, 1, seq=4))
        self.assertEqual(self.seen, [(("10.0.0.7", 5), {"saved-in-db": 2, "osem-queued": 1, "seq": 4})])
        self.assertEqual(self.answers, self.seen)
        self.assertEqual(self.listener.counters.source("10.0.0.7").as_dict(), {"messages": 1, "rows": 2, "rejects": {}})
        self.successResultOf(idle)

    def test_duplicates(self):
        """A duplicate is answered as one; a copy whose first is still being stored waits for that one's answer."""
        self.submit().callback(Receipt(0, seq=4, duplicate=DUPLICATE))
        self.submit().callback(Receipt(0, seq=4, duplicate=IN_FLIGHT))
        self.assertEqual([reply for _, reply in self.answers], [{"saved-in-db": 0, "duplicate": True, "seq": 4}])

    def test_refused(self):
        """An IngestError is answered with status, reason and its number, and counted by reason."""
        error = IngestError(403, "auth-missing", "no checksum")
        error.seq = 7
        self.submit().errback(error)
        self.assertEqual(self.answers[0][1], {"error": "no checksum", "status": 403, "reason": "auth-missing", "seq": 7})
        self.assertEqual(self.listener.counters.source("10.0.0.7").rejects["auth-missing"], 1)

    def test_ingest_bug_is_an_internal_error(self):
        """Anything else is logged and answered as a 500 internal; the listener goes on."""
        self.submit().errback(RuntimeError("boom"))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual(self.answers[0][1]["reason"], "internal")
        self.assertEqual(self.listener.pending, 0)

    def test_reply_for_a_plain_receipt(self):
        """Without a number the receipt is co2logserver's body alone."""
        self.assertEqual(reply_for(Receipt(1)), {"saved-in-db": 1})
