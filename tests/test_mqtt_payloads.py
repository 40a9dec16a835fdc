"""The pure MQTT mappers: broker URLs, topic filters, Tasmota, ESPHome and co2logd's own formats."""

import datetime
import json

from twisted.trial import unittest

from co2logd.errors import IngestError
from co2logd.transports import mqtt_payloads as mp
from co2logd.transports.mqtt_payloads import Message, NotData

UTC = mp.local_time_reader("UTC")


def mapped_row(topic, payload, **kwargs):
    """The one row a message maps to, as the JSON body given to ingest reads."""
    mapped = mp.map_message(Message(topic, payload, **kwargs), "box", kwargs.pop("local_time", UTC))
    return mapped, json.loads(mapped.body)


class BrokerURLTests(unittest.TestCase):
    """``--mqtt URL`` parsing."""

    def test_plain_with_credentials(self):
        """User, password, host and port come out; the default port is 1883."""
        url = mp.parse_broker_url("mqtt://co2:s%40cret@broker.lan")
        self.assertEqual((url.scheme, url.host, url.port, url.username, url.password, url.tls),
                         ("mqtt", "broker.lan", 1883, "co2", "s@cret", False))

    def test_tls_default_port(self):
        """mqtts:// means TLS on 8883 unless a port is given."""
        self.assertEqual(mp.parse_broker_url("mqtts://h").port, 8883)
        self.assertTrue(mp.parse_broker_url("mqtts://h:9999").tls)
        self.assertEqual(mp.parse_broker_url("mqtts://h:9999").port, 9999)

    def test_password_never_shown(self):
        """display() and repr() show the user but not the password."""
        url = mp.parse_broker_url("mqtt://u:hunter2@h:1")
        self.assertNotIn("hunter2", url.display())
        self.assertNotIn("hunter2", repr(url))
        self.assertEqual(url.display(), "mqtt://u@h:1")

    def test_bad_urls(self):
        """Wrong scheme, no host, a path, a bad port: one sentence, without the password."""
        for text in ("http://h", "mqtt://", "mqtt://h/topic", "mqtt://u:pw@h:99999", "h:1883"):
            with self.assertRaises(ValueError) as caught:
                mp.parse_broker_url(text)
            self.assertNotIn("pw", str(caught.exception).replace("path", ""))


class TopicFilterTests(unittest.TestCase):
    """Subscription filters and matching."""

    def test_valid_and_invalid(self):
        """'+' and '#' only as whole levels, '#' last."""
        for good in ("tele/+/SENSOR", "#", "a/#", "+/sensor/+/state"):
            self.assertEqual(mp.check_topic_filter(good), good)
        for bad in ("", "a/#/b", "a+/b", "a/b#"):
            self.assertRaises(ValueError, mp.check_topic_filter, bad)

    def test_matching(self):
        """MQTT's rules, including $SYS not matching '#'."""
        self.assertTrue(mp.topic_matches("tele/+/SENSOR", "tele/kitchen/SENSOR"))
        self.assertFalse(mp.topic_matches("tele/+/SENSOR", "tele/a/b/SENSOR"))
        self.assertTrue(mp.topic_matches("a/#", "a"))
        self.assertTrue(mp.topic_matches("a/#", "a/b/c"))
        self.assertFalse(mp.topic_matches("#", "$SYS/broker"))
        self.assertFalse(mp.topic_matches("a/b", "a/b/c"))


class TasmotaTests(unittest.TestCase):
    """``tele/<device>/SENSOR``."""

    def test_flattening(self):
        """SCD30.CarbonDioxide → scd30_carbondioxide, PM2.5 → pm2_5, lists numbered, the box is the device."""
        payload = (b'{"Time":"2024-05-01T12:00:00","SCD30":{"CarbonDioxide":814,"Temperature":24.7},'
                   b'"SDS0X1":{"PM2.5":1.5},"ENERGY":{"Voltage":[230,231]},"TempUnit":"C"}')
        mapped, row = mapped_row("tele/tasmota_ABC123/SENSOR", payload)
        self.assertEqual(mapped.convention, mp.TASMOTA)
        self.assertEqual(row["scd30_carbondioxide"], 814)
        self.assertEqual(row["scd30_temperature"], 24.7)
        self.assertEqual(row["sds0x1_pm2_5"], 1.5)
        self.assertEqual((row["energy_voltage_1"], row["energy_voltage_2"]), (230, 231))
        self.assertEqual(row["box"], "tasmota_ABC123")
        self.assertEqual(row["time"], int(datetime.datetime(2024, 5, 1, 12, tzinfo=datetime.timezone.utc).timestamp()))
        self.assertEqual(mapped.signed, payload)

    def test_local_time_in_the_configured_zone(self):
        """A time without offset is read in the configured zone (Berlin is UTC+2 in May)."""
        berlin = mp.local_time_reader("Europe/Berlin")
        mapped = mp.map_message(Message("tele/d/SENSOR", b'{"Time":"2024-05-01T12:00:00","X":{"Y":1}}'), "box", berlin)
        self.assertEqual(json.loads(mapped.body)["time"], 1714557600)  # 10:00 UTC

    def test_time_with_offset_or_epoch(self):
        """An explicit offset wins over the zone; an epoch number is kept."""
        berlin = mp.local_time_reader("Europe/Berlin")
        m = mp.map_message(Message("tele/d/SENSOR", b'{"Time":"2024-05-01T12:00:00+00:00","X":{"Y":1}}'), "box", berlin)
        self.assertEqual(json.loads(m.body)["time"], 1714564800)
        m = mp.map_message(Message("tele/d/SENSOR", b'{"Time":1714564800,"X":{"Y":1}}'), "box", berlin)
        self.assertEqual(json.loads(m.body)["time"], 1714564800)

    def test_unset_clock_leaves_time_out(self):
        """A clock before NTP (1970) or text that is no time: no time column, the upload time remains."""
        for t in (b'"1970-01-01T00:00:12"', b'"soon"', b"true"):
            _, row = mapped_row("tele/d/SENSOR", b'{"Time":' + t + b',"X":{"Y":1}}')
            self.assertNotIn("time", row)
            self.assertEqual(row["x_y"], 1)

    def test_fahrenheit_converted(self):
        """TempUnit F: temperatures and dew points become °C; other values are untouched."""
        _, row = mapped_row("tele/d/SENSOR", b'{"AM2301":{"Temperature":212,"DewPoint":32,"Humidity":50},"TempUnit":"F"}')
        self.assertEqual((row["am2301_temperature"], row["am2301_dewpoint"], row["am2301_humidity"]), (100.0, 0.0, 50))
        self.assertEqual(row["tempunit"], "C")

    def test_fulltopic_topic_first(self):
        """FullTopic %topic%/%prefix%/: <device>/tele/SENSOR still names the device."""
        _, row = mapped_row("kitchen/tele/SENSOR", b'{"X":{"Y":2}}')
        self.assertEqual(row["box"], "kitchen")

    def test_bad_payloads(self):
        """Not JSON, not an object, NaN, a duplicate once flattened: 400."""
        for payload in (b"nope", b"[1,2]", b'{"X":NaN}', b'{"A_B":1,"A":{"B":2}}', b"\xff"):
            self.assertRaises(IngestError, mp.map_message, Message("tele/d/SENSOR", payload), "box", UTC)

    def test_status_topics_are_not_data(self):
        """LWT, STATE, INFO1, stat/…/RESULT: not data."""
        for topic in ("tele/d/LWT", "tele/d/STATE", "tele/d/INFO1", "stat/d/RESULT", "cmnd/d/POWER"):
            self.assertRaises(NotData, mp.map_message, Message(topic, b"Online"), "box", UTC)


class ESPHomeTests(unittest.TestCase):
    """``<node>/sensor/<name>/state``."""

    def test_value_column_box(self):
        """The bare value under the name from the topic, the node as box."""
        mapped, row = mapped_row("livingroom/sensor/co2/state", b"812")
        self.assertEqual(mapped.convention, mp.ESPHOME)
        self.assertEqual(row, {"co2": 812, "box": "livingroom"})
        _, row = mapped_row("livingroom/sensor/air-temp/state", b"21.25")
        self.assertEqual(row, {"air_temp": 21.25, "box": "livingroom"})

    def test_binary_and_text(self):
        """binary_sensor ON/OFF → 1/0, text_sensor text as it is."""
        self.assertEqual(mapped_row("n/binary_sensor/window/state", b"ON")[1]["window"], 1)
        self.assertEqual(mapped_row("n/text_sensor/ver/state", b"2024.5")[1]["ver"], "2024.5")

    def test_no_reading_and_status(self):
        """nan, the availability topic, other components, discovery: not data."""
        for topic, payload in (("n/sensor/co2/state", b"nan"), ("n/status", b"online"),
                               ("n/switch/relay/state", b"ON"), ("homeassistant/sensor/n/co2/config", b"{}")):
            self.assertRaises(NotData, mp.map_message, Message(topic, payload), "box", UTC)

    def test_not_a_number(self):
        """A sensor value that is not a number is refused."""
        self.assertRaises(IngestError, mp.map_message, Message("n/sensor/co2/state", b"lots"), "box", UTC)

    def test_retained_is_not_data(self):
        """A retained (replayed) state is an old reading: not stored again."""
        self.assertRaises(NotData, mp.map_message, Message("n/sensor/co2/state", b"812", retain=True), "box", UTC)


class OwnFormatTests(unittest.TestCase):
    """co2logd's formats on other topics."""

    def test_user_properties_are_headers(self):
        """MQTT 5: user properties are the headers, the content type property the format; the body is untouched."""
        body = b'{"co2":[1]}'
        m = mp.map_message(Message("co2/kitchen", body, user_properties=[("Content-MD5-Salted", "ab")],
                                   content_type="application/json"), "box", UTC)
        self.assertEqual((m.convention, m.body, m.content_type, m.headers, m.signed),
                         (mp.OWN, body, "application/json", [("Content-MD5-Salted", "ab")], body))

    def test_header_block(self):
        """MQTT 3.1.1: an HTTP-style header block before the body, as over UDP."""
        m = mp.map_message(Message("co2/x", b"Content-Type: text/csv\nIdempotency-Key: k1\n\nco2\n5"), "box", UTC)
        self.assertEqual(m.body, b"co2\n5")
        self.assertEqual(m.content_type, "text/csv")
        self.assertIn(("Idempotency-Key", "k1"), m.headers)

    def test_bodies_without_headers(self):
        """CSV with times, JSON, form data are bodies as they are."""
        for body in (b"time,co2\n2024-01-01T10:00:00,5", b'{"a":1}', b"a=1&b=2"):
            self.assertEqual(mp.map_message(Message("co2/x", body), "box", UTC).body, body)

    def test_bad_header_block(self):
        """A header block without its empty line is a 400."""
        self.assertRaises(IngestError, mp.map_message, Message("co2/x", b"Content-Type: text/csv\nco2\n"), "box", UTC)


class TimezoneSettingTests(unittest.TestCase):
    """MQTT_TASMOTA_TIMEZONE's check."""

    def test_zones(self):
        """IANA names pass, others do not."""
        self.assertEqual(mp.check_timezone("Europe/Berlin"), "Europe/Berlin")
        self.assertIsNone(mp.check_timezone(None))
        self.assertRaises(ValueError, mp.check_timezone, "Mars/Olympus")


class LineProtocolTests(unittest.TestCase):
    """Line protocol on MQTT_LINE_PROTOCOL_TOPICS (Telegraf's MQTT output)."""

    def map(self, payload, topic="telegraf/gw1/scd30"):
        return mp.map_message(Message(topic, payload), "box", UTC, ["telegraf/#"], now=1700000000.0)

    def test_points_to_rows(self):
        """One row per point; tags and fields as columns; time in UNIX seconds; the host tag is the box."""
        mapped = self.map(b"air,host=gw1 co2=812i,temperature=21.5 1714564800000000000\nair,host=gw1 co2=815i\n")
        table = json.loads(mapped.body)
        self.assertEqual(mapped.convention, mp.LINE_PROTOCOL)
        self.assertEqual(table["co2"], [812, 815])
        self.assertEqual(table["temperature"], [21.5, None])
        self.assertEqual(table["time"], [1714564800.0, 1700000000.0])
        self.assertEqual(table["box"], ["gw1", "gw1"])
        self.assertEqual(table["measurement"], ["air", "air"])

    def test_box_tag_wins(self):
        """A box tag is the box; host stays a column of its own."""
        table = json.loads(self.map(b"air,box=kitchen,host=gw1 co2=1").body)
        self.assertEqual((table["box"], table["host"]), (["kitchen"], ["gw1"]))

    def test_bad_line_refused(self):
        """A line that is not line protocol is a 400 naming it."""
        with self.assertRaises(IngestError) as caught:
            self.map(b"air co2=")
        self.assertEqual(caught.exception.status, 400)

    def test_other_topics_unaffected(self):
        """Outside the line-protocol topics the payload is not read as line protocol."""
        m = mp.map_message(Message("co2logd/x", b'{"a":1}'), "box", UTC, ["telegraf/#"])
        self.assertEqual(m.convention, mp.OWN)
