"""
Upload attacks of issue 12 (findings 2 and 6), measured from outside.

    python benchmarks/attack_ingest.py                  # this checkout
    python benchmarks/attack_ingest.py --repo /work/main --attacks csv-rows,checksums

Starts ``python -m co2logd`` from ``--repo`` on 127.0.0.1 (a fresh database,
three salts in ``CHECKSUM_SALTS``), then sends each attack once while a
probe thread asks for a tiny page (``GET /no-such-page``, a 404 served on
the reactor) every 20 ms.  Per attack it prints the answer's status and
reason, the seconds until the answer, the **freeze** (the longest a probe
waited: the reactor could do nothing else meanwhile), and the peak RSS
growth of the server process during the attack (``VmHWM`` after, reset
through ``/proc/PID/clear_refs`` before, minus ``VmRSS`` before).  Attacks:

* ``json-columns``: one 100,000-value column and 1,000 empty columns (≈205 KiB)
* ``json-rows``: a list of 6,000 row objects with a new name each (≈70 KiB)
* ``csv-rows``: 5 million one-cell CSV rows (10 MiB)
* ``form-rows``: 2.6 million ``a=1`` form fields (10 MiB)
* ``msgpack-rows``: a 10 MiB msgpack column of 10 million values
* ``checksums``: 290 ``Content-MD5-Salted`` headers over a 10 MiB body
  (not UTF-8, so the parser refuses it at once), 3 salts

The server is restarted between attacks so one attack's memory does not
hide the next one's.  Only 127.0.0.1 is used; every client is bounded.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional, Tuple

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import Server  # noqa: E402
SALTS = ["salt-one", "salt-two", "salt-three"]
MIB = 1024 * 1024




def attacks() -> Dict[str, Tuple[bytes, List[Tuple[str, str]]]]:
    """Name → (body, headers)."""
    columns = {"c0": [1] * 100_000}
    columns.update(("e{}".format(i), []) for i in range(1, 1001))
    json_columns = json.dumps(columns, separators=(",", ":")).encode()
    json_rows = json.dumps([{"c{}".format(i): 1} for i in range(6_000)], separators=(",", ":")).encode()
    csv_rows = b"a\n" + b"1\n" * ((10 * MIB - 2) // 2)
    form_rows = b"&".join([b"a=1"] * ((10 * MIB) // 4))
    msgpack_rows = msgpack.packb({"a": [1] * (10 * MIB - 16)})
    # not UTF-8 from its first byte: parsing refuses it at once, so the figures are the hashing
    not_text = b"\xff" * (10 * MIB)
    checksum_headers = [("Content-Type", "text/csv")]
    # well-formed MD5 digests that match no salt, each checked; 290 of them
    # just fit in twisted.web's 16 KiB of request headers
    checksum_headers += [("Content-MD5-Salted", "{:032x}".format(i)) for i in range(290)]
    return {
        "json-columns": (json_columns, [("Content-Type", "application/json")]),
        "json-rows": (json_rows, [("Content-Type", "application/json")]),
        "csv-rows": (csv_rows, [("Content-Type", "text/csv")]),
        "form-rows": (form_rows, [("Content-Type", "application/x-www-form-urlencoded")]),
        "msgpack-rows": (msgpack_rows, [("Content-Type", "application/msgpack")]),
        "checksums": (not_text, checksum_headers),
    }


def status_kb(pid: int, key: str) -> int:
    with open("/proc/{}/status".format(pid)) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def start_server(repo: str, work: str) -> Server:
    """``python -m co2logd`` from a checkout, on a fresh database, with the salts of the attacks."""
    config = os.path.join(work, "config.py")
    with open(config, "w") as f:
        f.write("CO2LOGSERVER_CHECKSUM_SALTS = {!r}\n".format(SALTS))
    db = tempfile.mktemp(prefix="attack-", suffix=".sqlite", dir=work)
    argv = [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", db, "-c", config]
    return Server("co2logd", argv, work, {"PYTHONPATH": repo}, os.path.join(work, "server.log"))


def request(port: int, method: str, path: str, body: Optional[bytes] = None, headers=None, timeout: float = 600) -> Tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.putrequest(method, path)
        for name, value in headers or []:  # a list: the same name may come many times
            connection.putheader(name, value)
        if body is not None:
            connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def probe(port: int, stop: threading.Event, waits: List[float]) -> None:
    """Ask for a tiny page every 20 ms until ``stop``; record how long each answer took."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            request(port, "GET", "/no-such-page", timeout=600)
        except OSError:
            pass
        waits.append(time.monotonic() - started)
        time.sleep(0.02)


def run_attack(repo: str, work: str, name: str, body: bytes, headers: List[Tuple[str, str]]) -> Dict[str, object]:
    server = start_server(repo, work)
    try:
        pid = server.process.pid
        request(server.port, "GET", "/no-such-page")  # warm up
        with open("/proc/{}/clear_refs".format(pid), "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        rss_before = status_kb(pid, "VmRSS")
        waits: List[float] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(server.port, stop, waits))
        prober.start()
        time.sleep(0.1)
        started = time.monotonic()
        try:
            status, answer = request(server.port, "POST", "/upload", body, headers)
        except OSError as e:
            status, answer = 0, str(e).encode()
        seconds = time.monotonic() - started
        time.sleep(0.05)
        stop.set()
        prober.join(700)
        peak = status_kb(pid, "VmHWM")
        try:
            reason = json.loads(answer).get("reason", "")
        except ValueError:
            reason = answer[:40].decode("latin-1")
        return {
            "attack": name, "bytes": len(body), "status": status, "reason": reason, "seconds": seconds,
            "freeze": max(waits, default=0.0), "rss_growth_mb": (peak - rss_before) / 1024,
        }
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", default=REPO, help="the checkout whose co2logd to run (default: this one)")
    parser.add_argument("--attacks", default=None, help="comma-separated attack names (default: all)")
    args = parser.parse_args()
    catalogue = attacks()
    names = args.attacks.split(",") if args.attacks else list(catalogue)
    work = tempfile.mkdtemp(prefix="co2logd-attack-")
    try:
        print("co2logd from {}".format(os.path.abspath(args.repo)))
        print("{:<14} {:>9} {:>6} {:<22} {:>9} {:>9} {:>12}".format("attack", "KiB", "status", "reason", "answer s", "freeze s", "RSS +MB"))
        for name in names:
            body, headers = catalogue[name]
            r = run_attack(args.repo, work, name, body, headers)
            print("{attack:<14} {kib:>9.0f} {status:>6} {reason:<22} {seconds:>9.2f} {freeze:>9.2f} {rss_growth_mb:>12.1f}".format(
                kib=r["bytes"] / 1024, **r), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
