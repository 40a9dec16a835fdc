"""``GET /health`` (JSON, 200 or 503) and ``GET /metrics`` (Prometheus text format)."""

from __future__ import annotations

import json

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from co2logd.status.health import HealthChecker
from co2logd.status.metrics import Metrics
from co2logd.web.common import error_reply, finish_quietly

log = Logger()


class HealthResource(Resource):
    """200 with ``"healthy": true``, or 503 with the reasons; always the full report."""

    isLeaf = True

    def __init__(self, checker: HealthChecker):
        super().__init__()
        self.checker = checker

    def render_GET(self, request):
        def done(result):
            healthy, report = result
            request.setResponseCode(200 if healthy else 503)
            request.setHeader(b"content-type", b"application/json")
            request.setHeader(b"cache-control", b"no-cache")
            finish_quietly(request, json.dumps(report, default=str, indent=1).encode("utf-8"))

        def failed(failure):
            log.failure("Health check failed", failure)
            finish_quietly(request, error_reply(request, 503, "The health check itself failed"))

        self.checker.check().addCallbacks(done, failed)
        return NOT_DONE_YET


class MetricsResource(Resource):
    """The registry of one :class:`~co2logd.status.metrics.Metrics` in the text exposition format."""

    isLeaf = True

    def __init__(self, metrics: Metrics):
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request):
        def done(text: bytes):
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
            finish_quietly(request, text)

        def failed(failure):
            log.failure("Metrics failed", failure)
            finish_quietly(request, error_reply(request, 500, "The metrics could not be collected"))

        self.metrics.exposition().addCallbacks(done, failed)
        return NOT_DONE_YET
