"""
``DOWNLOAD_REQUIRES_AUTH`` covers every route that shows data (issue 12,
finding 5), over a real port: without credentials no response carries a
value, a box name or a source address; with a signed request, the dashboard
token or its session cookie, they show.
"""

import json
import os
from http.cookies import SimpleCookie

import treq
from twisted.internet import defer, reactor, task, threads
from twisted.trial import unittest

from co2logd.ingest import Upload
from co2logd.settings import SettingsError
from co2logd.web.access import COOKIE, Sessions, without_token
from co2logd.web.site import make_site
from tests.helpers import SiteMixin, make_settings, salted

TOKEN = "correct-horse-battery-staple"
BOX = "zanzibar-box-7731"
VALUE = 31337
SOURCE = "udp:10.9.8.7"
SECRETS = (BOX.encode(), str(VALUE).encode(), b"10.9.8.7")
PATHS = (
    "/", "/index", "/?since=365d", "/?box=" + BOX, "/download", "/download?format=json", "/download?format=csv",
    "/plot", "/plot?cols=co2&since=365d", "/health", "/metrics", "/uploadhelp", "/openapi.yaml",
    "/no-such-route",
)
METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS")


def protected(**values):
    """Settings with DOWNLOAD_REQUIRES_AUTH, a salt and the dashboard token."""
    values.setdefault("DASHBOARD_TOKEN", TOKEN)
    return make_settings(CHECKSUM_SALTS=["psk"], DOWNLOAD_REQUIRES_AUTH=True, **values)


class AccessMixin(SiteMixin):
    """A site with seeded data: a distinctive box and value over HTTP and a UDP source address."""

    @defer.inlineCallbacks
    def seed(self):
        body = json.dumps({"co2": [VALUE], "box": [BOX]}).encode()
        status, reply = yield self.post(body, "application/json")
        self.assertEqual(status, 200, reply)
        yield self.ingest.ingest(Upload(body, "application/json", [], SOURCE))

    @defer.inlineCallbacks
    def fetch(self, method, path, headers=None):
        response = yield treq.request(
            method, self.url + path, headers=headers or {}, persistent=False, allow_redirects=False
        )
        content = yield treq.content(response)
        return response, content

    def assertNoSecrets(self, where, response, content):
        """Neither the body nor any header carries the box, the value or the source address."""
        headers = b"\n".join(
            name + b": " + value for name, values in response.headers.getAllRawHeaders() for value in values
        )
        for secret in SECRETS:
            self.assertNotIn(secret, content, where)
            self.assertNotIn(secret, headers, where)
        self.assertNotIn(b"<svg", content, where)


class WithoutCredentialsTests(AccessMixin, unittest.TestCase):
    """The setting on, nothing sent: no route leaks."""

    @defer.inlineCallbacks
    def test_no_route_leaks_data(self):
        """Every route × method, no credentials (or wrong ones): no value, box name, source address or plot."""
        self.start_site(protected(HEALTH_SILENT_SOURCES=True))
        yield self.seed()
        wrong = (
            {},
            {"Authorization": "Bearer wrong-token-wrong-token"},
            {"Cookie": COOKIE.decode() + "=1999999999.00.abc"},
            {"Content-MD5-Salted": salted(b"/download?", "not-the-salt")},
        )
        for headers in wrong:
            for path in PATHS + ("/?token=wrong-token-wrong-token", "/plot?token="):
                for method in METHODS:
                    response, content = yield self.fetch(method, path, headers)
                    where = "{} {} {}".format(method, path, headers)
                    self.assertLess(response.code, 500, where)
                    self.assertNoSecrets(where, response, content)

    @defer.inlineCallbacks
    def test_public_views(self):
        """/ shows name and row count (as co2logserver); /health only its status; data routes 403."""
        self.start_site(protected(NAME="greenhouse"))
        yield self.seed()
        response, content = yield self.fetch("GET", "/")
        self.assertEqual(response.code, 200)
        self.assertIn(b"greenhouse", content)
        self.assertIn(b"<strong>2</strong>", content)
        self.assertIn(b'name="token"', content)
        response, content = yield self.fetch("GET", "/health")
        self.assertEqual((response.code, json.loads(content)), (200, {"status": "ok"}))
        for path in ("/download", "/plot", "/metrics"):
            response, content = yield self.fetch("GET", path)
            self.assertEqual(response.code, 403, path)
            reply = json.loads(content)
            self.assertEqual(reply["reason"], "auth-missing", path)
            self.assertIn("DASHBOARD_TOKEN", reply["error"].replace("dashboard token", "DASHBOARD_TOKEN"), path)

    @defer.inlineCallbacks
    def test_unhealthy_status_line(self):
        """An unhealthy daemon is a 503 status line without the reasons (which name boxes)."""
        # a source in HEALTH_WATCHED_SOURCES is watched from its first upload (issue 12, finding 9)
        self.start_site(protected(HEALTH_WATCHED_SOURCES=[BOX], DASHBOARD_SILENT_SECONDS=1))
        yield self.seed()
        yield task.deferLater(reactor, 1.5, lambda: None)
        response, content = yield self.fetch("GET", "/health")
        self.assertEqual((response.code, json.loads(content)), (503, {"status": "unhealthy"}))
        response, content = yield self.fetch("GET", "/health", {"Authorization": "Bearer " + TOKEN})
        self.assertEqual(response.code, 503)
        self.assertIn(BOX, " ".join(json.loads(content)["reasons"]))


class WithCredentialsTests(AccessMixin, unittest.TestCase):
    """The token, its session or a signed request show the data."""

    def assertShows(self, where, response, content, secret):
        self.assertEqual(response.code, 200, where)
        self.assertIn(secret, content, where)

    @defer.inlineCallbacks
    def test_token_once_then_session_cookie(self):
        """?token= answers 303 without the token and a HttpOnly SameSite=Strict cookie that opens every data route."""
        self.start_site(protected(DASHBOARD_SESSION_SECONDS=600))
        yield self.seed()
        response, content = yield self.fetch("GET", "/?since=365d&token=" + TOKEN)
        self.assertEqual(response.code, 303)
        self.assertEqual(response.headers.getRawHeaders(b"location"), [b"/?since=365d"])
        (set_cookie,) = response.headers.getRawHeaders(b"set-cookie")
        attributes = [a.strip().lower() for a in set_cookie.split(b";")]
        self.assertIn(b"httponly", attributes)
        self.assertIn(b"samesite=strict", attributes)
        self.assertIn(b"max-age=600", attributes)
        self.assertIn(b"path=/", attributes)
        self.assertNotIn(TOKEN.encode(), set_cookie)
        cookie = SimpleCookie(set_cookie.decode())[COOKIE.decode()].value
        session = {"Cookie": "{}={}".format(COOKIE.decode(), cookie)}
        response, content = yield self.fetch("GET", "/", session)
        self.assertShows("/", response, content, BOX.encode())
        self.assertIn(str(VALUE).encode(), content)
        self.assertIn(b"10.9.8.7", content)
        response, content = yield self.fetch("GET", "/download?format=json", session)
        self.assertShows("/download", response, content, BOX.encode())
        response, content = yield self.fetch("GET", "/plot?cols=co2&since=365d", session)
        self.assertShows("/plot", response, content, b"<svg")
        response, content = yield self.fetch("GET", "/health", session)
        self.assertShows("/health", response, content, b"10.9.8.7")
        response, content = yield self.fetch("GET", "/metrics", session)
        self.assertShows("/metrics", response, content, b"co2logd_")

    @defer.inlineCallbacks
    def test_bearer_token(self):
        """Authorization: Bearer DASHBOARD_TOKEN (a scraper, a monitor) opens the data routes."""
        self.start_site(protected())
        yield self.seed()
        bearer = {"Authorization": "Bearer " + TOKEN}
        for path, secret in (("/", BOX.encode()), ("/health", BOX.encode()), ("/metrics", b"co2logd_"),
                             ("/download?format=csv", BOX.encode())):
            response, content = yield self.fetch("GET", path, bearer)
            self.assertShows(path, response, content, secret)

    @defer.inlineCallbacks
    def test_signed_request(self):
        """A salted checksum of the path and query opens that request, on every data route (co2logserver's download scheme)."""
        self.start_site(protected(DASHBOARD_TOKEN=None))
        yield self.seed()
        for path, secret in (("/download?format=json", BOX.encode()), ("/", BOX.encode()),
                             ("/plot?cols=co2&since=365d", b"<svg"), ("/health", b"10.9.8.7")):
            response, content = yield self.fetch("GET", path, {"Content-SHA256-Salted": salted(path.encode() if "?" in path else path.encode() + b"?", "psk", "sha256")})
            self.assertShows(path, response, content, secret)
        # without a token there is no form and ?token= opens nothing
        response, content = yield self.fetch("GET", "/?token=" + TOKEN)
        self.assertEqual(response.code, 403)
        self.assertNoSecrets("/?token=", response, content)

    @defer.inlineCallbacks
    def test_setting_off_shows_everything(self):
        """Without DOWNLOAD_REQUIRES_AUTH the routes are open, as before; ?token= is just ignored."""
        self.start_site(make_settings(DASHBOARD_TOKEN=TOKEN))
        yield self.seed()
        response, content = yield self.fetch("GET", "/?token=whatever")
        self.assertShows("/", response, content, BOX.encode())


class SessionExpiryTests(AccessMixin, unittest.TestCase):
    """Sessions end after DASHBOARD_SESSION_SECONDS on the injected clock."""

    @defer.inlineCallbacks
    def test_session_expires(self):
        """A session cookie opens the dashboard until its lifetime has passed on the site's clock."""
        settings = protected(DASHBOARD_SESSION_SECONDS=60)
        ingest = self.make_ingest(settings)
        site = make_site(settings, ingest, self.store, self.clock)
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.url = "http://127.0.0.1:{}".format(port.getHost().port)
        yield ingest.ingest(Upload(json.dumps({"co2": [VALUE], "box": [BOX]}).encode(), "application/json", [], "http"))
        response, _ = yield self.fetch("GET", "/?token=" + TOKEN)
        cookie = SimpleCookie(response.headers.getRawHeaders(b"set-cookie")[0].decode())[COOKIE.decode()].value
        session = {"Cookie": "{}={}".format(COOKIE.decode(), cookie)}
        response, content = yield self.fetch("GET", "/download?format=json", session)
        self.assertEqual(response.code, 200)
        self.clock.advance(61)
        response, content = yield self.fetch("GET", "/download?format=json", session)
        self.assertEqual(response.code, 403)
        self.assertNoSecrets("expired", response, content)


class UnitTests(unittest.TestCase):
    """Sessions, the redirect target and the setting's checks."""

    def test_sessions(self):
        """A cookie is valid until it expires, for its own token only, and cannot be stretched."""
        sessions = Sessions(TOKEN, 100)
        value = sessions.issue(1000)
        self.assertTrue(sessions.valid(value, 1099))
        self.assertFalse(sessions.valid(value, 1100))
        self.assertFalse(Sessions(TOKEN + "x", 100).valid(value, 1001))
        expiry, nonce, mac = value.split(b".")
        self.assertFalse(sessions.valid(b"9999." + nonce + b"." + mac, 1001))
        for junk in (None, b"", b"x", b"1.2", b"." * 300, b"1e9.a.b"):
            self.assertFalse(sessions.valid(junk, 1001))

    def test_without_token(self):
        """The token argument is dropped, the others kept in order."""
        self.assertEqual(without_token(b"/?token=abc"), b"/")
        self.assertEqual(without_token(b"/plot?cols=co2&token=abc&since=24h"), b"/plot?cols=co2&since=24h")

    def test_short_token_refused(self):
        """A dashboard token shorter than 16 characters is a settings error."""
        self.assertRaises(SettingsError, make_settings, DASHBOARD_TOKEN="short")


class BrowserSessionTests(AccessMixin, unittest.TestCase):
    """Headless Chromium: the token once, then the session cookie, in a real browser."""

    def setUp(self):
        from tests.test_browser import CHROMIUM

        if not os.path.exists(CHROMIUM):
            raise unittest.SkipTest("needs Debian's chromium at {} (apt-get install chromium)".format(CHROMIUM))

    @defer.inlineCallbacks
    def dom(self, path):
        from tests.test_browser import chromium

        base = self.mktemp()
        os.makedirs(base)
        result = yield threads.deferToThread(
            chromium, self.url + path, os.path.join(base, "profile"), os.path.join(base, "net.json"), "--dump-dom"
        )
        self.assertEqual(result.returncode, 0, result.stderr[-2000:])
        return result.stdout.decode("utf-8")

    @defer.inlineCallbacks
    def test_browser_logs_in_with_the_token(self):
        """/?token= in Chromium lands on the dashboard with the data; a fresh browser on / sees only the public page."""
        self.start_site(protected())
        yield self.seed()
        dom = yield self.dom("/?since=365d&token=" + TOKEN)
        self.assertIn(BOX, dom)
        self.assertIn(str(VALUE), dom)
        self.assertIn('class="series"', dom)
        dom = yield self.dom("/?since=365d")
        self.assertNotIn(BOX, dom)
        self.assertNotIn(str(VALUE), dom)
        self.assertIn('name="token"', dom)


class EveryRouteDecidedTests(AccessMixin, unittest.TestCase):
    """A new route must say whether it shows data: guarded, or on the list of routes that show none."""

    SHOW_NO_DATA = {b"upload", b"write", b"api", b"uploadhelp", b"static", b"openapi.yaml"}  # /write, /api/v2/write: write-only

    def test_every_child_of_the_root_is_guarded_or_listed(self):
        """Every child of make_root is a GuardedResource, except the routes that show no stored data."""
        from co2logd.web.access import GuardedResource
        from co2logd.web.site import make_root

        ingest = self.make_ingest(protected())
        root = make_root(self.settings, ingest, self.store, self.clock)
        unguarded = {name for name, child in root.children.items() if not isinstance(child, GuardedResource)}
        self.assertEqual(unguarded, self.SHOW_NO_DATA)
