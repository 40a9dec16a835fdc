"""
Settings: every co2logserver 0.1.2 key with its default, plus co2logd's own.

A co2logserver configuration file is a Python file of ``CO2LOGSERVER_*``
assignments (plain values or hook functions).  It is executed, its upper-case
``CO2LOGSERVER_*`` (or ``CO2LOGD_*``) names are validated against the table
below, and the result is one immutable-by-convention :class:`Settings`.
Unknown names and values of the wrong type raise :class:`SettingsError` with
one sentence that names the problem.
"""

from __future__ import annotations

import datetime
import difflib
import logging
import os
import re
from typing import Any, Callable, Dict, List, Mapping, Optional

PREFIXES = ("CO2LOGSERVER_", "CO2LOGD_")


class SettingsError(ValueError):
    """A configuration value or file that co2logd cannot use."""


# -- default hooks, with co2logserver 0.1.2's behaviour ---------------------


def default_auth_checker(matches: Mapping[str, Optional[str]]) -> bool:
    """At least one checksum given, and every given checksum matched."""
    return bool(len(matches)) and all(matches.values())


def utc_datetime_from_unix_timestamp(seconds: Any) -> datetime.datetime:
    """UNIX seconds (whole seconds, as co2logserver) as an aware UTC datetime."""
    return datetime.datetime(
        1970, 1, 1, tzinfo=datetime.timezone.utc
    ) + datetime.timedelta(seconds=int(seconds))


def default_time_converter(val: Any, col: str) -> datetime.datetime:
    """Convert UNIX seconds in a time column to a UTC datetime."""
    return utc_datetime_from_unix_timestamp(val)


def accept_every_column(col: str) -> bool:
    """Accept every new column."""
    return True


def redirect_everything(_: Any) -> bool:
    """Forward every column / box to the OpenSenseMap."""
    return True


def round_to_three_places(box: Any, col: str, val: Any) -> Any:
    """Round values to three decimal places before forwarding."""
    return round(val, 3)


def no_default_position(box: Any) -> None:
    """No fallback position for a new senseBox."""
    return None


def exposure_from_box_name(box: Any) -> str:
    """co2logserver's rule: the first of indoor/outdoor/mobile containing the box value."""
    return next((x for x in ("indoor", "outdoor", "mobile") if str(box) in x), "mobile")


def unit_converter(unit: str) -> str:
    """Map short unit names to the OpenSenseMap's (c → °C, percent → %)."""
    return {"c": "°C", "percent": "%", "perc": "%"}.get(unit.lower(), unit)


OSEM_ICONS = [
    "osem-moisture",
    "osem-temperature-celsius",
    "osem-temperature-fahrenheit",
    "osem-thermometer",
    "osem-windspeed",
    "osem-sprinkles",
    "osem-brightness",
    "osem-barometer",
    "osem-humidity",
    "osem-not-available",
    "osem-gauge",
    "osem-umbrella",
    "osem-clock",
    "osem-shock",
    "osem-fire",
    "osem-volume-up",
    "osem-cloud",
    "osem-dashboard",
    "osem-particulate-matter",
    "osem-signal",
    "osem-microphone",
    "osem-wifi",
    "osem-battery",
    "osem-radioactive",
]


def icon_from_quantity(d: Mapping[str, str]) -> str:
    """The first OpenSenseMap icon whose name contains the quantity."""
    return next((icon for icon in OSEM_ICONS if d["quantity"] in icon), "osem-not-available")


DEFAULT_COL_REGEX = re.compile(r"^(?P<type>[^_]+)_(?P<quantity>[^_]+)_(?P<unit>.*)$")


# -- validators ---------------------------------------------------------------


def _kind_str(value: Any) -> Any:
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


def _kind_optional_str(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise TypeError("a string or None")
    return value


def _kind_optional_token(value: Any) -> Any:
    if value is not None and not (isinstance(value, str) and len(value) >= 16 and value.isascii() and value.isprintable()):
        raise TypeError("None or a string of at least 16 printable ASCII characters")
    return value


def _kind_bool(value: Any) -> Any:
    if not isinstance(value, bool):
        raise TypeError("True or False")
    return value


def _kind_positive_int(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise TypeError("a positive whole number")
    return value


def _kind_non_negative_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise TypeError("a number of at least 0")
    return value


def _kind_str_list(value: Any) -> Any:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError("a list of strings")
    if not all(isinstance(v, str) for v in value):
        raise TypeError("a list of strings")
    return list(value)


def _kind_callable(value: Any) -> Any:
    if not callable(value):
        raise TypeError("a function")
    return value


def _kind_loglevel(value: Any) -> Any:
    if isinstance(value, str):
        level = logging.getLevelName(value.upper())
        if isinstance(level, int):
            return level
    elif isinstance(value, int) and not isinstance(value, bool):
        return value
    raise TypeError("a logging level (a number or a name like 'INFO')")


def _kind_regex(value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = re.compile(value)
        except re.error as e:
            raise TypeError("a valid regular expression ({})".format(e))
    if not isinstance(value, re.Pattern):
        raise TypeError("a regular expression")
    return value


def _kind_osem_regex(value: Any) -> Any:
    value = _kind_regex(value)
    missing = {"type", "quantity", "unit"} - set(value.groupindex)
    if missing:
        raise TypeError(
            "a regular expression with the named groups type, quantity and unit"
        )
    return value


def _kind_identifier(value: Any) -> Any:
    from co2logd.names import is_safe_identifier

    if not isinstance(value, str) or not is_safe_identifier(value.lower()):
        raise TypeError(
            "a column or table name of letters, digits and '_' not starting with a digit"
        )
    return value.lower()


def _kind_synchronous(value: Any) -> Any:
    if not isinstance(value, str) or value.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
        raise TypeError("one of 'OFF', 'NORMAL', 'FULL', 'EXTRA'")
    return value.upper()


def _kind_replay_mode(value: Any) -> Any:
    if not isinstance(value, str) or value.lower() not in ("off", "optional", "required"):
        raise TypeError("one of 'off', 'optional', 'required'")
    return value.lower()


def _env(name: str) -> Callable[[Mapping[str, str]], Optional[str]]:
    def default(environ: Mapping[str, str]) -> Optional[str]:
        return environ.get(name)

    default.__doc__ = "taken from ${}".format(name)
    return default


def _kind_positive_number(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TypeError("a number greater than 0")
    return value


def _kind_osem_batch_size(value: Any) -> Any:
    # the OpenSenseMap refuses more than 2500 measurements per request
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2500:
        raise TypeError("a whole number from 1 to 2500")
    return value


# transports (issue 3)
def _kind_udp_datagram(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65507:
        raise TypeError("a whole number of bytes from 1 to 65507")
    return value


def _kind_transport_seconds(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise TypeError("a number of seconds greater than 0")
    return value


def _kind_optional_identifier(value: Any) -> Any:
    return None if value is None else _kind_identifier(value)


def _kind_gateway_pattern(value: Any) -> Any:
    from co2logd.names import is_safe_identifier

    if value is None:
        return None
    value = _kind_regex(value)
    if not value.groupindex or not all(is_safe_identifier(name) for name in value.groupindex):
        raise TypeError(
            "a regular expression with named groups that are column names, like r'^(?:OK )?(?P<box>\\d+) '"
        )
    return value


# dashboard (issue 5)
def _kind_optional_str_list(value: Any) -> Any:
    return None if value is None else _kind_str_list(value)


def _kind_number_list(value: Any) -> Any:
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError("a list of numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise TypeError("a list of numbers")
    return sorted(value)


def _kind_unit_map(value: Any) -> Any:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError("a dict of column name to unit text, like {'co2': 'ppm'}")
    return {k.lower(): v for k, v in value.items()}

# MQTT
def _kind_mqtt_broker(value: Any) -> Any:
    from co2logd.transports.mqtt_payloads import parse_broker_url

    if value is None:
        return None
    try:
        parse_broker_url(value)
    except ValueError as e:
        raise TypeError("None or a broker URL mqtt://[user:password@]host[:port] or mqtts://… ({})".format(e))
    return value


def _kind_topic_filters(value: Any) -> Any:
    from co2logd.transports.mqtt_payloads import check_topic_filter

    value = _kind_str_list(value)
    try:
        return [check_topic_filter(v) for v in value]
    except ValueError as e:
        raise TypeError("a list of MQTT topic filters ({})".format(e))


def _kind_mqtt_qos(value: Any) -> Any:
    # QoS 2 is not offered: paho keeps a QoS 2 message's state in memory only, so a crash could lose it
    if isinstance(value, bool) or value not in (0, 1):
        raise TypeError("0 or 1 (1: acknowledged after the commit)")
    return value


def _kind_mqtt_protocol(value: Any) -> Any:
    if value not in ("5", "3.1.1"):
        raise TypeError("'5' or '3.1.1'")
    return value


def _kind_receive_maximum(value: Any) -> Any:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise TypeError("a whole number from 1 to 65535")
    return value


def _kind_client_id(value: Any) -> Any:
    if value is not None and not (isinstance(value, str) and 1 <= len(value.encode("utf-8")) <= 65535):
        raise TypeError("None or a non-empty string")
    return value


def _kind_timezone(value: Any) -> Any:
    from co2logd.transports.mqtt_payloads import check_timezone

    if value is not None and not isinstance(value, str):
        raise TypeError("None or an IANA time zone name such as 'Europe/Berlin'")
    try:
        return check_timezone(value)
    except ValueError as e:
        raise TypeError(str(e))


class Key:
    """One setting: its default (or a function of the environment) and its kind."""

    def __init__(self, default: Any, kind: Callable[[Any], Any], doc: str, from_env: bool = False):
        self.default = default
        self.kind = kind
        self.doc = doc
        self.from_env = from_env


# name → Key.  co2logserver 0.1.2 keys first, then co2logd's own.
KEYS: Dict[str, Key] = {
    "NAME": Key("co2logserver", _kind_str, "name of this server"),
    "DB": Key("co2.sqlite", _kind_str, "SQLite database file"),
    "LOGLEVEL": Key(logging.WARNING, _kind_loglevel, "log level"),
    "SENSEMAPI_LOGLEVEL": Key(logging.WARNING, _kind_loglevel, "log level of sensemapi"),
    "CHECKSUM_SALTS": Key([], _kind_str_list, "pre-shared salts for the salted checksums"),
    "UPLOAD_REQUIRES_AUTH": Key(False, _kind_bool, "uploads need a matching salted checksum"),
    "DOWNLOAD_REQUIRES_AUTH": Key(False, _kind_bool, "the data (dashboard, /download, /plot, /health details, /metrics) needs a salted checksum of the path, DASHBOARD_TOKEN or its session"),
    "UPLOAD_HELP": Key(True, _kind_bool, "serve /uploadhelp"),
    "AUTH_CHECKER": Key(default_auth_checker, _kind_callable, "matches → granted?"),
    "DATA_TABLE_NAME": Key("data", _kind_identifier, "table holding the data"),
    "MATCHED_CHECKSUMS_COL": Key("matched_checksums", _kind_identifier, "column of matched algorithms"),
    "FAILED_CHECKSUMS_COL": Key("failed_checksums", _kind_identifier, "column of failed algorithms"),
    "UPLOAD_TIME_COL": Key("time_upload_utc", _kind_identifier, "column of the upload time (UTC)"),
    "TIME_COLS": Key(["time"], _kind_str_list, "columns converted by TIME_CONVERTER"),
    "TIME_CONVERTER": Key(default_time_converter, _kind_callable, "(val, col) → datetime"),
    "MAX_LIMIT_OF_ROWS": Key(1000, _kind_positive_int, "default and ceiling of /download?number="),
    "ACCEPT_NEW_COLUMN": Key(accept_every_column, _kind_callable, "col → create it?"),
    "ALLOW_EMPTY_ROWS": Key(False, _kind_bool, "store rows holding only automatic columns"),
    "OSEM_UPLOAD": Key(False, _kind_bool, "forward data to the OpenSenseMap"),
    "OSEM_API": Key(_env("SENSEMAP_API"), _kind_optional_str, "OpenSenseMap API URL", True),
    "OSEM_USERNAME": Key(_env("SENSEMAP_USERNAME"), _kind_optional_str, "OpenSenseMap user", True),
    "OSEM_EMAIL": Key(_env("SENSEMAP_EMAIL"), _kind_optional_str, "OpenSenseMap e-mail", True),
    "OSEM_PASSWORD": Key(_env("SENSEMAP_PASSWORD"), _kind_optional_str, "OpenSenseMap password", True),
    "OSEM_AUTH_CACHE": Key(True, _kind_bool, "cache OpenSenseMap tokens"),
    "OSEM_REQUEST_CACHE": Key(True, _kind_bool, "cache OpenSenseMap GET requests"),
    "OSEM_CACHE_PASSWORD": Key(False, _kind_bool, "cache the OpenSenseMap password"),
    "OSEM_COL_REDIRECT": Key(redirect_everything, _kind_callable, "col → forward it?"),
    "OSEM_BOX_REDIRECT": Key(redirect_everything, _kind_callable, "box → forward it?"),
    "OSEM_VALUE_FILTER": Key(round_to_three_places, _kind_callable, "(box, col, val) → value"),
    "OSEM_BOX_COL": Key("box", _kind_str, "column naming the senseBox"),
    "OSEM_BOX_COL_DEFAULT": Key("generic", _kind_str, "box when the column is missing"),
    "OSEM_LAT_COL": Key("lat", _kind_str, "latitude column"),
    "OSEM_LON_COL": Key("lon", _kind_str, "longitude column"),
    "OSEM_HEIGHT_COL": Key("height", _kind_str, "height column"),
    "DEFAULT_LAT": Key(no_default_position, _kind_callable, "box → latitude of a new box"),
    "DEFAULT_LON": Key(no_default_position, _kind_callable, "box → longitude of a new box"),
    "OSEM_TIME_COL": Key(None, _kind_optional_str, "measurement time column (default: first of TIME_COLS)"),
    "OSEM_MIN_SECONDS_BETWEEN_UPLOADS": Key(0, _kind_non_negative_number, "throttle per sensor"),
    "OSEM_EXPOSURE_DETERMINER": Key(exposure_from_box_name, _kind_callable, "box → exposure"),
    "OSEM_DEFAULT_WEBLINK": Key(
        "https://gitlab.com/tue-umphy/co2mofetten/python3-co2logserver",
        _kind_str,
        "weblink of every senseBox",
    ),
    "OSEM_DEFAULT_DESCRIPTION": Key(
        "This senseBox was automatically created by an instance of co2logserver, "
        "a simple Python HTTP data logging server, named '{servername}'.",
        _kind_str,
        "description of new senseBoxes ({servername} is replaced)",
    ),
    "OSEM_COL_REGEX": Key(DEFAULT_COL_REGEX, _kind_osem_regex, "sensor columns: type_quantity_unit"),
    "OSEM_BOX_NAME_GENERATOR": Key(
        "{servername} senseBox {box}".format, _kind_callable, "(servername, box) → box name"
    ),
    "OSEM_SENSOR_TITLE_GENERATOR": Key("{quantity}".format, _kind_callable, "groups → sensor title"),
    "OSEM_UNIT_COVERTER": Key(unit_converter, _kind_callable, "unit → OpenSenseMap unit"),
    "OSEM_ICONS": Key(list(OSEM_ICONS), _kind_str_list, "available icons"),
    "OSEM_ICON_DETERMINER": Key(icon_from_quantity, _kind_callable, "groups → icon"),
    "OSEM_MAX_POSITION_CHANGE": Key(float("inf"), _kind_non_negative_number, "max lat/lon change in degrees"),
    "SALTED_CHECKSUM_HEADER_REGEX": Key(
        re.compile(r"Content-(?P<algorithm>\w+)-Salted", re.IGNORECASE),
        _kind_regex,
        "header names carrying salted checksums",
    ),
    # co2logd's own
    "TRANSPORT_COL": Key("transport", _kind_identifier, "column recording the transport of each row"),
    "MAX_BODY_SIZE": Key(10 * 1024 * 1024, _kind_positive_int, "largest upload body in bytes"),
    "MAX_ROWS_PER_UPLOAD": Key(100_000, _kind_positive_int, "most rows in one upload"),
    "MAX_NEW_COLUMNS_PER_UPLOAD": Key(100, _kind_positive_int, "most new columns one upload may add"),
    "MAX_COLUMNS": Key(1000, _kind_positive_int, "most columns the data table may have"),
    "MAX_COLUMN_NAME_LENGTH": Key(64, _kind_positive_int, "longest column name"),
    "MAX_CHECKSUM_HEADERS": Key(8, _kind_positive_int, "most Content-*-Salted headers on one upload; more are refused (400) before any hashing"),
    "DB_SYNCHRONOUS": Key("FULL", _kind_synchronous, "SQLite PRAGMA synchronous"),
    # transports (issue 3)
    "UDP_MAX_DATAGRAM": Key(8192, _kind_udp_datagram, "largest UDP datagram (header block + body) in bytes; larger ones are refused"),
    "UDP_ACK": Key(False, _kind_bool, "answer every UDP datagram with a JSON receipt or error"),
    "UDP_RECEIVE_BUFFER": Key(4 * 1024 * 1024, _kind_positive_int, "UDP socket receive buffer in bytes (bursts wait there; the kernel may cap it at net.core.rmem_max)"),
    "UDP_MAX_PENDING": Key(1000, _kind_positive_int, "uploads per UDP listener waiting for the database before more are refused as busy"),
    "SEQUENCE_FIELD": Key(None, _kind_optional_identifier, "column holding a per-node sequence number (UDP, serial): retries are not stored twice, gaps are counted"),
    "SEQUENCE_MEMORY_SECONDS": Key(600, _kind_transport_seconds, "how long a sequence number is remembered for duplicate suppression"),
    "SERIAL_MAX_LINE": Key(4096, _kind_positive_int, "longest serial line in bytes; longer lines are dropped"),
    "SERIAL_GATEWAY_PATTERN": Key(None, _kind_gateway_pattern, "regex matching a gateway's prefix of each serial line; its named groups become columns"),
    "SERIAL_WATCHDOG_SECONDS": Key(0, _kind_non_negative_number, "reopen a serial port that sent nothing for this long (0: off)"),
    "SERIAL_RECONNECT_MAX_SECONDS": Key(60, _kind_transport_seconds, "longest wait between attempts to reopen a lost serial device"),
    "SERIAL_REQUIRED": Key(False, _kind_bool, "every --serial device must exist at start-up (else start-up fails); by default a missing device is waited for"),
    "TRANSPORT_LOG_INTERVAL": Key(60, _kind_transport_seconds, "at most one reject log line per source and reason in this many seconds (UDP, serial)"),
    # MQTT
    "MQTT_BROKER": Key(None, _kind_mqtt_broker, "MQTT broker to subscribe to, mqtt://[user:password@]host[:port] or mqtts://… for TLS (None: no MQTT); --mqtt overrides it"),
    "MQTT_TOPICS": Key(["tele/+/SENSOR", "+/sensor/+/state", "co2logd/#"], _kind_topic_filters, "MQTT topic filters subscribed to (Tasmota, ESPHome, co2logd's own formats); --mqtt-topic replaces them"),
    "MQTT_CLIENT_ID": Key(None, _kind_client_id, "MQTT client id (default: co2logd- and a hash of the host name and database path, the same at every restart, so the broker keeps the session)"),
    "MQTT_QOS": Key(1, _kind_mqtt_qos, "QoS of the subscriptions: 1 acknowledges each message after its rows are committed; 0 takes what comes"),
    "MQTT_KEEPALIVE": Key(60, _kind_positive_int, "MQTT keep-alive in seconds"),
    "MQTT_CA_FILE": Key(None, _kind_optional_str, "CA certificates (PEM file) for mqtts:// (default: the system's)"),
    "MQTT_TRUSTED_TOPICS": Key([], _kind_topic_filters, "topic filters whose messages count as authenticated by the broker: with UPLOAD_REQUIRES_AUTH, unsigned messages are accepted only from these"),
    "MQTT_PROTOCOL": Key("5", _kind_mqtt_protocol, "MQTT version: '5' (user properties carry headers) or '3.1.1'"),
    "MQTT_MAX_INFLIGHT": Key(1000, _kind_receive_maximum, "unacknowledged messages the broker may send at once (MQTT 5 Receive Maximum); they wait for the database"),
    "MQTT_RECONNECT_MAX_SECONDS": Key(60, _kind_transport_seconds, "longest wait between attempts to reach the MQTT broker"),
    "MQTT_TASMOTA_TIMEZONE": Key(None, _kind_timezone, "IANA zone of Tasmota devices' Time, local time without offset (default: this machine's zone)"),
    # OpenSenseMap uploader (issue 4)
    "OSEM_BATCH_SIZE": Key(2500, _kind_osem_batch_size, "most measurements per OpenSenseMap request (≤ 2500)"),
    "OSEM_REQUEST_TIMEOUT": Key(30.0, _kind_positive_number, "seconds to connect / to wait for each OpenSenseMap reply"),
    "OSEM_REQUESTS_PER_MINUTE": Key(10.0, _kind_positive_number, "write requests (POST/PUT) per minute to the OpenSenseMap"),
    "OSEM_REQUEST_BURST": Key(4, _kind_positive_int, "write requests allowed at once after a quiet spell"),
    "OSEM_BACKOFF_BASE": Key(5.0, _kind_positive_number, "first retry delay in seconds after a failure"),
    "OSEM_BACKOFF_MAX": Key(900.0, _kind_positive_number, "longest retry delay in seconds"),
    "OSEM_AUTH_RETRY_SECONDS": Key(900.0, _kind_positive_number, "retry delay after the OpenSenseMap refused the credentials"),
    "OSEM_POLL_SECONDS": Key(5.0, _kind_positive_number, "how often an idle uploader looks at the outbox"),
    "OSEM_STATS_SECONDS": Key(300.0, _kind_positive_number, "how often outbox depth, age and dead letters are logged"),
    "OSEM_CACHE_DIR": Key(None, _kind_optional_str, "token/request cache directory (default $XDG_CACHE_HOME/co2logd)"),
    # throughput (issue 6)
    "WRITE_QUEUE_MAX_ROWS": Key(50_000, _kind_positive_int, "rows waiting for the database writer before uploads are refused as busy (HTTP 503)"),
    "WRITE_RETRY_AFTER_SECONDS": Key(1, _kind_positive_int, "seconds a sender refused as busy is told to wait (HTTP Retry-After)"),
    # dashboard (issue 5)
    "DASHBOARD_COLUMNS": Key(None, _kind_optional_str_list, "columns plotted on the dashboard (default: up to 4 numeric columns, CO2 first)"),
    "DASHBOARD_TIME_COL": Key(None, _kind_optional_identifier, "column whose converted time places a row on the dashboard and /plot (default: the first of TIME_COLS holding a time; else the upload time)"),
    "DASHBOARD_UNITS": Key({}, _kind_unit_map, "units shown on dashboard panels by column, like {'co2': 'ppm'} (default: from the column name, as the OpenSenseMap mapping reads it)"),
    "DASHBOARD_CACHE_SECONDS": Key(2.0, _kind_non_negative_number, "identical dashboard views within this many seconds share one render (0: render each)"),
    "VIEWS_PER_SECOND": Key(20, _kind_non_negative_number, "dashboard pages and /plot images served per second, all clients together; more wait their turn, so pollers cannot crowd out uploads (0: no pacing)"),
    "VIEWS_MAX_WAIT_SECONDS": Key(5.0, _kind_non_negative_number, "a view that would wait longer than this for its turn is refused at once (503 busy, Retry-After)"),
    "PLOT_MAX_SERIES": Key(6, _kind_positive_int, "sources drawn as lines per plot, busiest first; the page says how many are left out"),
    "DASHBOARD_SILENT_SECONDS": Key(3600, _kind_positive_number, "a source not heard from for this many seconds is marked silent"),
    "DASHBOARD_REFRESH_SECONDS": Key(60, _kind_non_negative_number, "the dashboard reloads itself this often (0: never)"),
    "PLOT_CO2_BANDS": Key([1000, 1400], _kind_number_list, "CO2 guidance thresholds (ppm) drawn as bands behind CO2 plots"),
    "PLOT_MAX_COLUMNS": Key(8, _kind_positive_int, "most distinct columns in one plot (/plot?cols=, the dashboard); more are refused (400)"),
    "PLOT_MAX_PIXELS": Key(2_000_000, _kind_positive_int, "most columns × width × panel height of one plot; larger plots are refused (400)"),
    "PLOT_CO2_COLUMN_REGEX": Key(re.compile(r"co2", re.IGNORECASE), _kind_regex, "columns that get the CO2 bands"),
    "HEALTH_OUTBOX_MAX_AGE": Key(3600, _kind_positive_number, "/health is 503 when the oldest OpenSenseMap outbox entry is older (seconds)"),
    "HEALTH_SILENT_SOURCES": Key(False, _kind_bool, "/health is 503 while a source heard in at least HEALTH_SILENT_MIN_UPLOADS uploads is silent (see DASHBOARD_SILENT_SECONDS)"),
    # sources bounded (issue 12)
    "HEALTH_SILENT_MIN_UPLOADS": Key(10, _kind_positive_int, "uploads a source must have been heard in before HEALTH_SILENT_SOURCES watches it"),
    "HEALTH_WATCHED_SOURCES": Key([], _kind_str_list, "boxes or transports (e.g. 'kitchen', 'udp:10.0.0.7') whose silence, or absence, makes /health 503 whatever HEALTH_SILENT_SOURCES says"),
    "DASHBOARD_MAX_SOURCES": Key(20, _kind_positive_int, "sources listed on the dashboard and in /health (busiest first; the rest are counted)"),
    "SOURCES_MAX_TRACKED": Key(1000, _kind_positive_int, "sources kept in memory (watched, then busiest, then most recent; the others are dropped)"),
    "SOURCES_FORGET_SECONDS": Key(7 * 86400, _kind_non_negative_number, "a source not heard from for this long is forgotten, unless listed in HEALTH_WATCHED_SOURCES (0: never)"),
    # health that sees the disk (issue 12)
    "HEALTH_HEARTBEAT_SECONDS": Key(10, _kind_positive_number, "seconds between heartbeat writes (a committed one-row update, synchronous as uploads, and a check that the database file is still the one opened); /health is 503 when the last one failed"),
    "HEALTH_MIN_FREE_MB": Key(8, _kind_non_negative_number, "/health is 503 when the database's file system has less free space (MB; 0: no check)"),
    # hardening (issue 7)
    "HTTP_MAX_CONNECTIONS": Key(256, _kind_positive_int, "HTTP connections open at once; more are answered 503 and closed"),
    "HTTP_REQUEST_TIMEOUT": Key(60, _kind_positive_number, "seconds a client has to send a whole HTTP request (headers and body) from its first byte; slower ones get 408"),
    "HTTP_IDLE_TIMEOUT": Key(60, _kind_positive_number, "seconds an idle keep-alive HTTP connection stays open, and a download whose client reads nothing"),
    "DOWNLOAD_CHUNK_ROWS": Key(500, _kind_positive_int, "rows read from the database and written to a download at a time (fewer for wide tables: at most 20,000 cells); a client that does not read holds about one chunk"),
    "SHUTDOWN_GRACE_SECONDS": Key(5, _kind_non_negative_number, "on SIGTERM, seconds HTTP requests in flight get to finish (with their receipts) before their connections are cut"),
    "REPLAY_PROTECTION": Key("off", _kind_replay_mode, "'off', 'optional' (check Content-Counter/Content-Timestamp where sent) or 'required' (every upload needs one under a matching checksum)"),
    "REPLAY_REQUIRED_SALTS": Key([], _kind_str_list, "salts whose uploads must carry a Content-Counter or Content-Timestamp, whatever REPLAY_PROTECTION says"),
    "REPLAY_WINDOW_SECONDS": Key(300, _kind_positive_number, "how far a Content-Timestamp may be from the server's clock"),
    "IDEMPOTENCY_RETENTION_SECONDS": Key(86400, _kind_non_negative_number, "how long an Idempotency-Key answers repeats with the original receipt (0: keys are ignored)"),
    # hold under attack (issue 12)
    "DASHBOARD_TOKEN": Key(None, _kind_optional_token, "with DOWNLOAD_REQUIRES_AUTH: a secret (at least 16 characters) that opens every data route: ?token= once in a browser (then a session cookie) or Authorization: Bearer"),
    "DASHBOARD_SESSION_SECONDS": Key(86400, _kind_positive_number, "how long the session cookie set by ?token=DASHBOARD_TOKEN stays valid"),
    "DOWNLOAD_CSV_NEUTRALISE_FORMULAS": Key(True, _kind_bool, "CSV downloads put a ' before text cells starting with = + - @ tab or CR, so spreadsheets do not run them as formulas"),
}


# keys whose values are never repeated in error messages
SECRET_KEYS = frozenset({"MQTT_BROKER", "OSEM_PASSWORD"})


def _closest(name: str) -> str:
    close = difflib.get_close_matches(name, list(KEYS), n=1, cutoff=0.5)
    return " (did you mean CO2LOGSERVER_{}?)".format(close[0]) if close else ""


def strip_prefix(name: str) -> Optional[str]:
    """``CO2LOGSERVER_DB`` → ``DB``; names without a known prefix → None."""
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return None


class Settings:
    """
    The validated configuration, one attribute per key (``settings.DB``).

    Build it with :meth:`from_values` or :meth:`from_config_file`; pass it to
    the objects that need it (nothing below the tap reads command-line options).
    """

    def __init__(self, values: Mapping[str, Any]):
        self.__dict__.update(values)

    @classmethod
    def from_values(
        cls, values: Optional[Mapping[str, Any]] = None, environ: Optional[Mapping[str, str]] = None
    ) -> "Settings":
        """
        Defaults overridden by ``values`` (keys with or without prefix).

        Raises :class:`SettingsError` for an unknown key or a value of the
        wrong kind.
        """
        environ = os.environ if environ is None else environ
        resolved: Dict[str, Any] = {}
        for name, key in KEYS.items():
            default = key.default(environ) if key.from_env else key.default
            resolved[name] = default
        for raw_name, value in (values or {}).items():
            name = strip_prefix(raw_name) or raw_name
            if name not in KEYS:
                raise SettingsError(
                    "Unknown setting {}{}".format(raw_name, _closest(name))
                )
            try:
                resolved[name] = KEYS[name].kind(value)
            except TypeError as e:
                shown = "(not shown: it may hold a password)" if name in SECRET_KEYS else repr(value)
                raise SettingsError(
                    "Setting CO2LOGSERVER_{} must be {}, not {}".format(name, e, shown)
                )
        if resolved["OSEM_TIME_COL"] is None:
            resolved["OSEM_TIME_COL"] = next(iter(resolved["TIME_COLS"]), "time")
        automatic = [resolved[k] for k in ("UPLOAD_TIME_COL", "MATCHED_CHECKSUMS_COL", "FAILED_CHECKSUMS_COL", "TRANSPORT_COL")]
        if len(set(automatic)) != len(automatic):
            raise SettingsError("The automatic columns must have different names: {}".format(", ".join(automatic)))
        return cls(resolved)

    @classmethod
    def from_config_file(
        cls,
        path: str,
        overrides: Optional[Mapping[str, Any]] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> "Settings":
        """Execute a co2logserver-style config file and validate what it sets."""
        return cls.from_values(
            dict(read_config_file(path), **(overrides or {})), environ=environ
        )

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some keys changed (validated again)."""
        values = {k: getattr(self, k) for k in KEYS}
        values.update(changes)
        return Settings.from_values(values)

    @property
    def automatic_columns(self) -> List[str]:
        """The columns co2logd fills itself, in table order."""
        return [
            self.UPLOAD_TIME_COL,
            self.MATCHED_CHECKSUMS_COL,
            self.FAILED_CHECKSUMS_COL,
            self.TRANSPORT_COL,
        ]


def read_config_file(path: str) -> Dict[str, Any]:
    """
    The ``CO2LOGSERVER_*``/``CO2LOGD_*`` names a Python config file assigns.

    Like Flask's ``from_pyfile`` (which co2logserver uses), other names (imports,
    lower-case helpers) are left out.  Raises :class:`SettingsError` when the
    file cannot be read or fails to execute.

    co2logserver's own config files run unmodified: ``co2logserver.utils`` is
    answered with :mod:`co2logd.legacy_utils` inside the file (and its hooks)
    only, and its helpers are predefined for files whose import was removed.
    """
    from co2logd import legacy_utils

    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        raise SettingsError("Cannot read config file {}: {}".format(path, e.strerror or e))
    namespace: Dict[str, Any] = {name: getattr(legacy_utils, name) for name in legacy_utils.HELPERS}
    namespace.update(
        __file__=os.path.abspath(path), __name__="co2logd_config", __builtins__=legacy_utils.config_builtins()
    )
    try:
        code = compile(source, path, "exec")
        exec(code, namespace)
    except Exception as e:
        raise SettingsError(
            "Config file {} failed: {}: {}".format(path, type(e).__name__, e)
        )
    return {k: v for k, v in namespace.items() if strip_prefix(k) is not None}


def describe_default(key: Key) -> str:
    """A key's default as documentation shows it."""
    if key.from_env:
        return key.default.__doc__
    default = key.default
    if isinstance(default, re.Pattern):
        return "r'{}'".format(default.pattern)
    if callable(default):
        return "(built-in function)"
    return repr(default)


def markdown_table() -> str:
    """The settings table README carries (``python -m co2logd.settings``)."""
    lines = ["| setting | default | meaning |", "|---|---|---|"]
    for name, key in KEYS.items():
        default = describe_default(key).replace("|", "\\|")
        if len(default) > 60:
            default = default[:57] + "…"
        lines.append("| `CO2LOGSERVER_{}` | `{}` | {} |".format(name, default, key.doc.replace("|", "\\|")))
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown_table())
