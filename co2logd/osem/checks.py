"""
OpenSenseMap misconfigurations found at start-up, before an uploader is built.

``OSEM_UPLOAD = True`` needs the ``opensensemap`` extra (``sensemapi``) and
credentials.  Without either, the daemon does not start an uploader that can
only fail: it logs one line, keeps queueing measurements in the outbox (so
nothing is lost once the problem is fixed and the daemon restarted), and
:class:`OsemMisconfigured` reports the problem in ``/health``.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Dict, NamedTuple, Optional

from twisted.application.service import Service
from twisted.logger import Logger, LogLevel
from zope.interface import implementer

from co2logd.status.interfaces import IHealthReporter

log = Logger()

EXTRA_HINT = "pip install 'co2logd[opensensemap]' (or '.[opensensemap]' in the source directory)"


class OsemProblem(NamedTuple):
    """A reason OpenSenseMap forwarding cannot work: a log level and one sentence."""

    level: LogLevel
    message: str


def _import(name: str) -> Any:
    return importlib.import_module(name)


def osem_problem(settings, import_module: Callable[[str], Any] = _import) -> Optional[OsemProblem]:
    """
    Why forwarding configured by ``settings`` cannot work, or None.

    The client module is imported for real, so a ``sensemapi`` that is
    installed but broken (a dependency missing) counts as missing too.
    """
    try:
        import_module("co2logd.osem.client")
    except ImportError as e:
        return OsemProblem(
            LogLevel.error,
            "CO2LOGSERVER_OSEM_UPLOAD is on but the OpenSenseMap client is not installed "
            "(cannot import {}): {}; measurements wait in the outbox".format(e.name or e, EXTRA_HINT),
        )
    if not (settings.OSEM_EMAIL or settings.OSEM_USERNAME) or not settings.OSEM_PASSWORD:
        return OsemProblem(
            LogLevel.warn,
            "CO2LOGSERVER_OSEM_UPLOAD is on but OpenSenseMap credentials are missing: set "
            "CO2LOGSERVER_OSEM_EMAIL or CO2LOGSERVER_OSEM_USERNAME and CO2LOGSERVER_OSEM_PASSWORD "
            "(or $SENSEMAP_EMAIL/$SENSEMAP_USERNAME and $SENSEMAP_PASSWORD); measurements wait in the outbox",
        )
    return None


@implementer(IHealthReporter)
class OsemMisconfigured(Service):
    """
    Stands in for the uploader when forwarding cannot work: logs the problem
    once at start-up and reports it in ``/health`` (not ok, so 503).
    """

    name = "opensensemap"

    def __init__(self, problem: OsemProblem):
        self.problem = problem

    def startService(self) -> None:
        super().startService()
        log.emit(self.problem.level, "{problem}", problem=self.problem.message)

    def nudge(self) -> None:
        """Nothing to wake: measurements stay in the outbox."""

    def health(self) -> Dict[str, Any]:
        """The problem, for /health."""
        return {"name": self.name, "kind": "opensensemap", "ok": False, "reason": self.problem.message}
