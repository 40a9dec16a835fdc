"""
The schema: every table co2logd keeps, and its versioned upgrades.

``prepare_database`` runs once, synchronously, before the reactor starts:
it creates or upgrades the schema (a version table, upgrade steps kept as
data) and reads the data table's columns.  A co2logserver 0.1.2 database is
used as it is; co2logd only adds its transport column and its own tables.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Dict, List, Tuple

from co2logd.store import mtime
from co2logd.store.mtime import MTIME_STATE_TABLE, MTIME_TABLE
from co2logd.store.mtime import SOURCE_TABLE as ROLLUP_SOURCE_TABLE
from co2logd.store.names import quote_identifier
from co2logd.store.interfaces import StoreError
from co2logd.store.sqlite import configure_connection

__all__ = [
    "DEAD_LETTER_TABLE",
    "HEARTBEAT_TABLE",
    "IDEMPOTENCY_TABLE",
    "MTIME_STATE_TABLE",
    "MTIME_TABLE",
    "OUTBOX_TABLE",
    "REPLAY_TABLE",
    "ROLLUP_SOURCE_TABLE",
    "ROLLUP_STATE_TABLE",
    "ROLLUP_TABLE",
    "SCHEMA_VERSION",
    "SCHEMA_VERSION_TABLE",
    "UPGRADES",
    "prepare_database",
    "table_columns",
    "upload_time_index",
]

SCHEMA_VERSION_TABLE = "co2logd_schema_version"
OUTBOX_TABLE = "co2logd_osem_outbox"
DEAD_LETTER_TABLE = "co2logd_osem_dead_letter"
ROLLUP_TABLE = "co2logd_rollup"
ROLLUP_STATE_TABLE = "co2logd_rollup_state"
ROLLUP_ODD_TABLE = "co2logd_rollup_odd"  # schema version 4 only; dropped by version 6
HEARTBEAT_TABLE = "co2logd_heartbeat"
REPLAY_TABLE = "co2logd_replay"
IDEMPOTENCY_TABLE = "co2logd_idempotency"

# Upgrade steps as data: version → statements.  Never edit a released step;
# append a new one.
UPGRADES: List[Tuple[int, List[str]]] = [
    (
        1,
        [
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY AUTOINCREMENT, "
            "queued_at REAL NOT NULL, entry TEXT NOT NULL)".format(OUTBOX_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, queued_at REAL NOT NULL, "
            "failed_at REAL NOT NULL, entry TEXT NOT NULL, reason TEXT NOT NULL)".format(
                DEAD_LETTER_TABLE
            ),
        ],
    ),
    (
        2,
        [
            # plots, /download?since= and the dashboard select by upload time (issue 5);
            # {index}, {table} and {upload_time} come from the settings in prepare_database,
            # {replay} and {idempotency} are the table names above
            "CREATE INDEX IF NOT EXISTS {index} ON {table} ({upload_time})",
        ],
    ),
    (
        3,
        [
            # replay protection and idempotent uploads (issue 7); "last" has no
            # type so counters stay exact integers and timestamps stay reals
            "CREATE TABLE IF NOT EXISTS {replay} (key TEXT PRIMARY KEY, last NOT NULL, updated_at REAL NOT NULL)",
            "CREATE TABLE IF NOT EXISTS {idempotency} (key TEXT PRIMARY KEY, digest TEXT NOT NULL, "
            "receipt TEXT NOT NULL, created_at REAL NOT NULL)",
            "CREATE INDEX IF NOT EXISTS co2logd_idempotency_created ON {idempotency} (created_at)",
        ],
    ),
    (
        4,
        [
            # plot rollups (issue 5): per plotted column, span (60 or 3600 s),
            # period start (UNIX seconds) and source, the min, max and count of
            # the numeric values; filled lazily from the rows after each
            # column's done_rowid (see Store.plot_series).  Sources are
            # (transport, box) value pairs; odd rows are rows whose upload time
            # is not stored text of the usual shape, read exactly instead.
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY, transport, box)".format(ROLLUP_SOURCE_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (col TEXT NOT NULL, span INTEGER NOT NULL, start INTEGER NOT NULL, "
            "source INTEGER NOT NULL, lo NOT NULL, hi NOT NULL, n INTEGER NOT NULL, "
            "PRIMARY KEY (col, span, start, source)) WITHOUT ROWID".format(ROLLUP_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (col TEXT PRIMARY KEY, done_rowid INTEGER NOT NULL, "
            "names TEXT NOT NULL)".format(ROLLUP_STATE_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (row INTEGER PRIMARY KEY)".format(ROLLUP_ODD_TABLE),
        ],
    ),
    (
        5,
        [
            # the heartbeat /health writes (issue 12): one row, updated in a committed transaction
            "CREATE TABLE IF NOT EXISTS {} (id INTEGER PRIMARY KEY CHECK (id = 1), beat_at REAL NOT NULL)".format(
                HEARTBEAT_TABLE
            ),
        ],
    ),
    (
        6,
        [
            # measurement time (issue 10): per data row (by rowid) its time on
            # the plots in UNIX seconds, its source and how the time was found
            # (co2logd.store.mtime); filled by the writer, and for older rows by the
            # maintenance timer from filled_to on.  The rollups are now keyed
            # by this time: the upload-time rollups of version 4 go.
            "CREATE TABLE IF NOT EXISTS {} (row INTEGER PRIMARY KEY, t REAL, src INTEGER, kind INTEGER NOT NULL)".format(MTIME_TABLE),
            "CREATE INDEX IF NOT EXISTS co2logd_mtime_t ON {} (t)".format(MTIME_TABLE),
            "CREATE INDEX IF NOT EXISTS co2logd_mtime_src ON {} (src, t)".format(MTIME_TABLE),
            "CREATE INDEX IF NOT EXISTS co2logd_mtime_unusable ON {} (t) WHERE kind >= 2".format(MTIME_TABLE),
            "CREATE INDEX IF NOT EXISTS co2logd_rollup_source_key ON {} (transport, box)".format(ROLLUP_SOURCE_TABLE),
            "CREATE TABLE IF NOT EXISTS {} (k INTEGER PRIMARY KEY, filled_to INTEGER NOT NULL, names TEXT NOT NULL)".format(MTIME_STATE_TABLE),
            "DELETE FROM {}".format(ROLLUP_TABLE),
            "DELETE FROM {}".format(ROLLUP_STATE_TABLE),
            "DROP TABLE IF EXISTS {}".format(ROLLUP_ODD_TABLE),
        ],
    ),
]
SCHEMA_VERSION = UPGRADES[-1][0]

def prepare_database(path: str, settings: Any) -> Dict[str, str]:
    """
    Create or upgrade the schema; return the data table's columns (name → type).

    Synchronous on purpose: it runs before the reactor, so a database that
    cannot be opened or upgraded stops start-up with a clear error.
    """
    try:
        connection = sqlite3.connect(path)
    except sqlite3.Error as e:
        raise StoreError("Cannot open database {}: {}".format(path, e))
    try:
        configure_connection(connection, settings.DB_SYNCHRONOUS)
        connection.execute("BEGIN IMMEDIATE")
        table = quote_identifier(settings.DATA_TABLE_NAME)
        columns = table_columns(connection, settings.DATA_TABLE_NAME)
        if not columns:
            connection.execute(
                "CREATE TABLE {} ({} DATETIME, {} TEXT, {} TEXT, {} TEXT)".format(
                    table,
                    quote_identifier(settings.UPLOAD_TIME_COL),
                    quote_identifier(settings.MATCHED_CHECKSUMS_COL),
                    quote_identifier(settings.FAILED_CHECKSUMS_COL),
                    quote_identifier(settings.TRANSPORT_COL),
                )
            )
        else:
            wanted = [
                (settings.UPLOAD_TIME_COL, "DATETIME"),
                (settings.MATCHED_CHECKSUMS_COL, "TEXT"),
                (settings.FAILED_CHECKSUMS_COL, "TEXT"),
                (settings.TRANSPORT_COL, "TEXT"),
            ]
            for name, declared in wanted:
                if name not in columns:
                    connection.execute(
                        "ALTER TABLE {} ADD COLUMN {} {}".format(table, quote_identifier(name), declared)
                    )
        connection.execute(
            "CREATE TABLE IF NOT EXISTS {} (version INTEGER NOT NULL)".format(SCHEMA_VERSION_TABLE)
        )
        row = connection.execute("SELECT max(version) FROM {}".format(SCHEMA_VERSION_TABLE)).fetchone()
        current = row[0] or 0
        if current > SCHEMA_VERSION:
            raise StoreError(
                "Database {} has schema version {}, newer than this co2logd ({}); upgrade co2logd".format(
                    path, current, SCHEMA_VERSION
                )
            )
        names = {
            "table": table,
            "upload_time": quote_identifier(settings.UPLOAD_TIME_COL),
            "index": quote_identifier(upload_time_index(settings)),
            "replay": REPLAY_TABLE,
            "idempotency": IDEMPOTENCY_TABLE,
        }
        for version, statements in UPGRADES:
            if version > current:
                for statement in statements:
                    connection.execute(statement.format(**names))
                connection.execute(
                    "INSERT INTO {} (version) VALUES (?)".format(SCHEMA_VERSION_TABLE), (version,)
                )
        _check_mtime_names(connection, settings)
        connection.execute("COMMIT")
        return table_columns(connection, settings.DATA_TABLE_NAME)
    except sqlite3.Error as e:
        raise StoreError("Cannot prepare database {}: {}".format(path, e))
    finally:
        connection.close()


def _check_mtime_names(connection: sqlite3.Connection, settings: Any) -> None:
    """
    Start the measurement-time side table afresh when the settings it was
    built under (time columns, source columns) changed: maintenance then
    refills it, and the rollups, from the first row in the background.
    """
    names = mtime.names(settings)
    row = connection.execute("SELECT names FROM {} WHERE k = 1".format(MTIME_STATE_TABLE)).fetchone()
    if row is not None and row[0] == names:
        return
    connection.execute("DELETE FROM {}".format(MTIME_TABLE))
    connection.execute("DELETE FROM {}".format(ROLLUP_TABLE))
    connection.execute("DELETE FROM {}".format(ROLLUP_STATE_TABLE))
    connection.execute(
        "INSERT OR REPLACE INTO {} (k, filled_to, names) VALUES (1, 0, ?)".format(MTIME_STATE_TABLE), (names,)
    )


def upload_time_index(settings: Any) -> str:
    """The name of the index on the upload-time column (schema version 2)."""
    return "{}_{}_idx".format(settings.DATA_TABLE_NAME, settings.UPLOAD_TIME_COL)


def table_columns(connection: sqlite3.Connection, table: str) -> Dict[str, str]:
    """The columns of ``table`` as SQLite has them: lower-cased name → declared type."""
    rows = connection.execute("SELECT name, type FROM pragma_table_info(?)", (table,)).fetchall()
    return {name.lower(): declared for name, declared in rows}
