"""Request bodies sent with ``Content-Encoding: gzip``, inflated with a bound on what they inflate to."""

from __future__ import annotations

import zlib
from typing import List, Optional

from co2logd.errors import IngestError


def content_encoding(value: Optional[bytes]) -> str:
    """The body's coding: ``"identity"`` when the header is missing."""
    if value is None:
        return "identity"
    return value.decode("latin-1").strip().lower() or "identity"


def inflate(body: bytes, limit: int) -> bytes:
    """
    The bytes a gzip body holds (several members are read one after the
    other, as Go's gzip reader does), never more than ``limit`` of them: one
    byte more is a 413 without inflating further, so a small "zip bomb"
    costs at most ``limit`` bytes of memory.  Corrupt or truncated data is
    a 400.
    """
    parts: List[bytes] = []
    size = 0
    rest = body
    while True:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            part = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as e:
            raise IngestError(400, "bad-encoding", "The gzip body cannot be read: {}".format(e)) from None
        size += len(part)
        if size > limit or inflater.unconsumed_tail:
            raise IngestError(413, "too-large", "The body inflates to more than {} bytes (MAX_BODY_SIZE)".format(limit))
        parts.append(part)
        if not inflater.eof:
            raise IngestError(400, "bad-encoding", "The gzip body is truncated")
        rest = inflater.unused_data
        if not rest.strip(b"\x00"):  # trailing zero padding, as some writers leave
            return b"".join(parts)
