"""Small helpers shared by the resources: JSON replies, query args, finishing (HTML is in :mod:`.html`)."""

from __future__ import annotations

import json
from typing import Any, Container, Dict, List, Mapping, Optional, Tuple, Type

from twisted.web.resource import Resource
from twisted.web.server import Request

from co2logd.payloads import text_value


def json_reply(request: Request, status: int, body: Any) -> bytes:
    """Set status and JSON content type; return the encoded body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json")
    return json.dumps(body).encode("utf-8")


def error_reply(request: Request, status: int, message: str, reason: Optional[str] = None) -> bytes:
    """
    co2logd's error shape: ``{"error": "…"}`` with the given status, plus the
    short ``reason`` token (as UDP acks carry it) when there is one.
    """
    body = {"error": message}
    if reason:
        body["reason"] = reason
    return json_reply(request, status, body)


def header_pairs(request: Request) -> List[Tuple[str, str]]:
    """Every request header as a (name, value) text pair (bytes read as latin-1), repeated names kept."""
    return [
        (name.decode("latin-1"), value.decode("latin-1"))
        for name, values in request.requestHeaders.getAllRawHeaders()
        for value in values
    ]


def query_args(request: Request) -> Dict[str, str]:
    """The query string as text, first value of each name."""
    return {
        k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
        for k, v in (request.args or {}).items()
        if v
    }


def row_filters(
    settings: Any, columns: Container[str], args: Mapping[str, str], error: Type[ValueError] = ValueError
) -> List[Tuple[str, Any]]:
    """
    ``box=`` and ``source=`` (the transport column) as (column, value)
    equality filters, for /download, /plot and the dashboard; ``error`` (the
    route's own) when the table has no such column.
    """
    filters = []
    for arg, column in (("box", settings.OSEM_BOX_COL), ("source", settings.TRANSPORT_COL)):
        value = args.get(arg, "")
        if value == "":
            continue
        if column not in columns:
            raise error("There is no column {!r} to filter by {}".format(column, arg))
        # a box is stored as its upload sent it: "7" as the number 7
        filters.append((column, text_value(value) if arg == "box" else value))
    return filters


def finish_quietly(request: Request, data: Optional[bytes] = None) -> None:
    """Write and finish unless the client has already gone away."""
    if getattr(request, "_disconnected", False) or request.finished:
        return
    if data:
        request.write(data)
    request.finish()


def allowed_methods(resrc) -> Optional[List[bytes]]:
    """
    The methods ``resrc`` serves, sorted: its ``render_*`` methods, HEAD
    exactly when GET is there (Resource's ``render_HEAD`` only runs
    ``render_GET``).  A wrapper names its inner resource's methods in
    ``allowed_methods``.  None for a resource that overrides ``render``
    itself (error pages), which answers every method.
    """
    explicit = getattr(resrc, "allowed_methods", None)
    if explicit is not None:
        return sorted(explicit)
    if type(resrc).render is not Resource.render:
        return None
    names = {name[len("render_"):] for name in dir(resrc) if name.startswith("render_")}
    names.discard("HEAD")
    if "GET" in names:
        names.add("HEAD")
    return sorted(name.encode("ascii") for name in names)
