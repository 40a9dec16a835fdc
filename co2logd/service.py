"""
``build_service``: the MultiService that wires store, ingest, uploader and
listeners together.

Order matters: the store is added first and the listeners last, so on
shutdown the listeners stop first and the database closes last.
"""

from __future__ import annotations

from typing import Optional, Sequence

from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from co2logd.ingest import IngestService
from co2logd.store import Store, StoreError
from co2logd.web.site import make_site

log = Logger()


class StartupError(Exception):
    """Start-up cannot go on; the message is one sentence for the operator."""


def describe_startup_failure(error: BaseException) -> str:
    """One line for a failure while binding ports or opening devices."""
    if isinstance(error, CannotListenError):
        reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
        return "cannot listen on {}:{}: {}".format(error.interface or "*", error.port, reason)
    if isinstance(error, OSError) and error.strerror:
        where = " ({})".format(error.filename) if error.filename else ""
        return "{}{}".format(error.strerror, where)
    return str(error) or type(error).__name__


class Co2logdService(MultiService):
    """
    The daemon's root service.

    A child that fails to start (a port in use, a missing serial device)
    ends start-up: with ``exit_on_error`` (as under twistd) by raising
    ``SystemExit`` with one line, otherwise by raising :class:`StartupError`.
    """

    exit_on_error = False

    def privilegedStartService(self):
        self._guard(super().privilegedStartService)

    def startService(self):
        self._guard(super().startService)

    def _guard(self, start):
        try:
            start()
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as e:
            message = "co2logd: " + describe_startup_failure(e)
            if self.exit_on_error:
                raise SystemExit(message)
            raise StartupError(message) from e


def build_service(
    settings,
    reactor,
    http: Sequence[str] = ("tcp:8080",),
    udp: Sequence[str] = (),
    serial: Sequence[str] = (),
    verbose: bool = False,
    store: Optional[Store] = None,
) -> Co2logdService:
    """
    Build the whole daemon from validated settings.

    The database schema is prepared here, synchronously, so a bad database
    stops start-up before the reactor runs.  ``http`` are Twisted server
    endpoint strings; ``udp`` and ``serial`` the specs of ``--udp``/``--serial``.
    """
    root = Co2logdService()
    if store is None:
        try:
            store = Store.open(settings.DB, settings, clock=reactor)
        except StoreError as e:
            raise StartupError("co2logd: {}".format(e))
    store.setServiceParent(root)

    outbox_entries = None
    uploader = None
    if settings.OSEM_UPLOAD:
        outbox_entries, uploader = _opensensemap(settings, store, reactor)

    ingest = IngestService(settings, store, reactor, outbox_entries=outbox_entries)
    ingest.verbose = verbose
    ingest.setServiceParent(root)
    if uploader is not None:
        ingest.stored_observers.append(lambda receipt: receipt.osem_queued and uploader.nudge())
        uploader.setServiceParent(root)

    for spec in udp:
        _udp_service(spec, ingest, reactor, settings).setServiceParent(root)
    for spec in serial:
        _serial_service(spec, ingest, reactor, settings).setServiceParent(root)

    if http:
        site = make_site(settings, ingest, store, reactor, services=root, access_log=verbose)
        for description in http:
            listener = strports.service(description, site, reactor=reactor)
            listener.setName("http " + description)
            listener.setServiceParent(root)
    return root


# -- hooks for the transports and the uploader (their own issues fill them) ---


def _opensensemap(settings, store, reactor):
    """
    (outbox_entries, uploader service) for OpenSenseMap forwarding; without
    the client or credentials the service only reports that (no traceback).
    """
    from co2logd.osem.checks import OsemMisconfigured, osem_problem
    from co2logd.osem.mapping import outbox_entries_for

    problem = osem_problem(settings)
    if problem is not None:
        return outbox_entries_for(settings, reactor), OsemMisconfigured(problem)
    from co2logd.osem.uploader import OsemUploader

    return outbox_entries_for(settings, reactor), OsemUploader(settings, store, reactor)


def _udp_service(spec, ingest, reactor, settings):
    from co2logd.transports.udp import udp_service

    return udp_service(spec, ingest, reactor, settings)


def _serial_service(spec, ingest, reactor, settings):
    from co2logd.transports.serial import serial_service

    return serial_service(spec, ingest, reactor, settings)
