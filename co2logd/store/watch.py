"""
Is the database still there, and does a write still reach the disk?

A part of :class:`co2logd.store.Store` (:class:`Watch`):

* When the writer's connection opens, the ``(st_dev, st_ino)`` of the
  database file and of its ``-wal`` are remembered.  Before every COMMIT
  (uploads and heartbeats alike) both paths are ``stat``-ed again: a file
  that was deleted or replaced means SQLite writes into an unlinked file
  that is gone at the next start.  Then nothing more is acknowledged: the
  transaction is rolled back, every later write fails with
  :class:`DatabaseLost` (HTTP 503) until co2logd is restarted, and what was
  stored is rescued first: a copy made with SQLite's backup API from the
  open connection goes back to the database path when the path is empty (so
  a restart finds every acknowledged row), else next to it as
  ``<db>.rescued-<UTC time>``; a deleted ``-wal`` is checkpointed into the
  (still current) database file.
* A heartbeat on the clock (``HEALTH_HEARTBEAT_SECONDS``) updates a one-row
  table in a committed transaction on the writer's connection, with the
  ``synchronous`` setting of uploads, so it reaches the disk as uploads do,
  and reads the free space of the database's file system.
* Upload transactions that fail with a disk error (full, I/O, read-only)
  are remembered until a later upload writes rows again.

:meth:`disk_report` turns this into /health's ``database`` entry and its reasons.
"""

from __future__ import annotations

import datetime
import os
import sqlite3
from typing import Any, Dict, List, Optional, Protocol, Tuple, cast

from twisted.enterprise import adbapi
from twisted.internet import task
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from co2logd.store.interfaces import DatabaseLost
from co2logd.store.schema import HEARTBEAT_TABLE

log = Logger()

#: SQLite primary result codes that mean the storage refuses writes
DISK_ERROR_CODES = {
    3,  # SQLITE_PERM
    8,  # SQLITE_READONLY
    10,  # SQLITE_IOERR
    11,  # SQLITE_CORRUPT
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN
    26,  # SQLITE_NOTADB
}

FileId = Optional[Tuple[int, int]]


class Clock(Protocol):
    """What the heartbeat needs of a clock (``IReactorTime``, ``task.Clock``)."""

    def seconds(self) -> float:
        """The time now, in seconds."""


def is_disk_error(error: BaseException) -> bool:
    """True for SQLite errors that say the storage refuses writes (not for a busy lock or bad SQL)."""
    code = getattr(error, "sqlite_errorcode", None)
    return isinstance(error, sqlite3.Error) and code is not None and (code & 0xFF) in DISK_ERROR_CODES


def file_id(path: str) -> FileId:
    """``(st_dev, st_ino)`` of ``path``, or None when there is no such file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


class Watch:
    """
    The file identity checks, the rescue, the heartbeat and the disk state
    of one database file; ``pool`` is the writer's (set by the store once
    it is made: the pool's open hook calls :meth:`remember_files`).
    """

    pool: adbapi.ConnectionPool

    def __init__(self, path: str, settings: Any, clock: Optional[Clock]):
        self.path = path
        self.settings = settings
        self.clock = clock
        #: why writes are refused for good (until restart), or None
        self.lost: Optional[str] = None
        self._files: Dict[str, FileId] = {}
        self._lost_in_thread: Optional[str] = None  # set once, by the writer's thread, when it rescued the data
        self._heartbeat: Optional[task.LoopingCall] = None
        self.heartbeat_state: Dict[str, Any] = {"ok_at": None, "error": None, "error_at": None, "free_bytes": None}
        #: the last upload's disk error and whether it was SQLITE_FULL (only an upload that fits clears that)
        self._write_error: Optional[Tuple[str, bool]] = None

    # -- in the writer's thread ----------------------------------------------

    def remember_files(self) -> None:
        """Called when the writer's connection has opened (and made its -wal): these files are ours."""
        self._files = {"database": file_id(self.path), "WAL": file_id(self.path + "-wal")}

    def _files_changed(self) -> Optional[str]:
        """What happened to our files since the connection opened, or None while they are still ours."""
        for name, suffix in (("database", ""), ("WAL", "-wal")):
            opened = self._files.get(name)
            if opened is None:
                continue  # not known at open: nothing to compare with
            now = file_id(self.path + suffix)
            if now != opened:
                return "the {} file {} was {} while co2logd had it open".format(
                    name, self.path + suffix, "deleted" if now is None else "replaced"
                )
        return None

    def check_files(self, connection: sqlite3.Connection) -> None:
        """Raise DatabaseLost (after rescuing what was stored, once) when a file is no longer ours; rolls back first."""
        lost = self._lost_in_thread
        if lost is None:
            changed = self._files_changed()
            if changed is None:
                return
        if connection.in_transaction:
            connection.rollback()
        if lost is None:
            assert changed is not None
            lost = self._lost_in_thread = changed + "; " + self._rescue(connection, changed)
        raise DatabaseLost(lost)

    def _rescue(self, connection: sqlite3.Connection, changed: str) -> str:
        """Save what the open connection still sees where a restart finds it; say where."""
        path = self.path
        if file_id(path) == self._files.get("database"):
            # only the -wal went: its frames are still readable through our connection
            try:
                busy, frames, done = connection.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
                if not busy and frames == done:
                    return "its content was checkpointed into {}; writes are refused until co2logd is restarted".format(path)
            except sqlite3.Error as e:
                log.error("Checkpoint after a lost WAL failed: {error}", error=str(e))
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        side = "{}.rescued-{}".format(path, stamp)
        try:
            copy = sqlite3.connect(side)
            try:
                connection.backup(copy)
            finally:
                copy.close()
            with open(side, "rb") as f:
                os.fsync(f.fileno())
            where = side
            if all(file_id(path + suffix) is None for suffix in ("", "-wal", "-shm")):
                os.link(side, path)  # never over a file that appeared meanwhile
                os.unlink(side)
                where = path
            directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except (OSError, sqlite3.Error) as e:
            log.critical("{changed}; rescuing the data to {side} failed: {error}", changed=changed, side=side, error=str(e))
            return "rescuing the data to {} failed ({}); writes are refused: do not stop co2logd before saving /download".format(side, e)
        log.critical("{changed}; everything stored was saved to {where}", changed=changed, where=where)
        return "everything stored was saved to {}; writes are refused until co2logd is restarted".format(where)

    def _beat(self, connection: sqlite3.Connection, now: float) -> Dict[str, Any]:
        """One heartbeat: a committed one-row write, the file check before COMMIT, the free space."""
        self.check_files(connection)
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.execute(
                "INSERT OR REPLACE INTO {} (id, beat_at) VALUES (1, ?)".format(HEARTBEAT_TABLE), (now,)
            )
            self.check_files(connection)
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.rollback()
            raise
        st = os.statvfs(os.path.dirname(os.path.abspath(self.path)))
        return {"free_bytes": st.f_bavail * st.f_frsize}

    # -- on the reactor --------------------------------------------------------

    def start_heartbeat(self) -> None:
        interval = self.settings.HEALTH_HEARTBEAT_SECONDS
        if self.clock is None or not interval:
            return
        self._heartbeat = task.LoopingCall(self.heartbeat)
        self._heartbeat.clock = cast(IReactorTime, self.clock)
        self._heartbeat.start(interval, now=True)

    def stop_heartbeat(self) -> None:
        if self._heartbeat is not None and self._heartbeat.running:
            self._heartbeat.stop()

    def heartbeat(self) -> "Deferred[None]":
        """Write the heartbeat now; fire with None either way (the outcome is kept for /health)."""
        clock = self.clock
        assert clock is not None  # the heartbeat runs only with a clock
        now = clock.seconds()
        state = self.heartbeat_state
        if self.lost is not None:
            state.update(error=self.lost, error_at=now)
            return succeed(None)

        def done(result: Dict[str, Any]) -> None:
            state.update(ok_at=clock.seconds(), error=None, free_bytes=result["free_bytes"])
            if self._write_error is not None and not self._write_error[1]:
                self._write_error = None  # writes reach the disk again; a full database needs an upload that fits

        def failed(failure: Failure) -> None:
            if failure.check(DatabaseLost):
                self.lost = str(failure.value)
            elif not failure.check(sqlite3.Error, OSError):
                log.failure("The heartbeat write failed", failure)
            state.update(error=str(failure.value), error_at=clock.seconds())

        d: "Deferred[None]" = self.pool.runWithConnection(self._beat, now).addCallbacks(done, failed)
        return d

    def note_write(self, outcome: Any, results: List[Any]) -> None:
        """After a write transaction: lose the database, or remember (or forget) a disk error."""
        failures = [outcome] if isinstance(outcome, Failure) else [r for r in results if isinstance(r, Failure)]
        for failure in failures:
            if failure.check(DatabaseLost):
                self.lost = str(failure.value)
            elif failure.value is not None and is_disk_error(failure.value):
                code = getattr(failure.value, "sqlite_errorcode", 0)
                self._write_error = (str(failure.value), code & 0xFF == 13)  # SQLITE_FULL
        if not isinstance(outcome, Failure) and any(isinstance(r, int) and r > 0 for r in results):
            self._write_error = None

    def disk_report(self, now: float) -> Tuple[Dict[str, Any], List[str]]:
        """/health's ``database`` entry and the reasons it gives for a 503 (no I/O)."""
        state = self.heartbeat_state
        reasons: List[str] = []
        if self.lost is not None:
            reasons.append(self.lost)
        elif state["error"] is not None:
            reasons.append("the heartbeat write failed: {}".format(state["error"]))
        interval = self.settings.HEALTH_HEARTBEAT_SECONDS
        if self._heartbeat is not None and self._heartbeat.running and state["error"] is None:
            last = state["ok_at"]
            if last is not None and now - last > 3 * interval:
                reasons.append("no heartbeat write has succeeded for {:.0f} s".format(now - last))
        if self._write_error is not None and self.lost is None:
            reasons.append("the last upload could not be written: {}".format(self._write_error[0]))
        free = state["free_bytes"]
        minimum = self.settings.HEALTH_MIN_FREE_MB * 1e6
        if free is not None and free < minimum:
            reasons.append(
                "only {:.1f} MB are free on the database's file system (HEALTH_MIN_FREE_MB = {})".format(
                    free / 1e6, self.settings.HEALTH_MIN_FREE_MB
                )
            )
        report: Dict[str, Any] = {"writable": not reasons, "heartbeat_at": state["ok_at"]}
        if free is not None:
            report["free_mb"] = round(free / 1e6, 1)
        if reasons:
            report["error"] = reasons[0]
        return report, reasons

