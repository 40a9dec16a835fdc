"""
OpenSenseMap forwarding: store-and-forward through a durable outbox.

* :mod:`co2logd.osem.mapping` turns stored rows into outbox entries with
  co2logserver 0.1.2's mapping rules (``OSEM_*`` settings and hooks); the
  ingest service writes them in the same transaction as the data.
* :mod:`co2logd.osem.uploader` drains the outbox with the ``sensemapi``
  client on a thread pool of its own: batches, retries, a request budget,
  dead letters.
* :class:`co2logd.testing.FakeOpenSenseMap` is a faithful fake OpenSenseMap API for tests and
  benchmarks.
"""

from co2logd.osem.mapping import outbox_entries_for

__all__ = ["outbox_entries_for"]
