"""``python -m co2logd.copy``: SQLite into PostgreSQL and back, resumable, verified, careful with what is there."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
from typing import Any, List

from twisted.trial import unittest

from co2logd import copy as copytool
from co2logd.store import prepare_database
from tests import pgserver
from tests.helpers import REPO, make_settings

SKIP = pgserver.skip_reason()


def sqlite_source(path: str, rows: int, extra: List[Any] = ()) -> None:
    """A co2logd SQLite database with ``rows`` rows of co2, t and time columns, one outbox entry and a replay counter."""
    prepare_database(path, make_settings())
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE data ADD COLUMN co2 INTEGER")
    con.execute("ALTER TABLE data ADD COLUMN t REAL")
    con.execute("ALTER TABLE data ADD COLUMN time DATETIME")
    con.executemany(
        "INSERT INTO data (time_upload_utc, transport, co2, t, time) VALUES (?, ?, ?, ?, ?)",
        [("2024-05-01 12:00:00+00:00", "http", i, i / 10, "2024-05-01 12:{:02d}:00+00:00".format(i % 60)) for i in range(rows)]
        + list(extra),
    )
    con.execute("INSERT INTO co2logd_osem_outbox (queued_at, entry) VALUES (1.5, 'e1'), (2.5, 'e2')")
    con.execute("INSERT INTO co2logd_replay (key, last, updated_at) VALUES ('k', 12345678901234, 1.0)")
    con.commit()
    con.close()


class CopyTests(unittest.TestCase):
    """The copy between a SQLite file and a PostgreSQL database of its own."""

    skip = SKIP

    def setUp(self) -> None:
        self.server = pgserver.shared_server()
        self.url = self.server.url(self.server.create_database())
        self.source = self.mktemp() + ".sqlite"
        os.makedirs(os.path.dirname(self.source), exist_ok=True)

    def run_copy(self, *args: str, **kw: Any) -> dict:
        return copytool.copy(*args, make_settings(), progress=kw.pop("progress", False), out=io.StringIO(), **kw)

    def test_sqlite_to_postgres_and_back(self) -> None:
        """Every row, its types and co2logd's own tables arrive; copied back, the rows read as in the original."""
        sqlite_source(self.source, 2500)
        summary = self.run_copy(self.source, self.url, batch_rows=1000)
        self.assertEqual((summary["rows"], summary["resumed"]), (2500, False))
        db = self.url.rsplit("/", 1)[1]
        ((count, co2, t, first),) = self.server.execute("SELECT count(*), max(co2), max(t), min(time)::text FROM data", db)
        self.assertEqual((count, co2, t, first), (2500, 2499, 249.9, "2024-05-01 12:00:00+00"))
        types = dict(self.server.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'data'", db))
        self.assertEqual((types["co2"], types["t"], types["time"]), ("bigint", "double precision", "timestamp with time zone"))
        self.assertEqual(self.server.execute("SELECT id, queued_at, entry FROM co2logd_osem_outbox ORDER BY id", db),
                         [(1, 1.5, "e1"), (2, 2.5, "e2")])
        # the outbox goes on after the copied ids
        self.server.execute("INSERT INTO co2logd_osem_outbox (queued_at, entry) VALUES (3, 'e3')", db)
        self.assertEqual(self.server.execute("SELECT max(id) FROM co2logd_osem_outbox", db), [(3,)])
        back = self.mktemp() + ".sqlite"
        self.run_copy(self.url, back)
        original = sqlite3.connect(self.source).execute(
            "SELECT time_upload_utc, transport, co2, t, time FROM data ORDER BY rowid").fetchall()
        copied = sqlite3.connect(back).execute(
            "SELECT time_upload_utc, transport, co2, t, time FROM data ORDER BY rowid").fetchall()
        self.assertEqual(copied, original)
        self.assertEqual(sqlite3.connect(back).execute("SELECT key, last FROM co2logd_replay").fetchall(),
                         [("k", 12345678901234)])

    def test_resumes_after_interruption(self) -> None:
        """A copy stopped after some batches goes on where it stopped: no row twice, none missing."""
        sqlite_source(self.source, 3000)
        real_insert = copytool._Postgres.insert
        calls = []

        def failing_insert(side, table, names, rows, conflict_keys=()):
            if table == side.table:
                calls.append(len(rows))
                if len(calls) == 2:
                    raise KeyboardInterrupt("interrupted")
            return real_insert(side, table, names, rows, conflict_keys)

        copytool._Postgres.insert = failing_insert
        try:
            self.assertRaises(KeyboardInterrupt, self.run_copy, self.source, self.url, batch_rows=1000)
        finally:
            copytool._Postgres.insert = real_insert
        db = self.url.rsplit("/", 1)[1]
        self.assertEqual(self.server.execute("SELECT count(*) FROM data", db), [(1000,)])
        summary = self.run_copy(self.source, self.url, batch_rows=1000)
        self.assertTrue(summary["resumed"])
        self.assertEqual(self.server.execute("SELECT count(*), count(DISTINCT co2) FROM data", db), [(3000, 3000)])

    def test_refuses_a_destination_with_other_rows(self) -> None:
        """A destination with rows not from this source is refused (nothing added) unless --append."""
        sqlite_source(self.source, 10)
        db = self.url.rsplit("/", 1)[1]
        other = self.mktemp() + ".sqlite"
        sqlite_source(other, 5)
        self.run_copy(other, self.url)
        with self.assertRaises(copytool.CopyError) as caught:
            self.run_copy(self.source, self.url)
        self.assertIn("already holds 5 row(s)", str(caught.exception))
        self.assertEqual(self.server.execute("SELECT count(*) FROM data", db), [(5,)])
        self.run_copy(self.source, self.url, append=True)
        self.assertEqual(self.server.execute("SELECT count(*) FROM data", db), [(15,)])

    def test_a_value_that_does_not_fit(self) -> None:
        """Text in an INTEGER column stops the copy naming row and column; --bad-values null copies NULL and counts it."""
        sqlite_source(self.source, 3, extra=[("2024-05-01 12:00:00+00:00", "http", "n/a", 1.0, None)])
        with self.assertRaises(copytool.CopyError) as caught:
            self.run_copy(self.source, self.url)
        self.assertIn("row 4", str(caught.exception))
        self.assertIn("column co2", str(caught.exception))
        summary = self.run_copy(self.source, self.url, bad_values="null")
        self.assertEqual((summary["rows"], summary["nulled"]), (4, 1))

    def test_progress_bar(self) -> None:
        """Without a terminal the progress is a line per tenth, ending at 100 %."""
        sqlite_source(self.source, 100)
        out = io.StringIO()
        copytool.copy(self.source, self.url, make_settings(), batch_rows=10, out=out)
        lines = out.getvalue().splitlines()
        self.assertIn("100.0% 100/100 rows", lines[-1])
        self.assertGreaterEqual(len(lines), 10)

    def test_command_line(self) -> None:
        """``python -m co2logd.copy``: exit 0 and a summary; a bad URL is one line without the password, exit 1."""
        sqlite_source(self.source, 20)
        env = dict(os.environ, PYTHONPATH=REPO)
        done = subprocess.run([sys.executable, "-m", "co2logd.copy", "--quiet", self.source, self.url],
                              env=env, capture_output=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(b"Copied and verified 20 rows", done.stdout)
        bad = subprocess.run([sys.executable, "-m", "co2logd.copy", self.source, "mysql://u:hunter2@h/db"],
                             env=env, capture_output=True, timeout=120)
        self.assertEqual(bad.returncode, 1)
        self.assertEqual(len(bad.stderr.decode().strip().splitlines()), 1)
        self.assertNotIn(b"hunter2", bad.stderr)
