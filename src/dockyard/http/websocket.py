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
"""

from __future__ import annotations

import inspect
from typing import Any, Protocol

import trio

from dockyard.http.request import Receive, Scope_, Send

# The standard code for "policy violation": the nearest to "no such endpoint".
CLOSE_NO_ENDPOINT = 1008
# The standard code for "the server is going away" (a graceful stop).
CLOSE_GOING_AWAY = 1001
# The key of the worker's terminated event in hypercorn's connection state (ASGI
# ``scope["state"]``, a copy per request of the connection's).
STOPPING_KEY = "dockyard.stopping"


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


def check_stop_notice_hook() -> None:
    """Fail fast if hypercorn's trio connection class or worker context are no longer
    what ``install_stop_notice`` relies on (every stop would wait the whole timeout
    again, silently)."""
    from importlib.metadata import version

    try:
        import hypercorn.trio.run
        from hypercorn.trio.worker_context import WorkerContext

        server = getattr(hypercorn.trio.run, "TCPServer")  # noqa: B009 - private name
        params = list(inspect.signature(server.__init__).parameters)
        source = inspect.getsource(hypercorn.trio.run.worker_serve)
        ok = (
            params[:6] == ["self", "app", "config", "context", "state", "stream"]
            and "terminated" in inspect.getsource(WorkerContext.__init__)
            and "context.terminated.set()" in source
        )
    except (ImportError, AttributeError, OSError, TypeError):
        ok = False
    if not ok:
        raise RuntimeError(
            f"hypercorn {version('hypercorn')} is not the trio connection class and worker "
            "context dockyard.http.websocket.install_stop_notice relies on (TCPServer(app, "
            "config, context, state, stream), WorkerContext.terminated); install the "
            "hypercorn version in constraints.txt or update dockyard.http.websocket"
        )


def install_stop_notice() -> None:
    """Give every hypercorn connection of this worker its ``terminated`` event in the
    connection state (idempotent; after ``h2edge.install``, whose class it extends)."""
    import hypercorn.trio.run

    check_stop_notice_hook()
    base: type[Any] = getattr(hypercorn.trio.run, "TCPServer")  # noqa: B009 - private name
    if getattr(base, "dockyard_stop_notice", False):
        return

    class StopNoticeTCPServer(base):  # type: ignore[misc]
        dockyard_stop_notice = True

        def __init__(
            self, app: Any, config: Any, context: Any, state: dict[str, Any], stream: Any
        ) -> None:
            state = {**state, STOPPING_KEY: context.terminated}
            super().__init__(app, config, context, state, stream)

    setattr(hypercorn.trio.run, "TCPServer", StopNoticeTCPServer)  # noqa: B010


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
