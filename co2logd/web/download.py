"""
``GET /download``: the data as an HTML table, CSV attachment or JSON list.

Parameters as co2logserver 0.1.2: ``format``, ``cols``, ``number``,
``min_<col>``, ``max_<col>``, ``order_by=<col>,asc|desc``.  Names are only
used when they are columns of the table; values are bound.  Rows are read
and written ``DOWNLOAD_CHUNK_ROWS`` at a time by a producer
(:mod:`co2logd.web.producer`), only as fast as the client reads them.

co2logd adds (issue 5): ``since``/``until`` on the upload time (``24h``,
``2024-05-01``, UNIX seconds; see :mod:`co2logd.timerange`), ``box=`` and
``source=`` (the transport column) filters, and paging: ``after=<rowid>``
returns the rows after that rowid in rowid order (``after=0`` for the first
page, ``number`` rows per page) and, when more follow, a
``Link: <…>; rel="next"`` header (and a link in the HTML view).
"""

from __future__ import annotations

import csv
import datetime
import io
import json
import re
import time
from typing import Any, Dict, List, Optional
from urllib.parse import unquote_to_bytes, urlencode

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from co2logd.payloads import text_value
from co2logd.store import Query
from co2logd.timerange import TimeRangeError, parse_time, time_text
from co2logd.web.common import error_reply, escape, finish_quietly, query_args
from co2logd.web.formulas import neutralise_cell
from co2logd.web.producer import RowProducer

log = Logger()

FORMATS = {"html": b"text/html; charset=utf-8", "csv": b"text/csv; charset=utf-8", "json": b"application/json"}


def json_default(value: Any) -> Any:
    """JSON encoding of the values a download holds: datetimes as ISO text, bytes as UTF-8 text."""
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


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
    limit = int(number) if is_whole_number(number) and int(number) < max_rows else max_rows
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


MAX_ROWID = 2**63 - 1

#: cells per chunk at most: a wide table is read in fewer rows at a time, so a
#: chunk (what a slow client holds, and one turn of the reactor's formatting) stays small
DOWNLOAD_CHUNK_CELLS = 20_000


def chunk_rows(setting: int, columns: int) -> int:
    """Rows per chunk: ``DOWNLOAD_CHUNK_ROWS``, fewer for wide tables (at most DOWNLOAD_CHUNK_CELLS cells)."""
    return max(1, min(setting, DOWNLOAD_CHUNK_CELLS // max(1, columns)))


def is_whole_number(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also takes '²', which ``int`` refuses)."""
    return text.isascii() and text.isdigit()


class DownloadArgumentError(ValueError):
    """A co2logd download parameter that cannot be used; the message says why."""


def add_range_and_paging(
    query: Query, args: Dict[str, str], settings, columns: List[str], now: float, rowid: str = "rowid"
) -> Optional[int]:
    """
    Add ``since``/``until``/``box``/``source`` bounds to ``query`` and, with
    ``after``, switch it to rowid order from that rowid; return ``after``
    (None when not paging).  ``rowid`` is the store's name for the rowid
    (``Store.rowid``: a column may hide ``rowid``).  Raises
    DownloadArgumentError or TimeRangeError.
    """
    until = parse_time(args["until"], now) if args.get("until") else None
    if args.get("since"):
        since = parse_time(args["since"], until if until is not None else now)
        query.bounds.append((settings.UPLOAD_TIME_COL, ">=", time_text(since)))
    if until is not None:
        # stored times are longer than the bound, so "<=" keeps [since, until)
        query.bounds.append((settings.UPLOAD_TIME_COL, "<=", time_text(until)))
    for arg, column in (("box", settings.OSEM_BOX_COL), ("source", settings.TRANSPORT_COL)):
        value = args.get(arg, "")
        if value != "":
            if column not in columns:
                raise DownloadArgumentError("There is no column {!r} to filter by {}".format(column, arg))
            query.bounds.append((column, "=", text_value(value) if arg == "box" else value))
    after = args.get("after", "")
    if after == "":
        return None
    if not is_whole_number(after) or int(after) >= MAX_ROWID:
        raise DownloadArgumentError("after must be a rowid (a whole number, 0 for the first page)")
    query.bounds.append((rowid, ">=", int(after) + 1))
    query.order_by = (rowid, "asc")
    return int(after)


def next_page_link(request, args: Dict[str, str], next_after: int) -> str:
    """The URL of the next page: the same arguments with ``after`` moved on."""
    path = request.uri.partition(b"?")[0].decode("utf-8", "replace")
    return path + "?" + urlencode(dict(args, after=str(next_after)))


class TableWriter:
    """Formats a stream of rows as HTML, CSV or JSON, chunk by chunk."""

    def __init__(
        self, fmt: str, header: List[str], name: str, args: Dict[str, str], next_link: Optional[str] = None,
        neutralise_formulas: bool = True,
    ):
        self.fmt = fmt
        self.neutralise_formulas = neutralise_formulas
        self.header = header
        self.name = name
        self.args = args
        self.next_link = next_link
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
        more = '<p><a rel="next" href="{}">Next page</a></p>\n'.format(escape(self.next_link)) if self.next_link else ""
        return "</table>\n{}</body></html>\n".format(more).encode("utf-8")

    def _csv(self, rows) -> bytes:
        if self.neutralise_formulas:
            rows = ([neutralise_cell(v) for v in row] for row in rows)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\r\n").writerows(rows)
        return buf.getvalue().encode("utf-8")


class DownloadResource(Resource):
    """Serves the data table (behind :class:`co2logd.web.access.GuardedResource` for ``DOWNLOAD_REQUIRES_AUTH``)."""

    isLeaf = True

    def __init__(self, settings, store, ingest, clock=None):
        super().__init__()
        self.settings = settings
        self.store = store
        self.ingest = ingest
        self.clock = clock
        # formats the chunks of all downloads in turns of at most 10 ms, on the injected clock
        self.cooperator = None if clock is None else task.Cooperator(scheduler=lambda work: clock.callLater(0, work))

    def render_GET(self, request):
        args = query_args(request)
        fmt = args.get("format", "html")
        if fmt not in FORMATS:
            return error_reply(request, 400, "Unknown format: '{}'; use html, csv or json".format(fmt))
        columns = list(self.store.columns)
        query = build_query(args, columns, self.settings.MAX_LIMIT_OF_ROWS)
        now = self.clock.seconds() if self.clock is not None else time.time()
        try:
            after = add_range_and_paging(query, args, self.settings, columns, now, self.store.rowid)
        except (DownloadArgumentError, TimeRangeError) as e:
            return error_reply(request, 400, str(e))
        if after is None:
            d = defer.succeed(None)
        else:
            probe = Query(columns=[self.store.rowid], bounds=query.bounds, order_by=(self.store.rowid, "asc"), limit=1)
            d = self.store.rowid_at(probe, query.limit)
        d.addCallback(self._select, query, request, fmt, args)
        d.addErrback(self._failed, request)
        return NOT_DONE_YET

    def _select(self, next_start, query, request, fmt, args):
        next_link = None
        if next_start is not None:
            next_link = next_page_link(request, args, next_start - 1)
            request.setHeader(b"link", '<{}>; rel="next"'.format(next_link).encode("utf-8"))
        rows = chunk_rows(self.settings.DOWNLOAD_CHUNK_ROWS, len(query.columns or self.store.columns))
        return self.store.select(query, rows).addCallback(self._stream, request, fmt, args, next_link)

    def _stream(self, stream, request, fmt, args, next_link=None):
        """Hand the rows to a producer: the next chunk is read only when the client has taken the last one."""
        request.setHeader(b"content-type", FORMATS[fmt])
        if fmt == "csv":
            filename = "{}-data.csv".format(re.sub(r"\W+", "-", self.settings.NAME))
            request.setHeader(b"content-disposition", 'attachment; filename="{}"'.format(filename).encode("utf-8"))
        writer = TableWriter(
            fmt, stream.header, self.settings.NAME, args, next_link, self.settings.DOWNLOAD_CSV_NEUTRALISE_FORMULAS
        )
        producer = RowProducer(
            request,
            stream,
            writer.start(),
            writer.rows,
            writer.end,
            clock=self.clock,
            stall_timeout=self.settings.HTTP_IDLE_TIMEOUT,
            cooperator=self.cooperator,
            slice_rows=chunk_rows(self.settings.DOWNLOAD_CHUNK_ROWS, len(stream.header)) // 10 or 1,
        )
        return producer.begin()

    def _failed(self, failure, request):
        log.failure("Download failed", failure)
        if not request.startedWriting:
            finish_quietly(request, error_reply(request, 500, "The download failed"))
        else:
            finish_quietly(request)

