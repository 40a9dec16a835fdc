"""The resource tree and the Site (its limits are in :mod:`co2logd.web.limits`)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web import server
from twisted.web.resource import Resource
from twisted.web.static import File

from co2logd.settings import Settings
from co2logd.status.health import HealthChecker
from co2logd.status.metrics import Metrics
from co2logd.status.sources import SourceTracker
from co2logd.store.interfaces import IStore
from co2logd.web.access import DataAccess, GuardedResource
from co2logd.web.common import allowed_methods, error_reply
from co2logd.web.dashboard import DashboardResource, static_directory
from co2logd.web.download import DownloadResource
from co2logd.web.limits import BoundedRequest, GuardedSite
from co2logd.web.pacing import PacedResource, ViewPacer
from co2logd.web.plot import PlotResource
from co2logd.web.public import PublicHealthResource, PublicIndexResource
from co2logd.web.status import HealthResource, MetricsResource
from co2logd.web.upload import UploadResource
from co2logd.web.influx import children as influx_children
from co2logd.web.uploadhelp import UploadHelpResource

if TYPE_CHECKING:  # for annotations only: no import at run time
    from co2logd.ingest import IngestService


log = Logger()


class Co2logdRequest(BoundedRequest):
    """A bounded request that answers methods a resource does not serve with co2logd's JSON 405."""

    def render(self, resrc):
        """
        A method the resource does not serve (POST /download, HEAD /upload,
        PUT, OPTIONS, ...) gets co2logd's JSON 405 with ``Allow``, not
        Twisted's HTML 405 or 501 page, nor a 500 from ``render_HEAD``.
        """
        allowed = allowed_methods(resrc)
        if allowed is None or self.method in allowed:
            return super().render(resrc)
        self.setHeader(b"allow", b", ".join(allowed))
        body = error_reply(
            self, 405,
            "Method {} is not allowed here; use {}".format(
                self.method.decode("latin-1"), ", ".join(m.decode("ascii") for m in allowed)),
            "method-not-allowed",
        )
        self.setHeader(b"content-length", str(len(body)).encode("ascii"))
        self.write(body)
        self.finish()


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


def make_root(settings: Settings, ingest: IngestService, store: IStore, clock: IReactorTime, extra_children=None, services=()) -> Resource:
    """
    The co2logserver routes, the dashboard, /plot, /health, /metrics and
    /static (plus whatever later features add).  ``services`` is the daemon's
    root MultiService: /health and /metrics read its children at request time
    (see :mod:`co2logd.status.health`, :mod:`co2logd.status.metrics`).
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


def make_site(settings: Settings, ingest: IngestService, store: IStore, clock: IReactorTime, extra_children=None, services=(), access_log=False) -> server.Site:
    """
    A Site over :func:`make_root` with the limits of :mod:`co2logd.web.limits`
    (``MAX_BODY_SIZE``, ``HTTP_MAX_CONNECTIONS``, request deadlines);
    refusals are counted with the ingest service's HTTP rejects.
    """
    rejects = ingest.counters["rejects"]

    def count(reason: str) -> None:
        rejects[("http", reason)] += 1

    site = GuardedSite(
        make_root(settings, ingest, store, clock, extra_children, services),
        Co2logdRequest,
        max_body=settings.MAX_BODY_SIZE,
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
