"""Where one worker's CPU goes when it fans events out to N websocket subscribers.

    python -m perf.profile_feed --subscribers 2000 --pushes 20 [--profile 30]
                                [--backend trio|asyncio|uvloop]

Builds a registry in this process (a temporary data directory), serves it with
hypercorn's trio worker (or its asyncio one, on uvloop's loop with ``--backend uvloop``)
on loopback (with the connection hooks ``dockyard serve`` installs in each worker),
connects N raw subscribers (``perf.feed.Subscribers``, in child processes), then pushes
small blobs one at a time from a thread, each making one push event for every
subscriber. It prints the event loop thread's CPU per delivered message
(``time.thread_time`` of the thread that runs the server, from before the first push to
the first of its 10 ms samples after the last arrival, so the subscribers' closing
handshakes are not counted: the pushes' own handling is, about 1 ms each; the database
threads and the pushing thread are not) and, with ``--profile N``, the N
costliest functions of that thread (cProfile) over the same span.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import os
import pstats
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
from hypercorn.config import Config

from perf import feed
from perf.inprocess import start_hypercorn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.profile_feed")
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--procs", type=int, default=2, help="subscriber processes")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between pushes")
    parser.add_argument("--profile", type=int, default=0, help="print the N costliest functions")
    parser.add_argument("--backend", choices=("trio", "asyncio", "uvloop"), default="trio")
    args = parser.parse_args(argv)
    if args.backend == "trio":
        backend, options = "trio", {}
    else:
        backend, options = "asyncio", {"use_uvloop": args.backend == "uvloop"}
    with tempfile.TemporaryDirectory(prefix="dockyard-feed-profile-") as tmp:
        return anyio.run(_run, args, Path(tmp), backend=backend, backend_options=options)


async def _run(args: argparse.Namespace, tmp: Path) -> int:
    from dockyard.config import load
    from dockyard.http import h2edge, websocket
    from dockyard.services import build

    settings = load(
        environ={
            "DOCKYARD_STORAGE_ROOT": str(tmp / "data"),
            "DOCKYARD_SERVER_INSTANCE": "profile",
            "DOCKYARD_LOG_ACCESS": "false",
            "DOCKYARD_SERVER_BACKEND": args.backend,
        }
    )
    h2edge.install(args.backend)
    websocket.install_stop_notice(args.backend)
    services = build(settings)
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.websocket_ping_interval = None
    config.graceful_timeout = 1.0
    repo = "profile/feed"
    resource = f"{feed.FEED_PATH}?repository={repo}&action=push"
    shutdown = anyio.Event()
    stopped = anyio.Event()  # the server returned after ``shutdown``
    app = cast(Any, _NoLifespan(services.app))
    async with anyio.create_task_group() as nursery:
        await services.start(nursery)
        port = await start_hypercorn(nursery, app, config, args.backend, shutdown, stopped)
        subs = feed.Subscribers(
            "127.0.0.1", port, resource, args.subscribers, args.procs, setup_timeout=300
        )
        try:
            ready = await anyio.to_thread.run_sync(subs.start)
            print(f"{ready.welcomed} subscribers welcomed in {ready.connect_s:.1f} s", flush=True)
            blobs = [os.urandom(64) for _ in range(args.pushes)]
            digests = ["sha256:" + hashlib.sha256(b).hexdigest() for b in blobs]
            profiler = cProfile.Profile(time.thread_time) if args.profile else None
            samples: list[tuple[float, float]] = []

            async def sample() -> None:
                while True:
                    samples.append((time.monotonic(), time.thread_time()))
                    await anyio.sleep(0.01)

            nursery.start_soon(sample)
            await anyio.sleep(0.05)
            cpu0 = samples[-1][1]
            if profiler is not None:
                profiler.enable()
            pusher = threading.Thread(target=_push, args=(port, repo, blobs, args.interval))
            pusher.start()
            await anyio.to_thread.run_sync(pusher.join)
            result = await anyio.to_thread.run_sync(subs.finish, digests, time.monotonic() + 30.0)
            if profiler is not None:
                profiler.disable()
            last = max((t for s in result.subs for t, _ in s["arrivals"].values()), default=0.0)
            cpu = next((c for t, c in samples if t >= last), samples[-1][1]) - cpu0
        finally:
            await anyio.to_thread.run_sync(subs.close)
        got = sum(len(s["arrivals"]) for s in result.subs)
        expected = args.subscribers * args.pushes
        print(
            f"delivered {got} of {expected}; server {args.backend} loop thread {cpu:.2f} CPU-s, "
            f"{1e6 * cpu / max(got, 1):.1f} CPU-us per delivered message",
            flush=True,
        )
        if profiler is not None:
            stats = pstats.Stats(profiler, stream=sys.stdout)
            stats.sort_stats("tottime").print_stats(args.profile)
        shutdown.set()
        # Let the server stop by itself: hypercorn's asyncio worker, cancelled while it
        # stops, raises InvalidStateError.
        with anyio.move_on_after(10):
            await stopped.wait()
        await services.stop()
        nursery.cancel_scope.cancel()
    services.meta.close()
    return 0 if got == expected else 1


def _push(port: int, repo: str, blobs: list[bytes], interval: float) -> None:
    conn = feed.TimedConnection("127.0.0.1", port)
    try:
        for i, blob in enumerate(blobs):
            time.sleep(interval if i else 0.0)
            digest = "sha256:" + hashlib.sha256(blob).hexdigest()
            target = f"/v2/{repo}/blobs/uploads/?digest={digest}"
            timed = conn.request(
                "POST", target, [("content-type", "application/octet-stream")], blob
            )
            if timed.status != 201:
                raise RuntimeError(f"push answered {timed.status}: {timed.body[:200]!r}")
    finally:
        conn.close()


class _NoLifespan:
    """The app without its ASGI lifespan: the background tasks run in ``_run``."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await self.app(scope, receive, send)


if __name__ == "__main__":
    raise SystemExit(main())
