"""
The writer's INSERT against plain ``executemany`` on the same rows.

    python benchmarks/insert_rows.py [--rows 1000] [--seconds 3] [--repeat 3] [--synchronous OFF|NORMAL|FULL]

One thread, one SQLite file, transactions of ``--rows`` rows of run.py's
table layout (four columns the server fills, four measured).  Alternates
(a) ``executemany`` of one 8-value statement per row (the ceiling
``run.py`` compares co2logd with) and (b) :class:`co2logd.store.writer.RowInserter`
(100 rows per ``INSERT … VALUES (…), (…)``, the four shared values bound
once per statement), and prints rows/s of each and (b)/(a), best of
``--repeat``.  With ``--synchronous OFF`` it measures the CPU side only.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from typing import Callable, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from co2logd.store.writer import RowInserter, max_variables  # noqa: E402

FIXED = ["time_upload_utc", "matched_checksums", "failed_checksums", "transport"]
MEASURED = ["time_utc", "co2", "temperature_c", "humidity"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--synchronous", default="FULL")
    args = parser.parse_args()

    path = os.path.join(tempfile.mkdtemp(prefix="co2logd-insert-"), "insert.sqlite")
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous={}".format(args.synchronous))
    connection.execute(
        "CREATE TABLE data (time_upload_utc DATETIME, matched_checksums TEXT, failed_checksums TEXT, transport TEXT, "
        "time_utc INTEGER, co2 INTEGER, temperature_c REAL, humidity REAL)"
    )
    shared = ("2023-11-14 22:13:20+00:00", None, None, "http")
    data = [
        (1_700_000_000 + i, 400 + i % 600, round(18 + (i % 100) / 10, 1), round(30 + (i % 400) / 10, 1))
        for i in range(args.rows)
    ]
    full = [shared + row for row in data]
    sql = "INSERT INTO data ({}) VALUES ({})".format(", ".join(FIXED + MEASURED), ", ".join("?" * 8))
    inserter = RowInserter('"data"', max_variables(connection))
    fixed = list(zip(FIXED, shared))
    cursor = connection.cursor()

    def executemany() -> None:
        connection.execute("BEGIN IMMEDIATE")
        connection.executemany(sql, full)
        connection.execute("COMMIT")

    def multi_row() -> None:
        connection.execute("BEGIN IMMEDIATE")
        inserter.insert(cursor, fixed, MEASURED, data)
        connection.execute("COMMIT")

    best: Dict[str, float] = {}
    ways: Dict[str, Callable[[], None]] = {"executemany": executemany, "multi-row": multi_row}
    for _ in range(args.repeat):
        for name, way in ways.items():
            rows = 0
            start = time.perf_counter()
            while time.perf_counter() - start < args.seconds:
                way()
                rows += args.rows
            rate = rows / (time.perf_counter() - start)
            best[name] = max(best.get(name, 0.0), rate)
    connection.close()
    print("{}-row transactions, synchronous={}, best of {}:".format(args.rows, args.synchronous, args.repeat))
    for name, rate in best.items():
        print("  {:<12} {:>10.0f} rows/s".format(name, rate))
    print("  multi-row / executemany: {:.2f}x".format(best["multi-row"] / best["executemany"]))


if __name__ == "__main__":
    main()
