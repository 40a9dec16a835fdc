"""Building blocks for tests: settings, a real store on a temp file, a running HTTP site."""

from __future__ import annotations

import hashlib
import os
import socket
import sqlite3
import time
from typing import Any, Dict, List

import treq
from twisted.internet import defer, reactor, task

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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for_port(port: int, process, output, timeout: float = 30.0) -> None:
    """
    Block until a daemon ``process`` accepts connections on 127.0.0.1:``port``;
    if it exits or ``timeout`` passes first, kill it and fail with ``output()``
    (what it printed).
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise AssertionError("daemon did not start: " + output())
            time.sleep(0.05)


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
