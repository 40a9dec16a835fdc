"""
Column and table names: what is safe to put in SQL, how to quote it, and
SQLite's rowid.

``rowid``, ``_rowid_`` and ``oid`` all name a table's rowid, unless the table
has a column of that name, which then hides it.  co2logd pages, counts and
rolls up by rowid, so uploads may not name a column after any of them
(:func:`is_reserved`).  A database that already has such a column (an older
co2logd accepted them) is still read correctly: the store addresses rows by
the first alias no column hides (:func:`rowid_alias`), and every reader of
the data table uses that alias (``Store.rowid``).
"""

import re
from typing import Iterable

from co2logd.store.interfaces import StoreError

SAFE_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*\Z")


def is_safe_identifier(name: str, max_length: int = 64) -> bool:
    """Lower-case ASCII letters, digits and ``_``, not starting with a digit."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= max_length
        and SAFE_IDENTIFIER.match(name) is not None
        and not name.startswith("sqlite_")
    )


def quote_identifier(name: str) -> str:
    """
    Quote a name already checked by :func:`is_safe_identifier` for SQL.

    The check is what makes it safe; the quotes keep SQL keywords that are
    valid names (``order``, ``group``) working as column names.
    """
    if not is_safe_identifier(name, max_length=1024):
        raise ValueError("unsafe SQL identifier {!r}".format(name))
    return '"{}"'.format(name)


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
