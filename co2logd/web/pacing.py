"""
Readers take their turn: dashboard pages and plots are served at most
``VIEWS_PER_SECOND`` a second, all clients together, so clients polling the
dashboard back to back cannot crowd uploads out of the reactor (each view
costs database reads and rendering on the reactor thread).  A view beyond the rate waits for its slot on the clock; when
more than ``VIEWS_PER_SECOND × VIEWS_MAX_WAIT_SECONDS`` views wait, the next
is refused at once with a 503 ``busy`` and ``Retry-After``.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET

from co2logd.web.common import allowed_methods, error_reply, finish_quietly


log = Logger()


class ViewPacer:
    """
    Hands out evenly spaced slots of ``1/rate`` seconds on ``clock``;
    :meth:`admit` says when a view may run, or that it must be refused.
    A ``rate`` of 0 admits every view at once.
    """

    def __init__(self, clock: IReactorTime, rate: float, max_wait: float):
        self.clock = clock
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self.max_wait = max_wait
        self._next_slot = 0.0

    def admit(self) -> Optional[float]:
        """Seconds this view waits for its slot (0: now), or None when it would wait longer than ``max_wait``."""
        if not self.interval:
            return 0.0
        now = self.clock.seconds()
        slot = max(now, self._next_slot)
        wait = slot - now
        if wait > self.max_wait:
            return None
        self._next_slot = slot + self.interval
        return wait


class PacedResource(Resource):
    """Serves ``wrapped`` (a leaf) once :class:`ViewPacer` gives the request its slot."""

    isLeaf = True

    def __init__(self, wrapped: IResource, pacer: ViewPacer):
        super().__init__()
        self.wrapped = wrapped
        self.pacer = pacer
        self.allowed_methods = allowed_methods(wrapped)

    def render(self, request) -> Any:
        if request.method not in (b"GET", b"HEAD"):
            return self.wrapped.render(request)  # a 405 costs nothing worth pacing
        wait = self.pacer.admit()
        if wait is None:
            request.setHeader(b"retry-after", b"1")
            return error_reply(request, 503, "too many dashboard and plot views at once; try again shortly", "busy")
        if wait <= 0:
            return self.wrapped.render(request)
        call = self.pacer.clock.callLater(wait, self._render_late, request)
        request.notifyFinish().addErrback(lambda _: call.cancel() if call.active() else None)
        return NOT_DONE_YET

    def _render_late(self, request) -> None:
        try:
            body = self.wrapped.render(request)
        except Exception:
            log.failure("Rendering {path} failed", path=request.path)
            request.setResponseCode(500)
            finish_quietly(request)
            return
        if body is not NOT_DONE_YET:
            finish_quietly(request, body)


__all__ = ["PacedResource", "ViewPacer"]
