"""The serial line grammar without Twisted: what each line is, and what the device signed."""

import re

from twisted.trial import unittest

from co2logd.errors import IngestError
from co2logd.transports.serial_lines import LineUpload, NodeState, node_name, read_line, split_gateway


class ReadLineTests(unittest.SynchronousTestCase):
    """One line and its node's state in, what the line is out."""

    def setUp(self):
        self.state = NodeState()

    def read(self, *lines):
        """Read the lines in order; the last one's result."""
        result = None
        for line in lines:
            result = read_line(line, self.state)
        return result

    def refused(self, *lines):
        """The reason the last line is refused with."""
        with self.assertRaises(IngestError) as caught:
            self.read(*lines)
        return caught.exception.reason

    def test_json_goes_as_it_is(self):
        """A JSON line is its own body, signed as it is."""
        self.assertEqual(self.read(b'{"co2": 1}'), LineUpload(b'{"co2": 1}', "application/json", [], None))

    def test_csv_row_is_signed_with_its_header_line_as_printed(self):
        """The header line stores nothing; a row becomes a CSV body, signed with the header line as the device printed it."""
        self.assertIsNone(self.read(b"time_s, co2"))
        found = self.read(b"1, 641")
        self.assertEqual((found.body, found.content_type), (b"time_s,co2\n1,641", "text/csv"))
        self.assertEqual(found.signed, b"time_s, co2\n1, 641")

    def test_key_value_pairs_become_form_data_signed_as_sent(self):
        """emonTx pairs are rewritten as form data; the line stays what was signed."""
        found = self.read(b"co2:640,hum=40")
        self.assertEqual((found.body, found.content_type, found.signed), (b"co2=640&hum=40", "application/x-www-form-urlencoded", b"co2:640,hum=40"))
        self.assertIsNone(self.read(b"co2=640&hum=40").signed)

    def test_headers_wait_for_the_body_line(self):
        """Header lines belong to the next body line; a Content-Type passes that line on untouched."""
        self.assertIsNone(self.read(b"Content-Type: text/csv", b"Content-MD5-Salted: ab"))
        found = self.read(b"co2\n")
        self.assertEqual(found, LineUpload(b"co2\n", "text/csv", [("Content-Type", "text/csv"), ("Content-MD5-Salted", "ab")], None))
        self.assertEqual(self.state.headers, [])

    def test_refusals(self):
        """Rows that do not fit their header, text that is none of the formats, endless header blocks."""
        self.assertEqual(self.refused(b"a,b", b"1,2,3"), "csv-columns")
        self.assertEqual(self.refused(b"hello world"), "unparseable")
        self.assertEqual(self.refused(b"X-H: 1", b"\xff,\xfe"), "unparseable")
        self.assertEqual(self.state.headers, [])
        self.assertEqual(self.refused(*[b"X-H: 1"] * 65), "header")


class GatewayTests(unittest.SynchronousTestCase):
    """A radio gateway's prefix: columns and a node of its own."""

    def test_prefix_becomes_columns_and_a_node(self):
        """The named groups are column values; the rest of the line is read as usual."""
        extra, node, rest = split_gateway(re.compile(r"^(?:OK )?(?P<box>\d+) "), b'OK 12 {"co2":1}')
        self.assertEqual((extra, node, rest), ({"box": 12}, (("box", 12),), b'{"co2":1}'))
        self.assertEqual(node_name("/dev/ttyACM0", node), "/dev/ttyACM0 box=12")
        self.assertEqual(node_name("/dev/ttyACM0", None), "/dev/ttyACM0")

    def test_line_without_the_prefix_is_refused(self):
        """The gateway's own messages are refused as no-gateway-prefix."""
        with self.assertRaises(IngestError) as caught:
            split_gateway(re.compile(r"^(?P<box>\d+) "), b"> gateway ready")
        self.assertEqual(caught.exception.reason, "no-gateway-prefix")
