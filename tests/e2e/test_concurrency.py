"""Concurrency against a real ``dockyard serve`` (two worker processes on one data dir).

Many uploads at once; one digest pushed twice at the same moment (stored once); two
requests racing for one upload session (the lease lets exactly one write); and both
workers pushing manifests and moving tags in one repository (the tag list stays
consistent and every tag resolves).

The blob content, body streaming and data-directory helpers are shared with
``test_crash.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.e2e.test_crash import (
    PIECE,
    Blob,
    BlobBody,
    Hook,
    KiB,
    MiB,
    assert_blob_store_intact,
    assert_served,
    blob_path,
    client_for,
    error_code,
    patch,
    push_mono,
    put,
    range_end,
    send,
    start_upload,
    upload_path,
    wait_for_size,
)
from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DockyardServer]:
    """``dockyard serve --workers 2``; its log must hold no traceback at the end."""
    srv = DockyardServer(tmp_path / "data", workers=2).start()
    try:
        yield srv
    finally:
        srv.stop()
    text = srv.log_path.read_text(errors="replace")
    assert "Traceback" not in text, f"dockyard logged an unhandled error:\n{text[-8000:]}"


def uploads_left(data_dir: Path) -> list[str]:
    return sorted(f.name for f in (data_dir / "uploads").iterdir())


async def push_chunked(
    c: httpx.AsyncClient, repo: str, blob: Blob, cuts: list[int], hook: Hook | None = None
) -> tuple[str, httpx.Response]:
    """POST, a PATCH per span up to each cut, PUT with the rest; (Location, PUT answer)."""
    location = await start_upload(c, repo)
    start = 0
    for end in cuts:
        r = await patch(c, location, blob, start, end)
        assert r.status_code == 202, r.text
        assert range_end(r) == end
        start = end
    return location, await put(c, location, blob, start, hook=hook)


async def test_many_parallel_uploads_all_succeed_and_verify(server: DockyardServer) -> None:
    """32 blobs at once over 4 repositories, half monolithic, half chunked."""
    rng = random.Random(5)
    blobs = [
        Blob(5000 + i, rng.randrange(MiB, 6 * MiB) + rng.randrange(1, 4 * KiB)) for i in range(32)
    ]
    locations: list[str] = []

    async def one(i: int, blob: Blob) -> None:
        repo = f"conc/many-{i % 4}"
        if i % 2 == 0:
            r = await push_mono(c, repo, blob)
        else:
            cuts = sorted(rng.sample(range(KiB, blob.size - KiB, 997), 1 + i % 3))
            if i % 4 == 3:
                cuts.append(blob.size)  # PUT without a body
            location, r = await push_chunked(c, repo, blob, cuts)
            locations.append(location)
        assert r.status_code == 201, r.text
        assert r.headers["docker-content-digest"] == blob.digest
        assert r.headers["location"] == f"/v2/{repo}/blobs/{blob.digest}"

    with trio.fail_after(60):
        async with client_for(server) as c:
            async with trio.open_nursery() as nursery:
                for i, blob in enumerate(blobs):
                    nursery.start_soon(one, i, blob)
            for i, blob in enumerate(blobs):
                await assert_served(c, f"conc/many-{i % 4}", blob)
                # Linked only where it was pushed.
                other = f"conc/many-{(i + 1) % 4}"
                assert (await c.head(f"/v2/{other}/blobs/{blob.digest}")).status_code == 404
            for location in locations:
                r = await c.get(location)
                assert r.status_code == 404, r.text
                assert error_code(r) == "BLOB_UPLOAD_UNKNOWN"
    assert assert_blob_store_intact(server.data_dir) == 32
    assert uploads_left(server.data_dir) == []


async def test_same_digest_pushed_twice_at_once_is_stored_once(server: DockyardServer) -> None:
    """Each pair of pushes streams everything but its last piece, waits for the other, then
    both send the last piece together, so both commits of the digest race."""
    pairs = [
        (Blob(6001, 24 * MiB + 1), ("conc/same", "chunked"), ("conc/same", "chunked")),
        (Blob(6002, 20 * MiB + 2), ("conc/same-a", "mono"), ("conc/same-b", "mono")),
        (Blob(6003, 16 * MiB + 3), ("conc/same", "chunked"), ("conc/same-c", "mono")),
    ]

    async def race(blob: Blob, first: tuple[str, str], second: tuple[str, str]) -> None:
        ready = [trio.Event(), trio.Event()]
        go = trio.Event()
        answers: list[httpx.Response] = []

        async def one(n: int, repo: str, how: str) -> None:
            total = blob.size if how == "mono" else blob.size - 3 * MiB

            async def hold_last_piece(sent: int) -> None:
                if sent >= total - PIECE and not go.is_set():
                    ready[n].set()
                    await go.wait()

            if how == "mono":
                r = await push_mono(c, repo, blob, hold_last_piece)
            else:
                _, r = await push_chunked(c, repo, blob, [3 * MiB], hold_last_piece)
            answers.append(r)

        async with client_for(server) as c:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(one, 0, *first)
                nursery.start_soon(one, 1, *second)
                for event in ready:
                    await event.wait()
                go.set()
            for r in answers:
                assert r.status_code == 201, r.text
                assert r.headers["docker-content-digest"] == blob.digest
            for repo in {first[0], second[0]}:
                await assert_served(c, repo, blob)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for blob, first, second in pairs:
                nursery.start_soon(race, blob, first, second)
    for blob, _, _ in pairs:
        # One copy: the blob file, with no second name (an upload still hard-linked to it).
        assert os.stat(blob_path(server.data_dir, blob.digest)).st_nlink == 1
    assert assert_blob_store_intact(server.data_dir) == len(pairs)
    assert uploads_left(server.data_dir) == []


async def test_two_patches_on_one_upload_exactly_one_wins(server: DockyardServer) -> None:
    """While one PATCH streams (and holds the upload's lease), other PATCHes of the same
    upload, with or without Content-Range, are refused with 416 BLOB_UPLOAD_INVALID and the
    current Range, whichever worker they reach; the upload ends up holding exactly the
    winner's chunk."""
    winner = Blob(7001, 4 * MiB + 5)
    # Each loser sends more than hypercorn buffers for a request, so it is refused before
    # its body is read; that answer must arrive, not leave the connection hanging.
    losers = [Blob(7100 + i, 2 * MiB + i) for i in range(10)]
    with trio.fail_after(60):
        async with client_for(server) as c:
            location = await start_upload(c, "conc/race")
            on_disk = upload_path(server.data_dir, location)
            losers_done = trio.Event()
            answers: dict[int, httpx.Response] = {}

            async def wait_at_half(sent: int) -> None:
                if sent >= winner.size // 2:
                    await losers_done.wait()

            async def win() -> None:
                answers[-1] = await patch(c, location, winner, 0, winner.size, wait_at_half)

            async def lose(i: int, other: httpx.AsyncClient) -> None:
                blob = losers[i]
                if i % 2:
                    answers[i] = await patch(other, location, blob, 0, blob.size)
                else:  # a streamed chunk: no Content-Range
                    answers[i] = await send(other, "PATCH", location, BlobBody(blob), blob.size)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(win)
                # The winner holds the lease once its bytes reach the upload file.
                await wait_for_size(on_disk, MiB)
                # Separate connections, at once: they reach either worker. A refusal the
                # client never gets shows as a write timeout.
                other = httpx.AsyncClient(base_url=server.url, timeout=10.0)
                async with other, trio.open_nursery() as racing:
                    for i in range(len(losers)):
                        racing.start_soon(lose, i, other)
                losers_done.set()

            for i in range(len(losers)):
                r = answers[i]
                assert r.status_code == 416, r.text
                assert error_code(r) == "BLOB_UPLOAD_INVALID"
                assert r.headers["range"] == "0-0"  # nothing saved yet: the winner is writing
            r = answers[-1]
            assert r.status_code == 202, r.text
            assert range_end(r) == winner.size
            r = await c.get(location)
            assert range_end(r) == winner.size
            r = await put(c, location, winner, winner.size)
            assert r.status_code == 201, r.text
            await assert_served(c, "conc/race", winner)
    assert assert_blob_store_intact(server.data_dir) == 1


def manifest_for(config: bytes, layers: list[Blob]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": f"sha256:{hashlib.sha256(config).hexdigest()}",
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer.digest,
                    "size": layer.size,
                }
                for layer in layers
            ],
        }
    ).encode()


async def test_workers_push_manifests_and_tags_to_one_repository(server: DockyardServer) -> None:
    """12 pushers, each on its own connections (spread over both workers), push manifests
    to one repository: each a tag of its own per manifest, moves its own tag and fights
    over ``latest``. Afterwards the tag list is exactly the tags pushed, in order, whole
    across pages, and every tag resolves to a manifest that was pushed to it."""
    repo = "conc/tags"
    layers = [Blob(8001, MiB + 1), Blob(8002, 2 * MiB + 3)]
    pushers, rounds = 12, 3
    pushed: dict[str, set[str]] = {}  # tag -> digests pushed to it
    last_of: dict[str, str] = {}  # a pusher's own tag -> the digest it pushed last
    payloads: dict[str, bytes] = {}

    async def pusher(i: int) -> None:
        async with client_for(server) as c:
            for n in range(rounds):
                config = json.dumps({"architecture": "amd64", "os": "linux", "p": i, "n": n})
                config_bytes = config.encode()
                r = await c.post(
                    f"/v2/{repo}/blobs/uploads/",
                    params={"digest": f"sha256:{hashlib.sha256(config_bytes).hexdigest()}"},
                    content=config_bytes,
                )
                assert r.status_code == 201, r.text
                payload = manifest_for(config_bytes, layers)
                digest = f"sha256:{hashlib.sha256(payload).hexdigest()}"
                payloads[digest] = payload
                own, unique = f"p{i:02d}", f"p{i:02d}-r{n}"
                r = await c.put(
                    f"/v2/{repo}/manifests/{unique}",
                    content=payload,
                    headers={"content-type": OCI_MANIFEST},
                )
                assert r.status_code == 201, r.text
                assert r.headers["docker-content-digest"] == digest
                for tag in (own, "latest"):
                    pushed.setdefault(tag, set()).add(digest)
                pushed[unique] = {digest}
                r = await c.put(
                    f"/v2/{repo}/manifests/{digest}",
                    params=[("tag", own), ("tag", "latest")],
                    content=payload,
                    headers={"content-type": OCI_MANIFEST},
                )
                assert r.status_code == 201, r.text
                last_of[own] = digest

    with trio.fail_after(60):
        async with client_for(server) as c:
            for layer in layers:
                r = await push_mono(c, repo, layer)
                assert r.status_code == 201, r.text
        async with trio.open_nursery() as nursery:
            for i in range(pushers):
                nursery.start_soon(pusher, i)

        expected = sorted(pushed)
        assert len(expected) == pushers * (rounds + 1) + 1
        async with client_for(server) as c:
            r = await c.get(f"/v2/{repo}/tags/list")
            assert r.status_code == 200, r.text
            assert r.json() == {"name": repo, "tags": expected}
            paged: list[str] = []
            url: str | None = f"/v2/{repo}/tags/list?n=7"
            while url is not None:
                r = await c.get(url)
                assert r.status_code == 200, r.text
                paged += r.json()["tags"]
                link = r.headers.get("link")
                url = link.split(";")[0].strip("<> ") if link else None
                assert len(paged) <= len(expected)
            assert paged == expected
            for tag in expected:
                r = await c.get(f"/v2/{repo}/manifests/{tag}", headers={"accept": OCI_MANIFEST})
                assert r.status_code == 200, (tag, r.text)
                digest = r.headers["docker-content-digest"]
                assert digest == f"sha256:{hashlib.sha256(r.content).hexdigest()}"
                assert digest in pushed[tag], tag
                assert r.content == payloads[digest]
                if tag in last_of:
                    assert digest == last_of[tag], f"{tag} is not at its pusher's last manifest"
            for digest in payloads:
                r = await c.head(f"/v2/{repo}/manifests/{digest}", headers={"accept": OCI_MANIFEST})
                assert r.status_code == 200, digest
            r = await c.get("/v2/_catalog")
            assert r.json()["repositories"].count(repo) == 1
