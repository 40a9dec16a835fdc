"""The SQL of the OpenSenseMap outbox and its dead letters (each function runs on the writer's connection)."""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, List, Sequence, Tuple

from co2logd.store.schema import DEAD_LETTER_TABLE, OUTBOX_TABLE
from co2logd.store.sqlite import transaction

_QUEUE = "INSERT INTO {} (queued_at, entry) VALUES (?, ?)".format(OUTBOX_TABLE)


def queue(cursor: sqlite3.Cursor, queued_at: float, entries: Sequence[str]) -> None:
    """Queue entries inside the caller's transaction (the upload's savepoint)."""
    cursor.executemany(_QUEUE, [(queued_at, entry) for entry in entries])


def fetch(connection: sqlite3.Connection, limit: int) -> List[Tuple[int, float, str]]:
    """The oldest ``limit`` entries as ``[(id, queued_at, entry)]``."""
    rows = connection.execute(
        "SELECT id, queued_at, entry FROM {} ORDER BY id LIMIT ?".format(OUTBOX_TABLE), (limit,)
    ).fetchall()
    return [(i, queued_at, entry) for i, queued_at, entry in rows]


def delete(connection: sqlite3.Connection, ids: Sequence[int]) -> int:
    """Remove delivered entries; how many ids were given."""
    with transaction(connection):
        connection.executemany("DELETE FROM {} WHERE id = ?".format(OUTBOX_TABLE), [(i,) for i in ids])
    return len(ids)


def dead_letter(connection: sqlite3.Connection, failures: Sequence[Tuple[int, str]], failed_at: float) -> int:
    """Move entries refused for good, with their reasons, to the dead letters."""
    with transaction(connection):
        connection.executemany(
            "INSERT OR REPLACE INTO {dead} (id, queued_at, failed_at, entry, reason) "
            "SELECT id, queued_at, ?, entry, ? FROM {outbox} WHERE id = ?".format(dead=DEAD_LETTER_TABLE, outbox=OUTBOX_TABLE),
            [(failed_at, reason, i) for i, reason in failures],
        )
        connection.executemany("DELETE FROM {} WHERE id = ?".format(OUTBOX_TABLE), [(i,) for i, _ in failures])
    return len(failures)


def stats(connection: sqlite3.Connection) -> Dict[str, Any]:
    """``{"depth", "oldest_queued_at", "dead_letters"}``."""
    depth, oldest = connection.execute("SELECT count(*), min(queued_at) FROM {}".format(OUTBOX_TABLE)).fetchone()
    (dead,) = connection.execute("SELECT count(*) FROM {}".format(DEAD_LETTER_TABLE)).fetchone()
    return {"depth": depth, "oldest_queued_at": oldest, "dead_letters": dead}


def dead_letters(connection: sqlite3.Connection, limit: int) -> List[Tuple[int, float, float, str, str]]:
    """The newest ``limit`` dead letters as ``[(id, queued_at, failed_at, entry, reason)]``."""
    rows = connection.execute(
        "SELECT id, queued_at, failed_at, entry, reason FROM {} ORDER BY failed_at DESC LIMIT ?".format(DEAD_LETTER_TABLE),
        (limit,),
    ).fetchall()
    return [(i, queued_at, failed_at, entry, reason) for i, queued_at, failed_at, entry, reason in rows]
