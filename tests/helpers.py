"""Building blocks for tests: settings, a real store on a temp file, a running HTTP site."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sqlite3
import subprocess
import time
import urllib.request
from typing import Any, Dict, List, Sequence, Tuple

import treq
from twisted.internet import defer, reactor, task
from twisted.logger import eventFromJSON, formatEvent

from co2logd.ingest import IngestService
from co2logd.settings import Settings
from co2logd.store import Store
from co2logd.web.site import make_site

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

README_JSON = b'{"time_utc":[43,23],"co2":[1223,2351]}'
README_CSV = b"time_utc,co2\n43,1223\n23,2351"
README_FORM = b"time_utc=43&co2=1223&time_utc=23&co2=2351"
README_MSGPACK = bytes.fromhex("82a874696d655f757463922b17a3636f3292cd04c7cd092f")
README_SALT = "my-super-secret-psk"
README_MD5 = "b71e91feb2be18ccca019914a1da5b1d"


# what co2logd logs once a listener is bound, with the real port:
# "Listening for HTTP on 127.0.0.1:43125", "Listening for UDP uploads on 127.0.0.1:35546, ..."
LISTENING = re.compile(r"Listening for (?P<kind>[A-Za-z]+)\b[^\n]*? on (?P<host>[^\s,]+):(?P<port>\d+)")


def listening_in(log: str) -> Dict[str, int]:
    """
    The real port of each listener a co2logd log names, by kind
    (``{"HTTP": 43125, "UDP": 35546}``).  The log is text, or JSON lines
    (what ``twist`` writes when its output is not a terminal).
    """
    lines = []
    for line in log.splitlines():
        if line.startswith("{"):
            try:
                line = formatEvent(eventFromJSON(line))
            except ValueError:
                continue  # the daemon is still writing this line
        lines.append(line)
    return {m.group("kind").upper(): int(m.group("port")) for m in LISTENING.finditer("\n".join(lines))}


def read_from(path: str, offset: int = 0) -> str:
    """The text of the file at ``path`` from byte ``offset`` on ("" when it does not exist yet)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


def wait_until_listening(
    process: "subprocess.Popen[bytes]", log_path: str, kinds: Sequence[str] = ("HTTP",), offset: int = 0,
    timeout: float = 30.0,
) -> Dict[str, int]:
    """
    Block until a daemon ``process`` that listens on port 0 has logged (to
    ``log_path``, from byte ``offset`` on) the real port of each listener
    kind in ``kinds``; return them by kind.  The process binds its own
    ports, so there is no window in which another could take them.  If it
    exits or ``timeout`` passes first, kill it and fail with its output.
    """
    deadline = time.monotonic() + timeout
    while True:
        ports = listening_in(read_from(log_path, offset))
        if all(kind in ports for kind in kinds):
            return ports
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            process.wait()
            raise AssertionError("daemon did not start: " + read_from(log_path, offset))
        time.sleep(0.05)


def start_daemon(
    argv: List[str], cwd: str, env: Dict[str, str], log_path: str, kinds: Sequence[str] = ("HTTP",)
) -> Tuple["subprocess.Popen[bytes]", Dict[str, int]]:
    """
    Start a co2logd process whose listeners are on port 0, its output
    appended to ``log_path`` (a file: a pipe nobody reads would fill up and
    stop it); once it has logged the real ports of ``kinds``, return
    (process, {kind: port}).
    """
    offset = os.path.getsize(log_path) if os.path.exists(log_path) else 0
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    return process, wait_until_listening(process, log_path, kinds, offset)


def stop_daemon(process: "subprocess.Popen[bytes]", timeout: float = 30.0) -> int:
    """SIGTERM a daemon as systemd would, wait for it (SIGKILL after ``timeout``); its exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise


def upload_to_daemon(
    argv: List[str], cwd: str, env: Dict[str, str], body: bytes, log_path: str
) -> Tuple[Any, int, str]:
    """
    Start a daemon whose HTTP listener is on port 0, POST ``body`` (JSON) to
    its /upload, stop it with SIGTERM.  Blocking: run it in a thread.
    Returns (parsed reply, exit status, everything it printed).
    """
    process, ports = start_daemon(argv, cwd, env, log_path)
    try:
        request = urllib.request.Request(
            "http://127.0.0.1:{}/upload".format(ports["HTTP"]), data=body, headers={"Content-Type": "application/json"}
        )
        reply = json.loads(urllib.request.urlopen(request, timeout=10).read())
    finally:
        code = stop_daemon(process, 60)
    return reply, code, read_from(log_path)


def http_ports_of(daemon) -> List[int]:
    """The real ports of a daemon's HTTP listeners (services named "http ..."), in the order they were added."""
    return [child.port.getHost().port for child in daemon if child.name.startswith("http ")]


def http_port_of(daemon) -> int:
    """The real port of a daemon's one HTTP listener, bound on port 0 by the daemon itself."""
    [port] = http_ports_of(daemon)
    return port


def make_settings(**values: Any) -> Settings:
    """Settings with co2logserver defaults, the given keys changed, no environment."""
    return Settings.from_values(values, environ={})


def salted(payload: bytes, salt: str, algorithm: str = "md5") -> str:
    """The checksum a device computes: hex(ALG(payload + salt))."""
    return hashlib.new(algorithm, payload + salt.encode()).hexdigest()


def rows_in(path: str, table: str = "data") -> List[Dict[str, Any]]:
    """Every row of the data table, read with plain sqlite3 (as a user would)."""
    connection = sqlite3.connect(path)
    connection.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in connection.execute('SELECT * FROM "{}" ORDER BY rowid'.format(table))]
    finally:
        connection.close()


class StoreMixin:
    """A real Store and IngestService on a temporary SQLite file, cleaned up after the test."""

    def make_store(self, settings=None, path=None):
        self.settings = settings or make_settings()
        self.db_path = path or self.mktemp()
        self.store = Store.open(self.db_path, self.settings)
        self.store.startService()
        self.addCleanup(self.store.stopService)
        return self.store

    def make_ingest(self, settings=None, clock=None, path=None, **kwargs):
        store = self.make_store(settings, path)
        self.clock = clock or task.Clock()
        if clock is None:
            self.clock.advance(1_700_000_000)
        self.ingest = IngestService(self.settings, store, self.clock, **kwargs)
        return self.ingest


class SiteMixin(StoreMixin):
    """A real HTTP site on 127.0.0.1 over a real store; ``self.url``."""

    def start_site(self, settings=None, path=None):
        ingest = self.make_ingest(settings, clock=reactor, path=path)
        self.site = make_site(self.settings, ingest, self.store, reactor)
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")
        self.addCleanup(self.port.stopListening)
        self.url = "http://127.0.0.1:{}".format(self.port.getHost().port)
        return self.url

    @defer.inlineCallbacks
    def post(self, body: bytes, content_type=None, headers=None):
        """POST to /upload; fire with (status, parsed JSON body)."""
        h = dict(headers or {})
        if content_type is not None:
            h["Content-Type"] = content_type
        response = yield treq.post(self.url + "/upload", data=body, headers=h, persistent=False)
        content = yield treq.json_content(response)
        return response.code, content

    @defer.inlineCallbacks
    def get(self, path: str, headers=None):
        """GET a path; fire with (status, headers, body bytes)."""
        response = yield treq.get(self.url + path, headers=headers or {}, persistent=False)
        body = yield treq.content(response)
        return response.code, response.headers, body
