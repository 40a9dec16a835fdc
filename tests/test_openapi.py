"""
The OpenAPI description (docs/openapi.yaml, served at ``GET /openapi.yaml``)
and a schemathesis run against a live daemon: no 5xx, every status, content
type, header and body as described.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import urllib.request

from twisted.internet import defer, threads
from twisted.trial import unittest

from co2logd.web.site import openapi_document
from tests.helpers import REPO, README_JSON, SiteMixin, start_daemon

yaml = None if importlib.util.find_spec("yaml") is None else __import__("yaml")
HAVE_SCHEMATHESIS = importlib.util.find_spec("schemathesis") is not None
NEEDS = "schemathesis is not installed (pip install '.[test]')"

# what must hold for every generated request
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "unsupported_method",
    ]
)
# The default run: the documented examples and the coverage phase (every
# parameter's boundary and invalid values, deterministic), 10 cases per
# operation.  The random phases take most of a minute; ask for them with
# CO2LOGD_SCHEMATHESIS_PHASES=examples,coverage,fuzzing,stateful (and more
# cases with CO2LOGD_SCHEMATHESIS_EXAMPLES=200).
EXAMPLES = os.environ.get("CO2LOGD_SCHEMATHESIS_EXAMPLES", "10")
PHASES = os.environ.get("CO2LOGD_SCHEMATHESIS_PHASES", "examples,coverage")


class DocumentTests(SiteMixin, unittest.TestCase):
    """The description is shipped, served, and covers every route of the site."""

    def test_docs_copy_is_the_served_document(self):
        """docs/openapi.yaml is the file the package serves."""
        with open(os.path.join(REPO, "docs", "openapi.yaml"), "rb") as f:
            self.assertEqual(f.read(), openapi_document())

    @defer.inlineCallbacks
    def test_served_and_complete(self):
        """GET /openapi.yaml answers the document as YAML; every child of the root is a documented path."""
        if yaml is None:
            raise unittest.SkipTest("PyYAML is not installed (it comes with schemathesis: pip install '.[test]')")
        self.start_site()
        status, headers, body = yield self.get("/openapi.yaml")
        self.assertEqual(status, 200)
        self.assertEqual(headers.getRawHeaders(b"content-type"), [b"application/yaml; charset=utf-8"])
        document = yaml.safe_load(body)
        self.assertEqual(document["openapi"], "3.0.3")
        documented = {path.split("/")[1] for path in document["paths"]}
        served = {name.decode() for name in self.site.resource.children}
        self.assertEqual(served, documented)


def run_schemathesis(cwd: str) -> "tuple[int, str, str]":
    """
    Start ``python -m co2logd``, store a few rows, run the schemathesis CLI
    against it, stop the daemon.  Blocking (runs in a thread); every step is
    bounded in time.  Returns (exit status, schemathesis output, daemon output).
    """
    environment = dict(os.environ, PYTHONPATH=REPO)
    environment.pop("CO2LOGSERVER_CONFIG", None)
    # a file, not a pipe: the daemon logs every request, and a full pipe would stop it
    log_path = os.path.join(cwd, "daemon.log")
    daemon, ports = start_daemon(
        [sys.executable, "-m", "co2logd", "--http", "tcp:0:interface=127.0.0.1"], cwd, environment, log_path
    )
    port = ports["HTTP"]
    try:
        url = "http://127.0.0.1:{}".format(port)
        # some rows, so downloads and plots have columns to work on
        for body in (README_JSON, json.dumps({"co2": 612, "box": 7, "temperature_c": 21.5}).encode()):
            request = urllib.request.Request(url + "/upload", data=body, headers={"Content-Type": "application/json"})
            urllib.request.urlopen(request, timeout=10).read()
        result = subprocess.run(
            [sys.executable, "-m", "schemathesis.cli", "run", url + "/openapi.yaml",
             "--checks", CHECKS, "--max-examples", EXAMPLES, "--phases", PHASES, "--generation-database", "none",
             "--no-color", "--request-timeout", "10"],
            cwd=cwd, env=environment, capture_output=True, timeout=150,
        )
        output = (result.stdout + result.stderr).decode("utf-8", "replace")
        code = result.returncode
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return code, output, f.read()


class SchemathesisTests(unittest.TestCase):
    """Generated requests against a live daemon keep to the description."""

    timeout = 200

    @defer.inlineCallbacks
    def test_live_daemon_matches_the_description(self):
        """schemathesis finds no 5xx and no response that differs from docs/openapi.yaml."""
        if not HAVE_SCHEMATHESIS:
            raise unittest.SkipTest(NEEDS)
        cwd = self.mktemp()
        os.makedirs(cwd)
        code, output, daemon_output = yield threads.deferToThread(run_schemathesis, cwd)
        self.assertEqual(code, 0, output[-6000:])
        self.assertIn("passed", output)
        self.assertNotIn("Traceback", daemon_output, daemon_output[-4000:])


class FoundBySchemathesisTests(SiteMixin, unittest.TestCase):
    """Requests schemathesis found answered with 500 or 501, now answered as described."""

    @defer.inlineCallbacks
    def test_times_outside_the_calendar_are_400(self):
        """until=1e30, since=nan, 99999999999y: 400 with a JSON error, not an OverflowError."""
        self.start_site()
        for query in ["until=999999999999999999999999999999", "since=nan", "since=99999999999y", "until=-1e20"]:
            status, _, body = yield self.get("/download?" + query)
            self.assertEqual(status, 400, query)
            self.assertIn("years 1 to 9999", json.loads(body)["error"])
            status, _, _ = yield self.get("/plot?" + query)
            self.assertEqual(status, 400, query)

    @defer.inlineCallbacks
    def test_digits_that_int_refuses(self):
        """'²' passes str.isdigit but not int(): after and width refuse it, number ignores it; a huge after is 400."""
        self.start_site()
        status, _, _ = yield self.get("/download?after=%C2%B2")
        self.assertEqual(status, 400)
        status, _, _ = yield self.get("/download?after=99999999999999999999")
        self.assertEqual(status, 400)
        status, _, _ = yield self.get("/download?number=%C2%B2")
        self.assertEqual(status, 200)
        status, _, _ = yield self.get("/plot?width=%C2%B2")
        self.assertEqual(status, 400)

    @defer.inlineCallbacks
    def test_other_methods_are_405_with_allow(self):
        """TRACE, PUT, DELETE: 405 naming the allowed methods, JSON error, instead of Twisted's 501."""
        import treq

        self.start_site()
        for method, path, allowed in [("TRACE", "/upload", b"POST"), ("PUT", "/download", b"GET, HEAD"), ("DELETE", "/health", b"GET, HEAD")]:
            response = yield treq.request(method, self.url + path, persistent=False)
            body = yield treq.json_content(response)
            self.assertEqual(response.code, 405, (method, path))
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [allowed])
            self.assertIn(method, body["error"])
