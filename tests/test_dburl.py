"""``--db`` / ``DB``: a SQLite path or a PostgreSQL URL, and passwords kept out of sight."""

from __future__ import annotations

import os
import subprocess
import sys

from twisted.trial import unittest

from co2logd.dburl import DatabaseUrlError, PostgresUrl, is_postgres, parse_db, redact
from co2logd.settings import Settings, SettingsError
from tests.helpers import REPO

SECRET = "s3cr%40t-pw"  # percent-encoded "s3cr@t-pw"


class ParseTests(unittest.TestCase):
    """What ``parse_db`` makes of a value."""

    def test_path(self) -> None:
        """Anything without a scheme:// is a SQLite path, as in co2logserver."""
        for value in ("co2.sqlite", "/var/lib/co2logd/co2.sqlite", "data:2026.sqlite", "./x"):
            self.assertEqual(parse_db(value), value)

    def test_postgresql_url(self) -> None:
        """Both schemes give psycopg's keywords, percent-decoded, query options included."""
        for scheme in ("postgresql", "postgres", "PostgreSQL"):
            url = parse_db("{}://co2:{}@db.example:6543/co2log?sslmode=verify-full".format(scheme, SECRET))
            self.assertIsInstance(url, PostgresUrl)
            self.assertEqual(
                url.params,
                {"user": "co2", "password": "s3cr@t-pw", "host": "db.example", "port": "6543",
                 "dbname": "co2log", "sslmode": "verify-full"},
            )

    def test_socket_and_defaults(self) -> None:
        """libpq's own URL forms work: a socket directory as host, parts left to libpq's defaults."""
        self.assertEqual(parse_db("postgresql:///co2?host=/run/postgresql").params, {"dbname": "co2", "host": "/run/postgresql"})
        self.assertEqual(parse_db("postgres://").params, {})

    def test_shown_without_password(self) -> None:
        """str() and repr() of a URL never hold its password, in the authority or the query."""
        url = parse_db("postgresql://co2:{}@h/db?password=other".format(SECRET))
        for text in (str(url), repr(url)):
            self.assertNotIn("s3cr", text)
            self.assertNotIn("other", text)
        self.assertEqual(str(url), "postgresql://co2:***@h/db?password=***")

    def test_refused(self) -> None:
        """Another scheme, an empty value, a bad port or option: one line each, no password in it."""
        for value, expected in [
            ("mysql://co2:{}@h/db".format(SECRET), "unknown scheme mysql://"),
            ("sqlite:///co2.sqlite", "unknown scheme sqlite://"),
            ("", "not an empty value"),
            ("postgresql://co2:{}@h:port/db".format(SECRET), "port 'port' is not a number"),
            ("postgresql://co2:{}@h:70000/db".format(SECRET), "is not a number from 1 to 65535"),
            ("postgresql://co2:{}@h/db?colour=red".format(SECRET), 'invalid URI query parameter: "colour"'),
            ("postgresql://co2:{}@h/d%zz".format(SECRET), "invalid percent-encoded token"),
        ]:
            with self.assertRaises(DatabaseUrlError) as caught:
                parse_db(value)
            message = str(caught.exception)
            self.assertIn(expected, message)
            self.assertNotIn("s3cr", message)
            self.assertNotIn("\n", message)

    def test_is_postgres(self) -> None:
        """Only the two PostgreSQL schemes select the PostgreSQL store."""
        self.assertTrue(is_postgres("postgres://x"))
        self.assertFalse(is_postgres("co2.sqlite"))
        self.assertFalse(is_postgres("mysql://x"))

    def test_redact(self) -> None:
        """redact() leaves text without a password alone."""
        self.assertEqual(redact("postgresql://co2@h/db"), "postgresql://co2@h/db")
        self.assertEqual(redact("postgresql://co2:pw@h/db"), "postgresql://co2:***@h/db")


class SettingsTests(unittest.TestCase):
    """``DB`` in the settings and the config file."""

    def test_setting_refused_without_password(self) -> None:
        """A DB that is neither a path nor a PostgreSQL URL is a SettingsError that does not repeat the password."""
        with self.assertRaises(SettingsError) as caught:
            Settings.from_values({"DB": "mysql://co2:{}@h/db".format(SECRET)}, environ={})
        self.assertNotIn("s3cr", str(caught.exception))
        self.assertIn("mysql://co2:***@h/db", str(caught.exception))

    def test_setting_accepted(self) -> None:
        """A PostgreSQL URL is kept as given; paths too."""
        url = "postgresql://co2:{}@h/db".format(SECRET)
        self.assertEqual(Settings.from_values({"DB": url}, environ={}).DB, url)


class CommandLineTests(unittest.TestCase):
    """``--db`` through ``python -m co2logd`` and the process title."""

    def run_co2logd(self, *args: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONPATH=REPO)
        env.pop("CO2LOGSERVER_CONFIG", None)
        return subprocess.run(
            [sys.executable, "-m", "co2logd", "--http", "none", *args],
            cwd=self.mktemp_dir(), env=env, capture_output=True, timeout=60,
        )

    def mktemp_dir(self) -> str:
        path = self.mktemp()
        os.makedirs(path)
        return path

    def test_bad_db_is_one_line(self) -> None:
        """``--db mysql://…`` ends start-up with one line naming the problem, exit status 1, no password."""
        result = self.run_co2logd("--db", "mysql://co2:{}@127.0.0.1/db".format(SECRET))
        self.assertEqual(result.returncode, 1, result.stderr)
        err = result.stderr.decode()
        self.assertEqual(len(err.strip().splitlines()), 1, err)
        self.assertIn("unknown scheme mysql://", err)
        self.assertNotIn("s3cr", err + result.stdout.decode())

    def test_process_title_hides_password(self) -> None:
        """After option parsing the command line ps shows has the URL's password starred out."""
        code = (
            "import sys; from co2logd.tap import Options; o = Options(); o.parseOptions(sys.argv[1:]); "
            "sys.stdout.write(open('/proc/self/cmdline').read())"
        )
        url = "postgresql://co2:{}@127.0.0.1/db".format(SECRET)
        result = subprocess.run(
            [sys.executable, "-c", code, "--http", "none", "--db", url],
            env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        cmdline = result.stdout.decode()
        self.assertNotIn("s3cr", cmdline)
        self.assertIn("postgresql://co2:" + "*" * len(SECRET) + "@127.0.0.1/db", cmdline)
