"""
How long does a plot of a year of 1 Hz data take?

Fills a SQLite file with ROWS rows of 1 Hz data (co2, temperature, humidity,
three boxes) straight with sqlite3 ``executemany`` (outside the daemon),
opens it with co2logd's Store (which upgrades the schema: the upload-time
index, the plot rollup tables) and times, over the whole range:

* ``GET /plot`` of two columns over HTTP from a running site: the first
  request (which reads the rows, in bounded chunks, and starts filling the
  rollups in the background), the background fill, then later requests;
* meanwhile, single-row uploads every 50 ms over HTTP: the slowest of them
  shows how long a chunk held the database;
* the dashboard ``GET /`` with ``since`` covering everything (three plots,
  latest values, sources; the first visit scans all rows once for the
  sources table);
* a plot after new rows arrived (the rollups catch up with them);
* with ``--exact``: the exact path without rollups (every row of the range read),
  with ``--group-by``: the plain ``GROUP BY bucket`` query the store avoids.

Usage: python benchmarks/plot_render.py [ROWS] [--db PATH] [--exact] [--group-by]

ROWS defaults to 31,536,000 (a year at 1 Hz; about 4 GB on disk and some
minutes to generate).  With ``--db PATH`` the file is kept and reused by later
runs when it already holds ROWS rows (its rollups are then dropped first, so
the first request still fills them).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import random
import sqlite3
import tempfile
import time

import treq
from twisted.internet import defer, task

from co2logd.ingest import IngestService
from co2logd.settings import Settings
from co2logd.store import Store, prepare_database
from co2logd.web.site import make_site

T0 = 1_700_000_000
YEAR = 365 * 86400


def fill(path: str, rows: int, settings) -> None:
    """ROWS rows at 1 Hz from T0, committed every million rows."""
    prepare_database(path, settings)
    connection = sqlite3.connect(path)
    connection.execute("PRAGMA synchronous=OFF")
    for column, declared in (("co2", "INTEGER"), ("temperature", "REAL"), ("humidity", "REAL"), ("box", "TEXT")):
        connection.execute('ALTER TABLE data ADD COLUMN "{}" {}'.format(column, declared))
    connection.commit()
    rng = random.Random(0)
    utc = datetime.timezone.utc

    def generate(first, last):
        for i in range(first, last):
            t = T0 + i + rng.random() * 0.5
            hour = (t % 86400) / 3600
            yield (
                datetime.datetime.fromtimestamp(t, utc).isoformat(" "), "udp:10.0.0.{}".format(i % 3),
                int(600 + 400 * math.sin(hour / 3.8) + rng.gauss(0, 40)),
                21 + 2 * math.sin(hour / 4) + rng.gauss(0, 0.1), 50 + 5 * math.cos(hour / 5), "box{}".format(i % 3),
            )

    step = 1_000_000
    for first in range(0, rows, step):
        connection.executemany(
            "INSERT INTO data (time_upload_utc, transport, co2, temperature, humidity, box) VALUES (?, ?, ?, ?, ?, ?)",
            generate(first, min(rows, first + step)),
        )
        connection.commit()
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    connection.close()


def existing_rows(path: str) -> int:
    if not os.path.exists(path):
        return -1
    connection = sqlite3.connect(path)
    try:
        return connection.execute("SELECT max(rowid) FROM data").fetchone()[0] or 0
    except sqlite3.Error:
        return -1
    finally:
        connection.close()


def drop_rollups(path: str) -> None:
    """Forget the rollups of an earlier run (and rows it uploaded), so the first request fills them again."""
    connection = sqlite3.connect(path)
    tables = {r[0] for r in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for table in ("co2logd_rollup", "co2logd_rollup_state", "co2logd_rollup_odd"):
        if table in tables:
            connection.execute("DELETE FROM {}".format(table))
    connection.execute("DELETE FROM data WHERE time_upload_utc >= ?", (datetime.datetime.fromtimestamp(T0 + YEAR * 2, datetime.timezone.utc).isoformat(" "),))
    connection.commit()
    connection.close()


def group_by_seconds(path: str, rows: int, buckets: int = 728) -> float:
    connection = sqlite3.connect(path)
    width = rows / buckets
    start = time.perf_counter()
    connection.execute(
        "SELECT CAST(((julianday(time_upload_utc) - 2440587.5) * 86400.0 - ?) / ? AS INTEGER) AS b, "
        "min(co2), max(co2), min(temperature), max(temperature) FROM data GROUP BY b",
        (T0, width),
    ).fetchall()
    elapsed = time.perf_counter() - start
    connection.close()
    return elapsed


@defer.inlineCallbacks
def timed_get(url: str):
    start = time.perf_counter()
    response = yield treq.get(url, persistent=False)
    body = yield treq.content(response)
    assert response.code == 200, body[:200]
    return time.perf_counter() - start, body


@defer.inlineCallbacks
def uploads_while(reactor, url: str, running: defer.Deferred, every: float = 0.05):
    """Single-row uploads every ``every`` seconds until ``running`` fires: their latencies."""
    latencies = []
    finished = []
    running.addBoth(lambda result: (finished.append(True), result)[1])
    while not finished:
        start = time.perf_counter()
        response = yield treq.post(url + "/upload", data=b'{"co2": [700]}', headers={"Content-Type": "application/json"}, persistent=False)
        yield treq.content(response)
        assert response.code == 200, response.code
        latencies.append(time.perf_counter() - start)
        yield task.deferLater(reactor, every, lambda: None)
    return latencies


@defer.inlineCallbacks
def main(reactor, options):
    rows = options.rows
    if options.db:
        path = options.db
    else:
        path = os.path.join(tempfile.mkdtemp(prefix="co2logd-bench-"), "bench.sqlite")
    settings = Settings.from_values({"DASHBOARD_REFRESH_SECONDS": 0}, environ={})
    if existing_rows(path) < rows:
        if os.path.exists(path):
            os.remove(path)
        started = time.perf_counter()
        fill(path, rows, settings.replace(DB=path))
        print("filled {} rows in {:.0f} s ({:.2f} GB)".format(rows, time.perf_counter() - started, os.path.getsize(path) / 1e9))
    else:
        drop_rollups(path)
        print("reusing {} ({} rows, {:.2f} GB)".format(path, rows, os.path.getsize(path) / 1e9))
    started = time.perf_counter()
    store = Store.open(path, settings)
    print("opened (schema upgraded) in {:.1f} s".format(time.perf_counter() - started))
    store.startService()
    ingest = IngestService(settings, store, reactor)
    port = reactor.listenTCP(0, make_site(settings, ingest, store, reactor), interface="127.0.0.1")
    url = "http://127.0.0.1:{}".format(port.getHost().port)
    since = "since={}&until={}".format(T0 - 1, T0 + rows + 1)
    plot = url + "/plot?cols=co2,temperature&" + since

    quiet = task.deferLater(reactor, 5, lambda: None)
    latencies = yield uploads_while(reactor, url, quiet)
    print("single-row uploads with no plot running (5 s): {}".format(spread(latencies)))
    first = timed_get(plot)
    latencies = yield uploads_while(reactor, url, first)
    elapsed, _ = yield first
    print("GET /plot, first request (reads the rows, starts the rollup fill): {:.1f} s".format(elapsed))
    print("  {} single-row uploads meanwhile: {}".format(len(latencies), spread(latencies)))
    started = time.perf_counter()
    filled = store.rollups_idle()
    latencies = yield uploads_while(reactor, url, filled)
    yield filled
    print("rollup fill in the background: {:.1f} s more".format(time.perf_counter() - started))
    print("  {} single-row uploads meanwhile: {}".format(len(latencies), spread(latencies)))
    later = []
    for _ in range(5):
        elapsed, body = yield timed_get(plot)
        later.append(elapsed)
    print("GET /plot, later requests: best {:.3f} s, median {:.3f} s ({} bytes of SVG)".format(
        min(later), sorted(later)[2], len(body)))
    for _ in range(60):  # a minute of new rows, then a plot that catches up with them
        response = yield treq.post(url + "/upload", data=b'{"co2": [701]}', headers={"Content-Type": "application/json"}, persistent=False)
        yield treq.content(response)
    elapsed, _ = yield timed_get(plot)
    print("GET /plot after 60 new uploads: {:.3f} s".format(elapsed))
    filtered = []
    for _ in range(3):
        elapsed, _ = yield timed_get(plot + "&box=box1")
        filtered.append(elapsed)
    print("GET /plot&box=box1: first {:.3f} s, then best {:.3f} s".format(filtered[0], min(filtered[1:])))
    day = url + "/plot?cols=co2,temperature&since={}&until={}".format(T0 + rows - 86400, T0 + rows)
    timings = []
    for _ in range(4):
        elapsed, _ = yield timed_get(day)
        timings.append(elapsed)
    print("GET /plot of the last day: best {:.3f} s".format(min(timings)))
    elapsed, _ = yield timed_get(url + "/?" + since)
    print("GET / (dashboard, whole range, humidity not rolled up yet), first visit: {:.1f} s".format(elapsed))
    started = time.perf_counter()
    yield store.rollups_idle()
    print("  humidity's rollup fill in the background: {:.1f} s more".format(time.perf_counter() - started))
    dashboard = []
    for _ in range(3):
        elapsed, _ = yield timed_get(url + "/?" + since)
        dashboard.append(elapsed)
    print("GET / (dashboard, whole range), later visits: best {:.3f} s".format(min(dashboard)))
    size = sqlite3.connect(path).execute(
        "SELECT count(*), sum(span = 60) FROM co2logd_rollup").fetchone()
    print("rollup rows: {} ({} per minute, the rest per hour); file now {:.2f} GB".format(
        size[0], size[1], os.path.getsize(path) / 1e9))
    if options.exact:
        edges = _edges(rows)
        start = time.perf_counter()
        yield store.plot_buckets(["co2", "temperature"], edges, rollups=False)
        print("exact path without rollups (every row read): {:.1f} s".format(time.perf_counter() - start))
    if options.group_by:
        print("plain GROUP BY bucket query (for comparison): {:.1f} s".format(group_by_seconds(path, rows)))
    yield port.stopListening()
    yield store.stopService()
    if not options.db:
        os.remove(path)


def spread(latencies) -> str:
    if not latencies:
        return "none"
    ordered = sorted(latencies)
    return "median {:.3f} s, 99th percentile {:.3f} s, slowest {:.3f} s".format(
        ordered[len(ordered) // 2], ordered[int(len(ordered) * 0.99)], ordered[-1])


def _edges(rows: int):
    from co2logd.plot import bucket_edges, plot_area_width
    from co2logd.timerange import time_text

    return [time_text(t) for t in bucket_edges(T0 - 1, T0 + rows + 1, plot_area_width(800))]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="?", type=int, default=YEAR)
    parser.add_argument("--db", help="keep the generated file here and reuse it")
    parser.add_argument("--exact", action="store_true", help="also time the exact path without rollups")
    parser.add_argument("--group-by", action="store_true", help="also time a plain GROUP BY query")
    task.react(main, [parser.parse_args()])
