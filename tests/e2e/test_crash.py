"""Crash safety of a real ``dockyard serve``: SIGKILL mid-upload and mid-commit, SIGTERM.

The promise under test (``docs/architecture.md``, A blob push; ``core/uploads.py``;
``storage/filesystem.py``): a crash at any moment never leaves a partial or unverified
blob visible, never loses a blob whose push was acknowledged (201), and ``dockyard serve``
restarts cleanly on the same data directory, freeing its dead run's upload leases, so an
unfinished chunked upload continues from its last saved offset.

Kills are real ``SIGKILL``s of the server's process group while real HTTP requests stream
over loopback. Two crash points are narrow (between the filesystem commit's ``link`` and
``unlink``, and between ``unlink`` and the metadata transaction): the mid-commit test aims
at them by killing the moment a blob file appears, which hits them in some runs, and
``test_restart_after_interrupted_commit`` builds the data directory a kill at exactly those
points leaves behind and restarts the real server on it, every run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e

KiB = 1024
MiB = 1024 * KiB
PIECE = 256 * KiB  # request body pieces handed to httpx
REPO = "crash/app"


# -- content: deterministic pseudo-random blobs, regenerated on demand, never held whole


@functools.cache
def _pool() -> bytes:
    return random.Random(20240601).randbytes(2 * MiB)


@dataclass(frozen=True)
class Blob:
    seed: int
    size: int

    def _piece(self, pos: int, n: int) -> bytes:
        """``n`` bytes at ``pos``, within one 1 MiB block."""
        block, off = divmod(pos, MiB)
        base = (self.seed * 1_000_003 + block * 7_919) % MiB
        data = _pool()[base + off : base + off + n]
        if block == 0 and off < 8:  # the seed up front makes every blob distinct
            head = self.seed.to_bytes(8, "big")[off : off + n]
            data = head + data[len(head) :]
        return data

    def pieces(self, start: int = 0, end: int | None = None, piece: int = PIECE) -> Iterator[bytes]:
        end = self.size if end is None else end
        pos = start
        while pos < end:
            n = min(piece, MiB - pos % MiB, end - pos)
            yield self._piece(pos, n)
            pos += n

    def digest_of_prefix(self, end: int) -> str:
        h = hashlib.sha256()
        for p in self.pieces(0, end, MiB):
            h.update(p)
        return f"sha256:{h.hexdigest()}"

    @functools.cached_property
    def digest(self) -> str:
        return self.digest_of_prefix(self.size)


Hook = Callable[[int], Awaitable[None]]


class BlobBody(httpx.AsyncByteStream):
    """A request body streamed from ``blob[start:end]``.

    Not an async generator: httpx does not close a body whose request failed (every
    request a kill interrupts), and trio warns about generators collected unfinished.
    ``hook(sent)`` runs after each piece went out (and once more at the end), to pace
    the body or to act at a point of it.
    """

    def __init__(
        self, blob: Blob, start: int = 0, end: int | None = None, hook: Hook | None = None
    ) -> None:
        self._pieces = blob.pieces(start, end)
        self._hook = hook
        self._sent = 0

    def __aiter__(self) -> BlobBody:
        return self

    async def __anext__(self) -> bytes:
        piece = next(self._pieces, None)
        if self._hook is not None and (self._sent or piece is None):
            await self._hook(self._sent)
        if piece is None:
            raise StopAsyncIteration
        self._sent += len(piece)
        return piece


async def send(
    c: httpx.AsyncClient,
    method: str,
    url: str,
    body: BlobBody,
    length: int,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
) -> httpx.Response:
    request = c.build_request(
        method, url, params=params, headers={**(headers or {}), "content-length": str(length)}
    )
    request.stream = body
    return await c.send(request)


# -- HTTP helpers


def client_for(server: DockyardServer) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=server.url,
        timeout=httpx.Timeout(60.0),
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
    )


def range_end(response: httpx.Response) -> int:
    """The offset a ``Range: 0-<last>`` header reports (sizes here are never 1 byte)."""
    first, _, last = response.headers["range"].partition("-")
    assert first == "0", response.headers["range"]
    return 0 if int(last) == 0 else int(last) + 1


def error_code(response: httpx.Response) -> str:
    doc = response.json()
    code: str = doc["errors"][0]["code"]
    return code


async def push_mono(
    c: httpx.AsyncClient, repo: str, blob: Blob, hook: Hook | None = None
) -> httpx.Response:
    return await send(
        c,
        "POST",
        f"/v2/{repo}/blobs/uploads/",
        BlobBody(blob, hook=hook),
        blob.size,
        params={"digest": blob.digest},
    )


async def start_upload(c: httpx.AsyncClient, repo: str) -> str:
    r = await c.post(f"/v2/{repo}/blobs/uploads/")
    assert r.status_code == 202, r.text
    location: str = r.headers["location"]
    return location


async def patch(
    c: httpx.AsyncClient, location: str, blob: Blob, start: int, end: int, hook: Hook | None = None
) -> httpx.Response:
    return await send(
        c,
        "PATCH",
        location,
        BlobBody(blob, start, end, hook),
        end - start,
        {"content-range": f"{start}-{end - 1}", "content-type": "application/octet-stream"},
    )


async def put(
    c: httpx.AsyncClient,
    location: str,
    blob: Blob,
    start: int,
    digest: str | None = None,
    hook: Hook | None = None,
) -> httpx.Response:
    """PUT ?digest= with ``blob[start:]`` as the last chunk (no Content-Range if empty)."""
    headers = {"content-range": f"{start}-{blob.size - 1}"} if start < blob.size else {}
    return await send(
        c,
        "PUT",
        location,
        BlobBody(blob, start, hook=hook),
        blob.size - start,
        headers,
        {"digest": digest or blob.digest},
    )


async def push_chunked(
    c: httpx.AsyncClient, repo: str, push: Push, hook: Hook | None = None
) -> httpx.Response:
    """POST, one PATCH per span between ``cuts``, then PUT with the rest (may be empty)."""
    blob = push.blob
    location = push.location = await start_upload(c, repo)
    start = 0
    for end in push.cuts:
        r = await patch(c, location, blob, start, end)
        assert r.status_code == 202, r.text
        assert range_end(r) == end
        start = end
    return await put(c, location, blob, start, hook=hook)


async def get_digest(c: httpx.AsyncClient, repo: str, digest: str) -> tuple[str, int]:
    """GET a blob; returns the sha256 digest and length of the bytes served."""
    h = hashlib.sha256()
    n = 0
    async with c.stream("GET", f"/v2/{repo}/blobs/{digest}") as r:
        assert r.status_code == 200, (digest, r.status_code)
        async for chunk in r.aiter_bytes():
            h.update(chunk)
            n += len(chunk)
        assert int(r.headers["content-length"]) == n
    return f"sha256:{h.hexdigest()}", n


async def assert_served(c: httpx.AsyncClient, repo: str, blob: Blob) -> None:
    head = await c.head(f"/v2/{repo}/blobs/{blob.digest}")
    assert head.status_code == 200, (blob, head.status_code)
    assert int(head.headers["content-length"]) == blob.size
    assert await get_digest(c, repo, blob.digest) == (blob.digest, blob.size)


# -- the data directory (layout documented in storage/filesystem.py)


def blob_path(data_dir: Path, digest: str) -> Path:
    algorithm, _, encoded = digest.partition(":")
    return data_dir / "blobs" / algorithm / encoded[:2] / encoded


def upload_path(data_dir: Path, location: str) -> Path:
    return data_dir / "uploads" / location.rstrip("/").rsplit("/", 1)[-1]


def assert_blob_store_intact(data_dir: Path) -> int:
    """Every file under blobs/ hashes to its name; returns how many there are."""
    count = 0
    for path in sorted((data_dir / "blobs").rglob("*")):
        if path.is_dir():
            continue
        algorithm = path.parent.parent.name
        assert algorithm == "sha256", path
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
        assert h.hexdigest() == path.name, f"{path} holds content that is not its digest"
        count += 1
    return count


# -- a small committed image: what a crash must never lose


@dataclass
class Committed:
    config: bytes
    blobs: list[Blob]
    manifest: bytes
    digest: str
    tag: str = "v1"


async def push_image(c: httpx.AsyncClient, repo: str, seed: int) -> Committed:
    config = (b'{"architecture":"amd64","os":"linux","seed":%d}' % seed).ljust(300, b" ")
    r = await c.post(
        f"/v2/{repo}/blobs/uploads/",
        params={"digest": f"sha256:{hashlib.sha256(config).hexdigest()}"},
        content=config,
    )
    assert r.status_code == 201, r.text
    layers = [Blob(seed + i, (3 + i) * MiB + 17 * i) for i in range(3)]
    for layer in layers:
        r = await push_mono(c, repo, layer)
        assert r.status_code == 201, r.text
    manifest = (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",'
        b'"config":{"mediaType":"application/vnd.oci.image.config.v1+json",'
        b'"digest":"sha256:%s","size":%d},"layers":[%s]}'
        % (
            hashlib.sha256(config).hexdigest().encode(),
            len(config),
            b",".join(
                b'{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":%d}'
                % (layer.digest.encode(), layer.size)
                for layer in layers
            ),
        )
    )
    digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
    r = await c.put(
        f"/v2/{repo}/manifests/v1",
        content=manifest,
        headers={"content-type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    return Committed(config, layers, manifest, digest)


async def assert_image(c: httpx.AsyncClient, repo: str, image: Committed) -> None:
    for layer in image.blobs:
        await assert_served(c, repo, layer)
    config_digest = f"sha256:{hashlib.sha256(image.config).hexdigest()}"
    r = await c.get(f"/v2/{repo}/blobs/{config_digest}")
    assert r.status_code == 200
    assert r.content == image.config
    for reference in (image.tag, image.digest):
        r = await c.get(
            f"/v2/{repo}/manifests/{reference}",
            headers={"accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert r.status_code == 200, r.text
        assert r.content == image.manifest
        assert r.headers["docker-content-digest"] == image.digest
    r = await c.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200
    assert image.tag in r.json()["tags"]


# -- fixtures


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DockyardServer]:
    """A server for one test, not started (tests start, kill and restart it). At the end
    its log, over every run, must hold no traceback: a server error is a bug even when the
    client found a way around it."""
    srv = DockyardServer(tmp_path / "data")
    try:
        yield srv
    finally:
        srv.kill()
    text = srv.log_path.read_text(errors="replace") if srv.log_path.exists() else ""
    assert "Traceback" not in text, f"dockyard logged an unhandled error:\n{text[-8000:]}"


async def restart(server: DockyardServer) -> None:
    await trio.to_thread.run_sync(server.start)


async def wait_for_size(path: Path, at_least: int, timeout: float = 15.0) -> int:
    """Wait until the server has written ``at_least`` bytes to ``path``."""
    with trio.fail_after(timeout):
        while True:
            size = os.stat(path).st_size
            if size >= at_least:
                return size
            await trio.sleep(0.005)


async def kill_mid_patch(
    server: DockyardServer, c: httpx.AsyncClient, blob: Blob, saved: int, end: int
) -> str:
    """Save ``saved`` bytes with one PATCH, start a second PATCH of ``saved..end`` that
    sends half its body and stalls, and SIGKILL the server once it has written part of that
    chunk to the upload file. Returns the upload's Location."""
    location = await start_upload(c, REPO)
    r = await patch(c, location, blob, 0, saved)
    assert r.status_code == 202, r.text
    assert range_end(r) == saved
    half = saved + (end - saved) // 2
    on_disk = upload_path(server.data_dir, location)

    killed = trio.Event()

    async def stall_at_half(sent: int) -> None:
        if sent >= half - saved:
            await killed.wait()  # the server dies while this request is open

    failures: list[httpx.TransportError] = []

    async def slow_patch() -> None:
        try:
            await patch(c, location, blob, saved, end, stall_at_half)
        except httpx.TransportError as e:
            failures.append(e)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_patch)
        # The server is streaming the chunk into the upload, past the saved offset.
        written = await wait_for_size(on_disk, saved + MiB)
        server.kill()
        killed.set()
    assert len(failures) == 1, "the PATCH cannot have succeeded"
    assert written > saved
    # The dead request's bytes are still there past the saved offset: the dangerous state.
    assert on_disk.stat().st_size > saved
    return location


# -- tests


async def test_kill_mid_patch_keeps_committed_and_upload_resumes(server: DockyardServer) -> None:
    """SIGKILL while a PATCH streams: committed blobs and the tagged manifest survive
    intact, the upload reports its last saved offset, and the client continues from
    there (the dead run's lease does not block it) and finishes with a verified blob."""
    blob = Blob(7, 40 * MiB + 4567)
    saved, end = 8 * MiB + 123, 32 * MiB
    with trio.fail_after(90):
        await restart(server)
        async with client_for(server) as c:
            image = await push_image(c, REPO, 100)
            location = await kill_mid_patch(server, c, blob, saved, end)
        started = time.monotonic()
        await restart(server)
        print(f"restart after SIGKILL took {time.monotonic() - started:.2f}s")
        async with client_for(server) as c:
            await assert_image(c, REPO, image)
            assert (await c.head(f"/v2/{REPO}/blobs/{blob.digest}")).status_code == 404
            # The upload reports its last saved offset, not what the dead request wrote.
            r = await c.get(location)
            assert r.status_code == 204, r.text
            assert range_end(r) == saved
            # The dead process's lease does not block the new server.
            r = await patch(c, location, blob, saved, end)
            assert r.status_code == 202, r.text
            assert range_end(r) == end
            r = await put(c, location, blob, end)
            assert r.status_code == 201, r.text
            assert r.headers["docker-content-digest"] == blob.digest
            await assert_served(c, REPO, blob)
            assert (await c.get(location)).status_code == 404
    assert assert_blob_store_intact(server.data_dir) == 5


async def test_kill_mid_patch_then_finish_with_saved_bytes(server: DockyardServer) -> None:
    """The client gives up the interrupted chunk and completes what was saved (PUT with
    no body): the dead request's extra bytes must not end up in, or block, the blob."""
    blob = Blob(8, 24 * MiB)
    saved = 6 * MiB + 99
    with trio.fail_after(60):
        await restart(server)
        async with client_for(server) as c:
            location = await kill_mid_patch(server, c, blob, saved, blob.size)
        await restart(server)
        async with client_for(server) as c:
            r = await c.get(location)
            assert r.status_code == 204
            assert range_end(r) == saved
            prefix = blob.digest_of_prefix(saved)
            r = await c.put(location, params={"digest": prefix}, content=b"")
            assert r.status_code == 201, r.text
            assert await get_digest(c, REPO, prefix) == (prefix, saved)
    assert assert_blob_store_intact(server.data_dir) == 1


@dataclass
class Push:
    blob: Blob
    chunked: bool
    cuts: list[int]
    body_sent: trio.Event = field(default_factory=trio.Event)
    location: str | None = None  # the chunked upload's session, once POSTed
    status: int | None = None  # the response status, None if the request died
    acknowledged: bool = False  # a 201 arrived before the kill


def plan_round(round_no: int, count: int) -> list[Push]:
    rng = random.Random(round_no)
    pushes = []
    for i in range(count):
        size = rng.choice((16, 24, 32, 48)) * MiB + rng.randrange(1, 64 * KiB)
        chunked = i % 2 == 1
        cuts: list[int] = []
        if chunked:
            cuts = sorted(rng.sample(range(MiB, size - MiB, 4099), rng.choice((1, 2, 3))))
            if i % 4 == 3:
                cuts.append(size)  # everything PATCHed, PUT with an empty body
        pushes.append(Push(Blob(1000 * round_no + i, size), chunked, cuts))
    return pushes


class Round:
    """Concurrent pushes and the moment to kill them: when ``n`` pushes have sent their
    last body byte (``"sent"``), got their 201 (``"acked"``), or have their blob file
    linked under blobs/ (``"on disk"``: the commit is between its link and the metadata
    transaction, or just past it)."""

    def __init__(self, data_dir: Path, pushes: list[Push], when: str, n: int) -> None:
        assert when in ("sent", "acked", "on disk")
        self.data_dir = data_dir
        self.pushes = pushes
        self.when = when
        self.n = n
        self.kill_now = trio.Event()

    def _check(self) -> None:
        if self.when == "sent":
            reached = sum(p.body_sent.is_set() for p in self.pushes) >= self.n
        elif self.when == "acked":
            reached = sum(p.acknowledged for p in self.pushes) >= self.n
        else:
            reached = on_disk(self.data_dir, self.pushes) >= self.n
        if reached:
            self.kill_now.set()

    async def watch_disk(self) -> None:
        if self.when != "on disk":
            return
        while not self.kill_now.is_set():
            self._check()
            await trio.sleep(0.0005)

    async def run_push(self, c: httpx.AsyncClient, push: Push) -> None:
        async def sent(n: int) -> None:
            if n >= push.blob.size - (push.cuts[-1] if push.cuts else 0):
                push.body_sent.set()
                self._check()

        try:
            if push.chunked:
                r = await push_chunked(c, REPO, push, sent)
            else:
                r = await push_mono(c, REPO, push.blob, sent)
        except httpx.TransportError:
            return  # the server died under this request
        push.status = r.status_code
        assert r.status_code == 201, r.text
        assert r.headers["docker-content-digest"] == push.blob.digest
        push.acknowledged = True
        self._check()


def on_disk(data_dir: Path, pushes: list[Push]) -> int:
    """How many of the pushes have their blob file under blobs/."""
    return sum(1 for p in pushes if os.path.exists(blob_path(data_dir, p.blob.digest)))


def shared_uploads(data_dir: Path) -> set[str]:
    """Upload files that are also a stored blob (a commit killed between link and unlink;
    a monolithic push's file stays so until the janitor purges it)."""
    return {f.name for f in (data_dir / "uploads").iterdir() if f.stat().st_nlink > 1}


async def finish_after_restart(c: httpx.AsyncClient, push: Push, location: str | None) -> str:
    """Complete a push the kill interrupted, as a client would; returns how."""
    if location is not None:
        r = await c.get(location)
        if r.status_code == 204:
            offset = range_end(r)
            if offset < push.blob.size:
                r = await patch(c, location, push.blob, offset, push.blob.size)
            if r.status_code in (202, 204):
                r = await put(c, location, push.blob, push.blob.size)
            if r.status_code == 201:
                return "resumed"
        # The only acceptable refusal: the session is gone, start again.
        assert r.status_code == 404, r.text
        assert error_code(r) == "BLOB_UPLOAD_UNKNOWN", r.text
    r = await push_mono(c, REPO, push.blob)
    assert r.status_code == 201, r.text
    return "pushed again"


async def test_kill_mid_commit_never_loses_or_half_shows_blobs(server: DockyardServer) -> None:
    """Concurrent monolithic and chunked pushes of 16-48 MiB blobs, SIGKILLed at several
    points around their commits; after each restart every blob is absent or exact."""
    server.workers = 2
    kill_points = [
        ("first body fully sent", "sent", 1, 0.0),
        ("third 201 received", "acked", 3, 0.0),
        ("first blob file linked", "on disk", 1, 0.0),
        ("sixth body fully sent + 20 ms", "sent", 6, 0.020),
    ]
    count = 10
    with trio.fail_after(240):
        await restart(server)
        async with client_for(server) as c:
            image = await push_image(c, REPO, 500)
        for round_no, (label, when, n, delay) in enumerate(kill_points, start=1):
            pushes = plan_round(round_no, count)
            round_ = Round(server.data_dir, pushes, when, n)
            shared_before = shared_uploads(server.data_dir)
            started = time.monotonic()
            async with client_for(server) as c, trio.open_nursery() as nursery:
                for push in pushes:
                    nursery.start_soon(round_.run_push, c, push)
                nursery.start_soon(round_.watch_disk)
                with trio.fail_after(60):
                    await round_.kill_now.wait()
                await trio.sleep(delay)
                sent_unanswered = sum(p.body_sent.is_set() and p.status is None for p in pushes)
                acked_at_kill = [p for p in pushes if p.acknowledged]
                server.kill()
            killed_at = time.monotonic() - started
            linked_uploads = len(shared_uploads(server.data_dir) - shared_before)
            files = on_disk(server.data_dir, pushes)
            assert_blob_store_intact(server.data_dir)
            await restart(server)
            outcomes: dict[str, int] = {}
            async with client_for(server) as c:
                await assert_image(c, REPO, image)
                visible: list[Push] = []
                for push in pushes:
                    head = await c.head(f"/v2/{REPO}/blobs/{push.blob.digest}")
                    assert head.status_code in (200, 404), head.status_code
                    if head.status_code == 200:
                        # Visible means whole and exact, never a prefix or another blob.
                        await assert_served(c, REPO, push.blob)
                        visible.append(push)
                for push in acked_at_kill:
                    assert push in visible, f"{push.blob.digest} was acknowledged, then lost"
                for push in pushes:
                    if push in visible:
                        # Linking the blob and ending its session are one transaction.
                        if push.location is not None:
                            assert (await c.get(push.location)).status_code == 404
                        continue
                    how = await finish_after_restart(c, push, push.location)
                    outcomes[how] = outcomes.get(how, 0) + 1
                for push in pushes:
                    await assert_served(c, REPO, push.blob)
            stored = assert_blob_store_intact(server.data_dir)
            print(
                f"round {round_no} ({label}): killed at {killed_at:.2f}s with"
                f" {len(acked_at_kill)}/{count} acknowledged, {sent_unanswered} bodies sent"
                f" but unanswered, {files} blob files on disk, {len(visible)} visible"
                f" after restart, {linked_uploads} uploads caught between link and unlink;"
                f" recovered: {outcomes}; {stored} blob files verified"
            )


async def test_restart_after_interrupted_commit(server: DockyardServer) -> None:
    """A SIGKILL between the commit's ``link`` and ``unlink`` leaves the upload file and
    the stored blob as one inode; between ``unlink`` and the metadata transaction it leaves
    a session whose bytes are gone. Neither blob is linked, so neither is visible. Retries
    and later pushes must never change the stored blob, and never fail with a 500."""
    bad_retry = Blob(31, 12 * MiB + 5)  # killed between link and unlink
    good_retry = Blob(32, 11 * MiB + 3)  # killed between link and unlink
    unlinked = Blob(33, 10 * MiB + 77)  # killed between unlink and the metadata
    saved = 4 * MiB + 1
    cases = (bad_retry, good_retry, unlinked)
    with trio.fail_after(60):
        await restart(server)
        async with client_for(server) as c:
            locations = {}
            for blob in cases:
                locations[blob] = await start_upload(c, REPO)
                r = await patch(c, locations[blob], blob, 0, saved)
                assert r.status_code == 202, r.text
        server.kill()
        data = server.data_dir
        # What finish_upload had done by then: the PUT's last chunk is in the upload file
        # (the session still says `saved`), and the bytes were linked under blobs/.
        for blob in cases:
            upload = upload_path(data, locations[blob])
            with upload.open("r+b") as f:
                f.seek(saved)
                for p in blob.pieces(saved):
                    f.write(p)
            target = blob_path(data, blob.digest)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(upload, target)
        upload_path(data, locations[unlinked]).unlink()

        await restart(server)
        async with client_for(server) as c:
            for blob in cases:
                assert (await c.head(f"/v2/{REPO}/blobs/{blob.digest}")).status_code == 404
                r = await c.get(locations[blob])
                assert r.status_code == 204
                assert range_end(r) == saved

            # A retry of the last chunk with other bytes (a confused or hostile client) is
            # refused, and must not have written into the stored blob.
            other = Blob(34, bad_retry.size)
            r = await put(c, locations[bad_retry], other, saved, bad_retry.digest)
            assert r.status_code == 400, r.text
            assert error_code(r) == "DIGEST_INVALID"
            assert_blob_store_intact(data)
            r = await push_mono(c, "crash/other", bad_retry)  # dedupes onto the stored copy
            assert r.status_code == 201, r.text
            await assert_served(c, "crash/other", bad_retry)

            # The client's own retry of the lost PUT completes the upload.
            r = await put(c, locations[good_retry], good_retry, saved)
            assert r.status_code == 201, r.text
            await assert_served(c, REPO, good_retry)

            # The bytes of this session are gone: a clear 404 (start again), never a 500.
            r = await put(c, locations[unlinked], unlinked, saved)
            if r.status_code != 201:
                assert r.status_code == 404, r.text
                assert error_code(r) == "BLOB_UPLOAD_UNKNOWN"
                r = await push_mono(c, REPO, unlinked)
                assert r.status_code == 201, r.text
            await assert_served(c, REPO, unlinked)
            assert_blob_store_intact(data)
    assert assert_blob_store_intact(server.data_dir) == 3


def count_events(data_dir: Path) -> dict[str, int]:
    db = sqlite3.connect(data_dir / "dockyard.sqlite3")
    try:
        rows = db.execute("SELECT action, count(*) FROM events GROUP BY action").fetchall()
    finally:
        db.close()
    return {str(action): int(n) for action, n in rows}


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_finishes_inflight_push_and_keeps_everything(
    server: DockyardServer, workers: int
) -> None:
    """A graceful stop lets the request in flight finish (server.graceful_timeout), flushes
    batched pull events, and the restarted server has everything, including an unfinished
    chunked upload to continue."""
    server.workers = workers
    slow = Blob(41, 8 * MiB + 11)
    unfinished = Blob(42, 9 * MiB + 13)
    saved = 3 * MiB
    with trio.fail_after(60):
        await restart(server)
        async with client_for(server) as c:
            image = await push_image(c, REPO, 300)
            location = await start_upload(c, REPO)
            r = await patch(c, location, unfinished, 0, saved)
            assert r.status_code == 202, r.text
            for _ in range(3):
                await get_digest(c, REPO, image.blobs[0].digest)
            quarter_sent = trio.Event()
            answered = trio.Event()
            statuses: list[int] = []

            async def paced(sent: int) -> None:
                if sent >= 2 * MiB:
                    quarter_sent.set()
                await trio.sleep(0.03)  # the rest takes about 0.7 s

            async def push() -> None:
                r = await push_mono(c, REPO, slow, paced)
                statuses.append(r.status_code)
                answered.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(push)
                await quarter_sent.wait()
                # SIGTERM to the process group; returns once the main process exited,
                # which must be after every worker finished its requests in flight.
                await trio.to_thread.run_sync(server.stop)
                with trio.move_on_after(0.25):  # the answer's last hop, client side
                    await answered.wait()
                assert statuses == [201], "dockyard serve exited before its workers did"
        events = count_events(server.data_dir)
        assert (events.get("push"), events.get("pull")) == (6, 3), events

        await restart(server)
        async with client_for(server) as c:
            await assert_image(c, REPO, image)
            await assert_served(c, REPO, slow)
            r = await c.get(location)
            assert r.status_code == 204
            assert range_end(r) == saved
            r = await put(c, location, unfinished, saved)
            assert r.status_code == 201, r.text
            await assert_served(c, REPO, unfinished)
    assert assert_blob_store_intact(server.data_dir) == 6
