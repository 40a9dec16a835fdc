"""
A throw-away PostgreSQL 15 server for the tests.

:class:`PostgresServer` runs Debian's PostgreSQL binaries (``initdb``,
``postgres``) on a fresh cluster in a temporary directory: TCP on
127.0.0.1 only, its unix socket in that directory, ``scram-sha-256`` over TCP
for a superuser with a password (so tests see real passwords in real URLs).
PostgreSQL cannot listen on port 0, so a port that was free a moment ago is
picked and start-up is retried with another one when it turns out taken.

PostgreSQL refuses to run as root; when the tests run as root (CI does) the
server runs as the ``postgres`` user (``nobody`` without it), with the
temporary directory handed to that user.

:func:`shared_server` is one server per test process, started on first use
and stopped at exit: each test takes a database of its own
(:meth:`PostgresServer.create_database`).  Tests that restart or stop the
server start a :class:`PostgresServer` of their own.

Without the binaries or psycopg, :func:`skip_reason` names what is missing,
except under CI (``CI`` set), where a missing PostgreSQL is an error: those
tests must run there (``.ci/run`` installs Debian's ``postgresql-15``).
"""

from __future__ import annotations

import atexit
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Dict, List, Optional
from urllib.parse import quote

BIN_DIR = os.environ.get("CO2LOGD_TEST_PG_BIN", "/usr/lib/postgresql/15/bin")
SUPERUSER = "co2logd_test"
START_ATTEMPTS = 6
START_TIMEOUT = 60.0


def missing() -> Optional[str]:
    """What the PostgreSQL tests need and this machine lacks, or None."""
    for name in ("initdb", "postgres"):
        if not os.access(os.path.join(BIN_DIR, name), os.X_OK):
            return "PostgreSQL 15 server binaries not found in {} (apt-get install postgresql-15)".format(BIN_DIR)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install '.[postgresql]')"
    return None


def skip_reason() -> Optional[str]:
    """
    The reason to skip PostgreSQL tests, or None to run them.  Under CI a
    missing PostgreSQL raises instead: a green CI must have run them.
    """
    reason = missing()
    if reason is not None and os.environ.get("CI"):
        raise RuntimeError("CI must run the PostgreSQL tests: " + reason)
    return reason


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _run_as() -> Optional[pwd.struct_passwd]:
    """The unprivileged user to run PostgreSQL as when we are root, else None (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError("running as root and neither a postgres nor a nobody user exists to run PostgreSQL as")


class PostgresServer:
    """One PostgreSQL cluster in a temporary directory; :meth:`start` it, :meth:`stop` or :meth:`destroy` it."""

    def __init__(self) -> None:
        self.user = _run_as()
        self.directory = tempfile.mkdtemp(prefix="co2logd-pg-")
        self.data = os.path.join(self.directory, "data")
        self.log_path = os.path.join(self.directory, "postgres.log")
        self.password = secrets.token_urlsafe(12)
        self.port = 0
        self.process: Optional[subprocess.Popen] = None
        self._databases = 0
        if self.user is not None:
            os.chown(self.directory, self.user.pw_uid, self.user.pw_gid)
        self._initdb()

    # -- running the binaries ------------------------------------------------

    def _popen_args(self) -> Dict:
        args: Dict = {"cwd": self.directory, "env": {"PATH": "/usr/bin:/bin", "LC_ALL": "C", "TZ": "UTC"}}
        if self.user is not None:
            args.update(user=self.user.pw_uid, group=self.user.pw_gid, extra_groups=[])
        return args

    def _initdb(self) -> None:
        pwfile = os.path.join(self.directory, "pw")
        with open(pwfile, "w") as f:
            f.write(self.password + "\n")
        if self.user is not None:
            os.chown(pwfile, self.user.pw_uid, self.user.pw_gid)
        result = subprocess.run(
            [
                os.path.join(BIN_DIR, "initdb"), "-D", self.data, "-U", SUPERUSER, "--pwfile", pwfile,
                "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
            ],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **self._popen_args(),
        )
        os.unlink(pwfile)
        if result.returncode != 0:
            raise RuntimeError("initdb failed: " + result.stdout.decode("utf-8", "replace"))

    def start(self) -> None:
        """Start the server on a free port (a new one each attempt when the port is taken); wait until it answers."""
        last = ""
        for _ in range(START_ATTEMPTS):
            port = self.port or _free_port()
            outcome = self._start_on(port)
            if outcome is None:
                self.port = port
                return
            last = outcome
            if "already in use" not in outcome:
                break
            self.port = 0  # someone took it between the pick and the bind: pick another
        raise RuntimeError("PostgreSQL did not start: " + last)

    def _start_on(self, port: int) -> Optional[str]:
        """None once the server on ``port`` accepts connections, else why it did not start."""
        log = open(self.log_path, "ab")
        try:
            self.process = subprocess.Popen(
                [
                    os.path.join(BIN_DIR, "postgres"), "-D", self.data, "-p", str(port),
                    "-h", "127.0.0.1", "-k", self.directory,
                    # a test cluster: the OS never crashes under it, so no fsync
                    "-c", "fsync=off", "-c", "full_page_writes=off", "-c", "max_connections=100",
                    "-c", "shared_buffers=16MB", "-c", "log_min_messages=warning",
                ],
                stdout=log, stderr=subprocess.STDOUT, **self._popen_args(),
            )
        finally:
            log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                return self.log()
            if self._answers(port):
                return None
            time.sleep(0.05)
        self._kill()
        return "no answer within {} s: {}".format(START_TIMEOUT, self.log())

    def _answers(self, port: int) -> bool:
        import psycopg

        try:
            psycopg.connect(self.conninfo(port=port), connect_timeout=2).close()
        except psycopg.OperationalError:
            return False
        return True

    def log(self) -> str:
        """What the server wrote to its log (the last 4000 characters)."""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")[-4000:]
        except OSError:
            return ""

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` (SIGINT, a clean shutdown) or ``immediate`` (SIGQUIT, like a crash)."""
        if self.process is None:
            return
        self.process.send_signal(signal.SIGQUIT if mode == "immediate" else signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self._kill()
        self.process = None

    def restart(self) -> None:
        """Stop (fast) and start again on the same port; the databases stay."""
        self.stop()
        self.start()

    def _kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def destroy(self) -> None:
        """Stop the server and remove its directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    # -- using it ------------------------------------------------------------

    def conninfo(self, dbname: str = "postgres", port: Optional[int] = None) -> str:
        """A libpq connection string for the superuser over TCP."""
        return "host=127.0.0.1 port={} user={} password={} dbname={}".format(
            port or self.port, SUPERUSER, self.password, dbname
        )

    def url(self, dbname: str = "postgres") -> str:
        """A ``postgresql://`` URL for the superuser (with its password) over TCP."""
        return "postgresql://{}:{}@127.0.0.1:{}/{}".format(SUPERUSER, quote(self.password, safe=""), self.port, dbname)

    def execute(self, sql: str, dbname: str = "postgres") -> List[tuple]:
        """Run one statement in autocommit mode; its rows (if it returns any)."""
        import psycopg

        with psycopg.connect(self.conninfo(dbname), autocommit=True) as connection:
            cursor = connection.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def create_database(self) -> str:
        """A new empty database; its name."""
        self._databases += 1
        name = "test_{}_{}".format(os.getpid(), self._databases)
        self.execute("CREATE DATABASE {}".format(name))
        return name


_shared: Optional[PostgresServer] = None


def shared_server() -> PostgresServer:
    """The test process's PostgreSQL server, started on first use, destroyed at exit."""
    global _shared
    if _shared is None:
        server = PostgresServer()
        atexit.register(server.destroy)
        server.start()
        _shared = server
    elif _shared.process is None:
        _shared.start()
    return _shared
