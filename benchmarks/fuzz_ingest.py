"""
The long fuzz run over the ingest entry point (issue 7).

Generates uploads with hypothesis (valid tables in every format, mutated
ones, random bytes, known nasties, bad names, too many rows or columns,
good/wrong/missing checksums) and sends them to ``IngestService.ingest`` on a
real store in a temporary SQLite file, every fifth over the real HTTP site on
127.0.0.1, checking after each one (see :mod:`tests.fuzzing`): only
IngestError escapes, a refused input writes nothing, HTTP never answers 5xx.

    python benchmarks/fuzz_ingest.py                    # 100,000 inputs
    python benchmarks/fuzz_ingest.py --inputs 5000 --http-share 2

Prints the figures: inputs, over HTTP, accepted, rows stored, refusals by
reason, answers by status, seconds, inputs per second.  Exit status 1 and
the (shrunk) input when the contract is broken.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, task  # noqa: E402

from tests.fuzzing import ContractViolation, FuzzHarness, fuzz_in_thread  # noqa: E402


def main(reactor, inputs: int, http_share: int) -> defer.Deferred:
    directory = tempfile.mkdtemp(prefix="co2logd-fuzz-")
    harness = FuzzHarness(reactor, os.path.join(directory, "fuzz.sqlite"))
    harness.start()
    outcome = {}

    def report(figures):
        print("inputs:            {:,}".format(figures["inputs"]))
        print("  over HTTP:       {:,}".format(figures["http"]))
        print("accepted:          {:,} ({:,} rows stored)".format(figures["accepted"], figures["rows"]))
        print("refused (direct):  {:,}".format(sum(figures["refused"].values())))
        for reason, count in figures["refused"].most_common():
            print("  {:<16} {:,}".format(reason, count))
        print("answers by status: " + ", ".join("{}: {:,}".format(k, v) for k, v in sorted(figures["statuses"].items())))
        print("seconds:           {:.1f} ({:.0f} inputs/s)".format(figures["seconds"], figures["inputs"] / figures["seconds"]))
        print("contract:          kept (no 5xx, no exception but IngestError, no write on refusal)")

    def broken(failure):
        failure.trap(ContractViolation)
        print("contract BROKEN after {:,} inputs: {}".format(harness.stats["inputs"], failure.value))
        outcome["failed"] = True

    d = fuzz_in_thread(harness, inputs, http_share=http_share)
    d.addCallbacks(report, broken)
    d.addBoth(lambda _: harness.stop())
    d.addCallback(lambda _: sys.exit(1) if outcome.get("failed") else None)
    return d


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--http-share", type=int, default=5, help="every N-th input goes over HTTP (0: none)")
    args = parser.parse_args()
    task.react(main, [args.inputs, args.http_share])
