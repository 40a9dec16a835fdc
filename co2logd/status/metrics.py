"""
Prometheus metrics, exposed by ``GET /metrics`` through ``prometheus_client``.

Each :class:`Metrics` has a registry of its own (not the process-wide
default), so several sites in one process, as in the tests, never collide.
Most values are read at scrape time from what the services already count
(nothing is registered by them):

* the ingest service's ``counters`` (uploads, rows, rejects by transport),
* listeners providing :class:`~co2logd.status.interfaces.IListenerStats`
  (per-source ``messages``/``rejects``; serial devices also
  :class:`~co2logd.status.interfaces.ISerialDeviceStats`),
* the uploader, which provides :class:`~co2logd.status.interfaces.IForwarderStats`,
* the store's ``write_stats`` (group commit) and the outbox statistics,
  fetched from the database just before each scrape.

The one metric measured here is the database write latency: the store
tells its write observers how long every write took from call to answer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Iterable, Optional

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from co2logd.settings import Settings
from co2logd.status.interfaces import IForwarderStats, IListenerStats, ISerialDeviceStats
from co2logd.store.interfaces import IStore

if TYPE_CHECKING:  # for annotations only: no import at run time
    from co2logd.ingest import IngestService


log = Logger()

WRITE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Collector:
    """Reads the services' counters at scrape time."""

    def __init__(self, metrics: "Metrics"):
        self.metrics = metrics

    def collect(self):
        m = self.metrics
        counters = m.ingest.counters
        uploads = CounterMetricFamily("co2logd_uploads", "Uploads stored, by transport", labels=["transport"])
        for transport, n in sorted(counters["uploads"].items()):
            uploads.add_metric([transport], n)
        yield uploads
        rows = CounterMetricFamily("co2logd_rows", "Rows stored, by transport", labels=["transport"])
        for transport, n in sorted(counters["rows"].items()):
            rows.add_metric([transport], n)
        yield rows
        repeats = CounterMetricFamily(
            "co2logd_idempotent_repeats", "Uploads answered with an earlier receipt (Idempotency-Key), by transport",
            labels=["transport"],
        )
        for transport, n in sorted(counters["repeats"].items()):
            repeats.add_metric([transport], n)
        yield repeats
        skipped = CounterMetricFamily(
            "co2logd_dialect_skipped",
            "Webhook messages acknowledged that store nothing (TTN joins, simulated or undecoded uplinks, ChirpStack non-up events), by transport and reason",
            labels=["transport", "reason"],
        )
        for (transport, reason), n in sorted(counters.get("skipped", {}).items()):
            skipped.add_metric([transport, reason], n)
        yield skipped
        rejects = CounterMetricFamily("co2logd_rejects", "Uploads refused, by transport and reason", labels=["transport", "reason"])
        auth = CounterMetricFamily("co2logd_auth_failures", "Uploads refused for missing or wrong checksums", labels=["transport"])
        auth_totals: Dict[str, int] = {}
        for (transport, reason), n in sorted(counters["rejects"].items()):
            rejects.add_metric([transport, reason], n)
            if reason.startswith("auth"):
                auth_totals[transport] = auth_totals.get(transport, 0) + n
        for transport, n in sorted(auth_totals.items()):
            auth.add_metric([transport], n)
        yield rejects
        yield auth
        yield from self._listeners()
        yield from self._uploader()
        yield from self._store()

    def _listeners(self):
        serial_connected = GaugeMetricFamily("co2logd_serial_connected", "1 while the serial device is open", labels=["device"])
        serial_reconnects = CounterMetricFamily("co2logd_serial_reconnects", "Times a serial device was reopened", labels=["device"])
        datagrams = CounterMetricFamily("co2logd_udp_datagrams", "UDP datagrams received, by listener", labels=["listener"])
        messages = CounterMetricFamily("co2logd_transport_messages", "Messages (datagrams, lines) received, by listener", labels=["listener"])
        transport_rejects = CounterMetricFamily("co2logd_transport_rejects", "Messages refused by a listener, by reason", labels=["listener", "reason"])
        mqtt_families: list = []
        for service in list(self.metrics.services):
            if not IListenerStats.providedBy(service):
                continue
            try:
                values = service.stats()
            except Exception:
                log.failure("stats() of {name} failed", name=service.name)
                continue
            sources = values.get("sources", {})
            total = sum(s.get("messages", 0) for s in sources.values())
            reasons: Dict[str, int] = {}
            for s in sources.values():
                for reason, n in s.get("rejects", {}).items():
                    reasons[reason] = reasons.get(reason, 0) + n
            messages.add_metric([service.name], total)
            for reason, n in sorted(reasons.items()):
                transport_rejects.add_metric([service.name, reason], n)
            if ISerialDeviceStats.providedBy(service):
                serial_connected.add_metric([service.device], 1 if service.connected else 0)
                serial_reconnects.add_metric([service.device], max(0, service.opened - 1))
            elif service.kind == "udp":
                datagrams.add_metric([service.name], total)
            elif service.kind == "mqtt":
                mqtt_families.extend(_mqtt_families(values["mqtt"]))
        yield from (serial_connected, serial_reconnects, datagrams, messages, transport_rejects)
        yield from mqtt_families

    def _uploader(self):
        for service in list(self.metrics.services):
            if IForwarderStats.providedBy(service):
                events = CounterMetricFamily(
                    "co2logd_osem_events",
                    "OpenSenseMap uploader: requests, failures, measurements delivered and dead-lettered",
                    labels=["event"],
                )
                for event, n in sorted(service.counters.items()):
                    events.add_metric([event], n)
                yield events
        outbox = self.metrics.outbox
        if outbox is not None:
            yield GaugeMetricFamily("co2logd_outbox_depth", "Entries waiting for the OpenSenseMap", value=outbox["depth"])
            yield GaugeMetricFamily("co2logd_outbox_oldest_age_seconds", "Age of the oldest waiting entry", value=outbox["oldest_age"])
            yield GaugeMetricFamily("co2logd_outbox_dead_letters", "Entries the OpenSenseMap refused for good", value=outbox["dead_letters"])

    def _store(self):
        stats = getattr(self.metrics.store, "write_stats", None)
        if isinstance(stats, dict):
            family = CounterMetricFamily("co2logd_db_write_events", "Store writer: transactions, uploads, busy refusals", labels=["event"])
            for event, n in sorted(stats.items()):
                if event != "largest_group":
                    family.add_metric([event], n)
            yield family


def _mqtt_families(stats: Dict[str, Any]):
    """The MQTT transport: connection, messages by outcome, refusals, redeliveries, reconnects, unacknowledged."""
    broker = [stats["broker"]]
    connected = GaugeMetricFamily("co2logd_mqtt_connected", "1 while connected to the MQTT broker", labels=["broker"])
    connected.add_metric(broker, 1 if stats["is_connected"] else 0)
    yield connected
    outcomes = CounterMetricFamily(
        "co2logd_mqtt_messages", "MQTT messages settled, by outcome (stored, duplicate, refused, not-data)",
        labels=["broker", "outcome"],
    )
    for outcome, n in sorted(stats["outcomes"].items()):
        outcomes.add_metric(broker + [outcome], n)
    yield outcomes
    refused = CounterMetricFamily("co2logd_mqtt_refused", "MQTT messages refused for good (and acknowledged), by reason", labels=["broker", "reason"])
    for reason, n in sorted(stats["refused"].items()):
        refused.add_metric(broker + [reason], n)
    yield refused
    for key, help_text in (
        ("redeliveries", "MQTT messages the broker sent again (DUP flag)"),
        ("rejoined", "Messages sent again after a reconnect while their first copy was stored: stored once"),
        ("reconnects", "Connections to the MQTT broker after the first"),
        ("connect_failures", "Failed attempts to connect to the MQTT broker"),
        ("acks", "PUBACKs sent (after the commit, or for messages refused for good)"),
        ("store_retries", "Times a message was tried again because the database was busy (its PUBACK held back)"),
    ):
        family = CounterMetricFamily("co2logd_mqtt_" + key, help_text, labels=["broker"])
        family.add_metric(broker, stats[key])
        yield family
    unacked = GaugeMetricFamily("co2logd_mqtt_unacknowledged", "MQTT messages received and not yet acknowledged", labels=["broker"])
    unacked.add_metric(broker, stats["unacknowledged"])
    yield unacked


class Metrics:
    """One registry with co2logd's metrics; ``exposition()`` fires with the text format."""

    def __init__(self, settings: Settings, ingest: IngestService, store: IStore, clock: IReactorTime, services: Iterable[Any] = ()):
        self.settings = settings
        self.ingest = ingest
        self.store = store
        self.clock = clock
        self.services = services
        self.outbox: Optional[Dict[str, float]] = None
        self.registry = CollectorRegistry()
        self.write_seconds = Histogram(
            "co2logd_db_write_seconds",
            "Time from handing an upload to the store until it is committed",
            buckets=WRITE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_Collector(self))
        store.add_observer(lambda seconds, rows: self.write_seconds.observe(seconds))

    @defer.inlineCallbacks
    def exposition(self):
        """Read the outbox statistics (when forwarding is on), then render every metric."""
        if self.settings.OSEM_UPLOAD:
            stats = yield self.store.outbox_stats()
            oldest = stats.get("oldest_queued_at")
            self.outbox = {
                "depth": stats["depth"],
                "oldest_age": 0.0 if oldest is None else max(0.0, self.clock.seconds() - oldest),
                "dead_letters": stats["dead_letters"],
            }
        return generate_latest(self.registry)
