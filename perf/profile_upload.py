"""Profile where one worker's CPU goes while it receives monolithic blob pushes.

Runs dockyard's app under hypercorn's trio ``serve()`` inside ``cProfile`` in a child
process, pushes ``--count`` blobs of ``--size-mib`` MiB to it with ``http.client`` (1 MiB
writes), then prints the functions with the most own time. Usage::

    python -m perf.profile_upload [--size-mib 1024] [--count 2] [--top 25]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import os
import subprocess
import sys
import tempfile
import time

from perf.servers import free_port

SERVER = """
import cProfile, pstats, sys, trio
from hypercorn.config import Config
from hypercorn.trio import serve
from dockyard.config import load
from dockyard.services import build, set_read_size

root, port, out, top = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
settings = load(environ={"DOCKYARD_STORAGE_ROOT": root})
set_read_size(settings.server.read_size)
app = build(settings).app
config = Config()
config.bind = [f"127.0.0.1:{port}"]
config.accesslog = None


async def main() -> None:
    stop = trio.Event()

    async def watch_stdin() -> None:
        await trio.to_thread.run_sync(sys.stdin.read)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_stdin)
        await serve(app, config, shutdown_trigger=stop.wait)
        nursery.cancel_scope.cancel()


cProfile.run("trio.run(main)", out)
pstats.Stats(out).sort_stats("tottime").print_stats(top)
"""


def push(port: int, size: int, seed: int) -> float:
    block = hashlib.sha256(str(seed).encode()).digest() * (1 << 15)  # 1 MiB
    h = hashlib.sha256()
    for _ in range(size >> 20):
        h.update(block)
    digest = "sha256:" + h.hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    started = time.monotonic()
    conn.putrequest("POST", f"/v2/profile/blobs/uploads/?digest={digest}")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    for _ in range(size >> 20):
        conn.send(block)
    response = conn.getresponse()
    response.read()
    if response.status != 201:
        raise RuntimeError(f"push answered {response.status}")
    return (size >> 20) / (time.monotonic() - started)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--count", type=int, default=2)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="perf-profile-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        server = subprocess.Popen(
            [sys.executable, "-c", SERVER, tmp, str(port), f"{tmp}/profile.out", str(args.top)],
            stdin=subprocess.PIPE,
            env=env,
        )
        try:
            deadline = time.monotonic() + 20
            while True:
                try:
                    http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            for i in range(args.count):
                print(f"push {i + 1}: {push(port, args.size_mib << 20, i):.0f} MiB/s", flush=True)
        finally:
            assert server.stdin is not None
            server.stdin.close()  # the server stops and prints its profile
            server.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
