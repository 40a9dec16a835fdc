"""
Kinds of setting values: each checks a value and returns it normalised.

A kind raises :class:`TypeError` whose text says what the value must be
("a positive whole number"); :meth:`Settings.from_values` turns it into one
sentence naming the setting.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Dict, List, Optional, Pattern

from co2logd.store.names import is_safe_identifier

Kind = Callable[[Any], Any]


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but True is not a number of seconds
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def optional(kind: Kind) -> Kind:
    """None, or a value of ``kind``."""

    def check(value: Any) -> Any:
        if value is None:
            return None
        try:
            return kind(value)
        except TypeError as e:
            raise TypeError("{} or None".format(e))

    check.__name__ = "optional_" + kind.__name__
    return check


def text(value: Any) -> str:
    """A string."""
    if not isinstance(value, str):
        raise TypeError("a string")
    return value


optional_text = optional(text)


def database(value: Any) -> str:
    """A SQLite file path or a postgresql:// URL; an error message never repeats a password."""
    from co2logd.dburl import DatabaseUrlError, parse_db
    from co2logd.settings import SettingsError

    if not isinstance(value, str):
        raise TypeError("a SQLite file path or a postgresql:// URL")
    try:
        parse_db(value)
    except DatabaseUrlError as e:
        raise SettingsError(str(e))
    return value


def token(value: Any) -> Optional[str]:
    """None, or a secret of at least 16 printable ASCII characters."""
    if value is not None and not (isinstance(value, str) and len(value) >= 16 and value.isascii() and value.isprintable()):
        raise TypeError("None or a string of at least 16 printable ASCII characters")
    return value


def flag(value: Any) -> bool:
    """True or False (not 1, not 'yes')."""
    if not isinstance(value, bool):
        raise TypeError("True or False")
    return value


def whole_number(low: int = 1, high: Optional[int] = None, what: str = "a positive whole number") -> Kind:
    """A whole number from ``low`` to ``high`` (no upper bound when None)."""

    def check(value: Any) -> int:
        if not _is_whole(value) or value < low or (high is not None and value > high):
            raise TypeError(what)
        return value

    check.__name__ = "whole_number"
    return check


positive_int = whole_number()


def non_negative_number(value: Any) -> Any:
    """A number of at least 0 (0 usually means "off")."""
    if not _is_number(value) or value < 0:
        raise TypeError("a number of at least 0")
    return value


def positive_number(value: Any) -> Any:
    """A number greater than 0 (seconds, rates, sizes)."""
    if not _is_number(value) or not value > 0:
        raise TypeError("a number greater than 0")
    return value


def str_list(value: Any) -> List[str]:
    """A list (or tuple) of strings, as a list."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError("a list of strings")
    if not all(isinstance(v, str) for v in value):
        raise TypeError("a list of strings")
    return list(value)


optional_str_list = optional(str_list)


def number_list(value: Any) -> List[Any]:
    """A list of numbers, sorted."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise TypeError("a list of numbers")
    if not all(_is_number(v) for v in value):
        raise TypeError("a list of numbers")
    return sorted(value)


def function(value: Any) -> Any:
    """Something callable (a hook)."""
    if not callable(value):
        raise TypeError("a function")
    return value


def loglevel(value: Any) -> int:
    """A logging level: a number or a name like 'INFO'."""
    if isinstance(value, str):
        level = logging.getLevelName(value.upper())
        if isinstance(level, int):
            return level
    elif _is_whole(value):
        return value
    raise TypeError("a logging level (a number or a name like 'INFO')")


def regex(value: Any) -> Pattern[str]:
    """A compiled regular expression, or its text."""
    if isinstance(value, str):
        try:
            value = re.compile(value)
        except re.error as e:
            raise TypeError("a valid regular expression ({})".format(e))
    if not isinstance(value, re.Pattern):
        raise TypeError("a regular expression")
    return value


def osem_regex(value: Any) -> Pattern[str]:
    """A regular expression with the named groups type, quantity and unit."""
    pattern = regex(value)
    if {"type", "quantity", "unit"} - set(pattern.groupindex):
        raise TypeError("a regular expression with the named groups type, quantity and unit")
    return pattern


def identifier(value: Any) -> str:
    """A column or table name safe for SQL, lower-cased."""
    if not isinstance(value, str) or not is_safe_identifier(value.lower()):
        raise TypeError("a column or table name of letters, digits and '_' not starting with a digit")
    return value.lower()


optional_identifier = optional(identifier)


def one_of(*choices: str) -> Kind:
    """One of ``choices``, whatever its case; returned as the choice is spelled."""
    spelled = {c.lower(): c for c in choices}

    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in spelled:
            raise TypeError("one of {}".format(", ".join(repr(c) for c in choices)))
        return spelled[value.lower()]

    check.__name__ = "one_of"
    return check


def gateway_pattern(value: Any) -> Optional[Pattern[str]]:
    """None, or a regex whose named groups are column names."""
    if value is None:
        return None
    pattern = regex(value)
    if not pattern.groupindex or not all(is_safe_identifier(name) for name in pattern.groupindex):
        raise TypeError(
            "a regular expression with named groups that are column names, like r'^(?:OK )?(?P<box>\\d+) '"
        )
    return pattern


def unit_map(value: Any) -> Dict[str, str]:
    """A dict of column name to unit text; column names lower-cased."""
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise TypeError("a dict of column name to unit text, like {'co2': 'ppm'}")
    return {k.lower(): v for k, v in value.items()}


# MQTT (co2logd.transports.mqtt)


def mqtt_broker(value: Any) -> Optional[str]:
    """None or mqtt://[user:password@]host[:port] / mqtts://…; an error message never repeats the password."""
    from co2logd.settings import SettingsError
    from co2logd.transports.mqtt_payloads import parse_broker_url

    if value is None:
        return None
    try:
        parse_broker_url(value)
    except ValueError as e:
        raise SettingsError("Setting CO2LOGSERVER_MQTT_BROKER: {}".format(e))
    return value


def topic_filters(value: Any) -> List[str]:
    """A list of MQTT topic filters (``+`` one level, ``#`` the rest)."""
    from co2logd.transports.mqtt_payloads import check_topic_filter

    value = str_list(value)
    try:
        return [check_topic_filter(v) for v in value]
    except ValueError as e:
        raise TypeError("a list of MQTT topic filters ({})".format(e))


def mqtt_qos(value: Any) -> int:
    """0 or 1.  QoS 2 is not offered: paho keeps a QoS 2 message's state in memory only, so a crash could lose it."""
    if not _is_whole(value) or value not in (0, 1):
        raise TypeError("0 or 1 (1: acknowledged after the commit)")
    return value


def client_id(value: Any) -> Optional[str]:
    """None or a non-empty string."""
    if value is not None and not (isinstance(value, str) and value):
        raise TypeError("None or a non-empty string")
    return value


def timezone(value: Any) -> Optional[str]:
    """None or an IANA time zone name this machine knows."""
    from co2logd.transports.mqtt_payloads import check_timezone

    if value is not None and not isinstance(value, str):
        raise TypeError("None or an IANA time zone name such as 'Europe/Berlin'")
    try:
        return check_timezone(value)
    except ValueError as e:
        raise TypeError(str(e))


def upload_tokens(value: Any) -> Dict[str, str]:
    """A mapping of upload tokens to labels (its errors never show a token)."""
    from co2logd.tokens import check_tokens_setting

    try:
        return check_tokens_setting(value)
    except ValueError as e:
        raise TypeError(str(e)) from None
