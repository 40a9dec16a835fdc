"""
The MQTT transport: subscribe with QoS 1, acknowledge after the commit.

paho-mqtt's client runs its network loop on a thread of its own
(``loop_start``); everything it reports (connected, disconnected, a message)
hops to the reactor with ``callFromThread``, so the ingest service and the
store only ever run on the reactor thread.  The subscription is QoS 1 with
``manual_ack``: a message's PUBACK is sent only after its rows are
committed, or after it was refused for good (bad input, counted), in the
order the messages arrived (as MQTT asks).  A database that is busy or
stalled holds the acknowledgement back and the message is tried again with
backoff; if co2logd stops or dies meanwhile, the broker still holds the
message and sends it again.  The session is persistent (MQTT 5 session
expiry "never", or ``clean_session=False`` with MQTT 3.1.1) under a client
id that stays the same across restarts of the same installation, so
messages published while co2logd is away wait in the broker.

A message the broker sends again after a reconnect while its first copy is
still on its way to the database is joined to that copy instead of being
stored twice.  A message redelivered after co2logd died between a commit and
its PUBACK is stored twice, unless it carries an ``Idempotency-Key``.
"""

from __future__ import annotations

import collections
import hashlib
import os
import socket
import threading
from typing import Any, Callable, Deque, Dict, List, Optional, Sequence, Tuple

from twisted.application.service import Service
from twisted.internet import defer, threads
from twisted.logger import Logger

from co2logd.errors import IngestError
from co2logd.ingest import Upload
from co2logd.logs import gate
from co2logd.transports.listener import Counters, InFlight, RejectLog
from co2logd.transports.mqtt_payloads import (
    ESPHOME,
    BrokerURL,
    Message,
    NotData,
    local_time_reader,
    map_message,
    parse_broker_url,
    refusal,
    topic_matches,
)

log = Logger(observer=gate)

#: outcomes of a message, as counted and shown by /metrics
STORED, DUPLICATE, REFUSED, NOT_DATA = "stored", "duplicate", "refused", "not-data"
OUTCOMES = (STORED, DUPLICATE, REFUSED, NOT_DATA)
RETRY_FIRST_SECONDS = 0.2
RETRY_MAX_SECONDS = 10.0
MAX_LABEL = 200


def default_client_id(db_path: str, hostname: Optional[str] = None) -> str:
    """
    ``co2logd-`` and 15 hex digits from this host's name and the database's
    absolute path: the same installation gets the same id after every
    restart (so the broker keeps its session), two installations differ.
    23 characters, the most MQTT 3.1.1 promises to accept.
    """
    host = socket.gethostname() if hostname is None else hostname
    digest = hashlib.sha256("{}\0{}".format(host, os.path.abspath(db_path)).encode("utf-8")).hexdigest()
    return "co2logd-" + digest[:15]


class PahoConnection:
    """
    paho-mqtt's client on its network thread; every callback hops to the
    reactor and calls the ``listener``'s ``connected(session_present)``,
    ``connect_failed(reason)``, ``disconnected(reason)``,
    ``subscribed(failures)`` or ``message_received(Message)``.
    ``ack(mid, qos)`` may be called from the reactor thread.
    """

    def __init__(
        self,
        reactor,
        listener,
        broker: BrokerURL,
        client_id: str,
        subscriptions: Sequence[Tuple[str, int]],
        keepalive: int = 60,
        ca_file: Optional[str] = None,
        protocol: str = "5",
        receive_maximum: int = 1000,
        reconnect_max: float = 60,
    ):
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.reactor = reactor
        self.listener = listener
        self.broker = broker
        self.subscriptions = list(subscriptions)
        self.mqtt5 = protocol == "5"
        self.keepalive = keepalive
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5 if self.mqtt5 else mqtt.MQTTv311,
            clean_session=None if self.mqtt5 else False,
            manual_ack=True,
            reconnect_on_failure=True,
        )
        if broker.username is not None:
            self.client.username_pw_set(broker.username, broker.password)
        if broker.tls:
            self.client.tls_set(ca_certs=ca_file)
        self.client.reconnect_delay_set(1, max(1, int(reconnect_max)))
        self.connect_properties = None
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 0xFFFFFFFF  # the session never expires while co2logd is away
            properties.ReceiveMaximum = receive_maximum  # unacknowledged messages the broker may send at once
            self.connect_properties = properties
        client = self.client
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        self._SubscribeOptions = mqtt.SubscribeOptions
        self._inbox: List[Tuple[str, tuple]] = []
        self._inbox_lock = threading.Lock()

    # -- the reactor's side ---------------------------------------------------

    def start(self) -> None:
        """Connect in the background: a broker that is down is retried with backoff."""
        kwargs: Dict[str, Any] = {"keepalive": self.keepalive}
        if self.mqtt5:
            kwargs.update(clean_start=False, properties=self.connect_properties)
        self.client.connect_async(self.broker.host, self.broker.port, **kwargs)
        self.client.loop_start()

    def ack(self, acks: Sequence[Tuple[int, int]]) -> None:
        """
        Queue the PUBACKs for ``(mid, qos)`` pairs for the network thread
        (never blocks).  paho wakes its thread once per queued packet (a
        byte on a socket pair); for a batch, once is enough.
        """
        client = self.client
        wake = getattr(client, "_sockpairW", None)
        if wake is None or len(acks) == 1:
            for mid, qos in acks:
                client.ack(mid, qos)
            return
        client._sockpairW = None  # paho 2.2: the socket pair's writer, used only to wake the thread
        try:
            for mid, qos in acks:
                client.ack(mid, qos)
        finally:
            client._sockpairW = wake
        try:
            wake.send(b"0")
        except (BlockingIOError, OSError):
            pass  # a wake-up is pending already, or the loop is stopping

    def stop(self) -> defer.Deferred:
        """Disconnect (after the acknowledgements already queued) and join the network thread off the reactor."""
        self.client.disconnect()
        return threads.deferToThreadPool(self.reactor, self.reactor.getThreadPool(), self.client.loop_stop)

    # -- the network thread's side: copy, then hop ----------------------------

    def _hop(self, method: str, *args: Any) -> None:
        """
        Queue a report for the reactor; one ``callFromThread`` wakes it for
        everything queued meanwhile (a burst of messages costs one wake-up),
        and reports keep their order.
        """
        with self._inbox_lock:
            self._inbox.append((method, args))
            first = len(self._inbox) == 1
        if first:
            self.reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        with self._inbox_lock:
            batch, self._inbox = self._inbox, []
        listener = self.listener
        for method, args in batch:
            getattr(listener, method)(*args)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                self._hop("connect_failed", str(reason_code))
                return
            if self.subscriptions:
                if self.mqtt5:
                    # retainHandling 2: no retained messages (old readings, stored when they were live)
                    topics = [(f, self._SubscribeOptions(qos=q, retainHandling=2)) for f, q in self.subscriptions]
                else:
                    topics = list(self.subscriptions)
                client.subscribe(topics)
            self._hop("connected", bool(flags.session_present))
        except Exception as e:  # an exception here would end paho's network thread
            self._hop("connect_failed", "internal error: {}".format(e))

    def _on_connect_fail(self, client, userdata) -> None:
        self._hop("connect_failed", "cannot reach the broker")

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self._hop("disconnected", str(reason_code))

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        failures = [
            (topic, str(code)) for (topic, _), code in zip(self.subscriptions, reason_codes) if code.is_failure
        ]
        self._hop("subscribed", failures)

    def _on_message(self, client, userdata, message) -> None:
        try:
            try:
                topic = message.topic
            except UnicodeDecodeError:
                topic = None  # refused (and acknowledged) on the reactor's side
            properties = message.properties
            user = list(getattr(properties, "UserProperty", None) or ()) if properties is not None else []
            content_type = getattr(properties, "ContentType", None) if properties is not None else None
            copy = Message(
                topic if topic is not None else "",
                bytes(message.payload),
                message.qos,
                bool(message.retain),
                bool(message.dup),
                message.mid,
                user,
                content_type,
            )
            if topic is None:
                copy.topic = None  # type: ignore[assignment]
            self._hop("message_received", copy)
        except Exception:
            # nothing may escape into paho's thread; the message stays unacknowledged and comes again
            log.failure("Could not read an MQTT message")  # the logger is thread-safe


class Delivery:
    """One message on its way: mapped, ingested (maybe several times), settled with an outcome."""

    __slots__ = ("message", "generation", "outcome", "attempts", "work")

    def __init__(self, message: Message, generation: int):
        self.message = message
        self.generation = generation
        self.outcome: Optional[str] = None
        self.attempts = 0
        self.work: Optional[Tuple[Any, str, bool]] = None  # (mapped, label, trusted) once mapped

    def same(self, message: Message) -> bool:
        """Whether ``message`` is this one sent again (same packet id, topic and payload)."""
        m = self.message
        return m.mid == message.mid and m.topic == message.topic and m.payload == message.payload


class MQTTService(Service):
    """
    Subscribes to ``topics`` on ``broker`` and hands each message to the
    ingest service; acknowledges after the commit (see the module's doc).

    ``connection_factory(reactor, listener, broker, client_id, subscriptions,
    **options)`` makes the connection (:class:`PahoConnection`; tests give a fake).
    """

    def __init__(
        self,
        ingest,
        settings,
        reactor,
        broker: Optional[str] = None,
        topics: Optional[Sequence[str]] = None,
        connection_factory: Callable[..., Any] = PahoConnection,
    ):
        self.ingest = ingest
        self.settings = settings
        self.reactor = reactor
        self.broker = parse_broker_url(broker or settings.MQTT_BROKER)
        self.topics = list(topics if topics else settings.MQTT_TOPICS)
        self.qos = settings.MQTT_QOS
        self.client_id = settings.MQTT_CLIENT_ID or default_client_id(settings.DB)
        self.trusted = list(settings.MQTT_TRUSTED_TOPICS)  # the broker vouches for these publishers
        self.box_column = settings.OSEM_BOX_COL.lower()
        self.local_time = local_time_reader(settings.MQTT_TASMOTA_TIMEZONE)
        self.line_topics = list(settings.MQTT_LINE_PROTOCOL_TOPICS)
        self.max_points = settings.MAX_ROWS_PER_UPLOAD
        self.connection_factory = connection_factory
        self.connection = None
        self.setName("mqtt {}".format(self.broker.display()))
        self.is_connected = False
        #: True once the broker answered this connection's subscription
        self.is_subscribed = False
        self.refused_topics: List[Tuple[str, str]] = []
        self.last_problem: Optional[str] = "not connected yet"
        self.generation = 0
        self.pending: Deque[Delivery] = collections.deque()  # this connection's messages, in arrival order
        self.orphans: Dict[int, Delivery] = {}  # messages of an earlier connection, by packet id
        self.in_flight = InFlight()
        # messages the database refused as busy, oldest first: tried again in order, the oldest first
        self.waiting: Deque[Delivery] = collections.deque()
        self.retry_call = None
        self._flush_call = None
        self.probe: Optional[Delivery] = None  # the oldest waiting message, being tried alone
        self.busy_streak = 0
        self.stopping = False
        self.counters: Dict[str, Any] = {
            "messages": 0,
            "redeliveries": 0,
            "rejoined": 0,
            "connects": 0,
            "reconnects": 0,
            "connect_failures": 0,
            "acks": 0,
            "store_retries": 0,
            "outcomes": collections.Counter(),
            "refused": collections.Counter(),
        }
        self.sources = Counters()
        self.reject_log = RejectLog(log, reactor, settings.TRANSPORT_LOG_INTERVAL)

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        """Start connecting; a broker that is down is waited for."""
        super().startService()
        self.stopping = False
        self.connection = self.connection_factory(
            self.reactor,
            self,
            self.broker,
            self.client_id,
            [(topic, self.qos) for topic in self.topics],
            keepalive=self.settings.MQTT_KEEPALIVE,
            ca_file=self.settings.MQTT_CA_FILE,
            protocol=self.settings.MQTT_PROTOCOL,
            receive_maximum=self.settings.MQTT_MAX_INFLIGHT,
            reconnect_max=self.settings.MQTT_RECONNECT_MAX_SECONDS,
        )
        log.info(
            "Connecting to the MQTT broker {broker} as {client_id}, topics {topics}",
            broker=self.broker.display(),
            client_id=self.client_id,
            topics=", ".join(self.topics),
        )
        self.connection.start()

    @defer.inlineCallbacks
    def stopService(self):
        """
        Take no more messages, let those on their way to the database finish
        (at most SHUTDOWN_GRACE_SECONDS) and acknowledge them, then disconnect.
        Messages still waiting are not acknowledged: the broker keeps them.
        """
        super().stopService()
        self.stopping = True
        if self.retry_call is not None and self.retry_call.active():
            self.retry_call.cancel()  # messages waiting for the database stay unacknowledged: the broker keeps them
        self.retry_call = None
        self.waiting.clear()
        self.probe = None
        idle = self.in_flight.idle()
        timer = self.reactor.callLater(self.settings.SHUTDOWN_GRACE_SECONDS, idle.cancel)
        try:
            yield idle
        except defer.CancelledError:
            log.warn("Stopping MQTT with {n} messages still on their way to the database; the broker sends them again",
                     n=self.in_flight.count)
        if timer.active():
            timer.cancel()
        if self._flush_call is not None:
            self._flush_call.cancel()
            self._flush()  # the PUBACKs of what was committed go out before the disconnect
        connection, self.connection = self.connection, None
        if connection is not None:
            yield connection.stop()
        self.is_connected = False

    # -- what the connection reports (on the reactor thread) -----------------

    def connected(self, session_present: bool) -> None:
        """Connected (again): count it, and forget earlier messages if the broker lost the session."""
        self.counters["connects"] += 1
        if self.counters["connects"] > 1:
            self.counters["reconnects"] += 1
        self.is_connected = True
        self.last_problem = None
        if not session_present:
            self.orphans.clear()  # the broker kept nothing for us: nothing will come again
        log.info(
            "Connected to the MQTT broker {broker} as {client_id} ({session})",
            broker=self.broker.display(),
            client_id=self.client_id,
            session="session resumed" if session_present else "new session",
        )

    def connect_failed(self, reason: str) -> None:
        """A connection attempt failed; paho tries again after a growing delay."""
        self.counters["connect_failures"] += 1
        first = self.last_problem != reason
        self.last_problem = reason
        if first:
            log.warn("Cannot connect to the MQTT broker {broker}: {reason}; retrying", broker=self.broker.display(), reason=reason)

    def disconnected(self, reason: str) -> None:
        """The connection went away: its unacknowledged messages may come again (joined, not stored twice)."""
        was = self.is_connected
        self.is_connected = self.is_subscribed = False
        self.generation += 1
        for delivery in self.pending:
            self.orphans[delivery.message.mid] = delivery
        self.pending.clear()
        if len(self.orphans) > 4 * self.settings.MQTT_MAX_INFLIGHT:  # bounded: the oldest go first
            for mid in list(self.orphans)[: len(self.orphans) - 4 * self.settings.MQTT_MAX_INFLIGHT]:
                del self.orphans[mid]
        if was and not self.stopping:
            self.last_problem = "disconnected: {}".format(reason)
            log.warn("Lost the MQTT broker {broker}: {reason}; reconnecting", broker=self.broker.display(), reason=reason)

    def subscribed(self, failures: List[Tuple[str, str]]) -> None:
        """The broker answered the subscription; refused filters are logged as errors (and /health shows them)."""
        self.is_subscribed = True
        self.refused_topics = failures
        for topic, reason in failures:
            log.error("The MQTT broker refused the subscription to {topic}: {reason}", topic=topic, reason=reason)

    def message_received(self, message: Message) -> None:
        """One message from the network thread: map it, store it, acknowledge it in order."""
        try:
            self._received(message)
        except Exception:
            log.failure("Unexpected error handling an MQTT message on {topic}", topic=message.topic)

    # -- the work -------------------------------------------------------------

    def _received(self, message: Message) -> None:
        self.counters["messages"] += 1
        if message.dup:
            self.counters["redeliveries"] += 1
        if self.stopping:
            return  # not acknowledged: the broker keeps it for the next start
        orphan = self.orphans.pop(message.mid, None) if self.orphans else None
        if orphan is not None and orphan.same(message):
            # sent again after a reconnect while (or after) the first copy was stored: one copy only
            self.counters["rejoined"] += 1
            orphan.generation = self.generation
            self.pending.append(orphan)
            self._flush()
            return
        delivery = Delivery(message, self.generation)
        if message.qos:
            self.pending.append(delivery)
        self._process(delivery)

    def _process(self, delivery: Delivery) -> None:
        message = delivery.message
        if message.topic is None:
            return self._settle(delivery, REFUSED, IngestError(400, "topic", "The topic is not UTF-8 text"))
        try:
            mapped = map_message(
                message, self.box_column, self.local_time, self.line_topics, self.reactor.seconds(), self.max_points
            )
        except NotData as e:
            log.debug("Not data on {topic}: {why}", topic=message.topic, why=e.why)
            return self._settle(delivery, NOT_DATA)
        except Exception as e:
            return self._settle(delivery, REFUSED, refusal(e))
        label = "mqtt:" + (mapped_source(message.topic, mapped.convention))[:MAX_LABEL]
        trusted = bool(self.trusted) and any(topic_matches(f, message.topic) for f in self.trusted)
        delivery.work = (mapped, label, trusted)
        if self.waiting:
            self.waiting.append(delivery)  # no overtaking the messages that wait for the database
            return
        self._ingest(delivery)

    def _ingest(self, delivery: Delivery) -> None:
        delivery.attempts += 1
        d = defer.maybeDeferred(self._call_ingest, *delivery.work)
        d.addCallbacks(self._stored, self._failed, callbackArgs=(delivery,), errbackArgs=(delivery,))
        self.in_flight.track(d)
        d.addErrback(lambda f: log.failure("Unexpected error settling an MQTT message", f))

    def _call_ingest(self, mapped, label: str, trusted: bool) -> defer.Deferred:
        upload = Upload(
            mapped.body,
            mapped.content_type,
            mapped.headers,
            label,
            signed=None if mapped.signed is mapped.body else mapped.signed,
            extra_columns=mapped.columns or {},
            node=label,  # SEQUENCE_FIELD numbers count per topic
            vouched_by="mqtt-broker" if trusted else None,
        )
        return self.ingest.ingest(upload)

    def _stored(self, receipt, delivery: Delivery) -> None:
        if delivery is self.probe:
            self.probe = None
            self.busy_streak = 0
            self._retry_waiting()  # the database took the oldest again: the rest follow, in order
        self.sources.source(source_of(delivery.message.topic)).rows += receipt.rows
        repeat = getattr(receipt, "replayed", False) or getattr(receipt, "duplicate", None)
        self._settle(delivery, DUPLICATE if repeat else STORED)

    def _failed(self, failure, delivery: Delivery) -> None:
        error = failure.value
        if isinstance(error, IngestError) and error.status == 503:
            if self.stopping:
                return  # not acknowledged: the broker sends it again
            # the database is busy or stalled: keep the message unacknowledged and try again later
            self.counters["store_retries"] += 1
            self._wait_for_database(delivery)
            return
        if not isinstance(error, IngestError):
            log.failure("Ingest failed on an MQTT message on {topic}", failure, topic=delivery.message.topic)
            error = IngestError(500, "internal", "The server failed on this message; nothing was saved")
        self._settle(delivery, REFUSED, error)

    def _wait_for_database(self, delivery: Delivery) -> None:
        """
        Queue a message the database refused as busy.  After a growing delay
        the oldest waiting one is tried alone; once it is stored, the others
        follow in their order.
        """
        if delivery is self.probe:
            self.probe = None
            self.waiting.appendleft(delivery)  # still the oldest
        else:
            self.waiting.append(delivery)
        if self.retry_call is None and self.probe is None:
            delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** min(self.busy_streak, 10))
            self.busy_streak += 1
            self.retry_call = self.reactor.callLater(delay, self._retry_oldest)

    def _retry_oldest(self) -> None:
        self.retry_call = None
        if self.waiting and not self.stopping:
            self.probe = self.waiting.popleft()
            self._ingest(self.probe)

    def _retry_waiting(self) -> None:
        waiting, self.waiting = self.waiting, collections.deque()
        while waiting and not self.stopping:
            self._ingest(waiting.popleft())

    def _settle(self, delivery: Delivery, outcome: str, error: Optional[IngestError] = None) -> None:
        delivery.outcome = outcome
        if delivery is self.probe:  # the oldest waiting message was refused for good: the others go on
            self.probe = None
            self._retry_waiting()
        self.counters["outcomes"][outcome] += 1
        source = self.sources.source(source_of(delivery.message.topic))
        source.messages += 1
        if error is not None:
            self.counters["refused"][error.reason] += 1
            source.rejects[error.reason] += 1
            self.reject_log.reject(str(delivery.message.topic)[:MAX_LABEL], error.reason, error.message, "mqtt")
        if delivery.generation == self.generation and self._flush_call is None:
            # at the end of this reactor turn: a group commit settles many messages, one batch of PUBACKs
            self._flush_call = self.reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        """Acknowledge settled messages from the oldest on, stopping at the first still unsettled."""
        self._flush_call = None
        pending = self.pending
        acks = []
        while pending and pending[0].outcome is not None:
            message = pending.popleft().message
            acks.append((message.mid, message.qos))
        if acks and self.connection is not None:
            self.connection.ack(acks)
            self.counters["acks"] += len(acks)

    # -- reports --------------------------------------------------------------

    def health(self) -> Dict[str, Any]:
        """/health: ok while connected to the broker."""
        ok = self.is_connected and self.is_subscribed and not self.refused_topics
        out: Dict[str, Any] = {
            "name": self.name,
            "kind": "mqtt",
            "ok": ok,
            "broker": self.broker.display(),
            "client_id": self.client_id,
            "unacknowledged": len(self.pending),
        }
        if not self.is_connected:
            out["reason"] = "MQTT broker {} is not connected ({})".format(self.broker.display(), self.last_problem)
        elif not self.is_subscribed:
            out["reason"] = "MQTT broker {} has not confirmed the subscription yet".format(self.broker.display())
        elif self.refused_topics:
            out["reason"] = "MQTT broker {} refused the subscription to {}".format(
                self.broker.display(), ", ".join(topic for topic, _ in self.refused_topics)
            )
        return out

    def stats(self) -> Dict[str, Any]:
        """Counters for /metrics: per topic (``sources``) and the connection's (``mqtt``)."""
        c = self.counters
        return {
            "sources": self.sources.as_dict(),
            "mqtt": {
                "broker": self.broker.display(),
                "is_connected": self.is_connected,
                "messages": c["messages"],
                "outcomes": dict(c["outcomes"]),
                "refused": dict(c["refused"]),
                "redeliveries": c["redeliveries"],
                "rejoined": c["rejoined"],
                "reconnects": c["reconnects"],
                "connect_failures": c["connect_failures"],
                "acks": c["acks"],
                "store_retries": c["store_retries"],
                "unacknowledged": len(self.pending),
            },
        }

    def idle(self) -> defer.Deferred:
        """Fires once no message is on its way to the database (tests)."""
        return self.in_flight.idle()


def mapped_source(topic: str, convention: str) -> str:
    """The transport label's topic: an ESPHome node's sensors share one (``node/sensor/+/state``)."""
    if convention == ESPHOME:
        levels = topic.split("/")
        return "/".join(levels[:-2] + ["+", levels[-1]])
    return topic


def source_of(topic: Optional[str]) -> str:
    """The counters' key for a topic (bounded in length)."""
    return (topic or "<not UTF-8>")[:MAX_LABEL]


def mqtt_service(ingest, settings, reactor, broker: Optional[str] = None, topics: Optional[Sequence[str]] = None) -> MQTTService:
    """The MQTT service for ``--mqtt``/``MQTT_BROKER`` and ``--mqtt-topic``/``MQTT_TOPICS``."""
    return MQTTService(ingest, settings, reactor, broker=broker, topics=topics)
