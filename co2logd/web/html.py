"""The HTML every plain page shares: escaping and the page skeleton (the dashboard has its template)."""

from __future__ import annotations

import html
from typing import Any, Optional

PAGE_END = "</body></html>\n"


def escape(value: Any) -> str:
    """HTML-escape any value (None as empty)."""
    return html.escape("" if value is None else str(value))


def page_start(title: str, head: str = "", max_width: Optional[str] = "70em") -> str:
    """
    Everything up to and including ``<body>``: a phone-readable page with
    bordered tables.  ``max_width=None`` lets wide tables (downloads) use the
    whole window.
    """
    width = "max-width:{}".format(max_width) if max_width else ""
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        "<title>{title}</title>"
        "<style>body{{font-family:sans-serif;margin:1em;{width}}}"
        "table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:2px 6px}}"
        "pre{{background:#eee;padding:10px;overflow-x:auto}}</style>{head}</head>"
        "<body>"
    ).format(title=escape(title), width=width, head=head)


def page(title: str, body: str, head: str = "") -> bytes:
    """A whole minimal page around ``body`` (HTML)."""
    return (page_start(title, head) + body + PAGE_END).encode("utf-8")
