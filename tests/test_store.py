"""The adbapi SQLite store: schema, co2logserver databases, atomic writes, queries."""

import datetime
import sqlite3

from twisted.internet import defer
from twisted.trial import unittest

from co2logd.store import SCHEMA_VERSION, Query, StoreError, WriteRequest, prepare_database
from co2logd.store.reads import select_sql
from tests.helpers import StoreMixin, make_settings, rows_in


def make_co2logserver_database(path):
    """A database laid out as co2logserver 0.1.2 creates and fills it."""
    connection = sqlite3.connect(path)
    connection.execute("CREATE TABLE data (time_upload_utc DATETIME,matched_checksums TEXT,failed_checksums TEXT)")
    connection.execute("ALTER TABLE data ADD time_utc INTEGER")
    connection.execute("ALTER TABLE data ADD co2 INTEGER")
    when = datetime.datetime(2021, 5, 1, 12, 0, tzinfo=datetime.timezone.utc)
    for t, co2 in [(43, 1223), (23, 2351)]:
        connection.execute(
            "INSERT INTO data (time_utc,co2,time_upload_utc,matched_checksums,failed_checksums) VALUES (?,?,?,?,?)",
            (t, co2, when.isoformat(" "), None, None),
        )
    connection.commit()
    connection.close()


class SchemaTests(unittest.TestCase):
    """Schema creation and upgrades, run before the reactor."""

    def test_new_database(self):
        """A new file gets co2logserver's data table plus the transport column and co2logd's tables."""
        path = self.mktemp()
        columns = prepare_database(path, make_settings())
        self.assertEqual(list(columns), ["time_upload_utc", "matched_checksums", "failed_checksums", "transport"])
        connection = sqlite3.connect(path)
        self.assertEqual(connection.execute("SELECT max(version) FROM co2logd_schema_version").fetchone()[0], SCHEMA_VERSION)
        self.assertEqual(connection.execute("PRAGMA journal_mode").fetchone()[0], "wal")
        connection.close()

    def test_co2logserver_database_is_kept(self):
        """A co2logserver 0.1.2 database keeps its rows and columns; only the transport column is added."""
        path = self.mktemp()
        make_co2logserver_database(path)
        columns = prepare_database(path, make_settings())
        self.assertEqual(
            list(columns),
            ["time_upload_utc", "matched_checksums", "failed_checksums", "time_utc", "co2", "transport"],
        )
        self.assertEqual([r["co2"] for r in rows_in(path)], [1223, 2351])

    def test_preparing_twice_changes_nothing(self):
        """Start-up on an already prepared database is a no-op."""
        path = self.mktemp()
        first = prepare_database(path, make_settings())
        self.assertEqual(prepare_database(path, make_settings()), first)

    def test_newer_schema_refused(self):
        """A database from a newer co2logd is not touched."""
        path = self.mktemp()
        prepare_database(path, make_settings())
        connection = sqlite3.connect(path)
        connection.execute("INSERT INTO co2logd_schema_version VALUES (999)")
        connection.commit()
        connection.close()
        e = self.assertRaises(StoreError, prepare_database, path, make_settings())
        self.assertIn("newer", str(e))

    def test_unopenable_path(self):
        """A path in a missing directory is a StoreError, not a traceback."""
        self.assertRaises(StoreError, prepare_database, "/nonexistent/dir/co2.sqlite", make_settings())


class WriteTests(StoreMixin, unittest.TestCase):
    """Writes: new columns and rows in one transaction."""

    @defer.inlineCallbacks
    def test_write_adds_columns_and_rows(self):
        """New columns get the SQL type of their first value; rows land; the cache follows."""
        store = self.make_store()
        n = yield store.write(WriteRequest(
            ["time_upload_utc", "transport", "co2", "label", "ratio"],
            [("t", "http", 400, "a", 0.5), ("t", "http", 410, "b", 0.6)],
            {"co2": int, "label": str, "ratio": float},
        ))
        self.assertEqual(n, 2)
        self.assertEqual(store.columns["co2"], "INTEGER")
        self.assertEqual([r["label"] for r in rows_in(self.db_path)], ["a", "b"])
        connection = sqlite3.connect(self.db_path)
        types = dict(connection.execute("SELECT name, type FROM pragma_table_info('data')").fetchall())
        connection.close()
        self.assertEqual((types["co2"], types["label"], types["ratio"]), ("INTEGER", "TEXT", "REAL"))

    @defer.inlineCallbacks
    def test_failed_write_leaves_nothing(self):
        """If any row fails, neither the new column nor any row remains."""
        store = self.make_store()
        bad_rows = [("t", 1), ("t",)]  # the second row is short: the insert fails
        yield self.assertFailure(store.write(WriteRequest(["time_upload_utc", "co2"], bad_rows, {"co2": int})), sqlite3.Error)
        self.assertNotIn("co2", store.columns)
        connection = sqlite3.connect(self.db_path)
        names = [r[0] for r in connection.execute("SELECT name FROM pragma_table_info('data')")]
        connection.close()
        self.assertNotIn("co2", names)
        self.assertEqual(rows_in(self.db_path), [])

    @defer.inlineCallbacks
    def test_column_added_meanwhile(self):
        """Two uploads both adding a column: the second does not fail."""
        store = self.make_store()
        yield defer.gatherResults([
            store.write(WriteRequest(["co2"], [(1,)], {"co2": int})),
            store.write(WriteRequest(["co2"], [(2,)], {"co2": int})),
        ])
        self.assertEqual([r["co2"] for r in rows_in(self.db_path)], [1, 2])

    @defer.inlineCallbacks
    def test_outbox_in_same_transaction(self):
        """Outbox entries are written with the rows, and are counted."""
        store = self.make_store()
        yield store.write(WriteRequest(["co2"], [(1,)], {"co2": int}, outbox=["entry-1", "entry-2"], queued_at=5.0))
        stats = yield store.outbox_stats()
        self.assertEqual(stats, {"depth": 2, "oldest_queued_at": 5.0, "dead_letters": 0})
        entries = yield store.outbox_fetch(10)
        yield store.outbox_dead_letter([(entries[0][0], "refused")], failed_at=6.0)
        yield store.outbox_delete([entries[1][0]])
        stats = yield store.outbox_stats()
        self.assertEqual(stats, {"depth": 0, "oldest_queued_at": None, "dead_letters": 1})

    @defer.inlineCallbacks
    def test_durable_settings(self):
        """The pool's connection uses WAL and synchronous=FULL by default."""
        store = self.make_store()
        mode = yield store.pool.runQuery("PRAGMA journal_mode")
        sync = yield store.pool.runQuery("PRAGMA synchronous")
        self.assertEqual((mode[0][0], sync[0][0]), ("wal", 2))


class QueryTests(StoreMixin, unittest.TestCase):
    """Queries: names quoted from the checked set, values bound."""

    def test_sql_binds_values(self):
        """Bounds and limit are parameters; names are quoted identifiers."""
        sql, params = select_sql(Query(["co2"], [("co2", ">=", "1; DROP TABLE data")], ("co2", "desc"), 5), '"data"')
        self.assertEqual(sql, 'SELECT "co2" FROM "data" WHERE "co2" >= ? ORDER BY "co2" DESC LIMIT ?')
        self.assertEqual(params, ["1; DROP TABLE data", 5])

    def test_unsafe_name_is_refused(self):
        """A name that is not a safe identifier never reaches SQL."""
        self.assertRaises(ValueError, select_sql, Query(['co2" --']), '"data"')

    @defer.inlineCallbacks
    def test_select_streams_in_chunks(self):
        """select() yields the rows a chunk at a time, then an empty list."""
        store = self.make_store()
        yield store.write(WriteRequest(["co2"], [(i,) for i in range(7)], {"co2": int}))
        stream = yield store.select(Query(["co2"], order_by=("co2", "asc")), chunk_rows=3)
        chunks = []
        while True:
            rows = yield stream.next_chunk()
            if not rows:
                break
            chunks.append([r[0] for r in rows])
        self.assertEqual(stream.header, ["co2"])
        self.assertEqual(chunks, [[0, 1, 2], [3, 4, 5], [6]])
