"""
Keep a password given on the command line out of the process title.

``ps`` and ``/proc/PID/cmdline`` show the process's original argument
strings, so ``--db postgresql://user:secret@host/db`` (or ``--mqtt
mqtt://user:secret@broker``) would show the password to every local user.  :func:`hide_passwords` overwrites the password
in those strings with ``*`` in place (same length, so nothing moves).  On
Linux the argument area is found through ``/proc/self/stat`` (fields
``arg_start`` and ``arg_end``); elsewhere, or when that fails, nothing changes
and :func:`hide_passwords` says so by returning False.
"""

from __future__ import annotations

import ctypes
import re
from typing import Iterable

_PASSWORDS = (
    re.compile(rb"(?:postgres|postgresql|mqtt|mqtts)://[^/?#@:\x00]*:([^/?#\x00]*)@"),
    re.compile(rb"[?&]password=([^&#\x00]*)", re.IGNORECASE),
)


def _argument_area() -> "tuple[int, int]":
    """(start address, length) of this process's argv strings, from /proc/self/stat."""
    with open("/proc/self/stat", "rb") as f:
        stat = f.read()
    # the command name in parentheses may contain spaces: count fields after it
    fields = stat[stat.rindex(b")") + 2 :].split()
    start, end = int(fields[48 - 3]), int(fields[49 - 3])  # arg_start, arg_end: fields 48, 49 of proc(5)
    return start, end - start


def hide_passwords(arguments: Iterable[str] = ()) -> bool:
    """
    Overwrite every PostgreSQL or MQTT URL password in the process's command line with
    ``*``; True when the command line was read (and now holds none).
    ``arguments`` is unused but documents the intent at the call site.
    """
    try:
        start, length = _argument_area()
        if start <= 0 or length <= 0:
            return False
        area = ctypes.string_at(start, length)
    except (OSError, ValueError, IndexError, SystemError):
        return False
    changed = bytearray(area)
    for pattern in _PASSWORDS:
        for match in pattern.finditer(area):
            changed[match.start(1) : match.end(1)] = b"*" * (match.end(1) - match.start(1))
    if changed != area:
        ctypes.memmove(start, bytes(changed), length)
    return True
