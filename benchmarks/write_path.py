"""
What a single-row write costs the writer (issue 10: the measurement-time side table and the rollup fold).

    python benchmarks/write_path.py [--rows 1000] [--synchronous NORMAL|FULL] [--repeat 3]

Opens a fresh store on a temporary file (in-process, real SQLite, the
reactor running) and writes ``--rows`` single-row uploads one after another
through :meth:`co2logd.store.Store.write`, with the rollups of ``co2`` current
(so each write also indexes its row and folds it into the rollups).  Prints
the best of ``--repeat`` runs in ms per write.  Run it in two checkouts to
compare (``PYTHONPATH=<checkout> python <checkout>/benchmarks/write_path.py``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.internet import defer, reactor  # noqa: E402

from co2logd.settings import Settings  # noqa: E402
from co2logd.store import Store, WriteRequest  # noqa: E402


@defer.inlineCallbacks
def one_run(rows: int, synchronous: str) -> defer.Deferred:
    """ms per sequential single-row write on a fresh store."""
    path = os.path.join(tempfile.mkdtemp(), "write.sqlite")
    store = Store.open(path, Settings.from_values({"DB_SYNCHRONOUS": synchronous}, environ={}))
    store.startService()
    columns = ["time_upload_utc", "transport", "co2", "box", "time"]
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(" ")
    yield store.write(WriteRequest(columns, [[now, "http", 1, "a", now]], {"co2": int, "box": str, "time": datetime.datetime}))
    if hasattr(store, "want_rollups"):
        store.want_rollups(["co2"])
        yield store.catch_up()
    start = time.perf_counter()
    for i in range(rows):
        yield store.write(WriteRequest(columns, [[now, "http", i, "a", now]], {}))
    elapsed = time.perf_counter() - start
    yield store.stopService()
    return elapsed / rows * 1000


@defer.inlineCallbacks
def main(args) -> defer.Deferred:
    results = []
    for _ in range(args.repeat):
        results.append((yield one_run(args.rows, args.synchronous)))
    print("single-row writes, synchronous={}: best {:.2f} ms, runs {}".format(
        args.synchronous, min(results), ", ".join("{:.2f}".format(r) for r in results)))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--synchronous", default="NORMAL")
    parser.add_argument("--repeat", type=int, default=3)
    arguments = parser.parse_args()
    reactor.callWhenRunning(lambda: main(arguments).addBoth(lambda r: (reactor.stop(), r)[1]))
    reactor.run()
