"""The command line: Options, makeService, and the daemon started as a user starts it."""

import os
import signal
import socket
import sqlite3
import subprocess
import sys

from twisted.internet import defer, reactor, task, threads
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage
from twisted.trial import unittest

from co2logd.service import Co2logdService, StartupError, build_service
from co2logd.tap import Options, makeService
from tests.helpers import REPO, README_JSON, make_settings, upload_to_daemon

def udp_ports_bound_during(call, *args):
    """
    Run ``call(*args)``; return (what it raised, the UDP ports bound meanwhile),
    the ports read back from Twisted's "... starting on PORT" log events.
    """
    events: list = []
    globalLogPublisher.addObserver(events.append)
    try:
        raised = None
        try:
            call(*args)
        except BaseException as e:
            raised = e
    finally:
        globalLogPublisher.removeObserver(events.append)
    messages = [formatEvent(event) for event in events]
    return raised, [int(m.rsplit(" ", 1)[1]) for m in messages if m.startswith("UDPIngestProtocol starting on ")]


def parse(*argv):
    options = Options()
    options.parseOptions(list(argv))
    return options


class OptionsTests(unittest.TestCase):
    """Options check the command line's syntax."""

    def test_defaults(self):
        """No options: HTTP on tcp:8080, no UDP, no serial."""
        options = parse()
        self.assertEqual((options["http"], options["udp"], options["serial"]), (["tcp:8080"], [], []))

    def test_repeated_http(self):
        """--http is repeatable."""
        self.assertEqual(parse("--http", "tcp:1", "--http", "tcp:2")["http"], ["tcp:1", "tcp:2"])

    def test_http_none(self):
        """--http none disables HTTP."""
        self.assertEqual(parse("--http", "none")["http"], [])

    def test_bad_endpoint(self):
        """A bad endpoint string is a usage error naming it; a bare port gets a hint."""
        e = self.assertRaises(usage.UsageError, parse, "--http", "nonsense:1")
        self.assertIn("nonsense:1", str(e))
        e = self.assertRaises(usage.UsageError, parse, "--http", "8080")
        self.assertIn("tcp:8080", str(e))


class MakeServiceTests(unittest.TestCase):
    """makeService turns every start-up problem into one line and SystemExit."""

    def write_config(self, text):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(text)
        return path

    def test_bad_config_is_one_line(self):
        """An unknown key ends start-up with one line naming it and the closest key."""
        options = parse("--config", self.write_config("CO2LOGSERVER_SALTS = []\n"), "--db", self.mktemp())
        e = self.assertRaises(SystemExit, makeService, options)
        self.assertIn("CO2LOGSERVER_SALTS", str(e))
        self.assertIn("CHECKSUM_SALTS", str(e))
        self.assertNotIn("\n", str(e))

    def test_config_from_environment(self):
        """$CO2LOGSERVER_CONFIG names the config file; --config wins over it."""
        from co2logd.tap import load_settings

        env_file = self.write_config("CO2LOGSERVER_NAME = 'from-env'\n")
        cli_file = self.write_config("CO2LOGSERVER_NAME = 'from-cli'\n")
        env = {"CO2LOGSERVER_CONFIG": env_file}
        self.assertEqual(load_settings(parse(), environ=env).NAME, "from-env")
        self.assertEqual(load_settings(parse("--config", cli_file), environ=env).NAME, "from-cli")
        self.assertEqual(load_settings(parse("--config", cli_file, "--name", "n"), environ=env).NAME, "n")

    @defer.inlineCallbacks
    def test_port_in_use_is_one_line(self):
        """A port in use: makeService itself (before any fork) exits with one line naming it, and creates no database."""
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        db = self.mktemp()
        e, [udp_port] = udp_ports_bound_during(
            makeService,
            parse("--udp", "udp:0:interface=127.0.0.1", "--http", "tcp:{}:interface=127.0.0.1".format(port), "--db", db),
        )
        self.assertIsInstance(e, SystemExit)
        self.assertEqual(str(e), "co2logd: cannot listen on 127.0.0.1:{}: Address already in use".format(port))
        self.assertEqual([p for p in os.listdir(os.path.dirname(os.path.abspath(db)))], [])
        # the UDP port bound before the failure was given back (closed on the next reactor turn)
        yield task.deferLater(reactor, 0, lambda: None)
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(probe.close)
        probe.bind(("127.0.0.1", udp_port))

    def test_service_order(self):
        """Store first, listeners last: on shutdown listeners stop before the database closes."""
        service = build_service(make_settings(DB=self.mktemp()), reactor, http=["tcp:0:interface=127.0.0.1"])
        names = [child.name for child in service]
        self.assertEqual(names[:2], ["store", "ingest"])
        self.assertTrue(names[-1].startswith("http "))
        self.assertIsInstance(service, Co2logdService)
        service.privilegedStartService()
        service.startService()
        return service.stopService()

    def test_startup_error_without_exit(self):
        """Outside twistd a failing child raises StartupError with the same line."""
        service = Co2logdService()

        class Broken(Co2logdService):
            def startService(self):
                raise OSError(2, "No such file or directory", "/dev/ttyACM9")

        Broken().setServiceParent(service)
        e = self.assertRaises(StartupError, service.startService)
        self.assertEqual(str(e), "co2logd: No such file or directory (/dev/ttyACM9)")


class DaemonProcessTests(unittest.TestCase):
    """The daemon as users start it: python -m co2logd, twistd, twist, the .tac file."""

    @defer.inlineCallbacks
    def check_daemon(self, argv, env=None):
        cwd = self.mktemp()
        os.makedirs(cwd)
        environment = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
        environment.pop("CO2LOGSERVER_CONFIG", None)
        reply, code, output = yield threads.deferToThread(
            upload_to_daemon, argv, cwd, environment, README_JSON, cwd + ".output"
        )
        self.assertEqual(reply, {"saved-in-db": 2}, output)
        # twistd ends itself with the signal it got, as a well-behaved daemon does
        self.assertIn(code, (0, -signal.SIGTERM), output)
        self.assertNotIn("Traceback", output)
        connection = sqlite3.connect(os.path.join(cwd, "co2.sqlite"))
        self.assertEqual(connection.execute("SELECT co2 FROM data").fetchall(), [(1223,), (2351,)])
        connection.close()

    def test_python_m_co2logd(self):
        """python -m co2logd serves HTTP and writes ./co2.sqlite."""
        return self.check_daemon([sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1"])

    def test_twistd_plugin(self):
        """twistd -n co2logd finds the plugin."""
        return self.check_daemon(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=",
             "co2logd", "--http", "tcp:0:interface=127.0.0.1"]
        )

    def test_twist_plugin(self):
        """twist co2logd works the same."""
        return self.check_daemon([sys.executable, "-m", "twisted", "co2logd", "--http", "tcp:0:interface=127.0.0.1"])

    def test_tac_file(self):
        """twistd -ny co2logd.tac runs the example composition."""
        return self.check_daemon(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "-n", "--pidfile=", "-y",
             os.path.join(REPO, "co2logd.tac")],
            env={"CO2LOGD_HTTP": "tcp:0:interface=127.0.0.1"},
        )

    @defer.inlineCallbacks
    def test_port_in_use_exits_with_one_line(self):
        """A port in use ends the process with status 1 and a line naming the port, no traceback."""
        blocker = socket.socket()
        blocker.bind(("127.0.0.1", 0))
        blocker.listen(1)
        self.addCleanup(blocker.close)
        port = blocker.getsockname()[1]
        cwd = self.mktemp()
        os.makedirs(cwd)
        result = yield threads.deferToThread(
            subprocess.run,
            [sys.executable, "-m", "co2logd", "--http", "tcp:{}:interface=127.0.0.1".format(port)],
            cwd=cwd, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, timeout=60,
        )
        output = (result.stdout + result.stderr).decode()
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("cannot listen on 127.0.0.1:{}".format(port), output)
        self.assertNotIn("Traceback", output)

    @defer.inlineCallbacks
    def test_bad_config_exits_with_one_line(self):
        """A config file with a wrong type ends the process with one line on stderr."""
        cwd = self.mktemp()
        os.makedirs(cwd)
        with open(os.path.join(cwd, "bad.py"), "w") as f:
            f.write("CO2LOGSERVER_UPLOAD_REQUIRES_AUTH = 'yes'\n")
        result = yield threads.deferToThread(
            subprocess.run, [sys.executable, "-m", "co2logd", "--config", "bad.py"],
            cwd=cwd, env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, timeout=60,
        )
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.decode().strip(),
            "co2logd: Setting CO2LOGSERVER_UPLOAD_REQUIRES_AUTH must be True or False, not 'yes'",
        )
