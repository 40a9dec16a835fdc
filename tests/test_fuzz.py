"""
A short fuzz run over the ingest entry point (the long one is
``benchmarks/fuzz_ingest.py``): generated uploads against a real store,
directly and over HTTP, checked by :class:`tests.fuzzing.FuzzHarness`.
"""

from __future__ import annotations

import os

from twisted.internet import defer, reactor
from twisted.trial import unittest

from tests.fuzzing import FuzzHarness, fuzz_in_thread

# CO2LOGD_FUZZ_EXAMPLES=5000 (or benchmarks/fuzz_ingest.py) for a long run
EXAMPLES = int(os.environ.get("CO2LOGD_FUZZ_EXAMPLES", "100"))


class IngestFuzzTests(unittest.TestCase):
    """No exception but IngestError escapes, nothing refused is written, HTTP never answers 5xx."""

    @defer.inlineCallbacks
    def test_generated_uploads_keep_the_contract(self):
        """A hundred generated uploads, one in five over HTTP, keep every rule."""
        harness = FuzzHarness(reactor, self.mktemp())
        harness.start()
        self.addCleanup(harness.stop)
        figures = yield fuzz_in_thread(harness, EXAMPLES)
        self.assertEqual(figures["inputs"], EXAMPLES)
        # the generator reaches both sides of the contract, and HTTP
        self.assertGreater(figures["accepted"], 0, figures)
        self.assertGreater(sum(figures["refused"].values()), 0, figures)
        self.assertGreater(figures["http"], 0, figures)
