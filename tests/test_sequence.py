"""Per-node sequence numbers: duplicates, losses, late arrivals, restarts."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial import unittest

from co2logd.ingest.sequence import DUPLICATE, IN_FLIGHT, NEW, SequenceTracker, sequence_number


class SequenceTrackerTests(unittest.TestCase):
    """The bookkeeping behind SEQUENCE_FIELD."""

    def setUp(self):
        self.clock = Clock()
        self.tracker = SequenceTracker(self.clock, window=8, memory_seconds=100)

    def store(self, node, seq):
        verdict = self.tracker.begin(node, seq)
        if verdict == NEW:
            self.tracker.done(node, seq, stored=True)
        return verdict

    def test_repeat_is_a_duplicate(self):
        """The same number twice: stored once."""
        self.assertEqual([self.store("n", 1), self.store("n", 1)], [NEW, DUPLICATE])

    def test_repeat_while_in_flight(self):
        """A retry arriving while the first copy is being stored is held back."""
        self.assertEqual(self.tracker.begin("n", 5), NEW)
        self.assertEqual(self.tracker.begin("n", 5), IN_FLIGHT)

    def test_failed_upload_can_be_retried(self):
        """A number whose upload failed is not remembered."""
        self.tracker.begin("n", 5)
        self.tracker.done("n", 5, stored=False)
        self.assertEqual(self.tracker.begin("n", 5), NEW)

    def test_gaps_are_lost_and_late_arrivals_found(self):
        """1, 4 → two lost; 2 arrives late → one lost."""
        for seq in (1, 4, 2):
            self.store("n", seq)
        state = self.tracker.nodes["n"]
        self.assertEqual((state.lost, state.last, state.stored), (1, 4, 3))

    def test_restart_far_below(self):
        """A number far below the highest seen means the node started counting again."""
        for seq in (100, 101, 0, 1):
            self.assertEqual(self.store("n", seq), NEW)
        state = self.tracker.nodes["n"]
        self.assertEqual((state.restarts, state.lost, state.last), (1, 0, 1))

    def test_numbers_are_forgotten_after_memory_seconds(self):
        """A node that reboots to 0 after a while is not taken for a retry."""
        self.store("n", 0)
        self.clock.advance(101)
        self.assertEqual(self.store("n", 0), NEW)

    def test_nodes_are_independent_and_bounded(self):
        """Each node has its own numbers; the least recently used node goes first."""
        tracker = SequenceTracker(self.clock, max_nodes=2)
        for node in ("a", "b", "c"):
            tracker.begin(node, 1)
        self.assertEqual(list(tracker.nodes), ["b", "c"])


class SequenceNumberTests(unittest.TestCase):
    """Reading the number out of a parsed table."""

    def test_values(self):
        """Whole numbers (also as text or float) count; anything else is no number."""
        self.assertEqual(sequence_number({"Seq": [None, 7]}, "seq"), 7)
        self.assertEqual(sequence_number({"seq": ["12"]}, "seq"), 12)
        self.assertEqual(sequence_number({"seq": [3.0]}, "seq"), 3)
        self.assertIsNone(sequence_number({"seq": ["x"]}, "seq"))
        self.assertIsNone(sequence_number({"seq": [True]}, "seq"))
        self.assertIsNone(sequence_number({"co2": [1]}, "seq"))
