"""
Who may see the data (issue 12, finding 5).

With ``DOWNLOAD_REQUIRES_AUTH`` every route that shows data (the dashboard,
``/download``, ``/plot``, ``/health``'s details, ``/metrics``) answers only
a request that brings one of:

* a salted checksum of its path and query (co2logserver's download scheme,
  ``Content-<ALG>-Salted``; for scripts; it opens that one request);
* ``Authorization: Bearer <DASHBOARD_TOKEN>`` (scrapers, monitors, scripts);
* ``?token=<DASHBOARD_TOKEN>`` once (a browser): the answer is a 303 to the
  same URL without the token that sets an ``HttpOnly``, ``SameSite=Strict``
  session cookie valid ``DASHBOARD_SESSION_SECONDS``;
* that session cookie.

:class:`DataAccess` decides; :class:`GuardedResource` wraps a resource in
:func:`co2logd.web.site.make_root` and, for a request without them, renders
a public stand-in (:mod:`co2logd.web.public`) or a 403.

Sessions need no server state: the cookie is ``expiry.nonce.mac`` with an
HMAC-SHA256 keyed by the token, so it survives restarts, cannot be
stretched, and changing ``DASHBOARD_TOKEN`` ends every session.  Every
comparison is constant-time (:func:`hmac.compare_digest`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import List, Optional, Tuple
from urllib.parse import parse_qsl, urlencode

from twisted.logger import Logger
from twisted.web.resource import IResource, Resource

from co2logd.ingest.auth import DownloadAuthenticator, hint
from co2logd.errors import IngestError
from co2logd.web.common import allowed_methods, error_reply, header_pairs
from co2logd.web.download import full_path

log = Logger()

COOKIE = b"co2logd_session"
TOKEN_ARG = b"token"


class Sessions:
    """Issue and check the stateless session cookie values for one token."""

    def __init__(self, token: str, lifetime: float):
        self.key = hashlib.sha256(b"co2logd-session\0" + token.encode("utf-8")).digest()
        self.lifetime = lifetime

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self.key, message, hashlib.sha256).hexdigest().encode("ascii")

    def issue(self, now: float) -> bytes:
        """A new cookie value, valid until ``now + lifetime``."""
        message = "{}.{}".format(int(now + self.lifetime), secrets.token_hex(8)).encode("ascii")
        return message + b"." + self._mac(message)

    def valid(self, value: Optional[bytes], now: float) -> bool:
        """True for a value :meth:`issue` made that has not expired."""
        if not value or len(value) > 200:
            return False
        message, _, mac = value.rpartition(b".")
        expiry = message.partition(b".")[0]
        if not (expiry.isdigit() and len(expiry) < 16):
            return False
        if not hmac.compare_digest(self._mac(message), mac):
            return False
        return now < int(expiry) <= now + self.lifetime + 1


class Refusal:
    """Why a request may not see the data: status, message, reason token."""

    def __init__(self, status: int, message: str, reason: str):
        self.status = status
        self.message = message
        self.reason = reason


class DataAccess:
    """
    The policy: is this request allowed to see the data?  Signed requests
    are checked by a :class:`~co2logd.ingest.auth.DownloadAuthenticator`
    (replay claims included).
    """

    def __init__(self, settings, clock):
        self.required = bool(settings.DOWNLOAD_REQUIRES_AUTH)
        self.token: Optional[bytes] = settings.DASHBOARD_TOKEN.encode("utf-8") if settings.DASHBOARD_TOKEN else None
        self.sessions = Sessions(settings.DASHBOARD_TOKEN, settings.DASHBOARD_SESSION_SECONDS) if self.token else None
        self.lifetime = settings.DASHBOARD_SESSION_SECONDS
        self.signed = DownloadAuthenticator.from_settings(settings)
        self.clock = clock

    def token_matches(self, given: bytes) -> bool:
        """Constant-time comparison with ``DASHBOARD_TOKEN`` (False when none is set)."""
        return self.token is not None and hmac.compare_digest(given, self.token)

    def check(self, request) -> Optional[Refusal]:
        """None when the request may see the data, else why not."""
        if not self.required:
            return None
        authorization = request.getHeader(b"authorization") or b""
        scheme, _, credentials = authorization.partition(b" ")
        if scheme.lower() == b"bearer":
            if self.token_matches(credentials.strip()):
                return None
            return Refusal(403, "The bearer token is not DASHBOARD_TOKEN", "auth-invalid")
        if self.sessions is not None and self.sessions.valid(request.getCookie(COOKIE), self.clock.seconds()):
            return None
        try:
            self.signed.check(full_path(request), header_pairs(request))
            return None
        except IngestError as e:
            if e.reason != "auth-missing":
                return Refusal(e.status, e.message, e.reason)
        ways = "a salted checksum of the path and query (" + hint() + ")"
        if self.token is not None:
            ways = "the dashboard token (?token=, or Authorization: Bearer), a session, or " + ways
        return Refusal(403, "This needs authentication (DOWNLOAD_REQUIRES_AUTH): send " + ways, "auth-missing")

    def login(self, request) -> Tuple[bool, Optional[bytes]]:
        """
        ``(handled, body)`` for a ``?token=`` request: with the right token a
        303 to the same URL without it, setting the session cookie; a wrong
        token is a 403 refusal.  ``(False, None)`` when there is no token argument.
        """
        values = (request.args or {}).get(TOKEN_ARG)
        if not self.required or not values:
            return False, None
        if not self.token_matches(values[0]):
            log.info("Refused a dashboard login from {peer}: wrong token", peer=request.getClientAddress())
            return True, error_reply(request, 403, "The token is not DASHBOARD_TOKEN", "auth-invalid")
        secure = request.isSecure() or request.getHeader(b"x-forwarded-proto") == b"https"
        request.addCookie(
            COOKIE,
            self.sessions.issue(self.clock.seconds()),
            max_age=str(int(self.lifetime)),
            path=b"/",
            httpOnly=True,
            secure=secure or None,
            sameSite="strict",
        )
        request.setResponseCode(303)
        request.setHeader(b"location", without_token(request.uri))
        request.setHeader(b"cache-control", b"no-store")
        return True, b""


def without_token(uri: bytes) -> bytes:
    """``uri`` with every ``token=`` argument left out (the other arguments kept, in order)."""
    path, _, query = uri.partition(b"?")
    kept: List[Tuple[bytes, bytes]] = [
        (k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != TOKEN_ARG
    ]
    return path + (b"?" + urlencode(kept).encode("ascii") if kept else b"")


class GuardedResource(Resource):
    """
    ``wrapped`` for requests :class:`DataAccess` lets through; otherwise
    ``public`` (a stand-in showing no data; it finds the refusal in
    ``request.access_refusal``) or a 403 JSON error.  Methods are the
    wrapped resource's (:func:`co2logd.web.common.allowed_methods`).
    """

    isLeaf = True

    def __init__(self, wrapped: IResource, access: DataAccess, public: Optional[IResource] = None):
        super().__init__()
        self.wrapped = wrapped
        self.access = access
        self.public = public
        self.allowed_methods = allowed_methods(wrapped)

    def render(self, request):
        """Log in, render the data, or refuse."""
        handled, body = self.access.login(request)
        if handled:
            return body
        refusal = self.access.check(request)
        if refusal is None:
            return self.wrapped.render(request)
        request.setHeader(b"cache-control", b"no-store")
        if self.public is not None:
            request.access_refusal = refusal
            return self.public.render(request)
        return error_reply(request, refusal.status, refusal.message, refusal.reason)
