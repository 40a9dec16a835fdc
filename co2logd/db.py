"""What the store's modules share: the error type and the transaction block."""

from __future__ import annotations

import contextlib


class StoreError(Exception):
    """The database cannot be opened, upgraded or written."""


@contextlib.contextmanager
def transaction(connection):
    """BEGIN IMMEDIATE … COMMIT, rolled back if anything in the block raises."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.rollback()
        raise
