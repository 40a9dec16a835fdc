"""
LoRaWAN network-server webhooks: The Things Stack v3 (TTN) and ChirpStack v4.

Each uplink with a decoded payload becomes one row:

* ``box`` (``OSEM_BOX_COL``): TTN's ``end_device_ids.device_id``; ChirpStack's
  ``deviceInfo.deviceName``, or its ``devEui`` when the name is missing;
* ``time``: the uplink's time (TTN: the first gateway's ``time``, else
  ``uplink_message.received_at``, else ``received_at``; ChirpStack: ``time``)
  as an aware UTC datetime;
* the decoded payload's leaves as columns, nested objects (and lists) flattened
  with ``_`` (``{"battery": {"volts": 3.6}}`` → ``battery_volts``);
* ``gateway_rssi`` and ``gateway_snr`` of the gateway that heard it best,
  unless the payload has columns of those names.

A message that stores nothing is a :class:`Skip` with its reason: TTN's
simulated uplinks, other message types (joins, acknowledgements, ChirpStack's
status, log, ... events) and uplinks without a decoded payload.  Each uplink
has a de-duplication key: TTN ``(dev_eui, session_key_id, f_cnt)``,
ChirpStack ``deduplicationId``.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from co2logd.errors import bad_request

#: TTN message kinds besides uplinks, acknowledged and counted
TTN_OTHER_MESSAGES = (
    "join_accept", "downlink_ack", "downlink_nack", "downlink_sent", "downlink_failed", "downlink_queued",
    "downlink_queue_invalidated", "location_solved", "service_data",
)
MAX_LEAVES = 256
MAX_DEPTH = 8

_FRACTION = re.compile(r"(\.[0-9]{1,6})[0-9]*")


class Skip:
    """A message that is acknowledged and stores nothing; ``reason`` names it for the counters."""

    def __init__(self, reason: str):
        self.reason = reason

    def __repr__(self) -> str:
        return "Skip({!r})".format(self.reason)


class Uplink:
    """One uplink to store: its row and its de-duplication key."""

    def __init__(self, row: Dict[str, Any], dedup_key: Optional[str]):
        self.row = row
        self.dedup_key = dedup_key

    def table(self) -> Tuple[Dict[str, List[Any]], int]:
        """The one-row table."""
        return {name: [value] for name, value in self.row.items()}, 1


Result = Union[Uplink, Skip]


def is_ttn(document: Any) -> bool:
    """A TTN v3 webhook message: ``end_device_ids`` and an uplink or another message kind."""
    return (
        isinstance(document, dict)
        and isinstance(document.get("end_device_ids"), dict)
        and ("uplink_message" in document or any(kind in document for kind in TTN_OTHER_MESSAGES))
    )


def is_chirpstack(document: Any, event: Optional[str]) -> bool:
    """A ChirpStack v4 HTTP-integration event: ``?event=...`` and ``deviceInfo``."""
    return event is not None and isinstance(document, dict) and isinstance(document.get("deviceInfo"), dict)


def parse_time(text: Any, what: str) -> datetime.datetime:
    """An RFC 3339 time (nanoseconds cut to microseconds) as an aware UTC datetime; a 400 otherwise."""
    if not isinstance(text, str) or len(text) > 64:
        raise bad_request("{} must be an RFC 3339 time".format(what))
    cut = _FRACTION.sub(r"\1", text.strip(), count=1)
    if cut.endswith(("Z", "z")):
        cut = cut[:-1] + "+00:00"
    try:
        when = datetime.datetime.fromisoformat(cut)
    except ValueError:
        raise bad_request("{} must be an RFC 3339 time, not {!r}".format(what, text[:40])) from None
    if when.tzinfo is None:
        raise bad_request("{} must carry its offset (Z or +hh:mm)".format(what))
    return when.astimezone(datetime.timezone.utc)


def flatten(value: Any, prefix: str = "", depth: int = 0) -> Iterator[Tuple[str, Any]]:
    """The leaves of a decoded payload, names joined with ``_`` and lower-cased."""
    if depth > MAX_DEPTH:
        raise bad_request("the decoded payload is nested deeper than {} levels".format(MAX_DEPTH))
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from flatten(inner, "{}_{}".format(prefix, key) if prefix else str(key), depth + 1)
    elif isinstance(value, list):
        for index, inner in enumerate(value):
            yield from flatten(inner, "{}_{}".format(prefix, index) if prefix else str(index), depth + 1)
    else:
        yield prefix.lower(), value


def _leaves(payload: Mapping[str, Any], row: Dict[str, Any]) -> None:
    count = 0
    for name, value in flatten(payload):
        count += 1
        if count > MAX_LEAVES:
            raise bad_request("the decoded payload has more than {} values".format(MAX_LEAVES))
        if name in row:
            raise bad_request("the decoded payload's {!r} would overwrite a column set from the message".format(name))
        row[name] = value


def _best_gateway(gateways: Any, rssi_key: str, snr_key: str) -> Tuple[Any, Any]:
    best = None
    if isinstance(gateways, list):
        for gateway in gateways:
            if isinstance(gateway, dict) and isinstance(gateway.get(rssi_key), (int, float)):
                if best is None or gateway[rssi_key] > best[rssi_key]:
                    best = gateway
    if best is None:
        return None, None
    snr = best.get(snr_key)
    return best[rssi_key], snr if isinstance(snr, (int, float)) and not isinstance(snr, bool) else None


def _add_gateway(row: Dict[str, Any], rssi: Any, snr: Any) -> None:
    if rssi is not None and "gateway_rssi" not in row:
        row["gateway_rssi"] = rssi
    if snr is not None and "gateway_snr" not in row:
        row["gateway_snr"] = snr


def ttn(document: Mapping[str, Any], box_column: str, time_column: str) -> Result:
    """A TTN v3 message: an :class:`Uplink` to store or a :class:`Skip`."""
    uplink = document.get("uplink_message")
    if uplink is None:
        kind = next((kind for kind in TTN_OTHER_MESSAGES if kind in document), "other")
        return Skip("ttn-" + kind.replace("_", "-"))
    if document.get("simulated") is True:
        return Skip("ttn-simulated")
    if not isinstance(uplink, dict):
        raise bad_request("TTN: uplink_message must be an object")
    payload = uplink.get("decoded_payload")
    if payload is None:
        return Skip("ttn-not-decoded")
    if not isinstance(payload, dict):
        raise bad_request("TTN: decoded_payload must be an object")
    ids = document["end_device_ids"]
    device = ids.get("device_id")
    if not isinstance(device, str) or not device:
        raise bad_request("TTN: end_device_ids.device_id is missing")
    gateways = uplink.get("rx_metadata")
    first = gateways[0] if isinstance(gateways, list) and gateways and isinstance(gateways[0], dict) else {}
    if first.get("time") is not None:
        when = parse_time(first["time"], "TTN rx_metadata[0].time")
    elif uplink.get("received_at") is not None:
        when = parse_time(uplink["received_at"], "TTN uplink_message.received_at")
    else:
        when = parse_time(document.get("received_at"), "TTN received_at")
    row: Dict[str, Any] = {box_column: device, time_column: when}
    _leaves(payload, row)
    _add_gateway(row, *_best_gateway(gateways, "rssi", "snr"))
    f_cnt = uplink.get("f_cnt", 0)  # TTN leaves out zero values
    dev_eui = ids.get("dev_eui") or device
    session = uplink.get("session_key_id")
    key = "ttn:{}:{}:{}".format(dev_eui, session, f_cnt) if session is not None else None
    return Uplink(row, key)


def chirpstack(document: Mapping[str, Any], event: str, box_column: str, time_column: str) -> Result:
    """A ChirpStack v4 event: an :class:`Uplink` for ``up`` with a decoded ``object``, else a :class:`Skip`."""
    if event != "up":
        return Skip("chirpstack-" + (event if re.match(r"[a-z]{1,16}\Z", event) else "other"))
    payload = document.get("object")
    if payload is None:
        return Skip("chirpstack-not-decoded")
    if not isinstance(payload, dict):
        raise bad_request("ChirpStack: object must be an object")
    info = document["deviceInfo"]
    device = info.get("deviceName") or info.get("devEui")
    if not isinstance(device, str) or not device:
        raise bad_request("ChirpStack: deviceInfo.deviceName and deviceInfo.devEui are missing")
    row: Dict[str, Any] = {box_column: device, time_column: parse_time(document.get("time"), "ChirpStack time")}
    _leaves(payload, row)
    _add_gateway(row, *_best_gateway(document.get("rxInfo"), "rssi", "snr"))
    dedup = document.get("deduplicationId")
    key = "chirpstack:{}".format(dedup) if isinstance(dedup, str) and dedup else None
    return Uplink(row, key)
