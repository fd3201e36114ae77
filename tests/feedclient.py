"""Websocket clients of the event feed, and an in-process loopback server for them.

``serve_app`` runs a built registry's ASGI app under hypercorn in the test's own event
loop (hypercorn's trio or asyncio worker, as the test's backend), on a loopback port, with
the connection hooks ``dockyard serve`` installs (so on either worker feeds write their
frames straight to the socket, as in production); in-process tests use a real websocket client
(wsproto over an anyio socket, on either backend) over a real TCP connection.
``open_feed`` connects one subscriber; its ``Feed`` reads the protocol's messages
(``welcome``, ``event``, ``heartbeat``, ``lagged``) and the close code.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlencode

import anyio
import anyio.abc
import sniffio
import trio_websocket  # its exception classes only: what the tests already expect
from hypercorn.config import Config
from perf.inprocess import start_hypercorn
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)

from dockyard.events.feed import FEED_PATH
from dockyard.http import websocket

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Message, Receive, Send], Awaitable[None]]


class _Served:
    """The app as hypercorn sees it: the test already runs the registry's background
    tasks (``services`` fixture), so lifespan events are answered here; exceptions the
    app raises are kept, so a test can fail on them (hypercorn would only log them)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.errors: list[BaseException] = []

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        try:
            await self.app(scope, receive, send)
        except Exception as e:
            self.errors.append(e)
            raise


@dataclass
class LoopbackServer:
    port: int
    served: _Served

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def feed_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}{FEED_PATH}"


@asynccontextmanager
async def serve_app(app: ASGIApp) -> AsyncIterator[LoopbackServer]:
    """Serve ``app`` with hypercorn on 127.0.0.1 (a free port) until the block ends, with
    the worker of the test's backend (hypercorn's trio worker, or its asyncio one)."""
    backend = sniffio.current_async_library()
    # As each dockyard worker does: feeds then write their frames straight to
    # the socket (http/websocket.py), the way they are served in production.
    websocket.install_stop_notice(backend)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    # hypercorn's 5 s would close a test's idle connection between two of its requests on
    # a loaded machine (tests/test_connection_guard.py's bystander, once in a whole run).
    config.keep_alive_timeout = 60
    served = _Served(app)
    # hypercorn's ASGI types are narrower TypedDicts than this module's mappings.
    wrapped = cast(Any, served)
    shutdown = anyio.Event()
    async with anyio.create_task_group() as tasks:
        port = await start_hypercorn(tasks, wrapped, config, backend, shutdown)
        server = LoopbackServer(port, served)
        try:
            yield server
        finally:
            shutdown.set()
    assert not served.errors, f"the app raised: {served.errors!r}"


class FeedClosed(Exception):
    """The server closed the feed; ``code`` and ``reason`` are the close frame's."""

    def __init__(self, code: int, reason: str | None) -> None:
        super().__init__(f"feed closed with {code}: {reason}")
        self.code = code
        self.reason = reason


class _Socket:
    """A connected non-blocking socket's reads and writes, waiting through anyio."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    async def receive(self, size: int) -> bytes | None:
        """Up to ``size`` bytes; None at the end of the stream."""
        while True:
            await anyio.wait_readable(self.sock)
            try:
                return self.sock.recv(size) or None
            except BlockingIOError:
                continue

    async def send(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            await anyio.wait_writable(self.sock)
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                continue


class WebSocketClient:
    """A websocket client connection (wsproto over a non-blocking socket, waited on
    through anyio): reads from the socket only when a message is asked for, so a client
    that stops reading stalls the server's sends (the lag tests rely on it). Not an anyio
    stream: on asyncio those read whatever arrives, whether asked for or not."""

    def __init__(self, sock: socket.socket) -> None:
        self._stream = _Socket(sock)
        self._ws = WSConnection(ConnectionType.CLIENT)
        self._messages: deque[str | bytes] = deque()
        self._parts: list[str | bytes] = []
        self.close_reason: tuple[int, str | None] | None = None

    async def handshake(self, host: str, target: str, headers: list[tuple[bytes, bytes]]) -> None:
        await self._stream.send(self._ws.send(Request(host, target, extra_headers=headers)))
        while True:
            for event in await self._events():
                if isinstance(event, AcceptConnection):
                    return
                if isinstance(event, (RejectConnection, RejectData)):
                    status = event.status_code if isinstance(event, RejectConnection) else 0
                    raise trio_websocket.ConnectionRejected(status, (), None)
            if self.close_reason is not None:
                raise trio_websocket.ConnectionRejected(0, (), None)

    async def _events(self) -> list[Event]:
        try:
            data: bytes | None = await self._stream.receive(65536)
        except OSError:
            data = None
        self._ws.receive_data(data)
        events = list(self._ws.events())
        for event in events:
            if isinstance(event, (TextMessage, BytesMessage)):
                self._parts.append(
                    bytes(event.data) if isinstance(event, BytesMessage) else event.data
                )
                if event.message_finished:
                    parts, self._parts = self._parts, []
                    self._messages.append(
                        "".join(cast(list[str], parts))
                        if isinstance(event, TextMessage)
                        else b"".join(cast(list[bytes], parts))
                    )
            elif isinstance(event, CloseConnection):
                self.close_reason = (event.code, event.reason)
                if self._ws.state is ConnectionState.REMOTE_CLOSING:  # not the reply to ours
                    with contextlib.suppress(OSError):
                        await self._stream.send(self._ws.send(event.response()))
            elif isinstance(event, Ping):
                with contextlib.suppress(OSError):
                    await self._stream.send(self._ws.send(event.response()))
        if data is None and self.close_reason is None:
            self.close_reason = (1006, None)  # the connection ended without a close frame
        return events

    async def get_message(self) -> str | bytes:
        """The next message; ``trio_websocket.ConnectionClosed`` once the server closed
        (its reason None for a connection that ended without a close frame)."""
        while not self._messages:
            if self.close_reason is not None:
                code, reason = self.close_reason
                raise trio_websocket.ConnectionClosed(
                    None if code == 1006 else trio_websocket.CloseReason(code, reason)
                )
            await self._events()
        return self._messages.popleft()

    async def send_message(self, text: str) -> None:
        await self._stream.send(self._ws.send(TextMessage(data=text)))

    async def aclose(self) -> None:
        """Close with 1000 and wait (a little) for the server's close frame."""
        if self.close_reason is None and self._ws.state is ConnectionState.OPEN:
            with contextlib.suppress(OSError):
                await self._stream.send(self._ws.send(CloseConnection(1000)))
                with anyio.move_on_after(1):
                    while self.close_reason is None:
                        await self._events()


@dataclass
class Feed:
    ws: WebSocketClient
    local_port: int = 0  # the client end of the TCP connection (which worker serves it)
    welcome: dict[str, Any] = field(default_factory=dict)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)

    async def message(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next message of any type; ``FeedClosed`` once the server closed."""
        with anyio.fail_after(timeout):
            try:
                text = await self.ws.get_message()
            except trio_websocket.ConnectionClosed as e:
                if e.reason is None:
                    raise FeedClosed(1006, None) from None
                raise FeedClosed(e.reason.code, e.reason.reason) from None
        assert isinstance(text, str), "the feed sends text messages"
        doc = json.loads(text)
        assert isinstance(doc, dict) and doc.get("type") in (
            "welcome",
            "event",
            "heartbeat",
            "lagged",
        ), doc
        return doc

    async def event(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next event (heartbeats are kept in ``heartbeats``)."""
        while True:
            doc = await self.message(timeout)
            if doc["type"] == "heartbeat":
                self.heartbeats.append(doc)
                continue
            assert doc["type"] == "event", doc
            event = doc["event"]
            assert isinstance(event, dict)
            return event

    async def events(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        return [await self.event(timeout) for _ in range(count)]

    async def quiet(self, seconds: float) -> list[dict[str, Any]]:
        """Events arriving within ``seconds`` (expected: none)."""
        found: list[dict[str, Any]] = []
        with anyio.move_on_after(seconds):
            while True:
                found.append(await self.event(seconds + 1))
        return found

    async def closed(self, timeout: float = 5.0) -> tuple[FeedClosed, list[dict[str, Any]]]:
        """Read until the server closes; the close and every message before it."""
        before: list[dict[str, Any]] = []
        with anyio.fail_after(timeout):
            while True:
                try:
                    before.append(await self.message(timeout))
                except FeedClosed as e:
                    return e, before


def feed_resource(query: dict[str, Any] | None = None, path: str = FEED_PATH) -> str:
    return path + ("?" + urlencode(query, doseq=True) if query else "")


@asynccontextmanager
async def open_feed(
    port: int,
    query: dict[str, Any] | None = None,
    subscribe: dict[str, Any] | None = None,
    *,
    receive_buffer: int | None = None,
    welcome: bool = True,
    path: str = FEED_PATH,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Feed]:
    """One subscriber on 127.0.0.1:``port``, filtered by ``query`` parameters or by a
    first ``subscribe`` message (its "type" is added). With ``receive_buffer`` the
    client socket gets that SO_RCVBUF (a reader that stops reading then stalls the
    server's sends after a few KiB). With ``welcome`` the welcome message is read.
    ``headers`` go on the handshake (credentials)."""
    sock = socket.socket()
    # The socket is ours: closed here on every path, also when the handshake is refused
    # or the server closed first.
    try:
        if receive_buffer is not None:
            # Before connecting: the window the client advertises is set from it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        with anyio.fail_after(10):
            try:
                sock.connect(("127.0.0.1", port))
            except BlockingIOError:
                await anyio.wait_writable(sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if error:
                    raise OSError(error, os.strerror(error)) from None
        ws = WebSocketClient(sock)
        await ws.handshake(
            "127.0.0.1",
            feed_resource(query, path),
            [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
        )
        try:
            feed = Feed(ws, local_port=sock.getsockname()[1])
            if subscribe is not None:
                await ws.send_message(json.dumps({"type": "subscribe", **subscribe}))
            if welcome:
                doc = await feed.message()
                assert doc["type"] == "welcome", doc
                feed.welcome = doc
            yield feed
        finally:
            with anyio.move_on_after(2, shield=True):
                await ws.aclose()
    finally:
        sock.close()
