"""
Framing shared by the UDP and serial transports: HTTP-style header lines.

A UDP datagram may start with a header block, as an HTTP message does::

    Content-Type: application/json
    Content-MD5-Salted: b71e91feb2be18ccca019914a1da5b1d
                                                   <- empty line
    {"time_utc":[43,23],"co2":[1223,2351]}

The block is there when the first line is ``Name: value`` (or empty); it
ends at the first empty line (``\\n`` or ``\\r\\n``).  Body formats never
start with ``Name:`` (JSON starts with ``{``/``[``, msgpack with a binary
marker, form data with ``name=``, a CSV header with ``name,name``), so a
datagram without headers is a body as it is.  The serial transport reads the
same ``Name: value`` lines one at a time (see :mod:`co2logd.transports.serial`).
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence, Tuple

from co2logd.errors import IngestError, bad_request

HeaderList = List[Tuple[str, str]]

# RFC 9110 token for the name; the value is what follows the colon, trimmed.
HEADER_LINE = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*\Z")
MAX_HEADER_LINES = 64
MAX_HEADER_BLOCK = 8192


class Frame:
    """One upload cut out of a datagram: header pairs, body, and the Content-Type."""

    __slots__ = ("headers", "body")

    def __init__(self, headers: HeaderList, body: bytes):
        self.headers = headers
        self.body = body

    @property
    def content_type(self) -> Optional[str]:
        """The last ``Content-Type`` header, or None: ingest then detects the format."""
        return header_value(self.headers, "content-type")

    def __repr__(self) -> str:
        return "Frame(headers={!r}, body={!r})".format(self.headers, self.body)


def parse_header_line(line: bytes) -> Optional[Tuple[str, str]]:
    """``b'Content-Type: text/csv'`` → ``('Content-Type', 'text/csv')``; None if not a header."""
    match = HEADER_LINE.match(line.rstrip(b"\r"))
    if match is None:
        return None
    return match.group(1).decode("ascii"), match.group(2).decode("latin-1")


def header_value(headers: Sequence[Tuple[str, str]], name: str) -> Optional[str]:
    """The value of the last header called ``name`` (case-insensitive), or None."""
    value = None
    for key, val in headers:
        if key.lower() == name:
            value = val
    return value


def split_message(data: bytes) -> Frame:
    """
    Split a datagram into its optional header block and its body.

    Raises a 400 :class:`IngestError` (reason ``"header"``) when a header
    block is started but malformed: a line in it that is not ``Name: value``,
    no empty line ending it, or more than :data:`MAX_HEADER_LINES` lines.
    """
    first_end = data.find(b"\n")
    first = data if first_end < 0 else data[:first_end]
    if first.rstrip(b"\r") == b"":
        # an empty header block: the body follows the empty line
        return Frame([], data[first_end + 1:] if first_end >= 0 else b"")
    if parse_header_line(first) is None:
        return Frame([], data)
    headers: HeaderList = []
    position = 0
    while True:
        end = data.find(b"\n", position)
        if end < 0:
            raise bad_request(
                "The header block must end with an empty line before the body", "header"
            )
        line = data[position:end].rstrip(b"\r")
        position = end + 1
        if not line:
            return Frame(headers, data[position:])
        if position > MAX_HEADER_BLOCK or len(headers) >= MAX_HEADER_LINES:
            raise bad_request(
                "The header block is longer than {} lines or {} bytes".format(
                    MAX_HEADER_LINES, MAX_HEADER_BLOCK
                ),
                "header",
            )
        pair = parse_header_line(line)
        if pair is None:
            raise bad_request(
                "Header line {} is not 'Name: value'".format(len(headers) + 1), "header"
            )
        headers.append(pair)


def error_reply(error: IngestError) -> dict:
    """The body of an acknowledgement for a refused upload."""
    return {"error": error.message, "status": error.status, "reason": error.reason}
