"""
The helpers of ``co2logserver.utils`` that co2logserver's config files use.

co2logserver's ``config_default.py``, which its README tells users to copy,
starts with ``from co2logserver.utils import *`` and its hooks call
:func:`utc_datetime_from_unix_timestamp`.  co2logd has no ``co2logserver``
package (installing one would clash with the real co2logserver), so
:func:`co2logd.settings.read_config_file` resolves that import to this module
while, and only while, a config file executes: see :func:`config_builtins`.
Nothing named ``co2logserver`` ever enters ``sys.modules``.

The helpers are co2logd's own implementations with co2logserver 0.1.2's
behaviour.  Its SQL string helpers (``sqlsep``) are left out on purpose:
co2logd never builds SQL from values.
"""

from __future__ import annotations

import builtins
import collections
import csv
import datetime
import hashlib
import html
import io
import json
import re
import types
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence
from urllib.parse import urlencode

from co2logd.settings.legacy_hooks import utc_datetime_from_unix_timestamp  # noqa: F401  (co2logserver.utils offers it to config files)

# the module name a config file imports these helpers under
LEGACY_MODULE = "co2logserver.utils"


def unix_timestamp(dt: datetime.datetime) -> int:
    """Whole UNIX seconds of a datetime; a naive one is taken as UTC."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.timezone.utc)
    return int((dt - datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)).total_seconds())


def salted_checksum(payload: Any, salt: Any, algorithm: str) -> str:
    """Hex digest of ``payload + salt`` with a hashlib algorithm (str or bytes arguments)."""
    h = hashlib.new(algorithm)
    h.update(payload.encode() if isinstance(payload, str) else bytes(payload))
    h.update(salt.encode() if isinstance(salt, str) else bytes(salt))
    return h.hexdigest()


def str2num(s: Any) -> Any:
    """An int when the value is a whole number, a float when it is another number, else the value."""
    numbers: List[Any] = []
    for kind in (int, float):
        try:
            numbers.append(kind(s))
        except (TypeError, ValueError):
            numbers.append(None)
    whole, real = numbers
    if real is None:
        return s if whole is None else whole
    return whole if whole == real else real


def listdict_to_dictlist(d: Mapping[str, Sequence[Any]]) -> List[Dict[str, Any]]:
    """A table (column → values) as a list of row dicts."""
    return [dict(zip(d, row)) for row in zip(*d.values())]


def dictlist_to_listdict(rows: Iterable[Mapping[str, Any]], fun: Callable[[Any], Any] = lambda x: x) -> Dict[str, List[Any]]:
    """A list of row dicts as a table (column → values), each value passed through ``fun``."""
    table: Dict[str, List[Any]] = collections.defaultdict(list)
    for row in rows:
        for key, value in row.items():
            table[key].append(fun(value))
    return dict(table)


def csv2table(fd: Iterable[str]) -> Dict[str, List[Any]]:
    """A CSV file (header line, rows) as a table with numbers converted."""
    return dictlist_to_listdict(csv.DictReader(fd), fun=str2num)


def table2dict(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Dict[str, List[Any]]:
    """Column names and row tuples as a table (column → values)."""
    table: Dict[str, List[Any]] = collections.defaultdict(list)
    for row in rows:
        for name, value in zip(header, row):
            table[name].append(value)
    return dict(table)


header_cols_to_table = table2dict


def table2json(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as a JSON list of objects (non-JSON values as strings)."""
    return json.dumps([dict(zip(header, row)) for row in rows], default=str, indent=4, sort_keys=True)


def table2csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as CSV text with a header line."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def table2html(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows as an HTML table (values escaped)."""
    cells = lambda tag, values: "\n".join("<{0}>{1}</{0}>".format(tag, html.escape("" if v is None else str(v))) for v in values)
    body = "".join("<tr>\n{}\n</tr>\n".format(cells("td", row)) for row in rows)
    return "<table>\n<tr>\n{}\n</tr>\n{}</table>\n".format(cells("th", header), body)


def dictlist2form(rows: Iterable[Mapping[str, Any]]) -> str:
    """Row dicts as one form body (``a=1&b=2&a=3&b=4``)."""
    return "&".join(urlencode(row) for row in rows)


def urlencode_multi_dict(d: Mapping[str, Sequence[Any]]) -> str:
    """A table as one form body, row after row."""
    return dictlist2form(listdict_to_dictlist(d))


def sanitize(value: Any) -> str:
    """The value as text with everything but letters, digits and ``.:+_ -`` removed."""
    return re.sub("[^a-z0-9.:+_ -]", "", str(value), flags=re.IGNORECASE)


def dictkeys2lower(d: Mapping[str, Any]) -> Dict[str, Any]:
    """The mapping with lower-cased keys."""
    return {k.lower(): v for k, v in d.items()}


def header_from_cursor(cursor: Any) -> List[str]:
    """Column names of a DB-API cursor's last query."""
    return [c[0] for c in cursor.description]


def parse_msgpack(data: bytes) -> Any:
    """Decode msgpack bytes (ValueError when they are not msgpack)."""
    import msgpack

    try:
        return msgpack.unpackb(data, raw=False)
    except Exception as e:
        raise ValueError("Could not decode MsgPack: {}".format(e))


HELPERS = [
    "csv2table", "dictkeys2lower", "dictlist2form", "dictlist_to_listdict", "header_cols_to_table",
    "header_from_cursor", "listdict_to_dictlist", "parse_msgpack", "salted_checksum", "sanitize",
    "str2num", "table2csv", "table2dict", "table2html", "table2json", "unix_timestamp",
    "urlencode_multi_dict", "utc_datetime_from_unix_timestamp",
]

# ``from co2logserver.utils import *`` also handed configs the modules it
# imported (it had no __all__), so a hook may use ``datetime`` or ``re``
# without importing them: keep that working.
__all__ = HELPERS + ["collections", "csv", "datetime", "hashlib", "io", "json", "re", "urlencode"]


def _package() -> types.ModuleType:
    """A stand-in ``co2logserver`` package for ``import co2logserver.utils`` (never put in sys.modules)."""
    import sys

    package = types.ModuleType("co2logserver", "co2logserver.utils as co2logd provides it to config files")
    package.utils = sys.modules[__name__]  # type: ignore[attr-defined]
    return package


def config_builtins(base: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """
    Builtins for a config file's namespace whose ``__import__`` answers
    ``co2logserver.utils`` (and ``co2logserver``) with this module.

    Every other import goes to the real ``__import__``.  The hooks a config
    defines keep these builtins (a function's globals are the config's
    namespace), so an import inside a hook body resolves the same way, and
    code outside the config still imports a real co2logserver if installed.
    """
    import sys

    real_import = builtins.__import__
    namespace = dict(base if base is not None else vars(builtins))

    def config_import(name, globals=None, locals=None, fromlist=(), level=0):
        if level == 0 and (name == LEGACY_MODULE or name == "co2logserver"):
            if name == LEGACY_MODULE and fromlist:
                return sys.modules[__name__]
            return _package()
        return real_import(name, globals, locals, fromlist, level)

    namespace["__import__"] = config_import
    return namespace
