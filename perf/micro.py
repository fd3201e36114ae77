"""Per-request costs measured alone (CPU time of one thread, so a loaded machine moves them
less than whole-server figures): the numbers docs/architecture.md and perf/RESULTS.md quote
for the keep-alive timer, the answer cache's change marker, pull events and h11.

    python -m perf.micro idle-timer     # hypercorn's idle task vs one loop timer (uvloop)
    python -m perf.micro change-marker  # SQLite's data_version vs a manifest tag lookup
    python -m perf.micro pull-events    # a manifest GET's pull event: made, and written
    python -m perf.micro h11-cycle      # h11's part of one HEAD on a kept-alive connection
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import Callable

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


def pull_events() -> None:
    """A manifest GET's pull event as the request path makes it (``EventMaker``) and as
    the pull writer stores it (``record_pulls`` in batches, with the pulled times)."""
    from dockyard.config import load
    from dockyard.core.common import EventMaker, RequestInfo
    from dockyard.events.pulls import pull_times
    from dockyard.meta.open import open_meta

    batch = 2000  # a worker's half-second at 4,000 GETs a second
    make = EventMaker("perf")
    info = RequestInfo("0123456789abcdef0123456789abcdef", "127.0.0.1", "perf/1.0", "GET")
    digest = "sha256:" + "ab" * 32
    media_type = "application/vnd.oci.image.manifest.v1+json"
    with tempfile.TemporaryDirectory(prefix="perf-micro-") as root:
        meta = open_meta(load(environ={"DOCKYARD_STORAGE_ROOT": root}))
        meta.migrate()
        started = time.process_time()
        events = [
            make(info, "pull", "floor", digest, media_type, 1234, "v1", kind="manifest")
            for _ in range(N)
        ]
        make_us = (time.process_time() - started) / N * 1e6
        started = time.process_time()
        for i in range(0, N, batch):
            part = events[i : i + batch]
            tags, manifests = pull_times(part)
            meta.record_pulls(part, tags, manifests)
        write_us = (time.process_time() - started) / N * 1e6
        meta.close()
    print(f"CPU-us per pull event: made {make_us:.1f}, written {write_us:.1f} (batches of {batch})")


def h11_cycle() -> None:
    """What h11 (hypercorn's HTTP/1 parser and state machine) costs for one manifest HEAD
    and its answer on a kept-alive connection, step by step, without any I/O: plain h11 as
    hypercorn drives it, then through dockyard's edge (``http/edge.py``: the strict
    connection, and the response checked once)."""
    import h11

    from dockyard.http import edge

    request = (
        b"HEAD /v2/floor/manifests/v1 HTTP/1.1\r\nHost: 127.0.0.1:5000\r\n"
        b"Accept: application/vnd.oci.image.manifest.v1+json\r\nUser-Agent: perf\r\n\r\n"
    )
    digest = b"sha256:" + b"ab" * 32
    headers = [
        (b"docker-distribution-api-version", b"registry/2.0"),
        (b"x-request-id", b"0123456789abcdef0123456789abcdef"),
        (b"content-type", b"application/vnd.oci.image.manifest.v1+json"),
        (b"content-length", b"1234"),
        (b"docker-content-digest", digest),
        (b"etag", b'"' + digest + b'"'),
        (b"date", b"Sun, 06 Dec 2026 16:00:00 GMT"),
    ]
    steps = ["parse the request", "make the Response", "send it", "send its end", "next cycle"]

    def plain() -> h11.Response:
        return h11.Response(status_code=200, headers=headers)

    def checked_once() -> h11.Response:
        return edge.response(headers, 200)

    ways: list[tuple[str, type[h11.Connection], Callable[[], h11.Response]]] = [
        ("h11", h11.Connection, plain),
        ("edge", edge.StrictServerConnection, checked_once),
    ]
    for label, connection, make_response in ways:
        conn = connection(h11.SERVER)
        spent = [0.0] * len(steps)
        clock = time.perf_counter
        for _ in range(N):
            t0 = clock()
            conn.receive_data(request)
            conn.next_event()  # the Request
            conn.next_event()  # its EndOfMessage
            t1 = clock()
            response = make_response()
            t2 = clock()
            conn.send(response)
            t3 = clock()
            conn.send(h11.EndOfMessage())
            t4 = clock()
            conn.start_next_cycle()
            t5 = clock()
            for i, (a, b) in enumerate(((t0, t1), (t1, t2), (t2, t3), (t3, t4), (t4, t5))):
                spent[i] += b - a
        parts = ", ".join(f"{name} {t / N * 1e6:.1f}" for name, t in zip(steps, spent, strict=True))
        print(f"{label}: us per request cycle {sum(spent) / N * 1e6:.1f} ({parts})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    runs = {
        "idle-timer": idle_timer,
        "change-marker": change_marker,
        "pull-events": pull_events,
        "h11-cycle": h11_cycle,
    }
    parser.add_argument("what", choices=list(runs))
    runs[parser.parse_args().what]()


if __name__ == "__main__":
    main()
