"""
The serial line grammar, without I/O: one line and its node's state in,
what the line is out (see :mod:`co2logd.transports.serial` for the grammar).

:func:`split_gateway` takes a radio gateway's prefix off a line;
:func:`read_line` keeps header lines and CSV header lines in the node's
:class:`NodeState` and turns a body line into a :class:`LineUpload`, or
raises an :class:`~co2logd.errors.IngestError` for a line it refuses.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import re
from typing import Any, Dict, List, Optional, Pattern, Tuple
from urllib.parse import urlencode

from co2logd.errors import IngestError, bad_request
from co2logd.payloads import text_value
from co2logd.transports.framing import MAX_HEADER_LINES, header_value, parse_header_line

NAME = rb"[A-Za-z_][A-Za-z0-9_]*"
CSV_HEADER = re.compile(rb"\s*" + NAME + rb"\s*(,\s*" + NAME + rb"\s*)+\Z")
PAIR = rb"\s*" + NAME + rb"\s*[:=]\s*[^,:=&]*"
KEY_VALUE = re.compile(PAIR + rb"(," + PAIR + rb")*\Z")
KEY_VALUE_ITEM = re.compile(rb"\s*(" + NAME + rb")\s*[:=]\s*([^,:=&]*?)\s*(?:,|\Z)")

#: a gateway node: its prefix's named groups, sorted (None without a gateway pattern)
Node = Optional[Tuple[Tuple[str, Any], ...]]


class NodeState:
    """Per-node line state: headers waiting for a body line, the current CSV header."""

    __slots__ = ("headers", "csv_header", "csv_cells", "csv_header_line")

    def __init__(self) -> None:
        self.headers: List[Tuple[str, str]] = []
        self.csv_header: Optional[bytes] = None
        self.csv_cells = 0
        self.csv_header_line = b""  # as printed: a row's checksum covers it


@dataclasses.dataclass(frozen=True)
class LineUpload:
    """
    A body line as an upload: the body for the ingest service, its content
    type, the header lines before it, and the bytes the device signed when
    they are not the body (a CSV row with its header line, rewritten pairs).
    """

    body: bytes
    content_type: Optional[str]
    headers: List[Tuple[str, str]]
    signed: Optional[bytes]


def split_gateway(pattern: Pattern[str], line: bytes) -> Tuple[Dict[str, Any], Node, bytes]:
    """
    ``(columns, node, rest)`` for a line that starts with the gateway
    prefix: the prefix's named groups as column values, the node they name,
    and the line after the prefix.  A 400 ``no-gateway-prefix`` otherwise.
    """
    match = pattern.match(line.decode("latin-1"))  # latin-1: one char per byte
    if match is None:
        raise bad_request("The line does not start with the gateway prefix (SERIAL_GATEWAY_PATTERN)", "no-gateway-prefix")
    extra = {k: text_value(v) for k, v in match.groupdict().items() if v is not None}
    return extra, tuple(sorted(extra.items())), line[match.end():].strip()


def node_name(device: str, node: Node) -> str:
    """``/dev/ttyACM0``, or with a gateway node ``/dev/ttyACM0 box=12``: the source counters and logs name."""
    if node is None:
        return device
    return "{} {}".format(device, " ".join("{}={}".format(k, v) for k, v in node))


def read_line(line: bytes, state: NodeState) -> Optional[LineUpload]:
    """
    What one stripped, non-empty, non-comment line is: None for a header
    line or a CSV header line (kept in ``state``), the upload for a body
    line.  A refused line raises a 400 IngestError and drops the headers
    waiting for a body.
    """
    header = parse_header_line(line)
    if header is not None and "-" in header[0]:
        if len(state.headers) >= MAX_HEADER_LINES:
            state.headers = []
            raise bad_request("More than {} header lines".format(MAX_HEADER_LINES), "header")
        state.headers.append(header)
        return None
    try:
        declared = header_value(state.headers, "content-type")
        found = (line, declared) if declared is not None else _body(line, state)
    except (IngestError, UnicodeDecodeError, csv.Error) as e:
        state.headers = []
        if not isinstance(e, IngestError):
            raise bad_request("The line is not valid text ({})".format(e), "unparseable") from e
        raise
    if found is None:
        return None  # a CSV header line
    body, content_type = found
    headers, state.headers = state.headers, []
    signed = line
    if declared is None and content_type == "text/csv":
        # a CSV row: the device signs its header line with it, so a forged
        # header cannot give a signed row other column names
        signed = state.csv_header_line + b"\n" + line
    return LineUpload(body, content_type, headers, signed if signed != body else None)


def _body(line: bytes, state: NodeState) -> Optional[Tuple[bytes, Optional[str]]]:
    """(body, content type) for the ingest service, or None for a CSV header line."""
    if line[:1] in (b"{", b"["):
        return line, "application/json"
    if CSV_HEADER.match(line):
        cells = _cells(line)
        state.csv_header = _csv_line(cells)
        state.csv_cells = len(cells)
        state.csv_header_line = line
        return None
    if KEY_VALUE.match(line) and (b"," in line or b":" in line):
        pairs = [(m.group(1).decode("ascii"), m.group(2).decode("utf-8")) for m in KEY_VALUE_ITEM.finditer(line)]
        return urlencode(pairs).encode("ascii"), "application/x-www-form-urlencoded"
    if b"=" in line and b"," not in line:
        return line, "application/x-www-form-urlencoded"
    if state.csv_header is not None and b"," in line:
        cells = _cells(line)
        if len(cells) != state.csv_cells:
            raise bad_request(
                "The CSV row has {} cells, the CSV header line has {}".format(len(cells), state.csv_cells),
                "csv-columns",
            )
        return state.csv_header + b"\n" + _csv_line(cells), "text/csv"
    raise bad_request("The line is not JSON, a CSV header or row, key:value pairs or form data", "unparseable")


def _cells(line: bytes) -> List[str]:
    """A CSV line's cells, trimmed."""
    rows = list(csv.reader(io.StringIO(line.decode("utf-8"))))
    return [cell.strip() for cell in rows[0]] if rows else []


def _csv_line(cells: List[str]) -> bytes:
    out = io.StringIO()
    csv.writer(out, lineterminator="").writerow(cells)
    return out.getvalue().encode("utf-8")
