"""
How fast is the dashboard over a year of 1 Hz data sent as daily backfills,
and do uploads stay quick while a million-row backfill is rolled up?  (issue 10)

    python benchmarks/plot_render.py             # a year: 31.5 million rows, 4 GB; minutes
    python benchmarks/plot_render.py --days 60   # 5.2 million rows, the same million-row backfill
    python benchmarks/plot_render.py --days 8 --backfill-rows 100000   # a quick run

The data: 1 Hz readings (co2, temperature, humidity) from ``--sources``
boxes in turn (box k sends the seconds t with t % sources == k), so a day
is 86,400 rows, sent by each box once a day as one upload in co2logserver's
columns format with a ``time`` column (UNIX seconds, converted by
TIME_CONVERTER).  The year ends at today's midnight UTC.  Values depend on
the time of day and the box only, so every day is the first day shifted.

How the year gets into the database, fast and as the daemon stores it:

1. ``python -m co2logd`` runs on a real port and a fresh SQLite file; the
   first two days are uploaded through ``POST /upload``, one upload per box
   and day.
2. The daemon is stopped and the days in between are copied in SQL from
   those two, each day's measurement times shifted by whole days and its
   upload time set to one minute after the day's end (the data table's
   indexes are dropped for the copy and created again with their own SQL).  Before that, the
   script checks that the second day as the upload path stored it is,
   column for column, the first day shifted this way: the bulk rows are
   exactly what uploads would have stored.  Anything co2logd keeps beside the
   data table (measurement-time index, rollups) is left to the daemon, which
   treats these rows as rows another program wrote.
3. The daemon is started again and given time to roll everything up (the
   script waits until its rollup state has caught up with the data table,
   loading the dashboard every few seconds: some versions fill rollups only
   when a plot asks).
4. Timed: the dashboard ``GET /`` (its default view), the dashboard over the
   whole year, and ``GET /plot`` of the year; best and median of
   ``--repeat`` requests each.  Target: the dashboard in <= 0.3 s.
5. The last ``--backfill-rows`` rows (whole days, default a million) are
   sent through ``POST /upload`` as daily backfills, while another process
   sends single-row uploads every ``--every`` seconds and a third loads the
   dashboard every 5 s; the single-row latencies are taken from the first
   backfill upload until the rollups have caught up.  Target: p99 <= 50 ms.
6. The renders of 4 again, with the backfill in.

``--db PATH`` puts the database there (another disk, say) and keeps it.

``--baseline REV`` runs all of it first with the daemon of git revision REV
(exported with ``git archive``), then with this checkout, on data made the
same way, and prints each figure of this checkout as a ratio of the
baseline's:

    python benchmarks/plot_render.py --days 8 --backfill-rows 259200 --repeat 3 --baseline 889828c
"""

from __future__ import annotations

import argparse
import datetime
import html.parser
import json
import math
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import loadgen  # noqa: E402
from run import Server  # noqa: E402

DAY = 86400
TIME_COL = "time"
UPLOAD_COL = "time_upload_utc"  # co2logd's UPLOAD_TIME_COL default
LIVE_ROW = b'{"co2": [700], "temperature": [21.5], "humidity": [48.0], "box": ["live"]}'


# -- the data ------------------------------------------------------------------


def day_upload(day_start: int, box: int, sources: int) -> bytes:
    """One box's readings of one day, co2logserver's columns format with a ``time`` column."""
    times = list(range(day_start + box, day_start + DAY, sources))
    tod = [t % DAY for t in times]
    return json.dumps(
        {
            TIME_COL: times,
            "co2": [int(620 + 380 * max(0.0, math.sin(2 * math.pi * (s - 28800) / 43200)) + 25 * box + (s * 7919) % 41 - 20) for s in tod],
            "temperature": [round(20 + box + 2.5 * math.sin(2 * math.pi * (s - 36000) / DAY) + ((s * 104729) % 11 - 5) / 100, 2) for s in tod],
            "humidity": [round(45 + 8 * math.cos(2 * math.pi * s / DAY) - 3 * box, 1) for s in tod],
            "box": ["box{}".format(box)] * len(times),
        },
        separators=(",", ":"),
    ).encode()


def post(port: int, body: bytes) -> Dict[str, Any]:
    request = urllib.request.Request(
        "http://127.0.0.1:{}/upload".format(port), data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return json.load(response)


def timed_get(port: int, path: str) -> Tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen("http://127.0.0.1:{}{}".format(port, path), timeout=300) as response:
        body = response.read()
        assert response.status == 200, response.status
    return time.perf_counter() - start, body


def start_daemon(work: str, db: str, code: str = REPO) -> Server:
    """The daemon of the source tree ``code`` (this checkout, or a baseline's export)."""
    argv = [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", db]
    return Server("co2logd", argv, work, {"PYTHONPATH": code}, os.path.join(work, "co2logd.log"))


def export(rev: str) -> str:
    """The source tree of git revision ``rev`` of this repository, in a new temporary directory."""
    target = tempfile.mkdtemp(prefix="co2logd-baseline-")
    archive = subprocess.run(["git", "-C", REPO, "archive", rev], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", target], input=archive, check=True)
    return target


def upload_day(server: Server, day_start: int, sources: int) -> None:
    for box in range(sources):
        body = day_upload(day_start, box, sources)
        receipt = post(server.port, body)
        assert receipt.get("saved-in-db") == len(range(day_start + box, day_start + DAY, sources)), receipt


# -- the bulk path -------------------------------------------------------------


def max_rowid(db: str) -> int:
    connection = sqlite3.connect(db)
    try:
        return connection.execute("SELECT coalesce(max(rowid), 0) FROM data").fetchone()[0]
    finally:
        connection.close()


def quote(name: str) -> str:
    return '"{}"'.format(name.replace('"', '""'))


def shifted_select(columns: List[str], date: str, upload_text: str) -> str:
    """
    SELECT of a day's rows moved to ``date`` (YYYY-MM-DD), with the given
    upload time.  A day starts at midnight UTC, so only the date part of its
    stored times changes (cheaper than datetime() per row).
    """
    parts = []
    for c in columns:
        if c == TIME_COL:
            parts.append("'{}' || substr({}, 11)".format(date, quote(c)))
        elif c == UPLOAD_COL:
            parts.append("'{}'".format(upload_text))
        else:
            parts.append(quote(c))
    return "SELECT {} FROM data WHERE rowid > ? AND rowid <= ? ORDER BY rowid".format(", ".join(parts))


def date_of(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime("%Y-%m-%d")


def check_bulk_matches_uploads(connection, columns: List[str], first: int, day0: Tuple[int, int], day1: Tuple[int, int]) -> int:
    """The second uploaded day equals the first shifted by a day, every column but the upload time."""
    compared = [c for c in columns if c != UPLOAD_COL]
    index = [columns.index(c) for c in compared]
    stored = connection.execute(
        "SELECT {} FROM data WHERE rowid > ? AND rowid <= ? ORDER BY rowid".format(", ".join(quote(c) for c in compared)), day1
    ).fetchall()
    made = [tuple(row[i] for i in index) for row in connection.execute(shifted_select(columns, date_of(first + DAY), "x"), day0)]
    if stored != made:
        first = next((k for k, (a, b) in enumerate(zip(stored, made)) if a != b), min(len(stored), len(made)))
        raise SystemExit(
            "the bulk path would not store what the upload path stores: row {} of day 2 is {!r}, the shifted day 1 gives {!r} "
            "(columns {})".format(first, stored[first:first + 1], made[first:first + 1], compared)
        )
    return len(stored)


def bulk_days(db: str, first: int, days: range, day0: Tuple[int, int], day1: Tuple[int, int]) -> None:
    """Copy the uploaded days 0 and 1 into ``days`` (day indexes), shifted by whole days."""
    connection = sqlite3.connect(db, isolation_level=None)
    # a scratch file filled in one go with the daemon stopped: no journal, no syncs (set back to WAL after)
    connection.execute("PRAGMA journal_mode=OFF")
    connection.execute("PRAGMA synchronous=OFF")
    connection.execute("PRAGMA cache_size=-262144")
    columns = [r[1] for r in connection.execute("PRAGMA table_info(data)")]
    checked = check_bulk_matches_uploads(connection, columns, first, day0, day1)
    print("  checked: the upload path's day 2 ({} rows) is its day 1 shifted a day, column for column".format(checked))
    names = ", ".join(quote(c) for c in columns)
    # the data table's indexes are dropped for the copy and built again after it (twice as fast)
    indexes = connection.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'data' AND sql IS NOT NULL").fetchall()
    for name, _ in indexes:
        connection.execute("DROP INDEX {}".format(quote(name)))
    connection.execute("BEGIN")
    for n, d in enumerate(days):
        source = day0 if d % 2 == 0 else day1
        upload = datetime.datetime.fromtimestamp(first + (d + 1) * DAY + 60, datetime.timezone.utc).isoformat(" ")
        connection.execute("INSERT INTO data ({}) {}".format(names, shifted_select(columns, date_of(first + d * DAY), upload)), source)
        if n % 20 == 19:
            connection.execute("COMMIT")
            connection.execute("BEGIN")
    connection.execute("COMMIT")
    for _, sql in indexes:
        connection.execute(sql)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.close()


# -- watching the daemon -------------------------------------------------------


def backlog(db: str) -> Optional[int]:
    """
    Data rows the daemon has not rolled up yet, from its own state tables
    (``co2logd_*_state`` with a rowid mark per column or per job); None when
    this version keeps no such table.
    """
    connection = sqlite3.connect("file:{}?mode=ro".format(db), uri=True, timeout=30)
    try:
        top = connection.execute("SELECT coalesce(max(rowid), 0) FROM data").fetchone()[0]
        tables = [r[0] for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'co2logd\\_%\\_state' ESCAPE '\\'")]
        marks = []
        for table in tables:
            for column in [r[1] for r in connection.execute("PRAGMA table_info({})".format(quote(table)))]:
                if "rowid" in column.lower() or column.lower() == "filled_to":
                    value = connection.execute("SELECT min({}) FROM {}".format(quote(column), quote(table))).fetchone()[0]
                    if value is not None:
                        marks.append(value)
        return top - min(marks) if marks else None
    finally:
        connection.close()


def wait_rolled_up(server: Server, db: str, timeout: float, view: str) -> Tuple[float, Optional[int]]:
    """Wait until the backlog is 0 (or, for an unknown schema, the file stops changing for 3 s); load ``view`` every 5 s."""
    start = time.monotonic()
    last_view = 0.0
    watcher = sqlite3.connect(db)
    version, still = None, 0
    left = None
    try:
        while time.monotonic() - start < timeout:
            if time.monotonic() - last_view > 5:
                timed_get(server.port, view)
                last_view = time.monotonic()
            left = backlog(db)
            if left is not None:
                if left <= 0:
                    break
            else:
                now_version = watcher.execute("PRAGMA data_version").fetchone()[0]
                still = still + 1 if now_version == version else 0
                version = now_version
                if still >= 6:
                    break
            time.sleep(0.5)
    finally:
        watcher.close()
    return time.monotonic() - start, left


def _live_uploads(port: int, every: float, stop, results) -> None:
    """Single-row uploads every ``every`` seconds until ``stop`` is set; report their latencies."""
    conn = loadgen.Connection(port, 120)
    data = loadgen.http_request(port, LIVE_ROW, "application/json")
    latencies, failed = [], 0
    next_at = time.monotonic()
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            status, _ = conn.request(data)
        except (OSError, EOFError, ValueError):
            conn.close()
            status = None
        latencies.append(time.perf_counter() - t0)
        if status != 200:
            failed += 1
        next_at += every
        time.sleep(max(0.0, next_at - time.monotonic()))
    conn.close()
    results.put({"latencies": latencies, "failed": failed})


# -- the run -------------------------------------------------------------------


class RangeLinks(html.parser.HTMLParser):
    """The dashboard's range links: data-range → href (when the page marks them)."""

    def __init__(self):
        super().__init__()
        self.links: Dict[str, str] = {}

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "a" and attrs.get("data-range") and attrs.get("href"):
            self.links[attrs["data-range"]] = attrs["href"]


def year_view(port: int) -> str:
    """The page's own "all" (or 1 y) link when it has one, else ``/?since=366d``."""
    _, body = timed_get(port, "/")
    parser = RangeLinks()
    parser.feed(body.decode("utf-8", "replace"))
    for key in ("all", "1y", "365d"):
        if key in parser.links:
            href = parser.links[key]
            return href if href.startswith("/") else "/" + href
    return "/?since=366d"


def renders(port: int, repeat: int, label: str) -> Dict[str, float]:
    year = year_view(port)
    out = {}
    for name, path in (("dashboard, default view (/)", "/"), ("dashboard, the year", year),
                       ("GET /plot?cols=co2,temperature&since=366d", "/plot?cols=co2,temperature&since=366d")):
        # a parameter of its own per request: a dashboard that shares renders of identical views
        # (DASHBOARD_CACHE_SECONDS) must render each of these afresh
        timings = sorted(timed_get(port, "{}{}_bench={}".format(path, "&" if "?" in path else "?", k))[0] for k in range(repeat))
        out[name] = timings[0]
        shown = name if path in name else "{} ({})".format(name, path)
        print("  {} {:<58} best {:.3f} s, median {:.3f} s".format(label, shown, timings[0], timings[len(timings) // 2]))
    return out


def spread(latencies: List[float]) -> str:
    ordered = sorted(latencies)
    if not ordered:
        return "none"
    return "{} uploads, median {:.1f} ms, p99 {:.1f} ms, slowest {:.1f} ms".format(
        len(ordered), ordered[len(ordered) // 2] * 1000, loadgen._percentile(ordered, 0.99) * 1000, ordered[-1] * 1000)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365, help="days of 1 Hz data (default 365)")
    parser.add_argument("--sources", type=int, default=3, help="boxes taking turns (default 3)")
    parser.add_argument("--backfill-rows", type=int, default=1_000_000, help="rows of the timed backfill, rounded up to whole days (default 1,000,000)")
    parser.add_argument("--every", type=float, default=0.02, help="seconds between the single-row uploads during the backfill (default 0.02)")
    parser.add_argument("--repeat", type=int, default=5, help="requests per timed render (default 5)")
    parser.add_argument("--fill-timeout", type=float, default=900, help="most seconds to wait for the rollups (default 900)")
    parser.add_argument("--db", help="put the database here and keep it (with --baseline: the baseline's is PATH.baseline)")
    parser.add_argument("--baseline", metavar="REV",
                        help="first run the same with git revision REV of this repository (say the commit before a change), "
                             "then print this checkout's figures as ratios of the baseline's")
    args = parser.parse_args(argv)
    backfill_days = max(1, math.ceil(args.backfill_rows / DAY))
    if args.days < backfill_days + 3:
        raise SystemExit("--days must exceed the backfill's {} days by 3".format(backfill_days))
    runs = []
    if args.baseline:
        code = export(args.baseline)
        try:
            print("== baseline: {} ==".format(args.baseline))
            runs.append(("baseline " + args.baseline, run(args, code, args.db and args.db + ".baseline")))
        finally:
            shutil.rmtree(code, ignore_errors=True)
        print("== this checkout ==")
    runs.append(("this checkout", run(args, REPO, args.db)))
    if len(runs) == 2:
        (base_name, base), (_, this) = runs
        print()
        print("this checkout / {} (below 1: faster):".format(base_name))
        for key in this:
            if key in base and base[key]:
                print("  {:<66} {:>9.3f} / {:>9.3f} = {:.2f}".format(key, this[key], base[key], this[key] / base[key]))
    return 0


def run(args, code: str, keep: Optional[str]) -> Dict[str, float]:
    """One whole run with the daemon of source tree ``code``; the figures by name."""
    figures: Dict[str, float] = {}
    backfill_days = max(1, math.ceil(args.backfill_rows / DAY))
    end = int(time.time()) // DAY * DAY
    first = end - args.days * DAY
    bulk_until = args.days - backfill_days  # days [0, bulk_until) before the timed backfill
    work = tempfile.mkdtemp(prefix="co2logd-plot-")
    db = keep or os.path.join(work, "co2.sqlite")
    started = time.monotonic()
    try:
        for path in (db, db + "-wal", db + "-shm"):
            if os.path.exists(path):
                os.remove(path)
        server = start_daemon(work, db, code)
        try:
            upload_day(server, first, args.sources)
            day0 = (0, max_rowid(db))
            upload_day(server, first + DAY, args.sources)
            day1 = (day0[1], max_rowid(db))
        finally:
            server.stop()
        print("[{:4.0f} s] days 1-2 uploaded through POST /upload ({} uploads)".format(time.monotonic() - started, 2 * args.sources))
        bulk_days(db, first, range(2, bulk_until), day0, day1)
        print("[{:4.0f} s] days 3-{} copied in SQL: {:,} rows, {:.2f} GB".format(
            time.monotonic() - started, bulk_until, max_rowid(db), os.path.getsize(db) / 1e9))

        server = start_daemon(work, db, code)
        try:
            waited, left = wait_rolled_up(server, db, args.fill_timeout, "/?since=366d")
            print("[{:4.0f} s] rollups filled by the daemon in {:.0f} s{}".format(
                time.monotonic() - started, waited,
                "" if left == 0 else " (backlog unknown: waited for the file to stay unchanged 3 s)" if left is None
                else " (NOT caught up: {:,} rows left)".format(left)))
            figures["rollup fill after the bulk copy (s)"] = waited
            print("renders over {} days ({:,} rows), rollups filled:".format(bulk_until, max_rowid(db)))
            before = renders(server.port, args.repeat, "")
            figures.update(("before the backfill: {} (s)".format(k), v) for k, v in before.items())

            ctx = multiprocessing.get_context("fork")
            stop, results = ctx.Event(), ctx.Queue()
            live = ctx.Process(target=_live_uploads, args=(server.port, args.every, stop, results))
            live.start()
            sent_start = time.monotonic()
            sent = 0
            last_view = 0.0
            for d in range(bulk_until, args.days):
                upload_day(server, first + d * DAY, args.sources)
                sent += DAY
                if time.monotonic() - last_view > 5:
                    timed_get(server.port, "/")
                    last_view = time.monotonic()
            sending = time.monotonic() - sent_start
            waited, left = wait_rolled_up(server, db, args.fill_timeout, "/")
            stop.set()
            got = results.get(timeout=300)
            live.join()
            print("[{:4.0f} s] backfill of {:,} rows ({} days x {} boxes, one upload each) sent in {:.1f} s, "
                  "rolled up {:.1f} s later{}".format(
                      time.monotonic() - started, sent, backfill_days, args.sources, sending, waited,
                      "" if left == 0 else " (backlog unknown)" if left is None else " (NOT caught up: {:,} left)".format(left)))
            print("  single-row uploads every {:.0f} ms meanwhile: {}{}".format(
                args.every * 1000, spread(got["latencies"]), ", {} failed".format(got["failed"]) if got["failed"] else ""))
            ordered = sorted(got["latencies"])
            p99 = loadgen._percentile(ordered, 0.99) * 1000
            figures["backfill sent (s)"] = sending
            figures["single-row uploads during the backfill: median (ms)"] = ordered[len(ordered) // 2] * 1000 if ordered else 0.0
            figures["single-row uploads during the backfill: p99 (ms)"] = p99
            print("renders with the backfill in ({:,} rows):".format(max_rowid(db)))
            after = renders(server.port, args.repeat, "")
            figures.update(("with the backfill in: {} (s)".format(k), v) for k, v in after.items())
        finally:
            server.stop()
        dashboard = max(v for k, v in after.items() if k.startswith("dashboard"))
        print()
        print("targets (issue 10):")
        print("  dashboard render over the year (slowest view, best of {}): {:.3f} s   target <= 0.3 s: {}".format(
            args.repeat, dashboard, "met" if dashboard <= 0.3 else "MISSED"))
        print("  single-row upload p99 during the backfill's roll-up: {:.1f} ms   target <= 50 ms: {}".format(
            p99, "met" if p99 <= 50 else "MISSED"))
        print("  year render after / before the backfill: {:.2f}".format(
            dashboard / max(v for k, v in before.items() if k.startswith("dashboard"))))
        print("total {:.0f} s".format(time.monotonic() - started))
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    return figures


if __name__ == "__main__":
    sys.exit(main())
