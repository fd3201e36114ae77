"""ASGI websocket plumbing: one accepted connection as an object, the close sent for a
path that has no websocket endpoint, and the notice of a graceful stop.

Handlers (the event feed, ``http/handlers/feed.py``) run several tasks on one connection,
so every send goes through one lock; the time of the last send lets a handler keep the
connection alive only when it has been quiet.

A graceful stop: hypercorn stops accepting, then waits up to ``graceful_timeout`` for
every connection to end, and tells an ASGI app nothing (the lifespan's shutdown comes
after the wait). A feed never ends by itself, so every stop with a subscriber connected
took the whole timeout. ``install_stop_notice`` makes each hypercorn connection carry its
worker's "terminated" event in the ASGI scope's ``state``; ``stopping(scope)`` returns
it, and a handler that waits on it can close its websocket with 1001 (going away) at
once.

Fan-out (``FrameWriter``): through ASGI every ``websocket.send`` costs a lock, a
wsproto framing and a ``send_all`` with its checkpoints in hypercorn, about 150 CPU-us per
message, where the socket write itself is about 9 (perf/RESULTS.md, issue 14). Server
frames are not masked, so one encoded frame serves every subscriber of an event. The
same hook puts the hypercorn connection in the scope's state, and a ``FrameWriter``
writes such pre-built frames straight to its socket, synchronously, from the one task
that fans an event out; a frame the socket cannot take whole, and everything after it,
is queued and written by the connection's writer task. hypercorn's own sends on the
connection (the close frame, a pong) take its send lock, which ``install_stop_notice``
replaces with one (``SendLock``) the fan-out can hold across a partly written frame, so
frames never interleave. On the trio worker a frame is ``os.write`` to the stream's
socket; on the asyncio worker (``server.backend`` asyncio or uvloop) it is the
connection's ``transport.write`` (uvloop's tries the send at once, in C). Only
plain-TCP HTTP/1.1 websockets qualify; over TLS or HTTP/2 the handler sends through
ASGI.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import socket
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

import anyio
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from dockyard.http.request import Receive, Scope_, Send
from dockyard.http.worker import (
    DEFAULT_BACKEND,
    connection_class,
    extend_connection_class,
    is_asyncio,
    run_module,
    worker_context_module,
)

# The standard code for "policy violation": the nearest to "no such endpoint".
CLOSE_NO_ENDPOINT = 1008
# The standard code for "the server is going away" (a graceful stop).
CLOSE_GOING_AWAY = 1001
# The key of the worker's terminated event in hypercorn's connection state (ASGI
# ``scope["state"]``, a copy per request of the connection's).
STOPPING_KEY = "dockyard.stopping"
# The key of the hypercorn connection itself (a ``FrameWriter`` writes to its socket).
CONNECTION_KEY = "dockyard.connection"


class Stopping(Protocol):
    """hypercorn's worker event, set when a graceful stop begins."""

    async def wait(self) -> Any: ...

    def is_set(self) -> bool: ...


def stopping(scope: Scope_) -> Stopping | None:
    """The event set when this worker begins a graceful stop (None when not served by a
    hypercorn with ``install_stop_notice``: in-process tests)."""
    state = scope.get("state")
    event = state.get(STOPPING_KEY) if isinstance(state, dict) else None
    return event if event is not None and hasattr(event, "wait") else None


def check_stop_notice_hook(backend: str = DEFAULT_BACKEND) -> None:
    """Fail fast if hypercorn's connection class or worker context (of ``backend``'s
    worker) are no longer what ``install_stop_notice`` relies on (every stop would wait
    the whole timeout again, silently)."""
    from importlib.metadata import version

    # The connection class's parameters on each worker (the asyncio one is given the
    # loop and a reader/writer pair instead of a stream).
    expected = (
        ["self", "app", "loop", "config", "context", "state", "reader", "writer"]
        if is_asyncio(backend)
        else ["self", "app", "config", "context", "state", "stream"]
    )
    try:
        module = run_module(backend)
        context = getattr(worker_context_module(backend), "WorkerContext")  # noqa: B009
        server = connection_class(backend)
        params = list(inspect.signature(server.__init__).parameters)
        source = inspect.getsource(module.worker_serve)
        ok = (
            params[: len(expected)] == expected
            and "async with self.send_lock:" in inspect.getsource(server.protocol_send)
            and "terminated" in inspect.getsource(context.__init__)
            and "context.terminated.set()" in source
        )
    except (ImportError, AttributeError, OSError, TypeError):
        ok = False
    if not ok:
        raise RuntimeError(
            f"hypercorn {version('hypercorn')} is not the {backend} connection class and "
            "worker context dockyard.http.websocket.install_stop_notice relies on "
            f"(TCPServer({', '.join(expected[1:])}), WorkerContext.terminated); install the "
            "hypercorn version in constraints.txt or update dockyard.http.websocket"
        )


def install_stop_notice(backend: str = DEFAULT_BACKEND) -> None:
    """Give every hypercorn connection of this worker its ``terminated`` event in the
    connection state (idempotent; after ``h2edge.install``, whose class it extends)."""
    check_stop_notice_hook(backend)
    asyncio_worker = is_asyncio(backend)

    def noticed(base: type[Any]) -> type[Any]:
        if asyncio_worker:

            class AsyncioStopNoticeTCPServer(base):  # type: ignore[misc]
                def __init__(
                    self,
                    app: Any,
                    loop: Any,
                    config: Any,
                    context: Any,
                    state: dict[str, Any],
                    reader: Any,
                    writer: Any,
                ) -> None:
                    state = {**state, STOPPING_KEY: context.terminated, CONNECTION_KEY: self}
                    super().__init__(app, loop, config, context, state, reader, writer)
                    self.send_lock = SendLock()
                    limit_unsent(writer.get_extra_info("socket"))

            return AsyncioStopNoticeTCPServer

        class StopNoticeTCPServer(base):  # type: ignore[misc]
            def __init__(
                self, app: Any, config: Any, context: Any, state: dict[str, Any], stream: Any
            ) -> None:
                state = {**state, STOPPING_KEY: context.terminated, CONNECTION_KEY: self}
                super().__init__(app, config, context, state, stream)
                self.send_lock = SendLock()

        return StopNoticeTCPServer

    extend_connection_class(backend, "dockyard_stop_notice", noticed)


# What trio's socket streams set (16 KiB): the kernel then holds at most this much not
# yet sent per connection; without it, a stalled client's socket took megabytes before a
# send waited, so a stalled feed subscriber was cut off (4008) megabytes late.
UNSENT_LIMIT = 16 * 1024


def limit_unsent(sock: socket.socket | None) -> None:
    """Give an asyncio connection's socket trio's ``TCP_NOTSENT_LOWAT`` (where the
    platform has it): sends wait for a slow client as soon as they do on trio."""
    if sock is None or not hasattr(socket, "TCP_NOTSENT_LOWAT"):
        return
    with contextlib.suppress(OSError):  # not TCP (a Unix socket)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, UNSENT_LIMIT)


class WebSocket:
    """An ASGI websocket connection after ``websocket.connect`` was received."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._lock = anyio.Lock()
        self.last_sent = anyio.current_time()

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})
        self.last_sent = anyio.current_time()

    async def send_text(self, text: str) -> None:
        async with self._lock:
            await self._send({"type": "websocket.send", "text": text})
            self.last_sent = anyio.current_time()

    async def close(self, code: int, reason: str) -> None:
        async with self._lock:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def first_text(self, wait: float) -> str | None:
        """The client's first message as text ("" if it sent bytes); None if it sent
        nothing within ``wait`` seconds. Raises ``Disconnected`` if it left."""
        with anyio.move_on_after(wait):
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                raise Disconnected()
            text: str | None = message.get("text")
            return text or ""
        return None

    async def wait_disconnect(self) -> None:
        """Read (and ignore) client messages until it disconnects."""
        while True:
            message = await self._receive()
            if message["type"] == "websocket.disconnect":
                return


class Disconnected(Exception):
    """The client closed the websocket."""


async def no_endpoint(receive: Receive, send: Send) -> None:
    """Answer a websocket handshake at a path with no websocket endpoint."""
    await receive()  # websocket.connect
    await send({"type": "websocket.close", "code": CLOSE_NO_ENDPOINT, "reason": "no such feed"})


class SendLock:
    """hypercorn's per-connection send lock, as a semaphore: a ``FrameWriter`` takes it
    without waiting when a frame went out only in part, and its writer task, another
    task, releases it once the rest is written."""

    def __init__(self) -> None:
        # fast_acquire: an uncontended acquire does not yield to the event loop (every
        # response takes this lock; the yield was ~4% of a manifest HEAD on uvloop, and
        # hypercorn's own asyncio.Lock does not yield either).
        self._semaphore = anyio.Semaphore(1, fast_acquire=True)
        self.held = False  # read once per event and subscriber: an attribute

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def acquire_nowait(self) -> None:
        self._semaphore.acquire_nowait()
        self.held = True

    async def acquire(self) -> None:
        await self._semaphore.acquire()
        self.held = True

    def release(self) -> None:
        self.held = False
        self._semaphore.release()


def text_frame(text: str) -> bytes:
    """``text`` as one unmasked, final websocket text frame (what a server sends)."""
    data: bytes = Connection(ConnectionType.SERVER).send(TextMessage(data=text))
    return data


def _trio() -> ModuleType:
    # Only connections of hypercorn's trio worker get a TrioFrameWriter: it writes to their
    # trio socket stream, so it uses trio itself (imported where it is the backend).
    import trio

    return trio


class FrameWriter:
    """Pre-built frames written straight to a hypercorn websocket connection's socket.

    ``offer`` (synchronous) writes a frame at once when nothing is queued and nobody
    holds the connection's send lock; otherwise, or for the rest of a frame the socket
    took only in part, it queues, and ``run`` (the connection's writer task) writes the
    queue in order, in one write per wake-up. More than ``limit`` queued frames is an
    overflow: the queue is dropped (the partly written frame is still finished),
    ``overflowed`` is set and ``offer`` returns False.

    ``of`` picks the subclass for the worker: ``TrioFrameWriter`` (``os.write`` to the
    trio stream's socket) or ``AsyncioFrameWriter`` (the asyncio transport's ``write``).
    """

    def __init__(
        self, connection: Any, limit: int, event: Callable[[], Any], now: Callable[[], float]
    ) -> None:
        # ``event`` and ``now``: the worker's own event class and clock (what anyio wraps;
        # ``offer`` runs once per event and subscriber).
        self._lock: SendLock = connection.send_lock
        self._held = False
        self._partial = b""  # the rest of a frame the kernel took in part: goes first
        self._queue: deque[tuple[int, bytes]] = deque()
        self._event = event
        self._wake = event()
        self._drained = event()
        self._now = now
        self.limit = limit
        self.written_id = 0  # the last event whose frame is in the kernel (or finishing)
        self.dropped = 0  # queued frames dropped by an overflow
        self.last_sent = now()
        self.overflowed = event()
        self.broken = False
        self._done = False  # broken or overflowed: offer does nothing more

    @classmethod
    def of(cls, scope: Scope_, limit: int) -> FrameWriter | None:
        """A writer for this websocket, or None when it must be sent to through ASGI
        (not served by a hooked hypercorn, TLS, HTTP/2)."""
        state = scope.get("state")
        connection = state.get(CONNECTION_KEY) if isinstance(state, dict) else None
        if (
            connection is None
            or scope.get("http_version") != "1.1"
            or not isinstance(getattr(connection, "send_lock", None), SendLock)
        ):
            return None
        stream = getattr(connection, "stream", None)
        if stream is not None:  # hypercorn's trio worker
            if not isinstance(stream, _trio().SocketStream):  # TLS: a trio.SSLStream
                return None
            return TrioFrameWriter(connection, limit)
        writer = getattr(connection, "writer", None)  # its asyncio worker (uvloop too)
        if writer is None or writer.get_extra_info("ssl_object") is not None:
            return None
        return AsyncioFrameWriter(connection, limit)

    def _write(self, frame: bytes) -> int:
        """Write ``frame`` now, without waiting: the bytes the kernel took; -1 when the
        client is gone."""
        raise NotImplementedError

    async def _flush(self, partial: bytes, frames: list[bytes]) -> None:
        """Write the rest of a partly written frame, then ``frames``, whole; raises
        ``ConnectionError`` when the client is gone."""
        raise NotImplementedError

    def queued(self) -> int:
        return len(self._queue) + (1 if self._partial else 0)

    def offer(self, frame: bytes, event_id: int = 0) -> bool:
        """Write ``frame`` now or queue it; False on an overflow (see the class)."""
        if self._done:  # broken or overflowed: one test per event and subscriber
            return not self.overflowed.is_set()
        self.last_sent = self._now()
        if self._queue or self._partial or self._lock.held:
            if len(self._queue) >= self.limit:
                self.dropped += len(self._queue) + 1
                self._queue.clear()
                self.overflowed.set()
                self._done = True
                self._wake.set()  # still finish a partly written frame
                return False
            self._queue.append((event_id, frame))
            self._drained = self._event() if self._drained.is_set() else self._drained
            self._wake.set()
            return True
        n = self._write(frame)
        if n < 0:
            self.broken = self._done = True  # the client is gone: its reader ends the handler
            return True
        if event_id:
            self.written_id = event_id
        if n < len(frame):
            # Nobody else may write until the rest is out: hold the lock for the writer.
            self._lock.acquire_nowait()
            self._held = True
            self._partial = frame[n:]
            self._drained = self._event() if self._drained.is_set() else self._drained
            self._wake.set()
        return True

    async def run(self) -> None:
        """Write what ``offer`` queued, as long as the connection lasts."""
        try:
            while True:
                await self._wake.wait()
                self._wake = self._event()
                while (self._partial or self._queue) and not self.broken:
                    if not self._held:
                        await self._lock.acquire()
                        self._held = True
                    partial = self._partial
                    frames = [f for _, f in self._queue]
                    last = max((i for i, _ in self._queue), default=0)
                    self._partial = b""
                    self._queue.clear()
                    try:
                        await self._flush(partial, frames)
                    except (ConnectionError, OSError, RuntimeError):
                        self.broken = self._done = True
                    if last:
                        self.written_id = last
                    self.last_sent = self._now()
                self._release()
                self._drained.set()
        finally:
            self._release()

    def _release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()

    async def wait_drained(self) -> None:
        """Until everything offered so far is in the kernel (or the client is gone)."""
        while (self._partial or self._queue or self._held) and not self.broken:
            await self._drained.wait()  # offer replaces it (unset) whenever it queues


class TrioFrameWriter(FrameWriter):
    """On hypercorn's trio worker: ``os.write`` to the stream's socket, ``send_all`` by
    the writer task."""

    def __init__(self, connection: Any, limit: int) -> None:
        trio = _trio()
        # trio.current_time, direct
        super().__init__(connection, limit, trio.Event, trio.lowlevel.current_clock().current_time)
        self._stream: Any = connection.stream  # a trio.SocketStream (see ``of``)
        self._socket = self._stream.socket
        # Busy: hypercorn's ``_close`` sends EOF without the send lock (the client left).
        self._broken = (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError)

    def _write(self, frame: bytes) -> int:
        # hypercorn closes the socket when the client's close frame or EOF arrives, and
        # the handler hears of it only later: a closed socket's fileno() is -1 (its old
        # number may already be another connection's).
        fd = self._socket.fileno()
        if fd < 0:
            return -1
        try:
            return os.write(fd, frame)
        except BlockingIOError:
            return 0
        except OSError:
            return -1

    async def _flush(self, partial: bytes, frames: list[bytes]) -> None:
        try:
            await self._stream.send_all(b"".join([partial, *frames]))
        except self._broken as e:
            raise ConnectionError(str(e)) from e


class AsyncioFrameWriter(FrameWriter):
    """On hypercorn's asyncio worker (uvloop included): the connection's transport.

    Its write buffer limit is set to 0, so ``transport.write`` sends at once (uvloop
    otherwise defers writes below the limit to the end of the loop's iteration) and
    whatever the kernel did not take stays in the transport's buffer: that is the
    partly written frame, which the writer task waits out (``drain``) before it writes
    the queue. hypercorn's own sends on the connection then also wait until their bytes
    are in the kernel, as they do on trio.
    """

    def __init__(self, connection: Any, limit: int) -> None:
        super().__init__(connection, limit, asyncio.Event, asyncio.get_running_loop().time)
        self._stream_writer: Any = connection.writer  # an asyncio.StreamWriter
        self._transport: Any = self._stream_writer.transport
        self._transport.set_write_buffer_limits(high=0)

    def _write(self, frame: bytes) -> int:
        transport = self._transport
        if transport.is_closing():  # the client left (or hypercorn is closing it)
            return -1
        transport.write(frame)
        # A failed send closes the transport (it raises nothing).
        return -1 if transport.is_closing() else len(frame) - transport.get_write_buffer_size()

    async def _flush(self, partial: bytes, frames: list[bytes]) -> None:
        # ``partial`` is already in the transport's buffer.
        if frames:
            if self._transport.is_closing():
                raise ConnectionError("the connection is closed")
            self._transport.write(b"".join(frames))
        await self._stream_writer.drain()
