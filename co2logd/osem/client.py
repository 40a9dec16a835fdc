"""
The blocking side of the uploader: ``sensemapi`` 0.5.0 and the box/sensor id cache.

Everything here runs on the uploader's own thread (one thread, so the
cache and the ``SenseMapAccount`` are never shared between threads); the
reactor never calls into it directly.

:class:`Account` is ``sensemapi``'s :class:`~sensemapi.account.SenseMapAccount`
with three adjustments, all for running unattended:

* A response hook turns 5xx and 429 replies into :class:`ServerTrouble` /
  :class:`RateLimited` before ``sensemapi`` sees them: its own 429 handling
  sleeps on the thread for ``Retry-After`` and retries once; the uploader
  waits on the reactor instead and keeps its own budget.
* ``post_measurements`` is fed rows ``(sensor_id, value, time)`` and writes
  the CSV without ``sensemapi``'s "each sensor once per request" check: the
  API's CSV route takes time series (up to 2500 lines).
* Garbage collection never signs out over the network (``sensemapi`` does
  that in ``__del__``, which may run on the reactor thread).

Every request gets ``OSEM_REQUEST_TIMEOUT`` for connecting and for each read.
"""

from __future__ import annotations

import datetime
import logging
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple

from sensemapi.account import SenseMapAccount
from sensemapi.errors import (
    NoCredentialsError,
    OpenSenseMapAPIAuthenticationError,
    OpenSenseMapAPIError,
    OpenSenseMapAPIInvalidCredentialsError,
)
from sensemapi.senseBox import senseBox
from sensemapi.sensor import senseBoxSensor
from twisted.logger import Logger

from co2logd.osem.mapping import Entry

log = Logger()

SensorKey = Tuple[str, str, str, str]  # title, unit, type, icon


class ServerTrouble(Exception):
    """The API answered 5xx: retry later."""

    def __init__(self, status: int, message: str):
        super().__init__("HTTP {}: {}".format(status, message))
        self.status = status


class RateLimited(Exception):
    """The API answered 429; ``retry_after`` seconds if it said so."""

    def __init__(self, retry_after: Optional[float]):
        super().__init__("HTTP 429, retry after {}".format(retry_after))
        self.retry_after = retry_after


class Rejected(Exception):
    """The API refused the request for good (4xx with a message)."""

    def __init__(self, message: str, whole_batch: bool = False):
        super().__init__(message)
        self.whole_batch = whole_batch


class BoxGone(Exception):
    """A cached box or sensor no longer exists: refetch and retry."""


class CredentialsRefused(Exception):
    """Missing or wrong OpenSenseMap credentials."""


def _message(response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("code") or body)
    return str(body)


def _retry_after(value: Optional[str]) -> Optional[float]:
    if value is None:
        return None
    m = re.match(r"\s*(\d+(?:\.\d+)?)\s*$", value)
    return float(m.group(1)) if m else None


def format_value(value: float) -> str:
    """A number as the API parses it (no exponent notation)."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = "{:.12f}".format(value).rstrip("0").rstrip(".")
    return text


def format_time(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, as the API expects."""
    t = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "{:03d}Z".format(t.microsecond // 1000)


class Account(SenseMapAccount):
    """``SenseMapAccount`` for unattended use (see the module docstring)."""

    last_status: Optional[int] = None
    last_message: str = ""

    @property
    def session(self):
        session = SenseMapAccount.session.fget(self)
        if not getattr(session, "_co2logd_hooked", False):
            session.hooks["response"].append(self._check_response)
            session._co2logd_hooked = True
        return session

    @session.setter
    def session(self, new):
        SenseMapAccount.session.fset(self, new)

    def _check_response(self, response, *args, **kwargs):
        self.last_status = response.status_code
        self.last_message = _message(response) if response.status_code >= 300 else ""
        if response.status_code == 429:
            header = next((v for k, v in response.headers.items() if re.search("retry.*after$", k, re.I)), None)
            raise RateLimited(_retry_after(header))
        if response.status_code >= 500:
            raise ServerTrouble(response.status_code, self.last_message)
        return response

    def dataframe_to_csv_for_upload(self, measurements, discard_incomplete=False):
        """CSV lines ``sensor_id,value,time`` from ``(sensor_id, value, seconds)`` rows."""
        if hasattr(measurements, "columns"):  # a pandas DataFrame: sensemapi's own way
            return SenseMapAccount.dataframe_to_csv_for_upload(measurements, discard_incomplete)
        return "".join(
            "{},{},{}\n".format(sensor_id, format_value(value), format_time(at))
            for sensor_id, value, at in measurements
        )

    def __del__(self):
        session = self.__dict__.get("_session")
        if session is not None:
            session.close()


def build_account(settings) -> Account:
    """The account from the ``OSEM_*`` credentials, API URL, timeout and token cache."""
    logging.getLogger("sensemapi").setLevel(settings.SENSEMAPI_LOGLEVEL)
    auth_cache = None
    if settings.OSEM_AUTH_CACHE:
        from sensemapi.cache import SQLiteAuthentiCache
        from sensemapi.xdg import XDGPackageDirectory

        directory = settings.OSEM_CACHE_DIR or XDGPackageDirectory(
            name="XDG_CACHE_HOME", packagename="co2logd"
        ).path
        auth_cache = SQLiteAuthentiCache(
            directory=directory,
            name="{}-osem-auth".format(re.sub("[^a-zA-Z0-9_-]", "-", settings.NAME)).lower(),
        )
    kwargs: Dict[str, Any] = {}
    if settings.OSEM_API:
        kwargs["api"] = settings.OSEM_API
    return Account(
        email=settings.OSEM_EMAIL,
        username=settings.OSEM_USERNAME,
        password=settings.OSEM_PASSWORD,
        cache_password=settings.OSEM_CACHE_PASSWORD,
        auth_cache=auth_cache,
        connection_timeout=settings.OSEM_REQUEST_TIMEOUT,
        response_timeout=settings.OSEM_REQUEST_TIMEOUT,
        **kwargs,
    )


def _same_grouptag(current: Any, wanted: str) -> bool:
    # the API keeps grouptags as a list; co2logserver compared it with a
    # string and so rewrote every box on every upload
    if isinstance(current, (list, tuple)):
        return list(current) == [wanted]
    return current == wanted


class BoxPlan:
    """What one batch needs of its box: metadata, position and sensors."""

    def __init__(self, settings, entries: Sequence[Entry]):
        first = entries[0]
        self.name = first.name
        self.box = first.box
        self.exposure = entries[-1].exposure
        self.grouptag = settings.NAME
        self.weblink = settings.OSEM_DEFAULT_WEBLINK
        self.description = settings.OSEM_DEFAULT_DESCRIPTION.format(servername=settings.NAME)
        positioned = [e for e in entries if e.lat is not None or e.lon is not None or e.height is not None]
        last = positioned[-1] if positioned else None
        self.lat = last.lat if last else None
        self.lon = last.lon if last else None
        self.height = last.height if last else None
        keys: Dict[SensorKey, None] = {}
        for e in entries:
            for s in e.sensors:
                keys.setdefault(s.key, None)
        self.sensors: List[SensorKey] = list(keys)


class OsemClient:
    """
    Boxes, sensors and measurements through one :class:`Account` (blocking).

    Box objects are fetched once (``users/me`` + one GET per own box) and
    kept; they are refetched only after :meth:`forget` (a box or sensor gone).
    """

    def __init__(self, settings, account: Optional[Account] = None):
        self.settings = settings
        self.account = account if account is not None else build_account(settings)
        self._boxes: Optional[Dict[str, senseBox]] = None
        self._dirty: set = set()  # boxes changed locally, not yet sent

    # -- the box cache --------------------------------------------------------

    def forget(self) -> None:
        """Drop cached boxes; the next call fetches them again."""
        self._boxes = None
        self._dirty.clear()

    def boxes(self) -> Dict[str, senseBox]:
        """Own boxes by name (fetched once)."""
        if self._boxes is None:
            with self._translated():
                self.account.get_own_boxes()
                self._boxes = {}
                for box in self.account.boxes:
                    if box.name and box.name not in self._boxes:
                        self._boxes[box.name] = box
        return self._boxes

    # -- planning and delivering ------------------------------------------------

    def writes_needed(self, plan: BoxPlan) -> int:
        """How many write requests (POST/PUT) making the box ready takes: 0, 1 or 2."""
        fresh = self._boxes is None
        box = self.boxes().get(plan.name)
        if box is None and not fresh:
            # another gateway on the same database may have created it since
            # the boxes were fetched (docs/postgresql.md): look again first
            self.forget()
            box = self.boxes().get(plan.name)
        if box is None:
            return 2
        if self._apply(box, plan):
            self._dirty.add(plan.name)
        return 1 if plan.name in self._dirty else 0

    def deliver(self, plan: BoxPlan, rows: Sequence[Tuple[SensorKey, float, float]]) -> int:
        """
        Make the box and its sensors exist and be current, then post
        ``rows`` (sensor, value, UNIX time) in one CSV request.  Returns the
        number of measurements the API confirmed (all of them), or raises.
        """
        try:
            box = self._ready_box(plan)
        except Exception:
            self.forget()  # the cached box may hold unsent changes: start from the API's view
            raise
        ids = {self._key(s): s.id for s in box.sensors if s.id}
        missing = [k for k in plan.sensors if k not in ids]
        if missing:
            self.forget()
            raise BoxGone("sensors {} missing in box {} after the update".format(missing, box.id))
        csv_rows = [(ids[key], value, at) for key, value, at in rows]
        try:
            with self._translated(data=True):
                self.account.post_measurements(box.id, csv_rows)
        except BoxGone:
            self.forget()
            raise
        return len(csv_rows)

    @staticmethod
    def _key(sensor) -> SensorKey:
        return (sensor.title, sensor.unit, sensor.type, sensor.icon)

    def _apply(self, box: senseBox, plan: BoxPlan) -> bool:
        """Put the plan's metadata and sensors on ``box``; True if anything changed."""
        changed = False
        wanted: Dict[str, Any] = {"exposure": plan.exposure, "weblink": plan.weblink}
        limit = self.settings.OSEM_MAX_POSITION_CHANGE
        for prop, value in (("current_lat", plan.lat), ("current_lon", plan.lon), ("current_height", plan.height)):
            if value is None:
                continue
            current = getattr(box, prop)
            if prop != "current_height" and current is not None and abs(current - value) > limit:
                log.warn(
                    "Box {box}: {prop} changed by more than OSEM_MAX_POSITION_CHANGE; ignoring {value}",
                    box=plan.name, prop=prop, value=value,
                )
                continue
            wanted[prop] = value
        for prop, value in wanted.items():
            if getattr(box, prop) != value:
                setattr(box, prop, value)
                changed = True
        if not _same_grouptag(box.grouptag, plan.grouptag):
            box.grouptag = plan.grouptag
            changed = True
        have = {self._key(s) for s in box.sensors}
        for title, unit, type_, icon in plan.sensors:
            if (title, unit, type_, icon) not in have:
                log.info("Adding sensor {title} ({unit}) to box {box}", title=title, unit=unit, box=plan.name)
                box.add_sensor(senseBoxSensor(title=title, unit=unit, type=type_, icon=icon))
                changed = True
        return changed

    def _ready_box(self, plan: BoxPlan) -> senseBox:
        boxes = self.boxes()
        box = boxes.get(plan.name)
        if box is None:
            box = self._create(plan)
            boxes[plan.name] = box
        elif self._apply(box, plan) or plan.name in self._dirty:
            log.info("Updating box {box} ({id})", box=plan.name, id=box.id)
            self._upload_metadata(box)
            self._dirty.discard(plan.name)
        return box

    def _create(self, plan: BoxPlan) -> senseBox:
        lat, lon = plan.lat, plan.lon
        if lat is None:
            lat = self.settings.DEFAULT_LAT(box=plan.name)
        if lon is None:
            lon = self.settings.DEFAULT_LON(box=plan.name)
        if lat is None or lon is None:
            raise Rejected(
                "No position for the new senseBox {!r}: send lat/lon columns or set DEFAULT_LAT/DEFAULT_LON".format(plan.name),
                whole_batch=True,
            )
        box = senseBox(
            name=plan.name,
            description=plan.description,
            weblink=plan.weblink,
            grouptag=plan.grouptag,
            exposure=plan.exposure,
            current_lat=lat,
            current_lon=lon,
            current_height=plan.height,
        )
        for title, unit, type_, icon in plan.sensors:
            box.add_sensor(senseBoxSensor(title=title, unit=unit, type=type_, icon=icon))
        log.info("Creating box {box} with {n} sensors", box=plan.name, n=len(plan.sensors))
        with self._translated(box_step=True):
            created = self.account.new_box(box)
        # the API ignores weblink on creation (co2logserver sets it afterwards)
        created.description = plan.description
        created.weblink = plan.weblink
        self._upload_metadata(created)
        return created

    def _upload_metadata(self, box: senseBox) -> None:
        # sensemapi sends an existing sensor lacking title/type/unit/icon as
        # "deleted", and the API then deletes it with its measurements: leave
        # such sensors out of the request (omitted sensors are kept as they are)
        unsafe = [s for s in box.sensors if s.id and not all((s.title, s.type, s.unit, s.icon))]
        for s in unsafe:
            log.warn("Box {id}: sensor {sensor} lacks title/type/unit/icon; not sending it", id=box.id, sensor=s.id)
            box.sensors.remove(s)
        with self._translated(box_step=True):
            self.account.update_box_metadata(box)

    # -- error translation ------------------------------------------------------

    def _translated(self, data: bool = False, box_step: bool = False):
        return _Translate(self.account, data, box_step)


class _Translate:
    """Turn sensemapi's exceptions into the uploader's few categories."""

    def __init__(self, account: Account, data: bool, box_step: bool):
        self.account = account
        self.data = data
        self.box_step = box_step

    def __enter__(self):
        self.account.last_status = None
        self.account.last_message = ""

    def __exit__(self, kind, error, tb):
        if error is None or isinstance(error, (ServerTrouble, RateLimited, Rejected, BoxGone)):
            return False
        if isinstance(error, (OpenSenseMapAPIInvalidCredentialsError, NoCredentialsError)):
            raise CredentialsRefused(str(error) or type(error).__name__) from error
        status = self.account.last_status
        message = self.account.last_message or str(error)
        if isinstance(error, OpenSenseMapAPIAuthenticationError):
            raise CredentialsRefused("HTTP {}: {}".format(status, message)) from error
        if isinstance(error, OpenSenseMapAPIError) and status is not None and 400 <= status < 500:
            if status == 404 or re.search("does not belong|not found", message, re.I):
                raise BoxGone(message) from error
            raise Rejected("HTTP {}: {}".format(status, message), whole_batch=self.box_step) from error
        return False
