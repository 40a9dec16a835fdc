"""
MQTT messages → uploads: pure functions, no network, no reactor.

Three conventions are told apart by the topic:

* **Tasmota** ``tele/<device>/SENSOR``: a JSON object with one nested
  object per sensor.  Nested keys are joined with ``_`` and lower-cased
  (``SCD30.CarbonDioxide`` → ``scd30_carbondioxide``, ``Time`` → ``time``),
  characters a column name cannot hold become ``_`` (``PM2.5`` → ``pm2_5``),
  list items get their position (``Voltage[0]`` → ``energy_voltage_1``).
  ``TempUnit: "F"`` means every temperature is converted to °C.  ``Time`` is
  the device's local time without an offset: it is read in
  ``MQTT_TASMOTA_TIMEZONE`` (default: the server's own zone) and stored as UNIX
  seconds; a time with an offset or an epoch number is taken as it is; a time
  before 2001 (no NTP yet) or one that cannot be read leaves the column out.
  The box is the device.  Other Tasmota topics (``LWT``, ``STATE``, ``INFO``,
  ``stat/…``, ``cmnd/…``) are not data.
* **ESPHome** ``<node>/sensor/<name>/state`` (also ``binary_sensor`` and
  ``text_sensor``): the bare value as text; the column is ``<name>``, the box
  ``<node>``.  ``nan`` (no reading) is not data; ``<node>/status`` and other
  components' topics are not data either.
* **InfluxDB line protocol** on topics matching ``MQTT_LINE_PROTOCOL_TOPICS``
  (default ``telegraf/#``, where Telegraf's MQTT output publishes): one row
  per point as on ``POST /write`` (``measurement``, tags, fields, ``time``
  as UNIX seconds, the time of arrival for points without one); the box is
  the point's ``box`` tag, else its ``host`` tag.
* **co2logd's own formats** on any other topic: JSON/msgpack/CSV/form tables
  and JSON objects, exactly as over HTTP.  Headers (``Content-MD5-Salted``,
  ``Content-Counter``, ``Idempotency-Key``…) come as MQTT 5 user properties,
  the format from the MQTT 5 content type; an MQTT 3.1.1 publisher puts an
  HTTP-style header block in front of the body, as over UDP.  The checksums
  cover the body bytes.  The box comes from the payload.

Home Assistant discovery (``homeassistant/…``) is not data.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import unquote, urlsplit

from co2logd.errors import IngestError, bad_request
from co2logd.transports.framing import header_value, split_message

HeaderList = List[Tuple[str, str]]

OWN = "co2logd"
TASMOTA = "tasmota"
ESPHOME = "esphome"
LINE_PROTOCOL = "line-protocol"

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
ESPHOME_COMPONENTS = ("sensor", "binary_sensor", "text_sensor")
# ESPHome components whose states are not measurements
ESPHOME_OTHER_COMPONENTS = frozenset(
    "switch light fan cover climate number select button lock valve text event datetime update alarm_control_panel".split()
)
TASMOTA_PREFIXES = ("tele", "stat", "cmnd")
TEMPERATURE_KEYS = re.compile(r"(temperature\d*|dewpoint|heatindex)\Z", re.IGNORECASE)
NOT_A_NAME = re.compile(r"[^A-Za-z0-9_]")
# before this (2001-01-01 UTC) a Tasmota clock has not been set by NTP yet
EARLIEST_DEVICE_TIME = 978307200
MAX_FLAT_COLUMNS = 512


class NotData(Exception):
    """A message that holds no measurement (status, discovery, no reading): acknowledged, stored nowhere."""

    def __init__(self, why: str):
        super().__init__(why)
        self.why = why


class BrokerURL:
    """Where the broker is: ``mqtt://user:password@host:1883`` or ``mqtts://…`` (TLS)."""

    __slots__ = ("scheme", "host", "port", "username", "password")

    def __init__(self, scheme: str, host: str, port: int, username: Optional[str], password: Optional[str]):
        self.scheme = scheme
        self.host = host
        self.port = port
        self.username = username
        self.password = password

    @property
    def tls(self) -> bool:
        """True for ``mqtts://``."""
        return self.scheme == "mqtts"

    def display(self) -> str:
        """The URL for logs and /health: the user is shown, the password never."""
        user = "{}@".format(self.username) if self.username else ""
        host = "[{}]".format(self.host) if ":" in self.host else self.host
        return "{}://{}{}:{}".format(self.scheme, user, host, self.port)

    def __repr__(self) -> str:
        return "BrokerURL({!r})".format(self.display())


def parse_broker_url(text: str) -> BrokerURL:
    """
    ``mqtt://[user[:password]@]host[:port]`` (default port 1883) or
    ``mqtts://…`` (TLS, default port 8883); user and password may be
    percent-encoded.  Raises ValueError with one sentence (never showing the password).
    """
    if not isinstance(text, str):
        raise ValueError("the broker must be a URL like mqtt://host:1883")
    try:
        parts = urlsplit(text.strip())
        port = parts.port
    except ValueError:
        raise ValueError("the broker URL is not valid: use mqtt://[user:password@]host[:port] or mqtts://…")
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("the broker URL must start with mqtt:// or mqtts://, not {!r}".format(parts.scheme + ":" if parts.scheme else text[:20]))
    if not parts.hostname:
        raise ValueError("the broker URL names no host: use mqtt://[user:password@]host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("the broker URL must not have a path or query: give topics with --mqtt-topic")
    username = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return BrokerURL(scheme, parts.hostname, port or DEFAULT_PORTS[scheme], username or None, password)


def check_topic_filter(text: str) -> str:
    """A subscription filter as MQTT allows it (``+`` one level, ``#`` the rest, last); ValueError otherwise."""
    if not isinstance(text, str) or not text or len(text.encode("utf-8")) > 65535 or "\0" in text:
        raise ValueError("a topic filter must be 1 to 65535 bytes of text, like tele/+/SENSOR")
    levels = text.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise ValueError("in the topic filter {!r}, '#' must be a whole level and the last one".format(text))
        if "+" in level and level != "+":
            raise ValueError("in the topic filter {!r}, '+' must be a whole level".format(text))
    return text


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Whether ``topic`` matches ``topic_filter`` (MQTT rules: ``$`` topics only match filters naming them)."""
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    if topic.startswith("$") and not topic_filter.startswith("$"):
        return False
    for i, f in enumerate(f_levels):
        if f == "#":
            return True
        if i >= len(t_levels):
            return False
        if f != "+" and f != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)


class Message:
    """One MQTT message as received, copied off the network thread (plain data)."""

    __slots__ = ("topic", "payload", "qos", "retain", "dup", "mid", "user_properties", "content_type")

    def __init__(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        dup: bool = False,
        mid: int = 0,
        user_properties: Sequence[Tuple[str, str]] = (),
        content_type: Optional[str] = None,
    ):
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.mid = mid
        self.user_properties = list(user_properties)
        self.content_type = content_type

    def __repr__(self) -> str:
        return "Message({!r}, {!r}, mid={})".format(self.topic, self.payload[:40], self.mid)


class Mapped:
    """
    What goes to the ingest service for one message: ``body`` (as the sender
    signed it for co2logd's formats, JSON made here for Tasmota/ESPHome),
    ``content_type`` (None: detect), ``headers``, and ``columns`` set on
    every row (the box from the topic).
    """

    __slots__ = ("convention", "body", "content_type", "headers", "columns", "signed")

    def __init__(
        self,
        convention: str,
        body: bytes,
        content_type: Optional[str],
        headers: HeaderList,
        columns: Dict[str, Any],
        signed: bytes,
    ):
        self.convention = convention
        self.body = body
        self.content_type = content_type
        self.headers = headers
        self.columns = columns
        #: the bytes the publisher sent (what a salted checksum would cover)
        self.signed = signed

    def __repr__(self) -> str:
        return "Mapped({!r}, {!r}, columns={!r})".format(self.convention, self.body[:60], self.columns)


def convention_of(topic: str) -> str:
    """Which convention a topic follows: :data:`TASMOTA`, :data:`ESPHOME` or :data:`OWN`; NotData for status topics."""
    levels = topic.split("/")
    if levels[0] == "homeassistant":
        raise NotData("Home Assistant discovery")
    if levels[-1] == "SENSOR" and len(levels) >= 2:
        return TASMOTA
    if levels[0] in TASMOTA_PREFIXES and len(levels) == 3 and levels[2].isupper():
        raise NotData("Tasmota {} message".format(levels[2]))
    if len(levels) >= 4 and levels[-1] == "state" and levels[-3] in ESPHOME_COMPONENTS:
        return ESPHOME
    if len(levels) >= 2 and levels[-1] in ("status", "debug"):
        raise NotData("availability or debug message")
    if len(levels) >= 4 and levels[-1] in ("state", "command") and levels[-3] in ESPHOME_OTHER_COMPONENTS:
        raise NotData("ESPHome {} {}".format(levels[-3], levels[-1]))
    return OWN


def map_message(
    message: Message,
    box_column: str,
    local_time: Callable[[datetime.datetime], float],
    line_topics: Sequence[str] = (),
    now: Optional[float] = None,
    max_points: int = 100_000,
) -> Mapped:
    """
    The upload for one message; raises :class:`NotData` for messages that
    hold no measurement and a 400 :class:`IngestError` for payloads that
    cannot be read.  ``local_time`` turns a device's naive local time into
    UNIX seconds (see :func:`local_time_reader`); messages on
    ``line_topics`` are line protocol, points without a time get ``now``.
    """
    if message.retain:
        # a retained message is an old reading the broker replays to new subscribers: stored when it was live
        raise NotData("retained message")
    if line_topics and any(topic_matches(f, message.topic) for f in line_topics):
        return line_protocol(message, box_column, now, max_points)
    convention = convention_of(message.topic)
    if convention == TASMOTA:
        return tasmota(message, box_column, local_time)
    if convention == ESPHOME:
        return esphome(message, box_column)
    return own_format(message)


def own_format(message: Message) -> Mapped:
    """co2logd's formats: user properties as headers, or an HTTP-style header block before the body."""
    headers: HeaderList = list(message.user_properties)
    body = message.payload
    if not headers:
        frame = split_message(body)  # an MQTT 3.1.1 publisher's header block (raises a 400 when malformed)
        headers, body = frame.headers, frame.body
    content_type = message.content_type or header_value(headers, "content-type")
    return Mapped(OWN, body, content_type, headers, {}, body)


def esphome(message: Message, box_column: str) -> Mapped:
    """``<node>/sensor/<name>/state`` with a bare value: one row, column ``<name>``, box ``<node>``."""
    levels = message.topic.split("/")
    node, component, name = "/".join(levels[:-3]), levels[-3], levels[-2]
    column = NOT_A_NAME.sub("_", name)
    try:
        text = message.payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise bad_request("The ESPHome value on {} is not UTF-8 text".format(message.topic[:200]))
    value: Any
    if component == "sensor":
        value = number(text)
        if value is None:
            if text.lower() in ("nan", "-nan", "unknown", "unavailable", ""):
                raise NotData("no reading")
            raise bad_request("The ESPHome sensor value {!r} on {} is not a number".format(text[:40], message.topic[:200]))
    elif component == "binary_sensor":
        states = {"on": 1, "off": 0}
        if text.lower() not in states:
            raise bad_request("The ESPHome binary sensor state {!r} is not ON or OFF".format(text[:40]))
        value = states[text.lower()]
    else:
        value = text
    body = json.dumps({column: value, box_column: node}, allow_nan=False).encode("utf-8")
    return Mapped(ESPHOME, body, "application/json", list(message.user_properties), {}, message.payload)


def line_protocol(message: Message, box_column: str, now: Optional[float], max_points: int) -> Mapped:
    """Line protocol (Telegraf's MQTT output): one row per point; the box is the ``box`` tag, else ``host``."""
    import time

    from co2logd.dialects.influx import table_of
    from co2logd.dialects.lineprotocol import LineProtocolError, TooManyPoints, parse

    try:
        points = parse(message.payload, "ns", max_points=max_points)
    except TooManyPoints as e:
        raise IngestError(413, "too-many-rows", "The message holds more than {} points (MAX_ROWS_PER_UPLOAD)".format(e.limit))
    except (LineProtocolError, UnicodeDecodeError) as e:
        raise bad_request(str(e)[:300])
    if not points:
        raise NotData("no points")
    table, rows = table_of(points, time.time() if now is None else now)
    table["time"] = [when.timestamp() for when in table["time"]]
    if box_column not in table and "host" in table:
        table[box_column] = list(table["host"])
    body = json.dumps(table, allow_nan=False).encode("utf-8")
    return Mapped(LINE_PROTOCOL, body, "application/json", list(message.user_properties), {}, message.payload)


def number(text: str) -> Optional[Any]:
    """``'812'`` → 812, ``'23.5'`` → 23.5; None for anything else (NaN and infinities too)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def tasmota(message: Message, box_column: str, local_time: Callable[[datetime.datetime], float]) -> Mapped:
    """``tele/<device>/SENSOR`` JSON, flattened; the box is the device."""
    levels = message.topic.split("/")
    device = levels[-2]
    if device in TASMOTA_PREFIXES and len(levels) >= 3:  # FullTopic %topic%/%prefix%/
        device = levels[-3]
    try:
        data = json.loads(message.payload.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad_request("The Tasmota message on {} is not JSON: {}".format(message.topic[:200], str(e)[:120]))
    if not isinstance(data, dict):
        raise bad_request("The Tasmota message on {} is not a JSON object".format(message.topic[:200]))
    row = flatten(data)
    fahrenheit = str(data.get("TempUnit", "")).upper() == "F"
    if fahrenheit:
        for key, value in row.items():
            if TEMPERATURE_KEYS.search(key) and isinstance(value, (int, float)) and not isinstance(value, bool):
                row[key] = round((value - 32) * 5 / 9, 2)
        row["tempunit"] = "C"
    if "time" in row:
        seconds = device_time(row["time"], local_time)
        if seconds is None:
            del row["time"]
        else:
            row["time"] = seconds
    row[box_column] = device
    body = json.dumps(row, allow_nan=False).encode("utf-8")
    return Mapped(TASMOTA, body, "application/json", list(message.user_properties), {}, message.payload)


def _no_constant(name: str) -> Any:
    raise ValueError("{} is not a number JSON allows".format(name))


def flatten(data: Dict[str, Any]) -> Dict[str, Any]:
    """Nested objects and lists → one level: ``{"A": {"B": 1}, "C": [2, 3]}`` → ``{"a_b": 1, "c_1": 2, "c_2": 3}``."""
    out: Dict[str, Any] = {}

    def walk(prefix: str, value: Any, depth: int) -> None:
        if depth > 8:
            raise bad_request("The Tasmota message is nested more than 8 levels deep")
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(prefix + "_" + NOT_A_NAME.sub("_", str(key)) if prefix else NOT_A_NAME.sub("_", str(key)), inner, depth + 1)
        elif isinstance(value, list):
            for i, inner in enumerate(value, 1):
                walk("{}_{}".format(prefix, i), inner, depth + 1)
        else:
            name = prefix.lower()
            if name in out:
                raise bad_request("The Tasmota message gives {!r} twice once flattened".format(name), "bad-column")
            if len(out) >= MAX_FLAT_COLUMNS:
                raise bad_request("The Tasmota message has more than {} values".format(MAX_FLAT_COLUMNS), "too-many-columns")
            out[name] = value

    walk("", data, 0)
    return out


def device_time(value: Any, local_time: Callable[[datetime.datetime], float]) -> Optional[int]:
    """
    Tasmota's ``Time`` as UNIX seconds: ISO text with an offset as it says,
    without one through ``local_time``; an epoch number as it is.  None for
    a clock that was never set (before 2001) or text that is not a time.
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            when = datetime.datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        seconds = when.timestamp() if when.tzinfo is not None else local_time(when)
    else:
        return None
    if not math.isfinite(seconds) or seconds < EARLIEST_DEVICE_TIME:
        return None
    return int(seconds)


def local_time_reader(zone: Optional[str]) -> Callable[[datetime.datetime], float]:
    """
    Naive local time → UNIX seconds in the IANA zone ``zone`` (None: this
    machine's zone).  A time that occurs twice (the hour clocks go back) is
    taken as the first; a time that never occurs (the hour skipped) is read
    with the offset from before the change.
    """
    if zone is None:
        return lambda naive: naive.timestamp()
    from zoneinfo import ZoneInfo

    info = ZoneInfo(zone)
    return lambda naive: naive.replace(tzinfo=info, fold=0).timestamp()


def check_timezone(zone: Optional[str]) -> Optional[str]:
    """None or an IANA zone name this machine knows; ValueError otherwise."""
    if zone is None:
        return None
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError("an IANA time zone name such as 'Europe/Berlin'")
    return zone


def refusal(error: Exception) -> IngestError:
    """Any exception from mapping as the IngestError to count (a 400 unless it is one already)."""
    if isinstance(error, IngestError):
        return error
    return IngestError(400, "parse", str(error)[:200] or type(error).__name__)
