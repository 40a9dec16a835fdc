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
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import hmac
import json
import math
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.internet import defer, task
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.resource import Resource

if TYPE_CHECKING:
    from co2logd.osem.client import BoxPlan

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


# -- the OpenSenseMap client --------------------------------------------------

SensorKey = Tuple[str, str, str, str]


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
