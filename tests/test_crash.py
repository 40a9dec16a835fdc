"""Durability: a daemon killed with SIGKILL under load keeps every row it acknowledged, and its file stays sound."""

import http.client
import os
import signal
import sqlite3
import sys
import threading
import time

from twisted.internet import threads
from twisted.trial import unittest

from tests import helpers
from tests.helpers import REPO

CLIENTS = 6
LOAD_SECONDS = 1.5


def start_daemon(db, log_path):
    """``python -m co2logd`` on ``db``, as a user starts it, on a port of its own; returns (process, port) once it listens."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("CO2LOGSERVER_CONFIG", None)
    argv = [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1", "--db", db]
    process, ports = helpers.start_daemon(argv, os.path.dirname(db), env, log_path)
    return process, ports["HTTP"]


def upload_until_refused(port, client, acknowledged, stop):
    """
    Upload numbered batches on one keep-alive connection until the daemon
    goes away; record ``(client, seq, rows)`` of every 200 receipt.
    Batches alternate between one JSON row and 40 CSV rows.
    """
    seq = 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop.is_set():
        seq += 1
        if seq % 2:
            body = '{{"client": [{}], "seq": [{}], "part": [0]}}'.format(client, seq).encode()
            content_type, rows = "application/json", 1
        else:
            rows = 40
            lines = ["client,seq,part"] + ["{},{},{}".format(client, seq, i) for i in range(rows)]
            body, content_type = "\n".join(lines).encode(), "text/csv"
        try:
            connection.request("POST", "/upload", body, {"Content-Type": content_type})
            response = connection.getresponse()
            reply = response.read()
        except (OSError, http.client.HTTPException):
            return  # the daemon was killed: this upload was never acknowledged
        if response.status == 200:
            acknowledged.append((client, seq, rows, reply))


def load_and_kill(port, process, first_client):
    """Several clients (numbered from ``first_client``) upload while the daemon is SIGKILLed; returns the acknowledged batches."""
    acknowledged = []
    stop = threading.Event()
    clients = [
        threading.Thread(target=upload_until_refused, args=(port, first_client + c, acknowledged, stop))
        for c in range(CLIENTS)
    ]
    for t in clients:
        t.start()
    time.sleep(LOAD_SECONDS)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    stop.set()
    for t in clients:
        t.join(15)
    return acknowledged


def crash_rounds(workdir, rounds=2):
    """Load, SIGKILL, restart on the same file, again; return (acknowledged, stored rows, integrity)."""
    db = os.path.join(workdir, "co2.sqlite")
    log_path = os.path.join(workdir, "daemon.log")
    acknowledged = []
    for round_number in range(rounds):
        process, port = start_daemon(db, log_path)
        acknowledged += load_and_kill(port, process, round_number * CLIENTS)
    # the last restart recovers the file as the daemon itself opens it
    process, _ = start_daemon(db, log_path)
    process.send_signal(signal.SIGTERM)
    process.wait(30)
    connection = sqlite3.connect(db)
    try:
        integrity = connection.execute("PRAGMA integrity_check").fetchall()
        stored = connection.execute("SELECT client, seq, count(*) FROM data GROUP BY client, seq").fetchall()
    finally:
        connection.close()
    return acknowledged, stored, integrity


class CrashTests(unittest.TestCase):
    """SIGKILL in the middle of uploads loses nothing that was acknowledged."""

    timeout = 60

    def test_acknowledged_rows_survive_sigkill(self):
        """Six clients upload while the daemon is killed twice; after a restart every acknowledged row is there and integrity_check says ok."""
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        d = threads.deferToThread(crash_rounds, workdir)

        def check(result):
            acknowledged, stored, integrity = result
            self.assertEqual(integrity, [("ok",)])
            self.assertGreater(len(acknowledged), 50, "the load was too light to test anything")
            for client, seq, rows, reply in acknowledged:
                self.assertEqual(reply, '{{"saved-in-db": {}}}'.format(rows).encode())
            counts = {(client, seq): n for client, seq, n in stored}
            missing = [(c, s, rows) for c, s, rows, _ in acknowledged if counts.get((c, s)) != rows]
            self.assertEqual(missing, [], "acknowledged but not (wholly) stored")
            # an upload is atomic: never part of a batch, acknowledged or not
            self.assertEqual([key for key, n in counts.items() if n not in (1, 40)], [])

        return d.addCallback(check)
