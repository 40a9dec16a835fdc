"""
A fuzz harness for the ingest entry point: generated uploads against a real
store on a temporary SQLite file, directly and through the real HTTP site.

For every input it checks the contract of :meth:`IngestService.ingest`:

* it fires with a Receipt or fails with an :class:`IngestError` of status
  400, 403, 413 or 415 — any other exception, or a 5xx, is a failure;
* a refused input writes nothing: the data table's highest rowid, its column
  set and the outbox are exactly as before;
* an accepted input adds exactly ``receipt.rows`` rows, and only columns it
  named;
* over HTTP, no answer is 5xx, and every answer is JSON: the receipt, or
  ``{"error": ...}``.

The CI test (``tests/test_fuzz.py``) runs a few hundred inputs; the long run
(``benchmarks/fuzz_ingest.py``) runs 100,000 or more and prints figures.
Both drive hypothesis in a worker thread while the reactor runs the store and
the site, so nothing blocks the reactor.
"""

from __future__ import annotations

import collections
import hashlib
import http.client
import json
import re
import sqlite3
import time
from typing import Any, Dict, List, Optional, Tuple

from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from twisted.internet import defer, threads

from co2logd.errors import IngestError
from co2logd.ingest import IngestService, Upload
from co2logd.settings import Settings
from co2logd.store import Store
from co2logd.store.schema import OUTBOX_TABLE
from co2logd.web.site import make_site
from tests import strategies as s

SALT = "fuzz-salt"
TOKEN = "fuzz-token"
ACCEPTED_REFUSALS = {400, 403, 409, 413, 415}

# small limits, so every one of them is reached often
FUZZ_SETTINGS = {
    "CHECKSUM_SALTS": [SALT],
    "UPLOAD_REQUIRES_AUTH": True,
    "MAX_BODY_SIZE": 16 * 1024,
    "MAX_ROWS_PER_UPLOAD": 40,
    "MAX_NEW_COLUMNS_PER_UPLOAD": 6,
    "MAX_COLUMNS": 80,
    "MAX_COLUMN_NAME_LENGTH": 12,
    "DB_SYNCHRONOUS": "OFF",  # the contract is about what is committed, not about fsync
    "REPLAY_PROTECTION": "optional",
    "UPLOAD_TOKENS": {TOKEN: "fuzz"},
}

# -- the generator -------------------------------------------------------------

good_names = st.sampled_from(["co2", "temp", "hum", "time", "box", "lat", "lon", "a", "b", "x_1", "_n", "CO2", "Temp"])
bad_names = st.sampled_from(
    ["time_upload_utc", "transport", "matched_checksums", "1abc", "bad name", "", "a-b",
     "abcdefghijklm", "ünï", "co2;drop", "select"]
)
# mostly names that are accepted, so that many inputs get as far as the store
column_names = st.sampled_from([good_names] * 12 + [bad_names, s.identifiers, st.text(max_size=14)]).flatmap(lambda x: x)
values = st.sampled_from(
    [s.json_scalars] * 12 + [st.sampled_from([[1], {"a": 1}, 2**64, -(2**63) - 1, 1e308, "\ud800", "x" * 300])]
).flatmap(lambda x: x)


@st.composite
def raw_tables(draw) -> Dict[Any, List[Any]]:
    """A table whose names and values may be anything a device could send."""
    names = draw(st.lists(column_names, min_size=0, max_size=8, unique=True))
    nrows = draw(st.integers(min_value=0, max_value=5))
    table = {name: draw(st.lists(values, min_size=nrows, max_size=nrows)) for name in names}
    repeat = draw(st.sampled_from([1, 1, 1, 3, 20]))  # past MAX_ROWS_PER_UPLOAD at times
    return {name: column * repeat for name, column in table.items()}


def _encode(encoder, table) -> Optional[bytes]:
    try:
        return encoder(table)
    except Exception:  # e.g. msgpack refusing a lone surrogate: the device could not send it
        return None


def _dialect_body(draw, kind: str) -> Tuple[bytes, Optional[str], str]:
    """A client dialect's body (line protocol, airrohr, TTN, ChirpStack), maybe mutated, and its path."""
    from tests import dialect_bodies

    if kind == "lineprotocol":
        body = "\n".join(draw(st.lists(s.line_protocol_lines, min_size=1, max_size=6))).encode("utf-8")
        content_type = draw(st.sampled_from(["text/plain", "application/x-www-form-urlencoded", None]))
        path = draw(st.sampled_from(["/write?db=x", "/api/v2/write?bucket=b&precision=s", "/write?precision=ms"]))
    elif kind == "airrohr":
        document = json.loads(dialect_bodies.AIRROHR)
        document["sensordatavalues"] += draw(st.lists(st.fixed_dictionaries({"value_type": column_names, "value": values}), max_size=3))
        body, content_type, path = json.dumps(document).encode(), "application/json", "/upload"
    elif kind == "ttn":
        document = dialect_bodies.ttn_uplink()
        document["uplink_message"]["decoded_payload"] = draw(st.dictionaries(column_names, values, max_size=4))
        document["uplink_message"]["f_cnt"] = draw(st.integers(0, 5))
        if draw(st.booleans()):
            document["simulated"] = True
        body, content_type, path = json.dumps(document).encode(), "application/json", "/upload"
    else:
        document = dialect_bodies.chirpstack_up(deduplicationId=draw(st.sampled_from(["d1", "d2", "d3"])))
        document["object"] = draw(st.dictionaries(column_names, values, max_size=4))
        body = json.dumps(document).encode()
        content_type = draw(st.sampled_from(["application/json", "application/json", "application/octet-stream"]))
        path = "/upload?event=" + draw(st.sampled_from(["up", "up", "join", "status"]))
    if draw(st.integers(0, 3)) == 0:
        body = draw(s.mutated(body))
    return body, content_type, path


@st.composite
def bodies(draw) -> Tuple[bytes, Optional[str], str]:
    """(body, the content type it was made for, the path it goes to)."""
    kind = draw(st.sampled_from(
        ["encoded"] * 5 + ["mutated"] * 2 + ["binary", "nasty", "rows", "huge"] + ["lineprotocol", "airrohr", "ttn", "chirpstack"]
    ))
    if kind in ("lineprotocol", "airrohr", "ttn", "chirpstack"):
        return _dialect_body(draw, kind)
    if kind == "binary":
        return draw(st.binary(max_size=200)), draw(st.sampled_from(sorted(s.ENCODERS))), "/upload"
    if kind == "nasty":
        return draw(s.nasty_fragments), draw(st.sampled_from(sorted(s.ENCODERS))), "/upload"
    if kind == "huge":
        return b'{"co2": [' + b"1," * 9000 + b"1]}", "application/json", "/upload"  # past MAX_BODY_SIZE
    table = draw(raw_tables())
    if kind == "rows":
        nrows = max((len(v) for v in table.values()), default=0)
        body = _encode(lambda t: json.dumps([{k: v[i] for k, v in t.items()} for i in range(nrows)]).encode(), table)
        content_type = "application/json"
    else:
        content_type = draw(st.sampled_from(sorted(s.ENCODERS)))
        body = _encode(s.ENCODERS[content_type], table)
    if body is None:
        body = b"{}"
    if kind == "mutated":
        body = draw(s.mutated(body))
    return body, content_type, "/upload"


@st.composite
def uploads(draw) -> Dict[str, Any]:
    """One call of ``ingest``: body, content type, headers, transport, extra columns."""
    body, made_for, path = draw(bodies())
    content_type = draw(
        st.one_of(
            st.just(made_for), st.just(made_for), st.just(made_for), st.none(),
            s.content_types,
        )
    )
    headers: List[Tuple[str, str]] = []
    # replay protection: a counter or timestamp claim (from a small range, so replays happen), or junk
    claim = draw(st.one_of(
        st.none(), st.none(), st.none(), st.none(),
        st.tuples(st.just("Content-Counter"), st.integers(1, 10**9).map(str)),
        st.tuples(st.just("Content-Counter"), st.integers(1, 40).map(str)),
        st.tuples(st.just("Content-Counter"), st.tuples(st.sampled_from(["a", "b"]), st.integers(1, 20)).map(lambda t: "{}:{}".format(*t))),
        st.tuples(st.just("Content-Timestamp"), st.integers(0, 2_000_000_000).map(str)),
        st.tuples(st.sampled_from(["Content-Counter", "Content-Timestamp"]),
                  st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0xFF), max_size=8)),
    ))
    signed = body
    if claim is not None:
        headers.append(claim)
        if all(32 < ord(c) < 127 for c in claim[1]):
            kind = b"counter:" if claim[0] == "Content-Counter" else b"timestamp:"
            signed = kind + claim[1].encode("ascii") + b"\n" + body
    auth = draw(st.sampled_from(["good"] * 8 + ["token"] * 2 + ["wrong", "none", "wrong-token"]))
    algorithm = draw(st.sampled_from(["md5", "sha256", "sha1"]))
    if auth == "good":
        headers.append(("Content-{}-Salted".format(algorithm.upper()), hashlib.new(algorithm, signed + SALT.encode()).hexdigest()))
    elif auth == "wrong":
        headers.append(("Content-{}-Salted".format(algorithm), hashlib.new(algorithm, body).hexdigest()))
    elif auth in ("token", "wrong-token"):
        headers.append(("Authorization", "Bearer " + (TOKEN if auth == "token" else "nope")))
    key = draw(st.sampled_from([None] * 6 + ["k1", "k2", "k3", "", "bad key"]))
    if key is not None:
        headers.append(("Idempotency-Key", key))
    headers.extend(draw(st.lists(st.tuples(s.header_names, s.header_values), max_size=3)))
    transport = draw(st.sampled_from(["http", "udp:127.0.0.1", "serial:/dev/ttyFUZZ"]))
    extra = draw(st.one_of(st.none(), st.fixed_dictionaries({"box": st.one_of(st.integers(0, 99), s.identifiers)})))
    return {"body": body, "content_type": content_type, "headers": headers, "transport": transport, "extra": extra, "path": path}


# -- the harness -----------------------------------------------------------------


class ContractViolation(AssertionError):
    """The ingest entry point broke its contract for one input."""


class FuzzHarness:
    """
    A real store, the ingest service and the HTTP site on 127.0.0.1.

    Build it on the reactor thread (:meth:`start`); :meth:`check` runs in a
    worker thread and calls into the reactor with ``blockingCallFromThread``.
    """

    def __init__(self, reactor, db_path: str, **overrides: Any):
        values = dict(FUZZ_SETTINGS, **overrides)
        self.reactor = reactor
        self.db_path = db_path
        self.settings = Settings.from_values(values, environ={})
        self.stats: Dict[str, Any] = {
            "inputs": 0,
            "http": 0,
            "accepted": 0,
            "rows": 0,
            "refused": collections.Counter(),
            "statuses": collections.Counter(),
        }
        self._reader: Optional[sqlite3.Connection] = None

    def start(self) -> None:
        """Open the store, the ingest service and a listening site (reactor thread)."""
        self.store = Store.open(self.db_path, self.settings)
        self.store.startService()
        self.ingest = IngestService(self.settings, self.store, self.reactor)
        self.port = self.reactor.listenTCP(0, make_site(self.settings, self.ingest, self.store, self.reactor), interface="127.0.0.1")

    def stop(self) -> defer.Deferred:
        """Stop listening and close the store (reactor thread)."""
        d = defer.maybeDeferred(self.port.stopListening)
        d.addCallback(lambda _: self.store.stopService())
        return d

    # -- worker thread -------------------------------------------------------------

    def snapshot(self) -> Tuple[int, frozenset, int]:
        """(highest rowid, column names, highest outbox id), read with a connection of our own."""
        if self._reader is None:
            self._reader = sqlite3.connect(self.db_path)
        table = self.settings.DATA_TABLE_NAME
        rowid = self._reader.execute('SELECT coalesce(max(rowid), 0) FROM "{}"'.format(table)).fetchone()[0]
        columns = frozenset(name for (name,) in self._reader.execute("SELECT name FROM pragma_table_info(?)", (table,)))
        outbox = self._reader.execute("SELECT coalesce(max(id), 0) FROM {}".format(OUTBOX_TABLE)).fetchone()[0]
        return rowid, columns, outbox

    def close_reader(self) -> None:
        """Close the worker thread's connection (call from that thread)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def check(self, upload: Dict[str, Any], via_http: bool) -> None:
        """Send one input and check the contract; raise ContractViolation if broken."""
        from twisted.internet.threads import blockingCallFromThread

        before = self.snapshot()
        self.stats["inputs"] += 1
        path = upload.get("path", "/upload")
        influx = not path.startswith("/upload")
        if path != "/upload":  # dialect routes exist only over HTTP
            via_http = True
        if via_http:
            self.stats["http"] += 1
            status, reply, replayed = self._post(upload)
            self.stats["statuses"][status] += 1
            if status >= 500:
                raise ContractViolation("HTTP {} for {!r}: {!r}".format(status, upload, reply))
            if influx and status == 204:
                rows = self._points(upload)
            elif influx:
                if not isinstance(reply, dict) or not isinstance(reply.get("code"), str) or not isinstance(reply.get("message"), str):
                    raise ContractViolation("HTTP {} without InfluxDB's {{'code', 'message'}}: {!r}".format(status, reply))
                if status not in ACCEPTED_REFUSALS | {401}:
                    raise ContractViolation("HTTP {} for {!r}".format(status, upload))
                rows = None
            elif status == 200:
                rows = reply.get("saved-in-db")
                if not isinstance(rows, int):
                    raise ContractViolation("200 without a receipt: {!r}".format(reply))
                if replayed:
                    rows = None  # the original receipt of an earlier upload: nothing new is stored
            else:
                if not isinstance(reply, dict) or not isinstance(reply.get("error"), str):
                    raise ContractViolation("HTTP {} without {{'error': ...}}: {!r}".format(status, reply))
                if status not in ACCEPTED_REFUSALS:
                    raise ContractViolation("HTTP {} for {!r}".format(status, upload))
                rows = None
        else:
            try:
                receipt = blockingCallFromThread(
                    self.reactor,
                    self.ingest.ingest,
                    Upload(
                        upload["body"],
                        upload["content_type"],
                        upload["headers"],
                        upload["transport"],
                        extra_columns=upload["extra"] or {},
                    ),
                )
            except IngestError as e:
                self.stats["statuses"][e.status] += 1
                if e.status not in ACCEPTED_REFUSALS:
                    raise ContractViolation("{!r} for {!r}".format(e, upload))
                self.stats["refused"][e.reason] += 1
                rows = None
            except Exception as e:
                raise ContractViolation("{!r} escaped for {!r}".format(e, upload)) from e
            else:
                self.stats["statuses"][200] += 1
                rows = None if receipt.replayed else receipt.rows
        after = self.snapshot()
        if rows is None:
            if after != before:
                raise ContractViolation("A refused (or repeated) input changed the database {!r} → {!r}: {!r}".format(before, after, upload))
            return
        self.stats["accepted"] += 1
        self.stats["rows"] += rows
        if after[0] - before[0] != rows:
            raise ContractViolation("Receipt says {} rows, {} were written: {!r}".format(rows, after[0] - before[0], upload))
        added = after[1] - before[1]
        named = {str(k).lower() for k in self._names(upload)}
        if not added <= named:
            raise ContractViolation("Columns {!r} appeared that the input did not name: {!r}".format(added - named, upload))

    def _names(self, upload: Dict[str, Any]) -> List[Any]:
        """Every name the input could have meant (parsed leniently), plus extra columns."""
        from co2logd import payloads

        names: List[Any] = list(upload["extra"] or {}) + [self.settings.TOKEN_LABEL_COL]
        names.extend(self._dialect_names(upload))
        for content_type in (upload["content_type"], None) + tuple(sorted(payloads.MEDIA_TYPES)):
            try:
                names.extend(payloads.parse(upload["body"], content_type))
            except Exception:
                pass
        return names

    def _points(self, upload: Dict[str, Any]) -> int:
        """The rows a line-protocol body makes (duplicate points merged)."""
        from co2logd.dialects import influx, lineprotocol

        precision = "s" if "precision=s" in upload["path"] else "ms" if "precision=ms" in upload["path"] else "ns"
        return influx.table_of(lineprotocol.parse(upload["body"], precision), 0)[1]

    def _dialect_names(self, upload: Dict[str, Any]) -> List[Any]:
        """The columns a dialect body could make."""
        from co2logd.dialects import influx, lineprotocol
        from co2logd.dialects.recognise import Recognised, recognise

        try:
            if not upload.get("path", "/upload").startswith("/upload"):
                return list(influx.table_of(lineprotocol.parse(upload["body"]), 0)[0])
            event = upload["path"].partition("event=")[2] or None
            outcome = recognise(upload["body"], upload["content_type"], event, None, self.settings.OSEM_BOX_COL, "time")
            return list(outcome.table) if isinstance(outcome, Recognised) else []
        except Exception:
            return []

    def _post(self, upload: Dict[str, Any]) -> Tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port.getHost().port, timeout=30)
        try:
            headers = {name: value for name, value in upload["headers"] if name.lower() not in ("content-length", "transfer-encoding", "host", "connection", "expect")}
            content_type = upload["content_type"]
            if content_type is not None and re.fullmatch(r"[\x20-\x7e]*", content_type):
                headers["Content-Type"] = content_type
            connection.request("POST", upload.get("path", "/upload"), body=upload["body"], headers=headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        replayed = response.getheader("idempotent-replayed") == "true"
        try:
            return response.status, json.loads(data), replayed
        except ValueError:
            return response.status, data, replayed


def run_fuzz(harness: FuzzHarness, examples: int, http_share: int = 5, seed: Optional[int] = None) -> Dict[str, Any]:
    """
    Run ``examples`` generated inputs through ``harness`` (in the calling,
    non-reactor thread); every ``http_share``-th goes through HTTP.  Returns
    the figures; raises ContractViolation (shrunk by hypothesis) on a break.
    """
    counter = [0]

    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        derandomize=seed is not None,
    )
    @given(uploads())
    def one(upload):
        counter[0] += 1
        harness.check(upload, via_http=http_share > 0 and counter[0] % http_share == 0)

    started = time.monotonic()
    try:
        one()
    finally:
        harness.close_reader()
    figures = dict(harness.stats)
    figures["seconds"] = time.monotonic() - started
    return figures


def fuzz_in_thread(harness: FuzzHarness, examples: int, **kwargs: Any) -> defer.Deferred:
    """:func:`run_fuzz` in a worker thread, for code running on the reactor."""
    return threads.deferToThreadPool(harness.reactor, harness.reactor.getThreadPool(), run_fuzz, harness, examples, **kwargs)
