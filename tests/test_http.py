"""
HTTP end to end: a real port on 127.0.0.1, a real SQLite file, the
co2logserver routes as a device, a script or a browser uses them.
"""

import csv
import io
import json
import re
import shutil
import socket
import subprocess
from html import unescape
from urllib.parse import quote

from twisted.internet import defer, threads
from twisted.trial import unittest

from tests.helpers import (
    README_CSV,
    README_FORM,
    README_JSON,
    README_MD5,
    README_MSGPACK,
    README_SALT,
    SiteMixin,
    make_settings,
    rows_in,
    salted,
)
from tests.test_store import make_co2logserver_database


class UploadTests(SiteMixin, unittest.TestCase):
    """POST /upload with the original README's examples."""

    @defer.inlineCallbacks
    def test_readme_examples_store_two_rows_each(self):
        """JSON, CSV, form and msgpack from the original README each store 2 rows."""
        self.start_site()
        examples = [
            (README_JSON, "application/json"),
            (README_CSV, "text/csv"),
            (README_FORM, "application/x-www-form-urlencoded"),
            (README_MSGPACK, "application/msgpack"),
            (README_MSGPACK, "application/x-msgpack"),
            (README_JSON, "application/json; charset=utf-8"),
        ]
        for body, content_type in examples:
            status, reply = yield self.post(body, content_type)
            self.assertEqual((status, reply), (200, {"saved-in-db": 2}), content_type)
        rows = rows_in(self.db_path)
        self.assertEqual(len(rows), 2 * len(examples))
        self.assertEqual({(r["time_utc"], r["co2"]) for r in rows}, {(43, 1223), (23, 2351)})
        self.assertEqual({r["transport"] for r in rows}, {"http"})

    @defer.inlineCallbacks
    def test_readme_auth_example(self):
        """The README's checksum is accepted; missing or wrong checksums get 403 and store nothing."""
        self.start_site(make_settings(CHECKSUM_SALTS=[README_SALT], UPLOAD_REQUIRES_AUTH=True))
        status, reply = yield self.post(README_JSON, "application/json")
        self.assertEqual(status, 403)
        self.assertIn("Content-", reply["error"])
        status, reply = yield self.post(README_JSON, "application/json", {"Content-MD5-Salted": "f" * 32})
        self.assertEqual(status, 403)
        self.assertIn("Invalid", reply["error"])
        self.assertEqual(rows_in(self.db_path), [])
        status, reply = yield self.post(README_JSON, "application/json", {"Content-MD5-Salted": README_MD5})
        self.assertEqual((status, reply), (200, {"saved-in-db": 2}))
        self.assertEqual({r["matched_checksums"] for r in rows_in(self.db_path)}, {"md5"})

    @defer.inlineCallbacks
    def test_get_upload_is_not_allowed(self):
        """GET /upload is 405, as a POST-only route."""
        self.start_site()
        status, _, _ = yield self.get("/upload")
        self.assertEqual(status, 405)


# (description, body, content type, extra headers, expected status)
BAD_INPUTS = [
    ("invalid JSON", b'{"co2": [1,', "application/json", {}, 400),
    ("empty body", b"", "application/json", {}, 400),
    ("empty object", b"{}", "application/json", {}, 400),
    ("empty list", b"[]", "application/json", {}, 400),
    ("scalar", b"42", "application/json", {}, 400),
    ("nested list", b'{"co2": [[1]]}', "application/json", {}, 400),
    ("nested object", b'{"co2": [{"a": 1}]}', "application/json", {}, 400),
    ("SQL in a column name", b'{"co2) VALUES (1); DROP TABLE data; --": [1]}', "application/json", {}, 400),
    ("quote in a column name", b'{"co2\\"": [1]}', "application/json", {}, 400),
    ("unicode column name", '{"temperatur_°c": [1]}'.encode("utf-8"), "application/json", {}, 400),
    ("space in a column name", b'{"co 2": [1]}', "application/json", {}, 400),
    ("column name starting with a digit", b'{"2co": [1]}', "application/json", {}, 400),
    ("overlong column name", b'{"' + b"a" * 200 + b'": [1]}', "application/json", {}, 400),
    ("NaN", b'{"co2": [NaN]}', "application/json", {}, 400),
    ("Infinity", b'{"co2": [Infinity]}', "application/json", {}, 400),
    ("mixed lists and scalars", b'{"a": [1, 2], "b": 3}', "application/json", {}, 400),
    ("ragged CSV", b"a,b\n1,2,3\n", "text/csv", {}, 400),
    ("CSV not UTF-8", b"a,b\n\xff\xfe,1\n", "text/csv", {}, 400),
    ("msgpack garbage", b"\xc1\x00\xff\x13", "application/msgpack", {}, 400),
    ("msgpack scalar", b"\x2a", "application/msgpack", {}, 400),
    ("bad form", b"a=1&&=", "application/x-www-form-urlencoded", {}, 400),
    ("wrong content type", README_JSON, "text/plain", {}, 415),
    ("no content type", README_JSON, None, {}, 415),
    ("thousands of new columns", json.dumps({"c%d" % i: [1] for i in range(3000)}).encode(), "application/json", {}, 400),
    ("server column", b'{"transport": ["forged"]}', "application/json", {}, 400),
    ("case duplicate", b'{"co2": [1], "CO2": [2]}', "application/json", {}, 400),
]


class BadInputTests(SiteMixin, unittest.TestCase):
    """Every kind of bad input: a clear 4xx, nothing stored, and the server keeps answering."""

    @defer.inlineCallbacks
    def test_bad_inputs(self):
        """Each bad upload gets its 4xx with an error message and changes nothing."""
        self.start_site()
        self.assertGreaterEqual(len(BAD_INPUTS), 20)
        columns = dict(self.store.columns)
        for description, body, content_type, headers, expected in BAD_INPUTS:
            status, reply = yield self.post(body, content_type, headers)
            self.assertEqual(status, expected, description)
            self.assertIsInstance(reply.get("error"), str, description)
            self.assertTrue(reply["error"], description)
        self.assertEqual(rows_in(self.db_path), [])
        self.assertEqual(self.store.columns, columns)
        status, reply = yield self.post(README_JSON, "application/json")
        self.assertEqual((status, reply), (200, {"saved-in-db": 2}))

    @defer.inlineCallbacks
    def test_oversized_body_refused_before_reading(self):
        """A Content-Length over the limit gets 413 without the body being sent."""
        self.start_site(make_settings(MAX_BODY_SIZE=1000))
        reply = yield threads.deferToThread(
            raw_exchange,
            self.port.getHost().port,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 50000000\r\n\r\n" + b"{" * 100,
        )
        self.assertTrue(reply.startswith(b"HTTP/1.1 413"), reply[:100])
        self.assertIn(b"larger than the limit", reply)
        self.assertEqual(rows_in(self.db_path), [])

    @defer.inlineCallbacks
    def test_oversized_chunked_body_cut_off(self):
        """A chunked body is refused with 413 as soon as it passes the limit."""
        self.start_site(make_settings(MAX_BODY_SIZE=1000))
        chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
        reply = yield threads.deferToThread(
            raw_exchange,
            self.port.getHost().port,
            b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunk * 3,
        )
        self.assertTrue(reply.startswith(b"HTTP/1.1 413"), reply[:100])

    @defer.inlineCallbacks
    def test_body_at_the_limit_is_read(self):
        """A body just under the limit is parsed normally."""
        self.start_site(make_settings(MAX_BODY_SIZE=len(README_JSON)))
        status, reply = yield self.post(README_JSON, "application/json")
        self.assertEqual((status, reply), (200, {"saved-in-db": 2}))


def raw_exchange(port, request):
    """Send raw bytes, return everything the server answers before closing (blocking; run in a thread)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        try:
            s.sendall(request)
        except OSError:
            pass
        data = b""
        while True:
            try:
                part = s.recv(65536)
            except OSError:
                break
            if not part:
                break
            data += part
        return data


class DownloadTests(SiteMixin, unittest.TestCase):
    """GET /download in every format with every parameter."""

    @defer.inlineCallbacks
    def setUp(self):
        self.start_site(make_settings(NAME="my server"))
        body = json.dumps({"co2": [400, 500, 600, 700], "temp": [20.5, 21.5, 22.5, 23.5], "box": ["a", "b", "a", "b"]})
        status, _ = yield self.post(body.encode(), "application/json")
        self.assertEqual(status, 200)

    @defer.inlineCallbacks
    def test_json(self):
        """format=json is a list of row objects with all columns."""
        status, headers, body = yield self.get("/download?format=json")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders("content-type"), ["application/json"])
        rows = json.loads(body)
        self.assertEqual([r["co2"] for r in rows], [400, 500, 600, 700])
        self.assertIn("time_upload_utc", rows[0])

    @defer.inlineCallbacks
    def test_csv_attachment(self):
        """format=csv is an attachment named after the server with a header line."""
        status, headers, body = yield self.get("/download?format=csv&cols=co2,box")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders("content-disposition"), ['attachment; filename="my-server-data.csv"'])
        rows = list(csv.reader(io.StringIO(body.decode())))
        self.assertEqual(rows, [["co2", "box"], ["400", "a"], ["500", "b"], ["600", "a"], ["700", "b"]])

    @defer.inlineCallbacks
    def test_html_default(self):
        """The default format is an HTML table page linking to the CSV."""
        status, headers, body = yield self.get("/download?cols=co2")
        self.assertEqual(status, 200)
        self.assertIn(b"<td>700</td>", body)
        self.assertIn(b"format=csv", body)

    @defer.inlineCallbacks
    def test_parameters(self):
        """cols, number, min_/max_ bounds and order_by combine."""
        path = "/download?format=json&cols=co2,temp,nonexistent&min_co2=450&max_temp=23&order_by=co2,desc&number=1"
        status, _, body = yield self.get(path)
        self.assertEqual(json.loads(body), [{"co2": 600, "temp": 22.5}])

    @defer.inlineCallbacks
    def test_column_order_is_the_requested_one(self):
        """CSV and HTML columns come in the order asked for (co2logserver's came from a set); JSON keys are sorted, as there."""
        for cols in (["box", "co2", "temp"], ["temp", "box", "co2"]):
            _, _, body = yield self.get("/download?format=csv&number=1&cols=" + ",".join(cols))
            self.assertEqual(body.decode().splitlines()[0], ",".join(cols))
            _, _, body = yield self.get("/download?format=html&number=1&cols=" + ",".join(cols))
            self.assertEqual(re.findall(rb"<th>(\w+)</th>", body), [c.encode() for c in cols])
            _, _, body = yield self.get("/download?format=json&number=1&cols=" + ",".join(cols))
            self.assertEqual(list(json.loads(body)[0]), ["box", "co2", "temp"])

    @defer.inlineCallbacks
    def test_bounds_with_spaces_and_colons(self):
        """max_time with a space and colons filters on the stored datetime text (co2logserver ignored such values)."""
        status, _ = yield self.post(b'{"time": [1700000000, 1700003600], "co2": [1, 2]}', "application/json")
        self.assertEqual(status, 200)
        _, _, body = yield self.get("/download?format=json&cols=co2,time&max_time=" + quote("2023-11-14 22:30:00"))
        self.assertEqual(json.loads(body), [{"co2": 1, "time": "2023-11-14 22:13:20+00:00"}])
        _, _, body = yield self.get("/download?format=json&cols=co2&min_time=2023-11-14+22:30:00")
        self.assertEqual(json.loads(body), [{"co2": 2}])

    @defer.inlineCallbacks
    def test_number_is_capped(self):
        """number above MAX_LIMIT_OF_ROWS falls back to it; invalid number is ignored."""
        _, _, body = yield self.get("/download?format=json&number=abc")
        self.assertEqual(len(json.loads(body)), 4)

    @defer.inlineCallbacks
    def test_hostile_parameters_are_inert(self):
        """SQL in parameter names and values changes nothing and returns rows safely."""
        path = "/download?format=json&cols=" + quote("co2;DROP TABLE data") + "&order_by=" + quote("co2 desc;--,asc") \
               + "&min_co2=" + quote("0 OR 1=1")
        status, _, body = yield self.get(path)
        self.assertEqual(status, 200)
        self.assertEqual(len(json.loads(body)), 0)  # '0 OR 1=1' is compared as text, matching no number
        self.assertEqual(len(rows_in(self.db_path)), 4)

    @defer.inlineCallbacks
    def test_unknown_format(self):
        """An unknown format is 400."""
        status, _, body = yield self.get("/download?format=xml")
        self.assertEqual(status, 400)
        self.assertIn("xml", json.loads(body)["error"])


class DownloadAuthTests(SiteMixin, unittest.TestCase):
    """DOWNLOAD_REQUIRES_AUTH: the checksum covers the full path with its query."""

    @defer.inlineCallbacks
    def test_path_checksum(self):
        """Flask's full_path ('/download?format=json') salted is accepted; without it, 403."""
        self.start_site(make_settings(CHECKSUM_SALTS=["psk"], DOWNLOAD_REQUIRES_AUTH=True))
        status, _, _ = yield self.get("/download?format=json")
        self.assertEqual(status, 403)
        checksum = salted(b"/download?format=json", "psk")
        status, _, body = yield self.get("/download?format=json", {"Content-MD5-Salted": checksum})
        self.assertEqual((status, json.loads(body)), (200, []))
        checksum = salted(b"/download?", "psk", "sha256")
        status, _, _ = yield self.get("/download", {"Content-SHA256-Salted": checksum})
        self.assertEqual(status, 200)


class LegacyDatabaseTests(SiteMixin, unittest.TestCase):
    """A database that co2logserver 0.1.2 created is served and appended to."""

    @defer.inlineCallbacks
    def test_serve_and_append(self):
        """Old rows download; new uploads append to the same table."""
        path = self.mktemp()
        make_co2logserver_database(path)
        self.start_site(path=path)
        _, _, body = yield self.get("/download?format=json&cols=co2,time_utc")
        self.assertEqual(json.loads(body), [{"co2": 1223, "time_utc": 43}, {"co2": 2351, "time_utc": 23}])
        status, reply = yield self.post(README_JSON, "application/json")
        self.assertEqual((status, reply), (200, {"saved-in-db": 2}))
        rows = rows_in(path)
        self.assertEqual([r["co2"] for r in rows], [1223, 2351, 1223, 2351])
        self.assertEqual([r["transport"] for r in rows], [None, None, "http", "http"])


class PageTests(SiteMixin, unittest.TestCase):
    """The index and upload-help pages."""

    @defer.inlineCallbacks
    def test_index(self):
        """/ and /index show the name, the row count and the links."""
        self.start_site(make_settings(NAME="<garden>"))
        yield self.post(README_JSON, "application/json")
        for path in ("/", "/index"):
            status, _, body = yield self.get(path)
            self.assertEqual(status, 200)
            self.assertIn(b"&lt;garden&gt;", body)
            self.assertIn(b"<strong>2</strong>", body)
            self.assertIn(b'href="/download"', body)
            self.assertIn(b'href="/uploadhelp"', body)

    @defer.inlineCallbacks
    def test_upload_help_off(self):
        """UPLOAD_HELP = False: /uploadhelp is 404."""
        self.start_site(make_settings(UPLOAD_HELP=False))
        status, _, _ = yield self.get("/uploadhelp")
        self.assertEqual(status, 404)

    @defer.inlineCallbacks
    def test_upload_help_script_works_when_pasted(self):
        """The shell example on /uploadhelp marks its salt as a placeholder (refused as shown); filled in, it uploads 5 rows."""
        if not (shutil.which("curl") and shutil.which("md5sum") and shutil.which("bash")):
            raise unittest.SkipTest("needs bash, curl and md5sum on PATH")
        self.start_site(make_settings(CHECKSUM_SALTS=["s3cret"], UPLOAD_REQUIRES_AUTH=True))
        _, _, body = yield self.get("/uploadhelp")
        script = unescape(re.search(rb'<pre id="script">(.*?)</pre>', body, re.S).group(1).decode())
        self.assertIn("md5sum", script)
        self.assertIn("# PLACEHOLDER: replace YOUR-SALT-HERE", script)
        self.assertNotIn("configured in the server", script)
        self.assertIn(b"Replace the line marked <strong>PLACEHOLDER</strong>", body)
        as_shown = yield threads.deferToThread(
            subprocess.run, ["bash", "-c", script], capture_output=True, timeout=30
        )
        self.assertEqual(json.loads(as_shown.stdout)["reason"], "auth-invalid", as_shown.stderr)
        script = script.replace("SALT=YOUR-SALT-HERE", "SALT='s3cret'")
        result = yield threads.deferToThread(
            subprocess.run, ["bash", "-c", script], capture_output=True, timeout=30
        )
        self.assertEqual(json.loads(result.stdout), {"saved-in-db": 5}, result.stderr)
        self.assertEqual(len(rows_in(self.db_path)), 5)


class AccessLogTests(SiteMixin, unittest.TestCase):
    """The per-request access log is off unless asked for (-v): it costs time on the upload path."""

    @defer.inlineCallbacks
    def logged_requests(self, access_log):
        from twisted.logger import formatEvent, globalLogPublisher
        from twisted.internet import reactor

        from co2logd.web.site import make_site

        self.start_site()
        site = make_site(self.settings, self.ingest, self.store, reactor, access_log=access_log)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = "http://127.0.0.1:{}".format(port.getHost().port)
        lines = []

        def observer(event):
            lines.append(formatEvent(event))

        globalLogPublisher.addObserver(observer)
        try:
            yield self.post(README_JSON, "application/json")
        finally:
            globalLogPublisher.removeObserver(observer)
        return [line for line in lines if "POST /upload" in line]

    @defer.inlineCallbacks
    def test_off_by_default(self):
        """No access-log line for an upload by default."""
        lines = yield self.logged_requests(access_log=False)
        self.assertEqual(lines, [])

    @defer.inlineCallbacks
    def test_on_when_asked(self):
        """access_log=True logs one line per request."""
        lines = yield self.logged_requests(access_log=True)
        self.assertEqual(len(lines), 1)
