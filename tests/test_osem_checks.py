"""OpenSenseMap forwarding switched on without its client or credentials: one line, /health, no traceback."""

from __future__ import annotations

import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any, Dict, Tuple

from twisted.internet import defer, threads
from twisted.logger import LogLevel
from twisted.trial import unittest

from co2logd.osem.checks import OsemMisconfigured, osem_problem
from tests.helpers import REPO, make_settings, read_from, rows_in, start_daemon, stop_daemon

CREDENTIALS = {"OSEM_EMAIL": "lab@example.org", "OSEM_PASSWORD": "secret"}


def missing_sensemapi(name: str):
    """An import function as Python's when the opensensemap extra is not installed."""
    raise ModuleNotFoundError("No module named 'sensemapi'", name="sensemapi")


class OsemProblemTests(unittest.TestCase):
    """osem_problem names what is missing."""

    def test_client_missing(self):
        """Without sensemapi: an error naming the module and the pip command."""
        problem = osem_problem(make_settings(OSEM_UPLOAD=True, **CREDENTIALS), import_module=missing_sensemapi)
        self.assertEqual(problem.level, LogLevel.error)
        self.assertIn("cannot import sensemapi", problem.message)
        self.assertIn("pip install 'co2logd[opensensemap]'", problem.message)

    def test_credentials_missing(self):
        """With the client but without a password, or without e-mail and user name: a warning."""
        for values in ({"OSEM_EMAIL": "lab@example.org"}, {"OSEM_PASSWORD": "secret"}, {}):
            problem = osem_problem(make_settings(OSEM_UPLOAD=True, **values))
            self.assertEqual(problem.level, LogLevel.warn, values)
            self.assertIn("credentials are missing", problem.message)

    def test_configured(self):
        """Client and credentials (e-mail or user name): no problem."""
        self.assertIsNone(osem_problem(make_settings(OSEM_UPLOAD=True, **CREDENTIALS)))
        self.assertIsNone(osem_problem(make_settings(OSEM_UPLOAD=True, OSEM_USERNAME="lab", OSEM_PASSWORD="x")))

    def test_health(self):
        """The stand-in service reports the problem as not ok."""
        problem = osem_problem(make_settings(OSEM_UPLOAD=True))
        self.assertEqual(
            OsemMisconfigured(problem).health(),
            {"name": "opensensemap", "kind": "opensensemap", "ok": False, "reason": problem.message},
        )


# python -m co2logd, with sensemapi made unimportable the way a missing package is
BLOCK_SENSEMAPI = "import runpy, sys; sys.modules['sensemapi'] = None; runpy.run_module('co2logd', run_name='__main__')"


def run_and_probe(argv, cwd: str) -> Tuple[Dict[str, Any], Tuple[int, Dict[str, Any]], str]:
    """Start the daemon, upload one row, read /health, stop it; (upload reply, (status, health), output)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("SENSEMAP_", "CO2LOGSERVER_"))}
    environment["PYTHONPATH"] = REPO
    log_path = cwd + ".output"
    process, ports = start_daemon(argv, cwd, environment, log_path)
    try:
        base = "http://127.0.0.1:{}".format(ports["HTTP"])
        request = urllib.request.Request(
            base + "/upload", data=b'{"scd30_co2_ppm": [640], "box": ["lab"]}', headers={"Content-Type": "application/json"}
        )
        reply = json.loads(urllib.request.urlopen(request, timeout=10).read())
        try:
            response = urllib.request.urlopen(base + "/health", timeout=10)
            health = (response.status, json.loads(response.read()))
        except urllib.error.HTTPError as e:
            health = (e.code, json.loads(e.read()))
    finally:
        stop_daemon(process)
    return reply, health, read_from(log_path)


class MisconfiguredDaemonTests(unittest.TestCase):
    """The daemon started with OSEM_UPLOAD = True as users start it."""

    @defer.inlineCallbacks
    def start(self, config: str, python_args):
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        with open(os.path.join(cwd, "config.py"), "w") as f:
            f.write(config)
        argv = [sys.executable] + python_args + ["--config", "config.py", "--http", "tcp:0:interface=127.0.0.1"]
        result = yield threads.deferToThread(run_and_probe, argv, cwd)
        return result + (cwd,)

    @defer.inlineCallbacks
    def test_extra_missing(self):
        """Without sensemapi: one error line, no traceback; data is stored and queued; /health is 503 naming the extra."""
        reply, (status, health), output, cwd = yield self.start(
            "CO2LOGSERVER_OSEM_UPLOAD = True\nCO2LOGSERVER_OSEM_EMAIL = 'a@b.c'\nCO2LOGSERVER_OSEM_PASSWORD = 'x'\n",
            ["-c", BLOCK_SENSEMAPI],
        )
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "OpenSenseMap client is not installed" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn("#error]", lines[0])
        self.assertEqual(reply, {"saved-in-db": 1, "osem-queued": 1})
        self.assertEqual([r["scd30_co2_ppm"] for r in rows_in(os.path.join(cwd, "co2.sqlite"))], [640])
        self.assertEqual(status, 503)
        self.assertTrue(any("pip install 'co2logd[opensensemap]'" in reason for reason in health["reasons"]), health)

    @defer.inlineCallbacks
    def test_credentials_missing(self):
        """With the extra but no credentials: one warning line; /health is 503 naming the settings."""
        reply, (status, health), output, cwd = yield self.start(
            "CO2LOGSERVER_OSEM_UPLOAD = True\n", ["-m", "co2logd"]
        )
        self.assertNotIn("Traceback", output)
        lines = [line for line in output.splitlines() if "credentials are missing" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn("#warn]", lines[0])
        self.assertEqual(reply, {"saved-in-db": 1, "osem-queued": 1})
        self.assertEqual(status, 503)
        self.assertTrue(any("CO2LOGSERVER_OSEM_PASSWORD" in reason for reason in health["reasons"]), health)
