"""
The twistd plugin's Options and ``makeService``.

Options check the command line's syntax (a ``UsageError`` each); the config
file is read and validated in :func:`makeService`, where a problem ends
start-up with one line (``SystemExit``) instead of a usage dump.  Nothing
below this module sees the Options: it gets a :class:`Settings`.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, Mapping, Optional

from twisted.internet import endpoints
from twisted.python import usage

from co2logd.settings import Settings, SettingsError

CONFIG_ENV = "CO2LOGSERVER_CONFIG"


class Options(usage.Options):
    """``twistd co2logd`` options; every one is optional."""

    synopsis = "[--http ENDPOINT]... [--udp PORT]... [--serial DEVICE[:BAUD]]... [--db PATH] [--config FILE]"
    longdesc = (
        "Receive sensor data over HTTP, UDP and serial ports, store it in SQLite and "
        "forward it to the OpenSenseMap. Defaults: HTTP on tcp:8080, ./co2.sqlite."
    )
    optFlags = [["verbose", "v", "Log every stored upload and every HTTP request."]]
    optParameters = [
        ["db", None, None, "SQLite database file (overrides the config's DB)."],
        ["config", "c", None, "co2logserver-style Python config file (default: $" + CONFIG_ENV + ")."],
        ["name", None, None, "Server name (overrides the config's NAME)."],
    ]

    def __init__(self):
        super().__init__()
        self["http"] = []
        self["udp"] = []
        self["serial"] = []

    def opt_http(self, description: str) -> None:
        """Twisted server endpoint string to serve HTTP on, e.g. tcp:8080 (repeatable; 'none' disables HTTP)."""
        self["http"].append(description)

    def opt_udp(self, spec: str) -> None:
        """UDP listener: PORT or udp:PORT[:interface=ADDR] (repeatable)."""
        self["udp"].append(spec)

    def opt_serial(self, spec: str) -> None:
        """Serial device to read lines from: DEVICE[:BAUD], default baud 9600 (repeatable)."""
        self["serial"].append(spec)

    def postOptions(self) -> None:
        http = self["http"] or ["tcp:8080"]
        if "none" in http:
            if len(http) > 1:
                raise usage.UsageError("--http none cannot be combined with other --http endpoints")
            http = []
        for description in http:
            check_endpoint(description)
        self["http"] = http
        for spec in self["udp"]:
            _check_spec("co2logd.transports.udp", "parse_udp_spec", spec, "--udp")
        for spec in self["serial"]:
            _check_spec("co2logd.transports.serial", "parse_serial_spec", spec, "--serial")


def check_endpoint(description: str) -> None:
    """Raise UsageError unless ``description`` is a server endpoint string."""
    from twisted.internet import reactor

    if re.fullmatch(r"\d+", description):
        raise usage.UsageError(
            "--http {0}: give an endpoint string such as tcp:{0}".format(description)
        )
    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError("--http {}: not a server endpoint string ({})".format(description, e))


def _check_spec(module: str, function: str, spec: str, option: str) -> None:
    import importlib

    parse = getattr(importlib.import_module(module), function)
    try:
        parse(spec)
    except ValueError as e:
        raise usage.UsageError("{} {}: {}".format(option, spec, e))


def load_settings(options: Mapping[str, Any], environ: Optional[Mapping[str, str]] = None) -> Settings:
    """Settings from the config file (``--config`` or ``$CO2LOGSERVER_CONFIG``) and the overrides."""
    environ = os.environ if environ is None else environ
    overrides: Dict[str, Any] = {}
    if options.get("db"):
        overrides["DB"] = options["db"]
    if options.get("name"):
        overrides["NAME"] = options["name"]
    config = options.get("config") or environ.get(CONFIG_ENV)
    if config:
        return Settings.from_config_file(config, overrides, environ=environ)
    return Settings.from_values(overrides, environ=environ)


def makeService(options: Mapping[str, Any], reactor=None):
    """Build the daemon; a bad config or database ends start-up with one line."""
    from co2logd.service import StartupError, build_service

    if reactor is None:
        from twisted.internet import reactor
    try:
        settings = load_settings(options)
        service = build_service(
            settings,
            reactor,
            http=options["http"],
            udp=options["udp"],
            serial=options["serial"],
            verbose=bool(options.get("verbose")),
        )
    except SettingsError as e:
        raise SystemExit("co2logd: {}".format(e))
    except StartupError as e:
        raise SystemExit(str(e))
    service.exit_on_error = True
    return service
