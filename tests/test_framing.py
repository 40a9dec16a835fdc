"""The header-block framing shared by UDP datagrams and serial lines."""

from __future__ import annotations

from twisted.trial import unittest

from co2logd.errors import IngestError
from co2logd.transports.framing import MAX_HEADER_LINES, parse_header_line, split_message


class ParseHeaderLineTests(unittest.TestCase):
    """One ``Name: value`` line."""

    def test_name_and_trimmed_value(self):
        """The value is trimmed; a trailing CR is ignored."""
        self.assertEqual(parse_header_line(b"Content-Type:  text/csv \r"), ("Content-Type", "text/csv"))

    def test_empty_value(self):
        """A header may have an empty value."""
        self.assertEqual(parse_header_line(b"X-Empty:"), ("X-Empty", ""))

    def test_not_headers(self):
        """Body lines are not headers: JSON, form, CSV, a space in the name."""
        for line in [b'{"a": 1}', b"co2=1&t=2", b"time,co2", b"Content Type: x", b": x", b""]:
            self.assertIsNone(parse_header_line(line), line)


class SplitMessageTests(unittest.TestCase):
    """A datagram → header pairs, body, content type."""

    def test_body_without_headers_is_kept_whole(self):
        """A datagram whose first line is not a header is all body, bytes untouched."""
        for body in [b'{"co2": 1}\n\n', b"time,co2\r\n1,2\r\n", b"\x81\xa3co2\x01", b"a=1"]:
            frame = split_message(body)
            self.assertEqual((frame.headers, frame.body, frame.content_type), ([], body, None))

    def test_header_block_then_body(self):
        """Headers up to the first empty line; the body after it is exact, CRLF or LF."""
        for eol in [b"\r\n", b"\n"]:
            data = b"Content-Type: application/json" + eol + b"Content-MD5-Salted: ab" + eol + eol + b"{}\r\n\r\n"
            frame = split_message(data)
            self.assertEqual(frame.headers, [("Content-Type", "application/json"), ("Content-MD5-Salted", "ab")])
            self.assertEqual(frame.body, b"{}\r\n\r\n")
            self.assertEqual(frame.content_type, "application/json")

    def test_content_type_is_case_insensitive_and_last_wins(self):
        """Header names are matched case-insensitively; a repeated header's last value counts."""
        frame = split_message(b"content-type: text/csv\nCONTENT-TYPE: application/json\n\n{}")
        self.assertEqual(frame.content_type, "application/json")

    def test_leading_empty_line_is_an_empty_block(self):
        """An empty first line ends an empty header block."""
        self.assertEqual(split_message(b"\r\n{}").body, b"{}")
        self.assertEqual(split_message(b"\n").body, b"")

    def test_block_without_end_is_refused(self):
        """A header block must end with an empty line."""
        with self.assertRaises(IngestError) as caught:
            split_message(b"Content-Type: text/csv\na,b\n1,2")
        self.assertEqual((caught.exception.status, caught.exception.reason), (400, "header"))

    def test_bad_line_inside_the_block_is_refused(self):
        """Every line of a started block must be a header."""
        with self.assertRaises(IngestError) as caught:
            split_message(b"Content-Type: text/csv\nnot a header\n\na,b\n1,2")
        self.assertIn("Header line 2", caught.exception.message)

    def test_block_length_is_bounded(self):
        """More than MAX_HEADER_LINES header lines are refused."""
        data = b"X-A: 1\n" * (MAX_HEADER_LINES + 1) + b"\n{}"
        with self.assertRaises(IngestError):
            split_message(data)
        self.assertEqual(len(split_message(b"X-A: 1\n" * MAX_HEADER_LINES + b"\n{}").headers), MAX_HEADER_LINES)

    def test_header_values_are_latin1(self):
        """Non-ASCII header bytes never raise; they are read as Latin-1."""
        frame = split_message(b"X-Name: caf\xe9\n\n{}")
        self.assertEqual(frame.headers, [("X-Name", "caf\xe9")])
