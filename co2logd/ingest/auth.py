"""
co2logserver's salted checksums; the salts never leave this module.

A sender adds headers ``Content-<ALG>-Salted: hex(ALG(payload + salt))``.
:func:`salted_matches` maps each given algorithm to the salt that matched (or
None); :class:`Authenticator` applies ``AUTH_CHECKER`` when auth is required.
:class:`DownloadAuthenticator` checks co2logserver's signed downloads.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Pattern, Sequence, Tuple, Union

from twisted.logger import Logger

from co2logd.errors import IngestError
from co2logd.ingest.freshness import ReplayPolicy

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


def given_checksums(headers: Headers, header_regex: Pattern[str], max_headers: Optional[int] = None) -> List[Tuple[str, str]]:
    """
    (algorithm, lowercase hex) for every well-formed checksum header.

    Unknown algorithms and digests of the wrong length are ignored (logged),
    as co2logserver does.  More than ``max_headers`` headers named like a
    checksum is a 400 (reason ``"too-many-checksums"``), raised before any
    hashing.
    """
    found: List[Tuple[str, str]] = []
    named = 0
    for name, value in header_items(headers):
        m = header_regex.fullmatch(name)
        if not m:
            continue
        named += 1
        if max_headers is not None and named > max_headers:
            raise IngestError(
                400,
                "too-many-checksums",
                "More than {} salted checksum headers (MAX_CHECKSUM_HEADERS); send one per algorithm".format(max_headers),
            )
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
        found.append((algorithm, value.lower()))
    return found


def salted_digests(payload: bytes, salts: Sequence[str], algorithm: str) -> List[str]:
    """
    ``salted_checksum(payload, salt, algorithm)`` for every salt, reading the
    payload once: the hash of the payload is copied and each copy finishes
    with one salt.
    """
    h = hashlib.new(algorithm)
    h.update(payload)
    digests = []
    for salt in salts:
        finished = h.copy()
        finished.update(salt.encode() if isinstance(salt, str) else salt)
        digests.append(finished.hexdigest())
    return digests


def salted_matches(
    payload: bytes, headers: Headers, salts: Sequence[str], header_regex: Pattern[str], max_headers: Optional[int] = None
) -> Dict[str, Optional[str]]:
    """
    Algorithm → the salt whose checksum matched, or None (the last header of
    an algorithm decides).  The payload is hashed at most once per algorithm,
    however many headers and salts there are.
    """
    matches: Dict[str, Optional[str]] = {}
    digests: Dict[str, List[str]] = {}
    for algorithm, given in given_checksums(headers, header_regex, max_headers):
        expected = digests.get(algorithm)
        if expected is None:
            expected = digests[algorithm] = salted_digests(payload, salts, algorithm)
        matched = None
        for salt, digest in zip(salts, expected):
            # compare_digest: a mismatch takes as long wherever it differs
            if hmac.compare_digest(digest, given):
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

    def __init__(
        self,
        salts: Sequence[str],
        checker: Callable[[Mapping[str, Optional[str]]], Any],
        header_regex: Pattern[str],
        max_headers: Optional[int] = None,
    ):
        self.salts = list(salts)
        self.checker = checker
        self.header_regex = header_regex
        self.max_headers = max_headers

    @classmethod
    def from_settings(cls, settings: Any) -> "Authenticator":
        """Build from :class:`co2logd.settings.Settings`."""
        return cls(
            settings.CHECKSUM_SALTS,
            settings.AUTH_CHECKER,
            settings.SALTED_CHECKSUM_HEADER_REGEX,
            settings.MAX_CHECKSUM_HEADERS,
        )

    def check(self, payload: bytes, headers: Headers, required: bool) -> Dict[str, Optional[str]]:
        """
        The matches for this payload; raise a 403 IngestError when auth is
        required and missing or not granted by the checker.
        """
        matches = self.matches(payload, headers)
        if required:
            self.require(matches)
        return matches

    def matches(self, payload: bytes, headers: Headers) -> Dict[str, Optional[str]]:
        """Algorithm → matching salt (or None) for this payload's checksum headers."""
        return salted_matches(payload, headers, self.salts, self.header_regex, self.max_headers)

    def require(self, matches: Mapping[str, Optional[str]]) -> None:
        """Raise a 403 IngestError unless the matches are given and granted by ``AUTH_CHECKER``."""
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

    def columns(self, matches: Mapping[str, Optional[str]]) -> Tuple[Optional[str], Optional[str]]:
        """(matched, failed) comma-joined algorithm names; (None, None) when no salts are set."""
        if not self.salts:
            return None, None
        ordered = sorted(matches.items())
        return (
            ",".join(alg for alg, salt in ordered if salt),
            ",".join(alg for alg, salt in ordered if not salt),
        )


class DownloadAuthenticator:
    """
    co2logserver's signed downloads: a salted checksum of the request's
    path and query; with replay protection on, of its Content-Counter (or
    Content-Timestamp) line and the path, as uploads sign theirs.
    """

    def __init__(self, authenticator: Authenticator, replay: ReplayPolicy):
        self.authenticator = authenticator
        self.replay = replay

    @classmethod
    def from_settings(cls, settings: Any) -> "DownloadAuthenticator":
        """Build from :class:`co2logd.settings.Settings`."""
        return cls(Authenticator.from_settings(settings), ReplayPolicy.from_settings(settings))

    def check(self, signed: bytes, headers: Headers) -> Dict[str, Optional[str]]:
        """The checksum matches for ``signed``; a 403 IngestError unless they grant access (``AUTH_CHECKER``)."""
        pairs = list(header_items(headers))
        claim = self.replay.claim(pairs)
        if claim is not None:
            signed = claim.signed(signed)
        return self.authenticator.check(signed, pairs, True)
