"""
The twistd plugin's Options and ``makeService``.

Options check the command line's syntax (a ``UsageError`` each) and keep
the parsed values (``--udp`` as ``(port, interface)``, ``--serial`` as
``(device, baud)``); the config file is read and validated in
:func:`makeService`, where a problem ends start-up with one line
(``SystemExit``) instead of a usage dump.  Nothing below this module sees
the Options: it gets a :class:`Settings` and those values.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple

import twisted
from twisted.internet import endpoints
from twisted.python import usage

from co2logd import __version__
from co2logd.dburl import is_postgres
from co2logd.proctitle import hide_passwords
from co2logd.service import Co2logdService, StartupError, build_service
from co2logd.settings import Settings, SettingsError
from co2logd.startup import check_database_path, check_serial_devices
from co2logd.transports.mqtt_payloads import check_topic_filter, parse_broker_url
from co2logd.transports.serial import parse_serial_spec
from co2logd.transports.udp import parse_udp_spec

CONFIG_ENV = "CO2LOGSERVER_CONFIG"


class Options(usage.Options):
    """``twistd co2logd`` options; every one is optional."""

    synopsis = (
        "[--http ENDPOINT]... [--udp PORT]... [--influx-udp PORT]... [--serial DEVICE[:BAUD]]... "
        "[--mqtt URL [--mqtt-topic FILTER]...] [--db PATH|URL] [--config FILE] [--version]"
    )
    longdesc = (
        "Receive sensor data over HTTP, UDP and serial ports, store it in SQLite and "
        "forward it to the OpenSenseMap. Defaults: HTTP on tcp:8080, ./co2.sqlite."
    )
    optFlags = [["verbose", "v", "Log every stored upload, every HTTP request and serial comment lines (debug level)."]]
    optParameters = [
        ["db", None, None, "SQLite database file or postgresql://user:password@host:port/dbname (overrides the config's DB)."],
        ["config", "c", None, "co2logserver-style Python config file (default: $" + CONFIG_ENV + ")."],
        ["name", None, None, "Server name (overrides the config's NAME)."],
        ["mqtt", None, None, "MQTT broker to subscribe to: mqtt://[user:password@]host[:port] or mqtts://... (overrides MQTT_BROKER)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["http"] = []
        udp: List[Tuple[int, str]] = []  # (port, interface) per --udp
        serial: List[Tuple[str, int]] = []  # (device, baud) per --serial
        self["udp"] = udp
        influx_udp: List[Tuple[int, str]] = []  # (port, interface) per --influx-udp
        self["influx_udp"] = influx_udp
        self["serial"] = serial
        self["serial_required"] = []  # the (device, baud) of --serial-required, also in "serial"
        self["mqtt_topics"] = []

    def opt_http(self, description: str) -> None:
        """Twisted server endpoint string to serve HTTP on, e.g. tcp:8080 (repeatable; 'none' disables HTTP)."""
        self["http"].append(description)

    def opt_udp(self, spec: str) -> None:
        """UDP listener: PORT or udp:PORT[:interface=ADDR] (repeatable)."""
        self["udp"].append(_parsed(parse_udp_spec, spec, "--udp"))

    def opt_influx_udp(self, spec: str) -> None:
        """UDP listener for InfluxDB line-protocol datagrams: PORT or udp:PORT[:interface=ADDR] (repeatable)."""
        self["influx_udp"].append(_parsed(parse_udp_spec, spec, "--influx-udp"))

    def opt_serial(self, spec: str) -> None:
        """Serial device to read lines from: DEVICE[:BAUD], default baud 9600 (repeatable)."""
        self["serial"].append(_parsed(parse_serial_spec, spec, "--serial"))

    def opt_serial_required(self, spec: str) -> None:
        """Like --serial, but the device must exist at start-up, else co2logd does not start (repeatable)."""
        self.opt_serial(spec)
        self["serial_required"].append(self["serial"][-1])

    def opt_mqtt_topic(self, topic_filter: str) -> None:
        """MQTT topic filter to subscribe to, e.g. tele/+/SENSOR (repeatable; replaces MQTT_TOPICS)."""
        self["mqtt_topics"].append(_parsed(check_topic_filter, topic_filter, "--mqtt-topic"))

    def opt_version(self) -> None:
        """Print co2logd's version (and Twisted's and Python's) and exit."""
        print(version_line())
        raise SystemExit(0)

    def getSynopsis(self) -> str:
        """``Usage: python -m co2logd [options]`` when run that way, else twistd's synopsis with co2logd."""
        own = getattr(self.parent, "own_synopsis", None)
        if own:
            return "{} {}".format(own, self.synopsis)
        return super().getSynopsis()

    def parseOptions(self, options=None) -> None:
        """
        Under twistd (or ``python -m co2logd``) a bad option is one line on
        stderr and exit status 1, not the whole usage text followed by the
        error; used directly, ``UsageError`` is raised as usual.
        """
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            if self.parent is None:
                raise
            sys.stderr.write("co2logd: {}\n(--help lists the options)\n".format(e))
            raise SystemExit(1)

    def postOptions(self) -> None:
        if self["db"]:
            if is_postgres(self["db"]):
                hide_passwords()  # ps must not show the URL's password
        http = self["http"] or ["tcp:8080"]
        if "none" in http:
            if len(http) > 1:
                raise usage.UsageError("--http none cannot be combined with other --http endpoints")
            http = []
        for description in http:
            check_endpoint(description)
        self["http"] = http
        if self["mqtt"] is not None:
            hide_passwords()  # ps must not show the broker's password
            try:
                parse_broker_url(self["mqtt"])
            except ValueError as e:  # the URL may hold a password: not repeated here
                raise usage.UsageError("--mqtt: {}".format(e))


def version_line() -> str:
    """``co2logd 0.1.0 (Twisted 24.x, Python 3.x)``."""
    return "co2logd {} (Twisted {}, Python {})".format(__version__, twisted.__version__, platform.python_version())


def check_endpoint(description: str) -> None:
    """Raise UsageError unless ``description`` is a server endpoint string."""
    from twisted.internet import reactor  # not at import: twistd installs the reactor it is asked for later

    if re.fullmatch(r"\d+", description):
        raise usage.UsageError(
            "--http {0}: give an endpoint string such as tcp:{0}".format(description)
        )
    try:
        endpoints.serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise usage.UsageError("--http {}: not a server endpoint string ({})".format(description, e))


def _parsed(parse: Any, spec: str, option: str) -> Any:
    """``parse(spec)``, its ValueError as a UsageError naming the option."""
    try:
        return parse(spec)
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
    if options.get("mqtt"):
        overrides["MQTT_BROKER"] = options["mqtt"]
    if options.get("mqtt_topics"):
        overrides["MQTT_TOPICS"] = list(options["mqtt_topics"])
    config = options.get("config") or environ.get(CONFIG_ENV)
    if config:
        return Settings.from_config_file(config, overrides, environ=environ)
    return Settings.from_values(overrides, environ=environ)


def database_files(path: str) -> list:
    """The database file and SQLite's companions (WAL, shared memory, journal)."""
    return [path + suffix for suffix in ("", "-wal", "-shm", "-journal")]


def makeService(options: Mapping[str, Any], reactor: Any = None) -> Co2logdService:
    """
    Build the daemon and bind its ports; any problem ends start-up with one line.

    Everything that can fail at start-up happens here, before twistd forks,
    daemonizes or writes its pidfile: the settings are read, the database
    directory and required serial devices are checked, the database is
    opened and every listener is bound.  A problem raises ``SystemExit`` with
    one line, so the terminal shows it and the exit status is 1.  A database
    file that start-up created is removed again when a later step fails.
    """
    if reactor is None:  # only now: twistd installs the reactor it was asked for before calling makeService
        from twisted.internet import reactor
    config = options.get("config") or os.environ.get(CONFIG_ENV)
    try:
        settings = load_settings(options)
    except SettingsError as e:
        raise SystemExit("co2logd: {}".format(e))
    required = list(options["serial"]) if settings.SERIAL_REQUIRED else list(options["serial_required"])
    sqlite = not is_postgres(settings.DB)
    try:
        if sqlite:
            check_database_path(settings.DB)
        check_serial_devices(required)
    except StartupError as e:
        raise SystemExit(str(e))
    created = [f for f in database_files(settings.DB) if not os.path.exists(f)] if sqlite else []
    service = None
    try:
        service = build_service(
            settings,
            reactor,
            http=options["http"],
            udp=options["udp"],
            influx_udp=options["influx_udp"],
            serial=options["serial"],
            serial_required=required,
            verbose=bool(options.get("verbose")),
            config_file=config,
        )
        service.bind()
    except (SettingsError, StartupError) as e:
        _abandon(service, created)
        raise SystemExit(str(e) if isinstance(e, StartupError) else "co2logd: {}".format(e))
    return service


def _abandon(service, created) -> None:
    """Close what a failed start-up opened and remove the database files it created."""
    if service is not None:
        service.abandon()
    for path in created:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
