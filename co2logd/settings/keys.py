"""
Every setting: its default, its kind and one line of meaning, grouped by room.

A room is the part of co2logd that reads the settings (the store, the web
side, the transports...).  README's settings table is generated from
:data:`ROOMS` in this order (``python docs/update_readme.py``).  To add a
setting, add a :class:`Key` to its room's dict; a name may appear only once.
co2logserver 0.1.2's keys keep their names and defaults.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Dict, List, Mapping, Optional

from co2logd.settings import kinds
from co2logd.settings import legacy_hooks as hooks


class Key:
    """One setting: its default (or a function of the environment) and its kind."""

    def __init__(self, default: Any, kind: kinds.Kind, doc: str, from_env: bool = False):
        self.default = default
        self.kind = kind
        self.doc = doc
        self.from_env = from_env


class Room:
    """The settings one part of co2logd reads, under a title for README."""

    def __init__(self, name: str, title: str, keys: Dict[str, Key]):
        self.name = name
        self.title = title
        self.keys = keys


def from_environment(name: str) -> Callable[[Mapping[str, str]], Optional[str]]:
    """A default read from the environment variable ``name`` (None when unset)."""

    def default(environ: Mapping[str, str]) -> Optional[str]:
        return environ.get(name)

    default.__doc__ = "taken from ${}".format(name)
    return default


SERVER: Dict[str, Key] = {
    "NAME": Key("co2logserver", kinds.text, "name of this server"),
    "LOGLEVEL": Key(logging.WARNING, kinds.loglevel, "log level"),
}

STORE: Dict[str, Key] = {
    "DB": Key("co2.sqlite", kinds.database, "SQLite database file, or postgresql://user:password@host:port/dbname (docs/postgresql.md)"),
    "DATA_TABLE_NAME": Key("data", kinds.identifier, "table holding the data"),
    "UPLOAD_TIME_COL": Key("time_upload_utc", kinds.identifier, "column of the upload time (UTC)"),
    "MATCHED_CHECKSUMS_COL": Key("matched_checksums", kinds.identifier, "column of matched algorithms"),
    "FAILED_CHECKSUMS_COL": Key("failed_checksums", kinds.identifier, "column of failed algorithms"),
    "TRANSPORT_COL": Key("transport", kinds.identifier, "column recording the transport of each row"),
    "MAX_COLUMNS": Key(1000, kinds.positive_int, "most columns the data table may have"),
    "DB_SYNCHRONOUS": Key("FULL", kinds.one_of("OFF", "NORMAL", "FULL", "EXTRA"), "SQLite PRAGMA synchronous"),
    "WRITE_QUEUE_MAX_ROWS": Key(50_000, kinds.positive_int, "rows waiting for the database writer before uploads are refused as busy (HTTP 503)"),
    "WRITE_RETRY_AFTER_SECONDS": Key(1, kinds.positive_int, "seconds a sender refused as busy is told to wait (HTTP Retry-After)"),
}

INGEST: Dict[str, Key] = {
    "TIME_COLS": Key(["time"], kinds.str_list, "columns converted by TIME_CONVERTER"),
    "TIME_CONVERTER": Key(hooks.default_time_converter, kinds.function, "(val, col) → datetime"),
    "ACCEPT_NEW_COLUMN": Key(hooks.accept_every_column, kinds.function, "col → create it?"),
    "ALLOW_EMPTY_ROWS": Key(False, kinds.flag, "store rows holding only automatic columns"),
    "MAX_BODY_SIZE": Key(10 * 1024 * 1024, kinds.positive_int, "largest upload body in bytes"),
    "MAX_ROWS_PER_UPLOAD": Key(100_000, kinds.positive_int, "most rows in one upload"),
    "MAX_NEW_COLUMNS_PER_UPLOAD": Key(100, kinds.positive_int, "most new columns one upload may add"),
    "MAX_COLUMN_NAME_LENGTH": Key(64, kinds.positive_int, "longest column name"),
    "SEQUENCE_FIELD": Key(None, kinds.optional_identifier, "column holding a per-node sequence number (UDP, serial): retries are not stored twice, gaps are counted"),
    "SEQUENCE_MEMORY_SECONDS": Key(600, kinds.positive_number, "how long a sequence number is remembered for duplicate suppression"),
}

AUTH: Dict[str, Key] = {
    "CHECKSUM_SALTS": Key([], kinds.str_list, "pre-shared salts for the salted checksums"),
    "UPLOAD_REQUIRES_AUTH": Key(False, kinds.flag, "uploads need a matching salted checksum or a valid upload token"),
    "UPLOAD_TOKENS": Key({}, kinds.upload_tokens, "upload token → label, for clients that cannot sign (Authorization: Token/Bearer, Basic password, p= on /write); rows record the label (docs/security.md)"),
    "TOKEN_LABEL_COL": Key("token_label", kinds.identifier, "column recording the label of the upload token a row came with"),
    "AUTH_CHECKER": Key(hooks.default_auth_checker, kinds.function, "matches → granted?"),
    "SALTED_CHECKSUM_HEADER_REGEX": Key(
        re.compile(r"Content-(?P<algorithm>\w+)-Salted", re.IGNORECASE),
        kinds.regex,
        "header names carrying salted checksums",
    ),
    "MAX_CHECKSUM_HEADERS": Key(8, kinds.positive_int, "most Content-*-Salted headers on one upload; more are refused (400) before any hashing"),
    "REPLAY_PROTECTION": Key("off", kinds.one_of("off", "optional", "required"), "'off', 'optional' (check Content-Counter/Content-Timestamp where sent) or 'required' (every upload needs one under a matching checksum)"),
    "REPLAY_REQUIRED_SALTS": Key([], kinds.str_list, "salts whose uploads must carry a Content-Counter or Content-Timestamp, whatever REPLAY_PROTECTION says"),
    "REPLAY_WINDOW_SECONDS": Key(300, kinds.positive_number, "how far a Content-Timestamp may be from the server's clock"),
    "IDEMPOTENCY_RETENTION_SECONDS": Key(86400, kinds.non_negative_number, "how long an Idempotency-Key answers repeats with the original receipt (0: keys are ignored)"),
}

TRANSPORTS: Dict[str, Key] = {
    "UDP_MAX_DATAGRAM": Key(8192, kinds.whole_number(1, 65507, "a whole number of bytes from 1 to 65507"), "largest UDP datagram (header block + body) in bytes; larger ones are refused"),
    "UDP_ACK": Key(False, kinds.flag, "answer every UDP datagram with a JSON receipt or error"),
    "UDP_RECEIVE_BUFFER": Key(4 * 1024 * 1024, kinds.positive_int, "UDP socket receive buffer in bytes (bursts wait there; the kernel may cap it at net.core.rmem_max)"),
    "UDP_MAX_PENDING": Key(1000, kinds.positive_int, "uploads per UDP listener waiting for the database before more are refused as busy"),
    "SERIAL_MAX_LINE": Key(4096, kinds.positive_int, "longest serial line in bytes; longer lines are dropped"),
    "SERIAL_GATEWAY_PATTERN": Key(None, kinds.gateway_pattern, "regex matching a gateway's prefix of each serial line; its named groups become columns"),
    "SERIAL_WATCHDOG_SECONDS": Key(0, kinds.non_negative_number, "reopen a serial port that sent nothing for this long (0: off)"),
    "SERIAL_RECONNECT_MAX_SECONDS": Key(60, kinds.positive_number, "longest wait between attempts to reopen a lost serial device"),
    "SERIAL_REQUIRED": Key(False, kinds.flag, "every --serial device must exist at start-up (else start-up fails); by default a missing device is waited for"),
    "TRANSPORT_LOG_INTERVAL": Key(60, kinds.positive_number, "at most one reject log line per source and reason in this many seconds (UDP, serial)"),
}

MQTT: Dict[str, Key] = {
    "MQTT_BROKER": Key(None, kinds.mqtt_broker, "MQTT broker to subscribe to, mqtt://[user:password@]host[:port] or mqtts://… for TLS (None: no MQTT); --mqtt overrides it"),
    "MQTT_TOPICS": Key(["tele/+/SENSOR", "+/sensor/+/state", "co2logd/#", "telegraf/#"], kinds.topic_filters, "MQTT topic filters subscribed to (Tasmota, ESPHome, co2logd's own formats, Telegraf's line protocol); --mqtt-topic replaces them"),
    "MQTT_LINE_PROTOCOL_TOPICS": Key(["telegraf/#"], kinds.topic_filters, "topic filters whose messages are InfluxDB line protocol (Telegraf's MQTT output)"),
    "MQTT_CLIENT_ID": Key(None, kinds.client_id, "MQTT client id (default: co2logd- and a hash of the host name and database path, the same at every restart, so the broker keeps the session)"),
    "MQTT_QOS": Key(1, kinds.mqtt_qos, "QoS of the subscriptions: 1 acknowledges each message after its rows are committed; 0 takes what comes"),
    "MQTT_KEEPALIVE": Key(60, kinds.whole_number(5, 65535, "a whole number of seconds from 5 to 65535"), "MQTT keep-alive in seconds"),
    "MQTT_CA_FILE": Key(None, kinds.optional_text, "CA certificates (PEM file) for mqtts:// (default: the system's)"),
    "MQTT_TRUSTED_TOPICS": Key([], kinds.topic_filters, "topic filters whose publishers the broker authenticates: with UPLOAD_REQUIRES_AUTH, unsigned messages on them are accepted (others need a salted checksum)"),
    "MQTT_PROTOCOL": Key("5", kinds.one_of("5", "3.1.1"), "MQTT version: '5' (user properties carry headers) or '3.1.1'"),
    "MQTT_MAX_INFLIGHT": Key(1000, kinds.whole_number(1, 65535, "a whole number from 1 to 65535"), "unacknowledged messages the broker may send at once (MQTT 5 Receive Maximum); they wait for the database"),
    "MQTT_RECONNECT_MAX_SECONDS": Key(60, kinds.positive_number, "longest wait between attempts to reach the MQTT broker"),
    "MQTT_TASMOTA_TIMEZONE": Key(None, kinds.timezone, "IANA zone of Tasmota devices' Time, local time without offset (default: this machine's zone)"),
}

WEB: Dict[str, Key] = {
    "UPLOAD_HELP": Key(True, kinds.flag, "serve /uploadhelp"),
    "DOWNLOAD_REQUIRES_AUTH": Key(False, kinds.flag, "the data (dashboard, /download, /plot, /health details, /metrics) needs a salted checksum of the path, DASHBOARD_TOKEN or its session"),
    "DASHBOARD_TOKEN": Key(None, kinds.token, "with DOWNLOAD_REQUIRES_AUTH: a secret (at least 16 characters) that opens every data route: ?token= once in a browser (then a session cookie) or Authorization: Bearer"),
    "DASHBOARD_SESSION_SECONDS": Key(86400, kinds.positive_number, "how long the session cookie set by ?token=DASHBOARD_TOKEN stays valid"),
    "MAX_LIMIT_OF_ROWS": Key(1000, kinds.positive_int, "default and ceiling of /download?number="),
    "DOWNLOAD_CHUNK_ROWS": Key(500, kinds.positive_int, "rows read from the database and written to a download at a time (fewer for wide tables: at most 20,000 cells); a client that does not read holds about one chunk"),
    "DOWNLOAD_CSV_NEUTRALISE_FORMULAS": Key(True, kinds.flag, "CSV downloads put a ' before text cells starting with = + - @ tab or CR, so spreadsheets do not run them as formulas"),
    "HTTP_MAX_CONNECTIONS": Key(256, kinds.positive_int, "HTTP connections open at once; more are answered 503 and closed"),
    "HTTP_REQUEST_TIMEOUT": Key(60, kinds.positive_number, "seconds a client has to send a whole HTTP request (headers and body) from its first byte; slower ones get 408"),
    "HTTP_IDLE_TIMEOUT": Key(60, kinds.positive_number, "seconds an idle keep-alive HTTP connection stays open, and a download whose client reads nothing"),
    "SHUTDOWN_GRACE_SECONDS": Key(5, kinds.non_negative_number, "on SIGTERM, seconds HTTP requests in flight get to finish (with their receipts) before their connections are cut"),
}

DASHBOARD: Dict[str, Key] = {
    "DASHBOARD_COLUMNS": Key(None, kinds.optional_str_list, "columns plotted on the dashboard (default: up to 4 numeric columns, CO2 first)"),
    "DASHBOARD_TIME_COL": Key(None, kinds.optional_identifier, "column whose converted time places a row on the dashboard and /plot (default: the first of TIME_COLS holding a time; else the upload time)"),
    "DASHBOARD_UNITS": Key({}, kinds.unit_map, "units shown on dashboard panels by column, like {'co2': 'ppm'} (default: from the column name, as the OpenSenseMap mapping reads it)"),
    "DASHBOARD_CACHE_SECONDS": Key(2.0, kinds.non_negative_number, "identical dashboard views within this many seconds share one render (0: render each)"),
    "VIEWS_PER_SECOND": Key(20, kinds.non_negative_number, "dashboard pages and /plot images served per second, all clients together; more wait their turn, so pollers cannot crowd out uploads (0: no pacing)"),
    "VIEWS_MAX_WAIT_SECONDS": Key(5.0, kinds.non_negative_number, "a view that would wait longer than this for its turn is refused at once (503 busy, Retry-After)"),
    "PLOT_MAX_SERIES": Key(6, kinds.positive_int, "sources drawn as lines per plot, busiest first; the page says how many are left out"),
    "DASHBOARD_REFRESH_SECONDS": Key(60, kinds.non_negative_number, "the dashboard reloads itself this often (0: never)"),
    "PLOT_CO2_BANDS": Key([1000, 1400], kinds.number_list, "CO2 guidance thresholds (ppm) drawn as bands behind CO2 plots"),
    "PLOT_MAX_COLUMNS": Key(8, kinds.positive_int, "most distinct columns in one plot (/plot?cols=, the dashboard); more are refused (400)"),
    "PLOT_MAX_PIXELS": Key(2_000_000, kinds.positive_int, "most columns × width × panel height of one plot; larger plots are refused (400)"),
    "PLOT_CO2_COLUMN_REGEX": Key(re.compile(r"co2", re.IGNORECASE), kinds.regex, "columns that get the CO2 bands"),
}

STATUS: Dict[str, Key] = {
    "DASHBOARD_SILENT_SECONDS": Key(3600, kinds.positive_number, "a source not heard from for this many seconds is marked silent"),
    "HEALTH_OUTBOX_MAX_AGE": Key(3600, kinds.positive_number, "/health is 503 when the oldest OpenSenseMap outbox entry is older (seconds)"),
    "HEALTH_SILENT_SOURCES": Key(False, kinds.flag, "/health is 503 while a source heard in at least HEALTH_SILENT_MIN_UPLOADS uploads is silent (see DASHBOARD_SILENT_SECONDS)"),
    "HEALTH_SILENT_MIN_UPLOADS": Key(10, kinds.positive_int, "uploads a source must have been heard in before HEALTH_SILENT_SOURCES watches it"),
    "HEALTH_WATCHED_SOURCES": Key([], kinds.str_list, "boxes or transports (e.g. 'kitchen', 'udp:10.0.0.7') whose silence, or absence, makes /health 503 whatever HEALTH_SILENT_SOURCES says"),
    "DASHBOARD_MAX_SOURCES": Key(20, kinds.positive_int, "sources listed on the dashboard and in /health (busiest first; the rest are counted)"),
    "SOURCES_MAX_TRACKED": Key(1000, kinds.positive_int, "sources kept in memory (watched, then busiest, then most recent; the others are dropped)"),
    "SOURCES_FORGET_SECONDS": Key(7 * 86400, kinds.non_negative_number, "a source not heard from for this long is forgotten, unless listed in HEALTH_WATCHED_SOURCES (0: never)"),
    "HEALTH_HEARTBEAT_SECONDS": Key(10, kinds.positive_number, "seconds between heartbeat writes (a committed one-row update, synchronous as uploads, and a check that the database file is still the one opened); /health is 503 when the last one failed"),
    "HEALTH_MIN_FREE_MB": Key(8, kinds.non_negative_number, "/health is 503 when the database's file system has less free space (MB; 0: no check)"),
}

OSEM: Dict[str, Key] = {
    "SENSEMAPI_LOGLEVEL": Key(logging.WARNING, kinds.loglevel, "log level of sensemapi"),
    "OSEM_UPLOAD": Key(False, kinds.flag, "forward data to the OpenSenseMap"),
    "OSEM_API": Key(from_environment("SENSEMAP_API"), kinds.optional_text, "OpenSenseMap API URL", True),
    "OSEM_USERNAME": Key(from_environment("SENSEMAP_USERNAME"), kinds.optional_text, "OpenSenseMap user", True),
    "OSEM_EMAIL": Key(from_environment("SENSEMAP_EMAIL"), kinds.optional_text, "OpenSenseMap e-mail", True),
    "OSEM_PASSWORD": Key(from_environment("SENSEMAP_PASSWORD"), kinds.optional_text, "OpenSenseMap password", True),
    "OSEM_AUTH_CACHE": Key(True, kinds.flag, "cache OpenSenseMap tokens"),
    "OSEM_REQUEST_CACHE": Key(True, kinds.flag, "cache OpenSenseMap GET requests"),
    "OSEM_CACHE_PASSWORD": Key(False, kinds.flag, "cache the OpenSenseMap password"),
    "OSEM_COL_REDIRECT": Key(hooks.redirect_everything, kinds.function, "col → forward it?"),
    "OSEM_BOX_REDIRECT": Key(hooks.redirect_everything, kinds.function, "box → forward it?"),
    "OSEM_VALUE_FILTER": Key(hooks.round_to_three_places, kinds.function, "(box, col, val) → value"),
    "OSEM_BOX_COL": Key("box", kinds.text, "column naming the senseBox"),
    "OSEM_BOX_COL_DEFAULT": Key("generic", kinds.text, "box when the column is missing"),
    "OSEM_LAT_COL": Key("lat", kinds.text, "latitude column"),
    "OSEM_LON_COL": Key("lon", kinds.text, "longitude column"),
    "OSEM_HEIGHT_COL": Key("height", kinds.text, "height column"),
    "DEFAULT_LAT": Key(hooks.no_default_position, kinds.function, "box → latitude of a new box"),
    "DEFAULT_LON": Key(hooks.no_default_position, kinds.function, "box → longitude of a new box"),
    "OSEM_TIME_COL": Key(None, kinds.optional_text, "measurement time column (default: first of TIME_COLS)"),
    "OSEM_MIN_SECONDS_BETWEEN_UPLOADS": Key(0, kinds.non_negative_number, "throttle per sensor"),
    "OSEM_EXPOSURE_DETERMINER": Key(hooks.exposure_from_box_name, kinds.function, "box → exposure"),
    "OSEM_DEFAULT_WEBLINK": Key(
        "https://gitlab.com/tue-umphy/co2mofetten/python3-co2logserver",
        kinds.text,
        "weblink of every senseBox",
    ),
    "OSEM_DEFAULT_DESCRIPTION": Key(
        "This senseBox was automatically created by an instance of co2logserver, "
        "a simple Python HTTP data logging server, named '{servername}'.",
        kinds.text,
        "description of new senseBoxes ({servername} is replaced)",
    ),
    "OSEM_COL_REGEX": Key(hooks.DEFAULT_COL_REGEX, kinds.osem_regex, "sensor columns: type_quantity_unit"),
    "OSEM_BOX_NAME_GENERATOR": Key(
        hooks.box_name_from_server_and_box, kinds.function, "(servername, box) → box name"
    ),
    "OSEM_SENSOR_TITLE_GENERATOR": Key(hooks.sensor_title_from_quantity, kinds.function, "groups → sensor title"),
    "OSEM_UNIT_COVERTER": Key(hooks.unit_converter, kinds.function, "unit → OpenSenseMap unit"),
    "OSEM_ICONS": Key(list(hooks.OSEM_ICONS), kinds.str_list, "available icons"),
    "OSEM_ICON_DETERMINER": Key(hooks.icon_from_quantity, kinds.function, "groups → icon"),
    "OSEM_MAX_POSITION_CHANGE": Key(float("inf"), kinds.non_negative_number, "max lat/lon change in degrees"),
    "OSEM_BATCH_SIZE": Key(2500, kinds.whole_number(1, 2500, "a whole number from 1 to 2500"), "most measurements per OpenSenseMap request (≤ 2500)"),
    "OSEM_REQUEST_TIMEOUT": Key(30.0, kinds.positive_number, "seconds to connect / to wait for each OpenSenseMap reply"),
    "OSEM_REQUESTS_PER_MINUTE": Key(10.0, kinds.positive_number, "write requests (POST/PUT) per minute to the OpenSenseMap"),
    "OSEM_REQUEST_BURST": Key(4, kinds.positive_int, "write requests allowed at once after a quiet spell"),
    "OSEM_BACKOFF_BASE": Key(5.0, kinds.positive_number, "first retry delay in seconds after a failure"),
    "OSEM_BACKOFF_MAX": Key(900.0, kinds.positive_number, "longest retry delay in seconds"),
    "OSEM_AUTH_RETRY_SECONDS": Key(900.0, kinds.positive_number, "retry delay after the OpenSenseMap refused the credentials"),
    "OSEM_POLL_SECONDS": Key(5.0, kinds.positive_number, "how often an idle uploader looks at the outbox"),
    "OSEM_STATS_SECONDS": Key(300.0, kinds.positive_number, "how often outbox depth, age and dead letters are logged"),
    "OSEM_CACHE_DIR": Key(None, kinds.optional_text, "token/request cache directory (default $XDG_CACHE_HOME/co2logd)"),
}

ROOMS: List[Room] = [
    Room("server", "The server", SERVER),
    Room("store", "Database and table", STORE),
    Room("ingest", "Uploads: parsing, columns and limits (every transport)", INGEST),
    Room("auth", "Uploads: salted checksums, replay protection, idempotency", AUTH),
    Room("transports", "UDP and serial", TRANSPORTS),
    Room("mqtt", "MQTT (--mqtt, --mqtt-topic)", MQTT),
    Room("web", "HTTP: routes, access and limits", WEB),
    Room("dashboard", "Dashboard and plots", DASHBOARD),
    Room("status", "/health and the sources heard from", STATUS),
    Room("osem", "Forwarding to the OpenSenseMap", OSEM),
]


def _all_keys(rooms: List[Room]) -> Dict[str, Key]:
    keys: Dict[str, Key] = {}
    for room in rooms:
        for name, key in room.keys.items():
            if name in keys:
                raise RuntimeError("setting {} is defined twice".format(name))
            keys[name] = key
    return keys


# name → Key, room by room
KEYS: Dict[str, Key] = _all_keys(ROOMS)
