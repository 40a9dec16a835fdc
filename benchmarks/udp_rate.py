"""
How many UDP datagrams per second does co2logd store without loss?

Starts ``python -m co2logd --http none --udp udp:PORT:interface=127.0.0.1``
as a subprocess on a temporary database, sends one-row JSON datagrams
(``{"run": R, "seq": N, "co2": ...}``) on 127.0.0.1 at rising rates, waits
until the daemon has stored what it will, and prints per rate: datagrams/s
asked for, sent, stored, lost (kernel drops plus datagrams refused as busy).

    python benchmarks/udp_rate.py                      # default rates, 3 s each
    python benchmarks/udp_rate.py --rates 500,2000 --seconds 5 --synchronous NORMAL

Each datagram is one upload, so one SQLite transaction: with the default
``DB_SYNCHRONOUS = "FULL"`` the disk's fsync rate is the ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Tuple

from run import wait_until_listening


def start_daemon(directory: str, synchronous: str) -> Tuple[subprocess.Popen, int]:
    """co2logd with UDP only, on a port of its own; (process, port) once its log names the port."""
    config = os.path.join(directory, "bench_config.py")
    with open(config, "w") as f:
        f.write("CO2LOGSERVER_DB_SYNCHRONOUS = {!r}\n".format(synchronous))
    db = os.path.join(directory, "bench.sqlite")
    log_path = os.path.join(directory, "co2logd.log")
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "co2logd", "--http", "none", "--udp", "udp:0:interface=127.0.0.1",
             "--db", db, "--config", config],
            cwd=directory, stdout=log, stderr=subprocess.STDOUT,
        )
    return process, wait_until_listening(process, log_path, ("UDP",))["UDP"]


def wait_until_storing(port: int, db: str, process: subprocess.Popen, timeout: float = 20) -> None:
    """Send probes until one is stored (the daemon is up and the table exists)."""
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SystemExit("co2logd exited; see its log")
            s.sendto(b'{"run": -1, "seq": 0, "co2": 0}', ("127.0.0.1", port))
            time.sleep(0.2)
            if stored_rows(db, -1) > 0:
                return
    raise SystemExit("co2logd did not store a probe datagram within {}s".format(timeout))


def stored_rows(db: str, run: int) -> int:
    try:
        connection = sqlite3.connect(db, timeout=10)
        try:
            return connection.execute("SELECT count(*) FROM data WHERE run = ?", (run,)).fetchone()[0]
        finally:
            connection.close()
    except sqlite3.OperationalError:
        return 0  # the table or column does not exist yet


def kernel_udp_drops() -> int:
    """Linux: datagrams dropped because a socket's receive buffer was full (all sockets)."""
    try:
        with open("/proc/net/snmp") as f:
            lines = [line.split() for line in f if line.startswith("Udp:")]
        return int(lines[1][lines[0].index("RcvbufErrors")])
    except (OSError, ValueError, IndexError):
        return -1


def send_at(port: int, rate: int, seconds: float, run: int) -> tuple:
    """Send ``rate`` datagrams/s for ``seconds``, paced in 1 ms slots; (sent, elapsed)."""
    total = int(rate * seconds)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    target = ("127.0.0.1", port)
    start = time.perf_counter()
    sent = 0
    try:
        while sent < total:
            due = int((time.perf_counter() - start) * rate) + 1
            due = min(due, total)
            while sent < due:
                sock.sendto(json.dumps({"run": run, "seq": sent, "co2": 400 + sent % 600}).encode(), target)
                sent += 1
            time.sleep(0.001)
    finally:
        sock.close()
    return sent, time.perf_counter() - start


def wait_stored(db: str, run: int, expected: int, settle: float = 1.5, limit: float = 120) -> int:
    """Poll until everything is stored or the count stops moving for ``settle`` seconds."""
    last, since = -1, time.monotonic()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        count = stored_rows(db, run)
        if count >= expected:
            return count
        if count != last:
            last, since = count, time.monotonic()
        elif time.monotonic() - since > settle:
            return count
        time.sleep(0.2)
    return stored_rows(db, run)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,250,500,1000,2000,4000,8000", help="datagrams/s, comma-separated")
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each rate")
    parser.add_argument("--synchronous", default="FULL", help="DB_SYNCHRONOUS for the daemon (FULL, NORMAL, OFF)")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]

    directory = tempfile.mkdtemp(prefix="co2logd-bench-")
    db = os.path.join(directory, "bench.sqlite")
    process, port = start_daemon(directory, args.synchronous)
    try:
        wait_until_storing(port, db, process)
        print("co2logd UDP on 127.0.0.1:{}, DB_SYNCHRONOUS={}, {}s per rate".format(port, args.synchronous, args.seconds))
        print("(kernel: dropped by a full receive buffer; refused: e.g. busy, UDP_MAX_PENDING)")
        print(
            "{:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8}".format(
                "asked/s", "sent/s", "sent", "stored", "lost%", "kernel", "refused"
            )
        )
        for run, rate in enumerate(rates, start=1):
            drops_before = kernel_udp_drops()
            sent, elapsed = send_at(port, rate, args.seconds, run)
            stored = wait_stored(db, run, sent)
            kernel = kernel_udp_drops() - drops_before if drops_before >= 0 else 0
            lost = sent - stored
            print(
                "{:>8} {:>8.0f} {:>8} {:>8} {:>7.1f}% {:>8} {:>8}".format(
                    rate, sent / elapsed, sent, stored, 100.0 * lost / sent if sent else 0, kernel, lost - kernel
                ),
                flush=True,
            )
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


if __name__ == "__main__":
    main()
