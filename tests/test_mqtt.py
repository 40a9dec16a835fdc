"""
The MQTT service's logic in memory: a fake connection, a fake ingest, a
``task.Clock``.  Acknowledgement order, busy database, redeliveries,
stopping, options and the client id.
"""

from __future__ import annotations

from twisted.internet import defer, task
from twisted.python import usage
from twisted.trial import unittest

from co2logd.errors import IngestError
from co2logd.ingest import Receipt
from co2logd.tap import Options, load_settings
from co2logd.transports.mqtt import MQTTService, default_client_id
from co2logd.transports.mqtt_payloads import Message
from tests.helpers import make_settings


class FakeConnection:
    """Records what the service asks of a connection; the test plays the broker's part."""

    def __init__(self, reactor, listener, broker, client_id, subscriptions, **options):
        self.listener = listener
        self.client_id = client_id
        self.subscriptions = subscriptions
        self.options = options
        self.acks = []
        self.started = self.stopped = False

    def start(self):
        self.started = True

    def ack(self, acks):
        self.acks.extend(mid for mid, _ in acks)

    def stop(self):
        self.stopped = True
        return defer.succeed(None)


class FakeIngest:
    """Each ingest call gets a Deferred the test fires (or a failure it chose beforehand)."""

    def __init__(self):
        self.calls = []
        self.refuse_with = None

    def ingest(self, upload):
        if self.refuse_with is not None:
            return defer.fail(self.refuse_with)
        d = defer.Deferred()
        self.calls.append((upload.body, upload.transport, d))
        return d


def busy():
    return IngestError(503, "busy", "busy")


class ServiceMixin:
    """A started service on fakes."""

    def make_service(self, **values):
        values.setdefault("MQTT_BROKER", "mqtt://u:pw@broker:1883")
        self.clock = task.Clock()
        self.ingest = FakeIngest()
        self.service = MQTTService(self.ingest, make_settings(**values), self.clock, connection_factory=FakeConnection)
        self.service.startService()
        self.connection = self.service.connection
        self.service.connected(False)
        self.service.subscribed([])
        return self.service

    def receive(self, mid, topic="co2logd/x", payload=b'{"co2": 1}', **kwargs):
        self.service.message_received(Message(topic, payload, mid=mid, **kwargs))
        self.clock.advance(0)

    def commit(self, call: int, receipt=None):
        """The store commits the ``call``-th ingest call; PUBACKs go out at the end of the reactor turn."""
        self.ingest.calls[call][2].callback(receipt or Receipt(1))
        self.clock.advance(0)


class AckOrderTests(ServiceMixin, unittest.TestCase):
    """PUBACKs go out after the commit, in the order the messages came."""

    def test_ack_after_commit_in_order(self):
        """The second message's commit waits for the first's before either is acknowledged."""
        self.make_service()
        self.receive(1)
        self.receive(2)
        self.assertEqual(self.connection.acks, [])
        self.commit(1)
        self.assertEqual(self.connection.acks, [])
        self.commit(0)
        self.assertEqual(self.connection.acks, [1, 2])

    def test_refusals_and_not_data_acknowledged_in_turn(self):
        """A bad payload and a status message are settled at once but acknowledged after the message before them."""
        self.make_service()
        self.receive(1)
        self.receive(2, topic="tele/d/SENSOR", payload=b"nope")
        self.receive(3, topic="tele/d/LWT", payload=b"Online")
        self.assertEqual(self.connection.acks, [])
        self.commit(0)
        self.assertEqual(self.connection.acks, [1, 2, 3])
        self.assertEqual(dict(self.service.counters["outcomes"]), {"stored": 1, "refused": 1, "not-data": 1})

    def test_qos0_never_acknowledged(self):
        """QoS 0 messages are stored but have no PUBACK and hold nothing back."""
        self.make_service(MQTT_QOS=0)
        self.receive(0, qos=0)
        self.receive(5)
        self.commit(1)
        self.assertEqual(self.connection.acks, [5])

    def test_ingest_crash_is_a_refusal(self):
        """An unexpected exception in ingest refuses the message (acknowledged, counted) instead of blocking the rest."""
        self.make_service()
        self.receive(1)
        self.ingest.calls[0][2].errback(ZeroDivisionError())
        self.clock.advance(0)
        self.assertEqual(self.connection.acks, [1])
        self.assertEqual(dict(self.service.counters["refused"]), {"internal": 1})
        self.flushLoggedErrors(ZeroDivisionError)


class BusyTests(ServiceMixin, unittest.TestCase):
    """A busy database holds acknowledgements back; the message is tried again, nothing is dropped."""

    def test_busy_then_stored(self):
        """Refused as busy: no PUBACK; the oldest is tried again after a delay, then the others in order."""
        self.make_service()
        self.ingest.refuse_with = busy()
        self.receive(1)
        self.receive(2)
        self.assertEqual(self.connection.acks, [])
        self.assertEqual([d.message.mid for d in self.service.waiting], [1, 2])
        self.ingest.refuse_with = None
        self.clock.advance(0.2)
        self.clock.advance(0)
        self.assertEqual([c[0] for c in self.ingest.calls], [b'{"co2": 1}'])  # the oldest, alone
        self.commit(0)
        self.assertEqual(len(self.ingest.calls), 2)  # then the rest
        self.commit(1)
        self.assertEqual(self.connection.acks, [1, 2])
        self.assertEqual(self.service.counters["store_retries"], 1)  # the second queued behind without trying

    def test_backoff_grows(self):
        """While the database stays busy, tries come at 0.2, 0.4, 0.8 … seconds, up to 10."""
        self.make_service()
        self.ingest.refuse_with = busy()
        self.receive(1)
        tries = []
        for _ in range(8):
            (call,) = self.clock.getDelayedCalls()
            delay = call.getTime() - self.clock.seconds()
            tries.append(round(delay, 3))
            self.clock.advance(delay)
        self.assertEqual(tries, [0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0])
        self.assertEqual(self.connection.acks, [])

    def test_new_messages_do_not_overtake(self):
        """A message arriving while others wait for the database queues behind them."""
        self.make_service()
        self.ingest.refuse_with = busy()
        self.receive(1)
        self.ingest.refuse_with = None
        self.receive(2)
        self.assertEqual(self.ingest.calls, [])
        self.assertEqual([d.message.mid for d in self.service.waiting], [1, 2])

    @defer.inlineCallbacks
    def test_stop_leaves_waiting_messages_unacknowledged(self):
        """Stopping while the database is busy: no PUBACK for those (the broker keeps them), the connection closes."""
        self.make_service()
        self.ingest.refuse_with = busy()
        self.receive(1)
        yield self.service.stopService()
        self.assertEqual(self.connection.acks, [])
        self.assertTrue(self.connection.stopped)
        self.assertEqual(self.clock.getDelayedCalls(), [])


class RedeliveryTests(ServiceMixin, unittest.TestCase):
    """A message sent again after a reconnect is joined to its first copy."""

    def test_resent_while_first_copy_in_flight(self):
        """Disconnected while the commit was on its way; the broker resends: stored once, acknowledged on the new connection."""
        self.make_service()
        self.receive(7)
        self.service.disconnected("keep-alive timeout")
        self.service.connected(True)
        self.receive(7, dup=True)
        self.assertEqual(len(self.ingest.calls), 1)
        self.commit(0)
        self.assertEqual(self.connection.acks, [7])
        self.assertEqual((self.service.counters["redeliveries"], self.service.counters["rejoined"]), (1, 1))

    def test_resent_after_first_copy_stored(self):
        """Stored just before the connection dropped (PUBACK lost): the resent copy is acknowledged, not stored again."""
        self.make_service()
        self.receive(7)
        self.service.disconnected("gone")
        self.commit(0)
        self.assertEqual(self.connection.acks, [])
        self.service.connected(True)
        self.receive(7, dup=True)
        self.assertEqual(len(self.ingest.calls), 1)
        self.assertEqual(self.connection.acks, [7])

    def test_same_packet_id_other_message(self):
        """A packet id reused for a different message is a new message."""
        self.make_service()
        self.receive(7)
        self.commit(0)
        self.service.disconnected("gone")
        self.service.connected(True)
        self.receive(7, payload=b'{"co2": 2}')
        self.assertEqual(len(self.ingest.calls), 2)

    def test_session_lost_forgets_orphans(self):
        """A broker that lost the session sends nothing again: earlier messages are forgotten."""
        self.make_service()
        self.receive(7)
        self.service.disconnected("gone")
        self.service.connected(False)
        self.assertEqual(self.service.orphans, {})


class ReportTests(ServiceMixin, unittest.TestCase):
    """/health and /metrics material, without the password."""

    def test_health(self):
        """Connected and subscribed: ok; disconnected: the reason, never the password."""
        service = self.make_service()
        self.assertTrue(service.health()["ok"])
        service.disconnected("keep-alive timeout")
        health = service.health()
        self.assertFalse(health["ok"])
        self.assertIn("mqtt://u@broker:1883 is not connected", health["reason"])
        self.assertNotIn("pw", repr(health).replace("pwd", ""))

    def test_refused_subscription(self):
        """A topic the broker refuses makes /health unhealthy, naming it."""
        service = self.make_service()
        service.subscribed([("secret/#", "Not authorized")])
        self.assertIn("secret/#", service.health()["reason"])

    def test_connection_options(self):
        """Topics with the QoS, keep-alive, protocol, receive maximum go to the connection."""
        self.make_service(MQTT_TOPICS=["a/#"], MQTT_KEEPALIVE=30, MQTT_PROTOCOL="3.1.1", MQTT_MAX_INFLIGHT=50)
        self.assertEqual(self.connection.subscriptions, [("a/#", 1)])
        self.assertEqual(
            (self.connection.options["keepalive"], self.connection.options["protocol"], self.connection.options["receive_maximum"]),
            (30, "3.1.1", 50),
        )


class ClientIdTests(unittest.TestCase):
    """The default client id."""

    def test_stable_and_distinct(self):
        """Same host and database: the same id, 23 characters; another database or host: another id."""
        a = default_client_id("/var/lib/co2logd/co2.sqlite", "gw1")
        self.assertEqual(a, default_client_id("/var/lib/co2logd/co2.sqlite", "gw1"))
        self.assertEqual(len(a), 23)
        self.assertTrue(a.startswith("co2logd-"))
        self.assertNotEqual(a, default_client_id("/var/lib/co2logd/other.sqlite", "gw1"))
        self.assertNotEqual(a, default_client_id("/var/lib/co2logd/co2.sqlite", "gw2"))


class OptionTests(unittest.TestCase):
    """--mqtt and --mqtt-topic."""

    def test_options_become_settings(self):
        """--mqtt sets MQTT_BROKER; repeated --mqtt-topic replaces MQTT_TOPICS."""
        options = Options()
        options.parseOptions(["--mqtt", "mqtts://u:p@h", "--mqtt-topic", "a/+", "--mqtt-topic", "b/#"])
        settings = load_settings(options, environ={})
        self.assertEqual((settings.MQTT_BROKER, settings.MQTT_TOPICS), ("mqtts://u:p@h", ["a/+", "b/#"]))

    def test_bad_values(self):
        """A bad URL or filter is one usage error; the password is not repeated."""
        for argv in (["--mqtt", "http://u:hunter2@h"], ["--mqtt", "mqtt://h", "--mqtt-topic", "a/#/b"]):
            with self.assertRaises(usage.UsageError) as caught:
                Options().parseOptions(argv)
            self.assertNotIn("hunter2", str(caught.exception))


class ProcessTitleTests(unittest.TestCase):
    """--mqtt's password stays out of what ps shows."""

    def test_password_starred_out(self):
        """After option parsing, /proc/self/cmdline has the broker password replaced by stars."""
        import os
        import subprocess
        import sys

        from tests.helpers import REPO

        code = (
            "import sys; from co2logd.tap import Options; o = Options(); o.parseOptions(sys.argv[1:]); "
            "sys.stdout.write(open('/proc/self/cmdline').read())"
        )
        result = subprocess.run(
            [sys.executable, "-c", code, "--http", "none", "--mqtt", "mqtt://co2:hunter22@127.0.0.1:1883"],
            env=dict(os.environ, PYTHONPATH=REPO), capture_output=True, timeout=60,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        cmdline = result.stdout.decode()
        self.assertNotIn("hunter22", cmdline)
        self.assertIn("mqtt://co2:********@127.0.0.1:1883", cmdline)
