"""Websocket clients of the event feed, and an in-process loopback server for them.

``serve_app`` runs a built registry's ASGI app under hypercorn in the test's own trio run,
on a loopback port, with the connection hooks ``dockyard serve`` installs (so feeds write
their frames straight to the socket, as in production); in-process tests use a real
websocket client (trio-websocket) over a real TCP connection. ``open_feed`` connects one
subscriber; its ``Feed`` reads the protocol's messages (``welcome``, ``event``,
``heartbeat``, ``lagged``) and the close code.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, cast
from urllib.parse import urlencode

import trio
import trio_websocket
from hypercorn.config import Config
from hypercorn.trio import serve

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
    """Serve ``app`` with hypercorn on 127.0.0.1 (a free port) until the block ends."""
    # As each dockyard worker does: feeds then write their frames straight to the socket
    # (http/websocket.py), the way they are served in production.
    websocket.install_stop_notice()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.graceful_timeout = 0.5
    served = _Served(app)
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:

        async def run(task_status: trio.TaskStatus[list[str]]) -> None:
            # hypercorn's ASGI types are narrower TypedDicts than this module's mappings.
            app = cast(Any, served)
            await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)

        binds: list[str] = await nursery.start(run)
        server = LoopbackServer(int(binds[0].rsplit(":", 1)[1]), served)
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


@dataclass
class Feed:
    ws: trio_websocket.WebSocketConnection
    local_port: int = 0  # the client end of the TCP connection (which worker serves it)
    welcome: dict[str, Any] = field(default_factory=dict)
    heartbeats: list[dict[str, Any]] = field(default_factory=list)

    async def message(self, timeout: float = 5.0) -> dict[str, Any]:
        """The next message of any type; ``FeedClosed`` once the server closed."""
        with trio.fail_after(timeout):
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
        with trio.move_on_after(seconds):
            while True:
                found.append(await self.event(seconds + 1))
        return found

    async def closed(self, timeout: float = 5.0) -> tuple[FeedClosed, list[dict[str, Any]]]:
        """Read until the server closes; the close and every message before it."""
        before: list[dict[str, Any]] = []
        with trio.fail_after(timeout):
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
    sock = trio.socket.socket()
    # The socket is ours (wrap_client_stream): closed here on every path, also when the
    # handshake is refused or the server closed first.
    stream: trio.SocketStream | None = None
    try:
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        with trio.fail_after(10):
            await sock.connect(("127.0.0.1", port))
        stream = trio.SocketStream(sock)
        async with trio.open_nursery() as nursery:
            ws = await trio_websocket.wrap_client_stream(
                nursery,
                stream,
                "127.0.0.1",
                feed_resource(query, path),
                message_queue_size=1,
                extra_headers=[(k.encode(), v.encode()) for k, v in (headers or {}).items()],
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
                with trio.move_on_after(2) as cleanup:
                    cleanup.shield = True
                    await ws.aclose()
                nursery.cancel_scope.cancel()
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)
        else:
            sock.close()
