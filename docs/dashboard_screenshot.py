"""
Regenerate docs/dashboard.png: start ``python -m co2logd`` on a scratch
database, send a day of readings from two sensors through its real HTTP
interface, one upload per sensor in co2logserver's columns format with a
``time`` column (as a logger that buffers a day would), then screenshot the
dashboard's default view ``/`` with headless Chromium.

Usage: python docs/dashboard_screenshot.py [--width 1000] [--height 1380]
(needs /usr/bin/chromium)
"""

import argparse
import json
import math
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
STEP = 60  # one reading a minute


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def post(port: int, payload) -> dict:
    request = urllib.request.Request(
        "http://127.0.0.1:{}/upload".format(port), data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.load(urllib.request.urlopen(request, timeout=30))


def occupied(hour: float, spans) -> float:
    """1 while one of the (start, end) hour spans is on, easing in and out over half an hour."""
    level = 0.0
    for start, end in spans:
        level = max(level, min(1.0, max(0.0, (hour - start) * 2), max(0.0, (end - hour) * 2)))
    return level


def day_of(box: str, end: int, rng: random.Random) -> dict:
    """A day of minutely readings from one sensor: CO2 rising while people are in, temperature, humidity."""
    times = list(range(end - 86400 + STEP, end + 1, STEP))
    if box == "office":
        spans, base, rise, warm = [(8.5, 12.0), (13.0, 17.5)], 450, 900, 21.5
    else:
        spans, base, rise, warm = [(7.0, 8.0), (12.0, 13.5), (18.5, 20.5)], 480, 500, 20.0
    co2, level = [], 0.0
    temperature, humidity = [], []
    for t in times:
        hour = (t % 86400) / 3600.0
        # CO2 follows occupancy with a lag (room air exchanges slowly)
        level += (occupied(hour, spans) - level) * 0.03
        co2.append(int(base + rise * level + rng.gauss(0, 12)))
        temperature.append(round(warm + 1.8 * level + 1.2 * math.sin((hour - 9) / 24 * 2 * math.pi) + rng.gauss(0, 0.05), 2))
        humidity.append(round(42 + 9 * level - 4 * math.sin((hour - 9) / 24 * 2 * math.pi) + rng.gauss(0, 0.1), 1))
    return {"time": times, "scd30_co2_ppm": co2, "bme280_temperature_c": temperature, "bme280_humidity_percent": humidity,
            "box": [box] * len(times)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=int, default=1000, help="browser window width in CSS px (default 1000)")
    parser.add_argument("--height", type=int, default=1380, help="browser window height in CSS px (default 1380)")
    parser.add_argument("--output", default=os.path.join(HERE, "dashboard.png"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="co2logd-shot-")
    config = os.path.join(work, "config.py")
    with open(config, "w") as f:
        f.write("CO2LOGSERVER_DASHBOARD_REFRESH_SECONDS = 0\n")
    port = free_port()
    environment = dict(os.environ, PYTHONPATH=REPO)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "co2logd", "--http", "tcp:{}:interface=127.0.0.1".format(port),
         "--db", os.path.join(work, "co2.sqlite"), "--name", "Greenhouse lab", "--config", config],
        cwd=work, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen("http://127.0.0.1:{}/health".format(port), timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        rng = random.Random(3)
        end = int(time.time()) // STEP * STEP
        for box in ("office", "kitchen"):
            receipt = post(port, day_of(box, end, rng))
            print("{}: {} rows stored".format(box, receipt["saved-in-db"]))
        subprocess.run(
            ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
             "--user-data-dir=" + os.path.join(work, "profile"), "--hide-scrollbars",
             "--window-size={},{}".format(args.width, args.height), "--screenshot=" + os.path.abspath(args.output),
             "http://127.0.0.1:{}/".format(port)],
            check=True, capture_output=True, timeout=90,
        )
        print("wrote", args.output)
    finally:
        daemon.terminate()
        daemon.wait(10)


if __name__ == "__main__":
    main()
