"""
Slow download clients against a running co2logd (issue 12, finding 7).

    python benchmarks/attack_download.py [--clients 20] [--rows 100000] [--wide 400] [--hold 30] [--repo PATH]

Starts ``python -m co2logd`` (from ``--repo``, default this checkout, so the
same script measures another checkout such as main before a change) on a
fresh database on 127.0.0.1 and runs two attacks in turn:

  rows  one table of ``--rows`` rows (4 measurement columns), with
        ``MAX_LIMIT_OF_ROWS`` raised to match; each client asks for
        ``/download?format=json&number=ROWS``
  wide  1000 rows of ``--wide`` columns, default limits; each client asks
        for the HTML view ``/download`` (co2logserver's default page)

Each attack opens ``--clients`` connections with a small receive buffer,
sends the request and never reads.  For ``--hold`` seconds it measures, every 0.2 s,
the latency of ``GET /openapi.yaml`` (a static answer: how long the reactor
takes to get to it).  Then one client reads its response to the end
(checking it is whole: the rows counted, the HTML closed) and the others
hang up.  The daemon's RSS is sampled every 0.1 s throughout.  Printed per
attack: RSS before, at the end of the hold, at the peak, the growth per slow
client (and as a multiple of one response), probe latency (median, max),
the response's size and how long reading it took.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import Server, rss_mb  # noqa: E402


def fill(db: str, rows: int, columns: int, repo: str) -> None:
    """Create the schema with the checkout under test, then add ``rows`` rows of ``columns`` numbers with sqlite3."""
    subprocess.run(
        [sys.executable, "-c", "import sys; from co2logd.settings import Settings; from co2logd.store import prepare_database; "
         "prepare_database(sys.argv[1], Settings.from_values({}, environ={}))", db],
        check=True, env=dict(os.environ, PYTHONPATH=repo), cwd=os.path.dirname(db),  # not this checkout's co2logd
    )
    connection = sqlite3.connect(db, isolation_level=None)
    names = ["c{}".format(i) for i in range(columns)]
    for name in names:
        connection.execute('ALTER TABLE data ADD COLUMN "{}" REAL'.format(name))
    sql = 'INSERT INTO data (time_upload_utc, transport, {}) VALUES (?, ?, {})'.format(
        ", ".join('"{}"'.format(n) for n in names), ", ".join("?" * columns)
    )
    connection.execute("BEGIN")
    batch = []
    for i in range(rows):
        batch.append(["2024-05-01 00:00:00.000000", "http"] + [round(400 + (i * 7 + k) % 600 + 0.25, 2) for k in range(columns)])
        if len(batch) == 10_000:
            connection.executemany(sql, batch)
            batch = []
    connection.executemany(sql, batch)
    connection.execute("COMMIT")
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def probe(port: int) -> float:
    """Seconds for one GET /openapi.yaml on a fresh connection."""
    start = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
            s.sendall(b"GET /openapi.yaml HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            while s.recv(65536):
                pass
    except socket.timeout:
        print("a probe got no answer in 60 s")
    return time.monotonic() - start


def slow_client(port: int, path: str) -> socket.socket:
    """A connection that asked for ``path`` and reads nothing (small receive buffer)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall("GET {} HTTP/1.1\r\nHost: x\r\n\r\n".format(path).encode())
    return s


def read_whole(s: socket.socket, timeout: float) -> bytes:
    """The response's body (chunked transfer decoded), read to its end."""
    s.settimeout(timeout)
    data = bytearray()
    while not data.endswith(b"\r\n0\r\n\r\n"):
        more = s.recv(1 << 20)
        if not more:
            raise AssertionError("connection closed before the end of the response")
        data += more
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], head
    body = bytearray()
    at = 0
    while True:
        eol = rest.index(b"\r\n", at)
        size = int(rest[at:eol].split(b";")[0], 16)
        if size == 0:
            return bytes(body)
        body += rest[eol + 2 : eol + 2 + size]
        at = eol + 2 + size + 2


class RssSampler(threading.Thread):
    """The peak RSS of a process, sampled every 0.1 s until stopped."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_mb(pid)
        self.running = True

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, rss_mb(self.pid))
            time.sleep(0.1)


def attack(server: Server, path: str, clients: int, hold: float) -> Dict[str, float]:
    """Open the slow clients, probe for ``hold`` s, then read one response whole; RSS is sampled throughout."""
    port = server.port
    for _ in range(3):
        probe(port)
    before = rss_mb(server.process.pid)
    sampler = RssSampler(server.process.pid)
    sampler.start()
    sockets: List[socket.socket] = [slow_client(port, path) for _ in range(clients)]
    latencies: List[float] = []
    end = time.monotonic() + hold
    while time.monotonic() < end:
        latencies.append(probe(port))
        time.sleep(0.2)
    held = sampler.peak
    start = time.monotonic()
    body = read_whole(sockets[0], timeout=1200)
    read_seconds = time.monotonic() - start
    sampler.running = False
    sampler.join()
    for s in sockets:
        s.close()
    return {
        "rss_before": before,
        "rss_hold": held,
        "rss_peak": sampler.peak,
        "per_client": (sampler.peak - before) / clients,
        "probe_p50": statistics.median(latencies),
        "probe_max": max(latencies),
        "probes": len(latencies),
        "bytes": len(body),
        "read_seconds": read_seconds,
        "body": body,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--wide", type=int, default=400, help="columns of the wide table")
    parser.add_argument("--hold", type=float, default=30.0, help="seconds the clients stay unread")
    parser.add_argument("--repo", default=REPO, help="the co2logd checkout to run")
    parser.add_argument("--only", choices=["rows", "wide"])
    args = parser.parse_args()
    repo = os.path.abspath(args.repo)
    work = tempfile.mkdtemp(prefix="co2logd-attack-download-")
    print("co2logd from {}; work files in {}".format(repo, work))
    attacks = [
        ("rows", args.rows, 4, "/download?format=json&number={}".format(args.rows), {"MAX_LIMIT_OF_ROWS": args.rows}),
        ("wide", 1000, args.wide, "/download", {}),
    ]
    results = []
    for name, rows, columns, path, config in attacks:
        if args.only and name != args.only:
            continue
        db = os.path.join(work, name + ".sqlite")
        fill(db, rows, columns, repo)
        config_path = os.path.join(work, name + ".cfg")
        with open(config_path, "w") as f:
            f.write("".join("CO2LOGSERVER_{} = {!r}\n".format(k, v) for k, v in config.items()))
        server = Server(
            "co2logd",
            [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", db, "--config", config_path],
            work, {"PYTHONPATH": repo}, os.path.join(work, name + ".log"),
        )
        try:
            r = attack(server, path, args.clients, args.hold)
        finally:
            server.stop()
        body = r.pop("body")
        if name == "rows":
            got = len(json.loads(body))
            assert got == rows, "incomplete JSON download: {} rows of {}".format(got, rows)
        else:
            assert body.endswith(b"</html>\n") and body.count(b"<tr>") == rows + 1, "incomplete HTML download"
        results.append((name, rows, columns, r))
    print()
    print("{:<5} {:>8} {:>5} {:>8} {:>9} {:>9} {:>9} {:>10} {:>9} {:>9} {:>9} {:>8}".format(
        "what", "rows", "cols", "clients", "RSS0 MB", "hold MB", "peak MB", "MB/client", "probe p50", "probe max",
        "resp MB", "read s"))
    for name, rows, columns, r in results:
        print("{:<5} {:>8} {:>5} {:>8} {:>9.0f} {:>9.0f} {:>9.0f} {:>10.1f} {:>8.3f}s {:>8.3f}s {:>9.1f} {:>8.1f}".format(
            name, rows, columns, args.clients, r["rss_before"], r["rss_hold"], r["rss_peak"], r["per_client"],
            r["probe_p50"], r["probe_max"], r["bytes"] / 1e6, r["read_seconds"]))
        print("      growth {:.0f} MB = {:.2f} x the whole response per slow client".format(
            r["rss_peak"] - r["rss_before"], r["per_client"] / (r["bytes"] / 1e6)))


if __name__ == "__main__":
    main()
