"""The resource tree and the Site, with a request that refuses oversized bodies early."""

from __future__ import annotations

import io
import json
import os

from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource

from twisted.web.static import File

from co2logd.activity import SourceTracker
from co2logd.health import HealthChecker
from co2logd.metrics import Metrics
from co2logd.web.access import DataAccess, GuardedResource
from co2logd.web.common import allowed_methods
from co2logd.web.dashboard import DashboardResource, static_directory
from co2logd.web.pacing import PacedResource, ViewPacer
from co2logd.web.download import DownloadResource
from co2logd.web.guard import GuardedSite
from co2logd.web.pages import UploadHelpResource
from co2logd.web.plot import PlotResource
from co2logd.web.public import PublicHealthResource, PublicIndexResource
from co2logd.web.status import HealthResource, MetricsResource
from co2logd.web.upload import UploadResource
from co2logd.web.influx import children as influx_children

log = Logger()


class BoundedRequest(server.Request):
    """
    A request whose body may not exceed ``max_body`` bytes.

    A larger ``Content-Length`` is answered with 413 at once, before the body
    is read; a chunked body is cut off (and answered 413) as soon as it
    passes the limit.  Either way the connection is closed.
    """

    max_body = 10 * 1024 * 1024

    def gotLength(self, length):
        self._body_bytes = 0
        self._refused = False
        if length is not None and length > self.max_body:
            self._refuse(length)
            self.content = io.BytesIO()
            return
        super().gotLength(length)

    def handleContentChunk(self, data):
        if self._refused:
            return
        self._body_bytes += len(data)
        if self._body_bytes > self.max_body:
            self._refuse(self._body_bytes)
            return
        super().handleContentChunk(data)

    def render(self, resrc):
        """
        A method the resource does not serve (POST /download, HEAD /upload,
        PUT, OPTIONS, ...) gets co2logd's JSON 405 with ``Allow``, not
        Twisted's HTML 405 or 501 page, nor a 500 from ``render_HEAD``.
        """
        allowed = allowed_methods(resrc)
        if allowed is None or self.method in allowed:
            return super().render(resrc)
        self.setResponseCode(405)
        self.setHeader(b"allow", b", ".join(allowed))
        self.setHeader(b"content-type", b"application/json")
        body = json.dumps({
            "error": "Method {} is not allowed here; use {}".format(
                self.method.decode("latin-1"), ", ".join(m.decode("ascii") for m in allowed)),
            "reason": "method-not-allowed",
        }).encode("utf-8")
        self.setHeader(b"content-length", str(len(body)).encode("ascii"))
        self.write(body)
        self.finish()

    def _refuse(self, size):
        self._refused = True
        count = getattr(self.channel.site, "count", None)
        if count is not None:
            count("too-large")
        log.info("Refused a body of at least {size} bytes (limit {limit})", size=size, limit=self.max_body)
        body = json.dumps(
            {"error": "The payload is larger than the limit of {} bytes (MAX_BODY_SIZE)".format(self.max_body), "reason": "too-large"}
        ).encode("utf-8")
        transport = self.channel.transport
        transport.write(
            b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n"
            b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )
        transport.loseConnection()


class OpenAPIResource(Resource):
    """``GET /openapi.yaml``: the OpenAPI description of these routes (docs/openapi.yaml)."""

    isLeaf = True

    def render_GET(self, request):
        request.setHeader(b"content-type", b"application/yaml; charset=utf-8")
        return openapi_document()


def openapi_document() -> bytes:
    """The OpenAPI description shipped with the package."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "openapi.yaml"), "rb") as f:
        return f.read()


class StaticFiles(File):
    """The package's style sheet and friends; directories are not listed."""

    def directoryListing(self):
        return self.childNotFound


def make_root(settings, ingest, store, clock, extra_children=None, services=()) -> Resource:
    """
    The co2logserver routes, the dashboard, /plot, /health, /metrics and
    /static (plus whatever later features add).  ``services`` is the daemon's
    root MultiService: /health and /metrics read its children at request time
    (see :mod:`co2logd.health`, :mod:`co2logd.metrics`).
    """
    root = Resource()
    sources = SourceTracker(store, settings, clock)
    # DOWNLOAD_REQUIRES_AUTH covers every route that shows data (co2logd.web.access)
    access = DataAccess(settings, clock)
    checker = HealthChecker(settings, store, clock, services, sources)
    # dashboard pages and plots take their turn, so readers cannot crowd out uploads (co2logd.web.pacing)
    pacer = ViewPacer(clock, settings.VIEWS_PER_SECOND, settings.VIEWS_MAX_WAIT_SECONDS)
    index = GuardedResource(
        PacedResource(DashboardResource(settings, store, clock, sources, services), pacer),
        access,
        PublicIndexResource(settings, store),
    )
    root.putChild(b"", index)
    root.putChild(b"index", index)
    root.putChild(b"upload", UploadResource(ingest))
    # InfluxDB's write endpoints, for line-protocol clients (co2logd.web.influx)
    for name, child in influx_children(ingest, clock).items():
        root.putChild(name, child)
    root.putChild(b"download", GuardedResource(DownloadResource(settings, store, ingest, clock), access))
    root.putChild(b"uploadhelp", UploadHelpResource(settings))
    root.putChild(b"plot", GuardedResource(PacedResource(PlotResource(settings, store, clock), pacer), access))
    root.putChild(b"health", GuardedResource(HealthResource(checker), access, PublicHealthResource(checker)))
    root.putChild(b"metrics", GuardedResource(MetricsResource(Metrics(settings, ingest, store, clock, services)), access))
    root.putChild(b"static", StaticFiles(static_directory(), defaultType="application/octet-stream"))
    root.putChild(b"openapi.yaml", OpenAPIResource())
    for name, child in (extra_children or {}).items():
        root.putChild(name, child)
    return root


def make_site(settings, ingest, store, clock, extra_children=None, services=(), access_log=False) -> server.Site:
    """
    A Site over :func:`make_root` whose requests honour ``MAX_BODY_SIZE``,
    with the connection bound and request deadlines of :mod:`co2logd.web.guard`;
    refusals are counted with the ingest service's HTTP rejects.
    """
    request_factory = type("Request", (BoundedRequest,), {"max_body": settings.MAX_BODY_SIZE})
    rejects = ingest.counters["rejects"]

    def count(reason: str) -> None:
        rejects[("http", reason)] += 1

    site = GuardedSite(
        make_root(settings, ingest, store, clock, extra_children, services),
        requestFactory=request_factory,
        max_connections=settings.HTTP_MAX_CONNECTIONS,
        request_timeout=settings.HTTP_REQUEST_TIMEOUT,
        idle_timeout=settings.HTTP_IDLE_TIMEOUT,
        count=count,
        retry_after=settings.WRITE_RETRY_AFTER_SECONDS,
        reactor=clock,
        access_log=access_log,
        shutdown_grace=settings.SHUTDOWN_GRACE_SECONDS,
    )
    site.displayTracebacks = False
    return site
