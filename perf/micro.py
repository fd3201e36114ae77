"""Per-request costs measured alone (CPU time of one thread, so a loaded machine moves them
less than whole-server figures): the numbers docs/architecture.md quotes for the
keep-alive timer and the answer cache's change marker.

    python -m perf.micro idle-timer     # hypercorn's idle task vs one loop timer (uvloop)
    python -m perf.micro change-marker  # SQLite's data_version vs a manifest tag lookup
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time

N = 20000


def idle_timer() -> None:
    import uvloop
    from hypercorn.asyncio.task_group import TaskGroup
    from hypercorn.asyncio.worker_context import AsyncioSingleTask

    async def main() -> None:
        loop = asyncio.get_running_loop()
        terminated = asyncio.Event()

        async def idle() -> None:  # hypercorn's TCPServer._idle_timeout, less the close
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(terminated.wait(), 5)

        async with TaskGroup(loop) as group:
            task = AsyncioSingleTask()
            started = time.process_time()
            for _ in range(N):  # a request: stop the idle task, then start it anew
                await task.stop()
                await task.restart(group, idle)
                await asyncio.sleep(0)
            hypercorn_us = (time.process_time() - started) / N * 1e6
            await task.stop()
            timer: asyncio.TimerHandle | None = None
            started = time.process_time()
            for _ in range(N):
                if timer is not None:
                    timer.cancel()
                timer = loop.call_later(5, lambda: None)
                await asyncio.sleep(0)
            timer_us = (time.process_time() - started) / N * 1e6
            if timer is not None:
                timer.cancel()
            started = time.process_time()
            for _ in range(N):
                await asyncio.sleep(0)
            bare_us = (time.process_time() - started) / N * 1e6
        print(
            f"per request, CPU-us: hypercorn's idle task {hypercorn_us - bare_us:.1f}, "
            f"one loop timer {timer_us - bare_us:.1f} (a bare loop turn, {bare_us:.1f}, "
            "taken off both)"
        )

    uvloop.run(main())


def change_marker() -> None:
    from dockyard.config import load
    from dockyard.meta.open import open_meta
    from dockyard.meta.records import NewManifest

    with tempfile.TemporaryDirectory(prefix="perf-micro-") as root:
        meta = open_meta(load(environ={"DOCKYARD_STORAGE_ROOT": root}))
        meta.migrate()
        digest = "sha256:" + "ab" * 32
        payload = b'{"schemaVersion":2}' + b" " * 400
        media_type = "application/vnd.oci.image.manifest.v1+json"
        manifest = NewManifest(
            "floor", digest, media_type, None, None, payload, None, [], [], ["v1"]
        )
        meta.put_manifest(manifest, [])
        with meta.inline_reads():
            assert meta.get_tagged_manifest("floor", "v1") is not None
            started = time.process_time()
            for _ in range(N):
                meta.get_tagged_manifest("floor", "v1")
            lookup_us = (time.process_time() - started) / N * 1e6
        started = time.process_time()
        for _ in range(N):
            meta.change_marker()
        marker_us = (time.process_time() - started) / N * 1e6
        meta.close()
    print(f"CPU-us: change marker {marker_us:.1f}, manifest lookup by tag {lookup_us:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["idle-timer", "change-marker"])
    args = parser.parse_args()
    idle_timer() if args.what == "idle-timer" else change_marker()


if __name__ == "__main__":
    main()
