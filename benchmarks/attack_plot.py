"""
The repeated-column plot attack (issue 12, finding 1), against a real daemon.

Fills a SQLite file with a day of 1 Hz data (co2, temperature) ending now,
starts ``python -m co2logd`` on it (from ``--source``, default this checkout,
so the same script measures another checkout such as ``/work/main`` before a
fix), then sends one unauthenticated ``GET /plot?cols=co2,co2,…`` (the column
repeated ``--repeat`` times) and prints:

* the response status and size in bytes, and how long it took;
* the daemon's resident memory before and at its peak (``VmHWM``);
* the reactor stall: the slowest of the probe requests for the static style
  sheet sent every 20 ms meanwhile (a static file needs nothing but the
  reactor, so a slow probe means the reactor was busy), against the slowest
  probe with no attack running.

Usage: python benchmarks/attack_plot.py [--source DIR] [--repeat N] [--rows N]
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import os
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from typing import List, Optional, Tuple

from run import wait_until_listening

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fill(path: str, rows: int, end: float) -> None:
    """``rows`` rows at 1 Hz ending at ``end``, in the schema the daemon creates."""
    sys.path.insert(0, HERE)
    from co2logd.settings import Settings
    from co2logd.store import prepare_database

    prepare_database(path, Settings.from_values({"DB": path}, environ={}))
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute('ALTER TABLE data ADD COLUMN "co2" INTEGER')
    connection.execute('ALTER TABLE data ADD COLUMN "temperature" REAL')
    utc = datetime.timezone.utc
    connection.executemany(
        "INSERT INTO data (time_upload_utc, transport, co2, temperature) VALUES (?, 'http', ?, ?)",
        (
            (datetime.datetime.fromtimestamp(end - rows + i, utc).isoformat(" "), 400 + (i * 7) % 1000, 20 + (i % 97) / 10)
            for i in range(rows)
        ),
    )
    connection.commit()
    connection.close()


def memory_kib(pid: int, field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak) of a process, in KiB."""
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def fetch(port: int, path: str, timeout: float = 600.0):
    """GET ``path``: (status, body bytes, seconds)."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        size = 0
        while True:
            chunk = response.read(1 << 16)
            if not chunk:
                break
            size += len(chunk)
        return response.status, size, time.perf_counter() - start
    finally:
        connection.close()


class Prober(threading.Thread):
    """GETs the static style sheet every ``every`` seconds until stopped; keeps each latency."""

    def __init__(self, port: int, every: float = 0.02):
        super().__init__(daemon=True)
        self.port, self.every = port, every
        self.latencies: List[float] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            status, _, seconds = fetch(self.port, "/static/co2logd.css")
            assert status == 200, status
            self.latencies.append(seconds)
            self.stopping.wait(self.every)

    def stop(self) -> float:
        """Stop; the slowest probe."""
        self.stopping.set()
        self.join()
        return max(self.latencies)


def start_daemon(argv: List[str], directory: str, env) -> Tuple[subprocess.Popen, int]:
    """Start the daemon (HTTP on port 0, output in ``directory``/daemon.log); (process, port) once its log names the port."""
    log_path = os.path.join(directory, "daemon.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, wait_until_listening(process, log_path)["HTTP"]


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=HERE, help="checkout to run the daemon from (default: this one)")
    parser.add_argument("--repeat", type=int, default=100, help="times co2 is repeated in cols= (default 100)")
    parser.add_argument("--rows", type=int, default=86400, help="rows of 1 Hz data (default: a day)")
    options = parser.parse_args(argv)

    directory = tempfile.mkdtemp(prefix="co2logd-attack-")
    path = os.path.join(directory, "attack.sqlite")
    fill(path, options.rows, time.time())
    env = dict(os.environ, PYTHONPATH=os.path.abspath(options.source))
    env.pop("CO2LOGSERVER_CONFIG", None)
    daemon, port = start_daemon(
        [sys.executable, "-m", "co2logd", "--db", path, "--http", "tcp:0:interface=127.0.0.1"], directory, env
    )
    try:
        status, size, seconds = fetch(port, "/plot?cols=co2&since=24h")  # warm up: first plot, rollup fill
        assert status == 200, status
        time.sleep(3)
        quiet = Prober(port)
        quiet.start()
        time.sleep(2)
        quiet_stall = quiet.stop()
        rss_before = memory_kib(daemon.pid, "VmRSS")
        single = fetch(port, "/plot?cols=co2&since=24h")
        attack = "/plot?cols={}&since=24h".format(",".join(["co2"] * options.repeat))
        prober = Prober(port)
        prober.start()
        status, size, seconds = fetch(port, attack)
        stall = prober.stop()
        peak = memory_kib(daemon.pid, "VmHWM")
        print("daemon from {}; {} rows of 1 Hz data".format(os.path.abspath(options.source), options.rows))
        print("attack URL: {} bytes (cols=co2 × {})".format(len(attack), options.repeat))
        print("GET /plot?cols=co2 for comparison: {} bytes in {:.3f} s".format(single[1], single[2]))
        print("attack response: status {}, {:,} bytes ({:.0f}× the single column) in {:.2f} s".format(
            status, size, size / max(1, single[1]), seconds))
        print("daemon RSS: {:.0f} MB before, peak {:.0f} MB".format(rss_before / 1024, peak / 1024))
        print("reactor stall (slowest static-file probe): {:.3f} s during the attack, {:.3f} s with none "
              "({} and {} probes)".format(stall, quiet_stall, len(prober.latencies), len(quiet.latencies)))
    finally:
        daemon.terminate()
        daemon.wait(30)


if __name__ == "__main__":
    main()
