"""
A real Mosquitto broker for tests and benchmarks, with a config of its own.

Debian's ``mosquitto`` (``/usr/sbin/mosquitto``, installed by ``.ci/run``)
runs as a child process on 127.0.0.1 with its files in a temporary
directory: never the system-wide broker.  Mosquitto cannot report the port
of a port-0 bind, so :meth:`Mosquitto.start` picks a port that was free a
moment ago, starts the broker on it and, when another process took the port
meanwhile, tries again with another one.

Persistence is on (the broker keeps sessions and queued messages across its
own restarts), there is no limit on the messages queued for an offline
client, and anonymous clients are allowed unless users are given: then a
password file is written (Mosquitto's ``$7$`` PBKDF2-SHA512 format).
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from typing import Dict, Optional

MOSQUITTO = os.environ.get("CO2LOGD_TEST_MOSQUITTO", "/usr/sbin/mosquitto")

#: why the MQTT tests skip, or None when a broker can be started
MISSING: Optional[str] = None
if not (os.path.isfile(MOSQUITTO) and os.access(MOSQUITTO, os.X_OK)) and shutil.which("mosquitto") is None:
    MISSING = "Mosquitto (Debian package mosquitto, /usr/sbin/mosquitto) is not installed; .ci/run installs it"
elif not os.path.isfile(MOSQUITTO):
    MOSQUITTO = shutil.which("mosquitto") or MOSQUITTO


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def password_line(user: str, password: str) -> str:
    """One line of a Mosquitto 2 password file: ``user:$7$101$salt$hash`` (PBKDF2-SHA512, 101 rounds)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, 101)
    return "{}:$7$101${}${}".format(user, base64.b64encode(salt).decode(), base64.b64encode(digest).decode())


class Mosquitto:
    """
    One broker in ``directory``; :meth:`start`, :meth:`stop`, :meth:`restart`.

    ``users`` (name → password) turns anonymous access off.  ``tls`` is a
    ``(certfile, keyfile)`` pair: the listener then speaks TLS.  ``extra``
    lines are appended to the config.
    """

    def __init__(
        self,
        directory: str,
        users: Optional[Dict[str, str]] = None,
        tls: Optional[tuple] = None,
        extra: str = "",
    ):
        self.directory = directory
        self.users = users
        self.tls = tls
        self.extra = extra
        self.port: Optional[int] = None
        self.process: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(directory, "mosquitto.log")

    def _write_config(self, port: int) -> str:
        lines = [
            "listener {} 127.0.0.1".format(port),
            "persistence true",
            "persistence_location {}/".format(self.directory),
            "persistence_file mosquitto.db",
            # messages for an offline client: no count limit (the default 1000 drops the rest)
            "max_queued_messages 0",
            "log_dest file {}".format(self.log_path),
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "connection_messages true",
            # started as root, Mosquitto would switch to the "mosquitto" user, who cannot read this directory
            "user {}".format(pwd.getpwuid(os.geteuid()).pw_name),
        ]
        if self.users:
            path = os.path.join(self.directory, "passwd")
            with open(path, "w") as f:
                f.write("".join(password_line(u, p) + "\n" for u, p in self.users.items()))
            os.chmod(path, 0o600)
            lines += ["allow_anonymous false", "password_file {}".format(path)]
        else:
            lines.append("allow_anonymous true")
        if self.tls:
            lines += ["certfile {}".format(self.tls[0]), "keyfile {}".format(self.tls[1])]
        if self.extra:
            lines.append(self.extra)
        path = os.path.join(self.directory, "mosquitto.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        return path

    def start(self, port: Optional[int] = None, attempts: int = 8, timeout: float = 10.0) -> int:
        """
        Start the broker (on ``port``, or a free one) and wait until it
        accepts connections; returns the port.  A port taken meanwhile by
        someone else means another try on another port (not with ``port`` given).
        """
        if MISSING:
            raise RuntimeError(MISSING)
        last = ""
        for _ in range(attempts if port is None else 1):
            candidate = port or free_port()
            config = self._write_config(candidate)
            offset = os.path.getsize(self.log_path) if os.path.exists(self.log_path) else 0
            process = subprocess.Popen(
                [MOSQUITTO, "-c", config],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    last = self._log_since(offset) + process.stderr.read().decode("utf-8", "replace")
                    break
                if self._opened(offset):
                    process.stderr.close()
                    self.process, self.port = process, candidate
                    return candidate
                if time.monotonic() > deadline:
                    process.kill()
                    process.wait()
                    raise RuntimeError("mosquitto did not start within {} s: {}".format(timeout, self._log_since(offset)))
                time.sleep(0.02)
            if "in use" not in last.lower():
                break
        raise RuntimeError("mosquitto could not start: {}".format(last.strip()))

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                return f.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def _opened(self, offset: int) -> bool:
        """The broker logged its listener and accepts a TCP connection."""
        if "Opening ipv4 listen socket" not in self._log_since(offset):
            return False
        try:
            socket.create_connection(("127.0.0.1", self.port_hint(offset)), timeout=1).close()
        except OSError:
            return False
        return True

    def port_hint(self, offset: int) -> int:
        text = self._log_since(offset)
        marker = "listen socket on port "
        i = text.find(marker)
        return int(text[i + len(marker):].split(".")[0]) if i >= 0 else 0

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM: it saves its persistence file first); idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> int:
        """Stop and start again on the same port, keeping sessions and queued messages."""
        port = self.port
        self.stop()
        return self.start(port=port)

    def log(self) -> str:
        """Everything the broker logged so far."""
        return self._log_since(0)

    @property
    def url(self) -> str:
        """``mqtt://127.0.0.1:PORT`` (no credentials)."""
        return "mqtt://127.0.0.1:{}".format(self.port)


def publish(port: int, messages, username: Optional[str] = None, password: Optional[str] = None,
            protocol: str = "5", timeout: float = 30.0, ca_file: Optional[str] = None) -> int:
    """
    Publish ``messages`` (``(topic, payload)`` or ``(topic, payload,
    {user property: value}, content_type)``) with QoS 1 and wait until the
    broker has acknowledged every one; returns how many.  Blocking: call
    it from a thread (``deferToThread``) in tests that run the reactor.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    mqtt5 = protocol == "5"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311)
    if username is not None:
        client.username_pw_set(username, password)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    if ca_file is not None:
        client.tls_set(ca_certs=ca_file)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = []
        for message in messages:
            topic, payload = message[0], message[1]
            properties = None
            if mqtt5 and len(message) > 2:
                properties = Properties(PacketTypes.PUBLISH)
                if message[2]:
                    properties.UserProperty = list(message[2].items())
                if len(message) > 3 and message[3]:
                    properties.ContentType = message[3]
            infos.append(client.publish(topic, payload, qos=1, properties=properties))
        deadline = time.monotonic() + timeout
        for info in infos:
            info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            if not info.is_published():
                raise RuntimeError("the broker did not acknowledge message {} in time".format(info.mid))
        return len(infos)
    finally:
        client.disconnect()
        client.loop_stop()


def make_certificates(directory: str):
    """
    A throw-away CA and a server certificate for 127.0.0.1 (openssl);
    returns ``(ca_file, cert_file, key_file)``.
    """
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=co2logd test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    with open(os.path.join(directory, "san.ext"), "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    return tuple(os.path.join(directory, name) for name in ("ca.crt", "server.crt", "server.key"))
