"""
The ingest service: the one place every transport hands its uploads to.

``ingest(body, content_type, headers, transport)`` parses, authenticates,
normalises and stores one upload and fires with a :class:`Receipt` once the
rows are committed, or fails with an :class:`~co2logd.errors.IngestError`
and stores nothing.  It knows no transport: ``transport`` is only the label
written to the transport column.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
from typing import Any, Callable, Dict, List, Mapping, Optional

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.logger import Logger

from co2logd import payloads
from co2logd.auth import Authenticator, Headers, header_items
from co2logd.idempotency import Idempotency
from co2logd.replay import ReplayPolicy, replay_error
from co2logd.errors import IngestError, bad_request
from co2logd.store.names import is_reserved, is_safe_identifier
from co2logd.store.watch import is_disk_error
from co2logd.store import (
    DatabaseLost,
    DuplicateUpload,
    ReplayRefused,
    StoreBusy,
    StoreUnavailable,
    ValueRefused,
    WriteRequest,
)

log = Logger()


class Receipt:
    """What an upload stored: rows, and measurements queued for the OpenSenseMap."""

    def __init__(self, rows: int, osem_queued: Optional[int] = None, replayed: bool = False):
        self.rows = rows
        self.osem_queued = osem_queued
        #: True for the stored receipt of an earlier upload with the same Idempotency-Key
        self.replayed = replayed

    def as_dict(self) -> Dict[str, int]:
        """The co2logserver response body: ``{"saved-in-db": N}`` (+ ``osem-queued``)."""
        body = {"saved-in-db": self.rows}
        if self.osem_queued is not None:
            body["osem-queued"] = self.osem_queued
        return body

    def __repr__(self) -> str:
        return "Receipt(rows={!r}, osem_queued={!r})".format(self.rows, self.osem_queued)


def json_default(value: Any) -> Any:
    """JSON encoding for outbox entries and downloads: datetimes as ISO text."""
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


class IngestService(Service):
    """
    Parse → authenticate → normalise → store, for every transport.

    :param settings: :class:`co2logd.settings.Settings`
    :param store: a :class:`co2logd.store.Store` (or its verified fake)
    :param clock: provides ``seconds()``; the upload time comes from it
    :param outbox_entries: row dicts → outbox entries (JSON strings) and the
        number of measurements in them; set when forwarding is on
    """

    name = "ingest"
    verbose = False

    def __init__(
        self,
        settings,
        store,
        clock,
        outbox_entries: Optional[Callable[[List[Dict[str, Any]]], "tuple[List[str], int]"]] = None,
    ):
        self.settings = settings
        self.store = store
        self.clock = clock
        self.authenticator = Authenticator.from_settings(settings)
        self.outbox_entries = outbox_entries
        self.automatic_columns: List[str] = list(settings.automatic_columns)
        self.automatic = set(self.automatic_columns)
        self.time_columns: List[str] = [name.lower() for name in settings.TIME_COLS]
        self.limits = payloads.Limits.from_settings(settings)
        # auth only matters when salts are set or it is required
        self.check_uploads = bool(settings.CHECKSUM_SALTS) or settings.UPLOAD_REQUIRES_AUTH
        # replay protection and idempotency keys (issue 7); both read the headers
        self.replay = ReplayPolicy.from_settings(settings)
        self.idempotency = Idempotency.from_settings(settings)
        self.reads_headers = self.replay.enabled or self.idempotency.enabled
        self._expiry: Optional[task.LoopingCall] = None
        self._names: Dict[Any, str] = {}  # checked upload names → column names
        # called with each Receipt after its commit (e.g. to wake the uploader)
        self.stored_observers: List[Callable[[Receipt], None]] = []
        self.counters: Dict[str, collections.Counter] = {
            "uploads": collections.Counter(),
            "rows": collections.Counter(),
            "rejects": collections.Counter(),
            "repeats": collections.Counter(),  # uploads answered with an earlier receipt (Idempotency-Key)
        }

    # -- the entry point ------------------------------------------------------

    def ingest(
        self,
        body: bytes,
        content_type: Optional[str],
        headers: Headers,
        transport: str,
        extra_columns: Optional[Mapping[str, Any]] = None,
    ) -> defer.Deferred:
        """
        Store one upload atomically; fire with a Receipt after the commit.

        ``content_type`` None means: detect the format.  ``extra_columns``
        are set on every row (e.g. a node id a radio gateway put in front).
        """
        kind = transport.partition(":")[0]
        if self.store.busy:  # fail fast: no parsing while the writer catches up
            return self._refuse(kind, self.busy_error())
        try:
            write = self._prepare(body, content_type, headers, transport, extra_columns or {})
        except IngestError as e:
            return self._refuse(kind, e)
        if write is None:
            self.counters["uploads"][kind] += 1
            return defer.succeed(Receipt(0, 0 if self.outbox_entries else None))
        request, queued, claim, idempotent = write

        def stored(count: int) -> Receipt:
            self.counters["uploads"][kind] += 1
            self.counters["rows"][kind] += count
            if self.verbose:
                log.info("Stored {rows} rows from {transport}", rows=count, transport=transport)
            receipt = Receipt(count, queued if self.outbox_entries else None)
            for observer in self.stored_observers:
                observer(receipt)
            return receipt

        def failed(failure):
            if failure.check(StoreBusy):
                self.counters["rejects"][(kind, "busy")] += 1
                raise self.busy_error()
            if failure.check(DatabaseLost):  # the database file went away: nothing is acknowledged until a restart
                error = IngestError(503, "database", "The upload was not stored: " + str(failure.value))
                error.retry_after = self.settings.WRITE_RETRY_AFTER_SECONDS  # type: ignore[attr-defined]
                return self._refuse(kind, error)
            if failure.check(ReplayRefused):
                return self._refuse(kind, replay_error(claim, "is not larger than the last one stored"))
            if failure.check(DuplicateUpload):  # a copy with the same key got in first
                return self.store.idempotency_lookup(idempotent.key, idempotent.cutoff).addCallbacks(repeated, failed)
            if failure.check(ValueRefused):  # a value PostgreSQL's column cannot hold: the sender must change it
                return self._refuse(kind, IngestError(400, "value", str(failure.value)))
            self.counters["rejects"][(kind, "store")] += 1
            if is_disk_error(failure.value) or failure.check(StoreUnavailable):  # /health says it too: one line  # /health reports it too; the traceback would say nothing more
                log.error("Could not store {rows} rows from {transport}: {error}", rows=request.row_count, transport=transport, error=str(failure.value))
            else:
                log.failure("Could not store {rows} rows from {transport}", failure, rows=request.row_count, transport=transport)
            error = IngestError(503, "store", "The upload could not be stored; nothing was saved, try again")
            error.retry_after = self.settings.WRITE_RETRY_AFTER_SECONDS  # type: ignore[attr-defined]
            raise error

        def write_rows():
            return self.store.write(dataclasses.replace(request, queued_at=self.clock.seconds())).addCallbacks(stored, failed)

        if idempotent is None:
            return write_rows()

        def repeated(record):
            try:
                original = idempotent.answer(record)
            except IngestError as e:  # the key with another body: 409
                return self._refuse(kind, e)
            if original is None:  # not a repeat (or expired since the copy that got in first)
                if idempotent.refusal is not None:
                    return self._refuse(kind, idempotent.refusal)
                return write_rows()
            self.counters["repeats"][kind] += 1
            return Receipt(original["saved-in-db"], original.get("osem-queued"), replayed=True)

        # the store takes the key before the replay number: a repeat racing the first copy is a repeat, not a replay
        request = dataclasses.replace(
            request, idempotency=idempotent.claim(Receipt(request.row_count, queued if self.outbox_entries else None).as_dict())
        )
        return self.store.idempotency_lookup(idempotent.key, idempotent.cutoff).addCallbacks(repeated, failed)

    def busy_error(self) -> IngestError:
        """The 503 for a full write queue; ``retry_after`` is the seconds to tell the sender."""
        seconds = self.settings.WRITE_RETRY_AFTER_SECONDS
        error = IngestError(
            503, "busy", "The server is busy writing earlier uploads; nothing was saved, try again in {} s".format(seconds)
        )
        error.retry_after = seconds  # type: ignore[attr-defined]
        return error

    def _refuse(self, kind: str, error: IngestError) -> defer.Deferred:
        self.counters["rejects"][(kind, error.reason)] += 1
        return defer.fail(error)

    def check_auth(self, payload: bytes, headers: Headers, required: bool) -> Dict[str, Optional[str]]:
        """
        Salted-checksum matches for a payload (also used for downloads); with
        replay protection on, over the Content-Counter/-Timestamp line and the payload.
        """
        if self.replay.enabled:
            headers = list(header_items(headers))
            payload = self.signed_payload(payload, headers)
        return self.authenticator.check(payload, headers, required)

    def signed_payload(self, body: bytes, headers: Headers) -> bytes:
        """What a device's salted checksum covers: ``body``, or the claim line, ``\\n`` and ``body``."""
        claim = self.replay.claim(list(header_items(headers))) if self.replay.enabled else None
        return body if claim is None else claim.signed(body)

    def startService(self) -> None:
        """Expire old idempotency keys now and then."""
        super().startService()
        if self.idempotency.enabled:
            self._expiry = task.LoopingCall(self._expire_keys)
            self._expiry.clock = self.clock
            self._expiry.start(min(self.idempotency.retention, 3600.0), now=False)

    def stopService(self):
        """Stop expiring keys."""
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        return super().stopService()

    def _expire_keys(self) -> defer.Deferred:
        d = self.store.idempotency_expire(self.clock.seconds() - self.idempotency.retention)
        d.addErrback(lambda failure: log.failure("Could not expire idempotency keys", failure))
        return d

    # -- the steps ------------------------------------------------------------

    def _prepare(self, body, content_type, headers, transport, extra_columns):
        settings = self.settings
        if len(body) > settings.MAX_BODY_SIZE:
            raise IngestError(
                413, "too-large", "The payload is {} bytes; the limit is {} (MAX_BODY_SIZE)".format(len(body), settings.MAX_BODY_SIZE)
            )
        claim = idempotent = advance = None
        signed = body
        if self.reads_headers:  # replay protection, idempotency keys (issue 7)
            headers = list(header_items(headers))
            claim = self.replay.claim(headers)
            if claim is not None:
                signed = claim.signed(body)
        if self.check_uploads:
            matches = self.authenticator.matches(signed, headers)
            if claim is not None and matches and not any(matches.values()):
                self._refuse_renamed_claim(claim, body, headers)
            if settings.UPLOAD_REQUIRES_AUTH:
                self.authenticator.require(matches)
            matched, failed = self.authenticator.columns(matches)
        else:
            matches = {}
            matched = failed = None  # what columns() gives without salts
        if self.reads_headers:
            now = self.clock.seconds()
            idempotent = self.idempotency.upload(headers, matches, content_type, body, now)
            if self.replay.enabled:
                try:
                    advance = self.replay.guard(claim, matches, now, self.store.replay_last)
                except IngestError as e:
                    if idempotent is None or not e.reason.startswith("replay"):
                        raise
                    idempotent.refusal = e  # a retry with its key gets its receipt; anything else this
        # the parser refuses more than MAX_ROWS_PER_UPLOAD rows or MAX_COLUMNS columns as it counts them
        table = payloads.parse(body, content_type, self.limits)
        table = self.normalise(table, extra_columns)
        nrows = payloads.row_count(table)
        new_columns = self._new_columns(table)
        if not table and not settings.ALLOW_EMPTY_ROWS:
            log.info("Upload from {transport} held no data columns; nothing stored", transport=transport)
            return None
        upload_time = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        fixed = list(zip(self.automatic_columns, (upload_time, matched, failed, transport)))
        names = list(table)
        if not names:
            rows: List[Any] = [()] * max(nrows, 1)
        else:
            rows = list(zip(*[table[name] for name in names]))
        outbox: List[str] = []
        queued = 0
        if self.outbox_entries is not None:
            data = [table[name] for name in names]
            row_dicts = [dict(zip(names, (col[i] for col in data))) for i in range(nrows)]
            outbox, queued = self.outbox_entries(row_dicts)
        request = WriteRequest(names, rows, new_columns, fixed, outbox, replay=advance)
        return request, queued, claim, idempotent

    def _refuse_renamed_claim(self, claim, body: bytes, headers) -> None:
        """
        A 403 ``replay`` when checksums that fail for this claim match the same
        value under the other header: a captured upload sent again with
        ``Content-Timestamp`` renamed ``Content-Counter`` (or back).  Only
        uploads whose checksums failed pay for this second hash.
        """
        renamed = claim.renamed()
        if any(self.authenticator.matches(renamed.signed(body), headers).values()):
            raise replay_error(
                claim,
                "carries a checksum made for {}: a copy of another upload with its header renamed".format(
                    "Content-Timestamp" if renamed.kind == "timestamp" else "Content-Counter"
                ),
            )

    def normalise(self, table: payloads.Table, extra_columns: Mapping[str, Any]) -> payloads.Table:
        """
        Lower-case and check column names, add extra columns, convert time
        columns.  Raises a 400 IngestError for a name that is not safe.
        """
        settings = self.settings
        out: payloads.Table = {}
        names = self._names
        for raw, values in table.items():
            name = names.get(raw)
            if name is None:
                name = self._checked_name(raw)
            if name in out:
                raise bad_request("The column {!r} is given twice (names are case-insensitive)".format(name), "bad-column")
            out[name] = values
        if extra_columns:
            nrows = payloads.row_count(out)
            for name, value in extra_columns.items():
                out[name] = [value] * nrows
        converter = settings.TIME_CONVERTER
        for name in self.time_columns:
            values = out.get(name)
            if values is None:
                continue
            for i, value in enumerate(values):
                if value is None:
                    continue
                try:
                    values[i] = converter(value, name)
                except Exception as e:
                    log.warn(
                        "TIME_CONVERTER failed on {column}={value!r} ({error}); keeping the value",
                        column=name,
                        value=value,
                        error=e,
                    )
        return out

    def _checked_name(self, raw: Any) -> str:
        """The column name for an uploaded name, or a 400; good names are remembered."""
        settings = self.settings
        if isinstance(raw, str) and not raw.isascii():
            # lower() folds some letters into ASCII ones (KELVIN SIGN → 'k'), so a
            # look-alike name would land in another column: refuse it instead
            raise bad_request(
                "Invalid column name {!r}: only ASCII letters, digits and '_' are allowed".format(raw[:80]),
                "bad-column",
            )
        name = raw.lower() if isinstance(raw, str) else raw
        if not is_safe_identifier(name, settings.MAX_COLUMN_NAME_LENGTH):
            if isinstance(name, str) and len(name) > settings.MAX_COLUMN_NAME_LENGTH:
                raise bad_request(
                    "The column name {!r}... is longer than {} characters (MAX_COLUMN_NAME_LENGTH)".format(
                        raw[:20], settings.MAX_COLUMN_NAME_LENGTH
                    ),
                    "bad-column",
                )
            raise bad_request(
                "Invalid column name {!r}: use up to {} letters, digits and '_', "
                "not starting with a digit".format(raw, settings.MAX_COLUMN_NAME_LENGTH),
                "bad-column",
            )
        if is_reserved(name):
            raise bad_request(
                "The column name {!r} is SQLite's rowid (rowid, _rowid_ and oid are reserved)".format(raw),
                "bad-column",
            )
        if name in self.automatic:
            raise bad_request("The column {!r} is filled by the server and cannot be uploaded".format(name), "bad-column")
        if len(self._names) >= 10_000:
            self._names.clear()  # a bound, so random names cannot grow it without end
        self._names[raw] = name
        return name

    def _new_columns(self, table: payloads.Table) -> Dict[str, Optional[type]]:
        """
        Columns to add (name → the type of the first value).  Columns ``ACCEPT_NEW_COLUMN``
        refuses are dropped from ``table``, as co2logserver does.
        """
        settings = self.settings
        known = self.store.columns
        new: Dict[str, Optional[type]] = {}
        for name in list(table):
            if name in known:
                continue
            try:
                accepted = settings.ACCEPT_NEW_COLUMN(name)
            except Exception:
                log.failure("ACCEPT_NEW_COLUMN raised for {column}; refusing it", column=name)
                accepted = False
            if not accepted:
                log.info("Ignoring new column {column} (ACCEPT_NEW_COLUMN)", column=name)
                del table[name]
                continue
            first = next((v for v in table[name] if v is not None), None)
            new[name] = None if first is None else type(first)
        if len(new) > settings.MAX_NEW_COLUMNS_PER_UPLOAD:
            raise bad_request(
                "The upload adds {} new columns; the limit is {} per upload (MAX_NEW_COLUMNS_PER_UPLOAD)".format(
                    len(new), settings.MAX_NEW_COLUMNS_PER_UPLOAD
                ),
                "too-many-new-columns",
            )
        if len(known) + len(new) > settings.MAX_COLUMNS:
            raise bad_request(
                "The table would have {} columns; the limit is {} (MAX_COLUMNS)".format(len(known) + len(new), settings.MAX_COLUMNS),
                "too-many-columns",
            )
        return new
