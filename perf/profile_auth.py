"""Per-request server cost of auth, in process: N manifest HEADs straight into the ASGI app.

No sockets, no hypercorn, no client: what is left is what dockyard itself does per
request, so the difference between the modes is what authentication and authorization
cost. The same config files as ``perf.auth`` (none, basic with the password on every
HEAD, token with a bearer token on every HEAD). Usage::

    python -m perf.profile_auth --count 20000              # CPU-us per HEAD, every mode
    python -m perf.profile_auth --mode token --profile 25  # cProfile's top functions

On a shared machine CPU time is noisy; instruction counts are not. ``--callgrind`` runs
each mode twice under ``valgrind --tool=callgrind`` (``--count`` HEADs and a fifth of
that) and prints the difference per HEAD. ``--served`` puts hypercorn back: the app is
served on a loopback port by a child process (the one under callgrind, if asked), which
one keep-alive connection from this process sends the HEADs to, so the counts are the
whole server's per request, HTTP parsing included::

    python -m perf.profile_auth --callgrind --count 1000            # the app alone
    python -m perf.profile_auth --callgrind --served --count 1000   # with hypercorn
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import pstats
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import trio

from dockyard.config import load
from dockyard.services import build
from perf import oci
from perf.auth import MODES, PASSWORD, USER, credentials, write_config
from perf.data import ACCEPT, blob, image
from perf.httpclient import Connection
from perf.modes import REPO
from perf.servers import free_port

Message = MutableMapping[str, Any]
App = Callable[
    [Message, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]


async def call(
    app: App, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b""
) -> tuple[int, bytes]:
    """One request into the app: (status, body)."""
    path, _, query = target.partition("?")
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": [(k.encode(), v.encode()) for k, v in headers]
        + [(b"host", b"127.0.0.1"), (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 5000),
    }
    sent = False
    status = 0
    parts: list[bytes] = []

    async def receive() -> Message:
        nonlocal sent
        if sent:
            await trio.sleep_forever()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    await app(scope, receive, send)
    return status, b"".join(parts)


async def app_credentials(app: App, mode: str) -> list[tuple[str, str]]:
    basic = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    if mode == "none":
        return []
    if mode == "basic":
        return [("authorization", basic)]
    target = f"/auth/token?service=dockyard&scope=repository:{REPO}:pull"
    status, body = await call(app, "GET", target, [("authorization", basic)])
    if status != 200:
        raise RuntimeError(f"token service answered {status}: {body!r}")
    return [("authorization", f"Bearer {json.loads(body)['token']}")]


async def measure(root: Path, mode: str, count: int, top: int) -> float:
    """CPU-us per HEAD in ``mode`` (after one warm-up HEAD); prints a profile if ``top``."""
    config = write_config(root, mode)
    settings = load(config, environ={"DOCKYARD_STORAGE_ROOT": str(root / f"data-{mode}")})
    services = build(settings)
    app: App = services.app
    im = image("profile", [blob("profile/layer", 1024)])
    try:
        async with trio.open_nursery() as nursery:
            await services.start(nursery)
            for b in im.blobs:
                assert isinstance(b.data, bytes)
                target = f"/v2/{REPO}/blobs/uploads/?digest={b.digest}"
                status, _ = await call(app, "POST", target, [], b.data)
                assert status == 201, status
            media = [("content-type", "application/vnd.oci.image.manifest.v1+json")]
            status, _ = await call(app, "PUT", f"/v2/{REPO}/manifests/t", media, im.manifest)
            assert status == 201, status
            headers = [("accept", ACCEPT), *await app_credentials(app, mode)]
            target = f"/v2/{REPO}/manifests/t"
            status, _ = await call(app, "HEAD", target, headers)
            assert status == 200, f"{mode}: HEAD answered {status}"
            profile = cProfile.Profile() if top else None
            started = time.process_time()
            if profile is not None:
                profile.enable()
            for _ in range(count):
                status, _ = await call(app, "HEAD", target, headers)
            if profile is not None:
                profile.disable()
            cpu = time.process_time() - started
            assert status == 200, status
            if profile is not None:
                print(f"--- {mode}: {count} HEADs")
                pstats.Stats(profile).sort_stats("tottime").print_stats(top)
            await services.stop()
            nursery.cancel_scope.cancel()
    finally:
        services.meta.close()
    return 1e6 * cpu / max(count, 1)


SERVED = """
import sys, trio
from hypercorn.config import Config
from hypercorn.trio import serve
from dockyard.services import create_app

config = Config()
config.bind = [f"127.0.0.1:{sys.argv[1]}"]
config.accesslog = None
app = create_app()


async def main() -> None:
    stop = trio.Event()

    async def watch_stdin() -> None:
        await trio.to_thread.run_sync(sys.stdin.read)
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_stdin)
        await serve(app, config, shutdown_trigger=stop.wait)
        nursery.cancel_scope.cancel()


trio.run(main)
"""


def serve_and_head(root: Path, mode: str, count: int, wrapper: list[str]) -> str:
    """Serve ``mode`` from a child process (``wrapper`` in front: valgrind), send it
    ``count`` HEADs on one keep-alive connection; the child's stderr."""
    config = write_config(root, mode)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env |= {"DOCKYARD_CONFIG": str(config), "DOCKYARD_STORAGE_ROOT": str(root / "data")}
    env |= {"DOCKYARD_LOG_LEVEL": "warning"}
    if wrapper:
        # Under valgrind a minute passes within a few hundred HEADs, and the basic server
        # would run bcrypt again (auth.cache_seconds): not a per-request cost.
        env["DOCKYARD_AUTH_CACHE_SECONDS"] = "86400"
    log = (root / "server.log").open("w+b")
    server = subprocess.Popen(
        [*wrapper, sys.executable, "-c", SERVED, str(port)],
        stdin=subprocess.PIPE,
        stderr=log,
        env=env,
    )
    try:
        deadline = time.monotonic() + 300  # slow under valgrind
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"{mode}: the server did not start") from None
                time.sleep(0.1)
        im = image("profile", [blob("profile/layer", 1024)])
        with Connection("127.0.0.1", port) as conn:
            oci.push_image(conn, REPO, "t", im)
            headers = [("accept", ACCEPT), *credentials(port, mode)]
            for _ in range(count + 1):  # the first checks the credential: start-up cost
                r = conn.request("HEAD", f"/v2/{REPO}/manifests/t", headers)
                if r.status != 200:
                    raise RuntimeError(f"{mode}: HEAD answered {r.status}")
    finally:
        assert server.stdin is not None
        server.stdin.close()  # the server stops
        server.wait(600)
    with log:
        log.seek(0)
        return log.read().decode(errors="replace")


def instructions(stderr: str) -> int:
    match = re.search(r"Collected : (\d+)", stderr)
    if match is None:
        raise RuntimeError(f"no callgrind total in: {stderr[-2000:]}")
    return int(match[1])


def callgrind_per_head(tmp: Path, mode: str, count: int, served: bool) -> float:
    """Instructions per HEAD: two runs, ``count`` and ``count // 5`` HEADs, differenced
    (start-up, set-up and shut-down cancel out)."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        raise SystemExit("valgrind is not installed (apt-get install -y valgrind)")
    wrapper = [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    totals = []
    for n in (count // 5, count):
        root = tmp / f"{mode}-{n}"
        root.mkdir()
        if served:
            stderr = serve_and_head(root, mode, n, wrapper)
        else:
            command = [sys.executable, "-m", "perf.profile_auth", "--mode", mode]
            done = subprocess.run(
                [*wrapper, *command, "--count", str(n)],
                capture_output=True,
                text=True,
                check=True,
                cwd=Path(__file__).resolve().parent.parent,
            )
            stderr = done.stderr
        totals.append(instructions(stderr))
    return (totals[1] - totals[0]) / (count - count // 5)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=MODES, action="append", help="default: every mode")
    parser.add_argument("--count", type=int, default=5000, help="HEADs per mode")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP", help="print cProfile")
    parser.add_argument("--callgrind", action="store_true", help="instructions per HEAD")
    parser.add_argument("--served", action="store_true", help="through hypercorn and a socket")
    args = parser.parse_args(argv)
    for name in list(os.environ):
        if name.startswith("DOCKYARD_"):
            del os.environ[name]
    with tempfile.TemporaryDirectory(prefix="perf-profile-auth-") as tmp:
        base: float | None = None
        for mode in args.mode or MODES:
            root = Path(tmp) / mode
            root.mkdir()
            if args.callgrind:
                per_head = callgrind_per_head(root, mode, args.count, args.served)
                base = per_head if base is None else base
                print(
                    f"{mode}: {per_head:.0f} instructions per HEAD "
                    f"({per_head / base:.3f}x the first mode)",
                    flush=True,
                )
            elif args.served:
                started = time.monotonic()
                serve_and_head(root, mode, args.count, [])
                wall = 1e6 * (time.monotonic() - started) / args.count
                print(f"{mode}: {wall:.0f} wall-us per HEAD, set-up included", flush=True)
            else:
                cpu = trio.run(measure, root, mode, args.count, args.profile)
                print(f"{mode}: {cpu:.1f} CPU-us per HEAD ({args.count} HEADs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
