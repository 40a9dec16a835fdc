"""
CSV downloads and spreadsheet formula injection (issue 12, finding 14):
text cells that a spreadsheet would run as formulas get a ``'`` in front,
over a real port; ``DOWNLOAD_CSV_NEUTRALISE_FORMULAS = False`` exports them verbatim.
"""

import csv
import io
import json

from twisted.internet import defer
from twisted.trial import unittest

from co2logd.web.formulas import neutralise_cell
from tests.helpers import SiteMixin, make_settings

CELLS = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+2", "-2+3", "@SUM(A1)", "\tx", "\rx", "-3.5", "hello", "a=b"]
NEUTRALISED = ["'=HYPERLINK(\"http://evil\",\"x\")", "'+1+2", "'-2+3", "'@SUM(A1)", "'\tx", "'\rx", "-3.5", "hello", "a=b"]


class FormulaDownloadTests(SiteMixin, unittest.TestCase):
    """GET /download?format=csv with formula-looking text cells."""

    @defer.inlineCallbacks
    def download(self, settings):
        self.start_site(settings)
        status, reply = yield self.post(
            json.dumps({"note": CELLS, "value": [-3.5] * len(CELLS)}).encode(), "application/json"
        )
        self.assertEqual(status, 200, reply)
        status, _, body = yield self.get("/download?format=csv&cols=note,value")
        self.assertEqual(status, 200)
        rows = list(csv.reader(io.StringIO(body.decode("utf-8"), newline="")))
        self.assertEqual(rows[0], ["note", "value"])
        self.assertEqual([r[1] for r in rows[1:]], ["-3.5"] * len(CELLS))  # numbers untouched
        return [r[0] for r in rows[1:]]

    @defer.inlineCallbacks
    def test_formulas_are_neutralised_by_default(self):
        """=, +, -, @, tab and CR at the start of a text cell get a ', plain numbers do not."""
        cells = yield self.download(make_settings())
        self.assertEqual(cells, NEUTRALISED)

    @defer.inlineCallbacks
    def test_setting_off_exports_verbatim(self):
        """DOWNLOAD_CSV_NEUTRALISE_FORMULAS = False: the cells as stored."""
        cells = yield self.download(make_settings(DOWNLOAD_CSV_NEUTRALISE_FORMULAS=False))
        self.assertEqual(cells, CELLS)

    @defer.inlineCallbacks
    def test_json_download_is_unchanged(self):
        """Only CSV is touched: JSON shows the stored text."""
        self.start_site()
        yield self.post(json.dumps({"note": ["=1+1"]}).encode(), "application/json")
        _, _, body = yield self.get("/download?format=json&cols=note")
        self.assertEqual(json.loads(body), [{"note": "=1+1"}])


class NeutraliseCellTests(unittest.TestCase):
    """The per-cell function."""

    def test_cells(self):
        """Formula starts are prefixed; numbers, None, plain numeric text and other text are not."""
        self.assertEqual([neutralise_cell(c) for c in CELLS], NEUTRALISED)
        for value in (-3.5, 7, None, b"=x", "", "+5", "-1e-3", ".5", "x-1"):
            self.assertEqual(neutralise_cell(value), value)
        self.assertEqual(neutralise_cell("-"), "'-")
        self.assertEqual(neutralise_cell("-1-1"), "'-1-1")
