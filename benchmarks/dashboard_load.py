"""
Do dashboard readers slow uploads down?  (issue 12, finding 8)

    python benchmarks/dashboard_load.py        # from the repository root, in co2logd's environment

Starts ``python -m co2logd`` on a real port and a fresh SQLite file in a
temporary directory, uploads a day of 1 Hz readings from two boxes (one
upload per box, with a ``time`` column) so the dashboard has something to
draw, then measures with :mod:`loadgen`:

  (1) single-row JSON uploads from ``--uploaders`` keep-alive clients, alone;
  (2) the same while ``--pollers`` other clients load the dashboard ``GET /``
      back to back (each one keep-alive connection, in its own process);
  (3) what one dashboard view writes: the daemon is restarted under
      ``strace -f -e trace=fsync,fdatasync`` (when strace is installed);
      ``--views`` single-row uploads one after another, then as many
      (upload, view) pairs; the fsyncs beyond the uploads' own are the
      views' (or a maintenance timer's while they ran), and ``PRAGMA
      data_version`` read from another connection before and after each
      view tells during how many views the database changed; then as many
      views alone, with no new rows for a timer to fold in: what remains is
      the views' own writes.

It prints upload rates and latencies, dashboard views/s, the ratio (2)/(1)
(target >= 80%) and the writes per view (target: none).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import shutil
import signal
import sqlite3
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
from run import Server  # noqa: E402

STRACE = shutil.which("strace")
SINGLE_ROW = b'{"co2": [700], "temperature": [21.5], "box": ["bench"]}'


def day_upload(box: str, end: float, seconds: int, phase: float) -> bytes:
    """A day (``seconds`` rows, 1 Hz, ending at ``end``) of one box's readings in co2logserver's columns format."""
    times = [int(end) - seconds + i for i in range(seconds)]
    return json.dumps(
        {
            "time": times,
            "co2": [int(650 + 350 * math.sin(t / 5400 + phase)) for t in times],
            "temperature": [round(21 + 2 * math.sin(t / 9000 + phase), 2) for t in times],
            "box": [box] * seconds,
        },
        separators=(",", ":"),
    ).encode()


def post(port: int, body: bytes) -> Dict[str, Any]:
    request = urllib.request.Request(
        "http://127.0.0.1:{}/upload".format(port), data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.load(response)


def get(port: int, path: str) -> bytes:
    with urllib.request.urlopen("http://127.0.0.1:{}{}".format(port, path), timeout=120) as response:
        assert response.status == 200, response.status
        return response.read()


def _poller(port: int, path: str, start_at: float, stop_at: float, results) -> None:
    """Load ``path`` back to back on one keep-alive connection; report views done and their latencies."""
    conn = loadgen.Connection(port, 120)
    data = "GET {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\n\r\n".format(path, port).encode("ascii")
    views, failed, latencies = 0, 0, []
    while time.monotonic() < start_at:
        time.sleep(0.001)
    while time.monotonic() < stop_at:
        t0 = time.perf_counter()
        try:
            status, _ = conn.request(data)
        except (OSError, EOFError, ValueError):
            conn.close()
            failed += 1
            time.sleep(0.01)
            continue
        latencies.append(time.perf_counter() - t0)
        if status == 200:
            views += 1
        else:
            failed += 1
    conn.close()
    results.put({"views": views, "failed": failed, "latencies": latencies})


class Pollers:
    """``n`` processes loading the dashboard until stopped."""

    def __init__(self, port: int, n: int, seconds: float, path: str = "/"):
        ctx = multiprocessing.get_context("fork")
        self.results = ctx.Queue()
        self.start_at = time.monotonic() + 0.2
        self.stop_at = self.start_at + seconds
        self.processes = [
            ctx.Process(target=_poller, args=(port, path, self.start_at, self.stop_at, self.results)) for _ in range(n)
        ]
        for p in self.processes:
            p.start()

    def collect(self) -> Dict[str, Any]:
        collected = [self.results.get(timeout=self.stop_at - time.monotonic() + 180) for _ in self.processes]
        for p in self.processes:
            p.join()
        latencies = sorted(x for r in collected for x in r["latencies"])
        seconds = self.stop_at - self.start_at
        return {
            "views": sum(r["views"] for r in collected),
            "views_s": sum(r["views"] for r in collected) / seconds,
            "failed": sum(r["failed"] for r in collected),
            "p50_ms": loadgen._percentile(latencies, 0.5) * 1000,
        }


class Traced(Server):
    """The daemon run by strace: stopping it signals the daemon (strace would detach and leave it running)."""

    def stop(self) -> None:
        if self.process.poll() is None:
            with open("/proc/{}/task/{}/children".format(self.process.pid, self.process.pid)) as f:
                for child in f.read().split():
                    os.kill(int(child), signal.SIGTERM)
        super().stop()


def start_daemon(work: str, db: str, strace_log: Optional[str] = None) -> Server:
    argv = [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", db]
    if strace_log:
        argv = [STRACE, "-f", "-qq", "--seccomp-bpf", "-ttt", "-e", "trace=fsync,fdatasync", "-e", "signal=none",
                "-o", strace_log] + argv
        return Traced("co2logd", argv, work, {"PYTHONPATH": REPO}, os.path.join(work, "co2logd.log"))
    return Server("co2logd", argv, work, {"PYTHONPATH": REPO}, os.path.join(work, "co2logd.log"))


def fill(server: Server, rows: int) -> None:
    """``rows`` rows per box for two boxes, each in one upload with a ``time`` column."""
    end = time.time()
    for box, phase in (("office", 0.0), ("kitchen", 1.7)):
        receipt = post(server.port, day_upload(box, end, rows, phase))
        assert receipt["saved-in-db"] == rows, receipt


def upload_phase(server: Server, args, pollers: int) -> Dict[str, Any]:
    data = loadgen.http_request(server.port, SINGLE_ROW, "application/json")
    polling = Pollers(server.port, pollers, args.warmup + args.duration + 0.5) if pollers else None
    r = loadgen.run_http(server.port, data, args.uploaders, args.warmup, args.duration)
    if polling:
        r["dashboard"] = polling.collect()
    return r


def data_version(connection: sqlite3.Connection) -> int:
    return connection.execute("PRAGMA data_version").fetchone()[0]


def _count_fsyncs(log: str, start: float, end: float) -> int:
    fsyncs = 0
    with open(log) as f:
        for line in f:
            parts = line.split(None, 2)
            if len(parts) == 3 and ("fsync(" in parts[2] or "fdatasync(" in parts[2]) and start <= float(parts[1]) <= end:
                fsyncs += 1
    return fsyncs


def writes_per_view(work: str, db: str, views: int) -> Dict[str, Any]:
    """
    What a view writes: ``views`` single-row uploads one after another, then
    as many (upload, view) pairs, each view starting after its upload's
    receipt (so there are always new rows a view could roll up).  fsyncs of
    the second part beyond the first are the views' (under strace);
    ``PRAGMA data_version`` around each view says whether it committed.
    """
    log = os.path.join(work, "strace.txt") if STRACE else None
    server = start_daemon(work, db, log)
    try:
        get(server.port, "/")  # the first view after a start may catch up on what the fill left
        time.sleep(1.0)
        watcher = sqlite3.connect(db)
        start = time.time()
        for _ in range(views):
            post(server.port, SINGLE_ROW)
        middle = time.time()
        writing_views = 0
        for _ in range(views):
            post(server.port, SINGLE_ROW)
            before = data_version(watcher)
            get(server.port, "/")
            if data_version(watcher) != before:
                writing_views += 1
        end = time.time()
        time.sleep(3.0)  # let a maintenance timer fold in the rows just sent
        quiet_start = time.time()
        quiet_changes = 0
        for _ in range(views):
            before = data_version(watcher)
            get(server.port, "/")
            if data_version(watcher) != before:
                quiet_changes += 1
        quiet_end = time.time()
        watcher.close()
    finally:
        server.stop()
    result = {"views": views, "writing_views": writing_views, "seconds": end - middle, "fsyncs": None,
              "quiet_changes": quiet_changes, "quiet_seconds": quiet_end - quiet_start}
    if log:
        result["upload_fsyncs"] = _count_fsyncs(log, start, middle)
        result["fsyncs"] = _count_fsyncs(log, middle, end)
        result["quiet_fsyncs"] = _count_fsyncs(log, quiet_start, quiet_end)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploaders", type=int, default=4, help="concurrent single-row upload clients (default 4)")
    parser.add_argument("--pollers", type=int, default=4, help="concurrent dashboard clients (default 4)")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per phase (default 6)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    parser.add_argument("--rows", type=int, default=86400, help="rows per box uploaded first (default 86400: a day at 1 Hz)")
    parser.add_argument("--views", type=int, default=50, help="dashboard views for the writes-per-view count (default 50)")
    parser.add_argument("--keep", action="store_true", help="keep the database and logs")
    args = parser.parse_args(argv)

    work = tempfile.mkdtemp(prefix="co2logd-dashload-")
    db = os.path.join(work, "co2.sqlite")
    started = time.monotonic()
    try:
        server = start_daemon(work, db)
        try:
            fill(server, args.rows)
            print("filled: {:,} rows from each of 2 boxes, one upload each, in {:.1f} s".format(args.rows, time.monotonic() - started))
            get(server.port, "/")  # a first view, so the timed views are the steady state
            alone = upload_phase(server, args, 0)
            polled = upload_phase(server, args, args.pollers)
        finally:
            server.stop()
        writes = writes_per_view(work, db, args.views)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("co2logd under dashboard load: {} upload clients (single-row JSON), {:.0f} s measured after {:.0f} s warm-up, "
          "{} cores".format(args.uploaders, args.duration, args.warmup, os.cpu_count()))
    for label, r in (("uploads alone", alone), ("uploads + {} dashboard pollers".format(args.pollers), polled)):
        line = "  {:<34} {:>8.0f} uploads/s  median {:7.2f} ms  p99 {:7.2f} ms".format(label, r["req_s"], r["p50_ms"], r["p99_ms"])
        if "dashboard" in r:
            d = r["dashboard"]
            line += "   dashboard: {:.1f} views/s (median {:.0f} ms){}".format(
                d["views_s"], d["p50_ms"], ", {} failed".format(d["failed"]) if d["failed"] else "")
        if r["errors"] or r["other"]:
            line += "   ({} errors, {} non-200)".format(r["errors"], r["other"])
        print(line)
    ratio = polled["req_s"] / alone["req_s"] if alone["req_s"] else float("nan")
    print("  upload rate with pollers / alone: {:.0%}   target >= 80%: {}".format(ratio, "met" if ratio >= 0.8 else "MISSED"))
    print("  median latency with pollers / alone: {:.1f}x".format(polled["p50_ms"] / alone["p50_ms"]))
    fsyncs = writes["fsyncs"]
    n = writes["views"]
    print("  {} (single-row upload, dashboard view) pairs in a row ({:.1f} s): the database changed during {} of the views "
          "(PRAGMA data_version seen from another connection: the view's writes, or a maintenance timer's "
          "meanwhile)".format(n, writes["seconds"], writes["writing_views"]))
    if fsyncs is not None:
        print("  fsync/fdatasync calls: {} for {} uploads alone, {} for {} uploads + {} views: {:.2f} per view".format(
            writes["upload_fsyncs"], n, fsyncs, n, n, (fsyncs - writes["upload_fsyncs"]) / n))
        print("  {} views alone, no new rows ({:.1f} s): {} fsync/fdatasync calls, the database changed during {} of them "
              "(a health heartbeat, where there is one, commits every 10 s)".format(
            n, writes["quiet_seconds"], writes["quiet_fsyncs"], writes["quiet_changes"]))
    else:
        print("  fsyncs not counted (no strace)")
    print("total {:.0f} s".format(time.monotonic() - started))
    return 0


if __name__ == "__main__":
    sys.exit(main())
