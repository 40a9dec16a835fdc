"""
Every dialect end to end over a real port: InfluxDB /write and /api/v2/write,
airrohr, TTN and ChirpStack on /upload, upload tokens, and line protocol over UDP;
bodies shaped as the real clients send them (tests/dialect_bodies.py).
"""

from __future__ import annotations

import base64
import gzip
import json

import treq
from twisted.internet import defer, reactor, task
from twisted.internet.protocol import DatagramProtocol
from twisted.trial import unittest

from co2logd.transports.lineprotocol_udp import influx_udp_service

from tests import dialect_bodies as bodies
from tests.helpers import SiteMixin, make_settings, rows_in, salted

TOKEN = "tok-3f9a0c1d2e"
TOKENS = {TOKEN: "lab-gateway"}


def basic(user: str, password: str) -> str:
    """An HTTP Basic Authorization value."""
    return "Basic " + base64.b64encode("{}:{}".format(user, password).encode()).decode()


class DialectSite(SiteMixin):
    """A real site; helpers to POST anywhere and read the rows."""

    @defer.inlineCallbacks
    def send(self, path: str, body: bytes, headers=None):
        """POST ``body`` to ``path``; fire with (status, headers, body bytes)."""
        response = yield treq.post(self.url + path, data=body, headers=headers or {}, persistent=False)
        content = yield treq.content(response)
        return response.code, response.headers, content

    def rows(self):
        """The stored rows."""
        return rows_in(self.db_path)


class InfluxWriteTests(DialectSite, unittest.TestCase):
    """POST /write and /api/v2/write."""

    def setUp(self):
        self.start_site(make_settings(UPLOAD_TOKENS=TOKENS))

    @defer.inlineCallbacks
    def test_v2_write_stores_each_point(self):
        """Telegraf-style v2 write: 204, one row per point, typed columns, time at the precision, the token's label."""
        body = (b"co2,box=kitchen,room=1st ppm=812i,temperature=21.5,ok=true,note=\"fine, thanks\" 1717171717123\n"
                b"co2,box=cellar ppm=640u 1717171718000\n")
        status, headers, content = yield self.send(
            "/api/v2/write?org=home&bucket=co2&precision=ms", body,
            {"Authorization": "Token " + TOKEN, "Content-Type": "text/plain; charset=utf-8"})
        self.assertEqual((status, content), (204, b""))
        rows = self.rows()
        self.assertEqual(len(rows), 2)
        first, second = rows
        self.assertEqual(first["measurement"], "co2")
        self.assertEqual(first["time"], "2024-05-31 16:08:37.123000+00:00")
        self.assertEqual((first["box"], first["room"], first["ppm"], first["temperature"], first["ok"], first["note"]),
                         ("kitchen", "1st", 812, 21.5, 1, "fine, thanks"))
        self.assertEqual((second["box"], second["room"], second["ppm"]), ("cellar", None, 640))
        self.assertEqual(first["token_label"], "lab-gateway")
        self.assertEqual(first["transport"], "http")
        self.assertNotIn(TOKEN, json.dumps(rows))

    @defer.inlineCallbacks
    def test_airrohr_influx_option(self):
        """airrohr's InfluxDB request as sent: form content type, Basic auth, one line without timestamp."""
        self.clock = reactor
        status, _, _ = yield self.send("/write?db=sensorcommunity", bodies.AIRROHR_INFLUX,
                                       dict(bodies.AIRROHR_INFLUX_HEADERS, Authorization=basic("airrohr", TOKEN)))
        self.assertEqual(status, 204)
        [row] = self.rows()
        self.assertEqual((row["measurement"], row["node"], row["sds_p1"], row["samples"], row["signal"], row["gps_timestamp"]),
                         ("feinstaub", "esp8266-1234567", 12.3, 580590.0, -38.0, "2024-01-02T03:04:05.060"))
        self.assertEqual(row["time"][:10], row["time_upload_utc"][:10])  # arrival time

    @defer.inlineCallbacks
    def test_v1_precision_and_p_token(self):
        """/write takes precision=h and the token as p=."""
        status, _, _ = yield self.send("/write?db=x&precision=h&u=me&p=" + TOKEN, b"m f=1 1")
        self.assertEqual(status, 204)
        self.assertEqual(self.rows()[0]["time"], "1970-01-01 01:00:00+00:00")

    @defer.inlineCallbacks
    def test_invalid_line_refuses_batch(self):
        """One bad line: 400 InfluxDB body naming the line, X-Platform-Error-Code, nothing stored."""
        status, headers, content = yield self.send("/api/v2/write?org=o&bucket=b", b"m f=1\nm f=\nm f=3",
                                                   {"Authorization": "Token " + TOKEN})
        self.assertEqual(status, 400)
        error = json.loads(content)
        self.assertEqual(error["code"], "invalid")
        self.assertIn("line 2 'm f='", error["message"])
        self.assertEqual(headers.getRawHeaders("x-platform-error-code"), ["invalid"])
        self.assertEqual(self.rows(), [])

    @defer.inlineCallbacks
    def test_collisions_and_bad_names_refused(self):
        """A tag and field of one name, a time key, a bad column name, the token column: 400, nothing stored."""
        for body in [b"m,a=1 a=2", b"m time=1", b"m bad-name=1", b"m,token_label=x f=1", b"m transport=1"]:
            status, _, content = yield self.send("/write?db=x", body, {"Authorization": "Token " + TOKEN})
            self.assertEqual((status, json.loads(content)["code"]), (400, "invalid"), body)
        self.assertEqual(self.rows(), [])

    @defer.inlineCallbacks
    def test_bad_precision(self):
        """A precision the API does not know is a 400."""
        status, _, _ = yield self.send("/api/v2/write?precision=h", b"m f=1", {"Authorization": "Token " + TOKEN})
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_gzip(self):
        """gzip bodies are inflated; beyond MAX_BODY_SIZE inflated is 413; corrupt is 400; unknown coding 415."""
        status, _, _ = yield self.send("/api/v2/write", gzip.compress(b"m f=1\nm f=2 5"),
                                       {"Content-Encoding": "gzip", "Authorization": "Token " + TOKEN})
        self.assertEqual(status, 204)
        self.assertEqual(len(self.rows()), 2)
        bomb = gzip.compress(b"m f=1\n" + b" " * (self.settings.MAX_BODY_SIZE + 10))
        self.assertLess(len(bomb), 100_000)
        status, _, content = yield self.send("/api/v2/write", bomb, {"Content-Encoding": "gzip"})
        self.assertEqual(status, 413)
        self.assertEqual(json.loads(content)["code"], "request too large")
        status, _, _ = yield self.send("/api/v2/write", b"\x1f\x8bnot gzip", {"Content-Encoding": "gzip"})
        self.assertEqual(status, 400)
        status, _, _ = yield self.send("/api/v2/write", b"m f=1", {"Content-Encoding": "br"})
        self.assertEqual(status, 415)
        self.assertEqual(len(self.rows()), 2)

    @defer.inlineCallbacks
    def test_wrong_token_is_401(self):
        """A wrong token is 401 with InfluxDB's body even when auth is not required."""
        status, _, content = yield self.send("/api/v2/write", b"m f=1", {"Authorization": "Token nope"})
        self.assertEqual((status, json.loads(content)["code"]), (401, "unauthorized"))
        self.assertEqual(self.rows(), [])

    @defer.inlineCallbacks
    def test_busy_is_503_with_retry_after(self):
        """A full write queue: 503 unavailable with Retry-After."""
        self.patch(self.store.writer, "_queued_rows", self.store.writer.queue_limit)
        status, headers, content = yield self.send("/api/v2/write", b"m f=1", {"Authorization": "Token " + TOKEN})
        self.assertEqual((status, json.loads(content)["code"]), (503, "unavailable"))
        self.assertTrue(headers.getRawHeaders("retry-after"))


class RequiredAuthTests(DialectSite, unittest.TestCase):
    """UPLOAD_REQUIRES_AUTH with tokens and salts: either passes, nothing else does."""

    def setUp(self):
        self.start_site(make_settings(UPLOAD_TOKENS=TOKENS, UPLOAD_REQUIRES_AUTH=True, CHECKSUM_SALTS=["psk"]))

    @defer.inlineCallbacks
    def test_influx_missing_token_is_401(self):
        """No credentials on /api/v2/write: 401 unauthorized."""
        status, _, content = yield self.send("/api/v2/write", b"m f=1")
        self.assertEqual((status, json.loads(content)["code"]), (401, "unauthorized"))

    @defer.inlineCallbacks
    def test_upload_token_or_checksum(self):
        """/upload: a Bearer token passes, the salted checksum still passes, a wrong or missing token is 403."""
        body = b'{"co2": 500}'
        status, _, _ = yield self.send("/upload", body, {"Content-Type": "application/json", "Authorization": "Bearer " + TOKEN})
        self.assertEqual(status, 200)
        status, _, _ = yield self.send("/upload", body, {"Content-Type": "application/json", "Content-MD5-Salted": salted(body, "psk")})
        self.assertEqual(status, 200)
        status, _, _ = yield self.send("/upload", body, {"Content-Type": "application/json", "Authorization": "Bearer wrong"})
        self.assertEqual(status, 403)
        status, _, _ = yield self.send("/upload", body, {"Content-Type": "application/json"})
        self.assertEqual(status, 403)
        labels = [row["token_label"] for row in self.rows()]
        self.assertEqual(labels, ["lab-gateway", None])


class AirrohrUploadTests(DialectSite, unittest.TestCase):
    """airrohr's "Send data to own API" on /upload."""

    def setUp(self):
        self.start_site(make_settings(UPLOAD_TOKENS=TOKENS))

    @defer.inlineCallbacks
    def test_firmware_request(self):
        """The firmware's request as sent: 200 after the commit, one row, typed values."""
        headers = dict(bodies.AIRROHR_HEADERS, Authorization=basic("", TOKEN))
        status, _, content = yield self.send("/upload", bodies.AIRROHR, headers)
        self.assertEqual(status, 200)
        self.assertEqual(json.loads(content)["saved-in-db"], 1)
        [row] = self.rows()
        self.assertEqual((row["box"], row["software_version"], row["sds_p1"], row["scd30_co2_ppm"], row["signal"], row["gps_timestamp"]),
                         ("esp8266-1234567", "NRZ-2024-135", 12.3, 612, -38, "1970-01-01T00:00:00.000"))
        self.assertEqual(row["token_label"], "lab-gateway")

    @defer.inlineCallbacks
    def test_malformed_is_400(self):
        """A malformed airrohr body is a 400 naming what is wrong."""
        status, _, content = yield self.send("/upload", b'{"esp8266id": "1", "sensordatavalues": {"a": 1}}', {"Content-Type": "application/json"})
        self.assertEqual(status, 400)
        self.assertIn("sensordatavalues", json.loads(content)["error"])


class LoRaWANTests(DialectSite, unittest.TestCase):
    """TTN v3 and ChirpStack v4 webhooks on /upload."""

    def setUp(self):
        self.start_site(make_settings(UPLOAD_TOKENS=TOKENS, UPLOAD_REQUIRES_AUTH=True))
        self.headers = {"Content-Type": "application/json", "Authorization": "Bearer " + TOKEN, "User-Agent": "TheThingsStack/3.30"}

    @defer.inlineCallbacks
    def test_ttn_uplink_stored_once(self):
        """A TTN uplink is one row; the same uplink again is acknowledged and not stored twice."""
        for _ in range(2):
            status, _, _ = yield self.send("/upload", bodies.as_json(bodies.ttn_uplink()), self.headers)
            self.assertEqual(status, 200)
        [row] = self.rows()
        self.assertEqual((row["box"], row["time"], row["co2"], row["battery_volts"], row["gateway_rssi"]),
                         ("co2-node-7", "2024-05-06 07:08:09.012345+00:00", 612, 3.61, -61))

    @defer.inlineCallbacks
    def test_ttn_what_stores_nothing(self):
        """Simulated, join-accept and undecoded messages: 2xx, nothing stored, counted."""
        undecoded = bodies.ttn_uplink()
        del undecoded["uplink_message"]["decoded_payload"]
        for message in [bodies.ttn_uplink(simulated=True), bodies.ttn_uplink(uplink_message=None, join_accept={"session_key_id": "x"}), undecoded]:
            status, _, content = yield self.send("/upload", bodies.as_json(message), self.headers)
            self.assertEqual((status, json.loads(content)["saved-in-db"]), (200, 0))
        self.assertEqual(self.rows(), [])
        skipped = self.ingest.counters["skipped"]
        self.assertEqual(skipped[("http", "ttn-simulated")] + skipped[("http", "ttn-join-accept")] + skipped[("http", "ttn-not-decoded")], 3)
        status, _, metrics = yield self.get("/metrics")
        self.assertIn(b'co2logd_dialect_skipped_total{reason="ttn-simulated",transport="http"} 1.0', metrics)

    @defer.inlineCallbacks
    def test_ttn_needs_token(self):
        """Without a token a TTN uplink is 403, skipped messages too."""
        headers = {"Content-Type": "application/json"}
        status, _, _ = yield self.send("/upload", bodies.as_json(bodies.ttn_uplink()), headers)
        self.assertEqual(status, 403)
        status, _, _ = yield self.send("/upload", bodies.as_json(bodies.ttn_uplink(simulated=True)), headers)
        self.assertEqual(status, 403)

    @defer.inlineCallbacks
    def test_chirpstack(self):
        """An up event is one row, stored once; a join event stores nothing; protobuf is 415."""
        for _ in range(2):
            status, _, _ = yield self.send("/upload?event=up", bodies.as_json(bodies.chirpstack_up()), self.headers)
            self.assertEqual(status, 200)
        status, _, _ = yield self.send("/upload?event=join", bodies.as_json(bodies.chirpstack_up()), self.headers)
        self.assertEqual(status, 200)
        status, _, content = yield self.send("/upload?event=up", b"\x0a\x24protobuf", dict(self.headers, **{"Content-Type": "application/octet-stream"}))
        self.assertEqual(status, 415)
        self.assertIn("JSON", json.loads(content)["error"])
        [row] = self.rows()
        self.assertEqual((row["box"], row["time"], row["co2"], row["gateway_snr"]), ("cellar-co2", "2024-05-06 07:08:09.123456+00:00", 640.0, 10.0))


class LineProtocolUDPTests(SiteMixin, unittest.TestCase):
    """--influx-udp: plain line-protocol datagrams over a real UDP port."""

    @defer.inlineCallbacks
    def test_datagrams(self):
        """A good datagram is stored; a bad one is counted and stores nothing; the listener goes on."""
        ingest = self.make_ingest(make_settings(), clock=reactor)
        service = influx_udp_service("udp:0:interface=127.0.0.1", ingest, reactor, self.settings)
        service.startService()
        self.addCleanup(service.stopService)
        sender = reactor.listenUDP(0, DatagramProtocol(), interface="127.0.0.1")
        self.addCleanup(sender.stopListening)
        for datagram in [b"co2,box=roof ppm=700i 1700000000000000000\n", b"bad line", b"co2,box=roof ppm=701i"]:
            sender.write(datagram, ("127.0.0.1", service.port))
        for _ in range(200):
            if len(rows_in(self.db_path)) >= 2 and service.protocol.counters.as_dict():
                break
            yield task.deferLater(reactor, 0.02, lambda: None)
        yield service.protocol.idle()
        rows = rows_in(self.db_path)
        self.assertEqual([(r["box"], r["ppm"]) for r in rows], [("roof", 700), ("roof", 701)])
        self.assertEqual(rows[0]["transport"], "udp:127.0.0.1")
        self.assertEqual(service.protocol.counters.as_dict()["127.0.0.1"]["rejects"], {"parse": 1})

