"""
Regenerate docs/dashboard.png: start ``python -m co2logd`` on a scratch
database, upload readings of three sensors through its real HTTP interface
for about 30 seconds (the upload time is the server's clock, so the plot
shows the last 40 seconds; one sensor stops early and, with
DASHBOARD_SILENT_SECONDS = 5 in the scratch config, is marked silent), then
screenshot the dashboard with headless Chromium.

Usage: python docs/dashboard_screenshot.py  (needs /usr/bin/chromium)
"""

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import urllib.request

PORT = 18766
HERE = os.path.dirname(os.path.abspath(__file__))


def post(payload):
    request = urllib.request.Request(
        "http://127.0.0.1:{}/upload".format(PORT), data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
    )
    return json.load(urllib.request.urlopen(request, timeout=10))


def main():
    work = tempfile.mkdtemp(prefix="co2logd-shot-")
    config = os.path.join(work, "config.py")
    with open(config, "w") as f:
        f.write("CO2LOGSERVER_DASHBOARD_SILENT_SECONDS = 5\nCO2LOGSERVER_DASHBOARD_REFRESH_SECONDS = 0\n")
    daemon = subprocess.Popen(
        [sys.executable, "-m", "co2logd", "--http", "tcp:{}:interface=127.0.0.1".format(PORT),
         "--db", os.path.join(work, "co2.sqlite"), "--name", "Greenhouse lab", "--config", config],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(50):
            try:
                urllib.request.urlopen("http://127.0.0.1:{}/health".format(PORT), timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        rng = random.Random(3)
        # 3 sensors, 120 uploads of 30 readings each, a CO2 rise in the office
        for k in range(120):
            for box, base, swing in (("office", 700, 900), ("kitchen", 520, 300), ("greenhouse", 430, 80)):
                if box == "greenhouse" and k > 40:
                    continue  # this one goes silent (shown as such after DASHBOARD_SILENT_SECONDS)
                co2 = [int(base + swing * max(0.0, math.sin((k * 30 + i) / 900.0)) + rng.gauss(0, 15)) for i in range(30)]
                temperature = [round(19 + 3 * math.sin((k * 30 + i) / 1500.0) + rng.gauss(0, 0.1), 2) for i in range(30)]
                post({"co2": co2, "temperature": temperature, "box": [box] * 30})
            time.sleep(0.25)
        subprocess.run(
            ["/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--user-data-dir=" + os.path.join(work, "profile"), "--hide-scrollbars", "--window-size=900,1250",
             "--screenshot=" + os.path.join(HERE, "dashboard.png"),
             "http://127.0.0.1:{}/?since=40s".format(PORT)],
            check=True, capture_output=True, timeout=90,
        )
    finally:
        daemon.terminate()
        daemon.wait(10)


if __name__ == "__main__":
    main()
