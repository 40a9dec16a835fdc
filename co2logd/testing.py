"""
Verified fakes shipped with co2logd, for its own tests and for anyone who
builds on it.  Each one is exercised by the suite against the real thing's
interface.

* :class:`FakeSerialDevices`: a bench of serial devices a test plugs in,
  writes to and unplugs; its :meth:`~FakeSerialDevices.open` is a
  ``port_factory`` for :class:`co2logd.transports.serial.SerialService`
  (``tests/test_serial.py`` runs it beside real pseudo-terminals).
* :class:`FakeOsemClient`: the OpenSenseMap client the uploader drives
  (``writes_needed``, ``deliver``, ``forget``), in memory and synchronous,
  so uploader tests run on a ``task.Clock`` (checked against the real
  :class:`~co2logd.osem.client.OsemClient` talking to
  :class:`FakeOpenSenseMap` on loopback by one contract suite,
  ``tests/osem_client_contract.py``).
* :class:`FakeOpenSenseMap` / :func:`listen_fake_opensensemap`: the
  endpoints ``sensemapi`` 0.5.0 uses, as a twisted.web resource on loopback
  (checked with the real client in ``tests/test_osem_fake.py``).  It is
  faithful to what the client sends and reads (``docs/opensensemap.md``):
  sign-in, token refresh with the real API's 403 "Invalid JWT
  authorization…" semantics, ``users/me``, ``GET boxes/{id}?format=json``,
  ``POST boxes`` answering "successfully", ``PUT boxes/{id}`` (sensors
  new/edited/deleted), ``DELETE boxes/{id}`` and ``POST boxes/{id}/data``
  CSV answering 201 with the real validation (at most 2500 measurements,
  24-hex ids, timestamps at most a minute in the future, sensors of this
  box).  Switches for tests: :meth:`FakeOpenSenseMap.inject` (503 outages,
  429 with ``Retry-After``), :attr:`FakeOpenSenseMap.delay` (slow replies,
  delayed on the reactor, never by sleeping), :attr:`FakeOpenSenseMap.skew`
  (the server's clock ahead/behind).  Every accepted measurement is
  recorded in :attr:`FakeOpenSenseMap.measurements`, every request in
  :attr:`FakeOpenSenseMap.requests`.
* :class:`MemoryStore`: an :class:`~co2logd.store.IStore` in memory
  (checked beside the SQLite store by ``tests/store_behaviour.py``, run by
  ``tests/test_store_memory.py`` and ``tests/test_store_sqlite.py``).
"""

from __future__ import annotations

import bisect
import datetime
import errno
import hashlib
import hmac
import json
import math
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple

from twisted.application.service import Service
from twisted.internet import defer, task
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource
from zope.interface import implementer

from co2logd.charts.timerange import parse_stored_time
from co2logd.store.interfaces import (
    DuplicateUpload,
    IRowStream,
    IStore,
    Query,
    ReplayRefused,
    StoreBusy,
    StoreError,
    WriteObserver,
    WriteRequest,
)
from co2logd.store.rollups import PlotData, source_label, value_forms

if TYPE_CHECKING:
    from co2logd.osem.client import BoxPlan

__all__ = [
    "FakeOpenSenseMap",
    "listen_fake_opensensemap",
    "FakeOsemClient",
    "FakeSerialDevices",
    "FakeSerialPort",
    "MemoryStore",
]

log = Logger()


# -- serial devices -----------------------------------------------------------

class FakeSerialPort:
    """An open fake port: the protocol's transport."""

    disconnecting = False

    def __init__(self, protocol, device: str, baudrate: int, bench: "FakeSerialDevices"):
        self.protocol = protocol
        self.device = device
        self.baudrate = baudrate
        self.bench = bench
        self.connected = True
        self.written: List[bytes] = []

    def write(self, data: bytes) -> None:
        """Bytes the protocol sends to the device."""
        self.written.append(data)

    def loseConnection(self) -> None:
        """Close the port, as ``SerialPort.loseConnection`` ends up doing."""
        self._lost(ConnectionDone())

    def _lost(self, reason: Exception) -> None:
        if not self.connected:
            return
        self.connected = False
        self.disconnecting = True
        if self.bench.ports.get(self.device) is self:
            del self.bench.ports[self.device]
        self.protocol.connectionLost(Failure(reason))


class FakeSerialDevices:
    """Devices by path; ``open`` fails like pyserial for a path that is not plugged in."""

    def __init__(self) -> None:
        self.plugged: Set[str] = set()
        self.ports: Dict[str, FakeSerialPort] = {}
        self.opens: List[str] = []

    def plug(self, device: str) -> None:
        """The device appears at ``device``."""
        self.plugged.add(device)

    def unplug(self, device: str) -> None:
        """The device goes away; an open port on it is lost."""
        self.plugged.discard(device)
        port = self.ports.get(device)
        if port is not None:
            port._lost(ConnectionLost("the device went away"))

    def write(self, device: str, data: bytes) -> None:
        """The device sends ``data``."""
        self.ports[device].protocol.dataReceived(data)

    def open(self, protocol, device: str, reactor, baudrate: int = 9600) -> FakeSerialPort:
        """The ``port_factory``: connect ``protocol`` to a plugged-in device."""
        self.opens.append(device)
        if device not in self.plugged:
            raise OSError(errno.ENOENT, "could not open port {}".format(device), device)
        port = FakeSerialPort(protocol, device, baudrate, self)
        self.ports[device] = port
        protocol.makeConnection(port)
        return port


# -- the OpenSenseMap API -----------------------------------------------------

OBJECT_ID = re.compile(r"^[0-9a-fA-F]{24}$")
RFC3339_UTC = re.compile(r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?Z$")
EXPOSURES = ("indoor", "outdoor", "mobile", "unknown")
JWT_VALIDITY = 3600.0
MAX_MEASUREMENTS = 2500
INVALID_JWT = "Invalid JWT authorization. Please sign in to obtain new JWT."
BAD_REFRESH = "Refresh token invalid or too old. Please sign in with your username and password."
BAD_LOGIN = "User and or password not valid!"


class ApiError(Exception):
    """An error reply: HTTP status, restify code name and message."""

    def __init__(self, status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


def iso_ms(seconds: float) -> str:
    """The API's time format: ``2024-05-01T12:00:00.000Z``."""
    t = datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + "{:03d}Z".format(t.microsecond // 1000)


def parse_rfc3339(text: str) -> float:
    """UNIX seconds of an RFC 3339 UTC time with ``Z``; ValueError otherwise (as strict as the API)."""
    m = RFC3339_UTC.match(text)
    if not m:
        raise ValueError(text)
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    t = datetime.datetime(year, month, day, hour, minute, second, tzinfo=datetime.timezone.utc)
    return t.timestamp() + (float(m.group(7)) if m.group(7) else 0.0)


def new_id() -> str:
    """A fresh 24-hex ObjectId."""
    return os.urandom(12).hex()


class FakeOpenSenseMap:
    """
    The fake API's state and behaviour; :meth:`resource` serves it.

    :param reactor: for delayed replies (``callLater``)
    :param clock: provides ``seconds()`` for token expiry and the
        "not in the future" check; defaults to ``reactor``
    """

    def __init__(self, reactor, clock=None):
        self.reactor = reactor
        self.clock = clock or reactor
        self.secret = os.urandom(16)
        self.users: Dict[str, Dict[str, Any]] = {}
        self.boxes: Dict[str, Dict[str, Any]] = {}
        self.jwts: Dict[str, Tuple[str, float]] = {}  # jwt → (user email, expiry)
        self.requests: List[Tuple[str, str]] = []
        self.measurements: List[Dict[str, Any]] = []
        self.deleted_sensors: List[str] = []
        self.delay = 0.0
        self.skew = 0.0
        self._failures: List[Tuple[Callable[[str, str], bool], ApiError]] = []
        self.pending: List[Any] = []  # delayed replies

    # -- set-up and switches ----------------------------------------------------

    def add_user(self, email: str, password: str, name: Optional[str] = None) -> None:
        """Register an account."""
        self.users[email] = {
            "name": name or email.split("@")[0],
            "email": email,
            "password": password,
            "boxes": [],
            "refresh": None,
        }

    def inject(
        self,
        status: int,
        count: int = 1,
        retry_after: Optional[str] = None,
        method: Optional[str] = None,
        path: Optional[str] = None,
    ) -> None:
        """
        Answer the next ``count`` matching requests with ``status`` (503, 429,
        500 …) instead of serving them; 429 carries ``Retry-After`` if given.
        ``method``/``path`` (a regular expression searched in the path)
        restrict which requests match.
        """
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        codes = {429: "TooManyRequests", 500: "InternalServer", 502: "BadGateway", 503: "ServiceUnavailable"}
        error = ApiError(status, codes.get(status, "Error"), "injected failure", headers)

        def matches(m: str, p: str) -> bool:
            return (method is None or m == method) and (path is None or re.search(path, p) is not None)

        for _ in range(count):
            self._failures.append((matches, error))

    def clear_failures(self) -> None:
        """End an injected outage."""
        self._failures = []

    def expire_tokens(self) -> None:
        """Invalidate every JWT issued so far (as if an hour had passed)."""
        self.jwts.clear()

    def now(self) -> float:
        """The server's idea of the time."""
        return self.clock.seconds() + self.skew

    def delivered(self, box_id: Optional[str] = None) -> List[Dict[str, Any]]:
        """Measurements accepted so far (of one box, or all)."""
        return [m for m in self.measurements if box_id is None or m["box"] == box_id]

    def box_named(self, name: str) -> Optional[Dict[str, Any]]:
        """The stored box with this name, or None."""
        return next((b for b in self.boxes.values() if b["name"] == name), None)

    def resource(self) -> Resource:
        """The twisted.web resource serving the API at its root."""
        return _ApiResource(self)

    # -- tokens ---------------------------------------------------------------

    def _issue(self, user: Dict[str, Any]) -> Dict[str, Any]:
        jwt = new_id() + new_id()
        self.jwts[jwt] = (user["email"], self.now() + JWT_VALIDITY)
        refresh = hmac.new(self.secret, jwt.encode(), hashlib.sha256).hexdigest()
        user["refresh"] = refresh  # one slot per user: older refresh tokens stop working
        return {"token": jwt, "refreshToken": refresh, "data": {"user": self._user_json(user)}}

    def _user_json(self, user: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "name": user["name"],
            "email": user["email"],
            "role": "user",
            "language": "en_US",
            "boxes": list(user["boxes"]),
            "emailIsConfirmed": True,
            "integrations": {},
        }

    def _authorised_user(self, headers: Dict[str, str]) -> Dict[str, Any]:
        value = headers.get("authorization", "")
        jwt = value[7:] if value.startswith("Bearer ") else None
        entry = self.jwts.get(jwt) if jwt else None
        if entry is None or entry[1] < self.now() or entry[0] not in self.users:
            raise ApiError(403, "Forbidden", INVALID_JWT)
        return self.users[entry[0]]

    # -- dispatch -------------------------------------------------------------

    def handle(self, method: str, path: str, query: Dict[str, List[str]], headers: Dict[str, str], body: bytes) -> Tuple[int, Dict[str, str], Any]:
        """Serve one request: (status, extra headers, JSON-able body)."""
        self.requests.append((method, path))
        for i, (matches, error) in enumerate(self._failures):
            if matches(method, path):
                del self._failures[i]
                raise error
        parts = [p for p in path.split("/") if p]
        if parts[:1] == ["users"] and len(parts) == 2:
            handler = {
                ("POST", "sign-in"): self.sign_in,
                ("POST", "refresh-auth"): self.refresh,
                ("POST", "sign-out"): self.sign_out,
                ("GET", "me"): self.me,
            }.get((method, parts[1]))
            if handler:
                return handler(headers, body)
        elif parts[:1] == ["boxes"]:
            if len(parts) == 1 and method == "POST":
                return self.new_box(headers, body)
            if len(parts) == 2 and method == "GET":
                return self.get_box(parts[1])
            if len(parts) == 2 and method == "PUT":
                return self.update_box(parts[1], headers, body)
            if len(parts) == 2 and method == "DELETE":
                return self.delete_box(parts[1], headers, body)
            if len(parts) == 3 and parts[2] == "data" and method == "POST":
                return self.post_data(parts[1], headers, body)
        raise ApiError(404, "NotFound", "{} is not a valid path".format(path))

    @staticmethod
    def _json_body(headers: Dict[str, str], body: bytes) -> Dict[str, Any]:
        if not headers.get("content-type", "").startswith("application/json"):
            raise ApiError(415, "UnsupportedMediaType", "Unsupported content-type.")
        try:
            data = json.loads(body.decode("utf-8") or "{}")
        except ValueError:
            raise ApiError(400, "BadRequest", "Invalid JSON")
        if not isinstance(data, dict):
            raise ApiError(400, "BadRequest", "Invalid JSON")
        return data

    # -- users ----------------------------------------------------------------

    def sign_in(self, headers, body):
        data = self._json_body(headers, body)
        login, password = data.get("email"), data.get("password")
        if not login:
            raise ApiError(400, "BadRequest", "missing required parameter email")
        user = self.users.get(login) or next((u for u in self.users.values() if u["name"] == login), None)
        if user is None or not hmac.compare_digest(str(password), user["password"]):
            raise ApiError(403, "Forbidden", BAD_LOGIN)
        return 200, {}, dict({"code": "Authorized", "message": "Successfully signed in"}, **self._issue(user))

    def refresh(self, headers, body):
        data = self._json_body(headers, body)
        token = data.get("token")
        user = next((u for u in self.users.values() if token and u["refresh"] == token), None)
        if user is None:
            raise ApiError(403, "Forbidden", BAD_REFRESH)
        return 200, {}, dict({"code": "Authorized", "message": "Successfully refreshed auth"}, **self._issue(user))

    def sign_out(self, headers, body):
        user = self._authorised_user(headers)
        self.jwts.pop(headers["authorization"][7:], None)
        user["refresh"] = None
        return 200, {}, {"code": "Ok", "message": "Successfully signed out"}

    def me(self, headers, body):
        user = self._authorised_user(headers)
        return 200, {}, {"code": "Ok", "data": {"me": self._user_json(user)}}

    # -- boxes ----------------------------------------------------------------

    def _box(self, box_id: str) -> Dict[str, Any]:
        if not OBJECT_ID.match(box_id):
            raise ApiError(422, "UnprocessableEntity", "Parameter boxId is not valid")
        box = self.boxes.get(box_id)
        if box is None:
            raise ApiError(404, "NotFound", "Box not found")
        return box

    def _own_box(self, box_id: str, headers) -> Dict[str, Any]:
        user = self._authorised_user(headers)
        box = self._box(box_id)
        if box_id not in user["boxes"]:
            raise ApiError(403, "Forbidden", "User does not own this senseBox")
        return box

    def box_json(self, box: Dict[str, Any], secrets: bool = False) -> Dict[str, Any]:
        """The box as the API shows it (with access token etc. when ``secrets``)."""
        d = {k: v for k, v in box.items() if k not in ("sensors", "location", "owner", "access_token")}
        lng, lat, height = box["location"]
        coords = [lng, lat] + ([height] if height is not None else [])
        d["currentLocation"] = {"type": "Point", "coordinates": coords, "timestamp": box["updatedAt"]}
        d["loc"] = [{"geometry": {"type": "Point", "coordinates": coords[:2]}, "type": "Feature"}]
        sensors = []
        for s in box["sensors"]:
            sj = {k: v for k, v in s.items() if k != "last"}
            if s.get("last") is not None:
                value, at = s["last"]
                sj["lastMeasurement"] = {"value": repr(value), "createdAt": iso_ms(at)}
            sensors.append(sj)
        d["sensors"] = sensors
        if secrets:
            d.update(access_token=box["access_token"], useAuth=False, integrations={"mqtt": {"enabled": False}})
        return d

    def get_box(self, box_id):
        return 200, {}, self.box_json(self._box(box_id))

    @staticmethod
    def _location(location: Any) -> Tuple[float, float, Optional[float]]:
        try:
            lat, lng = float(location["lat"]), float(location["lng"])
            height = float(location["height"]) if location.get("height") is not None else None
        except (TypeError, KeyError, ValueError):
            raise ApiError(422, "UnprocessableEntity", "Illegal value for parameter location")
        if not (-90 <= lat <= 90 and -180 <= lng <= 180):
            raise ApiError(422, "UnprocessableEntity", "Illegal value for parameter location")
        return lng, lat, height

    @staticmethod
    def _sensor(spec: Dict[str, Any]) -> Dict[str, Any]:
        return {
            "_id": new_id(),
            "title": spec.get("title"),
            "unit": spec.get("unit"),
            "sensorType": spec.get("sensorType"),
            "icon": spec.get("icon"),
            "last": None,
        }

    def new_box(self, headers, body):
        user = self._authorised_user(headers)
        data = self._json_body(headers, body)
        if not data.get("name"):
            raise ApiError(400, "BadRequest", "missing required parameter name")
        if data.get("exposure") not in EXPOSURES:
            raise ApiError(422, "UnprocessableEntity", "Illegal value for parameter exposure")
        if "location" not in data:
            raise ApiError(400, "BadRequest", "missing required parameter location")
        sensors = data.get("sensors") or []
        if not sensors:
            raise ApiError(422, "UnprocessableEntity", "sensors must not be empty")
        now = iso_ms(self.now())
        grouptag = data.get("grouptag")
        box = {
            "_id": new_id(),
            "name": data["name"],
            "exposure": data["exposure"],
            "grouptag": [grouptag] if isinstance(grouptag, str) else list(grouptag or []),
            "description": data.get("description", ""),
            "model": "custom",
            "createdAt": now,
            "updatedAt": now,
            "location": self._location(data["location"]),
            "sensors": [self._sensor(s) for s in sensors],
            "access_token": os.urandom(32).hex(),
        }
        self.boxes[box["_id"]] = box
        user["boxes"].append(box["_id"])
        return 201, {}, {"message": "Box successfully created", "data": self.box_json(box, secrets=True)}

    def update_box(self, box_id, headers, body):
        box = self._own_box(box_id, headers)
        data = self._json_body(headers, body)
        for field in ("name", "description", "weblink"):
            if field in data:
                box[field] = data[field]
        if "exposure" in data:
            if data["exposure"] not in EXPOSURES:
                raise ApiError(422, "UnprocessableEntity", "Illegal value for parameter exposure")
            box["exposure"] = data["exposure"]
        if "grouptag" in data:
            tag = data["grouptag"]
            box["grouptag"] = [tag] if isinstance(tag, str) else list(tag or [])
        if "location" in data:
            box["location"] = self._location(data["location"])
        sensors = list(box["sensors"])
        for spec in data.get("sensors") or []:
            if spec.get("deleted"):
                found = next((s for s in sensors if s["_id"] == spec.get("_id")), None)
                if found is None:
                    raise ApiError(404, "NotFound", "Sensor with id {} not found for deletion.".format(spec.get("_id")))
                sensors.remove(found)
                self.deleted_sensors.append(found["_id"])
                self.measurements = [m for m in self.measurements if m["sensor"] != found["_id"]]
            elif spec.get("edited") and spec.get("new"):
                sensors.append(self._sensor(spec))
            elif spec.get("edited"):
                found = next((s for s in sensors if s["_id"] == spec.get("_id")), None)
                if found is None:
                    raise ApiError(404, "NotFound", "Sensor with id {} not found for editing.".format(spec.get("_id")))
                for api_name in ("title", "unit", "sensorType", "icon"):
                    if api_name in spec:
                        found[api_name] = spec[api_name]
        if not sensors:
            raise ApiError(400, "BadRequest", "Unable to delete sensor(s). A box needs at least one sensor.")
        box["sensors"] = sensors
        box["updatedAt"] = iso_ms(self.now())
        return 200, {}, {"code": "Ok", "data": self.box_json(box, secrets=True)}

    def delete_box(self, box_id, headers, body):
        box = self._own_box(box_id, headers)
        data = self._json_body(headers, body)
        user = self.users[self.jwts[headers["authorization"][7:]][0]]
        if data.get("password") != user["password"]:
            raise ApiError(403, "Forbidden", "Password incorrect")
        del self.boxes[box["_id"]]
        user["boxes"].remove(box["_id"])
        return 200, {}, {"code": "Ok", "message": "box and all associated measurements marked for deletion"}

    # -- measurements -----------------------------------------------------------

    def post_data(self, box_id, headers, body):
        box = self._box(box_id)
        if not headers.get("content-type", "").startswith("text/csv"):
            raise ApiError(415, "UnsupportedMediaType", "Unsupported content-type.")
        lines = [line.strip() for line in body.decode("utf-8", "replace").splitlines() if line.strip()]
        if not lines:
            raise ApiError(422, "UnprocessableEntity", "Cannot save empty measurements.")
        if len(lines) > MAX_MEASUREMENTS:
            raise ApiError(
                422, "UnprocessableEntity",
                "Too many measurements. Please submit at most {} measurements at once.".format(MAX_MEASUREMENTS),
            )
        now = self.now()
        accepted = []
        sensors = {s["_id"]: s for s in box["sensors"]}
        for line in lines:
            fields = line.split(",")
            if not 2 <= len(fields) <= 6:
                raise ApiError(422, "UnprocessableEntity", "illegal line '{}'".format(line))
            sensor_id, value = fields[0], fields[1]
            if not OBJECT_ID.match(sensor_id) or sensor_id == "00112233445566778899aabb":
                raise ApiError(422, "UnprocessableEntity", "Invalid sensor id in measurement {}".format(line))
            try:
                number = float(value)
                if not math.isfinite(number):
                    raise ValueError(value)
            except ValueError:
                raise ApiError(422, "UnprocessableEntity", "Invalid value in measurement {}".format(line))
            at = now
            if len(fields) >= 3 and fields[2]:
                try:
                    at = parse_rfc3339(fields[2])
                except ValueError:
                    raise ApiError(422, "UnprocessableEntity", "Invalid timestamp in measurement {}".format(line))
                if at - now > 60:
                    raise ApiError(422, "UnprocessableEntity", "Timestamp {} is too far into the future.".format(fields[2]))
            if len(fields) >= 5:
                try:
                    lng, lat = float(fields[3]), float(fields[4])
                except ValueError:
                    raise ApiError(422, "UnprocessableEntity", "Invalid location in measurement {}".format(line))
                if not (-90 <= lat <= 90 and -180 <= lng <= 180):
                    raise ApiError(422, "UnprocessableEntity", "Invalid location in measurement {}".format(line))
            if sensor_id not in sensors:
                raise ApiError(400, "BadRequest", "Measurement for sensor with id {} does not belong to box".format(sensor_id))
            accepted.append({"box": box_id, "sensor": sensor_id, "value": number, "createdAt": at})
        for m in accepted:
            self.measurements.append(m)
            sensor = sensors[m["sensor"]]
            if sensor["last"] is None or sensor["last"][1] <= m["createdAt"]:
                sensor["last"] = (m["value"], m["createdAt"])
        return 201, {}, "Measurements saved in box"


class _ApiResource(Resource):
    """Serves a :class:`FakeOpenSenseMap`; replies may be delayed on the reactor."""

    isLeaf = True

    def __init__(self, api: FakeOpenSenseMap):
        super().__init__()
        self.api = api

    def render(self, request):
        method = request.method.decode("ascii")
        path = request.path.decode("utf-8")
        query = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        headers = {
            name.decode().lower(): values[0].decode("latin-1")
            for name, values in request.requestHeaders.getAllRawHeaders()
        }
        body = request.content.read()
        finished = [False]
        request.notifyFinish().addErrback(lambda _: finished.__setitem__(0, True))

        def answer():
            try:
                status, extra, payload = self.api.handle(method, path, query, headers, body)
            except ApiError as e:
                status, extra, payload = e.status, e.headers, {"code": e.code, "message": e.message}
            if finished[0]:
                return  # the client gave up (timeout); the work above is done anyway, like a real server
            request.setResponseCode(status)
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
            for name, value in extra.items():
                request.setHeader(name.encode(), value.encode())
            request.write(json.dumps(payload).encode("utf-8"))
            request.finish()

        if self.api.delay > 0:
            self.api.pending = [c for c in self.api.pending if c.active()]
            self.api.pending.append(self.api.reactor.callLater(self.api.delay, answer))
        else:
            answer()
        return server.NOT_DONE_YET


class FakeServer:
    """
    The fake served on a loopback port; :meth:`stop` closes the port, drops
    open (keep-alive) connections and cancels delayed replies.
    """

    def __init__(self, api: FakeOpenSenseMap, reactor, interface: str = "127.0.0.1"):
        site = server.Site(api.resource())
        site.noisy = False
        self.api = api
        self.reactor = reactor
        self.factory = WrappingFactory(site)
        self.port = reactor.listenTCP(0, self.factory, interface=interface)
        self.url = "http://{}:{}/".format(interface, self.port.getHost().port)

    def stop(self) -> defer.Deferred:
        """Fires when the port and every connection are closed."""
        for call in self.api.pending:
            if call.active():
                call.cancel()
        stopped = defer.maybeDeferred(self.port.stopListening)
        for protocol in list(self.factory.protocols):
            protocol.transport.abortConnection()

        def drained(_, tries=200):
            if not self.factory.protocols or tries == 0:
                return None
            d = task.deferLater(self.reactor, 0.005, lambda: None)
            return d.addCallback(drained, tries - 1)

        return stopped.addCallback(drained)


def listen_fake_opensensemap(api: FakeOpenSenseMap, reactor, interface: str = "127.0.0.1") -> FakeServer:
    """Serve the fake on a free loopback port (``.url``, ``.stop()``)."""
    return FakeServer(api, reactor, interface)


SensorKey = Tuple[str, str, str, str]

#: what the SQLite store declares a new column as, by the type of its first value
_DECLARED = {bool: "INTEGER", int: "INTEGER", float: "REAL", str: "TEXT", datetime.datetime: "DATETIME"}
_MAX_AHEAD = 366 * 86400.0  # a measurement time more than this after its upload is unusable (co2logd.store.mtime)


def _stored(value: Any) -> Any:
    """A value as a SQL database gives it back: datetimes as co2logserver's text, booleans as integers."""
    if isinstance(value, datetime.datetime):
        return value.isoformat(" ")
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, bool):
        return int(value)
    return value


def _order(value: Any) -> Tuple[int, Any]:
    """SQLite's order across types: NULL, numbers, text, blobs."""
    if value is None:
        return (0, 0)
    if isinstance(value, (int, float)):
        return (1, value)
    if isinstance(value, str):
        return (2, value)
    return (3, bytes(value))


def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@implementer(IRowStream)
class _MemoryRowStream:
    """The rows of one select, taken when it was made, a chunk at a time."""

    def __init__(self, header: List[str], rows: List[Tuple[Any, ...]], chunk_rows: int):
        self.header = header
        self._rows = rows
        self._chunk_rows = chunk_rows

    def next_chunk(self) -> "Deferred[List[Tuple[Any, ...]]]":
        chunk, self._rows = self._rows[: self._chunk_rows], self._rows[self._chunk_rows:]
        return succeed(chunk)

    def close(self) -> "Deferred[None]":
        self._rows = []
        return succeed(None)


@implementer(IStore)
class MemoryStore(Service):
    """
    The store in memory, for tests of what uses a store: writes are
    answered at once, rows are dicts, values are kept as SQLite gives them
    back.  Set :attr:`busy` to make writes fail with ``StoreBusy``.  It has
    the SQLite store's behaviour (``tests/store_behaviour.py``), not its
    speed, its durability or its disk checks.
    """

    name = "store"
    rowid = "rowid"

    def __init__(self, settings: Any):
        self.settings = settings
        self.columns: Dict[str, str] = {
            settings.UPLOAD_TIME_COL: "DATETIME",
            settings.MATCHED_CHECKSUMS_COL: "TEXT",
            settings.FAILED_CHECKSUMS_COL: "TEXT",
            settings.TRANSPORT_COL: "TEXT",
        }
        self.busy = False
        self.write_stats: Dict[str, int] = {"transactions": 0, "uploads": 0, "largest_group": 0, "busy": 0}
        #: the data rows: rowid → {column: value}
        self.rows: Dict[int, Dict[str, Any]] = {}
        self._last_rowid = 0
        self._outbox: Dict[int, Tuple[float, str]] = {}
        self._outbox_id = 0
        self._dead: Dict[int, Tuple[float, float, str, str]] = {}
        self._replay: Dict[str, float] = {}
        self._keys: Dict[str, Tuple[str, str, float]] = {}
        self._observers: List[WriteObserver] = []
        self._stopping = False

    def stopService(self) -> None:
        """Refuse writes from now on."""
        self._stopping = True
        super().stopService()

    # -- writing --------------------------------------------------------------

    def add_observer(self, observer: WriteObserver) -> None:
        self._observers.append(observer)

    def write(self, request: WriteRequest) -> "Deferred[int]":
        try:
            rows = self._write(request)
        except Exception:
            result: Deferred[int] = fail(Failure())
        else:
            result = succeed(rows)
        for observer in self._observers:
            observer(0.0, rows if not isinstance(result.result, Failure) else None)
        return result

    def _write(self, request: WriteRequest) -> int:
        if self._stopping:
            raise StoreError("The store is stopping: the write was not queued")
        if self.busy:
            self.write_stats["busy"] += 1
            raise StoreBusy("the memory store was told it is busy")
        names = [name for name, _ in request.fixed] + list(request.columns)
        fixed = [_stored(value) for _, value in request.fixed]
        rows: List[Dict[str, Any]] = []
        for values in request.rows:
            if len(values) != len(request.columns):
                raise StoreError("a row has {} values for {} columns".format(len(values), len(request.columns)))
            rows.append(dict(zip(names, fixed + [_stored(value) for value in values])))
        for name in names:
            if name not in self.columns and name not in request.new_columns:
                raise StoreError("no such column: {}".format(name))
        claim = request.idempotency
        if claim is not None:
            held = self._keys.get(claim.key)
            if held is not None and held[2] >= claim.cutoff:
                raise DuplicateUpload(claim.key)
        advance = request.replay
        if advance is not None:
            last = self._replay.get(advance.key)
            if last is not None and not advance.number > last:
                raise ReplayRefused(advance)
        # nothing can fail from here on: the upload is kept whole
        if claim is not None:
            self._keys[claim.key] = (claim.digest, claim.receipt, claim.now)
        if advance is not None:
            self._replay[advance.key] = advance.number
        for name, python_type in request.new_columns.items():
            self.columns.setdefault(name, _DECLARED.get(python_type, "") if python_type is not None else "")
        for row in rows:
            self._last_rowid += 1
            self.rows[self._last_rowid] = row
        for entry in request.outbox:
            self._outbox_id += 1
            self._outbox[self._outbox_id] = (request.queued_at, entry)
        stats = self.write_stats
        stats["transactions"] += 1
        stats["uploads"] += 1
        stats["largest_group"] = max(stats["largest_group"], 1)
        return len(rows)

    # -- freshness ------------------------------------------------------------

    def replay_last(self, key: str) -> Optional[float]:
        return self._replay.get(key)

    def idempotency_lookup(self, key: str, cutoff: float) -> "Deferred[Optional[Tuple[str, str]]]":
        held = self._keys.get(key)
        return succeed(held[:2] if held is not None and held[2] >= cutoff else None)

    def idempotency_expire(self, cutoff: float) -> "Deferred[int]":
        old = [key for key, (_, _, at) in self._keys.items() if at < cutoff]
        for key in old:
            del self._keys[key]
        return succeed(len(old))

    # -- download -------------------------------------------------------------

    def _query_rows(self, query: Query) -> List[Tuple[int, Dict[str, Any]]]:
        query.check()
        for column in list(query.columns) + [c for c, _, _ in query.bounds]:
            if column != self.rowid and column not in self.columns:
                raise StoreError("no such column: {}".format(column))

        def value(rowid: int, row: Dict[str, Any], column: str) -> Any:
            return rowid if column == self.rowid else row.get(column)

        def keep(rowid: int, row: Dict[str, Any]) -> bool:
            for column, op, bound in query.bounds:
                have = value(rowid, row, column)
                if have is None:
                    return False
                a, b = _order(have), _order(bound)
                if not (a >= b if op == ">=" else a <= b if op == "<=" else a == b):
                    return False
            return True

        found = [(rowid, row) for rowid, row in self.rows.items() if keep(rowid, row)]
        if query.order_by is not None:
            column, direction = query.order_by
            found.sort(key=lambda item: _order(value(item[0], item[1], column)), reverse=direction.upper() == "DESC")
        if query.limit is not None:
            found = found[: query.limit]
        return found

    def count(self) -> "Deferred[int]":
        return succeed(len(self.rows))

    def select(self, query: Query, chunk_rows: int = 500) -> "Deferred[IRowStream]":
        try:
            found = self._query_rows(query)
        except Exception:
            return fail()
        header = list(query.columns) or list(self.columns)
        rows = [tuple(rowid if c == self.rowid else row.get(c) for c in header) for rowid, row in found]
        return succeed(_MemoryRowStream(header, rows, chunk_rows))

    def rowid_at(self, query: Query, offset: int) -> "Deferred[Optional[int]]":
        found = self._query_rows(Query(list(query.columns), list(query.bounds), query.order_by, None))
        return succeed(found[offset][0] if offset < len(found) else None)

    # -- the dashboard, /plot and /health ----------------------------------------

    def row_count(self) -> "Deferred[int]":
        return succeed(len(self.rows))

    def want_rollups(self, columns: Iterable[str]) -> None:
        """Nothing to keep: every answer is read from the rows."""

    def catch_up(self) -> "Deferred[None]":
        return succeed(None)

    def _time(self, row: Dict[str, Any]) -> Tuple[Optional[float], bool]:
        """A row's measurement time (see co2logd.store.mtime), and whether it was unusable (placed at upload time)."""
        settings = self.settings
        upload = row.get(settings.UPLOAD_TIME_COL)
        up = parse_stored_time(upload) if isinstance(upload, str) else None
        if up is not None and up < 0:
            up = None
        wanted = [settings.DASHBOARD_TIME_COL.lower()] if settings.DASHBOARD_TIME_COL else [c.lower() for c in settings.TIME_COLS]
        candidates = [row.get(c) for c in wanted if c in self.columns]
        limit = (up if up is not None else datetime.datetime.now(datetime.timezone.utc).timestamp()) + _MAX_AHEAD
        for value in candidates:
            t = parse_stored_time(value) if isinstance(value, str) else None
            if t is not None and 0 <= t <= limit:
                return round(t, 3), False
        return up, up is not None and any(v is not None for v in candidates)

    def _source(self, row: Dict[str, Any]) -> Tuple[Any, Any]:
        return row.get(self.settings.TRANSPORT_COL), row.get(self.settings.OSEM_BOX_COL)

    def _selected(self, filters: Sequence[Tuple[str, Any]]) -> Callable[[Dict[str, Any]], bool]:
        wanted = [(0 if column == self.settings.TRANSPORT_COL else 1, value_forms(value)) for column, value in filters]
        return lambda row: all(self._source(row)[k] in values for k, values in wanted)

    def plot_series(
        self,
        columns: Sequence[str],
        bounds: Sequence[float],
        filters: Sequence[Tuple[str, Any]] = (),
        max_series: int = 6,
        rollups: bool = True,
    ) -> "Deferred[PlotData]":
        bounds = [float(b) for b in bounds]
        selected = self._selected(filters)
        found: Dict[str, Dict[int, List[Tuple[Any, Any]]]] = {}
        counts: Dict[str, int] = {}
        for row in self.rows.values():
            t, _ = self._time(row)
            if t is None or not bounds[0] <= t < bounds[-1] or not selected(row):
                continue
            label = source_label(*self._source(row))
            counts[label] = counts.get(label, 0) + 1
            i = bisect.bisect_right(bounds, t) - 1
            pairs = found.setdefault(label, {}).setdefault(i, [(None, None)] * len(columns))
            for k, column in enumerate(columns):
                v = row.get(column)
                if _numeric(v):
                    low, high = pairs[k]
                    pairs[k] = (v if low is None or v < low else low, v if high is None or v > high else high)
        ranked = sorted(counts, key=lambda label: (-counts[label], label))
        data = PlotData(columns)
        data.left_out = max(0, len(ranked) - max_series)
        for label in ranked[:max_series]:
            buckets = {i: pairs for i, pairs in found[label].items() if any(low is not None for low, _ in pairs)}
            if buckets:
                data.buckets[label] = buckets
        data.series = sorted(data.buckets, key=lambda n: (-len(data.buckets[n]), n))
        return succeed(data)

    def time_extent(self, filters: Sequence[Tuple[str, Any]] = ()) -> "Deferred[Optional[Tuple[float, float]]]":
        selected = self._selected(filters)
        times = [t for t, _ in (self._time(row) for row in self.rows.values() if selected(row)) if t is not None]
        return succeed((min(times), max(times)) if times else None)

    def unusable_times(self, since: float, until: float, filters: Sequence[Tuple[str, Any]] = ()) -> "Deferred[int]":
        selected = self._selected(filters)
        n = 0
        for row in self.rows.values():
            t, unusable = self._time(row)
            if selected(row) and ((unusable and since <= t < until) or t is None):  # type: ignore[operator]
                n += 1
        return succeed(n)

    def latest_by_source(
        self, columns: Sequence[str], filters: Sequence[Tuple[str, Any]] = (), limit: int = 6
    ) -> "Deferred[List[Tuple[str, float, Dict[str, Any]]]]":
        selected = self._selected(filters)
        per_label: Dict[str, List[Tuple[float, Dict[str, Any]]]] = {}
        for row in self.rows.values():
            t, _ = self._time(row)
            if t is not None and selected(row):
                per_label.setdefault(source_label(*self._source(row)), []).append((t, row))
        out = []
        for label, timed in per_label.items():
            timed.sort(key=lambda item: -item[0])
            values: Dict[str, Any] = {}
            for _, row in timed[:100]:
                for column in columns:
                    if column not in values and _numeric(row.get(column)):
                        values[column] = row[column]
            out.append((label, timed[0][0], values))
        out.sort(key=lambda x: -x[1])
        return succeed(out[:limit])

    def source_activity(
        self,
        box_column: Optional[str],
        after_rowid: int = 0,
        trim: Optional[Callable[[Dict[Tuple[Any, Any], List[Any]]], None]] = None,
    ) -> "Deferred[Tuple[List[Tuple[Any, Any, Any, int, int]], int]]":
        found: Dict[Tuple[Any, Any], List[Any]] = {}
        times: Dict[Tuple[Any, Any], set] = {}
        upload_col = self.settings.UPLOAD_TIME_COL
        for rowid, row in self.rows.items():
            if rowid <= after_rowid:
                continue
            key = (row.get(self.settings.TRANSPORT_COL), row.get(box_column) if box_column else None)
            seen = found.setdefault(key, [None, 0, 0])
            when = row.get(upload_col)
            if when is not None and (seen[0] is None or _order(when) > _order(seen[0])):
                seen[0] = when
            seen[1] += 1
            times.setdefault(key, set()).add(when)
            seen[2] = len(times[key])
        if trim is not None:
            trim(found)
        listing = [(k[0], k[1], last, n, uploads) for k, (last, n, uploads) in found.items()]
        return succeed((listing, max(self._last_rowid, after_rowid)))

    def disk_report(self, now: float) -> Tuple[Dict[str, Any], List[str]]:
        return {"writable": True, "heartbeat_at": None}, []

    # -- the OpenSenseMap outbox ------------------------------------------------

    def outbox_fetch(self, limit: int) -> "Deferred[List[Tuple[int, float, str]]]":
        return succeed([(i, at, entry) for i, (at, entry) in sorted(self._outbox.items())[:limit]])

    def outbox_delete(self, ids: Iterable[int]) -> "Deferred[int]":
        ids = list(ids)
        for i in ids:
            self._outbox.pop(i, None)
        return succeed(len(ids))

    def outbox_dead_letter(self, failures: Iterable[Tuple[int, str]], failed_at: float) -> "Deferred[int]":
        failures = list(failures)
        for i, reason in failures:
            entry = self._outbox.pop(i, None)
            if entry is not None:
                self._dead[i] = (entry[0], failed_at, entry[1], reason)
        return succeed(len(failures))

    def outbox_stats(self) -> "Deferred[Dict[str, Any]]":
        oldest = min((at for at, _ in self._outbox.values()), default=None)
        return succeed({"depth": len(self._outbox), "oldest_queued_at": oldest, "dead_letters": len(self._dead)})

    def dead_letters(self, limit: int = 100) -> "Deferred[List[Tuple[int, float, float, str, str]]]":
        newest = sorted(self._dead.items(), key=lambda item: -item[1][1])[:limit]
        return succeed([(i, queued, failed, entry, reason) for i, (queued, failed, entry, reason) in newest])


# -- the OpenSenseMap client --------------------------------------------------


class FakeOsemClient:
    """
    The blocking OpenSenseMap client of :class:`co2logd.osem.uploader.OsemUploader`,
    in memory: it answers at once, keeps the "server's" boxes and accepted
    measurements, and follows the API's rules that the uploader meets (a new
    box needs a position; measurements at most a minute ahead of ``clock``,
    at most 2500 a request; one write to create a box plus one to set its
    metadata, one write to update it).

    Like :class:`~co2logd.osem.client.OsemClient` it fetches the box list
    once and keeps it until :meth:`forget`; a box removed on the server
    (:meth:`remove_box`) is noticed when data is posted to it (``BoxGone``).

    :param settings: ``DEFAULT_LAT``/``DEFAULT_LON`` for new boxes and
        ``OSEM_MAX_POSITION_CHANGE``
    :param clock: provides ``seconds()``, the server's "now"
    """

    def __init__(self, settings: Any, clock: Any):
        self.settings = settings
        self.clock = clock
        #: False: every call raises CredentialsRefused (a changed password)
        self.credentials_valid = True
        #: the server's boxes by name: {"sensors": set of keys, "lat", "lon", "height", "exposure", ...}
        self.boxes: Dict[str, Dict[str, Any]] = {}
        #: accepted measurements: (box name, sensor title, value, UNIX time)
        self.measurements: List[Tuple[str, str, float, float]] = []
        #: calls of writes_needed and deliver, and the write requests (box creations/updates) made
        self.calls = 0
        self.box_writes = 0
        self._failures: List[Exception] = []
        self._cached: Optional[Set[str]] = None  # box names as last fetched

    # -- switches for tests -------------------------------------------------------

    def fail_next(self, error: Exception, count: int = 1) -> None:
        """The next ``count`` calls raise ``error`` (RateLimited, ServerTrouble, a requests error …)."""
        self._failures.extend([error] * count)

    def clear_failures(self) -> None:
        """End an injected outage."""
        self._failures = []

    def remove_box(self, name: str) -> None:
        """The box is deleted on the server (the client's cached list does not know yet)."""
        del self.boxes[name]

    # -- the client's interface ----------------------------------------------------

    def forget(self) -> None:
        """Drop the cached box list; the next call fetches it again."""
        self._cached = None

    def writes_needed(self, plan: BoxPlan) -> int:
        """How many write requests (POST/PUT) making the box ready takes: 0, 1 or 2."""
        self._call()
        if plan.name not in self._known():
            return 2
        if plan.name not in self.boxes:
            return 0  # deleted on the server: the cached box is current as far as the client knows
        return 1 if self._changes(self.boxes[plan.name], plan) else 0

    def deliver(self, plan: BoxPlan, rows: Sequence[Tuple[SensorKey, float, float]]) -> int:
        """Make the box ready, then accept ``rows`` (sensor key, value, UNIX time) all or none; their number."""
        from co2logd.osem.client import BoxGone, Rejected  # the client needs the opensensemap extra

        self._call()
        if plan.name not in self._known():
            self._create(plan)
        elif plan.name not in self.boxes:  # deleted on the server since the list was fetched
            self.forget()
            raise BoxGone("Box not found")
        box = self.boxes[plan.name]
        changes = self._changes(box, plan)
        if changes:
            box.update(changes)
            self.box_writes += 1
        if len(rows) > MAX_MEASUREMENTS:
            raise Rejected("HTTP 422: Too many measurements")
        now = self.clock.seconds()
        for key, value, at in rows:
            if key not in box["sensors"]:
                raise Rejected("HTTP 400: Measurement for sensor {} does not belong to box".format(key))
            if at - now > 60:
                raise Rejected("HTTP 422: Timestamp {} is too far into the future.".format(at))
        self.measurements.extend((plan.name, key[0], float(value), float(at)) for key, value, at in rows)
        return len(rows)

    # -- inside ----------------------------------------------------------------------

    def _call(self) -> None:
        from co2logd.osem.client import CredentialsRefused

        self.calls += 1
        if not self.credentials_valid:
            raise CredentialsRefused("User and or password not valid!")
        if self._failures:
            raise self._failures.pop(0)

    def _known(self) -> Set[str]:
        if self._cached is None:
            self._cached = set(self.boxes)
        return self._cached

    def _position(self, box: Optional[Dict[str, Any]], plan: BoxPlan) -> Dict[str, Any]:
        """The plan's position, without lat/lon moves beyond OSEM_MAX_POSITION_CHANGE."""
        out = {}
        for name in ("lat", "lon", "height"):
            value = getattr(plan, name)
            if value is None:
                continue
            current = box.get(name) if box else None
            if name != "height" and current is not None and abs(current - value) > self.settings.OSEM_MAX_POSITION_CHANGE:
                continue
            out[name] = value
        return out

    def _changes(self, box: Dict[str, Any], plan: BoxPlan) -> Dict[str, Any]:
        wanted = dict(self._position(box, plan), exposure=plan.exposure, weblink=plan.weblink, grouptag=plan.grouptag)
        changes = {k: v for k, v in wanted.items() if box.get(k) != v}
        if not set(plan.sensors) <= box["sensors"]:
            changes["sensors"] = box["sensors"] | set(plan.sensors)
        return changes

    def _create(self, plan: BoxPlan) -> None:
        from co2logd.osem.client import Rejected

        lat = plan.lat if plan.lat is not None else self.settings.DEFAULT_LAT(box=plan.name)
        lon = plan.lon if plan.lon is not None else self.settings.DEFAULT_LON(box=plan.name)
        if lat is None or lon is None:
            raise Rejected(
                "No position for the new senseBox {!r}: send lat/lon columns or set DEFAULT_LAT/DEFAULT_LON".format(plan.name),
                whole_batch=True,
            )
        self.boxes[plan.name] = {
            "sensors": set(plan.sensors), "lat": lat, "lon": lon, "height": plan.height, "exposure": plan.exposure,
            "weblink": plan.weblink, "grouptag": plan.grouptag,
        }
        self._known().add(plan.name)
        self.box_writes += 2  # POST boxes, then PUT for what the API ignores on creation
