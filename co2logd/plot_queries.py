"""
Read queries for the dashboard, plots, /health and paged downloads, with the
plot rollups (min/max/count per minute and hour of upload time, filled
lazily in bounded chunks).

:class:`PlotQueries` is a mixin of :class:`co2logd.store.Store`: the same
adbapi pool and connection, kept in a module of its own so store.py stays
the schema and the write path.  All SQL is still here or in store.py.
"""

from __future__ import annotations

import bisect
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger
from twisted.python.failure import Failure

from co2logd import rollup
from co2logd.db import StoreError, transaction
from co2logd.names import quote_identifier

log = Logger()

ROLLUP_TABLE = "co2logd_rollup"
ROLLUP_SOURCE_TABLE = "co2logd_rollup_source"
ROLLUP_STATE_TABLE = "co2logd_rollup_state"
ROLLUP_ODD_TABLE = "co2logd_rollup_odd"

_MORE = object()  # a rollup step that has more rows to fold in


class PlotQueries:
    """The read side of :class:`co2logd.store.Store` used by the dashboard, plots and /health."""

    #
    # Reads only.  Time bounds
    # are text in the stored upload-time format (co2logd.timerange.time_text),
    # so comparisons are text comparisons the upload-time index serves.

    #: rows of the data table rolled up per database interaction: bounds how
    #: long a rollup fill holds the database (and so delays uploads) at a time
    rollup_chunk_rows = 25_000
    #: rows read per interaction by the exact path (reading is cheaper than rolling up)
    exact_chunk_rows = 100_000
    #: rolling a row up costs about this many rows read exactly (measured: ~1.5 µs against ~0.5 µs)
    rollup_cost = 3

    def plot_buckets(
        self,
        columns: Sequence[str],
        bounds: Sequence[str],
        filters: Sequence[Tuple[str, Any]] = (),
        rollups: bool = True,
    ) -> Deferred:
        """
        Min and max of each column's numeric values per time bucket
        ``[bounds[i], bounds[i+1])`` of the upload-time column, rows matching
        ``filters`` (column = value) only.  Fires with ``[(i, [(min, max), …])]``
        for the buckets holding any numeric value, in bucket order.  Exact
        either way: every min and every max of the rows survives.

        Buckets holding whole minutes are answered from the rollups (see
        :mod:`co2logd.rollup`): whole hours and minutes from the per-source
        summaries, only the ragged ends shorter than a minute from the rows.
        The rollups first catch up with every row added since the columns
        were last rolled up (rowid above the column's ``done_rowid``), in
        chunks of :attr:`rollup_chunk_rows` rows per database interaction so
        uploads get their turn between chunks; the last chunk and the bucket
        queries share one transaction, so nothing committed before the
        answer is missed.  Rows are folded in by rowid, not by time, so a row
        that arrives late with an older upload time (a clock stepped back, a
        long write queue, another program writing) still lands in its
        period: min, max and count merge.

        When catching up would cost more than reading the range's rows (the
        first plot of a big table, or a short range after a long time), the
        rows are read instead (:meth:`_exact_step`, also in bounded chunks)
        and the rollups are filled in the background for the next plot.
        Filters on anything but the transport and box columns, and plots
        where no bucket holds a whole minute (short ranges), always read the
        rows.  Rollups assume rows are appended, never edited: after editing
        the data table by hand, ``DELETE FROM co2logd_rollup_state`` makes
        the next plot rebuild them.
        """
        job = _PlotJob(list(columns), list(bounds), list(filters))
        if rollups and job.columns and self._rollup_can_filter(job.filters):
            job.pieces = rollup.plan(job.bounds)
        d = self._in_steps(self._plot_step, job)

        def answered(result):
            if job.mode == "exact" and job.pieces is not None:
                self._fill_in_background(job.columns)
            return result

        return d.addCallback(answered)

    def _in_steps(self, step: Callable[..., Any], *args: Any) -> Deferred:
        """
        Run ``step(connection, *args)`` in one interaction after another until
        it returns something other than ``_MORE``; fire with that.  Between
        steps other work (uploads) gets the connection.
        """
        result: Deferred = Deferred()

        def run(_=None) -> None:
            if self._closed:
                result.errback(Failure(StoreError("The store is closed")))
                return
            self.pool.runWithConnection(step, *args).addCallbacks(stepped, result.errback)

        def stepped(outcome) -> None:
            if outcome is _MORE:
                run()  # adbapi fires from the reactor loop: no recursion builds up
            else:
                result.callback(outcome)

        run()
        return result

    def _plot_step(self, connection, job: "_PlotJob"):
        """One interaction of a plot: choose the path on the first, then read or roll up a chunk."""
        if job.mode is None:
            job.mode = "exact" if job.pieces is None or self._cheaper_to_read(connection, job) else "rollup"
        if job.mode == "exact":
            return self._exact_step(connection, job)
        return self._rollup_step(connection, job.columns, lambda c: self._rollup_buckets(c, job))

    def _cheaper_to_read(self, connection, job: "_PlotJob") -> bool:
        """True when reading the range's rows costs less than catching the rollups up first."""
        (top,) = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()
        names = self._rollup_names()
        marks = dict(
            (col, done if was == names else 0)
            for col, done, was in connection.execute(
                "SELECT col, done_rowid, names FROM {} WHERE col IN ({})".format(ROLLUP_STATE_TABLE, ", ".join("?" * len(job.columns))),
                job.columns,
            )
        )
        lag = top - min(marks.get(c, 0) for c in job.columns)
        if lag <= self.rollup_chunk_rows:
            return False
        t = quote_identifier(self.settings.UPLOAD_TIME_COL)
        first = connection.execute(
            "SELECT rowid FROM {} WHERE {t} >= ? ORDER BY {t} LIMIT 1".format(self.table, t=t), (job.bounds[0],)
        ).fetchone()
        last = connection.execute(
            "SELECT rowid FROM {} WHERE {t} < ? ORDER BY {t} DESC LIMIT 1".format(self.table, t=t), (job.bounds[-1],)
        ).fetchone()
        rows = max(0, last[0] - first[0] + 1) if first and last else 0  # about the rows in range (rowids follow time)
        return rows < self.rollup_cost * lag

    def _fill_in_background(self, columns: Sequence[str]) -> None:
        """Catch the columns' rollups up, chunk by chunk, unless that is already under way."""
        key = frozenset(columns)
        if key in self._filling or not self.running:
            return
        columns = list(columns)

        def step(connection):  # stops after the chunk in hand when the store stops
            return self._rollup_step(connection, columns, lambda c: None) if self.running else None

        self._filling[key] = d = self._in_steps(step)
        log.info("Filling the plot rollups of {columns} in the background", columns=", ".join(columns))

        def done(result):
            del self._filling[key]
            if isinstance(result, Failure) and self.running:
                log.failure("Filling the plot rollups failed", result)

        d.addBoth(done)

    def rollups_idle(self) -> Deferred:
        """Fires once no background rollup fill is running (for tests and benchmarks)."""
        return DeferredList(list(self._filling.values())).addCallback(lambda _: None)

    def _exact_step(self, connection, job: "_PlotJob"):
        """
        The next buckets from the rows, about :attr:`exact_chunk_rows` rows
        per interaction.  No GROUP BY: grouping on a computed bucket makes
        SQLite sort every row.  Instead the upload-time index gives each
        bucket's smallest and largest rowid and its row count (an index-only
        scan), and one aggregate per bucket reads that rowid range of the
        table in order.  The range holds every row of the bucket; when it
        holds nothing else (rowids and times grow together, as they do) the
        time test is skipped, otherwise rows are checked against the bucket's
        bounds.  Plain min/max are used unless a bucket holds text among the
        numbers (SQLite sorts text after numbers); then that bucket is read
        again keeping numeric values only.
        """
        columns, bounds, filters = job.columns, job.bounds, job.filters
        time_col = quote_identifier(self.settings.UPLOAD_TIME_COL)
        index_scan = "SELECT min(rowid), max(rowid), count(*) FROM {table} WHERE {t} >= ? AND {t} < ?".format(
            table=self.table, t=time_col
        )
        filter_sql = "".join(" AND {} = ?".format(quote_identifier(c)) for c, _ in filters)
        filter_values = [v for _, v in filters]
        statements: Dict[Tuple[bool, bool], str] = {}

        def statement(check_time: bool, numeric_only: bool) -> str:
            key = (check_time, numeric_only)
            if key not in statements:
                parts = []
                for column in columns:
                    c = quote_identifier(column)
                    value = _numeric(c) if numeric_only else c
                    parts += ["min({})".format(value), "max({})".format(value)]
                statements[key] = "SELECT {} FROM {} NOT INDEXED WHERE rowid BETWEEN ? AND ?{}{}".format(
                    ", ".join(parts),
                    self.table,
                    " AND {t} >= ? AND {t} < ?".format(t=time_col) if check_time else "",
                    filter_sql,
                )
            return statements[key]

        budget = self.exact_chunk_rows
        while job.next_bucket < len(bounds) - 1 and budget > 0:
            i = job.next_bucket
            job.next_bucket += 1
            lo, hi = bounds[i], bounds[i + 1]
            first, last, count = connection.execute(index_scan, (lo, hi)).fetchone()
            if first is None:
                continue
            budget -= count
            check_time = last - first + 1 != count
            params = [first, last] + ([lo, hi] if check_time else []) + filter_values
            row = connection.execute(statement(check_time, False), params).fetchone()
            if any(isinstance(v, (str, bytes)) for v in row):
                row = connection.execute(statement(check_time, True), params).fetchone()
            pairs = [(row[2 * k], row[2 * k + 1]) for k in range(len(columns))]
            if any(low is not None for low, _ in pairs):
                job.out.append((i, pairs))
        return job.out if job.next_bucket >= len(bounds) - 1 else _MORE

    # The rollups.  All their SQL is here; co2logd.rollup does the arithmetic.

    def _rollup_names(self) -> str:
        """The settings a rollup depends on; a column rolled up under other names is rebuilt."""
        s = self.settings
        return "{}|{}|{}".format(s.UPLOAD_TIME_COL, s.TRANSPORT_COL, s.OSEM_BOX_COL)

    def _rollup_can_filter(self, filters: Sequence[Tuple[str, Any]]) -> bool:
        """True when every filter is on the transport or the box column (the rollups' sources)."""
        return all(column in (self.settings.TRANSPORT_COL, self.settings.OSEM_BOX_COL) for column, _ in filters)

    def _rollup_step(self, connection, columns: Sequence[str], then: Callable[[Any], Any]):
        """One interaction: roll up at most ``rollup_chunk_rows`` rows; if that was all, answer with ``then`` too."""
        names = self._rollup_names()
        with transaction(connection):
            (top,) = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()
            marks = "({})".format(", ".join("?" * len(columns)))
            states = {
                col: (done, was)
                for col, done, was in connection.execute(
                    "SELECT col, done_rowid, names FROM {} WHERE col IN {}".format(ROLLUP_STATE_TABLE, marks), list(columns)
                )
            }
            done: Dict[str, int] = {}
            for column in columns:
                mark, was = states.get(column, (0, None))
                if was != names or mark > top:  # new, other settings, or rows deleted: start afresh
                    connection.execute("DELETE FROM {} WHERE col = ?".format(ROLLUP_TABLE), (column,))
                    mark = 0
                done[column] = mark
            budget = self.rollup_chunk_rows
            while budget > 0:
                lagging = [c for c in columns if done[c] < top]
                if not lagging:
                    break
                low = min(done[c] for c in lagging)
                group = [c for c in lagging if done[c] == low]
                high = min(top, low + budget)
                self._roll_up(connection, group, low, high)
                for column in group:
                    done[column] = high
                budget -= high - low
            connection.executemany(
                "INSERT OR REPLACE INTO {} (col, done_rowid, names) VALUES (?, ?, ?)".format(ROLLUP_STATE_TABLE),
                [(c, done[c], names) for c in columns],
            )
            if any(done[c] < top for c in columns):
                return _MORE
            return then(connection)

    def _roll_up(self, connection, columns: Sequence[str], low: int, high: int) -> None:
        """
        Fold the rows with ``low < rowid <= high`` into the minute and hour
        rollups of ``columns``: one GROUP BY (minute key, transport, box) over
        that rowid range, plain min/max/count unless text hides among the
        numbers (then those columns again, numbers only).  The minute key is
        the first 16 characters of the stored upload time; a group whose key
        is not a real minute, or whose smallest time sorts before the
        minute's ``:00``, is odd: its rows go to the odd table instead.
        """
        s = self.settings
        t = quote_identifier(s.UPLOAD_TIME_COL)
        has_box = connection.execute(
            "SELECT 1 FROM pragma_table_info(?) WHERE lower(name) = ?", (s.DATA_TABLE_NAME, s.OSEM_BOX_COL.lower())
        ).fetchone()
        box = quote_identifier(s.OSEM_BOX_COL) if has_box else "NULL"
        grouped = (
            "SELECT substr({t}, 1, 16), {transport}, {box}, min({t}), {{stats}} FROM {table} "
            "WHERE rowid > ? AND rowid <= ? GROUP BY 1, 2, 3".format(
                t=t, transport=quote_identifier(s.TRANSPORT_COL), box=box, table=self.table
            )
        )

        def stats(value) -> str:
            return ", ".join("min({v}), max({v}), count({v})".format(v=value(quote_identifier(c))) for c in columns)

        rows = connection.execute(grouped.format(stats=stats(str)), (low, high)).fetchall()
        if any(isinstance(v, (str, bytes)) for row in rows for v in row[4:]):
            rows = connection.execute(grouped.format(stats=stats(_numeric)), (low, high)).fetchall()
        sources = dict(
            ((transport, box_value), i)
            for i, transport, box_value in connection.execute("SELECT id, transport, box FROM {}".format(ROLLUP_SOURCE_TABLE))
        )
        minutes = []
        hours: Dict[Tuple[str, int, int], Tuple[Any, Any, int]] = {}
        odd = set()
        for key, transport, box_value, earliest, *values in rows:
            if key is None:
                continue  # no upload time: in no time range
            start = rollup.minute_start(key) if isinstance(key, str) else None
            if start is None or not earliest >= key + ":00":
                odd.add(key)
                continue
            source = sources.get((transport, box_value))
            if source is None:
                source = sources[(transport, box_value)] = connection.execute(
                    "INSERT INTO {} (transport, box) VALUES (?, ?)".format(ROLLUP_SOURCE_TABLE), (transport, box_value)
                ).lastrowid
            hour = start - start % rollup.HOUR
            for k, column in enumerate(columns):
                lo, hi, n = values[3 * k: 3 * k + 3]
                if not n:
                    continue
                minutes.append((column, rollup.MINUTE, start, source, lo, hi, n))
                key3 = (column, hour, source)
                old = hours.get(key3)
                if old is None:
                    hours[key3] = (lo, hi, n)
                else:
                    hours[key3] = (lo if lo < old[0] else old[0], hi if hi > old[1] else old[1], n + old[2])
        upsert = (
            "INSERT INTO {} (col, span, start, source, lo, hi, n) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (col, span, start, source) DO UPDATE SET "
            "lo = min(lo, excluded.lo), hi = max(hi, excluded.hi), n = n + excluded.n".format(ROLLUP_TABLE)
        )
        connection.executemany(upsert, minutes)
        connection.executemany(
            upsert, [(c, rollup.HOUR, hour, source, lo, hi, n) for (c, hour, source), (lo, hi, n) in hours.items()]
        )
        if odd:
            keys = list(odd)
            connection.execute(
                "INSERT OR IGNORE INTO {odd} (row) SELECT rowid FROM {table} WHERE rowid > ? AND rowid <= ? "
                "AND substr({t}, 1, 16) IN ({marks})".format(
                    odd=ROLLUP_ODD_TABLE, table=self.table, t=t, marks=", ".join("?" * len(keys))
                ),
                [low, high] + keys,
            )

    def _rollup_buckets(self, connection, job: "_PlotJob") -> list:
        """Every bucket from the rollups, the rows of its ragged ends and the odd rows."""
        columns, bounds, pieces, filters = job.columns, job.bounds, job.pieces, job.filters
        t = quote_identifier(self.settings.UPLOAD_TIME_COL)
        marks = ", ".join("?" * len(columns))
        filter_sql = "".join(" AND {} = ?".format(quote_identifier(c)) for c, _ in filters)
        filter_values = [v for _, v in filters]
        source_sql, source_ids = "", []
        if filters:
            source_ids = self._rollup_sources_matching(connection, filters)
            source_sql = " AND source IN ({})".format(", ".join("?" * len(source_ids)))
        summary = "SELECT col, min(lo), max(hi) FROM {} WHERE col IN ({}) AND span = ? AND start >= ? AND start < ?{} GROUP BY col".format(
            ROLLUP_TABLE, marks, source_sql
        )
        values = ", ".join("min({v}), max({v})".format(v=_numeric(quote_identifier(c))) for c in columns)
        exact = "SELECT {} FROM {} WHERE {t} >= ? AND {t} < ?{}".format(values, self.table, filter_sql, t=t)
        position = {c: k for k, c in enumerate(columns)}
        nothing = [(None, None)] * len(columns)
        found: Dict[int, list] = {}
        for i, piece in enumerate(pieces):
            pairs = list(nothing)
            for span, first, end in piece.periods:
                for column, lo, hi in connection.execute(summary, list(columns) + [span, first, end] + source_ids):
                    k = position[column]
                    pairs[k] = rollup.merge(pairs[k], lo, hi)
            for a, b in piece.exact:
                row = connection.execute(exact, [a, b] + filter_values).fetchone()
                for k in range(len(columns)):
                    pairs[k] = rollup.merge(pairs[k], row[2 * k], row[2 * k + 1])
            found[i] = pairs
        # rows whose upload time has an unusual shape are in no rollup: read them as they are
        odd_rows = connection.execute(
            "SELECT {t}, {cols} FROM {table} WHERE rowid IN (SELECT row FROM {odd}) AND {t} >= ? AND {t} < ?{f}".format(
                t=t, cols=", ".join(_numeric(quote_identifier(c)) for c in columns), table=self.table,
                odd=ROLLUP_ODD_TABLE, f=filter_sql,
            ),
            [bounds[0], bounds[-1]] + filter_values,
        ).fetchall()
        for when, *row_values in odd_rows:
            i = bisect.bisect_right(bounds, when) - 1
            for k, value in enumerate(row_values):
                found[i][k] = rollup.merge(found[i][k], value, value)
        return [(i, pairs) for i, pairs in sorted(found.items()) if any(low is not None for low, _ in pairs)]

    def _rollup_sources_matching(self, connection, filters: Sequence[Tuple[str, Any]]) -> List[int]:
        """
        Ids of the sources a transport/box filter selects.  The value is
        first converted as the data column would convert it (its declared
        type's affinity, via a scratch table), so ``box=7`` selects the same
        sources here as ``box = 7`` selects rows there.
        """
        connection.execute(
            "CREATE TEMP TABLE IF NOT EXISTS co2logd_affinity (k INTEGER PRIMARY KEY, t TEXT, n NUMERIC, i INTEGER, r REAL, b BLOB)"
        )
        clauses, params = [], []
        for column, value in filters:
            slot = _affinity_slot(self.columns.get(column, ""))
            connection.execute("INSERT OR REPLACE INTO temp.co2logd_affinity (k, {}) VALUES (1, ?)".format(slot), (value,))
            (converted,) = connection.execute("SELECT {} FROM temp.co2logd_affinity WHERE k = 1".format(slot)).fetchone()
            clauses.append("{} = ?".format("transport" if column == self.settings.TRANSPORT_COL else "box"))
            params.append(converted)
        return [
            i for (i,) in connection.execute(
                "SELECT id FROM {} WHERE {}".format(ROLLUP_SOURCE_TABLE, " AND ".join(clauses)), params
            )
        ]

    def row_count(self) -> Deferred:
        """
        Number of rows in the data table, for the dashboard: counted once,
        then only the rows after the last rowid seen are counted (``count(*)``
        reads a whole index, half a second for a year of 1 Hz data).  Rows
        are appended, not deleted; if the last rowid went down, it counts
        afresh (rows deleted by hand elsewhere show after a restart).
        """

        def run(connection):
            (top,) = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()
            seen, counted = self._row_count
            if top < seen:
                seen, counted = 0, 0
            if top > seen:
                (more,) = connection.execute(
                    "SELECT count(*) FROM {} WHERE rowid > ? AND rowid <= ?".format(self.table), (seen, top)
                ).fetchone()
                counted += more
            self._row_count = (top, counted)
            return counted

        return self.pool.runWithConnection(run)

    def latest_values(self, columns: Sequence[str]) -> Deferred:
        """
        ``{column: (value, upload time)}``: each column's newest numeric value
        (by upload time, read backwards along its index).
        """
        time_col = quote_identifier(self.settings.UPLOAD_TIME_COL)
        statements = {
            column: "SELECT {c}, {t} FROM {table} WHERE typeof({c}) IN ('integer', 'real') "
            "ORDER BY {t} DESC LIMIT 1".format(c=quote_identifier(column), t=time_col, table=self.table)
            for column in columns
        }

        def run(connection):
            out = {}
            for column, sql in statements.items():
                row = connection.execute(sql).fetchone()
                if row is not None:
                    out[column] = (row[0], row[1])
            return out

        return self.pool.runWithConnection(run)

    #: rows grouped per interaction by :meth:`source_activity` (a first look reads every row)
    activity_chunk_rows = 200_000

    def source_activity(self, box_column: Optional[str], after_rowid: int = 0) -> Deferred:
        """
        Per source of the rows after ``after_rowid``: fires with
        ``([(transport, box, last upload time, rows)], largest rowid seen)``.
        Callers keep the rowid and ask again for the new rows only.  The
        rows are grouped :attr:`activity_chunk_rows` at a time, one
        interaction each, so a first look at a big table does not hold
        uploads up for seconds; rows added meanwhile wait for the next call.
        """
        box = quote_identifier(box_column) if box_column else "NULL"
        sql = (
            "SELECT {transport}, {box}, max({t}), count(*) FROM {table} "
            "WHERE rowid > ? AND rowid <= ? GROUP BY 1, 2"
        ).format(
            transport=quote_identifier(self.settings.TRANSPORT_COL),
            box=box,
            t=quote_identifier(self.settings.UPLOAD_TIME_COL),
            table=self.table,
        )
        found: Dict[Tuple[Any, Any], List[Any]] = {}
        reached = [after_rowid, None]  # rows read up to, and the last rowid when the first step ran

        def step(connection):
            if reached[1] is None:
                (reached[1],) = connection.execute("SELECT coalesce(max(rowid), 0) FROM {}".format(self.table)).fetchone()
            low, top = reached
            high = min(top, low + self.activity_chunk_rows)
            if high > low:
                for transport, box_value, last, count in connection.execute(sql, (low, high)):
                    seen = found.setdefault((transport, box_value), [None, 0])
                    seen[0] = _later(seen[0], last)
                    seen[1] += count
                reached[0] = high
            if reached[0] < top:
                return _MORE
            return [(k[0], k[1], last, count) for k, (last, count) in found.items()], max(top, after_rowid)

        return self._in_steps(step)



def _later(a: Any, b: Any) -> Any:
    """The larger of two upload times as SQLite's max() picks it (None ignored, text above numbers)."""
    if a is None or b is None:
        return b if a is None else a
    try:
        return max(a, b)
    except TypeError:
        return a if isinstance(a, str) else b


def _numeric(column_sql: str) -> str:
    """The column's value where it is a number, else NULL (text and blobs sort after numbers)."""
    return "CASE WHEN typeof({c}) IN ('integer', 'real') THEN {c} END".format(c=column_sql)


def _affinity_slot(declared: str) -> str:
    """The scratch column with the affinity SQLite gives a column declared ``declared``."""
    declared = (declared or "").upper()
    if "INT" in declared:
        return "i"
    if any(word in declared for word in ("CHAR", "CLOB", "TEXT")):
        return "t"
    if not declared or "BLOB" in declared:
        return "b"
    if any(word in declared for word in ("REAL", "FLOA", "DOUB")):
        return "r"
    return "n"


class _PlotJob:
    """One plot on its way through the store's interactions."""

    def __init__(self, columns: List[str], bounds: List[str], filters: List[Tuple[str, Any]]):
        self.columns = columns
        self.bounds = bounds
        self.filters = filters
        self.pieces: Optional[list] = None  # co2logd.rollup.plan(bounds) when rollups may answer
        self.mode: Optional[str] = None  # "exact" or "rollup", chosen in the first interaction
        self.next_bucket = 0
        self.out: list = []
