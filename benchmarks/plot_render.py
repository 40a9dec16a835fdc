"""
How long does a plot of one million rows take?

Fills a fresh SQLite file with ROWS rows of 1 Hz data (co2, temperature,
humidity, three boxes), opens it with co2logd's Store (which creates the
upload-time index, schema version 2) and times, for the whole range:

* ``GET /plot`` of two columns over HTTP from a running site (what a user waits for),
* the dashboard ``GET /`` with ``since`` covering everything (three plots, latest values,
  sources; the first visit scans all rows once for the sources table),
* for comparison, the plain ``GROUP BY bucket`` query the store avoids.

Usage: python benchmarks/plot_render.py [ROWS] (default 1000000).
"""

from __future__ import annotations

import datetime
import math
import os
import random
import sqlite3
import sys
import tempfile
import time

import treq
from twisted.internet import defer, task

from co2logd.ingest import IngestService
from co2logd.settings import Settings
from co2logd.store import Store, prepare_database
from co2logd.web.site import make_site

T0 = 1_700_000_000


def fill(path: str, rows: int, settings) -> None:
    prepare_database(path, settings)
    connection = sqlite3.connect(path)
    for column, declared in (("co2", "INTEGER"), ("temperature", "REAL"), ("humidity", "REAL"), ("box", "TEXT")):
        connection.execute('ALTER TABLE data ADD COLUMN "{}" {}'.format(column, declared))
    rng = random.Random(0)

    def generate():
        for i in range(rows):
            t = T0 + i + rng.random() * 0.5
            when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(" ")
            hour = (t % 86400) / 3600
            yield (
                when, "udp:10.0.0.{}".format(i % 3), int(600 + 400 * math.sin(hour / 3.8) + rng.gauss(0, 40)),
                21 + 2 * math.sin(hour / 4) + rng.gauss(0, 0.1), 50 + 5 * math.cos(hour / 5), "box{}".format(i % 3),
            )

    connection.executemany(
        'INSERT INTO data (time_upload_utc, transport, co2, temperature, humidity, box) VALUES (?, ?, ?, ?, ?, ?)',
        generate(),
    )
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
def main(reactor, rows: int):
    directory = tempfile.mkdtemp(prefix="co2logd-bench-")
    path = os.path.join(directory, "bench.sqlite")
    settings = Settings.from_values({"DASHBOARD_REFRESH_SECONDS": 0}, environ={})
    started = time.perf_counter()
    fill(path, rows, settings.replace(DB=path))
    print("filled {} rows in {:.1f} s".format(rows, time.perf_counter() - started))
    started = time.perf_counter()
    store = Store.open(path, settings)  # schema version 2: the upload-time index
    print("opened (index built) in {:.1f} s".format(time.perf_counter() - started))
    store.startService()
    ingest = IngestService(settings, store, reactor)
    port = reactor.listenTCP(0, make_site(settings, ingest, store, reactor), interface="127.0.0.1")
    url = "http://127.0.0.1:{}".format(port.getHost().port)
    since = "since={}&until={}".format(T0 - 1, T0 + rows + 1)
    timings = {"plot": [], "dashboard": []}
    for attempt in range(4):
        for name, path_query in (("plot", "/plot?cols=co2,temperature&" + since), ("dashboard", "/?" + since)):
            start = time.perf_counter()
            response = yield treq.get(url + path_query, persistent=False)
            body = yield treq.content(response)
            assert response.code == 200, body[:200]
            timings[name].append(time.perf_counter() - start)
    for name, values in timings.items():
        print("GET {:<10} first {:.3f} s, then best {:.3f} s, median {:.3f} s".format(
            name, values[0], min(values[1:]), sorted(values[1:])[len(values[1:]) // 2]))
    print("plain GROUP BY bucket query (for comparison): {:.3f} s".format(group_by_seconds(path, rows)))
    yield port.stopListening()
    store.stopService()
    os.remove(path)


if __name__ == "__main__":
    task.react(main, [int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000])
