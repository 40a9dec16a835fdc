"""
``build_service``: the MultiService that wires store, ingest, uploader and
listeners together.

Order matters: the store is added first and the listeners last, so on
shutdown the listeners stop first and the database closes last.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Optional, Sequence, Tuple, Union

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.logger import Logger

from co2logd import __version__
from co2logd.dburl import DatabaseUrlError, is_postgres, parse_db, redact
from co2logd.ingest import IngestService, Receipt
from co2logd.listeners import EndpointListener
from co2logd.logs import set_verbose
from co2logd.osem.checks import OsemMisconfigured, osem_problem
from co2logd.osem.mapping import EntriesFunction, outbox_entries_for
from co2logd.settings import Settings
from co2logd.store import Store, StoreError
from co2logd.transports.lineprotocol_udp import influx_udp_service
from co2logd.transports.mqtt import mqtt_service
from co2logd.transports.serial import parse_serial_spec, serial_service
from co2logd.transports.udp import parse_udp_spec, udp_service
from co2logd.web.site import make_site

if TYPE_CHECKING:  # imported late at run time: it needs the optional sensemapi
    from co2logd.osem.uploader import OsemUploader

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

    Ports are bound by :meth:`bind` (``makeService`` calls it before twistd
    forks); a child that still fails to start raises :class:`StartupError`
    with one line, an ordinary exception that twistd reports and after which
    it removes its pidfile.
    """

    database: Optional[str] = None
    config_file: Optional[str] = None

    def bind(self) -> None:
        """Bind every listener now (HTTP, UDP): a port in use raises :class:`StartupError`."""
        for child in self:
            bind = getattr(child, "bind", None)
            if bind is not None:
                try:
                    bind()
                except Exception as e:
                    self.abandon()
                    raise StartupError("co2logd: " + describe_startup_failure(e)) from e

    def abandon(self) -> None:
        """Undo :meth:`bind` and close the database, for a start-up that cannot go on."""
        for child in self:
            abandon = getattr(child, "abandon", None)
            if abandon is not None:
                abandon()

    @defer.inlineCallbacks
    def stopService(self):
        """
        Stop the children one after another, last added first: listeners stop
        accepting and finish what is in flight (HTTP requests get their
        receipts) before ingest stops, and the database closes last.
        """
        Service.stopService(self)
        for child in reversed(list(self)):
            try:
                yield defer.maybeDeferred(child.stopService)
            except Exception:
                log.failure("Stopping {name} failed", name=child.name)
        log.info("co2logd stopped")

    def privilegedStartService(self):
        self._guard(super().privilegedStartService)

    def startService(self):
        log.info(
            "co2logd {version} starting: database {database}, config file {config}",
            version=__version__,
            database=self.database,
            config=self.config_file or "none (defaults)",
        )
        self._guard(super().startService)

    def _guard(self, start):
        try:
            start()
        except StartupError:
            raise
        except Exception as e:
            raise StartupError("co2logd: " + describe_startup_failure(e)) from e


def build_service(
    settings: Settings,
    reactor: Any,
    http: Sequence[str] = ("tcp:8080",),
    udp: Sequence[Union[str, Tuple[int, str]]] = (),
    influx_udp: Sequence[Union[str, Tuple[int, str]]] = (),
    serial: Sequence[Union[str, Tuple[str, int]]] = (),
    serial_required: Sequence[Union[str, Tuple[str, int]]] = (),
    verbose: bool = False,
    store: Optional[Store] = None,
    config_file: Optional[str] = None,
) -> Co2logdService:
    """
    Build the whole daemon from validated settings.

    The database schema is prepared here, synchronously, so a bad database
    stops start-up before the reactor runs.  ``http`` are Twisted server
    endpoint strings; ``udp``, ``influx_udp`` and ``serial`` the values of
    ``--udp``/``--influx-udp``/``--serial``, parsed (as the tap gives them) or
    as spec strings (as a ``.tac`` may).
    Nothing listens yet: call the root's ``bind()`` (or start it).
    """
    set_verbose(verbose)
    root = Co2logdService()
    root.database = describe_database(settings.DB)
    root.config_file = config_file
    if store is None:
        store = open_store(settings, reactor)
    store.setServiceParent(root)

    outbox_entries: Optional[EntriesFunction] = None
    uploader: Union["OsemUploader", OsemMisconfigured, None] = None
    if settings.OSEM_UPLOAD:
        outbox_entries, uploader = _opensensemap(settings, store, reactor)

    ingest = IngestService(settings, store, reactor, outbox_entries=outbox_entries)
    ingest.verbose = verbose
    ingest.setServiceParent(root)
    if uploader is not None:
        forwarder = uploader

        def nudge(receipt: Receipt) -> None:
            if receipt.osem_queued:
                forwarder.nudge()

        ingest.stored_observers.append(nudge)
        uploader.setServiceParent(root)

    for port, interface in (parse_udp_spec(s) if isinstance(s, str) else s for s in udp):
        udp_service((port, interface), ingest, reactor, settings).setServiceParent(root)
    for spec in influx_udp:
        influx_udp_service(spec, ingest, reactor, settings).setServiceParent(root)
    required = {parse_serial_spec(s) if isinstance(s, str) else tuple(s) for s in serial_required}
    for device, baud in (parse_serial_spec(s) if isinstance(s, str) else s for s in serial):
        must_exist = (device, baud) in required or settings.SERIAL_REQUIRED
        serial_service((device, baud), ingest, reactor, settings, required=must_exist).setServiceParent(root)
    if settings.MQTT_BROKER:
        _mqtt_service(ingest, reactor, settings).setServiceParent(root)

    if http:
        site = make_site(settings, ingest, store, reactor, services=root, access_log=verbose)
        for description in http:
            endpoint = endpoints.serverFromString(reactor, description)
            EndpointListener(endpoint, site, description).setServiceParent(root)
    return root


def describe_database(db: str) -> str:
    """The database as logs and pages show it: a SQLite file's absolute path, a PostgreSQL URL without its password."""
    return redact(db) if is_postgres(db) else os.path.abspath(db)


def open_store(settings: Settings, reactor: Any) -> Any:
    """
    The store ``settings.DB`` names (a SQLite file or a PostgreSQL URL), its
    schema prepared: a :class:`Store` or a ``PostgresStore``, both IStore
    services; a :class:`StartupError` with one line if it cannot be.
    """
    try:
        target = parse_db(settings.DB)
    except DatabaseUrlError as e:
        raise StartupError("co2logd: {}".format(e))
    try:
        if isinstance(target, str):
            return Store.open(target, settings, clock=reactor)
        # imported only for a PostgreSQL URL: it needs the optional psycopg
        from co2logd.store.postgres import PostgresStore

        return PostgresStore.open(target, settings, clock=reactor)
    except StoreError as e:
        raise StartupError("co2logd: {}".format(e))


def _opensensemap(
    settings: Settings, store: Store, reactor: Any
) -> Tuple[Optional[EntriesFunction], Union["OsemUploader", OsemMisconfigured]]:
    """
    (outbox_entries, uploader service) for OpenSenseMap forwarding; without
    the client or credentials the service only reports that (no traceback).
    """
    problem = osem_problem(settings)
    if problem is not None:
        return outbox_entries_for(settings, reactor), OsemMisconfigured(problem)
    # imported only when forwarding can work: it needs the optional sensemapi
    from co2logd.osem.uploader import OsemUploader

    return outbox_entries_for(settings, reactor), OsemUploader(settings, store, reactor)


def _mqtt_service(ingest: IngestService, reactor: Any, settings: Settings) -> Service:
    """The MQTT subscriber; paho-mqtt is an optional extra, so its absence is one start-up line."""
    try:
        import paho.mqtt.client  # noqa: F401
    except ImportError:
        raise StartupError("co2logd: MQTT needs paho-mqtt: pip install 'co2logd[mqtt]'")
    return mqtt_service(ingest, settings, reactor)
