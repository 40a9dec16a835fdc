"""
Checks ``makeService`` runs before anything is created: a database that
cannot be written and a required serial device that is missing each end
start-up with one line, and leave no file behind.
"""

from __future__ import annotations

import os
import stat
from typing import Iterable, Tuple, Union

from co2logd.service import StartupError


def check_database_path(path: str) -> None:
    """
    Raise :class:`StartupError` unless the database at ``path`` can be used:
    an existing file must be readable and writable, and its directory
    writable (SQLite's WAL and shared-memory files live next to it).
    """
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise StartupError("co2logd: database directory {} does not exist".format(directory))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise StartupError(
            "co2logd: database directory {} is not writable (SQLite keeps its WAL file there)".format(directory)
        )
    if os.path.isdir(path):
        raise StartupError("co2logd: database {} is a directory".format(path))
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        raise StartupError("co2logd: database {} is not readable and writable".format(path))


def check_serial_devices(specs: Iterable[Union[str, Tuple[str, int]]]) -> None:
    """Raise :class:`StartupError` for the first required serial device that is missing or not accessible."""
    from co2logd.transports.serial import parse_serial_spec

    for spec in specs:
        device = parse_serial_spec(spec)[0] if isinstance(spec, str) else spec[0]
        if not os.path.exists(device):
            raise StartupError("co2logd: required serial device {} is missing".format(device))
        if not stat.S_ISCHR(os.stat(device).st_mode):
            raise StartupError("co2logd: required serial device {} is not a serial device (not a character device)".format(device))
        if not os.access(device, os.R_OK | os.W_OK):
            raise StartupError(
                "co2logd: required serial device {} is not readable and writable "
                "(is the user in the dialout group?)".format(device)
            )
