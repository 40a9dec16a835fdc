"""The pure dialect mappers: line-protocol points, airrohr, TTN, ChirpStack → rows; upload tokens."""

from __future__ import annotations

import base64
import datetime
import json

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial import unittest

from co2logd.dialects import airrohr, influx, lorawan
from co2logd.dialects.lineprotocol import parse
from co2logd.errors import IngestError
from co2logd.tokens import Presented, UploadTokens, check_tokens_setting, token_from_authorization

from tests import dialect_bodies as bodies
from tests import strategies  # noqa: F401  (the hypothesis profile)

UTC = datetime.timezone.utc


class LineProtocolTable(unittest.TestCase):
    """Points → a table: measurement, time, tags as text, fields typed."""

    def test_mapping(self):
        """Keys lower-cased; time at microseconds; a point without timestamp gets the arrival time."""
        table, rows = influx.table_of(parse(b'Env,Box=lab,Room=a CO2=612i,T=21.5,ok=t,note="x" 1700000000123456789\nenv g=1u'), 1000.5)
        self.assertEqual(rows, 2)
        self.assertEqual(table["measurement"], ["Env", "env"])
        self.assertEqual(table["time"], [datetime.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=UTC),
                                         datetime.datetime(1970, 1, 1, 0, 16, 40, 500000, tzinfo=UTC)])
        self.assertEqual(table["box"], ["lab", None])
        self.assertEqual(table["co2"], [612, None])
        self.assertEqual(table["t"], [21.5, None])
        self.assertEqual(table["ok"], [True, None])
        self.assertEqual(table["note"], ["x", None])
        self.assertEqual(table["g"], [None, 1])

    def test_duplicate_points_merge(self):
        """Same measurement, tag set (in any order) and time: one row, the later value wins."""
        table, rows = influx.table_of(parse(b"m,a=1,b=2 f=1,g=1 5\nm,b=2,a=1 f=2,h=3 5\nm,a=1,b=2 f=9 6"), 0)
        self.assertEqual(rows, 2)
        self.assertEqual(table["f"], [2.0, 9.0])
        self.assertEqual(table["g"], [1.0, None])
        self.assertEqual(table["h"], [3.0, None])

    def test_collisions_refused(self):
        """A tag and a field of one name, case variants, measurement/time keys, huge unsigned: 400 naming the line."""
        for body in [b"m,a=1 A=2", b"m,Time=1 f=1", b"m measurement=1", b"m F=1,f=2", b"m,t=1,T=2 f=1", b"m f=1\nm f=18446744073709551615u"]:
            with self.assertRaises(IngestError) as caught:
                influx.table_of(parse(body), 0)
            self.assertEqual(caught.exception.status, 400)
            self.assertIn("line", caught.exception.message)

    def test_largest_signed_unsigned(self):
        """The largest unsigned value SQLite holds is taken."""
        table, _ = influx.table_of(parse(b"m f=9223372036854775807u"), 0)
        self.assertEqual(table["f"], [2**63 - 1])


class Airrohr(unittest.TestCase):
    """airrohr's own-API body → one row."""

    def test_firmware_body(self):
        """The firmware's body: box from the chip id, numbers from strings, text kept."""
        table, rows = airrohr.table_of(json.loads(bodies.AIRROHR), "esp8266-1234567", "box")
        row = {name: values[0] for name, values in table.items()}
        self.assertEqual(rows, 1)
        self.assertEqual(row["box"], "esp8266-1234567")
        self.assertEqual(row["software_version"], "NRZ-2024-135")
        self.assertEqual(row["sds_p1"], 12.3)
        self.assertEqual(row["bme280_pressure"], 100520.25)
        self.assertEqual(row["scd30_co2_ppm"], 612)
        self.assertIs(type(row["scd30_co2_ppm"]), int)
        self.assertEqual(row["signal"], -38)
        self.assertEqual(row["gps_timestamp"], "1970-01-01T00:00:00.000")

    def test_values(self):
        """Units after numbers are dropped; anything else not numeric stays text."""
        self.assertEqual(airrohr.value_of("-59 dBm"), -59)
        self.assertEqual(airrohr.value_of("12.30"), 12.3)
        self.assertEqual(airrohr.value_of("nan"), "nan")
        self.assertEqual(airrohr.value_of("2024-01-02T03:04:05.060"), "2024-01-02T03:04:05.060")
        self.assertEqual(airrohr.value_of(""), "")

    def test_esp32(self):
        """ESP32 chip ids are hex; X-Sensor names them; without it esp8266-<id> is used."""
        body = {"esp8266id": "a1b2c3d4", "sensordatavalues": [{"value_type": "SCD30_co2_ppm", "value": "700"}]}
        self.assertEqual(airrohr.table_of(body, "esp32-a1b2c3d4", "box")[0]["box"], ["esp32-a1b2c3d4"])
        self.assertEqual(airrohr.table_of(body, None, "box")[0]["box"], ["esp8266-a1b2c3d4"])
        self.assertEqual(airrohr.table_of(body, "esp32-ffff", "box")[0]["box"], ["esp8266-a1b2c3d4"])

    def test_malformed(self):
        """Malformed bodies are 400s."""
        for body in [
            {"esp8266id": "1/2", "sensordatavalues": []},
            {"esp8266id": "1", "sensordatavalues": {}},
            {"esp8266id": "1", "sensordatavalues": [{"value": "1"}]},
            {"esp8266id": "1", "sensordatavalues": [{"value_type": "x", "value": {"a": 1}}]},
            {"esp8266id": "1", "sensordatavalues": [{"value_type": "box", "value": "1"}]},
        ]:
            self.assertRaises(IngestError, airrohr.table_of, body, None, "box")

    @given(st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
                        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                        max_leaves=10))
    def test_any_json(self, value):
        """Any JSON under sensordatavalues maps or is a 400 IngestError: nothing else."""
        try:
            airrohr.table_of({"esp8266id": "1", "sensordatavalues": value}, None, "box")
        except IngestError as e:
            self.assertEqual(e.status, 400)


class TheThingsStack(unittest.TestCase):
    """TTN v3 webhook messages."""

    def test_uplink(self):
        """Device id, first gateway's time, decoded payload flattened, best gateway's RSSI/SNR, the de-duplication key."""
        result = lorawan.ttn(bodies.ttn_uplink(), "box", "time")
        self.assertIsInstance(result, lorawan.Uplink)
        self.assertEqual(result.row, {
            "box": "co2-node-7", "time": datetime.datetime(2024, 5, 6, 7, 8, 9, 12345, tzinfo=UTC),
            "co2": 612, "temperature": 21.5, "battery_volts": 3.61, "battery_low": False,
            "gateway_rssi": -61, "gateway_snr": 9.5,
        })
        self.assertEqual(result.dedup_key, "ttn:70B3D57ED0000001:AYZ1d2VLw3Y=:42")

    def test_time_fallbacks(self):
        """Without a gateway time: the network server's received_at."""
        message = bodies.ttn_uplink()
        for gateway in message["uplink_message"]["rx_metadata"]:
            gateway.pop("time", None)
        self.assertEqual(lorawan.ttn(message, "box", "time").row["time"], datetime.datetime(2024, 5, 6, 7, 8, 9, 100000, tzinfo=UTC))

    def test_what_stores_nothing(self):
        """Simulated uplinks, other messages and undecoded uplinks are skips with a reason."""
        simulated = bodies.ttn_uplink(simulated=True)
        undecoded = bodies.ttn_uplink()
        del undecoded["uplink_message"]["decoded_payload"]
        join = bodies.ttn_uplink(uplink_message=None, join_accept={"session_key_id": "x"})
        self.assertEqual(lorawan.ttn(simulated, "box", "time").reason, "ttn-simulated")
        self.assertEqual(lorawan.ttn(undecoded, "box", "time").reason, "ttn-not-decoded")
        self.assertEqual(lorawan.ttn(join, "box", "time").reason, "ttn-join-accept")
        self.assertTrue(lorawan.is_ttn(join))

    def test_bad_time(self):
        """A time that is no RFC 3339 time is a 400."""
        message = bodies.ttn_uplink()
        message["uplink_message"]["rx_metadata"][0]["time"] = "yesterday"
        self.assertRaises(IngestError, lorawan.ttn, message, "box", "time")


class ChirpStack(unittest.TestCase):
    """ChirpStack v4 HTTP integration events."""

    def test_up(self):
        """deviceName as box, time, object flattened, best gateway, deduplicationId."""
        result = lorawan.chirpstack(bodies.chirpstack_up(), "up", "box", "time")
        self.assertEqual(result.row, {
            "box": "cellar-co2", "time": datetime.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
            "co2": 640.0, "temperature": 12.5, "battery_volts": 3.3, "gateway_rssi": -57, "gateway_snr": 10.0,
        })
        self.assertEqual(result.dedup_key, "chirpstack:3ac7e3c4-4401-4b8d-9386-a5c902f9202d")

    def test_dev_eui_without_name(self):
        """Without deviceName the devEui names the box."""
        event = bodies.chirpstack_up()
        del event["deviceInfo"]["deviceName"]
        self.assertEqual(lorawan.chirpstack(event, "up", "box", "time").row["box"], "0101010101010101")

    def test_other_events(self):
        """join, status, ... and an up without object store nothing."""
        self.assertEqual(lorawan.chirpstack(bodies.chirpstack_up(), "join", "box", "time").reason, "chirpstack-join")
        self.assertEqual(lorawan.chirpstack(bodies.chirpstack_up(object=None), "up", "box", "time").reason, "chirpstack-not-decoded")

    def test_payload_collision(self):
        """A payload key naming the box or time column is a 400."""
        self.assertRaises(IngestError, lorawan.chirpstack, bodies.chirpstack_up(object={"box": 1}), "up", "box", "time")


class Tokens(unittest.TestCase):
    """UPLOAD_TOKENS: where tokens are read, what a check answers."""

    tokens = UploadTokens({"tok-secret": "lab-gateway", "other": "roof"})

    def test_schemes(self):
        """Token, Bearer, Basic password, p=; other schemes and bad Basic are present but invalid."""
        basic = "Basic " + base64.b64encode(b"airrohr:tok-secret").decode()
        for header, query in [("Token tok-secret", None), ("Bearer tok-secret", None), (basic, None), (None, "tok-secret"),
                              ("token   tok-secret", None), ("Bearer wrong", "tok-secret")]:
            self.assertEqual(self.tokens.check(header, query), (Presented.VALID, "lab-gateway"), header)
        for header, query in [("Token wrong", None), ("Digest x", None), ("Basic !!!", None), ("Basic " + base64.b64encode(b"nopass").decode(), None), (None, "")]:
            self.assertEqual(self.tokens.check(header, query)[0], Presented.INVALID, header)
        self.assertEqual(self.tokens.check(None, None), (Presented.NONE, None))

    def test_no_tokens_configured(self):
        """Without UPLOAD_TOKENS an Authorization header (for a proxy) is not read."""
        self.assertEqual(UploadTokens({}).check("Basic eDp5", None), (Presented.NONE, None))

    def test_authorization_parsing(self):
        """The header's parts."""
        self.assertEqual(token_from_authorization("Bearer  abc "), (True, "abc"))
        self.assertEqual(token_from_authorization(None), (False, None))

    def test_setting(self):
        """The setting is checked and its errors never show a token."""
        self.assertEqual(check_tokens_setting({"a": "b"}), {"a": "b"})
        for bad in [["a"], {"": "x"}, {" a": "x"}, {"a": ""}, {"a": 1}, {"a\n": "x"}]:
            with self.assertRaises(ValueError) as caught:
                check_tokens_setting(bad)
            self.assertNotIn("a\n", str(caught.exception))


class StorableValues(unittest.TestCase):
    """Webhook values SQLite cannot store are 400s, not store failures."""

    def test_refused(self):
        """Huge integers, non-finite floats, lone surrogates in a decoded payload; airrohr's huge integers stay text."""
        from co2logd.dialects.recognise import recognise

        for payload in [{"n": 2**64}, {"n": float("inf")}, {"s": "\ud800"}]:
            body = json.dumps(bodies.chirpstack_up(object=payload)).encode()
            with self.assertRaises(IngestError) as caught:
                recognise(body, "application/json", "up", None, "box", "time")
            self.assertEqual(caught.exception.status, 400)
        self.assertEqual(airrohr.value_of("123456789012345678901234567890"), "123456789012345678901234567890")
