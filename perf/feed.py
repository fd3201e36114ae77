"""Websocket subscribers of an event feed (dockyard's ``/v2/_dockyard/events``), cheaply.

The events scenario holds N subscribers (1,000 by default) open while it pushes, and
needs each one's arrival time of every event. trio-websocket (wsproto) costs tens of
microseconds of Python per message and connection; 1,000 subscribers times one event
each is then tens of milliseconds of client time per push, which would be measured as
latency. So this is a raw client: an epoll loop per process over non-blocking sockets,
RFC 6455 handshake and framing by hand (server frames are unmasked; the client only
ever sends a masked pong or close), spread over ``procs`` spawned processes.

While events are pushed, the hot path is only ``recv`` and one ``time.monotonic()``
right after it: the data and its time are kept, and parsed (frame header arithmetic,
and for an event message a ``find`` of the digest in the JSON text; the full JSON only
for other messages: welcome, heartbeat, lagged) once the parent says the pushes are
over and no data came for ``QUIET`` seconds, each chunk with its own time (parsing a
whole run's messages takes seconds of CPU the server's fan-out would otherwise lose).
An event "arrives" when the ``recv`` that completed its frame returned.

Clock: ``time.monotonic()`` is CLOCK_MONOTONIC, one clock for every process of the
machine, so a subscriber process's arrival time and the pushing process's time of the
push response are comparable. Each process also keeps the first ``timestamp`` it saw of
each event (the server's CLOCK_REALTIME when the change was made, microseconds): the
delay a subscriber sees starts there (``event_time``, moved to CLOCK_MONOTONIC by the
parent). The push response is no start: a server may send it after (part of) its
fan-out, and events then "arrived" before they happened (issue 14: -114 ms).

The subscriber processes are ``python -m perf.feed`` children (not forked: the caller
may have threads; not multiprocessing's spawn: that re-imports the caller's main module),
talking JSON lines over their stdin and stdout.

Each subscriber process raises its own soft limit of open files to what it needs (at most
the hard limit, ``raise_open_files``): 10,000 subscribers need more than the usual 1024.

Every loop is bounded: connecting by ``setup_timeout``, the live phase by the stop time
the parent sends and by ``time_limit``; the parent waits for its children with timeouts
and kills what is left.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import resource
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

FEED_PATH = "/v2/_dockyard/events"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
RECV = 65536
# Seconds without data, once the pushes are over, after which the subscriber processes
# parse what they read (see ``_subscriber_loop``).
QUIET = 0.25

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0, 1, 2, 8, 9, 10

# Subscriber states.
CONNECTING, HANDSHAKE, WELCOME, LIVE, DEAD = range(5)


class FeedUnavailable(Exception):
    """The server has no websocket feed there (the handshake was not answered 101)."""


class ProtocolError(Exception):
    pass


def handshake(host: str, port: int, resource: str) -> tuple[bytes, bytes]:
    """The upgrade request for ``resource`` and the Sec-WebSocket-Accept it must get."""
    key = base64.b64encode(os.urandom(16))
    accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
    request = (
        f"GET {resource} HTTP/1.1\r\nhost: {host}:{port}\r\nupgrade: websocket\r\n"
        f"connection: Upgrade\r\nsec-websocket-key: {key.decode()}\r\n"
        "sec-websocket-version: 13\r\nuser-agent: dockyard-perf\r\n\r\n"
    ).encode("latin-1")
    return request, accept


def check_response(head: bytes, accept: bytes) -> None:
    """Raise unless ``head`` (up to the blank line) is a valid 101 for ``accept``."""
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(" ", 2)
    if len(status) < 2 or status[1] != "101":
        raise FeedUnavailable(f"handshake answered {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if headers.get("sec-websocket-accept", "").encode() != accept:
        raise ProtocolError("wrong sec-websocket-accept")


def client_frame(opcode: int, payload: bytes = b"") -> bytes:
    """A masked, final client frame (payload under 126 bytes: pong and close only)."""
    if len(payload) > 125:
        raise ValueError("control frames only")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked


CLOSE_FRAME = client_frame(OP_CLOSE, (1000).to_bytes(2, "big"))


def parse_frames(buf: bytearray) -> list[tuple[bool, int, bytes]]:
    """Take every complete server frame off the front of ``buf``: (fin, opcode, payload)."""
    out = []
    while len(buf) >= 2:
        b0, b1 = buf[0], buf[1]
        if b1 & 0x80:
            raise ProtocolError("masked frame from the server")
        n = b1 & 0x7F
        start = 2
        if n == 126:
            if len(buf) < 4:
                break
            n, start = int.from_bytes(buf[2:4], "big"), 4
        elif n == 127:
            if len(buf) < 10:
                break
            n, start = int.from_bytes(buf[2:10], "big"), 10
        end = start + n
        if len(buf) < end:
            break
        out.append((bool(b0 & 0x80), b0 & 0x0F, bytes(buf[start:end])))
        del buf[:end]
    return out


def welcome(host: str, port: int, resource: str, timeout: float = 10.0) -> dict[str, Any]:
    """Connect one subscriber, return its first message (the welcome), disconnect.

    Raises :class:`FeedUnavailable` when the server answers the handshake otherwise.
    """
    request, accept = handshake(host, port, resource)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        buf = bytearray()
        deadline = time.monotonic() + timeout
        head_done = False
        while time.monotonic() < deadline:
            data = sock.recv(RECV)
            if not data:
                raise FeedUnavailable("connection closed during the handshake")
            buf += data
            if not head_done:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    continue
                check_response(bytes(buf[:end]), accept)
                del buf[: end + 4]
                head_done = True
            for _fin, opcode, payload in parse_frames(buf):
                if opcode == OP_CLOSE:
                    code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
                    reason = payload[2:].decode(errors="replace")
                    raise FeedUnavailable(f"closed with {code}: {reason}")
                if opcode == OP_TEXT:
                    with contextlib.suppress(OSError):
                        sock.sendall(CLOSE_FRAME)
                    doc = json.loads(payload)
                    if not isinstance(doc, dict):
                        raise ProtocolError(f"not a JSON object: {payload[:80]!r}")
                    return doc
        raise TimeoutError(f"no first message within {timeout} s")


# SO_TIMESTAMPNS: the kernel stamps each received segment (CLOCK_REALTIME, ns). 35 in
# asm-generic/socket.h, which x86_64 and aarch64 use; elsewhere it is not used.
SO_TIMESTAMPNS = 35
STAMPS = platform.machine() in ("x86_64", "amd64", "aarch64", "arm64")
TIMESPEC = struct.Struct("@qq")
CMSG_STAMP = socket.CMSG_SPACE(TIMESPEC.size)


def realtime_minus_monotonic() -> float:
    """CLOCK_REALTIME - CLOCK_MONOTONIC in seconds, from the tightest of a few readings."""
    best = (float("inf"), 0)
    for _ in range(5):
        m0 = time.monotonic_ns()
        r = time.time_ns()
        m1 = time.monotonic_ns()
        best = min(best, (m1 - m0, r - (m0 + m1) // 2))
    return best[1] / 1e9


@dataclass
class Timed:
    status: int
    body: bytes
    sent: float  # CLOCK_MONOTONIC: the request was handed to the kernel
    arrived: float  # the response's last segment reached this host (kernel timestamp)
    read: float  # this process had read and parsed the whole response
    kernel_stamp: bool  # ``arrived`` is a kernel timestamp (else it is ``read``)


class TimedConnection:
    """Blocking HTTP/1.1 keep-alive requests that say when their response arrived.

    With SO_TIMESTAMPNS the kernel stamps each received segment; ``arrived`` is the stamp
    of the segment that completed the response, moved to CLOCK_MONOTONIC (the offset is
    read at each response). So a push's time does not depend on when the pushing process
    was next scheduled (on a loaded machine that can be tens of ms later).
    """

    def __init__(self, host: str, port: int, timeout: float = 60.0) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self.stamps = False

    def _connect(self) -> socket.socket:
        if self._sock is None:
            sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.stamps = False
            if STAMPS:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    self.stamps = True
            self._sock = sock
            self._buf.clear()
        return self._sock

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def request(
        self, method: str, target: str, headers: Sequence[tuple[str, str]], body: bytes
    ) -> Timed:
        sock = self._connect()
        lines = [f"{method} {target} HTTP/1.1", f"host: {self.host}:{self.port}"]
        lines += [f"{k}: {v}" for k, v in headers]
        lines.append(f"content-length: {len(body)}")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        try:
            sent = time.monotonic()
            sock.sendall(raw)
            buf = self._buf
            stamp: int | None = None
            need = -1
            status = 0
            close = False
            while need < 0 or len(buf) < need:
                data, ancillary, _flags, _addr = sock.recvmsg(RECV, CMSG_STAMP)
                if not data:
                    raise ConnectionError("connection closed by the server")
                buf += data
                for level, kind, value in ancillary:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = TIMESPEC.unpack(value[: TIMESPEC.size])
                        stamp = sec * 1_000_000_000 + nsec
                if need < 0:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        continue
                    head = bytes(buf[:end]).decode("latin-1").lower()
                    status = int(head[9:12])
                    length = 0
                    for line in head.split("\r\n")[1:]:
                        k, _, v = line.partition(":")
                        if k.strip() == "content-length":
                            length = int(v)
                        elif k.strip() == "connection" and "close" in v:
                            close = True
                    need = end + 4 + length
            read = time.monotonic()
            offset = realtime_minus_monotonic()
            response = bytes(buf[end + 4 : need])
            del buf[:need]
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        arrived = stamp / 1e9 - offset if stamp is not None else read
        return Timed(status, response, sent, arrived, read, stamp is not None)


class Channel:
    """JSON documents, one per line, over a pair of pipe file descriptors."""

    def __init__(self, rfd: int, wfd: int) -> None:
        self.rfd, self.wfd = rfd, wfd
        self._buf = bytearray()

    def fileno(self) -> int:
        return self.rfd

    def send(self, doc: dict[str, Any]) -> None:
        view = memoryview((json.dumps(doc, separators=(",", ":")) + "\n").encode())
        while view:
            view = view[os.write(self.wfd, view) :]

    def _line(self) -> dict[str, Any] | None:
        end = self._buf.find(b"\n")
        if end < 0:
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ProtocolError(f"not a JSON object: {line[:80]!r}")
        return doc

    def read_ready(self) -> dict[str, Any] | None:
        """After the descriptor polled readable: a whole document, or None yet."""
        chunk = os.read(self.rfd, 1 << 20)
        if not chunk:
            raise EOFError("the other end closed the pipe")
        self._buf += chunk
        return self._line()

    def recv(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        doc = self._line()
        while doc is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.rfd], [], [], left)[0]:
                raise TimeoutError(f"no answer within {timeout:.0f} s")
            doc = self.read_ready()
        return doc


class _Sub:
    __slots__ = (
        "accept", "arrivals", "buf", "close_code", "dups", "eof", "event_times", "fd", "frag",
        "heartbeats", "lagged", "others", "pending", "request", "sock", "state",
        "welcome_since", "welcomed",
    )  # fmt: skip

    def __init__(
        self,
        sock: socket.socket,
        request: bytes,
        accept: bytes,
        event_times: dict[bytes, bytes] | None = None,
    ) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.request = request
        self.accept = accept
        self.state = CONNECTING
        self.buf = bytearray()
        self.frag = bytearray()
        # Live data not parsed yet, with its arrival (see ``_subscriber_loop``).
        self.pending: list[tuple[tuple[float, float], bytes]] = []
        # digest -> (CLOCK_MONOTONIC after the recv, the kernel's receive stamp moved to
        # CLOCK_MONOTONIC, or the former without stamps)
        self.arrivals: dict[bytes, tuple[float, float]] = {}
        self.dups = 0
        self.heartbeats = 0
        self.others = 0
        self.lagged: int | None = None
        self.close_code: int | None = None
        self.eof = False
        self.welcome_since: int | None = None
        self.welcomed = False
        # digest -> the event's "timestamp" text: one dict per process, shared
        self.event_times = {} if event_times is None else event_times

    def summary(self) -> dict[str, Any]:
        return {
            "arrivals": {d.decode("latin-1"): list(t) for d, t in self.arrivals.items()},
            "dups": self.dups,
            "heartbeats": self.heartbeats,
            "others": self.others,
            "lagged": self.lagged,
            "close_code": self.close_code,
            "eof": self.eof,
        }


EVENT_PREFIX = b'{"type":"event"'
DIGEST_KEY = b'"digest":"'
TIMESTAMP_KEY = b'"timestamp":"'


def _event_time(sub: _Sub, digest: bytes, payload: bytes) -> None:
    """Keep the event's timestamp, once per process (the first subscriber to get it)."""
    if digest not in sub.event_times:
        i = payload.find(TIMESTAMP_KEY)
        if i >= 0:
            j = payload.find(b'"', i + len(TIMESTAMP_KEY))
            sub.event_times[digest] = payload[i + len(TIMESTAMP_KEY) : j]


def event_time(text: str) -> float:
    """An event's ``timestamp`` (RFC 3339, UTC, as dockyard writes it) in seconds since
    the epoch: CLOCK_REALTIME."""
    when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def _text(sub: _Sub, t: tuple[float, float], payload: bytes) -> None:
    """A complete text message of a live subscriber, arrived at ``t``."""
    if payload.startswith(EVENT_PREFIX):
        i = payload.find(DIGEST_KEY)
        if i >= 0:
            j = payload.find(b'"', i + 10)
            digest = payload[i + 10 : j]
            if digest in sub.arrivals:
                sub.dups += 1
            else:
                sub.arrivals[digest] = t
                _event_time(sub, digest, payload)
            return
    doc = json.loads(payload)
    kind = doc.get("type") if isinstance(doc, dict) else None
    if kind == "event":
        digest = str(doc["event"]["target"]["digest"]).encode("latin-1")
        if digest in sub.arrivals:
            sub.dups += 1
        else:
            sub.arrivals[digest] = t
            ts = doc["event"].get("timestamp")
            if isinstance(ts, str):
                sub.event_times.setdefault(digest, ts.encode("latin-1"))
    elif kind == "heartbeat":
        sub.heartbeats += 1
    elif kind == "lagged":
        sub.lagged = int(doc.get("last_id", -1))
    else:
        sub.others += 1


def _frames(sub: _Sub, t: tuple[float, float]) -> None:
    """Handle every complete frame in ``sub.buf`` (arrived at ``t``)."""
    for fin, opcode, payload in parse_frames(sub.buf):
        if opcode in (OP_TEXT, OP_BINARY, OP_CONT):
            if not fin:
                sub.frag += payload
                continue
            if sub.frag:
                payload = bytes(sub.frag) + payload
                sub.frag.clear()
            if sub.state == WELCOME:
                doc = json.loads(payload)
                if not isinstance(doc, dict) or doc.get("type") != "welcome":
                    raise ProtocolError(f"first message is not a welcome: {payload[:120]!r}")
                since = doc.get("since")
                sub.welcome_since = since if isinstance(since, int) else None
                sub.state = LIVE
            elif opcode == OP_BINARY:
                sub.others += 1
            else:
                _text(sub, t, payload)
        elif opcode == OP_CLOSE:
            sub.close_code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
            sub.state = DEAD
            return
        elif opcode == OP_PING:
            sub.sock.send(client_frame(OP_PONG, payload[:125]))


def _subscriber_loop(
    host: str,
    port: int,
    resource: str,
    count: int,
    window: int,
    setup_timeout: float,
    time_limit: float,
    ctl: Channel,
) -> None:
    """One subscriber process: connect ``count`` subscribers, report, record, report."""
    raise_open_files(count + 64)
    ep = select.epoll()
    subs: dict[int, _Sub] = {}
    event_times: dict[bytes, bytes] = {}
    errors: list[str] = []
    failed = 0

    def fail(sub: _Sub, why: str) -> None:
        nonlocal failed
        if len(errors) < 5:
            errors.append(why[:300])
        failed += 1
        with contextlib.suppress(OSError, KeyError):
            ep.unregister(sub.fd)
        sub.sock.close()
        sub.state = DEAD
        subs.pop(sub.fd, None)

    started = welcomed = 0
    stamps = STAMPS
    family, _type, _proto, _name, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[
        0
    ]
    t_setup = time.monotonic()
    setup_deadline = t_setup + setup_timeout
    try:
        # -- connect, at most ``window`` handshakes in flight (the server's listen backlog)
        while welcomed + failed < count and time.monotonic() < setup_deadline:
            while started < count and started - welcomed - failed < window:
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if stamps:
                    try:
                        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
                    except OSError:
                        stamps = False  # arrivals then stand in for the kernel's stamps
                sock.setblocking(False)
                request, accept = handshake(host, port, resource)
                sub = _Sub(sock, request, accept, event_times)
                subs[sub.fd] = sub
                started += 1
                err = sock.connect_ex(address)
                if err not in (0, 115):  # EINPROGRESS
                    fail(sub, f"connect: {os.strerror(err)}")
                    continue
                ep.register(sub.fd, select.EPOLLOUT)
            for fd, _ev in ep.poll(0.2):
                sub = subs[fd]
                try:
                    if sub.state == CONNECTING:
                        err = sub.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                        if err:
                            fail(sub, f"connect: {os.strerror(err)}")
                            continue
                        sub.sock.send(sub.request)  # a few hundred bytes: one send
                        sub.state = HANDSHAKE
                        ep.modify(fd, select.EPOLLIN)
                        continue
                    data = sub.sock.recv(RECV)
                    if not data:
                        fail(sub, "closed by the server before the welcome")
                        continue
                    sub.buf += data
                    was = sub.state
                    if sub.state == HANDSHAKE:
                        end = sub.buf.find(b"\r\n\r\n")
                        if end < 0:
                            continue
                        check_response(bytes(sub.buf[:end]), sub.accept)
                        del sub.buf[: end + 4]
                        sub.state = WELCOME
                    now = time.monotonic()
                    _frames(sub, (now, now))
                    if was != LIVE and sub.state == LIVE:
                        welcomed += 1
                        sub.welcomed = True
                    elif sub.state == DEAD and not sub.welcomed:
                        fail(sub, f"closed with {sub.close_code} before the welcome")
                    elif sub.state == DEAD:
                        ep.unregister(fd)  # closed after its welcome: reported as such
                except BlockingIOError:
                    continue
                except (OSError, ValueError, FeedUnavailable, ProtocolError) as e:
                    if not sub.welcomed:
                        fail(sub, f"{type(e).__name__}: {e}")
                    elif sub.state != DEAD:
                        sub.eof = sub.eof or isinstance(e, OSError)
                        sub.state = DEAD
                        ep.unregister(fd)
        for sub in list(subs.values()):
            if not sub.welcomed:
                fail(sub, f"no welcome within {setup_timeout} s")
        ctl.send(
            {
                "welcomed": welcomed,
                "failed": failed,
                "errors": errors,
                "connect_s": time.monotonic() - t_setup,
            }
        )

        # -- live: record arrivals until every subscriber has every pushed event, or the
        # stop time the parent sends, or the time limit
        cpu0 = os.times()
        ep.register(ctl.fileno(), select.EPOLLIN)
        hard = time.monotonic() + time_limit
        stop_at = float("inf")
        expected: frozenset[bytes] | None = None
        finished: set[int] = set()  # fds with every expected event, or dead
        live = len(subs)
        mono = time.monotonic
        ctl_fd = ctl.fileno()

        def parse(sub: _Sub) -> None:
            """The frames of ``sub.pending``, each chunk with its own arrival."""
            for t, data in sub.pending:
                if sub.state == DEAD:
                    break
                sub.buf += data
                try:
                    _frames(sub, t)
                except (ValueError, ProtocolError) as e:
                    if len(errors) < 5:
                        errors.append(f"{type(e).__name__}: {e}"[:300])
                    sub.state = DEAD
            sub.pending.clear()
            if sub.state == DEAD:
                with contextlib.suppress(OSError, FileNotFoundError):
                    ep.unregister(sub.fd)

        def settle(sub: _Sub) -> None:
            if sub.state == DEAD or (expected is not None and expected <= sub.arrivals.keys()):
                finished.add(sub.fd)

        parsed = False  # whether the data kept while events were pushed is parsed
        while True:
            now = mono()
            if now >= hard or now >= stop_at or (expected is not None and len(finished) >= live):
                break
            wait = min(0.5, stop_at - now, hard - now)
            ready = ep.poll(QUIET if expected is not None and not parsed else wait)
            if expected is not None and not parsed and not ready:
                # The pushes are over and nothing came for QUIET s: the fan-out is done.
                # Parsing earlier would take the cores from the server's last fan-outs.
                for s in subs.values():
                    parse(s)
                    settle(s)
                parsed = True
                continue
            offset = time.time() - mono()  # for this batch's kernel stamps (CLOCK_REALTIME)
            for fd, _ev in ready:
                if fd == ctl_fd:
                    msg = ctl.read_ready()
                    if msg is None:
                        continue
                    stop_at = float(msg["stop_at"])
                    expected = frozenset(d.encode("latin-1") for d in msg["digests"])
                    continue
                sub = subs[fd]
                if sub.state == DEAD:
                    continue
                stamp = None
                try:
                    if stamps:
                        data, ancillary, _flags, _addr = sub.sock.recvmsg(RECV, CMSG_STAMP)
                        t = mono()
                        for level, kind, value in ancillary:
                            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                                sec, nsec = TIMESPEC.unpack(value[: TIMESPEC.size])
                                stamp = sec + nsec / 1e9 - offset
                    else:
                        data = sub.sock.recv(RECV)
                        t = mono()
                except BlockingIOError:
                    continue
                except OSError:
                    data, t = b"", mono()
                if not data:
                    sub.eof = True
                    sub.state = DEAD
                    ep.unregister(fd)
                else:
                    # While events are pushed, only read and note when: the parsing waits
                    # until the parent says the pushes are over (this process shares the
                    # cores with the server it measures).
                    sub.pending.append(((t, t if stamp is None else stamp), data))
                    if parsed:
                        parse(sub)
                if parsed:
                    settle(sub)
        for sub in subs.values():
            parse(sub)  # when the parent's stop time never came
        cpu1 = os.times()
        for sub in subs.values():
            if sub.state != DEAD:
                with contextlib.suppress(OSError):
                    sub.sock.send(CLOSE_FRAME)
        ctl.send(
            {
                "subs": [s.summary() for s in subs.values()],
                "event_times": {
                    d.decode("latin-1"): ts.decode("latin-1") for d, ts in event_times.items()
                },
                "cpu_s": (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system),
                "errors": errors,
            }
        )
    except (EOFError, BrokenPipeError):
        raise
    except BaseException as e:
        with contextlib.suppress(Exception):
            ctl.send({"fatal": f"{type(e).__name__}: {e}"})
        raise
    finally:
        for sub in subs.values():
            sub.sock.close()
        ep.close()


def raise_open_files(need: int) -> None:
    """Raise this process's soft limit of open files to ``need`` (at most the hard
    limit): 10,000 subscribers in a few processes need more sockets than the usual
    default soft limit of 1024. Each subscriber process does it for itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        target = need if hard == resource.RLIM_INFINITY else min(need, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


@dataclass
class Ready:
    welcomed: int = 0
    failed: int = 0
    connect_s: float = 0.0  # until every process had all its subscribers welcomed
    errors: list[str] = field(default_factory=list)


@dataclass
class FeedResult:
    subs: list[dict[str, Any]] = field(default_factory=list)  # one per welcomed subscriber
    client_cpu_s: float = 0.0  # subscriber processes, over the live phase
    # digest -> when the event was made (its timestamp), CLOCK_MONOTONIC of this host
    event_times: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Subscribers:
    """``count`` subscribers to ``resource`` in ``procs`` child processes.

    ``start()`` returns once every subscriber got its welcome (or failed or timed out);
    ``finish(digests, stop_at)`` tells the processes which events to wait for and until
    when (a CLOCK_MONOTONIC time), and collects what each subscriber received.
    """

    def __init__(
        self,
        host: str,
        port: int,
        resource: str,
        count: int,
        procs: int = 1,
        *,
        window: int = 32,
        setup_timeout: float = 120.0,
        time_limit: float = 600.0,
    ) -> None:
        self.host, self.port, self.resource = host, port, resource
        self.count = count
        self.procs = max(1, min(procs, count or 1))
        self.window = window
        self.setup_timeout = setup_timeout
        self.time_limit = time_limit
        self._children: list[tuple[subprocess.Popen[bytes], Channel]] = []

    def start(self) -> Ready:
        t0 = time.monotonic()
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        for i in range(self.procs):
            n = self.count // self.procs + (1 if i < self.count % self.procs else 0)
            spec = {
                "host": self.host, "port": self.port, "resource": self.resource, "count": n,
                "window": self.window, "setup_timeout": self.setup_timeout,
                "time_limit": self.time_limit,
            }  # fmt: skip
            proc = subprocess.Popen(
                [sys.executable, "-m", "perf.feed", "--subscribers", json.dumps(spec)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=env,
            )
            assert proc.stdin is not None and proc.stdout is not None
            self._children.append((proc, Channel(proc.stdout.fileno(), proc.stdin.fileno())))
        ready = Ready()
        for _proc, channel in self._children:
            msg = self._receive(channel, self.setup_timeout + 60)
            ready.welcomed += msg.get("welcomed", 0)
            ready.failed += msg.get("failed", 0)
            ready.errors += msg.get("errors", [])[: max(0, 5 - len(ready.errors))]
        ready.failed = self.count - ready.welcomed  # also those of processes that died
        ready.connect_s = time.monotonic() - t0
        return ready

    @staticmethod
    def _receive(channel: Channel, timeout: float) -> dict[str, Any]:
        try:
            msg = channel.recv(timeout)
        except (EOFError, OSError, ValueError) as e:
            return {"errors": [f"subscriber process: {type(e).__name__}: {e}"]}
        if "fatal" in msg:
            msg.setdefault("errors", [msg["fatal"]])
        return msg

    def finish(self, digests: Sequence[str], stop_at: float) -> FeedResult:
        result = FeedResult()
        for _proc, channel in self._children:
            with contextlib.suppress(OSError):
                channel.send({"stop_at": stop_at, "digests": list(digests)})
        for _proc, channel in self._children:
            msg = self._receive(channel, max(0.0, stop_at - time.monotonic()) + 60)
            result.subs += msg.get("subs", [])
            result.client_cpu_s += msg.get("cpu_s", 0.0)
            offset = realtime_minus_monotonic()
            for digest, text in msg.get("event_times", {}).items():
                with contextlib.suppress(ValueError):
                    result.event_times.setdefault(digest, event_time(text) - offset)
            result.errors += msg.get("errors", [])[: max(0, 5 - len(result.errors))]
        return result

    def close(self) -> None:
        for proc, _channel in self._children:
            assert proc.stdin is not None and proc.stdout is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the child's stdin ends: it stops
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()
        self._children = []

    def __enter__(self) -> Subscribers:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--subscribers":
        print("usage: python -m perf.feed --subscribers JSON (run by perf.feed.Subscribers)")
        return 2
    spec = json.loads(args[1])
    try:
        _subscriber_loop(
            spec["host"],
            spec["port"],
            spec["resource"],
            spec["count"],
            spec["window"],
            spec["setup_timeout"],
            spec["time_limit"],
            Channel(sys.stdin.fileno(), sys.stdout.fileno()),
        )
    except (EOFError, BrokenPipeError):
        return 1  # the parent went away first
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
