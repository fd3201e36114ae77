"""hypercorn serving an ASGI app inside the calling process, on the worker of the running
event loop's backend (trio's, or asyncio's and uvloop's): the in-process servers of
``perf.profile_feed`` and of the tests (tests/feedclient.py)."""

from __future__ import annotations

from typing import Any

import anyio
from anyio.abc import TaskGroup
from hypercorn.config import Config


async def start_hypercorn(
    tasks: TaskGroup,
    app: Any,
    config: Config,
    backend: str,
    shutdown: anyio.Event,
    stopped: anyio.Event | None = None,
) -> int:
    """Serve ``app`` (bound as ``config.bind`` says) in ``tasks`` until ``shutdown`` is
    set, and set ``stopped`` once the server has returned; the port it listens on."""
    if backend == "trio":
        from hypercorn.trio import serve

        async def run(task_status: Any) -> None:  # trio's TaskStatus, through anyio
            await serve(app, config, shutdown_trigger=shutdown.wait, task_status=task_status)
            if stopped is not None:
                stopped.set()

        binds: list[str] = await tasks.start(run)
        return int(binds[0].rsplit(":", 1)[1])

    from hypercorn.asyncio.run import worker_serve
    from hypercorn.utils import wrap_app

    # The asyncio worker does not report its port: bind (and listen) here, so connections
    # wait in the backlog until it serves.
    sockets = config.create_sockets()
    for sock in sockets.insecure_sockets:
        sock.listen(config.backlog)
    port: int = sockets.insecure_sockets[0].getsockname()[1]

    async def run_asyncio() -> None:
        await worker_serve(
            wrap_app(app, config.wsgi_max_body_size, "asgi"),
            config,
            sockets=sockets,
            shutdown_trigger=shutdown.wait,
        )
        if stopped is not None:
            stopped.set()

    tasks.start_soon(run_asyncio)
    return port
