"""
What ``--db`` / ``DB`` names: a SQLite file path or a PostgreSQL URL.

``postgresql://user:password@host:port/dbname?sslmode=require`` (or
``postgres://``) selects the PostgreSQL store; anything else with a
``scheme://`` is refused with one line; everything else is a SQLite path, as
in co2logserver.  The URL is parsed by libpq itself (through psycopg), so every
form libpq accepts works, a unix socket directory as host included.

Passwords never leave this module in text: :func:`redact` replaces them, and
:class:`PostgresUrl`'s ``str``/``repr`` are the redacted URL.
"""

from __future__ import annotations

import re
from typing import Dict, Union

SCHEMES = ("postgresql", "postgres")

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# user:password@ in the authority part, and password=... in the query string
_AUTHORITY_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/?#@:]*):[^/?#]*@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&#]*", re.IGNORECASE)


class DatabaseUrlError(ValueError):
    """A ``DB`` value co2logd cannot use; the message is one line with no password in it."""


def redact(value: str) -> str:
    """``value`` with any password in it (``user:password@``, ``?password=``) replaced by ``***``."""
    value = _AUTHORITY_PASSWORD.sub(r"\1:***@", value)
    return _QUERY_PASSWORD.sub(r"\1***", value)


class PostgresUrl:
    """
    A parsed PostgreSQL URL: the keyword arguments for ``psycopg.connect``
    (:attr:`params`) and the redacted URL to show (``str(url)``).
    """

    def __init__(self, url: str, params: Dict[str, str]):
        self._url = url
        self.params = dict(params)
        self.shown = redact(url)

    @property
    def dbname(self) -> str:
        """The database name ("" when libpq's default applies)."""
        return self.params.get("dbname", "")

    def __str__(self) -> str:
        return self.shown

    def __repr__(self) -> str:
        return "PostgresUrl({!r})".format(self.shown)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PostgresUrl) and other._url == self._url

    def __hash__(self) -> int:
        return hash(self._url)


def is_postgres(value: str) -> bool:
    """True when ``value`` is meant as a PostgreSQL URL (by its scheme)."""
    match = _SCHEME.match(value)
    return match is not None and match.group(1).lower() in SCHEMES


def parse_db(value: str) -> Union[str, PostgresUrl]:
    """
    A SQLite path (returned as it is) or a :class:`PostgresUrl`; a
    :class:`DatabaseUrlError` for an empty value, another URL scheme or a
    PostgreSQL URL libpq cannot parse.
    """
    if not isinstance(value, str) or not value.strip():
        raise DatabaseUrlError("DB must be a SQLite file path or a postgresql:// URL, not an empty value")
    match = _SCHEME.match(value)
    if match is None:
        return value
    if match.group(1).lower() not in SCHEMES:
        raise DatabaseUrlError(
            "DB {}: not a SQLite file path or a postgresql://user:password@host:port/dbname URL "
            "(unknown scheme {}://)".format(redact(value), match.group(1))
        )
    try:
        from psycopg import conninfo
        import psycopg
    except ImportError:
        raise DatabaseUrlError(
            "DB {}: the PostgreSQL store needs psycopg: pip install 'co2logd[postgresql]'".format(redact(value))
        )
    try:
        # libpq knows the schemes in lower case only
        parsed = conninfo.conninfo_to_dict(match.group(1).lower() + value[len(match.group(1)):])
    except psycopg.Error as e:
        raise DatabaseUrlError("DB {}: not a valid PostgreSQL URL: {}".format(redact(value), _clean(str(e), value)))
    params = {k: str(v) for k, v in parsed.items() if v is not None}
    for port in params.get("port", "").split(","):
        if port and not (port.isdigit() and 0 < int(port) < 65536):
            raise DatabaseUrlError("DB {}: port {!r} is not a number from 1 to 65535".format(redact(value), port))
    return PostgresUrl(value, params)


def _clean(message: str, value: str) -> str:
    """libpq's message on one line, with no piece of the URL's password in it."""
    message = " ".join(message.split())
    match = _AUTHORITY_PASSWORD.match(value)
    if match is not None:
        password = value[len(match.group(1)) + 1 : match.end() - 1]
        if password:
            message = message.replace(password, "***")
    for found in re.finditer(r"[?&]password=([^&#]*)", value, re.IGNORECASE):
        if found.group(1):
            message = message.replace(found.group(1), "***")
    return redact(message)
