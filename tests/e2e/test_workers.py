"""``dockyard serve --workers 2``: two processes share one data directory and database.

Parallel skopeo pushes of images that share layers race on the same blobs across both
processes; a chunked upload whose requests each come on a new connection moves between
processes, so its offset and saved hash state must travel through the database
(``docs/architecture.md``, A blob push). Which process served a request is read from /proc
(Linux): the test checks that the upload did change process, not just that it may have.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.conftest import Skopeo
from tests.e2e.logread import field, log_lines
from tests.imagegen import (
    OCILayout,
    build_image,
    layout_blob,
    layout_tags,
    make_layer,
)
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e


@pytest.fixture
def skopeo2(registry2: DockyardServer) -> Skopeo:
    return Skopeo(require_tool("skopeo"), registry2)


async def test_parallel_copies_share_layers(skopeo2: Skopeo, tmp_path: Path) -> None:
    layout = OCILayout(tmp_path / "src")
    # Incompressible layers of a few hundred KiB: uploads overlap in time.
    base = make_layer(400, files=4, file_size=128 * 1024)
    middle = make_layer(401, files=2, file_size=128 * 1024)
    targets: dict[str, tuple[str, str]] = {}  # tag in layout -> (repository:tag, digest)
    for i in range(6):
        layers = [base, middle, make_layer(410 + i)] if i % 2 else [base, make_layer(410 + i)]
        image = layout.add_image(f"t{i}", build_image(layers))
        targets[f"t{i}"] = (f"par/repo{i % 3}:t{i}", image.digest)

    async with trio.open_nursery() as nursery:
        for tag, (dest, _) in targets.items():
            nursery.start_soon(
                skopeo2.run,
                "copy",
                "--dest-tls-verify=false",
                "--preserve-digests",
                layout.ref(tag),
                skopeo2.docker(dest),
            )

    out = tmp_path / "out"
    out.mkdir()

    async def pull(tag: str, dest: str) -> None:
        await skopeo2.run(
            "copy",
            "--src-tls-verify=false",
            "--preserve-digests",
            skopeo2.docker(dest),
            f"oci:{out / tag}:{tag}",
        )

    async with trio.open_nursery() as nursery:
        for tag, (dest, _) in targets.items():
            nursery.start_soon(pull, tag, dest)

    src_blobs = layout.blobs
    for tag, (_, digest) in targets.items():
        assert layout_tags(out / tag) == {tag: digest}
        manifest = json.loads(layout_blob(out / tag, digest))
        for d in [manifest["config"], *manifest["layers"]]:
            got = layout_blob(out / tag, d["digest"])
            assert got == (src_blobs / d["digest"].removeprefix("sha256:")).read_bytes()
    for n in range(3):
        listed = await skopeo2.run(
            "list-tags", "--tls-verify=false", skopeo2.docker(f"par/repo{n}")
        )
        assert sorted(json.loads(listed.stdout)["Tags"]) == [f"t{n}", f"t{n + 3}"]


def worker_pids(parent: int) -> list[int]:
    """Child processes of ``parent`` (hypercorn's workers)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
        if int(stat.rpartition(")")[2].split()[1]) == parent:
            pids.append(int(entry))
    return pids


def serving_pid(server: DockyardServer, client_port: int) -> int | None:
    """The worker process holding the server end of our connection from ``client_port``."""
    assert server.proc is not None
    wanted = f"0100007F:{server.port:04X} 0100007F:{client_port:04X}"
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if f"{fields[1]} {fields[2]}" == wanted:
            inode = fields[9]
    if inode is None:
        return None
    for pid in worker_pids(server.proc.pid):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except FileNotFoundError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                    return pid
            except FileNotFoundError:
                continue
    return None


async def fresh_request(
    server: DockyardServer, method: str, url: str, **kwargs: object
) -> tuple[httpx.Response, int | None]:
    """One request on a connection of its own; also which worker served it."""
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        r = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
        pid = None
        if sys.platform == "linux":
            stream = r.extensions["network_stream"]
            try:
                client_port = stream.get_extra_info("client_addr")[1]
            except OSError:
                # An early answer (416 before the body was read) ends the connection, and
                # httpcore has closed its socket by now: who served it cannot be told.
                client_port = None
            if client_port is not None:
                pid = serving_pid(server, client_port)
        return r, pid


async def test_chunked_upload_moves_between_workers(registry2: DockyardServer) -> None:
    data = random.Random(420).randbytes(3 * 1024 * 1024)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    name = "chunks/blob"
    pids: list[int | None] = []

    r, pid = await fresh_request(registry2, "POST", f"/v2/{name}/blobs/uploads/")
    assert r.status_code == 202, r.text
    assert r.headers["range"] == "0-0"
    location = r.headers["location"]
    pids.append(pid)

    # Chunks of uneven sizes, some above hypercorn's 64 KiB receive size; keep going
    # (up to the whole blob) until the requests have been served by both processes.
    rng = random.Random(421)
    offset = 0
    final = len(data) - 100_000
    while offset < final:
        end = min(offset + rng.randrange(20_000, 300_000), final)
        r, pid = await fresh_request(
            registry2,
            "PATCH",
            location,
            content=data[offset:end],
            headers={
                "content-type": "application/octet-stream",
                "content-range": f"{offset}-{end - 1}",
            },
        )
        assert r.status_code == 202, r.text
        assert r.headers["range"] == f"0-{end - 1}"
        location = r.headers["location"]
        offset = end
        pids.append(pid)
        if len(pids) >= 8 and len(set(pids)) > 1:
            break

    # Status and an out-of-order chunk, each possibly answered by the other process.
    r, pid = await fresh_request(registry2, "GET", location)
    assert r.status_code == 204
    assert r.headers["range"] == f"0-{offset - 1}"
    pids.append(pid)
    r, pid = await fresh_request(
        registry2,
        "PATCH",
        location,
        content=data[:1000],
        headers={"content-type": "application/octet-stream", "content-range": "0-999"},
    )
    assert r.status_code == 416
    assert r.headers["range"] == f"0-{offset - 1}"
    pids.append(pid)

    r, pid = await fresh_request(
        registry2,
        "PUT",
        location,
        params={"digest": digest},
        content=data[offset:],
        headers={"content-type": "application/octet-stream"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    pids.append(pid)

    for _ in range(4):
        r, pid = await fresh_request(registry2, "GET", f"/v2/{name}/blobs/{digest}")
        assert r.status_code == 200
        assert r.content == data
        pids.append(pid)
    if sys.platform == "linux":
        served = [pid for pid in pids if pid is not None]
        assert len(served) >= len(pids) - 2, f"could not tell who served: {pids}"
        assert len(set(served)) == 2, f"every request went to one worker: {pids}"


async def test_each_worker_logs_its_start_once(registry2: DockyardServer) -> None:
    """hypercorn logs through dockyard's logging: one line per worker, in one format."""

    def running() -> list[dict[str, Any]]:
        return [d for d in log_lines(registry2) if d["message"].startswith("Running on")]

    started: list[dict[str, Any]] = []
    with trio.move_on_after(10):  # the second worker may still be starting
        while len(started) < 2:
            await trio.sleep(0.05)
            started = running()
    await trio.sleep(0.2)  # a double would come at once
    started = running()
    assert len(started) == 2, started
    assert all(field(d, "log.logger") == "hypercorn.error" for d in started), started
    assert all(field(d, "log.level") == "info" for d in started), started
    assert len({field(d, "process.pid") for d in started}) == 2, started
