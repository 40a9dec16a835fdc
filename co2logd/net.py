"""Addresses as the log shows them: ``host:port``."""

from __future__ import annotations

from typing import Any


def host_port(address: Any) -> str:
    """
    ``host:port`` for a Twisted IPv4/IPv6 address or a ``(host, port)`` tuple
    (``[v6]:port`` for IPv6), a UNIX socket's path, else the address's text.
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
    else:
        host = getattr(address, "host", None)
        port = getattr(address, "port", None)
    if host is None or port is None:
        name = getattr(address, "name", None)
        if name is not None:
            return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
        return str(address)
    if ":" in str(host):
        return "[{}]:{}".format(host, port)
    return "{}:{}".format(host, port)
