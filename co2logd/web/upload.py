"""``POST /upload``: bytes and headers to the ingest service, its receipt back as JSON."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from co2logd.dialects.recognise import Skipped, recognise
from co2logd.errors import IngestError
from co2logd.ingest import MISSING_CONTENT_TYPE, Upload
from co2logd.logs import gate
from co2logd.net import host_port
from co2logd.web.common import error_reply, finish_quietly, header_pairs, json_reply

if TYPE_CHECKING:  # for annotations only: no import at run time
    from co2logd.ingest import IngestService


log = Logger(observer=gate)


class UploadResource(Resource):
    """
    Hands each POST body to the ingest service as an :class:`Upload` from ``"http"``.

    A 503 (the database is busy or failed) carries ``Retry-After``.
    """

    isLeaf = True

    def __init__(self, ingest: IngestService):
        super().__init__()
        self.ingest = ingest

    def render_POST(self, request):
        content_type = request.getHeader(b"content-type")
        upload = Upload(
            request.content.read(),
            content_type.decode("latin-1") if content_type is not None else MISSING_CONTENT_TYPE,
            header_pairs(request),
            "http",
        )
        try:
            d = self.dialect_or_upload(request, upload)
        except IngestError as e:
            d = self.ingest.refuse(upload.kind, e)

        def stored(receipt):
            if receipt.replayed:  # Idempotency-Key seen before: the original receipt
                request.setHeader(b"idempotent-replayed", b"true")
            finish_quietly(request, json_reply(request, 200, receipt.as_dict()))

        def refused(failure):
            if failure.check(IngestError):
                error = failure.value
                # a busy server refuses many uploads a second: the ingest counters have them
                (log.debug if error.reason == "busy" else log.info)(
                    "Refused upload from {peer}: {status} {reason}: {message}",
                    peer=host_port(request.getClientAddress()),
                    status=error.status,
                    reason=error.reason,
                    message=error.message,
                )
                if error.status == 503:
                    retry_after = error.retry_after or self.ingest.settings.WRITE_RETRY_AFTER_SECONDS
                    request.setHeader(b"retry-after", str(retry_after).encode("ascii"))
                finish_quietly(request, error_reply(request, error.status, error.message, error.reason))
            else:
                log.failure("Upload failed", failure)
                finish_quietly(request, error_reply(request, 500, "Internal error; nothing was saved"))

        d.addCallbacks(stored, refused)
        return NOT_DONE_YET

    def dialect_or_upload(self, request, upload: Upload):
        """
        The ingest of an airrohr, TTN or ChirpStack body (recognised by its
        keys, parsed here), or of co2logd's own formats (parsed by ingest).
        """
        if len(upload.body) > self.ingest.settings.MAX_BODY_SIZE:
            return self.ingest.ingest(upload)  # its 413, before any parsing
        event = request.args.get(b"event")
        x_sensor = request.getHeader(b"x-sensor")
        outcome = recognise(
            upload.body, upload.content_type,
            event[0].decode("utf-8", "replace") if event else None,
            x_sensor.decode("latin-1") if x_sensor is not None else None,
            self.ingest.box_column, self.time_column,
        )
        if outcome is None:
            return self.ingest.ingest(upload)
        if isinstance(outcome, Skipped):
            return self.ingest.acknowledge(upload, outcome.reason)
        return self.ingest.ingest(dataclasses.replace(upload, table=outcome.table, dedup_key=outcome.dedup_key))

    @property
    def time_column(self) -> str:
        """Where a webhook's uplink time goes: the first of TIME_COLS."""
        return next(iter(self.ingest.time_columns), "time")
