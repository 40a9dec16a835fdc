"""
What a request without credentials sees when ``DOWNLOAD_REQUIRES_AUTH`` is
on (see :mod:`co2logd.web.access`):

* ``/`` and ``/index``: the server name and the row count, as
  co2logserver's index page showed with the setting, and (with
  ``DASHBOARD_TOKEN``) a form to open the dashboard;
* ``/health``: the status line for monitors, ``{"status": "ok"}`` (200) or
  ``{"status": "unhealthy"}`` (503), without reasons, sources or boxes.
"""

from __future__ import annotations

import json

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from co2logd.settings import Settings
from co2logd.status.health import HealthChecker
from co2logd.store.interfaces import IStore
from co2logd.web.common import finish_quietly
from co2logd.web.html import escape, page


log = Logger()


class PublicIndexResource(Resource):
    """Name, row count, links, and the token form."""

    isLeaf = True

    def __init__(self, settings: Settings, store: IStore):
        super().__init__()
        self.settings = settings
        self.store = store

    def render_GET(self, request):
        refusal = getattr(request, "access_refusal", None)
        if refusal is not None and refusal.reason != "auth-missing":
            request.setResponseCode(refusal.status)

        def done(count: int) -> None:
            request.setHeader(b"content-type", b"text/html; charset=utf-8")
            finish_quietly(request, self._page(count, refusal))

        def failed(failure) -> None:
            log.failure("Public index failed", failure)
            request.setResponseCode(500)
            finish_quietly(request, page(self.settings.NAME, "<p>The database cannot be read.</p>"))

        self.store.row_count().addCallbacks(done, failed)
        return NOT_DONE_YET

    def _page(self, count: int, refusal) -> bytes:
        settings = self.settings
        name = escape(settings.NAME)
        problem = ""
        if refusal is not None and refusal.reason != "auth-missing":
            problem = '<p class="warn">{}</p>'.format(escape(refusal.message))
        form = ""
        if settings.DASHBOARD_TOKEN:
            form = (
                '<form method="get" action=""><label>Dashboard token: '
                '<input type="password" name="token" autocomplete="current-password" required></label> '
                '<button type="submit">Open the dashboard</button></form>'
            )
        upload_help = ' · <a href="/uploadhelp">How to upload data</a>' if settings.UPLOAD_HELP else ""
        body = (
            "<h1>{name}</h1><p>There are <strong>{count}</strong> rows in the database.</p>"
            "<p>The data is shown only with authentication (DOWNLOAD_REQUIRES_AUTH).</p>{problem}{form}"
            '<p><a href="/download">Download data</a> (a signed request){upload_help} · '
            '<a href="/health">Health</a></p>'
        ).format(name=name, count=int(count), problem=problem, form=form, upload_help=upload_help)
        return page(settings.NAME, body)


class PublicHealthResource(Resource):
    """The health status and its HTTP code, nothing else."""

    isLeaf = True

    def __init__(self, checker: HealthChecker):
        super().__init__()
        self.checker = checker

    def render_GET(self, request):
        def done(result) -> None:
            healthy = result[0]
            self._reply(request, healthy)

        def failed(failure) -> None:
            log.failure("Health check failed", failure)
            self._reply(request, False)

        self.checker.check().addCallbacks(done, failed)
        return NOT_DONE_YET

    @staticmethod
    def _reply(request, healthy: bool) -> None:
        request.setResponseCode(200 if healthy else 503)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-cache")
        finish_quietly(request, json.dumps({"status": "ok" if healthy else "unhealthy"}).encode("utf-8"))
