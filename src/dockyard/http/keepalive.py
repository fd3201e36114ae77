"""The keep-alive timer of hypercorn's asyncio worker as one event-loop timer.

hypercorn's asyncio ``TCPServer`` times an idle keep-alive connection with a task: at the
start of every request it cancels that task (and waits for it to end), and at the end of
every response it starts a new one, which runs ``asyncio.wait_for`` (a second task) on the
worker's termination event. That is four tasks made or cancelled per request: 22.8 CPU-us
of uvloop's time measured alone, against 0.9 for moving one ``loop.call_later`` timer
(``python -m perf.micro idle-timer``), on a manifest HEAD that costs about 300 in all.
``IdleTimer`` takes the task's place (``TCPServer.idle_task``, which hypercorn only ever
restarts and stops) and keeps hypercorn's two behaviours: a connection idle for
``keep_alive_timeout`` seconds is closed, and when the worker begins its graceful stop
every idle connection is closed at once (one watcher per worker waits for that).

Only the asyncio worker (``asyncio`` and ``uvloop``) has it; trio's idle task is a cancel
scope and costs little beside trio's own scheduling.
"""

from __future__ import annotations

import asyncio
import inspect
from importlib.metadata import version
from typing import Any

from dockyard.http.worker import extend_connection_class, is_asyncio, tcp_server_module


class IdleTimer:
    """One connection's keep-alive timer, with ``AsyncioSingleTask``'s interface."""

    def __init__(self, server: Any, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._server = server
        self._loop = loop
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._closing: asyncio.Task[None] | None = None
        self._idle = _idle_connections(server.context, loop)

    async def restart(self, task_group: object, action: object) -> None:
        """The connection is idle from now (hypercorn passes its own timeout task, which
        this replaces)."""
        self._cancel()
        if self._server.context.terminated.is_set():
            self.expire()  # stopping: an idle connection goes at once
            return
        self._timer = self._loop.call_later(self._timeout, self.expire)
        self._idle.add(self)

    async def stop(self) -> None:
        """The connection is busy (a request came) or closed."""
        self._cancel()

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._idle.discard(self)

    def expire(self) -> None:
        """Close the idle connection, as hypercorn's timeout task did (not cancellable:
        hypercorn shields it too)."""
        self._cancel()
        if self._closing is None:
            self._closing = self._loop.create_task(self._server._initiate_server_close())


def _idle_connections(context: Any, loop: asyncio.AbstractEventLoop) -> set[IdleTimer]:
    """The worker's idle connections; the first call starts the task that closes them all
    when the worker begins to stop."""
    idle: set[IdleTimer] | None = getattr(context, "dockyard_idle", None)
    if idle is None:
        idle = context.dockyard_idle = set()

        async def close_when_stopping() -> None:
            await context.terminated.wait()
            for timer in list(idle):
                timer.expire()

        context.dockyard_idle_watch = loop.create_task(close_when_stopping())
    return idle


def check_idle_timer_hook(backend: str) -> None:
    """Fail fast if hypercorn's asyncio ``TCPServer`` no longer uses its idle task as
    ``IdleTimer`` replaces it (restart when idle, stop when busy or closed)."""
    if not is_asyncio(backend):
        return
    try:
        # hypercorn's own class (the worker's run module names dockyard's subclasses).
        server = getattr(tcp_server_module(backend), "TCPServer")  # noqa: B009
        source = inspect.getsource(server)
        ok = (
            "self.idle_task = AsyncioSingleTask()" in source
            and "await self.idle_task.restart(self._task_group, self._idle_timeout)" in source
            and "await self.idle_task.stop()" in source
            and hasattr(server, "_initiate_server_close")
        )
    except (AttributeError, OSError, TypeError):
        ok = False
    if not ok:
        raise RuntimeError(
            f"hypercorn {version('hypercorn')} is not the asyncio TCPServer whose idle task "
            "dockyard.http.keepalive replaces; install the hypercorn version in "
            "constraints.txt or update dockyard.http.keepalive"
        )


def install_idle_timer(backend: str) -> None:
    """Give every connection of this (asyncio) worker an ``IdleTimer`` (idempotent)."""
    if not is_asyncio(backend):
        return
    check_idle_timer_hook(backend)

    def timed(base: type[Any]) -> type[Any]:
        class IdleTimerTCPServer(base):  # type: ignore[misc]
            # hypercorn's own parameters, by name: later hooks (tls.py) check the signature.
            def __init__(
                self,
                app: Any,
                loop: Any,
                config: Any,
                context: Any,
                state: Any,
                reader: Any,
                writer: Any,
            ) -> None:
                super().__init__(app, loop, config, context, state, reader, writer)
                self.idle_task = IdleTimer(self, loop, config.keep_alive_timeout)

        return IdleTimerTCPServer

    extend_connection_class(backend, "dockyard_idle_timer", timed)


__all__ = ["IdleTimer", "check_idle_timer_hook", "install_idle_timer"]
