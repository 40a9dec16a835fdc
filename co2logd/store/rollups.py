"""
Read queries for the dashboard, plots and /health, and the maintenance that
keeps the plot rollups and the measurement-time side table current.

:class:`Rollups` is a part of :class:`co2logd.store.Store`, built with it
(it reads the store's pools, table, columns and settings).  Its two halves
never share a connection:

* **Reads** (plots, latest values, row counts, source activity) run on the
  store's *read pool*: connections opened with ``PRAGMA query_only``, so a
  dashboard or plot view never starts a write transaction, never fsyncs and
  never waits for, or holds up, the writer (WAL readers see a snapshot).
* **Maintenance** (:meth:`maintain`) runs on the writer's connection from a
  clock-driven timer, in bounded chunks, one short transaction each: it
  indexes rows the writer has not indexed (see :mod:`co2logd.store.mtime`) and
  folds new rows into the rollups of the plotted columns.  Readers take the
  rollups as they are plus the exact rows beyond each column's watermark, so
  an answer is exact even while maintenance lags.

Times are measurement times in UNIX seconds (``co2logd_mtime.t``); the
rollups hold min, max and count of every column's numeric values per period
of that time (:data:`co2logd.rollup.SPANS`: minute to day) and per source.
"""

from __future__ import annotations

import bisect
from contextlib import contextmanager
import sqlite3
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Protocol, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from twisted.enterprise import adbapi

from co2logd import rollup
from co2logd.payloads import text_value
from co2logd.store import mtime
from co2logd.store.interfaces import StoreError
from co2logd.store.names import quote_identifier
from co2logd.store.schema import MTIME_STATE_TABLE, MTIME_TABLE, ROLLUP_SOURCE_TABLE, ROLLUP_STATE_TABLE, ROLLUP_TABLE
from co2logd.store.sqlite import transaction

log = Logger()

_MORE = object()  # a step that has more to do

SourceId = int
#: per column of a plot, the (min, max) of one bucket and source
Pairs = List[Tuple[Any, Any]]


class PlotData:
    """
    What a plot shows: per series (a source label) the min/max pairs of
    each column per bucket, the series in order (busiest first), and how
    many sources with data in the range were left out.
    """

    def __init__(self, columns: Sequence[str]):
        self.columns = list(columns)
        self.series: List[str] = []
        self.buckets: Dict[str, Dict[int, List[Tuple[Any, Any]]]] = {}
        self.left_out = 0

    def column_buckets(self, label: str, k: int) -> List[Tuple[int, Any, Any]]:
        """``[(bucket, min, max)]`` of column number ``k`` for one series, in bucket order."""
        out = []
        for i, pairs in sorted(self.buckets.get(label, {}).items()):
            low, high = pairs[k]
            if low is not None:
                out.append((i, low, high))
        return out


def source_label(transport: Any, box: Any) -> str:
    """A source as people name it: its box, else its transport."""
    if box is not None and box != "":
        return str(box)
    return str(transport) if transport is not None else "(unknown)"


class RollupsHost(Protocol):
    """What :class:`Rollups` reads of the store it is part of."""

    pool: adbapi.ConnectionPool
    read_pool: adbapi.ConnectionPool
    table: str
    rowid: str
    settings: Any
    columns: Dict[str, str]
    running: Any
    closed: bool


class Rollups:
    """The read side of :class:`co2logd.store.Store`, and the rollup maintenance."""

    # Maintenance shares the writer's connection with uploads, which wait
    # behind whatever transaction holds it: chunks are small (a 20,000-row
    # chunk took 0.3-0.6 s to index and 0.4 s to roll up on the benchmark's
    # overloaded 2-core machine; 2,000 rows take a tenth of that).
    #: data rows indexed per maintenance transaction (rows not indexed by the writer)
    index_chunk_rows = 2_000
    #: rows folded into the rollups per maintenance transaction
    rollup_chunk_rows = 2_000
    #: write groups of at most this many rows are indexed and folded into the rollups in the writer's
    #: own transaction; bigger ones after it, in short transactions
    fold_in_writer_rows = 2_000
    #: a plot reads the rows beyond the rollups' watermark exactly; past this many it reads the range's rows instead
    tail_limit_rows = 100_000
    #: rows read per interaction by the exact path
    exact_chunk_rows = 100_000
    #: columns whose rollups maintenance keeps (the dashboard's, and /plot's most recent)
    max_rolled_columns = 32
    #: seconds between maintenance runs
    maintenance_interval = 1.0

    def __init__(self, store: RollupsHost):
        self.store = store
        self._row_count = (0, 0)  # (last rowid counted, rows up to it) for row_count()
        self._wanted: List[str] = []  # columns whose rollups maintenance keeps
        self._index_sql: Dict[Any, Any] = {}  # measurement-time and rollup statements by column set (writer thread)
        self.maintaining: Optional[Deferred[Any]] = None

    # what it reads of the store, current at every use
    pool = property(lambda self: self.store.pool)
    read_pool = property(lambda self: self.store.read_pool)
    table = property(lambda self: self.store.table)
    settings = property(lambda self: self.store.settings)
    columns = property(lambda self: self.store.columns)
    running = property(lambda self: self.store.running)
    _closed = property(lambda self: self.store.closed)

    # -- helpers --------------------------------------------------------------

    def _rowid(self) -> str:
        """The data table's rowid as the store names it (an alias when a column shadows ``rowid``)."""
        return self.store.rowid

    def _read(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """Run ``f(connection, *args)`` on a read-only connection."""
        if self._closed:
            return fail(StoreError("The store is closed"))
        d: "Deferred[Any]" = self.read_pool.runWithConnection(f, *args)
        return d

    def _in_steps(self, pool: adbapi.ConnectionPool, step: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """
        Run ``step(connection, *args)`` in one interaction after another until
        it returns something other than ``_MORE``; fire with that.  Between
        steps other work gets the connection.
        """
        result: "Deferred[Any]" = Deferred()

        def run(_: Any = None) -> None:
            if self._closed:
                result.errback(Failure(StoreError("The store is closed")))
                return
            pool.runWithConnection(step, *args).addCallbacks(stepped, result.errback)

        def stepped(outcome: Any) -> None:
            if outcome is _MORE:
                run()  # adbapi fires from the reactor loop: no recursion builds up
            else:
                result.callback(outcome)

        run()
        return result

    def _values_sql(self, columns: Sequence[str], alias: str = "d") -> str:
        return ", ".join(
            "min({v}), max({v})".format(v=_numeric("{}.{}".format(alias, quote_identifier(c)))) for c in columns
        )

    # -- maintenance (the writer's connection, from a timer) ------------------

    def want_rollups(self, columns: Iterable[str]) -> None:
        """Ask maintenance to keep rollups of ``columns`` (bounded: the oldest wishes go first)."""
        for column in columns:
            if column in self.columns and column not in self._wanted:
                self._wanted.append(column)
        del self._wanted[: max(0, len(self._wanted) - self.max_rolled_columns)]

    def maintain(self) -> "Deferred[None]":
        """
        Catch the side table and the rollups up, one bounded transaction per
        interaction on the writer's connection (uploads get their turn in
        between).  Fires with None; failures are logged, not raised, so the
        timer keeps running.  Runs once at a time; a second call joins the first.
        """
        if self.maintaining is not None:
            joined: "Deferred[None]" = Deferred()

            def join(result: Any) -> Any:
                joined.callback(None)
                return result

            self.maintaining.addBoth(join)
            return joined
        if self._closed or not self.running:
            return succeed(None)
        columns = dict(self.columns)
        wanted = list(self._wanted)
        self.maintaining = d = self._in_steps(self.pool, self._maintain_step, columns, wanted)

        def done(result: Any) -> None:
            self.maintaining = None
            if isinstance(result, Failure) and not self._closed:
                log.failure("Plot maintenance failed; it is tried again on the next tick", result)
            return None

        return d.addBoth(done)

    def catch_up(self) -> "Deferred[None]":
        """Fire once maintenance has nothing left to do (for tests and benchmarks)."""
        return self.maintain()


    def _maintain_step(self, connection: sqlite3.Connection, columns: Dict[str, str], wanted: List[str]) -> Any:
        """One transaction: index a chunk of new rows, else roll a chunk up; ``_MORE`` while work remains."""
        if not self.running:
            return None
        rowid = self._rowid()
        with self._derived(connection), transaction(connection):
            (top,) = connection.execute("SELECT coalesce(max({}), 0) FROM {}".format(rowid, self.table)).fetchone()
            filled = self.filled_to(connection)
            if filled > top:  # rows deleted by hand: forget what was above
                connection.execute("DELETE FROM {} WHERE row > ?".format(MTIME_TABLE), (top,))
                connection.execute("DELETE FROM {}".format(ROLLUP_TABLE))
                connection.execute("DELETE FROM {}".format(ROLLUP_STATE_TABLE))
                filled = self._set_filled_to(connection, top)
            if filled < top:
                self._index_chunk(connection, filled, min(top, filled + self.index_chunk_rows))
                return _MORE
            names = self._rollup_names()
            states = {
                col: (done, was)
                for col, done, was in connection.execute("SELECT col, done_rowid, names FROM {}".format(ROLLUP_STATE_TABLE))
            }
            rolled = [c for c in dict.fromkeys(list(states) + wanted) if c in columns][: self.max_rolled_columns * 2]
            done: Dict[str, int] = {}
            for column in rolled:
                mark, was = states.get(column, (0, None))
                if was != names or mark > filled:
                    connection.execute("DELETE FROM {} WHERE col = ?".format(ROLLUP_TABLE), (column,))
                    mark = 0
                done[column] = mark
            lagging = [c for c in rolled if done[c] < filled]
            if not lagging:
                return None
            low = min(done[c] for c in lagging)
            group = [c for c in lagging if done[c] == low]
            high = min(filled, low + self.rollup_chunk_rows)
            self._roll_up(connection, group, low, high)
            connection.executemany(
                "INSERT OR REPLACE INTO {} (col, done_rowid, names) VALUES (?, ?, ?)".format(ROLLUP_STATE_TABLE),
                [(c, high, names) for c in group] + [(c, done[c], names) for c in rolled if c not in group],
            )
            return _MORE

    @contextmanager
    def _derived(self, connection: sqlite3.Connection) -> Iterator[None]:
        """
        Maintenance's transactions commit without an fsync of their own
        (``synchronous=NORMAL`` for them, when the store syncs more): they
        write only what can be rebuilt from the rows (side table, rollups,
        with the marks saying how far they got, in the same transaction).
        In WAL mode such a commit is atomic all the same; a power cut may
        undo it, and maintenance does it again.  The next upload's commit
        syncs the log with it.  An fsync cost ~7 ms a commit on the project's
        machine: more than the work of a 2,000-row chunk on a quiet one.
        """
        relax = str(self.settings.DB_SYNCHRONOUS).upper() in ("FULL", "EXTRA")
        if relax:
            connection.execute("PRAGMA synchronous=NORMAL")
        try:
            yield
        finally:
            if relax:
                connection.execute("PRAGMA synchronous={}".format(str(self.settings.DB_SYNCHRONOUS).upper()))

    def _index_chunk(self, connection: sqlite3.Connection, filled: int, high: int) -> None:
        """In a transaction: index the data rows with ``filled < rowid <= high`` (every row up to ``filled`` is)."""
        # the table's own columns: rows not written by co2logd may come with columns it has not seen
        actual = {
            name.lower(): declared
            for name, declared in connection.execute(
                "SELECT name, type FROM pragma_table_info(?)", (self.settings.DATA_TABLE_NAME,))
        }
        for sql in mtime.index_statements(self.settings, actual, self.table, self._rowid()):
            connection.execute(sql, (filled, high))
        self._set_filled_to(connection, high)

    def indexed_through(self, row: int) -> "Deferred[None]":
        """
        Index the rows up to ``row`` in short transactions on the writer's
        connection (uploads get it in between; maintenance may do part of
        it); fire with None once they are indexed, so a plot shows them.
        Failures are logged, not raised: the rows are stored, and
        maintenance tries again.
        """

        def step(connection: sqlite3.Connection) -> Any:
            if not self.running:
                return None
            with self._derived(connection), transaction(connection):
                filled = self.filled_to(connection)
                if filled >= row:
                    return None
                self._index_chunk(connection, filled, min(row, filled + self.index_chunk_rows))
                return _MORE

        def failed(failure: Failure) -> None:
            if not self._closed:
                log.failure("Indexing measurement times failed; maintenance tries again", failure)

        d: "Deferred[None]" = self._in_steps(self.pool, step).addErrback(failed)
        return d

    def filled_to(self, connection: Union[sqlite3.Connection, sqlite3.Cursor]) -> int:
        row = connection.execute("SELECT filled_to FROM {} WHERE k = 1".format(MTIME_STATE_TABLE)).fetchone()
        return row[0] if row else 0

    def _set_filled_to(self, connection: sqlite3.Connection, value: int) -> int:
        connection.execute("UPDATE {} SET filled_to = ? WHERE k = 1".format(MTIME_STATE_TABLE), (value,))
        return value

    def index_new_rows(self, cursor: sqlite3.Cursor, before: int, filled: int, columns: Dict[str, str]) -> Optional[int]:
        """
        In the writer's transaction: index the rows just written (rowid above
        ``before``) and fold them into the current rollups, when every
        earlier row is indexed and they are at most :attr:`fold_in_writer_rows`.
        Bigger ones are indexed in short transactions after the commit (see
        :meth:`indexed_through`; maintenance folds them in): then it returns
        the last rowid, for the store to wait for.
        """
        rowid = self._rowid()
        (top,) = cursor.execute("SELECT coalesce(max({}), 0) FROM {}".format(rowid, self.table)).fetchone()
        if top <= before:
            return None
        if top - before > self.fold_in_writer_rows:
            return int(top)  # a big upload: indexed after its commit in short transactions (see co2logd.staging)
        if filled != before:
            return None  # maintenance is behind: it indexes these rows too
        key = (rowid, tuple(columns))
        statements = self._index_sql.get(key)
        if statements is None:
            if len(self._index_sql) >= 100:
                self._index_sql.clear()  # a bound, not an LRU: column sets change rarely
            statements = self._index_sql[key] = mtime.index_statements(self.settings, columns, self.table, rowid)
        for sql in statements:
            cursor.execute(sql, (before, top))
        cursor.execute("UPDATE {} SET filled_to = ? WHERE k = 1".format(MTIME_STATE_TABLE), (top,))
        # the usual small upload: fold it into the rollups that are current, under the same fsync
        names = self._rollup_names()
        current = [
            col for col, done, was in cursor.execute("SELECT col, done_rowid, names FROM {}".format(ROLLUP_STATE_TABLE))
            if done == before and was == names and col in columns
        ]
        if current:
            self._roll_up(cursor, current, before, top)
            cursor.executemany(
                "UPDATE {} SET done_rowid = ? WHERE col = ?".format(ROLLUP_STATE_TABLE), [(top, c) for c in current]
            )
        return None

    def _rollup_names(self) -> str:
        """The settings (and spans) a rollup depends on; a column rolled up under others is rebuilt."""
        return "{} spans {}".format(mtime.names(self.settings), ",".join(str(s) for s in rollup.SPANS))

    def _roll_up(self, connection: Union[sqlite3.Connection, sqlite3.Cursor], columns: Sequence[str], low: int, high: int) -> None:
        """
        Fold the rows with ``low < row <= high`` into the rollups of
        ``columns`` (every span of :data:`co2logd.rollup.SPANS`): one GROUP BY
        (source, minute of measurement time) over that range of the side
        table, the longer spans summed from its minutes, merged into what is
        there (min, max and count merge, so rows arriving late, or a backfill
        of last month, land in their own periods).
        """
        key = ("rollup", self._rowid(), tuple(columns))
        sql = self._index_sql.get(key)
        if sql is None:
            stats = ", ".join(
                "min({v}), max({v}), count({v})".format(v=_numeric("d." + quote_identifier(c))) for c in columns
            )
            sql = self._index_sql[key] = (
                "SELECT m.src, CAST(m.t AS INTEGER) / 60 * 60, {stats} FROM {mt} AS m JOIN {table} AS d ON d.{rowid} = m.row "
                "WHERE m.row > ? AND m.row <= ? AND +m.t IS NOT NULL GROUP BY 1, 2".format(
                    stats=stats, mt=MTIME_TABLE, table=self.table, rowid=self._rowid()
                )
            )
        rows = connection.execute(sql, (low, high)).fetchall()
        minutes = []
        longer: Dict[Tuple[str, int, int, Any], Tuple[Any, Any, int]] = {}
        for source, start, *values in rows:
            if source is None:
                continue
            for k, column in enumerate(columns):
                lo, hi, n = values[3 * k: 3 * k + 3]
                if not n:
                    continue
                minutes.append((column, rollup.MINUTE, start, source, lo, hi, n))
                for span in rollup.SPANS[1:]:
                    period = (column, span, start - start % span, source)
                    old = longer.get(period)
                    longer[period] = (lo, hi, n) if old is None else (min(lo, old[0]), max(hi, old[1]), n + old[2])
        upsert = (
            "INSERT INTO {} (col, span, start, source, lo, hi, n) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (col, span, start, source) DO UPDATE SET "
            "lo = min(lo, excluded.lo), hi = max(hi, excluded.hi), n = n + excluded.n".format(ROLLUP_TABLE)
        )
        connection.executemany(upsert, minutes)
        connection.executemany(upsert, [k + v for k, v in longer.items()])

    # -- plots (read-only connections) ---------------------------------------

    def plot_series(
        self,
        columns: Sequence[str],
        bounds: Sequence[float],
        filters: Sequence[Tuple[str, Any]] = (),
        max_series: int = 6,
        rollups: bool = True,
    ) -> "Deferred[Any]":
        """
        Fire with a :class:`PlotData`: for every source (a box, else a
        transport) with data in ``[bounds[0], bounds[-1])`` of measurement
        time, the exact min and max of each column's numeric values per
        bucket ``[bounds[i], bounds[i+1])``; only sources matching
        ``filters`` (transport/box = value), at most ``max_series`` of them,
        busiest first.

        Whole minutes and hours come from the rollups, the ragged ends of
        buckets and the rows beyond a column's rollup watermark from the
        rows themselves, all in one read transaction.  When the rollups lag
        by more than :attr:`tail_limit_rows` (a fresh database, a large
        backfill being rolled up), or a column has no rollups yet, the range's
        rows are read instead, in chunks, and the columns are handed to
        maintenance.
        """
        job = _PlotJob(list(columns), [float(b) for b in bounds], list(filters), max_series)
        self.want_rollups(job.columns)
        if rollups and job.columns:
            job.whole = rollup.whole_range_piece(job.bounds)
            job.pieces = [] if job.whole is not None else rollup.plan_seconds(job.bounds)
        return self._in_steps(self.read_pool, self._plot_step, job).addCallback(self._plot_data, job)

    def _plot_step(self, connection: sqlite3.Connection, job: "_PlotJob") -> Any:
        if job.mode is None:
            job.sources = self._sources(connection, job.filters)
            if job.sources is not None and not job.sources:
                return {}
            job.mode = "exact"
            if job.pieces is not None:
                connection.execute("BEGIN")  # one snapshot for the watermarks, the rollups and the rows
                try:
                    marks = self._watermarks(connection, job.columns)
                    if marks is not None:
                        job.mode = "rollup"
                        return self._rollup_answer(connection, job, marks)
                finally:
                    connection.execute("COMMIT")
        return self._exact_step(connection, job)

    def _sources(self, connection: sqlite3.Connection, filters: Sequence[Tuple[str, Any]]) -> Optional[Dict[SourceId, str]]:
        """``{source id: label}`` of the sources the filters select, or None for all sources."""
        if not filters:
            return None
        clauses, params = [], []
        for column, value in filters:
            field = "transport" if column == self.settings.TRANSPORT_COL else "box"
            forms = value_forms(value)
            clauses.append("{} IN ({})".format(field, ", ".join("?" * len(forms))))
            params += forms
        return {
            i: source_label(t, b)
            for i, t, b in connection.execute(
                "SELECT id, transport, box FROM {} WHERE {} LIMIT 10000".format(ROLLUP_SOURCE_TABLE, " AND ".join(clauses)),
                params,
            )
        }

    def _labels(self, connection: sqlite3.Connection, ids: Iterable[SourceId]) -> Dict[SourceId, str]:
        ids = list(ids)
        out: Dict[SourceId, str] = {}
        for k in range(0, len(ids), 500):
            chunk = ids[k: k + 500]
            for i, t, b in connection.execute(
                "SELECT id, transport, box FROM {} WHERE id IN ({})".format(ROLLUP_SOURCE_TABLE, ", ".join("?" * len(chunk))),
                chunk,
            ):
                out[i] = source_label(t, b)
        return out

    def _watermarks(self, connection: sqlite3.Connection, columns: Sequence[str]) -> Optional[int]:
        """The lowest row all ``columns`` are rolled up to, or None when reading the rows is the way."""
        names = self._rollup_names()
        found = {
            col: done
            for col, done, was in connection.execute(
                "SELECT col, done_rowid, names FROM {} WHERE col IN ({})".format(ROLLUP_STATE_TABLE, ", ".join("?" * len(columns))),
                list(columns),
            )
            if was == names
        }
        if any(c not in found for c in columns):
            return None
        mark: int = min(found.values())
        (last,) = connection.execute("SELECT coalesce(max(row), 0) FROM {}".format(MTIME_TABLE)).fetchone()
        if last - mark > self.tail_limit_rows:
            return None
        return mark

    def _rollup_answer(self, connection: sqlite3.Connection, job: "_PlotJob", mark: int) -> Dict[Tuple[int, SourceId], Pairs]:
        """
        Every bucket from the rollups, the rows of the ragged ends and the
        rows beyond ``mark``.  With the whole range's periods known
        (:attr:`_PlotJob.whole`) and equal steps, SQLite groups the periods
        into buckets: one statement per span, a few rows per bucket and
        source, however long the range.
        """
        columns, bounds = job.columns, job.bounds
        since, until = bounds[0], bounds[-1]
        source_sql, source_ids = self._source_clause(job.sources, "source")
        cols_sql = ", ".join("?" * len(columns))
        # the busiest sources: rollup counts of the range (coarse periods, enough to rank) plus the tail
        span = rollup.counting_span(since, until)
        counts: Dict[SourceId, int] = {}
        for source, n in connection.execute(
            "SELECT source, sum(n) FROM {} WHERE col IN ({}) AND span = ? AND start >= ? AND start < ?{} GROUP BY source".format(
                ROLLUP_TABLE, cols_sql, source_sql
            ),
            list(columns) + [span, since // span * span, until] + source_ids,
        ):
            counts[source] = counts.get(source, 0) + n
        tail_source_sql, _ = self._source_clause(job.sources, "m.src")
        tail = connection.execute(
            "SELECT m.t, m.src, {cols} FROM {mt} AS m JOIN {table} AS d ON d.{rowid} = m.row "
            "WHERE m.row > ? AND +m.t >= ? AND +m.t < ?{f}".format(  # + : by row range, not the time index
                cols=", ".join(_numeric("d." + quote_identifier(c)) for c in columns), mt=MTIME_TABLE,
                table=self.table, rowid=self._rowid(), f=tail_source_sql,
            ),
            [mark, since, until] + source_ids,
        ).fetchall()
        for _, source, *_values in tail:
            counts[source] = counts.get(source, 0) + 1
        chosen = self._choose(connection, job, counts)
        if not chosen:
            return {}
        keep_sql, keep_ids = self._source_clause(chosen, "source")
        position = {c: k for k, c in enumerate(columns)}
        found: Dict[Tuple[int, SourceId], Pairs] = {}
        nothing = [(None, None)] * len(columns)
        exact = self._bucket_sql(columns, chosen)
        _, exact_ids = self._source_clause(chosen, "m.src")
        last = len(bounds) - 2

        def add(i: int, source: SourceId, k: int, lo: Any, hi: Any) -> None:
            pairs = found.setdefault((i, source), list(nothing))
            pairs[k] = rollup.merge(pairs[k], lo, hi)

        def bucket(t: float) -> int:
            return min(max(bisect.bisect_right(bounds, t) - 1, 0), last)

        whole = job.whole
        if whole is not None:
            # inner edges on whole periods: each span read once for the whole range, each period inside one bucket
            steps = rollup.equal_steps(bounds)
            if steps is None:
                index_sql, index_args = "start", []  # grouped by period; bucketed below
            else:
                # the bucket of a period start, in SQL: 0 before the first inner bound, then one per step
                first, step = steps
                index_sql, index_args = "CASE WHEN start < ? THEN 0 ELSE min(?, 1 + (start - ?) / ?) END", [
                    first, last, first, step]
            for span_, low, end in whole.periods:
                for column, source, i, lo, hi in connection.execute(
                    "SELECT col, source, {i} AS i, min(lo), max(hi) FROM {t} WHERE col IN ({c}) AND span = ? "
                    "AND start >= ? AND start < ?{f} GROUP BY col, source, i".format(
                        i=index_sql, t=ROLLUP_TABLE, c=cols_sql, f=keep_sql),
                    index_args + list(columns) + [span_, low, end] + keep_ids,
                ):
                    add(i if steps is not None else bucket(i), source, position[column], lo, hi)
            for a, b in whole.exact:
                i = bucket(a)
                for source, _n, *values in connection.execute(exact, [a, b] + exact_ids):
                    for k in range(len(columns)):
                        add(i, source, k, values[2 * k], values[2 * k + 1])
        else:
            summary = (
                "SELECT col, source, min(lo), max(hi) FROM {} WHERE col IN ({}) AND span = ? AND start >= ? AND start < ?{} "
                "GROUP BY col, source".format(ROLLUP_TABLE, cols_sql, keep_sql)
            )
            for i, piece in enumerate(job.pieces or []):
                for span_, low, end in piece.periods:
                    for column, source, lo, hi in connection.execute(summary, list(columns) + [span_, low, end] + keep_ids):
                        add(i, source, position[column], lo, hi)
                for a, b in piece.exact:
                    for source, _n, *values in connection.execute(exact, [a, b] + exact_ids):
                        for k in range(len(columns)):
                            add(i, source, k, values[2 * k], values[2 * k + 1])
        for when, source, *values in tail:
            if source not in chosen:
                continue
            pairs = found.setdefault((bucket(when), source), list(nothing))
            for k, value in enumerate(values):
                pairs[k] = rollup.merge(pairs[k], value, value)
        return found

    def _choose(self, connection: sqlite3.Connection, job: "_PlotJob", counts: Dict[SourceId, int]) -> Dict[SourceId, str]:
        """The ids of the busiest ``max_series`` labels (a label may span transports); sets ``job.left_out``."""
        labels = job.sources if job.sources is not None else self._labels(connection, counts)
        per_label: Dict[str, int] = {}
        for source, n in counts.items():
            if n and source in labels:
                per_label[labels[source]] = per_label.get(labels[source], 0) + n
        ranked = sorted(per_label, key=lambda label: (-per_label[label], label))
        keep = set(ranked[: job.max_series])
        job.left_out = max(0, len(ranked) - job.max_series)
        return {s: labels[s] for s in counts if s in labels and labels[s] in keep}

    def _source_clause(self, sources: Optional[Dict[SourceId, str]], field: str) -> Tuple[str, List[Any]]:
        if sources is None:
            return "", []
        ids = list(sources)
        return " AND {} IN ({})".format(field, ", ".join("?" * len(ids)) or "NULL"), ids

    def _bucket_sql(self, columns: Sequence[str], sources: Optional[Dict[SourceId, str]]) -> str:
        """Per source: row count and min/max of each column, rows with measurement time in ``[?, ?)``."""
        source_sql, _ = self._source_clause(sources, "m.src")
        return (
            "SELECT m.src, count(*), {values} FROM {mt} AS m JOIN {table} AS d ON d.{rowid} = m.row "
            "WHERE m.t >= ? AND m.t < ?{f} GROUP BY m.src".format(
                values=self._values_sql(columns), mt=MTIME_TABLE, table=self.table, rowid=self._rowid(), f=source_sql
            )
        )

    def _exact_step(self, connection: sqlite3.Connection, job: "_PlotJob") -> Any:
        """The next buckets from the rows, about :attr:`exact_chunk_rows` rows per interaction."""
        columns, bounds = job.columns, job.bounds
        sql = self._bucket_sql(columns, job.sources)
        _, ids = self._source_clause(job.sources, "m.src")
        budget = self.exact_chunk_rows
        while job.next_bucket < len(bounds) - 1 and budget > 0:
            i = job.next_bucket
            job.next_bucket += 1
            for source, n, *values in connection.execute(sql, [bounds[i], bounds[i + 1]] + ids):
                budget -= n
                job.counts[source] = job.counts.get(source, 0) + n
                pairs = [(values[2 * k], values[2 * k + 1]) for k in range(len(columns))]
                if any(low is not None for low, _ in pairs):
                    job.found[(i, source)] = pairs
        if job.next_bucket < len(bounds) - 1:
            return _MORE
        chosen = self._choose(connection, job, job.counts)
        return {key: pairs for key, pairs in job.found.items() if key[1] in chosen}

    def _plot_data(self, found: Dict[Tuple[int, SourceId], Pairs], job: "_PlotJob") -> "Deferred[PlotData]":
        """Group the answer by series label (reads the labels of the ids on a read connection)."""
        ids = {source for _, source in found}

        def label(connection: sqlite3.Connection) -> Dict[SourceId, str]:
            return job.sources if job.sources is not None else self._labels(connection, ids)

        def build(labels: Dict[SourceId, str]) -> PlotData:
            data = PlotData(job.columns)
            data.left_out = job.left_out
            totals: Dict[str, int] = {}
            for (i, source), pairs in found.items():
                name = labels.get(source, "(unknown)")
                slot = data.buckets.setdefault(name, {})
                old = slot.get(i)
                if old is None:
                    slot[i] = list(pairs)
                else:
                    for k, (lo, hi) in enumerate(pairs):
                        old[k] = rollup.merge(old[k], lo, hi)
                totals[name] = totals.get(name, 0) + 1
            data.series = sorted(totals, key=lambda n: (-totals[n], n))
            return data

        if not found:
            return succeed(build({}))
        return self._read(label).addCallback(build)

    # -- the dashboard's other reads ------------------------------------------

    def time_extent(self, filters: Sequence[Tuple[str, Any]] = ()) -> "Deferred[Optional[Tuple[float, float]]]":
        """``(earliest, latest)`` measurement time of the rows the filters select, or None."""

        def run(connection: sqlite3.Connection) -> Any:
            sources = self._sources(connection, filters)
            if sources is not None and not sources:
                return None
            sql, ids = self._source_clause(sources, "src")
            (low,) = connection.execute(
                "SELECT min(t) FROM {} WHERE t IS NOT NULL{}".format(MTIME_TABLE, sql), ids).fetchone()
            (high,) = connection.execute("SELECT max(t) FROM {} WHERE 1{}".format(MTIME_TABLE, sql), ids).fetchone()
            return None if low is None else (low, high)

        return self._read(run)

    def unusable_times(self, since: float, until: float, filters: Sequence[Tuple[str, Any]] = ()) -> "Deferred[int]":
        """Rows in the range placed by upload time because their time was unusable, plus rows with no time at all."""

        def run(connection: sqlite3.Connection) -> Any:
            sources = self._sources(connection, filters)
            if sources is not None and not sources:
                return 0
            sql, ids = self._source_clause(sources, "src")
            (n,) = connection.execute(
                "SELECT count(*) FROM {} WHERE kind >= {} AND ((t >= ? AND t < ?) OR t IS NULL){}".format(
                    MTIME_TABLE, mtime.UNUSABLE, sql
                ),
                [since, until] + ids,
            ).fetchone()
            return n

        return self._read(run)

    def latest_by_source(
        self, columns: Sequence[str], filters: Sequence[Tuple[str, Any]] = (), limit: int = 6
    ) -> "Deferred[List[Tuple[str, float, Dict[str, Any]]]]":
        """
        ``[(label, measurement time, {column: value})]`` for the ``limit``
        most recently heard sources the filters select: each column's newest
        numeric value among the source's latest 100 rows (by measurement time).
        """
        cols = ", ".join("d." + quote_identifier(c) for c in columns) or "NULL"

        def run(connection: sqlite3.Connection) -> Any:
            sources = self._sources(connection, filters)
            if sources is None:
                sources = dict(
                    (i, source_label(t, b))
                    for i, t, b in connection.execute(
                        "SELECT id, transport, box FROM {} LIMIT 10000".format(ROLLUP_SOURCE_TABLE))
                )
            newest = []
            for source in sources:
                (when,) = connection.execute("SELECT max(t) FROM {} WHERE src = ?".format(MTIME_TABLE), (source,)).fetchone()
                if when is not None:
                    newest.append((when, source))
            per_label: Dict[str, Tuple[float, Dict[str, Any]]] = {}
            for when, source in sorted(newest, reverse=True):
                label = sources[source]
                if label not in per_label and len(per_label) >= limit:
                    continue
                rows = connection.execute(
                    "SELECT m.t, {cols} FROM {mt} AS m JOIN {table} AS d ON d.{rowid} = m.row "
                    "WHERE m.src = ? AND m.t IS NOT NULL ORDER BY m.t DESC LIMIT 100".format(
                        cols=cols, mt=MTIME_TABLE, table=self.table, rowid=self._rowid()),
                    (source,),
                ).fetchall()
                latest, values = per_label.get(label, (when, {}))
                for t, *row in rows:
                    for column, value in zip(columns, row):
                        if column not in values and isinstance(value, (int, float)) and not isinstance(value, bool):
                            values[column] = value
                per_label[label] = (max(latest, when), values)
            return sorted(((label, t, v) for label, (t, v) in per_label.items()), key=lambda x: -x[1])

        return self._read(run)

    def row_count(self) -> "Deferred[int]":
        """
        Number of rows in the data table, for the dashboard: counted once,
        then only the rows after the last rowid seen are counted (``count(*)``
        reads a whole index, half a second for a year of 1 Hz data).  Rows
        are appended, not deleted; if the last rowid went down, it counts
        afresh (rows deleted by hand elsewhere show after a restart).
        """
        rowid = self._rowid()

        def run(connection: sqlite3.Connection) -> Any:
            (top,) = connection.execute("SELECT coalesce(max({}), 0) FROM {}".format(rowid, self.table)).fetchone()
            seen, counted = self._row_count
            if top < seen:
                seen, counted = 0, 0
            if top > seen:
                (more,) = connection.execute(
                    "SELECT count(*) FROM {t} WHERE {r} > ? AND {r} <= ?".format(t=self.table, r=rowid), (seen, top)
                ).fetchone()
                counted += more
            self._row_count = (top, counted)
            return counted

        return self._read(run)

    def latest_values(self, columns: Sequence[str]) -> "Deferred[Dict[str, Tuple[Any, Any]]]":
        """``{column: (value, upload time)}``: each column's newest numeric value by upload time (any source)."""
        time_col = quote_identifier(self.settings.UPLOAD_TIME_COL)
        statements = {
            column: "SELECT {c}, {t} FROM {table} WHERE typeof({c}) IN ('integer', 'real') "
            "ORDER BY {t} DESC LIMIT 1".format(c=quote_identifier(column), t=time_col, table=self.table)
            for column in columns
        }

        def run(connection: sqlite3.Connection) -> Any:
            out = {}
            for column, sql in statements.items():
                row = connection.execute(sql).fetchone()
                if row is not None:
                    out[column] = (row[0], row[1])
            return out

        return self._read(run)

    #: rows grouped per interaction by :meth:`source_activity` (a first look reads every row)
    activity_chunk_rows = 200_000

    def source_activity(
        self,
        box_column: Optional[str],
        after_rowid: int = 0,
        trim: Optional[Callable[[Dict[Tuple[Any, Any], List[Any]]], None]] = None,
    ) -> "Deferred[Any]":
        """
        Per source of the rows after ``after_rowid``: fires with
        ``([(transport, box, last upload time, rows, uploads)], largest rowid seen)``
        (uploads: distinct upload times; one upload split over two chunks
        counts twice).  ``trim``, when given, is called in the database
        thread on the ``{(transport, box): [last, rows, uploads]}`` collected
        so far, every few thousand groups, to bound it (issue 12, finding 9).
        Callers keep the rowid and ask again for the new rows only.  The
        rows are grouped :attr:`activity_chunk_rows` at a time, one read
        interaction each.
        """
        rowid = self._rowid()
        box = quote_identifier(box_column) if box_column else "NULL"
        sql = (
            "SELECT {transport}, {box}, max({t}), count(*), count(DISTINCT {t}) FROM {table} "
            "WHERE {rowid} > ? AND {rowid} <= ? GROUP BY 1, 2"
        ).format(
            transport=quote_identifier(self.settings.TRANSPORT_COL),
            box=box,
            t=quote_identifier(self.settings.UPLOAD_TIME_COL),
            table=self.table,
            rowid=rowid,
        )
        found: Dict[Tuple[Any, Any], List[Any]] = {}
        reached: List[Optional[int]] = [after_rowid, None]  # rows read up to, and the last rowid when the first step ran

        def step(connection: sqlite3.Connection) -> Any:
            if reached[1] is None:
                (reached[1],) = connection.execute("SELECT coalesce(max({}), 0) FROM {}".format(rowid, self.table)).fetchone()
            low, top = reached
            assert low is not None and top is not None
            high = min(top, low + self.activity_chunk_rows)
            if high > low:
                for n, (transport, box_value, last, count, uploads) in enumerate(connection.execute(sql, (low, high)), 1):
                    seen = found.setdefault((transport, box_value), [None, 0, 0])
                    seen[0] = _later(seen[0], last)
                    seen[1] += count
                    seen[2] += uploads
                    if trim is not None and n % 5000 == 0:
                        trim(found)
                if trim is not None:
                    trim(found)
                reached[0] = high
            if reached[0] is not None and reached[0] < top:
                return _MORE
            return [(k[0], k[1], last, count, uploads) for k, (last, count, uploads) in found.items()], max(top, after_rowid)

        return self._in_steps(self.read_pool, step)


def value_forms(value: Any) -> List[Any]:
    """A filter value as text and as the number it reads as: matches however the column stored it."""
    text = str(value)
    forms = [value, text]
    number = text_value(text)  # as an upload's cell reads: never an integer SQLite cannot bind
    if isinstance(number, (int, float)):
        forms.append(number)
    return forms


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


class _PlotJob:
    """One plot on its way through the read interactions."""

    def __init__(self, columns: List[str], bounds: List[float], filters: List[Tuple[str, Any]], max_series: int):
        self.columns = columns
        self.bounds = bounds
        self.filters = filters
        self.max_series = max_series
        self.pieces: Optional[List[Any]] = None  # co2logd.rollup.plan_seconds(bounds) when rollups may answer
        self.whole: Optional[rollup.Piece] = None  # or the whole range at once (co2logd.rollup.whole_range_piece)
        self.mode: Optional[str] = None  # "exact" or "rollup", chosen in the first interaction
        self.sources: Optional[Dict[SourceId, str]] = None  # the filters' sources (None: all)
        self.left_out = 0
        self.next_bucket = 0
        self.counts: Dict[SourceId, int] = {}
        self.found: Dict[Tuple[int, SourceId], Pairs] = {}
