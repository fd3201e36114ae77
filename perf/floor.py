"""The per-request floor: what hypercorn itself costs before dockyard does any work.

Runs, in one alternating session, the same small-request load (HEAD, 16 keep-alive
connections) against:

- ``trivial-trio``: a 10-line ASGI app answering 200 with no body, served by hypercorn
  with the trio worker (dockyard's server stack with no dockyard in it);
- ``trivial-asyncio``: the same app under hypercorn's asyncio worker;
- ``dockyard-healthz``: dockyard's ``/healthz`` (routing, headers, no database);
- ``dockyard-manifest``: dockyard's manifest HEAD by tag (one database read in a thread).

Each server runs one worker process; figures are server CPU microseconds per request
from ``/proc`` and req/s, median over ``--repeats``. Usage::

    python -m perf.floor [--repeats 5] [--duration 4]
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from perf.procstat import cpu_seconds, process_tree
from perf.rate import build_requests, run_py
from perf.servers import free_port

# The start of every measured ASGI app: lifespan events answered, nothing run.
APP_LIFESPAN = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            await send({"type": message["type"] + ".complete"})
            if message["type"] == "lifespan.shutdown":
                return
"""

TRIVIAL_APP = (
    APP_LIFESPAN
    + """\
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
"""
)


def _wait_ready(port: int, path: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            conn.request("HEAD", path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server on {port} did not start")


def _start_trivial(workdir: Path, worker: str) -> tuple[subprocess.Popen[bytes], int]:
    (workdir / "trivial_asgi.py").write_text(TRIVIAL_APP)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hypercorn",
            "--worker-class",
            worker,
            "--bind",
            f"127.0.0.1:{port}",
            "trivial_asgi:app",
        ],
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait_ready(port, "/")
    return proc, port


def _start_dockyard(workdir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dockyard.cli",
            "serve",
            "--port",
            str(port),
            "--workers",
            "1",
            "--data-dir",
            str(workdir / "data"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    _wait_ready(port, "/healthz")
    _push_manifest(port)
    return proc, port


def _push_manifest(port: int) -> None:
    config = b"{}"
    digest = "sha256:" + hashlib.sha256(config).hexdigest()
    conn = http.client.HTTPConnection("127.0.0.1", port)
    conn.request("POST", f"/v2/floor/blobs/uploads/?digest={digest}", body=config)
    assert conn.getresponse().read() == b""
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": digest,
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    conn.request(
        "PUT",
        "/v2/floor/manifests/v1",
        body=manifest,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    response = conn.getresponse()
    response.read()
    assert response.status == 201, response.status


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--duration", type=float, default=4.0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="perf-floor-") as tmp:
        work = Path(tmp)
        servers = {
            "trivial-trio": (*_start_trivial(work, "trio"), "/"),
            "trivial-asyncio": (*_start_trivial(work, "asyncio"), "/"),
        }
        dockyard, port = _start_dockyard(work)
        servers["dockyard-healthz"] = (dockyard, port, "/healthz")
        servers["dockyard-manifest"] = (dockyard, port, "/v2/floor/manifests/v1")
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in servers}
        try:
            order = list(servers)
            for repeat in range(args.repeats):
                for name in order if repeat % 2 == 0 else reversed(order):
                    proc, port, path = servers[name]
                    pids = process_tree([proc.pid])
                    requests = build_requests("127.0.0.1", port, "HEAD", [path], [])
                    before = cpu_seconds(pids)
                    res = run_py(
                        "127.0.0.1",
                        port,
                        requests,
                        head=True,
                        connections=16,
                        duration=args.duration,
                        max_requests=10**7,
                    )
                    cpu = cpu_seconds(pids) - before
                    if res.failed or not res.ok:
                        raise RuntimeError(f"{name}: {res.failed} failed, {res.errors[:2]}")
                    results[name].append((res.ok / res.elapsed, cpu / res.ok * 1e6))
        finally:
            for proc, _, _ in servers.values():
                if proc.poll() is None:
                    os.killpg(proc.pid, 15)
                    proc.wait(20)
    print("| server | req/s (median) | server CPU-us/req (median [min-max]) |")
    print("|---|---|---|")
    for name, values in results.items():
        costs = [c for _, c in values]
        rate = statistics.median([r for r, _ in values])
        low, mid, high = min(costs), statistics.median(costs), max(costs)
        print(f"| {name} | {rate:.0f} | {mid:.0f} [{low:.0f}-{high:.0f}] |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
