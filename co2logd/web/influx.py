"""
InfluxDB's write endpoints: ``POST /write`` (1.x) and ``POST /api/v2/write`` (2.x).

The body is line protocol whatever the ``Content-Type`` says (airrohr sends
``application/x-www-form-urlencoded``; it is never read as a form), possibly
``Content-Encoding: gzip`` (inflated up to ``MAX_BODY_SIZE``).  Each point
becomes a row (:mod:`co2logd.dialects.influx`), and the batch goes through
the ingest service as one atomic upload.

Answers are InfluxDB's: 204 once the rows are committed; errors as
``{"code": "...", "message": "..."}`` with ``X-Platform-Error-Code``:
400 ``invalid`` (the message names the bad line), 401 ``unauthorized``
(a wrong or missing upload token), 413, 503 ``unavailable`` with
``Retry-After``.  ``db``/``rp`` and ``org``/``bucket`` are accepted and not
used: everything lands in co2logd's one table.
"""

from __future__ import annotations

import json
from typing import Dict, Optional, Tuple

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from co2logd.dialects import influx, lineprotocol
from co2logd.errors import IngestError
from co2logd.ingest import Upload
from co2logd.logs import gate
from co2logd.net import host_port
from co2logd.web.common import finish_quietly, header_pairs
from co2logd.web.gzipped import content_encoding, inflate

log = Logger(observer=gate)

#: precision names each API takes (InfluxDB 2.x's v1-compatible /write also takes "ns")
V1_PRECISIONS = ("ns", "n", "u", "ms", "s", "m", "h")
V2_PRECISIONS = ("ns", "us", "ms", "s")

#: the media type recorded for a line-protocol batch (idempotency keys digest it with the body)
LINE_PROTOCOL = "text/plain; format=line-protocol"

_CODES = {400: "invalid", 401: "unauthorized", 403: "forbidden", 404: "not found", 409: "conflict",
          413: "request too large", 415: "unsupported media type", 503: "unavailable"}


def influx_error(request, status: int, message: str) -> bytes:
    """InfluxDB's error answer: ``{"code", "message"}`` and the ``X-Platform-Error-Code`` header."""
    code = _CODES.get(status, "internal error")
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"x-platform-error-code", code.encode("ascii"))
    request.setHeader(b"x-influxdb-error", message.encode("utf-8", "replace")[:1000])
    return json.dumps({"code": code, "message": message}).encode("utf-8")


def _first(request, name: bytes) -> Optional[str]:
    values = request.args.get(name)
    return values[0].decode("utf-8", "replace") if values else None


class WriteResource(Resource):
    """
    One InfluxDB write endpoint.

    :param ingest: the ingest service
    :param precisions: the ``precision`` values this API takes
    :param clock: gives the arrival time of points without a timestamp
    :param password_parameter: the query parameter carrying a token (``p`` on 1.x)
    """

    isLeaf = True

    def __init__(self, ingest, precisions: Tuple[str, ...], clock, password_parameter: Optional[bytes] = None):
        super().__init__()
        self.ingest = ingest
        self.precisions = precisions
        self.clock = clock
        self.password_parameter = password_parameter

    def render_POST(self, request):
        try:
            d = self.ingest.ingest(self.upload_of(request))
        except IngestError as error:
            d = self.ingest.refuse("http", error)

        def stored(receipt):
            request.setResponseCode(204)
            finish_quietly(request)

        def failed(failure):
            if failure.check(IngestError):
                finish_quietly(request, self.refused(request, failure.value))
            else:
                log.failure("Line-protocol write failed", failure)
                finish_quietly(request, influx_error(request, 500, "internal error; nothing was saved"))

        d.addCallbacks(stored, failed)
        return NOT_DONE_YET

    def upload_of(self, request) -> Upload:
        """The request as an Upload of rows; a 4xx IngestError for what is wrong with it."""
        precision = _first(request, b"precision") or "ns"
        if precision not in self.precisions:
            raise IngestError(400, "parse", "invalid precision {!r}: use one of {}".format(precision[:20], ", ".join(self.precisions)))
        limit = self.ingest.settings.MAX_BODY_SIZE
        body = request.content.read()
        coding = content_encoding(request.getHeader(b"content-encoding"))
        if coding == "gzip":
            body = inflate(body, limit)
        elif coding != "identity":
            raise IngestError(415, "content-encoding", "Content-Encoding {!r} is not supported: use gzip or identity".format(coding[:40]))
        try:
            table, _ = influx.table_of_body(body, precision, self.clock.seconds(), self.ingest.settings.MAX_ROWS_PER_UPLOAD)
        except lineprotocol.LineProtocolError as e:
            raise IngestError(400, "parse", str(e)) from None
        except lineprotocol.TooManyPoints as e:
            raise IngestError(
                400, "too-many-rows", "more than {} points in one write (MAX_ROWS_PER_UPLOAD)".format(e.limit)
            ) from None
        password = _first(request, self.password_parameter) if self.password_parameter else None
        return Upload(body, LINE_PROTOCOL, header_pairs(request), "http", table=table, password=password)

    def refused(self, request, error: IngestError) -> bytes:
        """The InfluxDB answer for a refusal (also logged)."""
        (log.debug if error.reason == "busy" else log.info)(
            "Refused line-protocol write from {peer}: {status} {reason}: {message}",
            peer=host_port(request.getClientAddress()), status=error.status, reason=error.reason, message=error.message,
        )
        status = error.status
        if status == 403 and error.reason.startswith("auth"):
            status = 401  # InfluxDB answers a missing or wrong token with 401
        if status == 503:
            retry_after = getattr(error, "retry_after", None) or self.ingest.settings.WRITE_RETRY_AFTER_SECONDS
            request.setHeader(b"retry-after", str(retry_after).encode("ascii"))
        return influx_error(request, status, error.message)


def api_v2(ingest, clock) -> Resource:
    """``/api`` with ``/api/v2/write`` under it."""
    api = Resource()
    v2 = Resource()
    api.putChild(b"v2", v2)
    v2.putChild(b"write", WriteResource(ingest, V2_PRECISIONS, clock))
    return api


def write_v1(ingest, clock) -> WriteResource:
    """``/write``: 1.x precisions, a token in ``p=`` too."""
    return WriteResource(ingest, V1_PRECISIONS, clock, password_parameter=b"p")


def children(ingest, clock) -> Dict[bytes, Resource]:
    """The routes to add to the site's root."""
    return {b"write": write_v1(ingest, clock), b"api": api_v2(ingest, clock)}
