"""
Upload tokens, for clients that cannot compute a salted checksum.

``UPLOAD_TOKENS`` maps a token to a label (``{"tok-3f9a...": "lab-gateway"}``).
A request presents a token as ``Authorization: Token T`` (InfluxDB 2.x),
``Authorization: Bearer T``, HTTP Basic auth with password ``T`` (airrohr,
InfluxDB 1.x; the user name is ignored) or, on ``/write``, the ``p=T`` query
parameter.  Tokens are compared in constant time (over SHA-256 digests, so
neither the content nor the length of a configured token leaks through
timing), and only the label ever leaves this module: it is what the row
records and what logs show.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from typing import Dict, Iterable, Mapping, Optional, Tuple


class Presented(enum.Enum):
    """What a request carried."""

    NONE = "none"  # no token
    VALID = "valid"  # a configured token
    INVALID = "invalid"  # a token, but not a configured one (or an unreadable Authorization header)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_from_authorization(value: Optional[str]) -> Tuple[bool, Optional[str]]:
    """
    ``(present, token)`` for an ``Authorization`` header value: ``Token T``,
    ``Bearer T`` or ``Basic base64(user:T)``.  A header of another scheme,
    or one that cannot be read, is present with token None.
    """
    if value is None:
        return False, None
    scheme, _, credentials = value.strip().partition(" ")
    scheme = scheme.lower()
    credentials = credentials.strip()
    if scheme in ("token", "bearer"):
        return True, credentials or None
    if scheme == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return True, None
        _, colon, password = decoded.partition(":")
        return True, (password or None) if colon else None
    return True, None


class UploadTokens:
    """The configured tokens, and the check of what a request presents."""

    def __init__(self, tokens: Mapping[str, str]):
        self._labels: Dict[bytes, str] = {_digest(token): label for token, label in tokens.items()}

    @classmethod
    def from_settings(cls, settings) -> "UploadTokens":
        """From ``UPLOAD_TOKENS`` (empty when the setting is missing)."""
        return cls(getattr(settings, "UPLOAD_TOKENS", None) or {})

    def __bool__(self) -> bool:
        return bool(self._labels)

    @property
    def labels(self) -> Iterable[str]:
        """The labels (never the tokens)."""
        return self._labels.values()

    def label_of(self, token: Optional[str]) -> Optional[str]:
        """The label of ``token``, or None; constant time in the token and over all configured tokens."""
        if token is None:
            return None
        digest = _digest(token)
        found = None
        for known, label in self._labels.items():
            if hmac.compare_digest(digest, known):  # every token is compared, a match or not
                found = label
        return found

    def check(self, authorization: Optional[str], query_password: Optional[str] = None) -> Tuple[Presented, Optional[str]]:
        """
        What the request presents (``Authorization`` header value, ``p=``
        query value) and the label when it is a configured token.  A valid
        token in either place wins; without tokens configured nothing is
        read (an ``Authorization`` header meant for a proxy changes nothing).
        """
        if not self._labels:
            return Presented.NONE, None
        present, token = token_from_authorization(authorization)
        candidates = [token] if present else []
        if query_password is not None:
            candidates.append(query_password)
        if not candidates:
            return Presented.NONE, None
        for candidate in candidates:
            label = self.label_of(candidate)
            if label is not None:
                return Presented.VALID, label
        return Presented.INVALID, None


def check_tokens_setting(value: object) -> Dict[str, str]:
    """``UPLOAD_TOKENS`` checked: a mapping of non-empty text tokens to non-empty text labels."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValueError("UPLOAD_TOKENS must map tokens to labels, e.g. {\"tok-...\": \"lab-gateway\"}")
    checked: Dict[str, str] = {}
    for token, label in value.items():
        if not isinstance(token, str) or not token.strip() or token != token.strip() or not token.isprintable():
            raise ValueError("UPLOAD_TOKENS: every token must be printable text without surrounding spaces")
        if not isinstance(label, str) or not label or not label.isprintable() or len(label) > 200:
            raise ValueError("UPLOAD_TOKENS: every label must be printable text of at most 200 characters")
        checked[token] = label
    return checked
