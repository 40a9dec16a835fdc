"""
How long a backlog of OpenSenseMap measurements takes to drain.

Queues 100,000 measurements (25,000 rows × 4 sensor columns, 2 boxes) in a
temporary database's outbox, then drains them with the real uploader and
sensemapi against the fake API on loopback (same process), and prints the
time and measurements per second.  The request budget is lifted for the
run; the time with the default budget is printed as well (it is bounded by
the budget, not by co2logd).

    python benchmarks/osem_drain.py [MEASUREMENTS]
"""

import datetime
import os
import sys
import tempfile
import time

from twisted.internet import defer, task

from co2logd.osem import outbox_entries_for
from co2logd.osem.fake import FakeOpenSenseMap, listen
from co2logd.osem.uploader import OsemUploader
from co2logd.settings import Settings
from co2logd.store import Store, WriteRequest

SENSORS = ["scd30_co2_ppm", "sht_temperature_c", "sht_humidity_percent", "bme_pressure_hpa"]


@defer.inlineCallbacks
def main(reactor, total="100000"):
    total = int(total)
    api = FakeOpenSenseMap(reactor)
    api.add_user("bench@example.org", "pw")
    fake = listen(api, reactor)
    directory = tempfile.mkdtemp()
    path = os.path.join(directory, "bench.sqlite")
    settings = Settings.from_values(
        {
            "OSEM_UPLOAD": True,
            "OSEM_API": fake.url,
            "OSEM_EMAIL": "bench@example.org",
            "OSEM_PASSWORD": "pw",
            "OSEM_AUTH_CACHE": False,
            "OSEM_REQUEST_CACHE": False,
            "OSEM_REQUESTS_PER_MINUTE": 1e9,
            "OSEM_REQUEST_BURST": 1000,
            "OSEM_POLL_SECONDS": 0.05,
            "DB": path,
        },
        environ={},
    )
    store = Store.open(path, settings)
    store.startService()
    mapper = outbox_entries_for(settings, reactor)
    rows_total = total // len(SENSORS)
    start = int(time.time()) - rows_total - 3600
    columns = settings.automatic_columns + ["box", "time", "lat", "lon"] + SENSORS
    queued = 0
    began = time.monotonic()
    for chunk in range(0, rows_total, 5000):
        dicts, rows = [], []
        for i in range(chunk, min(chunk + 5000, rows_total)):
            box = "b{}".format(i % 2)
            values = [400 + i % 100, 20 + (i % 50) / 10, 40 + i % 30, 1000 + i % 20]
            t = start + i
            when = datetime.datetime.fromtimestamp(t, datetime.timezone.utc)
            dicts.append(dict(zip(["box", "time", "lat", "lon"] + SENSORS, [box, when, 48.5, 9.05] + values)))
            rows.append(("2024-01-01 00:00:00", None, None, "bench", box, when.isoformat(" "), 48.5, 9.05, *values))
        entries, n = mapper(dicts)
        new = {} if queued else {c: float for c in ["box", "time", "lat", "lon"] + SENSORS}
        yield store.write(WriteRequest(columns, rows, new, outbox=entries, queued_at=reactor.seconds()))
        queued += n
    print("queued {} measurements in {:.1f}s".format(queued, time.monotonic() - began))

    uploader = OsemUploader(settings, store, reactor)
    began = time.monotonic()
    uploader.startService()
    while True:
        stats = yield store.outbox_stats()
        if stats["depth"] == 0:
            break
        yield task.deferLater(reactor, 0.05, lambda: None)
    elapsed = time.monotonic() - began
    yield uploader.stopService()
    delivered = len(api.measurements)
    posts = sum(1 for m, p in api.requests if m == "POST" and p.endswith("/data"))
    print(
        "drained {} measurements in {:.2f}s ({:.0f} measurements/s), {} data POSTs, {} requests in all".format(
            delivered, elapsed, delivered / elapsed, posts, len(api.requests)
        )
    )
    default = Settings.from_values({}, environ={})
    writes = posts + 4  # + box creation (POST + PUT) per box
    rate = default.OSEM_REQUESTS_PER_MINUTE / 60.0
    bounded = max(0.0, (writes - default.OSEM_REQUEST_BURST) / rate)
    print(
        "with the default budget ({:g}/min, burst {}) the same {} write requests take at least {:.0f}s".format(
            default.OSEM_REQUESTS_PER_MINUTE, default.OSEM_REQUEST_BURST, writes, bounded
        )
    )
    assert delivered == queued, (delivered, queued)
    yield store.stopService()
    yield fake.stop()


if __name__ == "__main__":
    task.react(main, sys.argv[1:])
