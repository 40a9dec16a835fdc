"""
Property-based tests (hypothesis) for every parser, the framing of UDP and
serial, and the salted-checksum authentication.

``HYPOTHESIS_PROFILE=long`` runs them with many more examples (see
:mod:`tests.strategies`).
"""

from __future__ import annotations

import hashlib
import json
import re
from urllib.parse import parse_qsl

from hypothesis import assume, example, given
from hypothesis import strategies as st
from twisted.internet import task
from twisted.trial import unittest

from co2logd import payloads
from co2logd.ingest.auth import GUARANTEED, Authenticator, salted_checksum
from co2logd.errors import IngestError
from co2logd.settings import Settings
from co2logd.settings.legacy_hooks import default_auth_checker
from co2logd.transports.framing import parse_header_line, split_message
from co2logd.transports.serial import SerialIngestProtocol
from co2logd.transports.udp import UDPIngestProtocol
from tests import strategies as s
from tests.test_serial import RecordingIngest

HEADER_REGEX = re.compile(r"Content-(?P<algorithm>\w+)-Salted", re.IGNORECASE)
ALGORITHMS = [a for a in GUARANTEED if not a.startswith("shake_")]


def assert_table(testcase, table):
    """What every parser gives back: column names → equally long lists of scalars."""
    testcase.assertIsInstance(table, dict)
    lengths = {len(v) for v in table.values()}
    testcase.assertLessEqual(len(lengths), 1, table)
    for values in table.values():
        for value in values:
            testcase.assertIsInstance(value, payloads.SCALARS)


class PayloadRoundTripTests(unittest.TestCase):
    """A table a device encodes in any of the four formats parses back to itself."""

    @given(s.tables())
    def test_json_object_of_lists(self, table):
        """JSON object of lists: values come back exactly."""
        self.assertEqual(payloads.parse(s.encode_json(table), "application/json"), table)

    @given(s.tables(min_columns=1, max_rows=6).filter(lambda t: payloads.row_count(t) > 0))
    def test_json_list_of_rows(self, table):
        """JSON list of row objects: the same table."""
        self.assertEqual(payloads.parse(s.encode_json_rows(table), "application/json"), table)

    @given(s.tables())
    def test_msgpack(self, table):
        """msgpack (and detection of it without a content type)."""
        body = s.encode_msgpack(table)
        self.assertEqual(payloads.parse(body, "application/x-msgpack"), table)
        self.assertEqual(payloads.parse(body, None), table)

    @given(s.tables(values=s.text_scalars))
    def test_csv(self, table):
        """CSV: numbers come back as numbers, empty cells as null, text as text."""
        # a one-column row holding null is an empty line, which CSV readers skip
        assume(len(table) > 1 or all(v is not None for col in table.values() for v in col))
        self.assertEqual(payloads.parse(s.encode_csv(table), "text/csv; charset=utf-8"), table)

    @given(s.tables(values=s.text_scalars).filter(lambda t: payloads.row_count(t) > 0))
    def test_form(self, table):
        """Form-urlencoded with repeated keys, one round per row."""
        self.assertEqual(payloads.parse(s.encode_form(table), "application/x-www-form-urlencoded"), table)

    @given(s.tables(values=s.text_scalars).filter(lambda t: payloads.row_count(t) > 0), st.sampled_from(sorted(s.ENCODERS)))
    def test_detection_agrees_with_the_content_type(self, table, content_type):
        """Without a content type (UDP, serial) a body parses as its declared type does, or is refused."""
        body = s.ENCODERS[content_type](table)
        declared = payloads.parse(body, content_type)
        try:
            detected = payloads.parse(body, None)
        except IngestError:
            return  # e.g. a one-column CSV that looks like form data: refused, never misread silently
        if payloads.detect_format(body) == payloads.MEDIA_TYPES[content_type]:
            self.assertEqual(detected, declared)


class PayloadRobustnessTests(unittest.TestCase):
    """Whatever arrives, the parsers give a table or an IngestError, nothing else."""

    @given(st.binary(max_size=300), s.content_types)
    @example(b"[" * 5000, "application/json")
    @example(b'{"a": "\\ud800"}', "application/json")
    @example(b"a,b\n" + b"9" * 5000 + b",1", "text/csv")
    @example(b"a=" + b"9" * 5000, None)
    def test_arbitrary_bytes(self, body, content_type):
        """Random bytes under any content type."""
        try:
            table = payloads.parse(body, content_type)
        except IngestError as e:
            self.assertIn(e.status, (400, 415))
            return
        assert_table(self, table)

    @given(st.sampled_from(sorted(s.ENCODERS)), s.tables(), st.data())
    def test_mutated_payloads(self, content_type, table, data):
        """Valid payloads with bytes flipped, cut or inserted."""
        body = data.draw(s.mutated(s.ENCODERS[content_type](table)))
        try:
            assert_table(self, payloads.parse(body, data.draw(st.sampled_from([content_type, None]))))
        except IngestError:
            pass

    @given(s.nasty_fragments, s.content_types)
    def test_known_nasties(self, body, content_type):
        """Deep nesting, huge numbers, lone surrogates, NaN, duplicate names."""
        try:
            assert_table(self, payloads.parse(body, content_type))
        except IngestError:
            pass

    @given(st.one_of(st.integers(), st.text()))
    def test_values_are_storable(self, value):
        """Every parsed integer fits SQLite's 64 bits; every text encodes as UTF-8."""
        body = json.dumps({"a": value}).encode()
        try:
            table = payloads.parse(body, "application/json")
        except IngestError:
            self.assertTrue(isinstance(value, int) or any(0xD800 <= ord(c) <= 0xDFFF for c in value))
            return
        parsed = table["a"][0]
        if isinstance(parsed, int):
            self.assertTrue(payloads.SQLITE_INT_MIN <= parsed <= payloads.SQLITE_INT_MAX)
        else:
            parsed.encode("utf-8")

    @given(st.text(max_size=40))
    def test_text_value(self, cell):
        """A text cell becomes null, a 64-bit int, a finite float, or itself."""
        value = payloads.text_value(cell)
        if value is None:
            self.assertEqual(cell, "")
        elif isinstance(value, int):
            self.assertEqual(value, int(cell))
        elif isinstance(value, float):
            self.assertEqual(value, float(cell))
        else:
            self.assertEqual(value, cell)


class FramingPropertyTests(unittest.TestCase):
    """The HTTP-style header block of UDP datagrams (and serial header lines)."""

    @given(st.lists(st.tuples(s.header_names, s.header_values), max_size=10), st.binary(max_size=200), st.sampled_from([b"\n", b"\r\n"]))
    def test_header_block_round_trip(self, headers, body, eol):
        """Headers written as ``Name: value`` lines and an empty line come back, the body byte for byte."""
        block = b"".join(n.encode("ascii") + b": " + v.encode("latin-1") + eol for n, v in headers)
        frame = split_message(block + eol + body)
        self.assertEqual(frame.headers, headers)
        self.assertEqual(frame.body, body)

    @given(st.binary(max_size=400))
    def test_arbitrary_datagrams(self, data):
        """Any datagram is a frame or a 400 ``header`` error."""
        try:
            frame = split_message(data)
        except IngestError as e:
            self.assertEqual((e.status, e.reason), (400, "header"))
            return
        self.assertTrue(data.endswith(frame.body))

    @given(s.tables().filter(lambda t: payloads.row_count(t) > 0), st.sampled_from(sorted(s.ENCODERS)))
    def test_bodies_without_headers_are_untouched(self, table, content_type):
        """A bare body in any format is never taken for a header block."""
        body = s.ENCODERS[content_type](table)
        self.assertEqual((split_message(body).headers, split_message(body).body), ([], body))

    @given(s.header_names, s.header_values)
    def test_header_line(self, name, value):
        """One header line, LF or CRLF, parses to its name and trimmed value."""
        line = name.encode("ascii") + b":  " + value.encode("latin-1") + b" "
        self.assertEqual(parse_header_line(line), (name, value))
        self.assertEqual(parse_header_line(line + b"\r"), (name, value))


class UDPPropertyTests(unittest.TestCase):
    """The UDP protocol survives any datagram."""

    @given(st.lists(st.binary(max_size=300), max_size=10))
    def test_any_datagrams_give_one_outcome_each(self, datagrams):
        """Every datagram is handed to ingest or refused with a reason; nothing escapes."""
        ingest = RecordingIngest()
        protocol = UDPIngestProtocol(ingest, Settings.from_values({}, environ={}), task.Clock())
        outcomes = []
        protocol.observers.append(lambda addr, reply: outcomes.append(reply))
        for datagram in datagrams:
            protocol.datagramReceived(datagram, ("127.0.0.1", 9))
        self.assertEqual(len(outcomes), len(datagrams))
        self.assertEqual(self.flushLoggedErrors(), [])


class SerialPropertyTests(unittest.TestCase):
    """Serial line splitting and classification."""

    def protocol(self, **values):
        ingest = RecordingIngest()
        protocol = SerialIngestProtocol(ingest, Settings.from_values(values, environ={}), task.Clock(), "/dev/x")
        replies = []
        protocol.observers.append(lambda source, reply: replies.append(reply))
        return protocol, ingest, replies

    @given(st.binary(max_size=600), st.lists(st.integers(min_value=1, max_value=50), max_size=20))
    def test_chunking_does_not_matter(self, stream, cuts):
        """The same bytes give the same uploads and rejects however the port delivers them."""
        whole, whole_ingest, whole_replies = self.protocol(SERIAL_MAX_LINE=64)
        whole.dataReceived(stream)
        pieces, piece_ingest, piece_replies = self.protocol(SERIAL_MAX_LINE=64)
        position = 0
        for cut in cuts:
            pieces.dataReceived(stream[position:position + cut])
            position += cut
        pieces.dataReceived(stream[position:])
        self.assertEqual(piece_ingest.uploads, whole_ingest.uploads)
        self.assertEqual(piece_replies, whole_replies)
        self.assertEqual(self.flushLoggedErrors(), [])

    @given(s.tables(min_columns=1, max_rows=4).filter(lambda t: payloads.row_count(t) > 0))
    def test_json_lines_reach_ingest_as_sent(self, table):
        """A JSON line is handed over unchanged, as JSON."""
        protocol, ingest, _ = self.protocol()
        line = s.encode_json(table)
        protocol.dataReceived(line + b"\r\n")
        self.assertEqual(ingest.uploads, [(line, "application/json", "serial:/dev/x")])

    @given(s.tables(values=s.text_scalars, min_columns=2, max_rows=5).filter(lambda t: payloads.row_count(t) > 0))
    def test_csv_header_and_rows(self, table):
        """A CSV header line then rows: each row is an upload of one row of that table."""
        body = s.encode_csv(table)
        assume(b"\n" not in body.replace(b"\r\n", b"") and b'"' not in body and b"#" not in body)
        protocol, ingest, replies = self.protocol()
        lines = body.split(b"\r\n")[:-1]
        # the serial listener trims cells (devices pad them); trimmed cells are the contract
        assume(all(v.strip() == v for col in table.values() for v in col if isinstance(v, str)))
        # a row that itself looks like JSON, a header, key:value or form data is read as that
        assume(all(b"=" not in line and b":" not in line and line[:1] not in b"{[" for line in lines[1:]))
        assume(all(not re.fullmatch(rb"[A-Za-z_][A-Za-z0-9_]*(,[A-Za-z_][A-Za-z0-9_]*)+", l) for l in lines[1:]))
        protocol.dataReceived(body)
        parsed = [payloads.parse(b, t) for b, t, _ in ingest.uploads]
        self.assertEqual(len(parsed), payloads.row_count(table), replies)
        for i, row in enumerate(parsed):
            self.assertEqual(row, {name: [values[i]] for name, values in table.items()})

    @given(st.dictionaries(s.identifiers, st.from_regex(r"[A-Za-z0-9.+-]{0,8}", fullmatch=True), min_size=1, max_size=6), st.sampled_from([":", "="]))
    def test_key_value_records(self, record, separator):
        """``key:value,key:value`` (emonTx) arrives as a one-row form upload."""
        protocol, ingest, _ = self.protocol()
        line = ",".join(k + separator + v for k, v in record.items()).encode("ascii")
        assume(not (separator == "=" and len(record) == 1))  # plain form data: tested above
        protocol.dataReceived(line + b"\n")
        self.assertEqual(len(ingest.uploads), 1)
        body, content_type, _ = ingest.uploads[0]
        self.assertEqual(content_type, "application/x-www-form-urlencoded")
        self.assertEqual(dict(parse_qsl(body.decode(), keep_blank_values=True)), record)

    @given(st.integers(min_value=1, max_value=200), st.binary(min_size=1, max_size=400).filter(lambda b: b"\n" not in b))
    def test_long_lines_are_dropped_and_reading_goes_on(self, limit, junk):
        """A line over SERIAL_MAX_LINE is refused as too-long; the next line is read."""
        protocol, ingest, replies = self.protocol(SERIAL_MAX_LINE=max(limit, 10))
        long_line = junk * (max(limit, 10) // len(junk) + 2)
        protocol.dataReceived(long_line + b"\n" + b'{"a":1}\n')
        self.assertIn("too-long", [r.get("reason") for r in replies])
        self.assertEqual(ingest.uploads[-1][0], b'{"a":1}')


class AuthPropertyTests(unittest.TestCase):
    """Salted checksums: one made with a configured salt always matches; any other never does."""

    salts = st.text(min_size=1, max_size=30)

    @given(st.binary(max_size=200), st.lists(salts, min_size=1, max_size=4, unique=True), st.data(), st.sampled_from(ALGORITHMS), st.booleans())
    def test_checksum_with_a_configured_salt_matches(self, payload, configured, data, algorithm, upper):
        """Any payload, any configured salt, any algorithm, either hex case: granted."""
        salt = data.draw(st.sampled_from(configured))
        digest = salted_checksum(payload, salt, algorithm)
        header = ("Content-{}-Salted".format(algorithm.upper()), digest.upper() if upper else digest)
        authenticator = Authenticator(configured, default_auth_checker, HEADER_REGEX)
        self.assertEqual(authenticator.check(payload, [header], required=True), {algorithm: salt})

    @given(st.binary(max_size=200), st.lists(salts, min_size=1, max_size=4, unique=True), salts, st.sampled_from(ALGORITHMS))
    def test_checksum_with_another_salt_never_matches(self, payload, configured, other, algorithm):
        """A checksum made with a salt that is not configured is refused (403 auth-invalid)."""
        assume(other not in configured)
        digest = salted_checksum(payload, other, algorithm)
        authenticator = Authenticator(configured, default_auth_checker, HEADER_REGEX)
        self.assertEqual(authenticator.check(payload, [("Content-{}-Salted".format(algorithm), digest)], False), {algorithm: None})
        e = self.assertRaises(
            IngestError, authenticator.check, payload, [("Content-{}-Salted".format(algorithm), digest)], True
        )
        self.assertEqual((e.status, e.reason), (403, "auth-invalid"))

    @given(st.binary(max_size=100), salts, st.sampled_from(ALGORITHMS), st.data())
    def test_any_other_digest_never_matches(self, payload, salt, algorithm, data):
        """Any other hex string of the right length, or a checksum of a changed payload, is refused."""
        size = hashlib.new(algorithm).digest_size
        forged = data.draw(st.binary(min_size=size, max_size=size)).hex()
        right = salted_checksum(payload, salt, algorithm)
        assume(forged != right)
        authenticator = Authenticator([salt], default_auth_checker, HEADER_REGEX)
        header = "Content-{}-Salted".format(algorithm)
        self.assertEqual(authenticator.check(payload, [(header, forged)], False), {algorithm: None})
        tampered = payload + data.draw(st.binary(min_size=1, max_size=4))
        self.assertEqual(authenticator.check(tampered, [(header, right)], False), {algorithm: None})

    @given(st.binary(max_size=100), st.lists(st.tuples(st.text(max_size=30), st.text(max_size=80)), max_size=6))
    def test_arbitrary_headers_never_raise_anything_but_403(self, payload, headers):
        """Malformed names, wrong lengths, unknown algorithms: a 403 or matches, never a crash."""
        authenticator = Authenticator(["salt"], default_auth_checker, HEADER_REGEX)
        try:
            authenticator.check(payload, headers, True)
        except IngestError as e:
            self.assertEqual(e.status, 403)


class FoundByFuzzingTests(unittest.TestCase):
    """Inputs the property tests found that once escaped as exceptions (a 500) or failed at the store."""

    def assert_refused(self, body, content_type):
        e = self.assertRaises(IngestError, payloads.parse, body, content_type)
        self.assertEqual((e.status, e.reason), (400, "parse"))
        return e.message

    def test_deeply_nested_json(self):
        """Nesting deeper than the JSON decoder's recursion limit is a 400, not a RecursionError."""
        self.assertIn("nested too deeply", self.assert_refused(b"[" * 100_000, "application/json"))

    def test_lone_surrogate_escape(self):
        """``"\\ud800"`` decodes to text SQLite cannot store: a 400, not a store failure."""
        self.assertIn("Unicode", self.assert_refused(b'{"a": "x\\ud800"}', "application/json"))
        self.assertEqual(payloads.parse(b'{"a": "\\u00e9\\ud83d\\ude00"}', "application/json"), {"a": ["\u00e9\U0001F600"]})

    def test_integers_beyond_64_bits(self):
        """JSON integers SQLite cannot hold are a 400; in text formats they become floats, or stay text."""
        self.assertIn("64 bits", self.assert_refused(b'{"a": 9223372036854775808}', "application/json"))
        self.assertEqual(payloads.parse(b'{"a": 9223372036854775807}', "application/json"), {"a": [2**63 - 1]})
        self.assertEqual(payloads.parse(b"a,b\n9223372036854775808,1", "text/csv"), {"a": [9.223372036854776e18], "b": [1]})
        self.assertEqual(payloads.text_value("9" * 5000), "9" * 5000)
