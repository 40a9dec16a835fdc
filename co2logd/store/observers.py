"""Write observers (metrics, activity): told of every answered write, never able to change its answer."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence, TypeVar

from twisted.logger import Logger
from twisted.python.failure import Failure

from co2logd.store.interfaces import WriteObserver

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

log = Logger()

T = TypeVar("T")


def observed(d: "Deferred[T]", observers: Sequence[WriteObserver], now: Callable[[], float], started: float) -> "Deferred[T]":
    """
    ``d``, which on its answer calls each of ``observers`` with the seconds
    since ``started`` and the rows stored (None when the write failed).  An
    observer that raises is logged; the write's answer passes on unchanged.
    """
    if not observers:
        return d

    def answered(result: Any) -> Any:
        seconds = now() - started
        rows = None if isinstance(result, Failure) else result
        for observer in observers:
            try:
                observer(seconds, rows)
            except Exception:
                log.failure("A write observer failed")
        return result

    return d.addBoth(answered)
