"""
``GET /download``: the data as an HTML table, CSV attachment or JSON list.

Parameters as co2logserver 0.1.2: ``format``, ``cols``, ``number``,
``min_<col>``, ``max_<col>``, ``order_by=<col>,asc|desc``.  Names are only
used when they are columns of the table; values are bound.  Rows are written
to the client a chunk at a time.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import Any, Dict, List, Optional
from urllib.parse import unquote_to_bytes, urlencode

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from co2logd.errors import IngestError
from co2logd.ingest import json_default
from co2logd.payloads import text_value
from co2logd.store import Query
from co2logd.web.common import error_reply, escape, finish_quietly, header_pairs, query_args

log = Logger()

FORMATS = {"html": b"text/html; charset=utf-8", "csv": b"text/csv; charset=utf-8", "json": b"application/json"}


def full_path(request) -> bytes:
    """
    What co2logserver's download checksum covers: Flask's ``full_path``, the
    decoded path, ``?``, then the raw query string (``?`` even when empty).
    """
    raw_path, _, query = request.uri.partition(b"?")
    return unquote_to_bytes(raw_path) + b"?" + query


def build_query(args: Dict[str, str], columns: List[str], max_rows: int) -> Query:
    """Turn the download parameters into a :class:`Query` over known columns."""
    known = set(columns)
    wanted = [c for c in args.get("cols", "").split(",") if c in known]
    number = args.get("number", "")
    limit = int(number) if number.isdigit() and int(number) < max_rows else max_rows
    bounds = []
    for column in columns:
        for prefix, op in (("min_", ">="), ("max_", "<=")):
            value = args.get(prefix + column, "")
            if value != "":
                bounds.append((column, op, text_value(value)))
    order_by = None
    parts = args.get("order_by", "").split(",")
    if len(parts) >= 2 and parts[0] in known and parts[1].lower() in ("asc", "desc"):
        order_by = (parts[0], parts[1].lower())
    return Query(columns=list(dict.fromkeys(wanted)), bounds=bounds, order_by=order_by, limit=limit)


class TableWriter:
    """Formats a stream of rows as HTML, CSV or JSON, chunk by chunk."""

    def __init__(self, fmt: str, header: List[str], name: str, args: Dict[str, str]):
        self.fmt = fmt
        self.header = header
        self.name = name
        self.args = args
        self.rows_written = 0

    def start(self) -> bytes:
        if self.fmt == "csv":
            return self._csv([self.header])
        if self.fmt == "json":
            return b"["
        others = {k: v for k, v in self.args.items() if k != "format"}
        csv_link = "/download?" + urlencode(dict(others, format="csv"))
        json_link = "/download?" + urlencode(dict(others, format="json"))
        return (
            "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            "<title>{name} - Data</title><style>body{{font-family:sans-serif;margin:1em}}"
            "table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}</style>"
            "</head><body><h1>{name} - Data</h1><p><a href=\"/\">Home Page</a> · "
            "<a href=\"{csv}\">Download as CSV</a> · <a href=\"{json}\">as JSON</a></p>"
            "<table>\n<tr>{th}</tr>\n"
        ).format(
            name=escape(self.name),
            csv=escape(csv_link),
            json=escape(json_link),
            th="".join("<th>{}</th>".format(escape(h)) for h in self.header),
        ).encode("utf-8")

    def rows(self, rows: List[tuple]) -> bytes:
        if self.fmt == "csv":
            return self._csv(rows)
        if self.fmt == "json":
            parts = []
            for row in rows:
                prefix = "\n" if self.rows_written == 0 else ",\n"
                self.rows_written += 1
                parts.append(prefix + json.dumps(dict(zip(self.header, row)), default=json_default, sort_keys=True))
            return "".join(parts).encode("utf-8")
        return "".join(
            "<tr>{}</tr>\n".format("".join("<td>{}</td>".format(escape(v)) for v in row)) for row in rows
        ).encode("utf-8")

    def end(self) -> bytes:
        if self.fmt == "csv":
            return b""
        if self.fmt == "json":
            return b"\n]\n"
        return b"</table>\n</body></html>\n"

    @staticmethod
    def _csv(rows) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows(rows)
        return buf.getvalue().encode("utf-8")


class DownloadResource(Resource):
    """Serves the data table; ``DOWNLOAD_REQUIRES_AUTH`` checks the path's checksum."""

    isLeaf = True

    def __init__(self, settings, store, ingest):
        super().__init__()
        self.settings = settings
        self.store = store
        self.ingest = ingest

    def render_GET(self, request):
        args = query_args(request)
        fmt = args.get("format", "html")
        if fmt not in FORMATS:
            return error_reply(request, 400, "Unknown format: '{}'; use html, csv or json".format(fmt))
        try:
            self.ingest.check_auth(full_path(request), header_pairs(request), self.settings.DOWNLOAD_REQUIRES_AUTH)
        except IngestError as e:
            return error_reply(request, e.status, e.message)
        query = build_query(args, list(self.store.columns), self.settings.MAX_LIMIT_OF_ROWS)
        d = self.store.select(query)
        d.addCallback(self._stream, request, fmt, args)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    @defer.inlineCallbacks
    def _stream(self, stream, request, fmt, args):
        gone = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))
        request.setHeader(b"content-type", FORMATS[fmt])
        if fmt == "csv":
            filename = "{}-data.csv".format(re.sub(r"\W+", "-", self.settings.NAME))
            request.setHeader(b"content-disposition", 'attachment; filename="{}"'.format(filename).encode("utf-8"))
        writer = TableWriter(fmt, stream.header, self.settings.NAME, args)
        request.write(writer.start())
        try:
            while True:
                rows = yield stream.next_chunk()
                if gone:
                    break
                if not rows:
                    break
                request.write(writer.rows(rows))
        finally:
            yield stream.close()
        if not gone:
            finish_quietly(request, writer.end())

    def _failed(self, failure, request):
        log.failure("Download failed", failure)
        if not request.startedWriting:
            finish_quietly(request, error_reply(request, 500, "The download failed"))
        else:
            finish_quietly(request)

