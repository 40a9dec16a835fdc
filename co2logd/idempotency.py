"""
Idempotent uploads: an upload that carries ``Idempotency-Key: K`` is stored
once; a repeat within ``IDEMPOTENCY_RETENTION_SECONDS`` gets the original
receipt and stores nothing.

The key (1 to 255 visible ASCII characters) is an HTTP header, or a header
line on UDP and serial.  Keys are kept per salt (the salt whose checksum
matched, or none), so one device cannot answer for another.  The key, a
digest of the content type and body, and the receipt are written by
:class:`IdempotencyGuard` in the transaction that stores the rows: a repeat
that races the first copy finds the key taken and gets the first copy's
receipt once it is committed.  A repeat whose body differs is refused with
409 (reason ``"idempotency-conflict"``).  Keys older than the retention are
expired by the ingest service (and may be used again).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from co2logd.errors import IngestError
from co2logd.replay import salt_id

IDEMPOTENCY_HEADER = "idempotency-key"
IDEMPOTENCY_TABLE = "co2logd_idempotency"
KEY = re.compile(r"[\x21-\x7e]{1,255}\Z")


class DuplicateUpload(Exception):
    """Raised inside the write transaction: the key is taken by an upload within the retention."""

    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def key_from_headers(headers: Iterable[Tuple[str, str]]) -> Optional[str]:
    """The ``Idempotency-Key`` value, or None; a malformed one is a 400 (``"bad-idempotency-key"``)."""
    found = [value.strip() for name, value in headers if name.lower() == IDEMPOTENCY_HEADER]
    if not found:
        return None
    if len(found) > 1 or not KEY.match(found[0]):
        raise IngestError(
            400,
            "bad-idempotency-key",
            "Send one Idempotency-Key header of 1 to 255 visible ASCII characters (a UUID, or a device name and counter)",
        )
    return found[0]


class IdempotentUpload:
    """One upload's key, scoped by salt, and what makes a repeat the same upload."""

    __slots__ = ("key", "given", "digest", "now", "cutoff", "refusal")

    def __init__(self, key: str, given: str, digest: str, now: float, cutoff: float):
        self.key = key
        self.given = given
        self.digest = digest
        self.now = now
        self.cutoff = cutoff
        #: the replay refusal this upload gets unless it is a repeat of a stored one
        self.refusal: Optional[IngestError] = None

    def guard(self, receipt: Mapping[str, Any]) -> "IdempotencyGuard":
        """The guard that records this upload's receipt with its rows."""
        return IdempotencyGuard(self, json.dumps(dict(receipt), sort_keys=True))

    def answer(self, record: Optional[Tuple[str, str]]) -> Optional[Dict[str, Any]]:
        """
        The original receipt for a stored ``(digest, receipt)`` record, None
        when there is none; a 409 IngestError when the body differs.
        """
        if record is None:
            return None
        digest, receipt = record
        if digest != self.digest:
            raise IngestError(
                409,
                "idempotency-conflict",
                "Idempotency-Key {!r} was used for a different upload within the retention; nothing was saved".format(
                    self.given[:80]
                ),
            )
        return json.loads(receipt)


class IdempotencyGuard:
    """Runs in the upload's savepoint, before its rows: take the key or raise :class:`DuplicateUpload`."""

    __slots__ = ("upload", "receipt")

    def __init__(self, upload: IdempotentUpload, receipt: str):
        self.upload = upload
        self.receipt = receipt

    def apply(self, cursor) -> None:
        """Insert the key; an expired one is taken over, a live one refuses."""
        u = self.upload
        cursor.execute(
            "INSERT INTO {t} (key, digest, receipt, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET digest = excluded.digest, receipt = excluded.receipt, "
            "created_at = excluded.created_at WHERE {t}.created_at < ?".format(t=IDEMPOTENCY_TABLE),
            (u.key, u.digest, self.receipt, u.now, u.cutoff),
        )
        if cursor.rowcount != 1:
            raise DuplicateUpload(u.key)

    def committed(self, store) -> None:
        """Nothing to remember outside the database."""


class Idempotency:
    """``IDEMPOTENCY_RETENTION_SECONDS`` (0: keys are ignored) applied to uploads."""

    def __init__(self, retention: float):
        self.retention = retention

    @classmethod
    def from_settings(cls, settings) -> "Idempotency":
        """Build from :class:`co2logd.settings.Settings`."""
        return cls(settings.IDEMPOTENCY_RETENTION_SECONDS)

    @property
    def enabled(self) -> bool:
        """Whether Idempotency-Key headers are honoured."""
        return self.retention > 0

    def upload(
        self,
        headers: Iterable[Tuple[str, str]],
        matches: Mapping[str, Optional[str]],
        content_type: Optional[str],
        body: bytes,
        now: float,
    ) -> Optional[IdempotentUpload]:
        """The upload's scoped key, or None when it has none (or keys are off)."""
        if not self.enabled:
            return None
        given = key_from_headers(headers)
        if given is None:
            return None
        salts = sorted({salt for salt in matches.values() if salt})
        scope = salt_id(salts[0]) if salts else "-"
        digest = hashlib.sha256((content_type or "").encode("latin-1", "replace") + b"\n" + body).hexdigest()
        return IdempotentUpload("{}:{}".format(scope, given), given, digest, now, now - self.retention)
