"""
The OpenSenseMap uploader: drains the outbox, one batch at a time.

A cycle: fetch the oldest outbox entries → take those of the first entry's
box, up to ``OSEM_BATCH_SIZE`` measurements → ask the client (on the
uploader's own thread) how many write requests making the box ready takes
→ wait for that many tokens plus one of the request budget → deliver (create
or update the box, post the CSV) on the thread → delete the entries once
the API answered 201.  Never two batches in flight.

Failures:

* connection errors, timeouts, 5xx, 429 and anything unexpected: the entries
  stay; retry after exponential backoff with jitter (at least ``Retry-After``);
* refused credentials: logged as an error, retried after
  ``OSEM_AUTH_RETRY_SECONDS``;
* a permanent rejection (4xx with a message): the batch is halved until the
  refused entry is alone, which goes to the dead-letter table with the
  API's reason; a refused box (e.g. no position for a new box) dead-letters
  the whole batch.

Delivery is exactly once except in two windows no client can close: the
process dies between the API's 201 and the outbox delete, or a request
times out after the API stored it.  Then the entries are sent again.
"""

from __future__ import annotations

import random as random_module
import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import requests
from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.interfaces import IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from co2logd.logs import gate
from co2logd.osem.client import (
    BoxGone,
    BoxPlan,
    CredentialsRefused,
    OsemClient,
    RateLimited,
    Rejected,
    ServerTrouble,
)
from co2logd.osem.mapping import Entry
from co2logd.status.interfaces import IForwarderStats

log = Logger(observer=gate)

# entries fetched per cycle: enough to fill a batch of one box even when
# several boxes interleave
FETCH_ENTRIES = 5000


class TokenBucket:
    """
    A request budget: ``rate`` tokens per second, at most ``capacity`` saved.

    In any window of ``t`` seconds at most ``capacity + rate * t`` requests
    pass; with the defaults (10/min, burst 4) that is 14 per minute, under the
    API's 15 POSTs per minute per address.
    """

    def __init__(self, clock: IReactorTime, rate: float, capacity: float):
        self.clock = clock
        self.rate = rate
        self.capacity = capacity
        self.tokens = capacity
        self.updated = clock.seconds()

    def _refill(self) -> None:
        now = self.clock.seconds()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now

    def delay(self, n: float) -> float:
        """Seconds until ``n`` tokens (at most a full bucket) are available."""
        self._refill()
        missing = min(n, self.capacity) - self.tokens
        return max(0.0, missing / self.rate)

    def take(self, n: float) -> None:
        """Spend ``n`` tokens (the balance may go below zero: later calls wait longer)."""
        self._refill()
        self.tokens -= n


def _daemon_thread(*args, **kwargs) -> threading.Thread:
    # a request stuck past the shutdown bound must not keep the process alive
    thread = threading.Thread(*args, **kwargs)
    thread.daemon = True
    return thread


@implementer(IForwarderStats)
class OsemUploader(Service):
    """
    Drains the store's outbox to the OpenSenseMap (see the module docstring).

    :param settings: :class:`co2logd.settings.Settings` (``OSEM_*``)
    :param store: :class:`co2logd.store.Store` (outbox methods)
    :param reactor: runs thread results back on the reactor thread
    :param clock: timers and "now"; defaults to ``reactor``
    :param client: a blocking client with ``writes_needed(plan)``,
        ``deliver(plan, rows)`` and ``forget()``; default: an
        :class:`~co2logd.osem.client.OsemClient` from the settings
    :param rng: ``random.Random`` for jitter
    :param run_blocking: ``run_blocking(f, *args)`` → Deferred of ``f(*args)``;
        default: on the uploader's own thread.  Tests with an in-memory
        client pass ``defer.maybeDeferred`` and run on a ``task.Clock``.
    """

    name = "osem-uploader"

    def __init__(
        self, settings, store, reactor, clock=None, client=None, rng: Optional[random_module.Random] = None,
        run_blocking: Optional[Callable[..., defer.Deferred]] = None,
    ):
        self.settings = settings
        self.store = store
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self._client = client
        self.rng = rng or random_module.Random()
        self._run_blocking = run_blocking
        self.bucket = TokenBucket(self.clock, settings.OSEM_REQUESTS_PER_MINUTE / 60.0, settings.OSEM_REQUEST_BURST)
        self.pool: Optional[ThreadPool] = None
        self.failures = 0
        self.entry_limit: Optional[int] = None  # while bisecting a rejected batch
        self.counters: Dict[str, int] = {"delivered": 0, "requests": 0, "failures": 0, "dead_letters": 0}
        self.last_stats: Dict[str, Any] = {}
        self._cycle: Optional[defer.Deferred] = None
        self._next: Optional[Any] = None
        self._stats_loop: Optional[task.LoopingCall] = None
        self._credentials_reported = False
        self._abandoned = False
        self._on_cycle_end: Optional[Callable[[], None]] = None
        self._idle = False  # the last cycle found the outbox empty

    @classmethod
    def from_settings(cls, settings, store, reactor) -> "OsemUploader":
        """The uploader of a daemon: the reactor as clock, sensemapi from the settings."""
        return cls(settings, store, reactor)

    @property
    def client(self):
        """The blocking OpenSenseMap client (built on first use, on the thread)."""
        return self._client

    # -- service ----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._abandoned = False
        if self._run_blocking is None:
            self.pool = ThreadPool(minthreads=1, maxthreads=1, name="co2logd-osem")
            self.pool.threadFactory = _daemon_thread  # type: ignore[assignment]  # a factory with Thread's signature
            self.pool.start()
        self._stats_loop = task.LoopingCall(self.log_stats)
        self._stats_loop.clock = self.clock
        self._stats_loop.start(self.settings.OSEM_STATS_SECONDS, now=False).addErrback(
            lambda f: log.failure("Outbox statistics stopped", f)
        )
        self.wake()

    def stopService(self) -> defer.Deferred:
        """Stop; wait for the batch in flight, at most ``OSEM_REQUEST_TIMEOUT`` + 1 s."""
        super().stopService()
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        if self._stats_loop is not None and self._stats_loop.running:
            self._stats_loop.stop()
        pool = self.pool
        cycle = self._cycle
        if cycle is None:
            if pool is not None:
                pool.stop()
            return defer.succeed(None)
        done: defer.Deferred = defer.Deferred()
        bound = self.settings.OSEM_REQUEST_TIMEOUT + 1.0

        def finished(_=None):
            if not done.called:
                timer.cancel()
                if pool is not None:
                    pool.stop()
                done.callback(None)

        def too_long():
            self._abandoned = True
            log.warn(
                "OpenSenseMap batch still in flight after {seconds}s; stopping anyway (its entries stay queued)",
                seconds=bound,
            )
            done.callback(None)

        timer = self.clock.callLater(bound, too_long)
        self._on_cycle_end = finished
        return done

    # -- the loop -----------------------------------------------------------------

    def wake(self) -> None:
        """Look at the outbox now (e.g. right after an upload); no-op while a batch runs."""
        if not self.running or self._cycle is not None:
            return
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = None
        self._cycle = self._run_cycle()
        self._cycle.addBoth(self._cycle_ended)

    def nudge(self) -> None:
        """
        New entries were queued: drain now if the uploader is only polling an
        empty outbox.  Never cuts a backoff or a budget wait short.
        """
        if self._idle:
            self.wake()

    def _schedule(self, delay: float) -> None:
        if not self.running:
            return
        if self._next is not None and self._next.active():
            self._next.cancel()
        self._next = self.clock.callLater(delay, self.wake)

    def _cycle_ended(self, result):
        self._cycle = None
        hook = self._on_cycle_end
        if hook is not None:
            self._on_cycle_end = None
            hook()
            return None
        if isinstance(result, float):
            self._schedule(result)
        else:
            if result is not None:
                log.failure("OpenSenseMap upload cycle failed", result)
            self._schedule(self._backoff())
        return None

    def _in_thread(self, f: Callable, *args) -> defer.Deferred:
        if self._run_blocking is not None:
            return self._run_blocking(f, *args)
        if self.pool is None:
            return defer.fail(RuntimeError("the uploader is not running"))
        return deferToThreadPool(self.reactor, self.pool, f, *args)

    def _get_client(self):
        if self._client is None:
            self._client = OsemClient(self.settings)
        return self._client

    @defer.inlineCallbacks
    def _run_cycle(self):
        """One batch; returns the delay until the next cycle."""
        self._idle = False
        rows = yield self.store.outbox_fetch(FETCH_ENTRIES)
        if not rows:
            self._idle = True
            return float(self.settings.OSEM_POLL_SECONDS)
        batch, malformed = self._take_batch(rows)
        if malformed:
            yield self._dead_letter(malformed)
            return 0.0
        ids = [i for i, _ in batch]
        entries = [e for _, e in batch]
        plan = BoxPlan(self.settings, entries)
        measurements = [(s.key, s.value, e.time) for e in entries for s in e.sensors]
        try:
            client = yield self._in_thread(self._get_client)
            writes = yield self._in_thread(client.writes_needed, plan)
            yield self._spend(1 + writes)
            if not self.running:
                return 0.0
            self.counters["requests"] += 1 + writes
            delivered = yield self._in_thread(client.deliver, plan, measurements)
        except Exception as e:
            return (yield self._failed(e, batch))
        if self._abandoned:
            log.warn("A late OpenSenseMap confirmation after shutdown: {n} entries will be sent again", n=len(ids))
            return 0.0
        yield self.store.outbox_delete(ids)
        self.counters["delivered"] += delivered
        self.failures = 0
        self._credentials_reported = False
        if self.entry_limit is not None:
            self.entry_limit = self.entry_limit * 2
        log.debug("Delivered {n} measurements to box {box}", n=delivered, box=plan.name)
        return 0.0

    def _take_batch(self, rows) -> Tuple[List[Tuple[int, Entry]], List[Tuple[int, str]]]:
        """The first box's entries up to the batch size; malformed entries separately."""
        batch: List[Tuple[int, Entry]] = []
        malformed: List[Tuple[int, str]] = []
        name = None
        count = 0
        limit = self.settings.OSEM_BATCH_SIZE
        for entry_id, _queued_at, text in rows:
            try:
                entry = Entry.decode(text)
            except (ValueError, KeyError, TypeError) as e:
                malformed.append((entry_id, "malformed outbox entry: {}".format(e)))
                continue
            if name is None:
                name = entry.name
            elif entry.name != name:
                continue
            if batch and count + len(entry.sensors) > limit:
                break
            if self.entry_limit is not None and len(batch) >= self.entry_limit:
                break
            batch.append((entry_id, entry))
            count += len(entry.sensors)
        return batch, malformed

    def _spend(self, n: int) -> defer.Deferred:
        """Wait until the budget allows ``n`` write requests, then spend them."""
        wait = self.bucket.delay(n)
        if wait > 0:
            log.debug("Request budget: waiting {wait:.1f}s", wait=wait)
            return task.deferLater(self.clock, wait, self.bucket.take, n)
        self.bucket.take(n)
        return defer.succeed(None)

    # -- failures -------------------------------------------------------------------

    def _backoff(self, at_least: float = 0.0) -> float:
        s = self.settings
        self.failures += 1
        delay = min(s.OSEM_BACKOFF_MAX, s.OSEM_BACKOFF_BASE * 2 ** (self.failures - 1))
        delay *= 0.5 + 0.5 * self.rng.random()
        return max(delay, at_least)

    @defer.inlineCallbacks
    def _failed(self, error: Exception, batch: List[Tuple[int, Entry]]):
        self.counters["failures"] += 1
        if isinstance(error, Rejected):
            if error.whole_batch or len(batch) == 1:
                yield self._dead_letter([(i, str(error)) for i, _ in batch])
                self.entry_limit = None
            else:
                self.entry_limit = max(1, len(batch) // 2)
                log.info(
                    "The OpenSenseMap refused a batch of {n} entries ({reason}); retrying in halves to find the refused ones",
                    n=len(batch), reason=str(error),
                )
            return 0.0
        if isinstance(error, CredentialsRefused):
            if not self._credentials_reported:
                log.error(
                    "The OpenSenseMap refused the credentials (OSEM_EMAIL/OSEM_USERNAME/OSEM_PASSWORD): {reason}; "
                    "retrying every {seconds}s, uploads stay queued",
                    reason=str(error), seconds=self.settings.OSEM_AUTH_RETRY_SECONDS,
                )
                self._credentials_reported = True
            return float(self.settings.OSEM_AUTH_RETRY_SECONDS)
        if isinstance(error, BoxGone):
            log.info("A senseBox or sensor changed on the OpenSenseMap ({reason}); fetching boxes again", reason=str(error))
            return self._backoff()
        retry_after = error.retry_after if isinstance(error, RateLimited) and error.retry_after else 0.0
        delay = self._backoff(retry_after)
        if isinstance(error, (RateLimited, ServerTrouble, requests.exceptions.RequestException)):
            log.warn(
                "OpenSenseMap not reachable or busy ({reason}); retrying in {delay:.1f}s",
                reason=str(error) or type(error).__name__, delay=delay,
            )
        else:
            log.error(
                "Unexpected error while uploading to the OpenSenseMap: {kind}: {reason}; retrying in {delay:.1f}s",
                kind=type(error).__name__, reason=str(error), delay=delay,
            )
        return delay

    def _dead_letter(self, failures: List[Tuple[int, str]]) -> defer.Deferred:
        for entry_id, reason in failures:
            log.warn("OpenSenseMap dead letter {id}: {reason}", id=entry_id, reason=reason)
        self.counters["dead_letters"] += len(failures)
        return self.store.outbox_dead_letter(failures, self.clock.seconds())

    # -- visibility ---------------------------------------------------------------------

    @defer.inlineCallbacks
    def log_stats(self):
        """Log outbox depth, age of the oldest entry and dead letters (never raises)."""
        try:
            stats = yield self.store.outbox_stats()
        except Exception:
            log.failure("Could not read the outbox statistics")
            return
        oldest = stats.get("oldest_queued_at")
        age = self.clock.seconds() - oldest if oldest is not None else 0.0
        self.last_stats = dict(stats, oldest_age=age, **self.counters)
        log.info(
            "OpenSenseMap outbox: {depth} entries queued, oldest {age:.0f}s old, {dead} dead letters, "
            "{delivered} measurements delivered since start",
            depth=stats.get("depth"), age=age, dead=stats.get("dead_letters"), delivered=self.counters["delivered"],
        )
