"""
Where an upload's time goes: the reactor thread against the writer's thread.

    python benchmarks/write_profile.py [--scenario b|c] [--seconds 8] [--clients 8] [--top 12]

Runs co2logd in this process (real SQLite file, real port on 127.0.0.1),
drives it with :mod:`loadgen` (scenario (b) 100-row JSON or (c) 1000-row
CSV of ``run.py``), and prints for the measuring window:

* rows/s stored;
* the CPU seconds of each thread (from ``/proc/self/task``): the reactor
  (HTTP, parsing, ingest) and the database writer, as a share of the
  window; the process can use one core for Python at a time (the GIL), so
  their sum near 100 % means the interpreter lock is the limit;
* seconds the writer spent inside its transactions (``GroupWriter._write_group``)
  and the time of each step of it, from cProfile in that thread, and the
  reactor thread's top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import tempfile
import threading
import time
from typing import Any, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import loadgen  # noqa: E402
from run import SCENARIOS  # noqa: E402
from twisted.internet import reactor  # noqa: E402

from co2logd.service import build_service  # noqa: E402
from co2logd.settings import Settings  # noqa: E402
from co2logd.store.writer import GroupWriter  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def thread_cpu() -> Dict[int, float]:
    """CPU seconds (user + system) of every thread of this process, by native id."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/{}/stat".format(tid)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        out[int(tid)] = (int(fields[11]) + int(fields[12])) / TICKS
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--scenario", default="c", choices=["b", "c"])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--top", type=int, default=12)
    args = parser.parse_args()

    path = os.path.join(tempfile.mkdtemp(prefix="co2logd-profile-"), "profile.sqlite")
    settings = Settings.from_values({"DB": path}, environ={})
    root = build_service(settings, reactor, http=["tcp:0:interface=127.0.0.1"])
    root.bind()
    listener = [child for child in root if hasattr(child, "address")][0]
    port = int(listener.address.rsplit(":", 1)[1])
    root.startService()

    in_group = [0.0]
    writer_profile = cProfile.Profile()
    writer_ids: Dict[str, int] = {}
    original = GroupWriter._write_group

    def profiled(self: Any, connection: Any, group: Any, known: Any) -> Any:
        writer_ids["writer"] = threading.get_native_id()
        began = time.perf_counter()
        writer_profile.enable()
        try:
            return original(self, connection, group, known)
        finally:
            writer_profile.disable()
            in_group[0] += time.perf_counter() - began

    title, body, content_type, rows_per_request = SCENARIOS[args.scenario]
    reactor_profile = cProfile.Profile()
    result: Dict[str, Any] = {}

    def drive() -> None:
        data = loadgen.http_request(port, body, content_type)
        result.update(loadgen.run_http(port, data, args.clients, args.warmup, args.seconds))

    def window() -> None:
        # measured from the end of the warm-up to the end of the run, as loadgen counts
        time.sleep(args.warmup)
        result["cpu_before"] = thread_cpu()
        in_group[0] = 0.0
        GroupWriter._write_group = profiled  # type: ignore[method-assign]
        reactor.callFromThread(reactor_profile.enable)
        time.sleep(args.seconds)
        reactor.callFromThread(reactor_profile.disable)
        GroupWriter._write_group = original  # type: ignore[method-assign]
        result["cpu_after"] = thread_cpu()
        result["in_group"] = in_group[0]

    def run() -> None:
        timer = threading.Thread(target=window)
        timer.start()
        drive()
        timer.join()
        reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(lambda: threading.Thread(target=run).start())
    main_id = threading.get_native_id()
    reactor.run()

    before, after = result["cpu_before"], result["cpu_after"]
    spent = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    seconds = args.seconds
    print("co2logd, scenario ({}) {}: {} clients, {:.0f} s measured".format(args.scenario, title, args.clients, seconds))
    print("  stored {:.0f} rows/s ({:.0f} requests/s)".format(result["req_s"] * rows_per_request, result["req_s"]))
    reactor_cpu = spent.get(main_id, 0.0)
    writer_cpu = spent.get(writer_ids.get("writer", -1), 0.0)
    other = sum(spent.values()) - reactor_cpu - writer_cpu
    print("  CPU of the window: reactor thread {:.0%}, writer thread {:.0%}, other threads {:.0%}, sum {:.0%}".format(
        reactor_cpu / seconds, writer_cpu / seconds, other / seconds, (reactor_cpu + writer_cpu + other) / seconds))
    print("  the writer was inside a transaction {:.0%} of the window".format(result["in_group"] / seconds))
    for name, profile in (("writer thread", writer_profile), ("reactor thread", reactor_profile)):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(args.top)
        lines = [line for line in out.getvalue().splitlines() if line.strip()]
        start = next(i for i, line in enumerate(lines) if "ncalls" in line)
        print("\n  {}: top {} by own time".format(name, args.top))
        for line in lines[start: start + args.top + 1]:
            print("   " + line[:150])


if __name__ == "__main__":
    main()
