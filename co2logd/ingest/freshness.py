"""
Freshness of an upload: replay protection and idempotency keys, the policy
without the SQL (the store takes :class:`~co2logd.store.ReplayAdvance` and
:class:`~co2logd.store.IdempotencyClaim` in the transaction that writes the
rows).

Replay protection
-----------------

Replay protection: a salted checksum that covers a counter (or a timestamp)
as well as the payload, and the highest value seen per device, kept in SQLite.

A device without a clock sends a per-device counter that grows with every
upload; a device with a clock may send its time instead::

    Content-Counter: 42                 (or  Content-Counter: kitchen:42)
    Content-Timestamp: 1714521600       (or  Content-Timestamp: kitchen:1714521600.25)
    Content-MD5-Salted: hex(MD5(b"counter:42" + b"\\n" + payload + salt))

The checksum is taken over the claim's kind (``counter`` or ``timestamp``),
``:``, the header's value exactly as sent (ASCII), one newline byte
(``\\n``), the payload bytes, then the salt.  The kind is signed so that a
captured upload cannot be replayed with its header renamed (a counter taken
for a timestamp, or the other way round, has its own stored number).  An optional
``DEVICE:`` before the number names the device, so devices that share a
salt keep counters of their own; it is covered by the checksum too.

An upload is fresh when its number is larger than the last one stored for
the same salt, device and kind (counter or timestamp), and, for timestamps,
within ``REPLAY_WINDOW_SECONDS`` of the server's clock.  Anything else is a
replay (or arrived out of order) and is refused with 403, reason
``"replay"``.  The check and the update happen in the transaction that
stores the rows (the store takes a :class:`~co2logd.store.ReplayAdvance`),
so two copies of one upload sent at once cannot both get in, and a refused
or failed upload uses up nothing.

``REPLAY_PROTECTION``: ``"off"`` (the default: the headers are ignored and
checksums cover the payload alone, as in co2logserver), ``"optional"``
(uploads that carry a counter or timestamp are checked, others are taken as
before) or ``"required"`` (every upload needs one under a matching
checksum).  ``REPLAY_REQUIRED_SALTS`` requires it for uploads whose checksum
matched one of those salts, whatever the mode.

Idempotency keys
----------------

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
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

from co2logd.errors import IngestError
from co2logd.store.interfaces import IdempotencyClaim, ReplayAdvance

COUNTER_HEADER = "content-counter"
TIMESTAMP_HEADER = "content-timestamp"
MODES = ("off", "optional", "required")
MAX_COUNTER = 2**63 - 1

# DEVICE: is optional; a device name is what a column name may be, a little more
CLAIM = re.compile(r"(?:(?P<device>[A-Za-z0-9_.\-]{1,64}):)?(?P<number>[0-9]{1,19}(?:\.[0-9]{1,6})?)\Z")


def salt_id(salt: str) -> str:
    """A salt's name in the database: a hash prefix, never the secret itself."""
    return hashlib.sha256(salt.encode("utf-8")).hexdigest()[:16]


class Claim:
    """What one upload says about its freshness: a counter or a timestamp, for a device."""

    __slots__ = ("kind", "header_value", "device", "number", "salt")

    def __init__(self, kind: str, header_value: str, device: str, number: float):
        self.kind = kind
        self.header_value = header_value
        self.device = device
        self.number = number
        self.salt: Optional[str] = None  # the salt whose checksum covered it, once known

    def signed(self, body: bytes) -> bytes:
        """The bytes the salted checksum covers (before the salt): ``kind:value``, ``\\n``, payload."""
        return self.kind.encode("ascii") + b":" + self.header_value.encode("ascii") + b"\n" + body

    def renamed(self) -> "Claim":
        """The same value under the other header: what a copy with its header renamed was signed as."""
        return Claim("timestamp" if self.kind == "counter" else "counter", self.header_value, self.device, self.number)

    @property
    def key(self) -> str:
        """Where the last number is kept: kind, salt, device."""
        return "{}:{}:{}".format(self.kind, salt_id(self.salt or ""), self.device)

    def __repr__(self) -> str:
        return "Claim({!r}, {!r})".format(self.kind, self.header_value)


def claim_from_headers(headers: Iterable[Tuple[str, str]]) -> Optional[Claim]:
    """
    The upload's counter or timestamp claim, or None.  A malformed value, or
    both headers at once, is a 400 (reason ``"bad-counter"``).
    """
    found: List[Tuple[str, str]] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == COUNTER_HEADER:
            found.append(("counter", value.strip()))
        elif lowered == TIMESTAMP_HEADER:
            found.append(("timestamp", value.strip()))
    if not found:
        return None
    if len(found) > 1:
        raise IngestError(400, "bad-counter", "Send one Content-Counter or one Content-Timestamp header, not several")
    kind, value = found[0]
    match = CLAIM.match(value)
    if match is None or (kind == "counter" and "." in match.group("number")):
        raise IngestError(
            400,
            "bad-counter",
            "Invalid {} header {!r}: use [DEVICE:]NUMBER, e.g. '42' or 'kitchen:42'{}".format(
                "Content-Counter" if kind == "counter" else "Content-Timestamp",
                value[:80],
                "" if kind == "counter" else " (UNIX seconds, up to 6 decimals)",
            ),
        )
    text = match.group("number")
    number: float = int(text) if kind == "counter" else float(text)
    if kind == "counter" and not 0 < number <= MAX_COUNTER:
        raise IngestError(400, "bad-counter", "Content-Counter must be between 1 and {}".format(MAX_COUNTER))
    return Claim(kind, value, match.group("device") or "", number)


def replay_error(claim: Claim, detail: str) -> IngestError:
    """The 403 for a replayed, out-of-order or stale upload."""
    return IngestError(
        403,
        "replay",
        "Refused as a replay: {} {} {}; nothing was saved".format(
            "Content-Counter" if claim.kind == "counter" else "Content-Timestamp", claim.header_value, detail
        ),
    )


class ReplayPolicy:
    """The settings' replay rules, applied to one upload's claim and checksum matches."""

    def __init__(self, mode: str, required_salts: Iterable[str], window: float):
        self.mode = mode
        self.required_salts = set(required_salts)
        self.window = window

    @classmethod
    def from_settings(cls, settings: Any) -> "ReplayPolicy":
        """Build from :class:`co2logd.settings.Settings`."""
        return cls(settings.REPLAY_PROTECTION, settings.REPLAY_REQUIRED_SALTS, settings.REPLAY_WINDOW_SECONDS)

    @property
    def enabled(self) -> bool:
        """Whether counter and timestamp headers mean anything."""
        return self.mode != "off" or bool(self.required_salts)

    def claim(self, headers: Iterable[Tuple[str, str]]) -> Optional[Claim]:
        """The claim of an upload, or None (always None while protection is off)."""
        return claim_from_headers(headers) if self.enabled else None

    def guard(
        self, claim: Optional[Claim], matches: Mapping[str, Optional[str]], now: float, last_known: Callable[[str], Optional[float]]
    ) -> Optional[ReplayAdvance]:
        """
        What the store must check and advance with the upload's rows, or None; raise a 403
        IngestError when the upload must be refused now.  ``last_known(key)``
        gives the last number committed (or None): a cheap early refusal,
        the transaction has the final word.
        """
        salts = sorted({salt for salt in matches.values() if salt})
        if claim is None:
            if self.mode == "required" or self.required_salts.intersection(salts):
                raise IngestError(
                    403,
                    "replay-missing",
                    "This upload needs a Content-Counter (or Content-Timestamp) header covered by its "
                    "salted checksum (REPLAY_PROTECTION); nothing was saved",
                )
            return None
        if not salts:
            if self.mode == "required":
                raise IngestError(
                    403,
                    "replay-missing",
                    "The {} header is not covered by a matching salted checksum; nothing was saved".format(
                        "Content-Counter" if claim.kind == "counter" else "Content-Timestamp"
                    ),
                )
            return None  # not authenticated: the number proves nothing, the upload is taken as before
        claim.salt = salts[0]
        if claim.kind == "timestamp" and not abs(now - claim.number) <= self.window:
            raise replay_error(
                claim, "is more than {} s away from the server's time (REPLAY_WINDOW_SECONDS)".format(self.window)
            )
        last = last_known(claim.key)
        if last is not None and claim.number <= last:
            raise replay_error(claim, "is not larger than the last one stored ({})".format(_number(last)))
        return ReplayAdvance(claim.key, claim.number, now)


def _number(value: Any) -> str:
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)



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
        original: Dict[str, Any] = json.loads(receipt)
        return original


class Idempotency:
    """``IDEMPOTENCY_RETENTION_SECONDS`` (0: keys are ignored) applied to uploads."""

    def __init__(self, retention: float):
        self.retention = retention

    @classmethod
    def from_settings(cls, settings: Any) -> "Idempotency":
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
