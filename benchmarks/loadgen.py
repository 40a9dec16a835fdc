"""
The load generator the benchmark drives every server with.

HTTP: ``clients`` processes, each one keep-alive connection (reopened when
the server closes it, as gunicorn's sync worker does after every response),
sending the same prebuilt POST back to back.  Only responses that complete
inside the measuring window count for rates and latencies; every 200's
``saved-in-db`` counts as acknowledged, so the run can be checked against
the rows the database holds afterwards.

UDP: one process sending datagrams at a paced rate.
"""

from __future__ import annotations

import json
import multiprocessing
import socket
import time
from array import array
from typing import Any, Dict, List, Tuple


def http_request(port: int, body: bytes, content_type: str, path: str = "/upload", headers: str = "") -> bytes:
    """The bytes of one POST, built once; ``headers``: more header lines, each ending in CRLF."""
    head = (
        "POST {} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}\r\n".format(
            path, port, content_type, len(body), headers
        )
    ).encode("ascii")
    return head + body


class Connection:
    """One keep-alive HTTP/1.1 connection that reads exactly one response per request."""

    def __init__(self, port: int, timeout: float):
        self.port = port
        self.timeout = timeout
        self.sock = None
        self.buf = b""
        self.connects = 0

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.connects += 1

    def close(self) -> None:
        """Close the socket (reopened by the next request)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, data: bytes) -> Tuple[int, bytes]:
        """Send one request, return (status, body); reconnect once if a kept-alive socket was closed."""
        for attempt in (1, 2):
            fresh = self.sock is None
            if fresh:
                self._connect()
            try:
                self.sock.sendall(data)
                return self._response()
            except (ConnectionError, EOFError):
                self.close()
                if fresh or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _recv(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("server closed the connection")
        self.buf += chunk

    def _response(self) -> Tuple[int, bytes]:
        end = self.buf.find(b"\r\n\r\n")
        while end < 0:
            self._recv()
            end = self.buf.find(b"\r\n\r\n")
        lines = self.buf[:end].split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        close = chunked = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
        self.buf = self.buf[end + 4:]
        if chunked:
            body = self._chunks()
        else:
            while len(self.buf) < length:
                self._recv()
            body, self.buf = self.buf[:length], self.buf[length:]
        if close:
            self.close()
        return status, body

    def _line(self) -> bytes:
        end = self.buf.find(b"\r\n")
        while end < 0:
            self._recv()
            end = self.buf.find(b"\r\n")
        line, self.buf = self.buf[:end], self.buf[end + 2:]
        return line

    def _chunks(self) -> bytes:
        parts = []
        while True:
            size = int(self._line().split(b";", 1)[0], 16)
            if size == 0:
                while self._line():  # trailers, then the empty line
                    pass
                return b"".join(parts)
            while len(self.buf) < size + 2:
                self._recv()
            parts.append(self.buf[:size])
            self.buf = self.buf[size + 2:]


def _http_worker(port, data, start_at, measure_from, stop_at, timeout, results, index=0, clients=1, rows_per_204=0) -> None:
    # ``data``: one request, or a list the clients take turns over (client i sends i, i + clients, ...)
    requests = data if isinstance(data, list) else [data]
    turn = index
    conn = Connection(port, timeout)
    latencies = array("d")
    counted = {"ok": 0, "busy": 0, "other": 0}
    acknowledged = 0
    sent = 0
    last_answer = 0.0
    errors: List[str] = []
    while time.monotonic() < start_at:
        time.sleep(0.001)
    perf = time.perf_counter
    monotonic = time.monotonic
    while True:
        now = monotonic()
        if now >= stop_at:
            break
        t0 = perf()
        try:
            status, body = conn.request(requests[turn % len(requests)])
            turn += clients
        except (OSError, EOFError, ValueError) as e:
            errors.append(repr(e))
            conn.close()
            if len(errors) > 100:
                break
            time.sleep(0.01)
            continue
        t1 = perf()
        sent += 1
        if status == 200:
            try:
                acknowledged += json.loads(body)["saved-in-db"]
            except (ValueError, KeyError) as e:
                errors.append("bad receipt {!r}: {!r}".format(body[:100], e))
        elif status == 204:  # InfluxDB's write answer: every row of the request stored
            acknowledged += rows_per_204
        if now >= measure_from:
            # requests sent in the window count even when they end after it: a slow
            # server (seconds per request) is measured until its last answer
            last_answer = monotonic()
            latencies.append(t1 - t0)
            if status in (200, 204):
                counted["ok"] += 1
            elif status == 503:
                counted["busy"] += 1
            else:
                counted["other"] += 1
    conn.close()
    results.put(
        {
            "latencies": latencies.tobytes(),
            "counted": counted,
            "acknowledged": acknowledged,
            "requests": sent,
            "errors": errors[:5],
            "error_count": len(errors),
            "connects": conn.connects,
            "last_answer": last_answer,
        }
    )


def run_http(
    port: int, data, clients: int, warmup: float, duration: float, timeout: float = 120.0, rows_per_204: int = 0
) -> Dict[str, Any]:
    """
    Drive ``clients`` connections for ``warmup + duration`` seconds; return
    requests/s and latency percentiles (ms) of the requests sent after the
    warm-up (the window ends at the last of their answers), and the rows
    acknowledged over the whole run.
    """
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    start_at = time.monotonic() + 0.3
    measure_from = start_at + warmup
    stop_at = measure_from + duration
    workers = [
        ctx.Process(target=_http_worker, args=(port, data, start_at, measure_from, stop_at, timeout, results, i, clients, rows_per_204))
        for i in range(clients)
    ]
    for w in workers:
        w.start()
    collected = [results.get(timeout=stop_at - time.monotonic() + timeout + 30) for _ in workers]
    for w in workers:
        w.join()
    latencies = array("d")
    counted = {"ok": 0, "busy": 0, "other": 0}
    for r in collected:
        latencies.frombytes(r["latencies"])
        for k in counted:
            counted[k] += r["counted"][k]
    ordered = sorted(latencies)
    window = max([stop_at] + [r["last_answer"] for r in collected]) - measure_from
    return {
        "req_s": counted["ok"] / window,
        "busy_s": counted["busy"] / window,
        "window_s": window,
        "other": counted["other"],
        "p50_ms": _percentile(ordered, 0.50) * 1000,
        "p99_ms": _percentile(ordered, 0.99) * 1000,
        "acknowledged": sum(r["acknowledged"] for r in collected),
        "requests": sum(r["requests"] for r in collected),
        "errors": sum(r["error_count"] for r in collected),
        "error_samples": [e for r in collected for e in r["errors"]][:3],
        "connects": sum(r["connects"] for r in collected),
    }


def _percentile(ordered, q: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _udp_sender(port: int, datagrams: List[bytes], rate: float, duration: float, results) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    sent = 0
    start = time.monotonic()
    total = int(rate * duration)
    slice_seconds = 0.001  # pace in 1 ms slices: bursts stay small, as many senders would make them
    n = len(datagrams)
    while sent < total:
        due = min(total, int((time.monotonic() - start) * rate) + 1)
        while sent < due:
            try:
                sock.sendto(datagrams[sent % n], ("127.0.0.1", port))
            except BlockingIOError:
                time.sleep(0.0001)
                continue
            sent += 1
        time.sleep(slice_seconds)
    results.put({"sent": sent, "seconds": time.monotonic() - start})
    sock.close()


def run_udp(port: int, datagrams: List[bytes], rate: float, duration: float) -> Dict[str, Any]:
    """Send ``rate`` datagrams/s for ``duration`` s from another process; return what was sent."""
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    p = ctx.Process(target=_udp_sender, args=(port, datagrams, rate, duration, results))
    p.start()
    r = results.get(timeout=duration + 60)
    p.join()
    return r
