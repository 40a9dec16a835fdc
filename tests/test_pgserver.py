"""The throw-away PostgreSQL server the PostgreSQL tests run on (tests/pgserver.py)."""

from __future__ import annotations

import os
import socket

from twisted.trial import unittest

from tests import pgserver

SKIP = pgserver.skip_reason()


class PostgresServerTests(unittest.TestCase):
    """Start, retry on a taken port, restart, tear down."""

    skip = SKIP

    def test_shared_server_answers(self) -> None:
        """The shared server accepts the password over TCP on 127.0.0.1 and is PostgreSQL 15."""
        server = pgserver.shared_server()
        database = server.create_database()
        ((version,),) = server.execute("SHOW server_version", dbname=database)
        self.assertTrue(version.startswith("15."), version)
        ((address,),) = server.execute("SELECT inet_server_addr()::text")
        self.assertEqual(address, "127.0.0.1/32")

    def test_runs_unprivileged(self) -> None:
        """The server never runs as root (PostgreSQL would refuse): as the postgres/nobody user when the tests are root."""
        server = pgserver.shared_server()
        uid = os.stat("/proc/{}".format(server.process.pid)).st_uid
        self.assertNotEqual(uid, 0)

    def test_password_required_over_tcp(self) -> None:
        """A wrong password is refused: the URL's password is really checked."""
        import psycopg

        server = pgserver.shared_server()
        wrong = server.conninfo().replace(server.password, "wrong")
        self.assertRaises(psycopg.OperationalError, psycopg.connect, wrong)

    def test_port_taken_retries(self) -> None:
        """When the chosen port is taken, start-up picks another one; stop and restart keep the data; destroy removes it all."""
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        self.addCleanup(taken.close)
        server = pgserver.PostgresServer()
        self.addCleanup(server.destroy)
        server.port = taken.getsockname()[1]
        server.start()
        self.assertNotEqual(server.port, taken.getsockname()[1])
        self.assertIn("already in use", server.log())
        database = server.create_database()
        server.execute("CREATE TABLE t (x integer)", dbname=database)
        server.execute("INSERT INTO t VALUES (1)", dbname=database)
        port = server.port
        server.restart()
        self.assertEqual(server.port, port)
        self.assertEqual(server.execute("SELECT x FROM t", dbname=database), [(1,)])
        server.destroy()
        self.assertFalse(os.path.exists(server.directory))
