"""contrib/systemd/co2logd.service: valid for systemd, sandboxed, and its command line runs the daemon."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from typing import Dict, List, Tuple

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.helpers import REPO, upload_to_daemon

UNIT = os.path.join(REPO, "contrib", "systemd", "co2logd.service")
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def directives(path: str = UNIT) -> List[Tuple[str, str, str]]:
    """(section, key, value) for every assignment in a unit file, in order."""
    out, section = [], ""
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith(("#", ";")):
                continue
            if line.startswith("["):
                section = line.strip("[]")
            else:
                key, _, value = line.partition("=")
                out.append((section, key.strip(), value.strip()))
    return out


def service() -> Dict[str, List[str]]:
    """The [Service] section: key → its values in order."""
    values: Dict[str, List[str]] = {}
    for section, key, value in directives():
        if section == "Service":
            values.setdefault(key, []).append(value)
    return values


def exec_start() -> List[str]:
    """ExecStart as an argv."""
    (command,) = service()["ExecStart"]
    return shlex.split(command)


class UnitFileTests(unittest.TestCase):
    """The unit's key directives (the contract docs/deploy.md describes)."""

    def test_runs_python_m_co2logd_in_the_foreground(self):
        """python -m co2logd (no twistd plugin scan, no pidfile), no log file: stdout goes to the journal."""
        argv = exec_start()
        self.assertTrue(os.path.isabs(argv[0]) and argv[0].endswith("/python"), argv)
        self.assertEqual(argv[1:3], ["-m", "co2logd"])
        self.assertFalse([a for a in argv if a.startswith(("--logfile", "-l", "--pidfile"))])
        values = service()
        self.assertNotIn("StandardOutput", values)
        self.assertEqual(values["Type"], ["simple"])

    def test_user_state_and_restart(self):
        """A dedicated user with dialout, its own state directory, private files, restarts on failure."""
        values = service()
        self.assertEqual(values["User"], ["co2logd"])
        self.assertIn("dialout", values["SupplementaryGroups"][0].split())
        self.assertEqual(values["StateDirectory"], ["co2logd"])
        self.assertEqual(values["UMask"], ["0077"])
        self.assertEqual(values["Restart"], ["on-failure"])
        argv = exec_start()
        self.assertEqual(argv[argv.index("--db") + 1], "/var/lib/co2logd/co2.sqlite")
        self.assertEqual(values["WorkingDirectory"], ["/var/lib/co2logd"])

    def test_sandboxing(self):
        """The usual hardening directives are set."""
        values = service()
        for key, value in (
            ("ProtectSystem", "strict"), ("ProtectHome", "yes"), ("NoNewPrivileges", "yes"),
            ("PrivateTmp", "yes"), ("ProtectKernelTunables", "yes"), ("ProtectKernelModules", "yes"),
            ("ProtectControlGroups", "yes"), ("RestrictSUIDSGID", "yes"), ("CapabilityBoundingSet", ""),
        ):
            self.assertEqual(values.get(key), [value], key)
        self.assertEqual(values["RestrictAddressFamilies"], ["AF_UNIX AF_INET AF_INET6"])


class SystemdAnalyzeTests(unittest.TestCase):
    """systemd's own parser accepts the unit without a single complaint."""

    skip = None if SYSTEMD_ANALYZE else "systemd-analyze is not installed (Debian package systemd)"

    def test_verify(self):
        """systemd-analyze verify prints nothing (unknown keys and bad values are only warnings there)."""
        directory = self.mktemp()
        os.makedirs(directory)
        copy = os.path.join(directory, "co2logd.service")
        with open(UNIT) as f:
            text = f.read()
        # verify checks that ExecStart's program exists: point it at this Python
        with open(copy, "w") as f:
            f.write(text.replace(exec_start()[0], sys.executable))
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "verify", "--man=no", copy], capture_output=True, timeout=120
        )
        output = (result.stdout + result.stderr).decode()
        self.assertEqual((result.returncode, output), (0, ""))


class ExecStartTests(unittest.TestCase):
    """python -m co2logd accepts exactly the options the unit gives it."""

    @defer.inlineCallbacks
    def test_exec_start_runs(self):
        """ExecStart, with its paths moved to a temp dir and a free port, serves, stores and stops cleanly."""
        root = os.path.abspath(self.mktemp())
        state, etc = os.path.join(root, "var/lib/co2logd"), os.path.join(root, "etc/co2logd")
        os.makedirs(state)
        os.makedirs(etc)
        with open(os.path.join(etc, "config.py"), "w") as f:
            f.write("CO2LOGSERVER_NAME = 'pi'\n")
        argv = [sys.executable] + [
            a.replace("/var/lib/co2logd", state).replace("/etc/co2logd", etc)
            .replace("tcp:8080", "tcp:0:interface=127.0.0.1")
            for a in exec_start()[1:]
        ]
        environment = {k: v for k, v in os.environ.items() if not k.startswith(("CO2LOGSERVER_", "SENSEMAP_"))}
        environment["PYTHONPATH"] = REPO
        for value in service().get("Environment", []):
            key, _, value = value.partition("=")
            environment[key] = value.replace("/var/cache", os.path.join(root, "var/cache"))
        cwd = service()["WorkingDirectory"][0].replace("/var/lib/co2logd", state)
        reply, code, output = yield threads.deferToThread(
            upload_to_daemon, argv, cwd, environment, b'{"co2": 640}', os.path.join(root, "output")
        )
        self.assertEqual(reply, {"saved-in-db": 1}, output)
        self.assertIn(code, (0, -signal.SIGTERM), output)
        self.assertNotIn("Traceback", output)
        connection = sqlite3.connect(os.path.join(state, "co2.sqlite"))
        self.addCleanup(connection.close)
        self.assertEqual(connection.execute("SELECT co2 FROM data").fetchall(), [(640,)])
        self.assertFalse(os.path.exists(os.path.join(state, "twistd.pid")))
