"""
Settings: every co2logserver 0.1.2 key with its default, plus co2logd's own.

A co2logserver configuration file is a Python file of ``CO2LOGSERVER_*``
assignments (plain values or hook functions).  It is executed, its upper-case
``CO2LOGSERVER_*`` (or ``CO2LOGD_*``) names are validated against
:data:`co2logd.settings.keys.KEYS`, and the result is one
immutable-by-convention :class:`Settings`.  Unknown names and values of the
wrong type raise :class:`SettingsError` with one sentence that names the
problem.

The package's rooms: ``keys`` (every setting, grouped by the part of co2logd
that reads it), ``kinds`` (the value checks), ``legacy_hooks``
(co2logserver's default hooks) and ``legacy_utils`` (the
``co2logserver.utils`` helpers config files import).
"""

from __future__ import annotations

import difflib
import os
import re
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional

from co2logd.settings import legacy_utils
from co2logd.settings.keys import KEYS, ROOMS, Key

PREFIXES = ("CO2LOGSERVER_", "CO2LOGD_")


class SettingsError(ValueError):
    """A configuration value or file that co2logd cannot use."""


def _closest(name: str) -> str:
    close = difflib.get_close_matches(name, list(KEYS), n=1, cutoff=0.5)
    return " (did you mean CO2LOGSERVER_{}?)".format(close[0]) if close else ""


def strip_prefix(name: str) -> Optional[str]:
    """``CO2LOGSERVER_DB`` → ``DB``; names without a known prefix → None."""
    for prefix in PREFIXES:
        if name.startswith(prefix):
            return name[len(prefix):]
    return None


class Settings:
    """
    The validated configuration, one attribute per key (``settings.DB``).

    Build it with :meth:`from_values` or :meth:`from_config_file`; pass it to
    the objects that need it (nothing below the tap reads command-line options).
    """

    if TYPE_CHECKING:
        # the attributes are the names in KEYS, set from a dict: the checker
        # sees each as Any rather than refusing them all
        def __getattr__(self, name: str) -> Any: ...

    def __init__(self, values: Mapping[str, Any]):
        self.__dict__.update(values)

    @classmethod
    def from_values(
        cls, values: Optional[Mapping[str, Any]] = None, environ: Optional[Mapping[str, str]] = None
    ) -> "Settings":
        """
        Defaults overridden by ``values`` (keys with or without prefix).

        Raises :class:`SettingsError` for an unknown key or a value of the
        wrong kind.
        """
        environ = os.environ if environ is None else environ
        resolved: Dict[str, Any] = {}
        for name, key in KEYS.items():
            default = key.default(environ) if key.from_env else key.default
            resolved[name] = default
        for raw_name, value in (values or {}).items():
            name = strip_prefix(raw_name) or raw_name
            if name not in KEYS:
                raise SettingsError(
                    "Unknown setting {}{}".format(raw_name, _closest(name))
                )
            try:
                resolved[name] = KEYS[name].kind(value)
            except TypeError as e:
                raise SettingsError(
                    "Setting CO2LOGSERVER_{} must be {}, not {!r}".format(name, e, value)
                )
        if resolved["OSEM_TIME_COL"] is None:
            resolved["OSEM_TIME_COL"] = next(iter(resolved["TIME_COLS"]), "time")
        automatic = [resolved[k] for k in ("UPLOAD_TIME_COL", "MATCHED_CHECKSUMS_COL", "FAILED_CHECKSUMS_COL", "TRANSPORT_COL")]
        if len(set(automatic)) != len(automatic):
            raise SettingsError("The automatic columns must have different names: {}".format(", ".join(automatic)))
        return cls(resolved)

    @classmethod
    def from_config_file(
        cls,
        path: str,
        overrides: Optional[Mapping[str, Any]] = None,
        environ: Optional[Mapping[str, str]] = None,
    ) -> "Settings":
        """Execute a co2logserver-style config file and validate what it sets."""
        return cls.from_values(
            dict(read_config_file(path), **(overrides or {})), environ=environ
        )

    def replace(self, **changes: Any) -> "Settings":
        """A copy with some keys changed (validated again)."""
        values = {k: getattr(self, k) for k in KEYS}
        values.update(changes)
        return Settings.from_values(values)

    @property
    def automatic_columns(self) -> List[str]:
        """The columns co2logd fills itself, in table order."""
        return [
            self.UPLOAD_TIME_COL,
            self.MATCHED_CHECKSUMS_COL,
            self.FAILED_CHECKSUMS_COL,
            self.TRANSPORT_COL,
        ]


def read_config_file(path: str) -> Dict[str, Any]:
    """
    The ``CO2LOGSERVER_*``/``CO2LOGD_*`` names a Python config file assigns.

    Like Flask's ``from_pyfile`` (which co2logserver uses), other names (imports,
    lower-case helpers) are left out.  Raises :class:`SettingsError` when the
    file cannot be read or fails to execute.

    co2logserver's own config files run unmodified: ``co2logserver.utils`` is
    answered with :mod:`co2logd.settings.legacy_utils` inside the file (and its
    hooks) only, and its helpers are predefined for files whose import was removed.
    """
    try:
        with open(path, "rb") as f:
            source = f.read()
    except OSError as e:
        raise SettingsError("Cannot read config file {}: {}".format(path, e.strerror or e))
    namespace: Dict[str, Any] = {name: getattr(legacy_utils, name) for name in legacy_utils.HELPERS}
    namespace.update(
        __file__=os.path.abspath(path), __name__="co2logd_config", __builtins__=legacy_utils.config_builtins()
    )
    try:
        code = compile(source, path, "exec")
        exec(code, namespace)
    except Exception as e:
        raise SettingsError(
            "Config file {} failed: {}: {}".format(path, type(e).__name__, e)
        )
    return {k: v for k, v in namespace.items() if strip_prefix(k) is not None}


def describe_default(key: Key) -> str:
    """A key's default as documentation shows it."""
    if key.from_env:
        return str(key.default.__doc__)
    default = key.default
    if isinstance(default, re.Pattern):
        return "r'{}'".format(default.pattern)
    if callable(default):
        return "(built-in function)"
    return repr(default)


def markdown_table() -> str:
    """README's settings tables, one per room (``python docs/update_readme.py`` writes them)."""
    parts = []
    for room in ROOMS:
        lines = ["#### " + room.title, "", "| setting | default | meaning |", "|---|---|---|"]
        for name, key in room.keys.items():
            default = describe_default(key).replace("|", "\\|")
            if len(default) > 60:
                default = default[:57] + "…"
            lines.append("| `CO2LOGSERVER_{}` | `{}` | {} |".format(name, default, key.doc.replace("|", "\\|")))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


__all__ = ["KEYS", "PREFIXES", "Settings", "SettingsError", "markdown_table", "read_config_file", "strip_prefix"]
