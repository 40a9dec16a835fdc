"""
The ingest service: the one place every transport hands its uploads to.

A transport frames bytes into an :class:`Upload` and calls
:meth:`IngestService.ingest`, which takes it through these steps:

1. sequence: a numbered upload (``SEQUENCE_FIELD``) already stored for its
   node is answered as a duplicate (:mod:`co2logd.ingest.sequence`);
2. limits, salted checksums over the bytes the sender signed, replay claims
   and idempotency keys;
3. a :class:`PreparedUpload`: the payload parsed once, names checked, rows
   and outbox entries built;
4. freshness: with an ``Idempotency-Key``, an earlier upload's receipt
   answers a repeat;
5. the write; the Deferred fires with a :class:`Receipt` once the rows are
   committed, or fails with an :class:`~co2logd.errors.IngestError` and
   nothing is stored.

It knows no transport: ``Upload.transport`` is only the label written to
the transport column and counted by.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import hashlib
from typing import Any, Callable, Dict, Hashable, List, Mapping, Optional, Sequence, Tuple, cast

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from co2logd import payloads
from co2logd.errors import IngestError, bad_request
from co2logd.ingest.auth import Authenticator, Headers, header_items
from co2logd.ingest.freshness import KEY as IDEMPOTENCY_KEY
from co2logd.ingest.freshness import Claim, Idempotency, IdempotentUpload, ReplayPolicy, replay_error
from co2logd.ingest.sequence import NEW, Clock, SequenceTracker, numbered_node
from co2logd.store import (
    DatabaseLost,
    DuplicateUpload,
    ReplayAdvance,
    ReplayRefused,
    StoreBusy,
    StoreUnavailable,
    ValueRefused,
    WriteRequest,
)
from co2logd.store.names import is_reserved, is_safe_identifier
from co2logd.store.watch import is_disk_error
from co2logd.tokens import Presented, UploadTokens

log = Logger()

HeaderPairs = Tuple[Tuple[str, str], ...]


def _header_pairs(headers: Headers) -> HeaderPairs:
    """Headers as a tuple of text pairs; pairs that already are text are taken as they are."""
    pairs = tuple(headers.items() if isinstance(headers, Mapping) else headers)
    for name, value in pairs:
        if type(name) is not str or type(value) is not str:
            return tuple(header_items(pairs))
    return pairs


@dataclasses.dataclass(frozen=True)
class Upload:
    """
    What a transport knows about one upload.

    ``content_type`` None means: detect the format from the body; the empty
    string is a missing Content-Type header, which HTTP refuses with 415
    (:data:`MISSING_CONTENT_TYPE`).  ``headers`` are kept as a tuple of text
    (name, value) pairs; a mapping, or bytes pairs as twisted.web gives
    them, are converted.
    ``signed`` is what the sender's checksum covers when that is not
    ``body`` (a serial CSV row is signed with its header line).
    ``extra_columns`` are set on every row (a node id a radio gateway put in
    front).  ``node`` names who numbers its uploads (``SEQUENCE_FIELD``);
    None: the upload is not checked for duplicates.  ``vouched_by`` names
    who authenticated the sender when a transport did (the MQTT broker, for
    MQTT_TRUSTED_TOPICS): ``UPLOAD_REQUIRES_AUTH`` then asks for no checksum.
    ``table`` is set by a client dialect (:mod:`co2logd.dialects`) that
    parsed the body itself; ``body`` is then only what checksums and
    idempotency keys cover.  ``password`` is an upload token given outside
    the headers (``p=`` on ``/write``).  ``dedup_key`` names a message the
    sender may deliver twice (a TTN or ChirpStack uplink id): a repeat is
    answered with the first one's receipt and stores nothing.
    """

    body: bytes
    content_type: Optional[str]
    headers: Sequence[Tuple[str, str]] = ()
    transport: str = "http"
    signed: Optional[bytes] = None
    extra_columns: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    node: Optional[Hashable] = None
    table: Optional[payloads.Table] = dataclasses.field(default=None, repr=False)
    password: Optional[str] = dataclasses.field(default=None, repr=False)
    dedup_key: Optional[str] = None
    vouched_by: Optional[str] = None

    def __post_init__(self) -> None:
        # kept as one immutable tuple of text pairs, whatever the transport gave
        object.__setattr__(self, "headers", _header_pairs(self.headers))

    @property
    def kind(self) -> str:
        """The transport without its detail: ``"udp"`` for ``"udp:10.0.0.7"``; counters use it."""
        return self.transport.partition(":")[0]

    @property
    def signed_bytes(self) -> bytes:
        """The bytes the sender's salted checksum covers."""
        return self.body if self.signed is None else self.signed


#: ``Upload.content_type`` for an HTTP request without the header: a 415
MISSING_CONTENT_TYPE = ""


@dataclasses.dataclass(frozen=True)
class Receipt:
    """
    What an upload stored: rows, and measurements queued for the OpenSenseMap.

    ``replayed``: the stored receipt of an earlier upload with the same
    Idempotency-Key.  ``seq``: the upload's sequence number, when it has one.
    ``duplicate``: None, or :data:`~co2logd.ingest.sequence.DUPLICATE` (this
    number was stored before) or :data:`~co2logd.ingest.sequence.IN_FLIGHT`
    (a copy is being stored now); nothing was stored for a duplicate.
    """

    rows: int
    osem_queued: Optional[int] = None
    replayed: bool = False
    seq: Optional[int] = None
    duplicate: Optional[str] = None

    def as_dict(self) -> Dict[str, int]:
        """The co2logserver response body: ``{"saved-in-db": N}`` (+ ``osem-queued``)."""
        body = {"saved-in-db": self.rows}
        if self.osem_queued is not None:
            body["osem-queued"] = self.osem_queued
        return body


@dataclasses.dataclass
class PreparedUpload:
    """
    An upload parsed and turned into rows, ready for the store.

    ``rows`` are tuples of Python values in ``columns`` order; ``fixed``
    are the automatic columns with their one value for every row (upload
    time, checksums, transport); ``new_columns`` maps columns to add to the
    type of their first value; ``outbox`` holds the OpenSenseMap entries
    and ``queued`` the measurements in them (None when forwarding is off).
    """

    columns: List[str]
    rows: List[Tuple[Any, ...]]
    new_columns: Dict[str, Optional[type]]
    fixed: List[Tuple[str, Any]]
    outbox: List[str]
    queued: Optional[int]

    def receipt(self, rows: int) -> Receipt:
        """The receipt once ``rows`` rows are committed."""
        return Receipt(rows, self.queued)

    def write_request(self, freshness: "Freshness", queued_at: float) -> WriteRequest:
        """What the store writes, all of it or nothing: the rows, the outbox entries, the freshness claims."""
        idempotency = None
        if freshness.idempotent is not None:
            idempotency = freshness.idempotent.claim(self.receipt(len(self.rows)).as_dict())
        return WriteRequest(
            self.columns, self.rows, self.new_columns, self.fixed, self.outbox, queued_at,
            replay=freshness.advance, idempotency=idempotency,
        )


@dataclasses.dataclass
class Checked:
    """An upload past its limits and checksums: what the later steps need of its headers."""

    headers: Sequence[Tuple[str, str]]
    matches: Dict[str, Optional[str]]
    matched: Optional[str]
    failed: Optional[str]
    claim: Optional[Claim]
    #: the label of the upload token the request presented (UPLOAD_TOKENS), if valid
    token_label: Optional[str] = None


@dataclasses.dataclass
class Freshness:
    """
    One upload's replay and idempotency state: its claim, the number the
    store advances with its rows, its scoped Idempotency-Key, and a replay
    refusal that stands unless the upload turns out to repeat a stored one.
    """

    claim: Optional[Claim] = None
    advance: Optional[ReplayAdvance] = None
    idempotent: Optional[IdempotentUpload] = None
    refusal: Optional[IngestError] = None
    #: a dialect's de-duplicated message went to the write once without asking for an earlier receipt
    asked: bool = False


class IngestService(Service):
    """
    Parse → authenticate → normalise → store, for every transport.

    :param settings: :class:`co2logd.settings.Settings`
    :param store: a :class:`co2logd.store.Store` (or its verified fake)
    :param clock: the upload time comes from it
    :param outbox_entries: row dicts → outbox entries (JSON strings) and the
        number of measurements in them; set when forwarding is on
    """

    name = "ingest"
    verbose = False

    def __init__(
        self,
        settings: Any,
        store: Any,
        clock: Clock,
        outbox_entries: Optional[Callable[[List[Dict[str, Any]]], Tuple[List[str], int]]] = None,
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
        # upload tokens (UPLOAD_TOKENS): rows record the token's label, which an upload cannot set itself
        self.tokens = UploadTokens.from_settings(settings)
        self.token_label_column: str = settings.TOKEN_LABEL_COL
        if self.tokens:
            self.automatic.add(self.token_label_column)
        self.replay = ReplayPolicy.from_settings(settings)
        self.idempotency = Idempotency.from_settings(settings)
        self.reads_headers = self.replay.enabled or self.idempotency.enabled
        self.sequence_field: Optional[str] = settings.SEQUENCE_FIELD
        self.box_column: str = settings.OSEM_BOX_COL.lower()
        #: numbered nodes, (Upload.node, box) → what is known of their numbers
        self.sequences = SequenceTracker(clock, memory_seconds=settings.SEQUENCE_MEMORY_SECONDS)
        self._expiry: Optional[task.LoopingCall] = None
        self._names: Dict[Any, str] = {}  # checked upload names → column names
        # called with each Receipt after its commit (e.g. to wake the uploader)
        self.stored_observers: List[Callable[[Receipt], None]] = []
        self.counters: Dict[str, collections.Counter[Any]] = {
            "uploads": collections.Counter(),
            "rows": collections.Counter(),
            "rejects": collections.Counter(),
            "repeats": collections.Counter(),  # uploads answered with an earlier receipt (Idempotency-Key)
            "skipped": collections.Counter(),  # (kind, reason): dialect messages acknowledged that store nothing
        }

    # -- the entry point ------------------------------------------------------

    def ingest(self, upload: Upload) -> "defer.Deferred[Receipt]":
        """Store one upload atomically; fire with its Receipt after the commit."""
        parsed: Optional[_Parsed] = None
        number: Optional[Tuple[Hashable, int]] = None
        if upload.node is not None and self.sequence_field is not None:
            parsed = self._parse_once(upload)
            if parsed.table is not None:
                number = numbered_node(parsed.table, self.sequence_field, upload.node, self.box_column)
            if number is not None:
                verdict = self.sequences.begin(*number)
                if verdict != NEW:  # a retry, or a radio gateway passing a packet on twice
                    return defer.succeed(Receipt(0, seq=number[1], duplicate=verdict))
        d = self._ingest(upload, parsed)
        if number is not None:
            d.addBoth(self._numbered_done, number)
        return d

    def _numbered_done(self, result: Any, number: Tuple[Hashable, int]) -> Any:
        """Settle the number (a failed upload may be sent again); the outcome carries it."""
        node, seq = number
        stored = not isinstance(result, Failure)
        self.sequences.done(node, seq, stored=stored)
        if stored:
            return dataclasses.replace(result, seq=seq)
        if isinstance(result.value, IngestError):
            result.value.seq = seq
        return result

    def _ingest(self, upload: Upload, parsed: Optional[_Parsed]) -> "defer.Deferred[Receipt]":
        kind = upload.kind
        if self.store.busy:  # fail fast: no parsing while the writer catches up
            return self._refuse(kind, self.busy_error())
        try:
            checked = self._check(upload)
            freshness = self._freshness(upload, checked)
            prepared = self._prepare(upload, checked, parsed)
        except IngestError as e:
            return self._refuse(kind, e)
        if prepared is None:
            self.counters["uploads"][kind] += 1
            return defer.succeed(Receipt(0, 0 if self.outbox_entries else None))
        idempotent = freshness.idempotent
        if idempotent is None:
            return self._write(upload, prepared, freshness)
        return self._repeat_or_write(upload, prepared, idempotent, freshness)

    def _repeat_or_write(
        self, upload: Upload, prepared: PreparedUpload, idempotent: IdempotentUpload, freshness: Freshness
    ) -> "defer.Deferred[Receipt]":
        """
        The freshness step of an upload with an Idempotency-Key, then the
        write; a copy that takes the key first answers for this one.
        """

        def write_unless_repeated(earlier: Optional[Receipt]) -> Any:
            if earlier is not None:
                return earlier
            d = self._write(upload, prepared, freshness)
            return d.addErrback(lost_race)

        def lost_race(failure: Failure) -> Any:
            if not isinstance(failure.value, DuplicateUpload):
                return failure
            return self._repeat_or_write(upload, prepared, idempotent, freshness)  # the same key was committed meanwhile: ask again

        if upload.dedup_key is not None and not freshness.asked:
            # a webhook's message id is nearly always new: write at once, and ask only when the key is taken
            freshness.asked = True
            written: "defer.Deferred[Receipt]" = write_unless_repeated(None)
            return written
        d = self._earlier_receipt(upload, idempotent, freshness, len(prepared.rows))
        return d.addCallback(write_unless_repeated)

    def _earlier_receipt(
        self, upload: Upload, idempotent: IdempotentUpload, freshness: Freshness, rows: int
    ) -> "defer.Deferred[Optional[Receipt]]":
        """
        Fires with the receipt of a stored upload this one repeats, or None
        to go on and write it; fails with the upload's replay refusal, or a
        409 when its key came with another body.
        """
        kind = upload.kind
        refusal = freshness.refusal

        def answer(record: Optional[Tuple[str, str]]) -> Any:
            try:
                original = idempotent.answer(record)
            except IngestError as e:  # the key with another body: 409
                return self._refuse(kind, e)
            if original is None:  # not a repeat (or expired since the copy that got in first)
                if refusal is not None:
                    return self._refuse(kind, refusal)
                return None
            self.counters["repeats"][kind] += 1
            return Receipt(original["saved-in-db"], original.get("osem-queued"), replayed=True)

        d: defer.Deferred[Any] = self.store.idempotency_lookup(idempotent.key, idempotent.cutoff)
        return d.addCallbacks(answer, self._store_failed, errbackArgs=(upload, freshness, rows))

    def _write(self, upload: Upload, prepared: PreparedUpload, freshness: Freshness) -> "defer.Deferred[Receipt]":
        """Write the rows; count and tell the observers once committed."""
        kind = upload.kind

        def stored(count: int) -> Receipt:
            self.counters["uploads"][kind] += 1
            self.counters["rows"][kind] += count
            if self.verbose:
                log.info("Stored {rows} rows from {transport}", rows=count, transport=upload.transport)
            receipt = prepared.receipt(count)
            for observer in self.stored_observers:
                observer(receipt)
            return receipt

        d: defer.Deferred[int] = self.store.write(prepared.write_request(freshness, self.clock.seconds()))
        return d.addCallbacks(stored, self._store_failed, errbackArgs=(upload, freshness, len(prepared.rows)))

    def _store_failed(self, failure: Failure, upload: Upload, freshness: Freshness, rows: int) -> Any:
        """A store failure as the sender's IngestError; a lost key race goes on as DuplicateUpload."""
        kind = upload.kind
        problem = failure.value
        if isinstance(problem, DuplicateUpload):  # a copy with the same key got in first
            return failure
        if isinstance(problem, StoreBusy):
            self.counters["rejects"][(kind, "busy")] += 1
            raise self.busy_error()
        if isinstance(problem, DatabaseLost):  # the database file went away: nothing is acknowledged until a restart
            error = IngestError(503, "database", "The upload was not stored: " + str(problem))
            error.retry_after = self.settings.WRITE_RETRY_AFTER_SECONDS
            return self._refuse(kind, error)
        if isinstance(problem, ReplayRefused) and freshness.claim is not None:
            return self._refuse(kind, replay_error(freshness.claim, "is not larger than the last one stored"))
        if isinstance(problem, ValueRefused):  # a value PostgreSQL's column cannot hold: the sender must change it
            return self._refuse(kind, IngestError(400, "value", str(problem)))
        self.counters["rejects"][(kind, "store")] += 1
        # /health reports these too (disk trouble, PostgreSQL unreachable); a traceback would say nothing more
        if problem is not None and (is_disk_error(problem) or isinstance(problem, StoreUnavailable)):
            log.error(
                "Could not store {rows} rows from {transport}: {error}",
                rows=rows, transport=upload.transport, error=str(failure.value),
            )
        else:
            log.failure("Could not store {rows} rows from {transport}", failure, rows=rows, transport=upload.transport)
        error = IngestError(503, "store", "The upload could not be stored; nothing was saved, try again")
        error.retry_after = self.settings.WRITE_RETRY_AFTER_SECONDS
        raise error

    def busy_error(self) -> IngestError:
        """The 503 for a full write queue; ``retry_after`` is the seconds to tell the sender."""
        seconds = self.settings.WRITE_RETRY_AFTER_SECONDS
        error = IngestError(
            503, "busy", "The server is busy writing earlier uploads; nothing was saved, try again in {} s".format(seconds)
        )
        error.retry_after = seconds
        return error

    def refuse(self, kind: str, error: IngestError) -> "defer.Deferred[Any]":
        """Count a refusal made before ingest (a client dialect's malformed body) and fail with it."""
        return self._refuse(kind, error)

    def _refuse(self, kind: str, error: IngestError) -> "defer.Deferred[Any]":
        self.counters["rejects"][(kind, error.reason)] += 1
        return defer.fail(error)

    def startService(self) -> None:
        """Expire old idempotency keys now and then."""
        super().startService()  # type: ignore[no-untyped-call]
        if self.idempotency.enabled:
            self._expiry = task.LoopingCall(self._expire_keys)
            self._expiry.clock = cast(IReactorTime, self.clock)
            self._expiry.start(min(self.idempotency.retention, 3600.0), now=False)

    def stopService(self) -> Optional["defer.Deferred[None]"]:
        """Stop expiring keys."""
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        return super().stopService()  # type: ignore[no-untyped-call,no-any-return]

    def _expire_keys(self) -> "defer.Deferred[Any]":
        d: defer.Deferred[Any] = self.store.idempotency_expire(self.clock.seconds() - self.idempotency.retention)
        d.addErrback(lambda failure: log.failure("Could not expire idempotency keys", failure))
        return d

    # -- the steps ------------------------------------------------------------

    def _parse_once(self, upload: Upload) -> "_Parsed":
        """The payload parsed ahead of the other steps (for its sequence number), or why it cannot be."""
        if len(upload.body) > self.settings.MAX_BODY_SIZE:
            return _Parsed(None, None)  # refused by the size step; parsing it would be unbounded work
        try:
            return _Parsed(payloads.parse(upload.body, upload.content_type, self.limits), None)
        except IngestError as e:
            return _Parsed(None, e)

    def _check(self, upload: Upload) -> Checked:
        """The size limit and the salted checksums, over the bytes the sender signed."""
        settings = self.settings
        body = upload.body
        if len(body) > settings.MAX_BODY_SIZE:
            raise IngestError(
                413, "too-large", "The payload is {} bytes; the limit is {} (MAX_BODY_SIZE)".format(len(body), settings.MAX_BODY_SIZE)
            )
        headers = upload.headers
        signed = upload.signed_bytes
        claim = self.replay.claim(headers) if self.reads_headers else None
        if claim is not None:
            signed = claim.signed(signed)
        label = self._token_label(upload) if self.tokens else None
        if not self.check_uploads:
            return Checked(headers, {}, None, None, claim, label)  # what columns() gives without salts
        matches = self.authenticator.matches(signed, headers)
        if claim is not None and matches and not any(matches.values()):
            self._refuse_renamed_claim(claim, upload.signed_bytes, headers)
        if settings.UPLOAD_REQUIRES_AUTH and label is None and upload.vouched_by is None:  # a valid token passes instead of a checksum
            self.authenticator.require(matches)
        matched, failed = self.authenticator.columns(matches)
        return Checked(headers, matches, matched, failed, claim, label)

    def _token_label(self, upload: Upload) -> Optional[str]:
        """The label of the upload token presented, None without one; a 403 for a token that is not configured."""
        authorization = next((value for name, value in upload.headers if name.lower() == "authorization"), None)
        presented, label = self.tokens.check(authorization, upload.password)
        if presented is Presented.INVALID:
            raise IngestError(403, "auth-token", "The upload token is not valid (UPLOAD_TOKENS); nothing was saved")
        return label

    def acknowledge(self, upload: Upload, reason: str) -> "defer.Deferred[Receipt]":
        """
        A dialect message that stores nothing (a TTN join, a simulated
        uplink...): checked like an upload (size, checksums, tokens), then
        counted under ``reason`` and answered with an empty receipt.
        """
        try:
            self._check(upload)
        except IngestError as e:
            return self._refuse(upload.kind, e)
        self.counters["skipped"][(upload.kind, reason)] += 1
        return defer.succeed(Receipt(0, 0 if self.outbox_entries else None))

    def _freshness(self, upload: Upload, checked: Checked) -> Freshness:
        """The upload's replay guard and Idempotency-Key; a replay refusal waits while a key may excuse it."""
        freshness = Freshness(checked.claim)
        if upload.dedup_key is not None and self.idempotency.enabled:
            # the message id is the key and all the digest covers: a repeat gets the first receipt whatever its body
            key = dedup_key_text(upload.dedup_key)
            freshness.idempotent = self.idempotency.upload(
                (("idempotency-key", key),), {}, "dedup", key.encode("ascii"), self.clock.seconds()
            )
            return freshness
        if not self.reads_headers:
            return freshness
        now = self.clock.seconds()
        freshness.idempotent = self.idempotency.upload(checked.headers, checked.matches, upload.content_type, upload.body, now)
        if self.replay.enabled:
            try:
                freshness.advance = self.replay.guard(checked.claim, checked.matches, now, self.store.replay_last)
            except IngestError as e:
                if freshness.idempotent is None or not e.reason.startswith("replay"):
                    raise
                freshness.refusal = e  # a retry with its key gets its receipt; anything else this
        return freshness

    def _prepare(self, upload: Upload, checked: Checked, parsed: Optional["_Parsed"]) -> Optional[PreparedUpload]:
        """The rows and outbox entries of an upload; None when it holds no data columns (and that is allowed)."""
        settings = self.settings
        extra_columns = upload.extra_columns
        if checked.token_label is not None:
            extra_columns = dict(extra_columns)
            extra_columns[self.token_label_column] = checked.token_label
        # the parser refuses more than MAX_ROWS_PER_UPLOAD rows or MAX_COLUMNS columns as it counts them
        if upload.table is not None:
            table = upload.table
        else:
            table = (parsed or _Parsed(None, None)).result(upload, self.limits)
        table = self.normalise(table, extra_columns)
        nrows = payloads.row_count(table)
        new_columns = self._new_columns(table)
        if not table and not settings.ALLOW_EMPTY_ROWS:
            log.info("Upload from {transport} held no data columns; nothing stored", transport=upload.transport)
            return None
        upload_time = datetime.datetime.fromtimestamp(self.clock.seconds(), datetime.timezone.utc)
        fixed = list(zip(self.automatic_columns, (upload_time, checked.matched, checked.failed, upload.transport)))
        names = list(table)
        rows: List[Tuple[Any, ...]]
        if not names:
            rows = [()] * max(nrows, 1)
        else:
            rows = list(zip(*[table[name] for name in names]))
        outbox: List[str] = []
        queued: Optional[int] = None
        if self.outbox_entries is not None:
            values = [table[name] for name in names]
            row_dicts = [dict(zip(names, (col[i] for col in values))) for i in range(nrows)]
            outbox, queued = self.outbox_entries(row_dicts)
        return PreparedUpload(names, rows, new_columns, fixed, outbox, queued)

    def _refuse_renamed_claim(self, claim: Claim, signed: bytes, headers: Sequence[Tuple[str, str]]) -> None:
        """
        A 403 ``replay`` when checksums that fail for this claim match the same
        value under the other header: a captured upload sent again with
        ``Content-Timestamp`` renamed ``Content-Counter`` (or back).  Only
        uploads whose checksums failed pay for this second hash.
        """
        renamed = claim.renamed()
        if any(self.authenticator.matches(renamed.signed(signed), headers).values()):
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
            times = out.get(name)
            if times is None:
                continue
            for i, value in enumerate(times):
                if value is None or isinstance(value, datetime.datetime):  # None, or a time already (dialects)
                    continue
                try:
                    times[i] = converter(value, name)
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


@dataclasses.dataclass(frozen=True)
class _Parsed:
    """A payload parsed ahead of the other steps: its table, or the IngestError parsing raised."""

    table: Optional[payloads.Table]
    error: Optional[IngestError]

    def result(self, upload: Upload, limits: payloads.Limits) -> payloads.Table:
        """The table, or the parse error raised now, where parsing normally happens."""
        if self.error is not None:
            raise self.error
        if self.table is None:
            return payloads.parse(upload.body, upload.content_type, limits)
        return self.table


def dedup_key_text(key: str) -> str:
    """A dialect's message id as an idempotency key: itself when it fits the key rules, else its digest."""
    if IDEMPOTENCY_KEY.match(key):
        return key
    return "sha256:" + hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
