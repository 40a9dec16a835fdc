"""
Idempotent uploads: an upload that carries ``Idempotency-Key: K`` is stored
once; a repeat within ``IDEMPOTENCY_RETENTION_SECONDS`` gets the original
receipt and stores nothing.

The key (1 to 255 visible ASCII characters) is an HTTP header, or a header
line on UDP and serial.  Keys are kept per salt (the salt whose checksum
matched, or none), so one device cannot answer for another.  The key, a
digest of the content type and body, and the receipt are written by the
store (a :class:`~co2logd.store.IdempotencyClaim`) in the transaction that
stores the rows: a repeat
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
from co2logd.store.interfaces import IdempotencyClaim

IDEMPOTENCY_HEADER = "idempotency-key"
KEY = re.compile(r"[\x21-\x7e]{1,255}\Z")


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

    def claim(self, receipt: Mapping[str, Any]) -> IdempotencyClaim:
        """What the store takes with this upload's rows: the key, the digest and the receipt."""
        return IdempotencyClaim(self.key, self.digest, json.dumps(dict(receipt), sort_keys=True), self.now, self.cutoff)

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
