"""
The store: every SQL statement of co2logd, behind :class:`IStore`.

:class:`Store` is the SQLite store (one file through adbapi);
:class:`co2logd.testing.MemoryStore` is its verified fake.  See
:mod:`co2logd.store.interfaces` for the operations and the values that cross.
"""

from co2logd.store.interfaces import (
    DatabaseLost,
    DuplicateUpload,
    IdempotencyClaim,
    IRowStream,
    IStore,
    Query,
    ReplayAdvance,
    ReplayRefused,
    StoreBusy,
    StoreError,
    StoreUnavailable,
    ValueRefused,
    WriteObserver,
    WriteRequest,
)
from co2logd.store.schema import SCHEMA_VERSION, UPGRADES, prepare_database, upload_time_index
from co2logd.store.sqlite import configure_connection
from co2logd.store.reads import RowStream
from co2logd.store.sqlite_store import Store

__all__ = [
    "DatabaseLost",
    "DuplicateUpload",
    "IdempotencyClaim",
    "IRowStream",
    "IStore",
    "Query",
    "ReplayAdvance",
    "ReplayRefused",
    "RowStream",
    "SCHEMA_VERSION",
    "Store",
    "StoreBusy",
    "StoreError",
    "StoreUnavailable",
    "ValueRefused",
    "UPGRADES",
    "WriteObserver",
    "WriteRequest",
    "configure_connection",
    "prepare_database",
    "upload_time_index",
]
