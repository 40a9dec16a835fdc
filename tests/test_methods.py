"""
Every route × every common method over a real port (issue 12, finding 12):
no 500, no critical log event, no HTML 405; a method a route does not serve
is co2logd's JSON 405 with ``Allow``; HEAD works wherever GET does.
"""

import json

import treq
from twisted.internet import defer
from twisted.logger import LogLevel, globalLogPublisher
from twisted.trial import unittest

from co2logd.web.site import allowed_methods
from tests.helpers import README_JSON, SiteMixin

ROUTES = {
    "/": {b"GET", b"HEAD"},
    "/index": {b"GET", b"HEAD"},
    "/upload": {b"POST"},
    "/download": {b"GET", b"HEAD"},
    "/uploadhelp": {b"GET", b"HEAD"},
    "/plot": {b"GET", b"HEAD"},
    "/health": {b"GET", b"HEAD"},
    "/metrics": {b"GET", b"HEAD"},
    "/openapi.yaml": {b"GET", b"HEAD"},
    "/static/co2logd.css": {b"GET", b"HEAD"},
}
METHODS = ("HEAD", "GET", "POST", "PUT", "DELETE", "OPTIONS", "PATCH")


class MethodTests(SiteMixin, unittest.TestCase):
    """The method matrix of every route."""

    def setUp(self):
        self.critical = []

        def observe(event):
            if event.get("log_level") in (LogLevel.critical, LogLevel.error):
                self.critical.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)

    @defer.inlineCallbacks
    def request(self, method, path):
        body = README_JSON if method in ("POST", "PUT", "PATCH") else None
        response = yield treq.request(
            method, self.url + path, data=body, headers={"Content-Type": "application/json"}, persistent=False
        )
        content = yield treq.content(response)
        return response, content

    @defer.inlineCallbacks
    def test_every_route_and_method(self):
        """Served methods answer < 500, others a JSON 405 with the route's Allow; HEAD as GET without a body."""
        self.start_site()
        yield self.post(README_JSON, "application/json")
        for path, served in sorted(ROUTES.items()):
            get_status = None
            for method in METHODS:
                response, content = yield self.request(method, path)
                where = "{} {}".format(method, path)
                self.assertLess(response.code, 500, where)
                if method.encode() in served:
                    self.assertNotEqual(response.code, 405, where)
                    if method == "GET":
                        get_status = response.code
                    continue
                self.assertEqual(response.code, 405, where)
                allow = response.headers.getRawHeaders(b"allow")
                self.assertIsNotNone(allow, where)
                self.assertEqual({m.strip() for m in allow[0].split(b",")}, served, where)
                self.assertEqual(response.headers.getRawHeaders(b"content-type"), [b"application/json"], where)
                if method != "HEAD":
                    reply = json.loads(content)
                    self.assertIn(method, reply["error"], where)
                    self.assertEqual(reply["reason"], "method-not-allowed", where)
            if b"HEAD" in served:
                response, content = yield self.request("HEAD", path)
                self.assertEqual((response.code, content), (get_status, b""), "HEAD " + path)
        self.assertEqual(self.critical, [])

    @defer.inlineCallbacks
    def test_head_upload_is_a_json_405(self):
        """HEAD /upload (only POST is served) is a 405 with ``Allow: POST``, not a 500 with a traceback."""
        self.start_site()
        response, content = yield self.request("HEAD", "/upload")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"POST"])
        self.assertEqual(content, b"")
        self.assertEqual(self.critical, [])

    @defer.inlineCallbacks
    def test_post_download_is_a_json_405(self):
        """POST /download is co2logd's JSON 405, not Twisted's HTML page."""
        self.start_site()
        response, content = yield self.request("POST", "/download")
        self.assertEqual(response.code, 405)
        self.assertEqual(response.headers.getRawHeaders(b"allow"), [b"GET, HEAD"])
        self.assertEqual(json.loads(content)["reason"], "method-not-allowed")

    @defer.inlineCallbacks
    def test_unknown_paths_stay_404_for_every_method(self):
        """A path that is no route is a 404 whatever the method, not a 405 with an empty Allow."""
        self.start_site()
        for method in METHODS:
            response, _ = yield self.request(method, "/no-such-route")
            self.assertEqual(response.code, 404, method)


class AllowedMethodsTests(unittest.TestCase):
    """The unit that reads a resource's methods."""

    def test_head_only_with_get(self):
        """HEAD is offered exactly when GET is (Resource's render_HEAD only runs render_GET)."""
        from twisted.web.resource import Resource

        class PostOnly(Resource):
            def render_POST(self, request):
                return b""

        class GetOnly(Resource):
            def render_GET(self, request):
                return b""

        self.assertEqual(allowed_methods(PostOnly()), [b"POST"])
        self.assertEqual(allowed_methods(GetOnly()), [b"GET", b"HEAD"])

    def test_error_pages_render_every_method(self):
        """A resource that overrides render() itself (404 pages) is left to answer any method."""
        from twisted.web.resource import NoResource

        self.assertIsNone(allowed_methods(NoResource()))
