"""Per-request server cost of auth, in process: N manifest HEADs straight into the ASGI app.

No sockets, no hypercorn, no client: what is left is what dockyard itself does per
request, so the difference between the modes is what authentication and authorization
cost. The same config files as ``perf.auth`` (none, basic with the password on every
HEAD, token with a bearer token on every HEAD). Usage::

    python -m perf.profile_auth --count 20000              # CPU-us per HEAD, every mode
    python -m perf.profile_auth --mode token --profile 25  # cProfile's top functions

On a shared machine CPU time is noisy; instruction counts are not. For those run one
mode under callgrind twice with different counts and divide the difference::

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        python -m perf.profile_auth --mode token --count 2000
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import json
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import trio

from dockyard.config import load
from dockyard.services import build
from perf.auth import MODES, PASSWORD, REPO, USER, write_config
from perf.data import ACCEPT, blob, image

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


async def credentials(app: App, mode: str) -> list[tuple[str, str]]:
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
            headers = [("accept", ACCEPT), *await credentials(app, mode)]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=MODES, action="append", help="default: every mode")
    parser.add_argument("--count", type=int, default=5000, help="HEADs per mode")
    parser.add_argument("--profile", type=int, default=0, metavar="TOP", help="print cProfile")
    args = parser.parse_args(argv)
    for name in list(os.environ):
        if name.startswith("DOCKYARD_"):
            del os.environ[name]
    with tempfile.TemporaryDirectory(prefix="perf-profile-auth-") as tmp:
        for mode in args.mode or MODES:
            root = Path(tmp) / mode
            root.mkdir()
            cpu = trio.run(measure, root, mode, args.count, args.profile)
            print(f"{mode}: {cpu:.1f} CPU-us per HEAD ({args.count} HEADs)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
