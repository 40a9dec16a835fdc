"""
co2logd on PostgreSQL beside co2logd on SQLite, in one run on 127.0.0.1.

    python benchmarks/postgres.py [--duration 8] [--url postgresql://...]

Without ``--url`` it starts a throw-away PostgreSQL 15 (Debian's binaries,
as the tests do: tests/pgserver.py, fsync off like a test cluster; give
``--url`` of a real server for figures with fsync).  Each daemon is a
``python -m co2logd`` on a fresh database, driven by the load generator of
``benchmarks/run.py`` (:mod:`loadgen`), 8 keep-alive clients:

  (a) single-row JSON   (b) 100-row JSON   (c) 1000-row CSV

then (a) against two daemons on one PostgreSQL database at once (8 clients
each), summed.  It prints req/s, rows/s, p50/p99, the PostgreSQL/SQLite
ratios, the two-gateway ratio against one gateway's (a), and checks that
every database holds exactly the rows its daemons acknowledged.
Targets (issue 14): (b) >= 50,000 rows/s on PostgreSQL; two gateways >= 1.6x (a).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import loadgen  # noqa: E402
from run import SCENARIOS, Server  # noqa: E402


def daemon(name: str, db: str, work: str) -> Server:
    """``python -m co2logd`` on ``db``, HTTP on a port of its choosing (read back from its log)."""
    return Server(
        name,
        [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", db],
        work, {"PYTHONPATH": REPO}, os.path.join(work, name.replace(" ", "_").replace("(", "").replace(")", "") + ".log"),
    )


def pg_count(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as connection:
        return connection.execute("SELECT count(*) FROM data").fetchone()[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--url", help="a PostgreSQL server to use (a database per run is created in it)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="co2logd-pgbench-")
    server = None
    if args.url:
        import psycopg

        base = args.url

        def new_db(name: str) -> str:
            with psycopg.connect(base, autocommit=True) as c:
                c.execute("DROP DATABASE IF EXISTS {}".format(name))
                c.execute("CREATE DATABASE {}".format(name))
            return base.rsplit("/", 1)[0] + "/" + name
    else:
        from tests.pgserver import PostgresServer

        server = PostgresServer()
        server.start()

        def new_db(name: str) -> str:
            server.execute("CREATE DATABASE {}".format(name))
            return server.url(name)

    results: Dict[str, Dict[str, Any]] = {}
    checks: List[str] = []
    try:
        for key, (label, body, content_type, rows) in SCENARIOS.items():
            for engine in ("sqlite", "postgresql"):
                db = os.path.join(work, "{}.sqlite".format(key)) if engine == "sqlite" else new_db("bench_" + key)
                name = "{} ({})".format(engine, key)
                s = daemon(name, db, work)
                try:
                    r = loadgen.run_http(s.port, loadgen.http_request(s.port, body, content_type), args.clients, args.warmup, args.duration)
                finally:
                    s.stop()
                r["rows_s"] = r["req_s"] * rows
                stored = sqlite3.connect(db).execute("SELECT count(*) FROM data").fetchone()[0] if engine == "sqlite" else pg_count(db)
                checks.append("{}: stored {} acknowledged {} {}".format(
                    name, stored, r["acknowledged"], "ok" if stored == r["acknowledged"] else "MISMATCH"))
                results[name] = r
                print("{:<22} {:>8.0f} req/s {:>9.0f} rows/s  p50 {:7.2f} ms  p99 {:7.2f} ms".format(
                    name, r["req_s"], r["rows_s"], r["p50_ms"], r["p99_ms"]), flush=True)
        # two gateways on one PostgreSQL database, (a) on each at once
        db = new_db("bench_two")
        gateways = [daemon("gateway {}".format(i), db, work) for i in (1, 2)]
        label, body, content_type, rows = SCENARIOS["a"]
        both: List[Dict[str, Any]] = [{}, {}]
        try:
            threads = [
                threading.Thread(target=lambda i=i: both.__setitem__(i, loadgen.run_http(
                    gateways[i].port, loadgen.http_request(gateways[i].port, body, content_type), args.clients, args.warmup, args.duration)))
                for i in (0, 1)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for g in gateways:
                g.stop()
        total = sum(r["req_s"] for r in both)
        stored = pg_count(db)
        acknowledged = sum(r["acknowledged"] for r in both)
        checks.append("two gateways: stored {} acknowledged {} {}".format(
            stored, acknowledged, "ok" if stored == acknowledged else "MISMATCH"))
        print("{:<22} {:>8.0f} req/s (gateway 1 {:.0f}, gateway 2 {:.0f})".format("2 gateways (a)", total, both[0]["req_s"], both[1]["req_s"]))
    finally:
        if server is not None:
            server.destroy()
        shutil.rmtree(work, ignore_errors=True)
    print()
    for key in SCENARIOS:
        lite, pg = results["sqlite ({})".format(key)], results["postgresql ({})".format(key)]
        print("({}) postgresql / sqlite rows/s: {:.2f}".format(key, pg["rows_s"] / lite["rows_s"]))
    b = results["postgresql (b)"]["rows_s"]
    print("(b) on PostgreSQL: {:.0f} rows/s   target >= 50,000   {}".format(b, "met" if b >= 50_000 else "MISSED"))
    c = results["postgresql (c)"]["rows_s"]
    print("(c) on PostgreSQL: {:.0f} rows/s".format(c))
    one = results["postgresql (a)"]["req_s"]
    print("two gateways / one gateway (a): {:.2f}x   target >= 1.6x   {}".format(total / one, "met" if total / one >= 1.6 else "MISSED"))
    for line in checks:
        print(line)
    print("load average:", " ".join("{:.2f}".format(x) for x in os.getloadavg()), "cores:", os.cpu_count())


if __name__ == "__main__":
    main()
