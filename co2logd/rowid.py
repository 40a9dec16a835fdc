"""
SQLite's rowid and the names that reach it.

``rowid``, ``_rowid_`` and ``oid`` all name a table's rowid, unless the table
has a column of that name, which then hides it.  co2logd pages, counts and
rolls up by rowid, so uploads may not name a column after any of them
(:func:`is_reserved`).  A database that already has such a column (an older
co2logd accepted them) is still read correctly: the store addresses rows by
the first alias no column hides (:func:`rowid_alias`), and every reader of
the data table uses that alias (``Store.rowid``).
"""

from __future__ import annotations

from typing import Iterable

from co2logd.store.interfaces import StoreError

#: every name SQLite accepts for the rowid, in the order the store prefers them
ALIASES = ("rowid", "_rowid_", "oid")
RESERVED = frozenset(ALIASES)


def is_reserved(name: str) -> bool:
    """True for ``rowid``, ``_rowid_`` and ``oid``, in any case."""
    return name.lower() in RESERVED


def rowid_alias(columns: Iterable[str]) -> str:
    """
    The first of ``rowid``, ``_rowid_``, ``oid`` that no column of the table
    hides; a :class:`~co2logd.store.StoreError` if the table hides all three.
    """
    taken = {name.lower() for name in columns}
    for alias in ALIASES:
        if alias not in taken:
            return alias
    raise StoreError(
        "The data table has columns named rowid, _rowid_ and oid, which hide SQLite's rowid; "
        "co2logd cannot page or count its rows.  Rename one of them (ALTER TABLE ... RENAME COLUMN)"
    )
