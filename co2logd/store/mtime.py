"""
Measurement time: where a row sits on the dashboard's and /plot's time axis.

A row's measurement time is the first ``TIME_COLS`` column (or
``DASHBOARD_TIME_COL`` alone, when set) that holds a converted time; a row
without one sits at its upload time.  The store keeps it per row in a side
table keyed by the data table's rowid (``co2logd_mtime``: ``t`` in UNIX
seconds, the source id, and a ``kind``), filled in the writer's transaction
for new rows and by the store's maintenance timer for rows it has not seen
(an upgraded database, another program writing).  The plot rollups are keyed
by ``t``, so a day sent in one upload fills the day, and a backfill lands in
the buckets of its own time.

A time is usable when it is stored text SQLite can read, from 1970 on, and
not more than a year after the row's upload time.  Anything else (text that
is no time, a number the converter did not take, a time in 1900 or 2300)
falls back to the upload time and is counted as ``UNUSABLE``; ``NULL``
means the row carries no measurement time (``UPLOAD``).  A row whose upload
time is unusable too has ``t`` NULL and is left out of every plot.

Only SQL text here (identifiers quoted, nothing user-supplied); no reactor.
"""

from __future__ import annotations

import json
from typing import Any, List, Mapping

from co2logd.store.names import quote_identifier

MTIME_TABLE = "co2logd_mtime"
MTIME_STATE_TABLE = "co2logd_mtime_state"
SOURCE_TABLE = "co2logd_rollup_source"

#: kinds of measurement time
MEASURED, UPLOAD, UNUSABLE, NONE = 0, 1, 2, 3

UNIX_EPOCH_JD = 2440587.5  # julianday('1970-01-01')
MAX_AHEAD_DAYS = 366  # a time more than a year after its upload is a device clock gone wrong


def time_columns(settings: Any, columns: Mapping[str, str]) -> List[str]:
    """The columns that may hold a row's measurement time, in order of preference."""
    if settings.DASHBOARD_TIME_COL:
        wanted = [settings.DASHBOARD_TIME_COL.lower()]
    else:
        wanted = [c.lower() for c in settings.TIME_COLS]
    return [c for c in wanted if c in columns]


def names(settings: Any) -> str:
    """The settings the side table depends on; another value means rebuild it."""
    return json.dumps(
        [settings.DASHBOARD_TIME_COL, [c.lower() for c in settings.TIME_COLS], settings.UPLOAD_TIME_COL,
         settings.TRANSPORT_COL, settings.OSEM_BOX_COL]
    )


def _unix(value_sql: str) -> str:
    # julianday keeps whole milliseconds: rounding to them undoes the float error
    return "round((julianday({}) - {}) * 86400.0, 3)".format(value_sql, UNIX_EPOCH_JD)


def index_statements(settings: Any, columns: Mapping[str, str], table: str, rowid: str = "rowid") -> List[str]:
    """
    The statements that index the data rows with ``? < rowid <= ?`` (both
    bound twice: once per statement): new sources into the source table,
    then one side-table row per data row.
    """

    def d(name: str) -> str:
        return "d." + quote_identifier(name)

    transport = d(settings.TRANSPORT_COL) if settings.TRANSPORT_COL in columns else "NULL"
    box = d(settings.OSEM_BOX_COL) if settings.OSEM_BOX_COL in columns else "NULL"
    upload = d(settings.UPLOAD_TIME_COL)
    up_ok = "(typeof({u}) = 'text' AND julianday({u}) >= {e})".format(u=upload, e=UNIX_EPOCH_JD)
    limit = "coalesce(julianday({}), julianday('now')) + {}".format(upload, MAX_AHEAD_DAYS)
    candidates = [d(c) for c in time_columns(settings, columns)]
    oks = [
        "(typeof({c}) = 'text' AND julianday({c}) BETWEEN {e} AND {limit})".format(c=c, e=UNIX_EPOCH_JD, limit=limit)
        for c in candidates
    ]
    t_cases = "".join(" WHEN {} THEN {}".format(ok, _unix(c)) for ok, c in zip(oks, candidates))
    t_sql = "CASE{} WHEN {} THEN {} END".format(t_cases, up_ok, _unix(upload))
    if candidates:
        measured = " OR ".join(oks)
        absent = " AND ".join("{} IS NULL".format(c) for c in candidates)
        kind_sql = (
            "CASE WHEN {measured} THEN {m} WHEN NOT {up_ok} THEN {n} WHEN {absent} THEN {u} ELSE {x} END".format(
                measured=measured, m=MEASURED, up_ok=up_ok, n=NONE, absent=absent, u=UPLOAD, x=UNUSABLE
            )
        )
    else:
        kind_sql = "CASE WHEN {} THEN {} ELSE {} END".format(up_ok, UPLOAD, NONE)
    rows = "FROM {table} AS d WHERE d.{rowid} > ? AND d.{rowid} <= ?".format(table=table, rowid=rowid)
    same_source = "s.transport IS {} AND s.box IS {}".format(transport, box)
    return [
        "INSERT INTO {src} (transport, box) SELECT DISTINCT {transport}, {box} {rows} "
        "AND NOT EXISTS (SELECT 1 FROM {src} AS s WHERE {same})".format(
            src=SOURCE_TABLE, transport=transport, box=box, rows=rows, same=same_source
        ),
        "INSERT OR REPLACE INTO {mt} (row, t, src, kind) SELECT d.{rowid}, {t}, "
        "(SELECT s.id FROM {src} AS s WHERE {same} LIMIT 1), {kind} {rows}".format(
            mt=MTIME_TABLE, rowid=rowid, t=t_sql, src=SOURCE_TABLE, same=same_source, kind=kind_sql, rows=rows
        ),
    ]
