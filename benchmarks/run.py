"""
co2logd against co2logserver 0.1.2, side by side, in one run on 127.0.0.1.

    python benchmarks/run.py            # from the repository root, in co2logd's environment

It installs co2logserver 0.1.2 with gunicorn into a side virtual environment
(``benchmarks/.venv``, reused by later runs), then starts each server in turn
on fresh databases and drives it with the same load generator
(:mod:`loadgen`):

  (a) single-row JSON, 8 concurrent keep-alive clients
  (b) 100-row JSON
  (c) 1000-row CSV
  (d) (a) again with one million rows already in the database
  (e) UDP datagrams at rising rates (co2logd only), reporting loss
  (f) 1000-line InfluxDB line-protocol batches to /api/v2/write (co2logd only)
  (g) single airrohr "own API" uploads, (h) single TTN webhook uplinks, to /upload (co2logd only)

and measures the ceilings in the same run: a bare twisted.web POST resource
under (a)'s load, and raw sqlite3 executemany (WAL, synchronous=FULL,
1000-row transactions) into the same table layout on the same disk.  It
prints one table (req/s, rows/s, p50/p99 latency, RSS, ratios) and checks
that every server stored exactly the rows it acknowledged.  See
docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, REPO)

import loadgen  # noqa: E402

# co2logserver 0.1.2 only says "flask"; these are the versions this benchmark was checked with
CO2LOGSERVER_PACKAGES = ["co2logserver==0.1.2", "flask==3.1.3", "werkzeug==3.1.9", "gunicorn==27.0.1"]
PREFILL_ROWS = 1_000_000

COLUMNS = ["time_utc", "co2", "temperature_c", "humidity"]


def sample(i: int) -> List[Any]:
    """One measurement row: time, CO2 ppm, °C, %."""
    return [1_700_000_000 + i, 400 + i % 600, round(18 + (i % 100) / 10, 1), round(30 + (i % 400) / 10, 1)]


def json_body(rows: int) -> bytes:
    """co2logserver's JSON shape: an object of lists."""
    data = [sample(i) for i in range(rows)]
    return json.dumps({name: [r[k] for r in data] for k, name in enumerate(COLUMNS)}, separators=(",", ":")).encode()


def csv_body(rows: int) -> bytes:
    """A header line and ``rows`` lines."""
    lines = [",".join(COLUMNS)] + [",".join(str(v) for v in sample(i)) for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def lineprotocol_body(rows: int) -> bytes:
    """Telegraf-shaped line protocol: one point per line, a box tag, integer and float fields, second timestamps."""
    return "".join(
        "co2,box=lab-{},room=r{} ppm={}i,temperature={},humidity={} {}\n".format(i % 8, i % 3, *sample(i)[1:], 1_700_000_000 + i)
        for i in range(rows)
    ).encode()


def airrohr_body(i: int) -> bytes:
    """airrohr's "Send data to own API" body (firmware NRZ-2024-135), as the firmware builds it."""
    values = [("SDS_P1", "12.30"), ("SDS_P2", "7.10"), ("BME280_temperature", "21.40"), ("BME280_pressure", "100520.25"),
              ("BME280_humidity", "39.60"), ("SCD30_co2_ppm", str(400 + i % 600)), ("samples", "580590"), ("min_micro", "216"),
              ("max_micro", "3503442"), ("interval", "145000"), ("signal", "-38")]
    return ('{"esp8266id": "1234567", "software_version": "NRZ-2024-135", "sensordatavalues":['
            + ",".join('{{"value_type":"{}","value":"{}"}}'.format(t, v) for t, v in values) + "]}").encode()


def ttn_body(i: int) -> bytes:
    """A The Things Stack v3 webhook uplink; ``i`` is its frame counter, so every one is a new uplink."""
    return json.dumps({
        "end_device_ids": {"device_id": "co2-node-7", "application_ids": {"application_id": "lab"}, "dev_eui": "70B3D57ED0000001",
                           "join_eui": "0000000000000000", "dev_addr": "260B1234"},
        "correlation_ids": ["as:up:01H0"], "received_at": "2024-05-06T07:08:09.123456789Z",
        "uplink_message": {
            "session_key_id": "AYZ1d2VLw3Y=", "f_port": 2, "f_cnt": i, "frm_payload": "AmQBLA==",
            "decoded_payload": {"co2": 400 + i % 600, "temperature": 21.5, "battery": {"volts": 3.61}},
            "rx_metadata": [{"gateway_ids": {"gateway_id": "gw-roof"}, "time": "2024-05-06T07:08:09.012345678Z", "rssi": -97, "snr": 7.25}],
            "received_at": "2024-05-06T07:08:09.100000000Z",
        },
    }).encode()


# dialect scenarios: title, request bodies (taken in turn), content type, path, rows per request
DIALECT_BODIES = 40_000  # distinct uplinks: a repeated one would be de-duplicated, not stored
DIALECTS = {
    "f": ("1000-line line protocol", lambda: [lineprotocol_body(1000)], "text/plain; charset=utf-8", "/api/v2/write?org=o&bucket=b&precision=s", 1000),
    "g": ("airrohr single upload", lambda: [airrohr_body(i) for i in range(100)], "application/json", "/upload", 1),
    "h": ("TTN single uplink", lambda: [ttn_body(i) for i in range(DIALECT_BODIES)], "application/json", "/upload", 1),
}


SCENARIOS = {
    "a": ("single-row JSON", json_body(1), "application/json", 1),
    "b": ("100-row JSON", json_body(100), "application/json", 100),
    "c": ("1000-row CSV", csv_body(1000), "text/csv", 1000),
}


# -- processes ---------------------------------------------------------------


# What a server prints once it listens, with the port it bound: every server
# here is started on port 0 and its port read back from its log, so no other
# process can take the port between a pick and the bind.
# co2logd: "Listening for HTTP on 127.0.0.1:43125", "Listening for UDP uploads on 127.0.0.1:35546, ...";
# gunicorn: "Listening at: http://127.0.0.1:43125 (1234)"; bare_server.py as co2logd.
LISTENING = re.compile(r"Listening (?:for (?P<kind>[A-Za-z]+)\b[^\n]*? on |at: http://)(?P<host>[^\s,/]+?):(?P<port>\d+)")


def listening_ports(log: str) -> Dict[str, int]:
    """The ports a server's log says it listens on, by kind ("HTTP", "UDP")."""
    return {(m.group("kind") or "HTTP").upper(): int(m.group("port")) for m in LISTENING.finditer(log)}


def wait_until_listening(
    process: subprocess.Popen, log_path: str, kinds=("HTTP",), offset: int = 0, timeout: float = 60.0
) -> Dict[str, int]:
    """Poll the log (from byte ``offset``) until it names a port for each of ``kinds``; SystemExit if the server dies first."""
    deadline = time.monotonic() + timeout
    while True:
        with open(log_path, "rb") as f:
            f.seek(offset)
            ports = listening_ports(f.read().decode(errors="replace"))
        if all(kind in ports for kind in kinds):
            return ports
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise SystemExit("server did not start; see {}".format(log_path))
        time.sleep(0.05)


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children, in MB."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            with open("/proc/{}/status".format(p)) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            for task in os.listdir("/proc/{}/task".format(p)):
                with open("/proc/{}/task/{}/children".format(p, task)) as f:
                    pids.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total / 1024


class Server:
    """
    A server process started for one measurement and stopped after it.  Its
    ``argv`` binds port 0; ``ports`` (and ``port``, the HTTP one) are read
    back from its log once it names a port for each of ``listens``.
    """

    def __init__(
        self, name: str, argv: List[str], cwd: str, env: Dict[str, str], log_path: str, listens=("HTTP",)
    ):
        self.name = name
        environment = dict(os.environ)
        environment.pop("CO2LOGSERVER_CONFIG", None)
        environment.update(env)
        self.log = open(log_path, "ab")
        offset = self.log.tell()
        self.process = subprocess.Popen(argv, cwd=cwd, env=environment, stdout=self.log, stderr=subprocess.STDOUT)
        self.ports = wait_until_listening(self.process, log_path, listens, offset) if listens else {}
        self.port = self.ports.get("HTTP")

    def rss(self) -> float:
        return rss_mb(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def count_rows(db: str) -> int:
    connection = sqlite3.connect(db)
    try:
        return connection.execute("SELECT count(*) FROM data").fetchone()[0]
    finally:
        connection.close()


def prefill(db: str, rows: int) -> None:
    """Copy the one row an upload created until the table holds ``rows`` rows (any schema)."""
    connection = sqlite3.connect(db, isolation_level=None)
    try:
        have = connection.execute("SELECT count(*) FROM data").fetchone()[0]
        connection.execute("BEGIN")
        connection.execute(
            "INSERT INTO data SELECT data.* FROM (SELECT * FROM data LIMIT 1) AS data, "
            "(WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < ?) SELECT x FROM n)",
            (rows - have,),
        )
        connection.execute("COMMIT")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        connection.close()


# -- the servers -------------------------------------------------------------


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = tempfile.mkdtemp(prefix="co2logd-bench-", dir=args.workdir)
        self.results: Dict[str, Dict[str, Any]] = {}
        self.checks: List[str] = []
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print("[{:5.0f} s] {}".format(time.monotonic() - self.started, text), flush=True)

    def db(self, name: str) -> str:
        return os.path.join(self.work, name + ".sqlite")

    # co2logserver in its side environment
    def co2logserver_venv(self) -> str:
        venv = self.args.venv
        marker = os.path.join(venv, "co2logd-bench-packages.txt")
        wanted = "\n".join(CO2LOGSERVER_PACKAGES)
        if os.path.exists(marker) and open(marker).read() == wanted:
            return venv
        self.say("installing {} into {}".format(" ".join(CO2LOGSERVER_PACKAGES), venv))
        if os.path.exists(venv):
            shutil.rmtree(venv)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", venv], check=True)
        subprocess.run(
            [os.path.join(venv, "bin", "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
            + CO2LOGSERVER_PACKAGES,
            check=True,
        )
        with open(marker, "w") as f:
            f.write(wanted)
        return venv

    def start_co2logserver(self, db: str) -> Server:
        gunicorn = os.path.join(self.args.venv, "bin", "gunicorn")
        config = db + ".config.py"  # co2logserver reads its settings from a file named by $CO2LOGSERVER_CONFIG
        with open(config, "w") as f:
            f.write("CO2LOGSERVER_DB = {!r}\n".format(db))
        # README's production command: `gunicorn co2logserver` (one sync worker)
        return Server(
            "co2logserver", [gunicorn, "-b", "127.0.0.1:0", "co2logserver"],
            self.work, {"CO2LOGSERVER_CONFIG": config}, os.path.join(self.work, "co2logserver.log"),
        )

    def start_co2logd(self, db: str, udp: bool = False) -> Server:
        """co2logd on ``db``, HTTP (and UDP) on ports of its own: ``server.port``, ``server.ports["UDP"]``."""
        argv = [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", db]
        if udp:
            argv += ["--udp", "udp:0:interface=127.0.0.1"]
        return Server(
            "co2logd", argv, self.work, {"PYTHONPATH": REPO}, os.path.join(self.work, "co2logd.log"),
            listens=("HTTP", "UDP") if udp else ("HTTP",),
        )

    def start_bare(self) -> Server:
        return Server(
            "twisted.web", [sys.executable, os.path.join(HERE, "bare_server.py")],
            self.work, {"PYTHONPATH": REPO}, os.path.join(self.work, "bare.log"),
        )

    # one measurement
    def measure(self, key: str, server: Server, scenario: str, db: Optional[str], before: int = 0, requests=None) -> Dict[str, Any]:
        if requests is None:
            title, body, content_type, rows = SCENARIOS[scenario]
            data = loadgen.http_request(server.port, body, content_type)
        else:
            data, rows = requests
        try:
            r = loadgen.run_http(server.port, data, self.args.clients, self.args.warmup, self.args.duration, rows_per_204=rows)
            r["rows_s"] = r["req_s"] * rows
            r["rss_mb"] = server.rss()
        finally:
            server.stop()
        if db is not None:
            stored = count_rows(db) - before
            r["stored"] = stored
            ok = stored == r["acknowledged"]
            r["check"] = "ok" if ok else "MISMATCH"
            if not ok:
                self.checks.append("{}: stored {} rows, acknowledged {}".format(key, stored, r["acknowledged"]))
        if r["errors"]:
            self.checks.append("{}: {} client errors, e.g. {}".format(key, r["errors"], r["error_samples"]))
        best = self.results.get(key)
        if best is None or r["req_s"] > best["req_s"]:  # best of --repeat: other load on the machine only ever slows a run
            self.results[key] = r
        self.say(
            "{:<22} {:>9.0f} req/s {:>10.0f} rows/s  p50 {:.2f} ms  p99 {:.2f} ms  RSS {:.0f} MB{}".format(
                key, r["req_s"], r["rows_s"], r["p50_ms"], r["p99_ms"], r["rss_mb"],
                "  ({:.0f} busy/s)".format(r["busy_s"]) if r["busy_s"] else "",
            )
        )
        return r

    def run_server(self, name: str, start) -> None:
        for scenario in "abc":
            for attempt in range(self.args.repeat):
                db = self.db("{}-{}{}".format(name, scenario, attempt))
                self.measure("{} ({})".format(name, scenario), start(db), scenario, db)
        # (d): one upload creates the table, copies of its row fill it to a million
        db = self.db("{}-d".format(name))
        server = start(db)
        try:
            loadgen.Connection(server.port, 30).request(loadgen.http_request(server.port, *SCENARIOS["a"][1:3]))
        finally:
            server.stop()
        self.say("filling {} with {:,} rows".format(os.path.basename(db), self.args.prefill))
        prefill(db, self.args.prefill)
        for attempt in range(self.args.repeat):
            self.measure("{} (d)".format(name), start(db), "a", db, before=count_rows(db))

    # (f), (g), (h): the client dialects, with (a) measured alongside when the co2logd part did not run
    def dialects(self) -> None:
        if "co2logd (a)" not in self.results:
            for attempt in range(self.args.repeat):
                db = self.db("co2logd-a-dialects{}".format(attempt))
                self.measure("co2logd (a)", self.start_co2logd(db), "a", db)
        for scenario, (title, make, content_type, path, rows) in DIALECTS.items():
            bodies = make()
            for attempt in range(self.args.repeat):
                db = self.db("co2logd-{}{}".format(scenario, attempt))
                server = self.start_co2logd(db)
                data = [loadgen.http_request(server.port, body, content_type, path) for body in bodies]
                self.measure("co2logd ({})".format(scenario), server, scenario, db, requests=(data, rows))

    # ceilings
    def ceiling_twisted_web(self) -> None:
        for attempt in range(self.args.repeat):
            self.measure("twisted.web bare (a)", self.start_bare(), "a", None)

    def ceiling_executemany(self) -> None:
        from co2logd.store import prepare_database
        from co2logd.settings import Settings

        db = self.db("raw-executemany")
        prepare_database(db, Settings.from_values({}, environ={}))
        connection = sqlite3.connect(db, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        for name, declared in zip(COLUMNS, ["INTEGER", "INTEGER", "REAL", "REAL"]):
            connection.execute('ALTER TABLE data ADD COLUMN "{}" {}'.format(name, declared))
        columns = ["time_upload_utc", "matched_checksums", "failed_checksums", "transport"] + COLUMNS
        sql = "INSERT INTO data ({}) VALUES ({})".format(", ".join(columns), ", ".join("?" * len(columns)))
        batch = [("2023-11-14 22:13:20+00:00", None, None, "http", *sample(i)) for i in range(1000)]
        best = 0.0
        for attempt in range(self.args.repeat):
            rows = 0
            start = time.perf_counter()
            while time.perf_counter() - start < self.args.duration / 2:
                connection.execute("BEGIN IMMEDIATE")
                connection.executemany(sql, batch)
                connection.execute("COMMIT")
                rows += len(batch)
            rate = rows / (time.perf_counter() - start)
            best = max(best, rate)
            self.say("sqlite3 executemany     {:>10.0f} rows/s (1000-row transactions, WAL, synchronous=FULL)".format(rate))
        connection.close()
        self.results["sqlite3 executemany"] = {"rows_s": best}

    # (e)
    def udp(self) -> None:
        db = self.db("co2logd-udp")
        server = self.start_co2logd(db, udp=True)
        datagrams = [json_body(1)]
        self.results["udp"] = {"rates": []}
        try:
            self._udp_rates(db, server.ports["UDP"], datagrams)
            self.results["udp"]["rss_mb"] = server.rss()
        finally:
            server.stop()

    def _udp_rates(self, db: str, udp_port: int, datagrams: List[bytes]) -> None:
        for rate in self.args.udp_rates:
            before = count_rows(db)
            sent = loadgen.run_udp(udp_port, datagrams, rate, self.args.udp_seconds)
            stored = self._settled_count(db) - before
            lost = sent["sent"] - stored
            row = {
                "offered": rate,
                "sent_s": sent["sent"] / sent["seconds"],
                "sent": sent["sent"],
                "stored": stored,
                "lost": lost,
                "stored_s": stored / sent["seconds"],
            }
            self.results["udp"]["rates"].append(row)
            self.say(
                "co2logd UDP {:>6} /s offered: sent {} stored {} lost {} ({:.2%})".format(
                    rate, sent["sent"], stored, lost, lost / max(sent["sent"], 1)
                )
            )

    def _settled_count(self, db: str) -> int:
        """The row count once it stops growing (the daemon has caught up)."""
        last, still = -1, 0
        while still < 3:
            time.sleep(0.2)
            n = count_rows(db)
            still = still + 1 if n == last else 0
            last = n
        return last


# -- the table ---------------------------------------------------------------


def ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    if a is None or b in (None, 0):
        return None
    return a / b


def report(bench: Bench) -> int:
    R = bench.results
    get = lambda key, field: R.get(key, {}).get(field)  # noqa: E731
    bare = get("twisted.web bare (a)", "req_s")
    raw = get("sqlite3 executemany", "rows_s")
    lines = []
    header = "{:<22} {:>9} {:>10} {:>8} {:>8} {:>7} {:>9} {:>12} {:>7}".format(
        "measurement", "req/s", "rows/s", "p50 ms", "p99 ms", "RSS MB", "co2logd/", "co2logd/", "stored="
    )
    header2 = "{:<22} {:>9} {:>10} {:>8} {:>8} {:>7} {:>9} {:>12} {:>7}".format(
        "", "", "", "", "", "", "co2logsrv", "ceiling", "acked"
    )
    lines += [header, header2, "-" * len(header)]

    def fmt(v, spec):
        return format(v, spec) if v is not None else "-"

    for key in ["twisted.web bare (a)", "sqlite3 executemany"]:
        r = R.get(key)
        if r:
            lines.append("{:<22} {:>9} {:>10} {:>8} {:>8} {:>7} {:>9} {:>12} {:>7}".format(
                key, fmt(r.get("req_s"), ".0f"), fmt(r.get("rows_s"), ".0f"), fmt(r.get("p50_ms"), ".2f"),
                fmt(r.get("p99_ms"), ".2f"), fmt(r.get("rss_mb"), ".0f"), "", "", ""))
    targets = []
    for s in "abcd":
        for name in ("co2logserver", "co2logd"):
            r = R.get("{} ({})".format(name, s))
            if not r:
                continue
            vs_cls = vs_ceiling = None
            if name == "co2logd":
                other = R.get("co2logserver ({})".format(s))
                vs_cls = ratio(r["rows_s"], other["rows_s"]) if other else None
                vs_ceiling = ratio(r["req_s"], bare) if s in "ad" else ratio(r["rows_s"], raw)
            lines.append("{:<22} {:>9} {:>10} {:>8} {:>8} {:>7} {:>9} {:>12} {:>7}".format(
                "{} ({})".format(name, s), fmt(r["req_s"], ".0f"), fmt(r["rows_s"], ".0f"), fmt(r["p50_ms"], ".2f"),
                fmt(r["p99_ms"], ".2f"), fmt(r["rss_mb"], ".0f"),
                fmt(vs_cls, ".1f") + ("x" if vs_cls is not None else ""),
                fmt(vs_ceiling, ".0%") + (" web" if s in "ad" and vs_ceiling is not None else " sql" if vs_ceiling is not None else ""),
                r.get("check", "-")))
    for s in "fgh":
        r = R.get("co2logd ({})".format(s))
        if r:
            lines.append("{:<22} {:>9} {:>10} {:>8} {:>8} {:>7} {:>9} {:>12} {:>7}".format(
                "co2logd ({})".format(s), fmt(r["req_s"], ".0f"), fmt(r["rows_s"], ".0f"), fmt(r["p50_ms"], ".2f"),
                fmt(r["p99_ms"], ".2f"), fmt(r["rss_mb"], ".0f"), "", "", r.get("check", "-")))
    udp = R.get("udp")
    if udp:
        lines.append("")
        lines.append("{:<22} {:>9} {:>10} {:>10} {:>8} {:>8}".format("co2logd UDP offered/s", "sent/s", "stored/s", "sent", "lost", "loss"))
        for row in udp["rates"]:
            lines.append("{:<22} {:>9.0f} {:>10.0f} {:>10} {:>8} {:>8.2%}".format(
                row["offered"], row["sent_s"], row["stored_s"], row["sent"], row["lost"], row["lost"] / max(row["sent"], 1)))
        lines.append("co2logd RSS after UDP: {:.0f} MB".format(udp["rss_mb"]))

    # targets (issue 6)
    a, b, c, d = (R.get("co2logd ({})".format(s)) for s in "abcd")
    ca, cb, cc = (R.get("co2logserver ({})".format(s)) for s in "abc")

    def target(label, value, goal, fmt_spec, higher=True):
        if value is None:
            targets.append("  {:<48} {:>10}   target {:<8} not measured".format(label, "-", goal[0]))
            return
        met = value >= goal[1] if higher else value <= goal[1]
        targets.append("  {:<48} {:>10}   target {:<8} {}".format(label, format(value, fmt_spec), goal[0], "met" if met else "MISSED"))

    target("(a) co2logd / co2logserver", ratio(a and a["req_s"], ca and ca["req_s"]), (">= 8x", 8), ".1f")
    target("(a) co2logd / bare twisted.web", ratio(a and a["req_s"], bare), (">= 55%", 0.55), ".0%")
    target("(b) co2logd / co2logserver (rows/s)", ratio(b and b["rows_s"], cb and cb["rows_s"]), (">= 100x", 100), ".0f")
    target("(b) co2logd / raw executemany", ratio(b and b["rows_s"], raw), (">= 50%", 0.5), ".0%")
    target("(c) co2logd / co2logserver (rows/s)", ratio(c and c["rows_s"], cc and cc["rows_s"]), (">= 100x", 100), ".0f")
    target("(c) co2logd / raw executemany", ratio(c and c["rows_s"], raw), (">= 50%", 0.5), ".0%")
    target("(d) co2logd at 1M rows / co2logd (a)", ratio(d and d["req_s"], a and a["req_s"]), (">= 90%", 0.9), ".0%")
    if udp:
        clean = [row["stored_s"] for row in udp["rates"] if row["lost"] == 0]
        target("(e) UDP datagrams/s stored with zero loss", max(clean) if clean else 0.0, (">= 10000", 10000), ".0f")
    f, g, h = (R.get("co2logd ({})".format(s)) for s in "fgh")
    if f or g or h:
        target("(f) line protocol, 1000-line batches, rows/s", f and f["rows_s"], (">= 100000", 100_000), ".0f")
        target("(g) airrohr single uploads / co2logd (a)", ratio(g and g["req_s"], a and a["req_s"]), (">= 80%", 0.8), ".0%")
        target("(h) TTN single uplinks / co2logd (a)", ratio(h and h["req_s"], a and a["req_s"]), (">= 80%", 0.8), ".0%")
    target("co2logd RSS after (d), MB", d and d["rss_mb"], ("<= 80", 80), ".0f", higher=False)
    target("co2logd p99 latency of (a), ms", a and a["p99_ms"], ("<= 10", 10), ".2f", higher=False)

    print()
    print("co2logd benchmark: {} clients, {:.0f} s measured after {:.0f} s warm-up, best of {} per row, {} cores, Python {}".format(
        bench.args.clients, bench.args.duration, bench.args.warmup, bench.args.repeat, os.cpu_count(), sys.version.split()[0]))
    print("\n".join(lines))
    print()
    print("targets (issue 6):")
    print("\n".join(targets))
    if bench.checks:
        print()
        print("CHECKS FAILED:")
        for c in bench.checks:
            print("  " + c)
    print()
    print("total {:.0f} s; work files in {}".format(time.monotonic() - bench.started, bench.work))
    return 1 if bench.checks else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds measured per HTTP measurement (default 6)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of load before measuring (default 1)")
    parser.add_argument("--repeat", type=int, default=2, help="measure each row this many times, keep the best (default 2)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent HTTP clients (default 8)")
    parser.add_argument("--prefill", type=int, default=PREFILL_ROWS, help="rows in the database for (d) (default 1,000,000)")
    parser.add_argument("--udp-rates", type=lambda s: [int(x) for x in s.split(",")], default=[2000, 5000, 10000, 15000, 20000, 30000],
                        help="datagrams/s offered in (e), comma-separated")
    parser.add_argument("--udp-seconds", type=float, default=3.0, help="seconds per UDP rate (default 3)")
    parser.add_argument("--venv", default=os.path.join(HERE, ".venv"), help="side environment for co2logserver (default benchmarks/.venv)")
    parser.add_argument("--workdir", default=None, help="where the databases go (default: the system's temp dir)")
    parser.add_argument("--skip-co2logserver", action="store_true", help="measure co2logd and the ceilings only")
    parser.add_argument("--only", default="ceilings,co2logserver,co2logd,udp,dialects", help="comma-separated parts to run (ceilings, co2logserver, co2logd, udp, dialects)")
    parser.add_argument("--keep", action="store_true", help="keep the databases and logs")
    args = parser.parse_args(argv)
    parts = set(args.only.split(","))
    if args.skip_co2logserver:
        parts.discard("co2logserver")

    bench = Bench(args)
    try:
        if "co2logserver" in parts:
            bench.co2logserver_venv()
        if "ceilings" in parts:
            bench.ceiling_executemany()
            bench.ceiling_twisted_web()
        if "co2logserver" in parts:
            bench.run_server("co2logserver", bench.start_co2logserver)
        if "co2logd" in parts:
            bench.run_server("co2logd", bench.start_co2logd)
        if "udp" in parts:
            bench.udp()
        if "dialects" in parts:
            bench.dialects()
        return report(bench)
    finally:
        if not args.keep:
            shutil.rmtree(bench.work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
