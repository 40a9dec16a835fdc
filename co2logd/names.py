"""Column and table names: what is safe to put in SQL, and how to quote it."""

import re

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
