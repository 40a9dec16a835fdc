"""
co2logserver's salted checksums.

A sender adds headers ``Content-<ALG>-Salted: hex(ALG(payload + salt))``.
:func:`salted_matches` maps each given algorithm to the salt that matched (or
None); :class:`Authenticator` applies ``AUTH_CHECKER`` when auth is required.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Dict, Iterable, Iterator, Mapping, Optional, Sequence, Tuple, Union

from twisted.logger import Logger

from co2logd.errors import IngestError

log = Logger()

Headers = Union[Mapping[str, str], Iterable[Tuple[str, str]]]
GUARANTEED = sorted(hashlib.algorithms_guaranteed)


def header_items(headers: Headers) -> Iterator[Tuple[str, str]]:
    """(name, value) pairs from a mapping or a sequence of pairs."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in items:
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        yield name, value


def salted_checksum(payload: bytes, salt: Union[str, bytes], algorithm: str) -> str:
    """Hex digest of ``payload + salt`` with a hashlib algorithm."""
    h = hashlib.new(algorithm)
    h.update(payload)
    h.update(salt.encode() if isinstance(salt, str) else salt)
    # shake_* need a length; co2logserver's headers never carry them usefully
    return h.hexdigest() if not algorithm.startswith("shake_") else h.hexdigest(32)  # type: ignore[call-arg]


def given_checksums(headers: Headers, header_regex) -> Iterator[Tuple[str, str]]:
    """
    (algorithm, lowercase hex) for every well-formed checksum header.

    Unknown algorithms and digests of the wrong length are ignored (logged),
    as co2logserver does.
    """
    for name, value in header_items(headers):
        m = header_regex.fullmatch(name)
        if not m:
            continue
        algorithm = (m.groupdict().get("algorithm") or "").lower()
        if algorithm not in hashlib.algorithms_guaranteed or algorithm.startswith("shake_"):
            log.warn("Ignoring checksum header {header}: no such hash function", header=name)
            continue
        length = hashlib.new(algorithm).digest_size * 2
        value = value.strip()
        if len(value) != length or any(c not in "0123456789abcdefABCDEF" for c in value):
            log.warn(
                "Ignoring checksum header {header}: not a {algorithm} hex digest",
                header=name,
                algorithm=algorithm,
            )
            continue
        yield algorithm, value.lower()


def salted_matches(
    payload: bytes, headers: Headers, salts: Sequence[str], header_regex
) -> Dict[str, Optional[str]]:
    """Algorithm → the salt whose checksum matched, or None."""
    matches: Dict[str, Optional[str]] = {}
    for algorithm, given in given_checksums(headers, header_regex):
        matched = None
        for salt in salts:
            # compare_digest: a mismatch takes as long wherever it differs
            if hmac.compare_digest(salted_checksum(payload, salt, algorithm), given):
                matched = salt
                break
        matches[algorithm] = matched
    return matches


def hint() -> str:
    """The sentence co2logserver's 403 carries: header pattern and algorithms."""
    return (
        "Specify one or more header fields that match 'Content-(?P<algorithm>\\w+)-Salted' "
        "and contain a hexadecimal digest of the payload with the proper salt appended "
        "calculated with the specific algorithm. Available algorithms are {}.".format(
            ", ".join(a for a in GUARANTEED if not a.startswith("shake_"))
        )
    )


class Authenticator:
    """Checks salted checksums against the configured salts and ``AUTH_CHECKER``."""

    def __init__(self, salts: Sequence[str], checker, header_regex):
        self.salts = list(salts)
        self.checker = checker
        self.header_regex = header_regex

    @classmethod
    def from_settings(cls, settings) -> "Authenticator":
        """Build from :class:`co2logd.settings.Settings`."""
        return cls(settings.CHECKSUM_SALTS, settings.AUTH_CHECKER, settings.SALTED_CHECKSUM_HEADER_REGEX)

    def check(self, payload: bytes, headers: Headers, required: bool) -> Dict[str, Optional[str]]:
        """
        The matches for this payload; raise a 403 IngestError when auth is
        required and missing or not granted by the checker.
        """
        matches = salted_matches(payload, headers, self.salts, self.header_regex)
        if required:
            if not matches:
                raise IngestError(403, "auth-missing", "No salted payload checksum given. " + hint())
            try:
                granted = self.checker(matches)
            except Exception:
                log.failure("AUTH_CHECKER raised; refusing the upload")
                granted = False
            if not granted:
                raise IngestError(
                    403, "auth-invalid", "Invalid or insufficient checksum authentication. " + hint()
                )
        return matches

    def columns(self, matches: Mapping[str, Optional[str]]) -> Tuple[Optional[str], Optional[str]]:
        """(matched, failed) comma-joined algorithm names; (None, None) when no salts are set."""
        if not self.salts:
            return None, None
        ordered = sorted(matches.items())
        return (
            ",".join(alg for alg, salt in ordered if salt),
            ",".join(alg for alg, salt in ordered if not salt),
        )
