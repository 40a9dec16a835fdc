"""
The made-up sources attack (issue 12, finding 9), against a real daemon.

Starts ``python -m co2logd`` (from ``--source``, default this checkout) on an
empty database, with ``HEALTH_SILENT_SOURCES`` on and a write queue large
enough for the upload, sends one JSON upload of ``--boxes`` rows, each with
its own made-up box, then prints for ``GET /`` and ``GET /health``: status,
size in bytes and time; the daemon's resident memory before the upload,
after the pages and at its peak (``VmHWM``); and the reactor stall (the
slowest static-file probe meanwhile, see ``attack_plot.py``).

Usage: python benchmarks/attack_sources.py [--source DIR] [--boxes N]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import tempfile
import time
from typing import List, Optional

from attack_plot import HERE, Prober, fetch, memory_kib, start_daemon


def post(port: int, body: bytes):
    """POST a JSON upload: (status, seconds)."""
    start = time.perf_counter()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        connection.request("POST", "/upload", body=body, headers={"Content-Type": "application/json", "Connection": "close"})
        response = connection.getresponse()
        response.read()
        return response.status, time.perf_counter() - start
    finally:
        connection.close()


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default=HERE, help="checkout to run the daemon from (default: this one)")
    parser.add_argument("--boxes", type=int, default=100_000, help="rows, each with its own box (default 100,000)")
    options = parser.parse_args(argv)

    directory = tempfile.mkdtemp(prefix="co2logd-sources-")
    config = os.path.join(directory, "config.py")
    with open(config, "w") as f:
        f.write("CO2LOGSERVER_HEALTH_SILENT_SOURCES = True\n")
        f.write("CO2LOGSERVER_WRITE_QUEUE_MAX_ROWS = {}\n".format(2 * options.boxes))
        f.write("CO2LOGSERVER_MAX_ROWS_PER_UPLOAD = {}\n".format(max(options.boxes, 100_000)))
    env = dict(os.environ, PYTHONPATH=os.path.abspath(options.source))
    env.pop("CO2LOGSERVER_CONFIG", None)
    daemon, port = start_daemon(
        [sys.executable, "-m", "co2logd", "--config", config, "--db", os.path.join(directory, "sources.sqlite"),
         "--http", "tcp:0:interface=127.0.0.1"],
        directory, env,
    )
    try:
        fetch(port, "/")  # warm up
        rss_before = memory_kib(daemon.pid, "VmRSS")
        n = options.boxes
        body = json.dumps({"co2": [400 + i % 500 for i in range(n)], "box": ["box-{}".format(i) for i in range(n)]}).encode()
        status, seconds = post(port, body)
        print("daemon from {}".format(os.path.abspath(options.source)))
        print("upload of {:,} rows with {:,} made-up boxes ({:,} bytes): status {} in {:.2f} s".format(n, n, len(body), status, seconds))
        for path in ("/", "/health", "/"):
            prober = Prober(port)
            prober.start()
            status, size, seconds = fetch(port, path)
            stall = prober.stop()
            print("GET {}: status {}, {:,} bytes in {:.3f} s; slowest reactor probe {:.3f} s".format(path, status, size, seconds, stall))
        print("daemon RSS: {:.0f} MB before the upload, {:.0f} MB after the pages, peak {:.0f} MB".format(
            rss_before / 1024, memory_kib(daemon.pid, "VmRSS") / 1024, memory_kib(daemon.pid, "VmHWM") / 1024))
    finally:
        daemon.terminate()
        daemon.wait(30)


if __name__ == "__main__":
    main()
