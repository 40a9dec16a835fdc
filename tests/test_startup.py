"""
Start-up as users run it: ``twistd co2logd`` (daemon), ``twistd -n co2logd``
and ``python -m co2logd`` as subprocesses on the tree.  A start-up failure
is exit status 1 and one line, with no pidfile, no database file and no
process left behind; a good start logs what it serves.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import List, Optional

from twisted.internet import defer, reactor, task, threads
from twisted.python import usage
from twisted.trial import unittest

from co2logd.tap import Options, makeService
from tests.helpers import README_JSON, REPO, listening_in, read_from, start_daemon, stop_daemon

TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]
PYTHON_M = [sys.executable, "-m", "co2logd"]
TIMEOUT = 60


def environment() -> dict:
    """The test's environment with the tree on PYTHONPATH and no config from outside."""
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("CO2LOGSERVER_CONFIG", None)
    return env


def entry_points(cwd: str) -> dict:
    """The three ways to start co2logd, each with its pidfile (None: it writes none)."""
    pidfile = os.path.join(cwd, "co2logd.pid")
    logfile = os.path.join(cwd, "co2logd.log")
    return {
        "twistd (daemon)": (TWISTD + ["--pidfile", pidfile, "--logfile", logfile, "co2logd"], pidfile),
        "twistd -n": (TWISTD + ["-n", "--pidfile", pidfile, "co2logd"], pidfile),
        "python -m co2logd": (PYTHON_M, None),
    }


def processes_in(directory: str) -> List[int]:
    """Process ids whose working directory is ``directory`` (a daemon left running or a zombie)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink("/proc/{}/cwd".format(pid)) == directory:
                found.append(int(pid))
        except OSError:
            continue
    return found


def blocked_port():
    """A listening TCP socket on 127.0.0.1 and its port."""
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    return blocker, blocker.getsockname()[1]


class StartupFailureTests(unittest.TestCase):
    """
    Every start-up failure is one line from ``makeService`` (which every entry
    point calls before it forks or writes a pidfile), and creates nothing.
    What each entry point makes of that line is in :class:`EntryPointFailureTests`.
    """

    def workdir(self) -> str:
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        return cwd

    @defer.inlineCallbacks
    def check_failure(self, args: List[str], expected: str, prepare=None):
        """makeService with ``args`` (CWD: a fresh directory, the database in it) fails with the line ``expected``."""
        cwd = self.workdir()
        if prepare is not None:
            prepare(cwd)
        args = [a.replace("CWD", cwd) for a in args]
        if "--db" not in args:
            args += ["--db", os.path.join(cwd, "co2.sqlite")]
        before = set(os.listdir(cwd))
        options = Options()
        options.parseOptions(args)
        e = self.assertRaises(SystemExit, makeService, options)
        self.assertEqual(str(e), expected.replace("CWD", cwd))
        self.assertEqual(set(os.listdir(cwd)) - before, set(), "files left behind")
        yield task.deferLater(reactor, 0, lambda: None)  # ports bound before the failure close on the next turn

    def test_port_in_use(self):
        """An HTTP port in use: the line names address and reason; no co2.sqlite is created."""
        blocker, port = blocked_port()
        self.addCleanup(blocker.close)
        return self.check_failure(
            ["--http", "tcp:{}:interface=127.0.0.1".format(port)],
            "co2logd: cannot listen on 127.0.0.1:{}: Address already in use".format(port),
        )

    def test_udp_port_in_use(self):
        """A UDP port in use fails the same way, even after the HTTP port was bound."""
        blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        blocker.bind(("127.0.0.1", 0))
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        return self.check_failure(
            ["--http", "tcp:0:interface=127.0.0.1", "--udp", "udp:{}:interface=127.0.0.1".format(port)],
            "co2logd: cannot listen on 127.0.0.1:{}: Address already in use".format(port),
        )

    def test_required_serial_device_missing(self):
        """--serial-required with no such device: one line naming it."""
        return self.check_failure(
            ["--http", "tcp:0:interface=127.0.0.1", "--serial-required", "/dev/ttyUSB-co2logd-missing"],
            "co2logd: required serial device /dev/ttyUSB-co2logd-missing is missing",
        )

    def test_required_serial_device_not_a_tty(self):
        """--serial-required naming a plain file: one line (it could not be opened as a port)."""

        def plain_file(cwd):
            open(os.path.join(cwd, "notatty"), "w").close()

        return self.check_failure(
            ["--http", "tcp:0:interface=127.0.0.1", "--serial-required", "CWD/notatty"],
            "co2logd: required serial device CWD/notatty is not a serial device (not a character device)",
            prepare=plain_file,
        )

    def test_serial_required_setting(self):
        """SERIAL_REQUIRED = True in the config makes every --serial device required."""

        def config(cwd):
            with open(os.path.join(cwd, "config.py"), "w") as f:
                f.write("CO2LOGD_SERIAL_REQUIRED = True\n")

        return self.check_failure(
            ["--config", "CWD/config.py", "--http", "tcp:0:interface=127.0.0.1", "--serial", "/dev/ttyUSB-co2logd-missing"],
            "co2logd: required serial device /dev/ttyUSB-co2logd-missing is missing",
            prepare=config,
        )

    def test_database_directory_missing(self):
        """A database in a directory that does not exist: one line naming the directory."""
        return self.check_failure(
            ["--http", "tcp:0:interface=127.0.0.1", "--db", "CWD/no/such/dir/co2.sqlite"],
            "co2logd: database directory CWD/no/such/dir does not exist",
        )

    def test_database_directory_not_writable(self):
        """A read-only database directory: one line, before SQLite fails on its WAL file."""
        if os.geteuid() == 0:
            raise unittest.SkipTest("root may write to a read-only directory; needs an unprivileged user")

        def read_only(cwd):
            os.makedirs(os.path.join(cwd, "ro"))
            os.chmod(os.path.join(cwd, "ro"), 0o555)

        return self.check_failure(
            ["--http", "tcp:0:interface=127.0.0.1", "--db", "CWD/ro/co2.sqlite"],
            "co2logd: database directory CWD/ro is not writable (SQLite keeps its WAL file there)",
            prepare=read_only,
        )

    def test_database_is_a_directory(self):
        """--db naming a directory: one line saying so."""
        return self.check_failure(
            ["--http", "tcp:0:interface=127.0.0.1", "--db", "CWD/sub"],
            "co2logd: database CWD/sub is a directory",
            prepare=lambda cwd: os.makedirs(os.path.join(cwd, "sub")),
        )

    def test_bad_config(self):
        """A config with a bad value: the one line of the settings check."""

        def config(cwd):
            with open(os.path.join(cwd, "config.py"), "w") as f:
                f.write("CO2LOGSERVER_UPLOAD_REQUIRES_AUTH = 'yes'\n")

        return self.check_failure(
            ["--config", "CWD/config.py"],
            "co2logd: Setting CO2LOGSERVER_UPLOAD_REQUIRES_AUTH must be True or False, not 'yes'",
            prepare=config,
        )

    def test_bad_option(self):
        """A bad endpoint is a usage error naming the option and an example."""
        e = self.assertRaises(usage.UsageError, Options().parseOptions, ["--http", "8080"])
        self.assertEqual(str(e), "--http 8080: give an endpoint string such as tcp:8080")


class EntryPointFailureTests(unittest.TestCase):
    """
    Every way of starting co2logd fails cleanly: status 1, the one line on
    stderr, nothing on stdout, no pidfile, no database and no process left
    behind.  The three entry points run side by side.
    """

    def workdir(self) -> str:
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        return cwd

    def run_failing(self, name: str, args: List[str], prepare=None) -> defer.Deferred:
        """Run entry point ``name`` with ``args`` in a fresh directory (on a thread); fires with (cwd, before, result)."""
        cwd = self.workdir()
        argv, _ = entry_points(cwd)[name]
        if prepare is not None:
            prepare(cwd)
        before = set(os.listdir(cwd))
        d = threads.deferToThread(
            subprocess.run, argv + args, cwd=cwd, env=environment(), capture_output=True, timeout=TIMEOUT
        )
        return d.addCallback(lambda result: (cwd, before, result))

    @defer.inlineCallbacks
    def check_failure(self, args: List[str], expected: str, prepare=None):
        """Each entry point with ``args`` fails with the line ``expected`` (CWD: its directory) and leaves nothing."""
        names = sorted(entry_points(""))
        outcomes = yield defer.gatherResults([self.run_failing(name, args, prepare) for name in names])
        for name, (cwd, before, result) in zip(names, outcomes):
            _, pidfile = entry_points(cwd)[name]
            stderr = result.stderr.decode()
            self.assertEqual(result.returncode, 1, "{}: {}".format(name, stderr))
            self.assertEqual(stderr, expected.replace("CWD", cwd) + "\n", name)
            self.assertEqual(result.stdout, b"", name)
            self.assertEqual(set(os.listdir(cwd)) - before, set(), "{}: files left behind".format(name))
            if pidfile is not None:
                self.assertFalse(os.path.exists(pidfile), name)
            self.assertEqual(processes_in(cwd), [], "{}: processes left behind".format(name))

    def test_port_in_use(self):
        """A port in use, found after the database was opened: the line, and the new co2.sqlite removed again."""
        blocker, port = blocked_port()
        self.addCleanup(blocker.close)
        return self.check_failure(
            ["--http", "tcp:{}:interface=127.0.0.1".format(port)],
            "co2logd: cannot listen on 127.0.0.1:{}: Address already in use".format(port),
        )

    def test_bad_config(self):
        """A config with a bad value: the one line of the settings check."""

        def config(cwd):
            with open(os.path.join(cwd, "config.py"), "w") as f:
                f.write("CO2LOGSERVER_UPLOAD_REQUIRES_AUTH = 'yes'\n")

        return self.check_failure(
            ["--config", "config.py"],
            "co2logd: Setting CO2LOGSERVER_UPLOAD_REQUIRES_AUTH must be True or False, not 'yes'",
            prepare=config,
        )

    def test_bad_option_error_comes_first(self):
        """A bad option prints its error line first and a pointer to --help, not 18 lines of usage."""
        return self.check_failure(
            ["--http", "8080"],
            "co2logd: --http 8080: give an endpoint string such as tcp:8080\n(--help lists the options)",
        )


def run(argv: List[str], cwd: Optional[str] = None) -> subprocess.CompletedProcess:
    """Run a short command (--version, --help) to its end."""
    return subprocess.run(argv, cwd=cwd, env=environment(), capture_output=True, timeout=TIMEOUT)


class CommandLineTests(unittest.TestCase):
    """--version and --help name co2logd."""

    @defer.inlineCallbacks
    def test_version(self):
        """twistd co2logd --version and python -m co2logd --version print co2logd's version."""
        from co2logd import __version__

        results = yield defer.gatherResults(
            [threads.deferToThread(run, argv) for argv in (TWISTD + ["co2logd", "--version"], PYTHON_M + ["--version"])]
        )
        for result in results:
            self.assertEqual(result.returncode, 0, result.stderr)
            self.assertTrue(
                result.stdout.decode().startswith("co2logd {} (Twisted ".format(__version__)), result.stdout
            )

    @defer.inlineCallbacks
    def test_help_names_co2logd(self):
        """python -m co2logd --help shows its own usage line and never says twistd."""
        own, twistd = yield defer.gatherResults(
            [threads.deferToThread(run, PYTHON_M + ["--help"]), threads.deferToThread(run, TWISTD + ["co2logd", "--help"])]
        )
        out = own.stdout.decode()
        self.assertEqual(own.returncode, 0)
        self.assertTrue(out.startswith("Usage: python -m co2logd [--http ENDPOINT]"), out)
        self.assertNotIn("twistd", out)
        self.assertIn("--serial-required=", out)
        self.assertIn("co2logd [--http ENDPOINT]", twistd.stdout.decode())


def upload(port: int) -> dict:
    """POST the README's JSON example; the parsed receipt."""
    request = urllib.request.Request(
        "http://127.0.0.1:{}/upload".format(port), data=README_JSON, headers={"Content-Type": "application/json"}
    )
    return json.loads(urllib.request.urlopen(request, timeout=10).read())


def health(port: int):
    """(status, report) of GET /health."""
    try:
        response = urllib.request.urlopen("http://127.0.0.1:{}/health".format(port), timeout=10)
        return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_until(predicate, timeout: float = 30.0) -> bool:
    """Poll ``predicate`` every 50 ms for up to ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


class DaemonModeTests(unittest.TestCase):
    """twistd co2logd without -n: the parent returns 0 once the daemon serves; SIGTERM removes the pidfile."""

    def daemon_run(self, cwd: str) -> dict:
        """Start the daemon on ports of its own, upload once to the HTTP port its log names, SIGTERM it."""
        pidfile = os.path.join(cwd, "co2logd.pid")
        logfile = os.path.join(cwd, "co2logd.log")
        argv = TWISTD + [
            "--pidfile", pidfile, "--logfile", logfile, "co2logd",
            "--http", "tcp:0:interface=127.0.0.1", "--udp", "udp:0:interface=127.0.0.1",
        ]
        parent = subprocess.run(argv, cwd=cwd, env=environment(), capture_output=True, timeout=TIMEOUT)
        out = {"parent": parent}
        if parent.returncode != 0 or not os.path.exists(pidfile):
            return out
        with open(pidfile) as f:
            pid = int(f.read())
        try:
            # the parent returned once the daemon served: its log already names the ports it bound
            out["ports"] = listening_in(read_from(logfile))
            out["upload"] = upload(out["ports"]["HTTP"])
        finally:
            os.kill(pid, signal.SIGTERM)
            out["stopped"] = wait_until(lambda: not os.path.exists("/proc/{}".format(pid)))
        out["pidfile_left"] = os.path.exists(pidfile)
        with open(logfile) as f:
            out["log"] = f.read()
        return out

    @defer.inlineCallbacks
    def test_daemon_starts_serves_and_stops(self):
        """The parent exits 0 at once; the daemon stores an upload, logs what it serves, and cleans up on SIGTERM."""
        from co2logd import __version__

        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        out = yield threads.deferToThread(self.daemon_run, cwd)
        self.assertEqual(out["parent"].returncode, 0, out["parent"].stderr)
        self.assertEqual(out["upload"], {"saved-in-db": 2})
        self.assertTrue(out["stopped"])
        self.assertFalse(out["pidfile_left"])
        log = out["log"]
        self.assertIn(
            "co2logd {} starting: database {}, config file none (defaults)".format(
                __version__, os.path.join(cwd, "co2.sqlite")), log
        )
        self.assertRegex(log, r"Listening for HTTP on 127\.0\.0\.1:[1-9][0-9]*\n")
        self.assertRegex(log, r"Listening for UDP uploads on 127\.0\.0\.1:[1-9][0-9]*, receive buffer ")
        self.assertNotIn("Traceback", log)


class SerialMissingAtStartTests(unittest.TestCase):
    """python -m co2logd with a serial device that is not plugged in: HTTP serves, /health names it, it is read once it appears."""

    def session(self, cwd: str) -> dict:
        """Start with the device missing, probe, plug a pty in at its path, write two lines, SIGTERM."""
        link = os.path.join(cwd, "usb-sensor-if00")
        argv = PYTHON_M + ["--http", "tcp:0:interface=127.0.0.1", "--serial", link]
        log_path = cwd + ".output"
        process, ports = start_daemon(argv, cwd, environment(), log_path)
        port = ports["HTTP"]
        out: dict = {}
        master = slave = None
        try:
            out["health_before"] = health(port)
            out["upload"] = upload(port)
            master, slave = os.openpty()
            os.symlink(os.ttyname(slave), link)
            out["opened"] = wait_until(lambda: health(port)[0] == 200)
            os.write(master, b"# comment-for-humans\n")
            os.write(master, b'{"co2": 4242}\n')
            out["stored"] = wait_until(lambda: b"4242" in urllib.request.urlopen(
                "http://127.0.0.1:{}/download?format=csv".format(port), timeout=10).read())
        finally:
            stop_daemon(process, TIMEOUT)
            out["output"] = read_from(log_path)
            for fd in (master, slave):
                if fd is not None:
                    os.close(fd)
        out["link"] = link
        return out

    @defer.inlineCallbacks
    def test_waited_for(self):
        """Missing at start: 503 naming the device while HTTP stores uploads; 200 and its rows once plugged in."""
        cwd = os.path.abspath(self.mktemp())
        os.makedirs(cwd)
        out = yield threads.deferToThread(self.session, cwd)
        status, report = out["health_before"]
        self.assertEqual(status, 503, out["output"])
        self.assertEqual(
            report["reasons"], ["serial {} is not connected (No such file or directory)".format(out["link"])]
        )
        self.assertEqual(out["upload"], {"saved-in-db": 2})
        self.assertTrue(out["opened"], out["output"])
        self.assertTrue(out["stored"], out["output"])
        self.assertIn("Serial device {} cannot be opened (No such file or directory); waiting for it".format(out["link"]), out["output"])
        self.assertNotIn("comment-for-humans", out["output"])  # debug level: only with -v


class VerbosityTests(unittest.TestCase):
    """Debug events of co2logd's loggers pass the gate only with -v."""

    def test_serial_comment_only_with_verbose(self):
        """A serial '# …' line is a debug event: dropped by default, logged after set_verbose(True)."""
        from twisted.logger import LogLevel, globalLogPublisher

        from co2logd.logs import set_verbose
        from co2logd.settings import Settings
        from co2logd.transports.serial import SerialIngestProtocol

        events = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        self.addCleanup(set_verbose, False)
        protocol = SerialIngestProtocol(None, Settings.from_values({}), task.Clock(), "/dev/ttyX")
        protocol._comment("serial:/dev/ttyX", b"# quiet")
        set_verbose(True)
        protocol._comment("serial:/dev/ttyX", b"# loud")
        said = [e for e in events if e.get("log_namespace") == "co2logd.transports.serial"]
        self.assertEqual([(e["line"], e["log_level"]) for e in said], [("# loud", LogLevel.debug)])


class HostPortTests(unittest.TestCase):
    """Peers and listeners are logged as host:port."""

    def test_forms(self):
        """IPv4, IPv6 (bracketed), tuples, UNIX sockets."""
        from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress

        from co2logd.net import host_port

        self.assertEqual(host_port(IPv4Address("TCP", "10.0.0.2", 5555)), "10.0.0.2:5555")
        self.assertEqual(host_port(IPv6Address("TCP", "::1", 8080)), "[::1]:8080")
        self.assertEqual(host_port(("192.168.1.9", 8125)), "192.168.1.9:8125")
        self.assertEqual(host_port(UNIXAddress(b"/run/co2logd.sock")), "/run/co2logd.sock")
