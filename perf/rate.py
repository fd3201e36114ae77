"""Request-rate engines for small responses (manifest HEAD/GET).

``py``: an epoll loop over C raw keep-alive sockets per process, ``procs`` forked
processes. Requests are built as bytes before the clock starts; a response is complete
when its head (and Content-Length or chunked body) has arrived; per-request work is a
``recv``, a ``find`` and a ``send``. Each process stops issuing at the deadline or after
its share of ``max_requests``; requests in flight then finish (bounded by ``drain``).

Over TLS (``tls``) the same loop runs on TLS sockets (non-blocking, so a record that is
not application data never stalls the loop; ALPN must choose http/1.1). With
``tls.http2`` :func:`run_h2` runs it over HTTP/2 instead: one h2 state machine per
connection (``perf.h2client``'s settings), one stream at a time on each, so the number
of requests in flight is the number of connections as over HTTP/1.1. One loop
(:func:`_loop`) serves both, with a connection object per protocol (``_H1``, ``_H2``).

``wrk``: Debian's wrk 4.1 driven by a generated Lua script (GET only: wrk 4.1 waits for
a body after a HEAD response that has a Content-Length, so HEAD hangs). Lighter than
Python per request; use it to check that the ``py`` engine is not the limit.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from perf.forked import run_forked
from perf.httpclient import wrap
from perf.procstat import own_cpu_seconds
from perf.tls import ClientTLS


@dataclass
class RateResult:
    started: float = 0.0
    ended: float = 0.0
    ok: int = 0
    failed: int = 0  # status >= 400, protocol errors, closed connections
    received: int = 0  # response bytes including heads
    client_cpu_s: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds (py engine)
    p50_s: float | None = None  # wrk's own percentiles
    p99_s: float | None = None
    errors: list[str] = field(default_factory=list)
    engine: str = "py"

    @property
    def elapsed(self) -> float:
        return max(self.ended - self.started, 1e-9)

    def merge(self, other: RateResult) -> None:
        self.ended = max(self.ended, other.ended)
        self.ok += other.ok
        self.failed += other.failed
        self.received += other.received
        self.client_cpu_s += other.client_cpu_s
        self.latencies += other.latencies
        self.errors += other.errors[: max(0, 5 - len(self.errors))]


def build_requests(
    host: str, port: int, method: str, targets: Sequence[str], headers: Sequence[tuple[str, str]]
) -> list[bytes]:
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers)
    return [
        f"{method} {t} HTTP/1.1\r\nhost: {host}:{port}\r\n{extra}\r\n".encode("latin-1")
        for t in targets
    ]


def _connect(
    host: str, port: int, tls: ClientTLS | None = None, context: ssl.SSLContext | None = None
) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if tls is None:
        sock.settimeout(None)
        return sock
    wrapped = wrap(sock, context or tls.context(), tls, host)
    wrapped.setblocking(False)
    return wrapped


def _recv(sock: socket.socket) -> bytes | None:
    """What arrived (b"" when closed); None when a TLS socket has no application data yet
    (a record such as a session ticket was all there was)."""
    if not isinstance(sock, ssl.SSLSocket):
        return sock.recv(65536)
    try:
        data = sock.recv(65536)
    except ssl.SSLWantReadError:
        return None
    while data and sock.pending():  # decrypted bytes epoll cannot see
        data += sock.recv(sock.pending())
    return data


PENDING, DONE, RETRY = 0, 1, 2  # what a connection's ``feed`` makes of what arrived


class _H1:
    """An HTTP/1.1 keep-alive connection of :func:`_loop`, one request at a time."""

    __slots__ = ("buf", "head", "need", "next", "reconnect", "sock", "status", "t0")

    def __init__(self, sock: socket.socket, start: int, head: bool) -> None:
        self.sock = sock
        self.head = head  # HEAD requests: no body follows a head
        self.next = start
        self.t0 = 0.0
        self.buf = bytearray()
        self.need = 0  # 0: head not parsed; >0: total bytes; -1: chunked
        self.status = 0
        self.reconnect = False  # the server said Connection: close

    def send(self, request: bytes) -> None:
        self.buf = bytearray()
        self.need = 0
        self.sock.send(request)

    def feed(self, data: bytes) -> int:
        buf = self.buf
        buf += data
        if self.need == 0:
            h = buf.find(b"\r\n\r\n")
            if h < 0:
                return PENDING
            block = bytes(buf[:h]).lower()
            self.reconnect = b"\r\nconnection: close" in block
            if self.head:
                self.need = h + 4
            else:
                i = block.find(b"\r\ncontent-length:")
                if i >= 0:
                    j = block.find(b"\r\n", i + 2)
                    self.need = h + 4 + int(block[i + 17 : j if j >= 0 else None])
                elif b"chunked" in block:
                    self.need = -1
                else:
                    self.need = len(buf)  # no body framing: take what came
        if self.need > 0:
            if len(buf) < self.need:
                return PENDING
        elif not buf.endswith(b"\r\n0\r\n\r\n"):
            return PENDING
        self.status = int(buf[9:12])
        return DONE

    def failure(self) -> str:
        return bytes(self.buf[:200]).decode("latin-1")


Conn = Any  # _H1 or _H2: sock, next, t0, status, reconnect, send, feed, failure


def _loop(
    open_conn: Callable[[int], Conn],
    requests: Sequence[Any],
    conns: int,
    max_requests: int,
    duration: float,
    drain: float,
    wait: Callable[[], Any],
    offset: int,
    engine: str,
) -> RateResult:
    """The epoll loop of both protocols: ``open_conn(start)`` connects a connection that
    begins at ``requests[start]``; its ``feed`` takes what arrived (PENDING, DONE with
    its ``status``, or RETRY: the server went away before taking the request)."""
    result = RateResult(engine=engine)
    lat = array("d")
    ep = select.epoll()
    states: dict[int, Conn] = {}

    def connect(start: int) -> Conn:
        st = open_conn(start)
        states[st.sock.fileno()] = st
        ep.register(st.sock.fileno(), select.EPOLLIN)
        return st

    def drop(fd: int, st: Conn) -> None:
        ep.unregister(fd)
        st.sock.close()
        del states[fd]

    def error(text: str) -> None:
        if len(result.errors) < 5:
            result.errors.append(text[:200])

    try:
        for i in range(conns):
            connect((offset + i * 7) % len(requests))
        wait()
        cpu0 = own_cpu_seconds()
        result.started = now = time.monotonic()
        deadline = now + duration
        hard_deadline = deadline + drain
        issued = inflight = 0
        nreq = len(requests)
        perf = time.perf_counter
        for st in list(states.values()):
            if issued >= max_requests:
                break
            st.t0 = perf()
            st.send(requests[st.next])
            issued += 1
            inflight += 1
        while inflight > 0:
            events = ep.poll(0.5)
            if time.monotonic() > hard_deadline:
                result.failed += inflight
                result.errors.append(f"{inflight} requests still open after the drain time")
                break
            for fd, _ in events:
                st = states[fd]
                try:
                    data = _recv(st.sock)
                except OSError as e:
                    data = b""
                    error(str(e))
                if data is None:
                    continue
                if not data:
                    result.failed += 1
                    inflight -= 1
                    error("connection closed by the server")
                    drop(fd, st)
                    continue
                result.received += len(data)
                got = st.feed(data)
                if got == PENDING:
                    continue
                if got == RETRY:  # send it anew on a new connection
                    drop(fd, st)
                    new = connect(st.next)
                    new.t0 = st.t0
                    new.send(requests[new.next])
                    continue
                t1 = perf()
                if 200 <= st.status < 400:
                    result.ok += 1
                    lat.append(t1 - st.t0)
                else:
                    result.failed += 1
                    error(st.failure())
                if st.reconnect:  # the server closes this one: continue on a new one
                    drop(fd, st)
                    st = connect(st.next)
                if issued < max_requests and time.monotonic() < deadline:
                    st.next = (st.next + 1) % nreq
                    st.t0 = perf()
                    st.send(requests[st.next])
                    issued += 1
                else:
                    inflight -= 1
        result.ended = time.monotonic()
        result.client_cpu_s = own_cpu_seconds() - cpu0
    finally:
        for st in states.values():
            st.sock.close()
        ep.close()
    result.latencies = lat.tolist()
    return result


def _h1_opener(host: str, port: int, head: bool, tls: ClientTLS | None) -> Callable[[int], Conn]:
    context = tls.context() if tls is not None else None
    return lambda start: _H1(_connect(host, port, tls, context), start, head)


def run_py(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    head: bool,
    connections: int,
    duration: float,
    max_requests: int,
    procs: int = 1,
    drain: float = 10.0,
    tls: ClientTLS | None = None,
) -> RateResult:
    """``requests`` (from :func:`build_requests`) round-robin over HTTP/1.1, over TLS
    with ``tls`` (for HTTP/2 use :func:`run_h2`)."""
    if tls is not None and tls.http2:
        raise ValueError("run_py speaks HTTP/1.1: use run_h2 for HTTP/2")
    opener = _h1_opener(host, port, head, tls)
    return _run(opener, requests, connections, duration, max_requests, procs, drain, "py")


def _run(
    opener: Callable[[int], Conn],
    requests: Sequence[Any],
    connections: int,
    duration: float,
    max_requests: int,
    procs: int,
    drain: float,
    engine: str,
) -> RateResult:
    """:func:`_loop` in this process, or its share of the connections and requests in
    each of ``procs`` forked ones."""
    procs = max(1, min(procs, connections))
    if procs == 1 or threading.active_count() > 1:
        return _loop(
            opener, requests, connections, max_requests, duration, drain, lambda: None, 0, engine
        )

    def work(index: int, wait_for_start: Callable[[], Any]) -> RateResult:
        n = connections // procs + (1 if index < connections % procs else 0)
        share = max_requests // procs + (1 if index < max_requests % procs else 0)
        return _loop(
            opener, requests, n, share, duration, drain, wait_for_start, index * 131, engine
        )

    return _forked(procs, work, duration + drain + 30, engine)


def _forked(
    procs: int,
    work: Callable[[int, Callable[[], Any]], RateResult],
    join_timeout: float,
    engine: str = "py",
) -> RateResult:

    def failed(e: BaseException) -> RateResult:
        result = RateResult(failed=1, errors=[f"{type(e).__name__}: {e}"])
        result.ended = time.monotonic()
        return result

    total = RateResult(engine=engine)
    return run_forked(procs, work, failed, total, join_timeout=join_timeout)


H2Request = list[tuple[bytes, bytes]]


def build_h2_requests(
    host: str, port: int, method: str, targets: Sequence[str], headers: Sequence[tuple[str, str]]
) -> list[H2Request]:
    """HTTP/2 header lists (pseudo-headers first), built before the clock starts."""
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    return [
        [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", f"{host}:{port}".encode()),
            (b":path", t.encode("latin-1")),
            *extra,
        ]
        for t in targets
    ]


class _H2:
    """An HTTP/2 connection of :func:`_loop` (``perf.h2client``'s settings), one stream
    at a time."""

    __slots__ = ("next", "reset", "sid", "sock", "state", "status", "t0", "terminated")

    def __init__(self, sock: socket.socket, start: int) -> None:
        from perf.h2client import client_state

        self.sock = sock
        self.state = client_state()
        self.next = start
        self.sid = 0
        self.status = 0
        self.reset: int | None = None  # the stream's RST_STREAM error code
        self.t0 = 0.0
        self.terminated: int | None = None  # a GOAWAY's last stream id
        sock.sendall(self.state.data_to_send())

    @property
    def reconnect(self) -> bool:
        return self.terminated is not None  # GOAWAY: continue on a new connection

    def send(self, request: H2Request) -> None:
        self.sid = self.state.get_next_available_stream_id()
        self.status = 0
        self.reset = None
        self.state.send_headers(self.sid, request, end_stream=True)
        self.sock.sendall(self.state.data_to_send())

    def feed(self, data: bytes) -> int:
        import h2.events

        done = retry = False
        for ev in self.state.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived) and ev.stream_id == self.sid:
                self.status = int(dict(ev.headers)[b":status"])
            elif isinstance(ev, h2.events.DataReceived):
                self.state.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == self.sid:
                done = True
            elif isinstance(ev, h2.events.StreamReset) and ev.stream_id == self.sid:
                done = True
                self.reset = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.terminated = ev.last_stream_id or 0
                retry = not done and self.sid > self.terminated
        pending = self.state.data_to_send()
        if pending:
            self.sock.sendall(pending)
        return RETRY if retry else DONE if done else PENDING

    def failure(self) -> str:
        if self.reset is not None:
            return f"stream reset ({self.reset})"
        return f"HTTP {self.status}"


def _h2_opener(host: str, port: int, tls: ClientTLS) -> Callable[[int], Conn]:
    context = tls.context()
    return lambda start: _H2(_connect(host, port, tls, context), start)


def run_h2(
    host: str,
    port: int,
    requests: Sequence[H2Request],
    *,
    tls: ClientTLS,
    connections: int,
    duration: float,
    max_requests: int,
    procs: int = 1,
    drain: float = 10.0,
) -> RateResult:
    """``requests`` (from :func:`build_h2_requests`) round-robin over HTTP/2 (ALPN h2 is
    checked on every connection), one stream at a time per connection."""
    opener = _h2_opener(host, port, tls)
    return _run(opener, requests, connections, duration, max_requests, procs, drain, "py-h2")


WRK_SCRIPT = """
local targets = %(targets)s
local headers = %(headers)s
local limit = %(limit)d
local reqs = {}
local n = 0
local i = 0
function init(args)
  for k, t in ipairs(targets) do reqs[k] = wrk.format("GET", t, headers) end
  i = math.random(#reqs)
end
function request()
  n = n + 1
  if n > limit then wrk.thread:stop() end
  i = i %% #reqs + 1
  return reqs[i]
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%%d,"duration_us":%%d,"bytes":%%d,"connect":%%d,"read":%%d,' ..
    '"write":%%d,"status":%%d,"timeout":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(99)))
end
"""


def _lua_string(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run_wrk(
    host: str,
    port: int,
    targets: Sequence[str],
    headers: Sequence[tuple[str, str]],
    *,
    connections: int,
    duration: float,
    max_requests: int,
    threads: int = 2,
) -> RateResult:
    """GET ``targets`` round-robin with wrk; raises FileNotFoundError without wrk."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise FileNotFoundError("wrk is not installed (apt-get install -y wrk)")
    threads = max(1, min(threads, connections))
    script = WRK_SCRIPT % {
        "targets": "{" + ",".join(_lua_string(t) for t in targets) + "}",
        "headers": "{" + ",".join(f"[{_lua_string(k)}]={_lua_string(v)}" for k, v in headers) + "}",
        "limit": max(1, max_requests // threads),
    }
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(script)
    try:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.monotonic()
        proc = subprocess.run(
            [
                wrk,
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(duration))}s",
                "--timeout",
                "10s",
                "-s",
                f.name,
                f"http://{host}:{port}",
            ],
            capture_output=True,
            text=True,
            timeout=duration + 60,
            check=False,
        )
        ended = time.monotonic()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    finally:
        os.unlink(f.name)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr[-500:]}")
    doc = json.loads(line[len("WRKJSON ") :])
    failed = sum(doc[k] for k in ("connect", "read", "write", "status", "timeout"))
    result = RateResult(
        started=started,
        ended=started + doc["duration_us"] / 1e6 if doc["duration_us"] else ended,
        ok=doc["requests"] - doc["status"],
        failed=failed,
        received=doc["bytes"],
        client_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        p50_s=doc["p50_us"] / 1e6,
        p99_s=doc["p99_us"] / 1e6,
        engine="wrk",
    )
    if failed:
        result.errors.append(f"wrk errors: {doc}")
    return result
