"""Bodies shaped exactly as the real clients send them (docs: /work/shared/reference/client-formats.md)."""

from __future__ import annotations

import json

#: airrohr "Send data to own API" (firmware NRZ-2024-135): values are strings, no timestamp
AIRROHR = (
    b'{"esp8266id": "1234567", "software_version": "NRZ-2024-135", "sensordatavalues":['
    b'{"value_type":"SDS_P1","value":"12.30"},{"value_type":"SDS_P2","value":"7.10"},'
    b'{"value_type":"BME280_temperature","value":"21.40"},{"value_type":"BME280_pressure","value":"100520.25"},'
    b'{"value_type":"BME280_humidity","value":"39.60"},'
    b'{"value_type":"SCD30_co2_ppm","value":"612"},'
    b'{"value_type":"GPS_timestamp","value":"1970-01-01T00:00:00.000"},'
    b'{"value_type":"samples","value":"580590"},{"value_type":"min_micro","value":"216"},'
    b'{"value_type":"max_micro","value":"3503442"},{"value_type":"interval","value":"145000"},'
    b'{"value_type":"signal","value":"-38"}]}'
)
AIRROHR_HEADERS = {
    "Content-Type": "application/json",
    "X-Sensor": "esp8266-1234567",
    "X-MAC-ID": "esp8266-a0b1c2d3e4f5",
    "User-Agent": "NRZ-2024-135/1234567/a0b1c2d3e4f5",
}

#: airrohr's InfluxDB option: one line, form content type, numbers bare (floats), text quoted unescaped
AIRROHR_INFLUX = (
    b'feinstaub,node=esp8266-1234567 SDS_P1=12.30,SDS_P2=7.10,BME280_temperature=21.40,'
    b'samples=580590,signal=-38,GPS_timestamp="2024-01-02T03:04:05.060"\n'
)
AIRROHR_INFLUX_HEADERS = {"Content-Type": "application/x-www-form-urlencoded"}


def ttn_uplink(**changes) -> dict:
    """A The Things Stack v3 webhook uplink message (data-formats docs), with changes."""
    message = {
        "end_device_ids": {
            "device_id": "co2-node-7",
            "application_ids": {"application_id": "lab-sensors"},
            "dev_eui": "70B3D57ED0000001",
            "join_eui": "0000000000000000",
            "dev_addr": "260B1234",
        },
        "correlation_ids": ["as:up:01H0", "gs:uplink:01H0"],
        "received_at": "2024-05-06T07:08:09.123456789Z",
        "uplink_message": {
            "session_key_id": "AYZ1d2VLw3Y=",
            "f_port": 2,
            "f_cnt": 42,
            "frm_payload": "AmQBLA==",
            "decoded_payload": {"co2": 612, "temperature": 21.5, "battery": {"volts": 3.61, "low": False}},
            "rx_metadata": [
                {"gateway_ids": {"gateway_id": "gw-roof", "eui": "B827EBFFFE000001"}, "time": "2024-05-06T07:08:09.012345678Z",
                 "rssi": -97, "channel_rssi": -97, "snr": 7.25},
                {"gateway_ids": {"gateway_id": "gw-cellar"}, "rssi": -61, "channel_rssi": -61, "snr": 9.5},
            ],
            "settings": {"data_rate": {"lora": {"bandwidth": 125000, "spreading_factor": 7}}, "frequency": "868100000"},
            "received_at": "2024-05-06T07:08:09.100000000Z",
            "consumed_airtime": "0.056576s",
        },
    }
    for key, value in changes.items():
        if value is None:
            message.pop(key, None)
        else:
            message[key] = value
    return message


def chirpstack_up(**changes) -> dict:
    """A ChirpStack v4 HTTP integration "up" event (protobuf JSON mapping, lowerCamelCase)."""
    event = {
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": "2024-05-06T07:08:09.123456Z",
        "deviceInfo": {
            "tenantId": "52f14cd4-c6f1-4fbd-8f87-4025e1d49242", "tenantName": "ChirpStack",
            "applicationId": "17c82e96-be03-4f38-aef3-f83d48582d97", "applicationName": "lab",
            "deviceProfileId": "14855bf7-d10d-4aee-b618-ebfcb64dc7ad", "deviceProfileName": "co2",
            "deviceName": "cellar-co2", "devEui": "0101010101010101", "tags": {"room": "cellar"},
        },
        "devAddr": "00189440", "adr": True, "dr": 1, "fCnt": 10, "fPort": 1, "confirmed": False,
        "data": "AmQBLA==",
        "object": {"co2": 640.0, "temperature": 12.5, "battery": {"volts": 3.3}},
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -57, "snr": 10.0}, {"gatewayId": "0016c001f153a14d", "rssi": -90, "snr": 2.5}],
        "txInfo": {"frequency": 868100000, "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7}}},
    }
    for key, value in changes.items():
        if value is None:
            event.pop(key, None)
        else:
            event[key] = value
    return event


def as_json(document: dict) -> bytes:
    """As the servers send it."""
    return json.dumps(document).encode("utf-8")
