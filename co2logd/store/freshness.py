"""
The SQL of replay protection and idempotency keys.

The policy (claims, windows, 403/409) is in :mod:`co2logd.ingest.freshness`;
it hands the store plain values
(:class:`~co2logd.store.ReplayAdvance`, :class:`~co2logd.store.IdempotencyClaim`)
that the writer applies here, in the upload's savepoint, before its rows.
"""

from __future__ import annotations

import sqlite3
from typing import Optional, Tuple

from co2logd.store.interfaces import DuplicateUpload, IdempotencyClaim, ReplayAdvance, ReplayRefused
from co2logd.store.schema import IDEMPOTENCY_TABLE, REPLAY_TABLE
from co2logd.store.sqlite import transaction

_TAKE_KEY = (
    "INSERT INTO {t} (key, digest, receipt, created_at) VALUES (?, ?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET digest = excluded.digest, receipt = excluded.receipt, "
    "created_at = excluded.created_at WHERE {t}.created_at < ?"
).format(t=IDEMPOTENCY_TABLE)

_ADVANCE = (
    "INSERT INTO {t} (key, last, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT(key) DO UPDATE SET last = excluded.last, updated_at = excluded.updated_at "
    "WHERE excluded.last > {t}.last"
).format(t=REPLAY_TABLE)


def take_key(cursor: sqlite3.Cursor, claim: IdempotencyClaim) -> None:
    """Insert the idempotency key; an expired one is taken over, a live one raises DuplicateUpload."""
    cursor.execute(_TAKE_KEY, (claim.key, claim.digest, claim.receipt, claim.now, claim.cutoff))
    if cursor.rowcount != 1:
        raise DuplicateUpload(claim.key)


def advance(cursor: sqlite3.Cursor, step: ReplayAdvance) -> None:
    """Store the larger number (an UPSERT with a condition) or raise ReplayRefused."""
    cursor.execute(_ADVANCE, (step.key, step.number, step.now))
    if cursor.rowcount != 1:
        raise ReplayRefused(step)


def lookup_key(connection: sqlite3.Connection, key: str, cutoff: float) -> Optional[Tuple[str, str]]:
    """``(digest, receipt)`` of ``key`` stored at or after ``cutoff``, or None."""
    row = connection.execute(
        "SELECT digest, receipt FROM {} WHERE key = ? AND created_at >= ?".format(IDEMPOTENCY_TABLE), (key, cutoff)
    ).fetchone()
    return None if row is None else (row[0], row[1])


def expire_keys(connection: sqlite3.Connection, cutoff: float) -> int:
    """Delete the keys stored before ``cutoff``; how many went."""
    with transaction(connection):
        deleted: int = connection.execute(
            "DELETE FROM {} WHERE created_at < ?".format(IDEMPOTENCY_TABLE), (cutoff,)
        ).rowcount
    return deleted
