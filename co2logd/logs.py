"""
co2logd's log verbosity: debug events (serial ``#`` comments, duplicate
datagrams, …) are dropped unless ``-v`` is given.

Modules that log at debug level create their logger as
``Logger(observer=gate)``; the gate passes events on to the global log
publisher, so twistd's log file, the journal and tests see them as usual.
"""

from __future__ import annotations

from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogPublisher

verbosity = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)

gate = FilteringLogObserver(globalLogPublisher, [verbosity])


def set_verbose(verbose: bool) -> None:
    """Show co2logd's debug events (``-v``) or hide them (the default)."""
    verbosity.setLogLevelForNamespace("co2logd", LogLevel.debug if verbose else LogLevel.info)
