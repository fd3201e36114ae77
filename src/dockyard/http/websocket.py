"""ASGI websocket plumbing: one accepted connection as an object, and the close sent for
a path that has no websocket endpoint.

Handlers (the event feed, ``http/handlers/feed.py``) run several tasks on one connection,
so every send goes through one lock; the time of the last send lets a handler keep the
connection alive only when it has been quiet.
"""

from __future__ import annotations

import trio

from dockyard.http.request import Receive, Send

# The standard code for "policy violation": the nearest to "no such endpoint".
CLOSE_NO_ENDPOINT = 1008


class WebSocket:
    """An ASGI websocket connection after ``websocket.connect`` was received."""

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self._lock = trio.Lock()
        self.last_sent = trio.current_time()

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})
        self.last_sent = trio.current_time()

    async def send_text(self, text: str) -> None:
        async with self._lock:
            await self._send({"type": "websocket.send", "text": text})
            self.last_sent = trio.current_time()

    async def close(self, code: int, reason: str) -> None:
        async with self._lock:
            await self._send({"type": "websocket.close", "code": code, "reason": reason})

    async def first_text(self, wait: float) -> str | None:
        """The client's first message as text ("" if it sent bytes); None if it sent
        nothing within ``wait`` seconds. Raises ``Disconnected`` if it left."""
        with trio.move_on_after(wait):
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
