"""
Spreadsheet formula injection: a CSV cell whose text starts with ``=``,
``+``, ``-``, ``@``, a tab or a carriage return is run as a formula by
Excel, LibreOffice and Google Sheets when the file is opened.  CSV downloads
pass each cell through :func:`neutralise_cell` (``DOWNLOAD_CSV_NEUTRALISE_FORMULAS``).
"""

from __future__ import annotations

import re
from typing import Any

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
# text a spreadsheet reads as a plain number, not a formula: kept as it is
PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def neutralise_cell(value: Any) -> Any:
    """
    ``value`` with a ``'`` in front when it is text a spreadsheet would take
    for a formula (OWASP's advice); numbers, and text that is a plain number
    such as ``-3.5``, are returned unchanged.
    """
    if isinstance(value, str) and value.startswith(FORMULA_STARTS) and not PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value
