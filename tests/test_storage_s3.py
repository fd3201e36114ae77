"""The s3 driver against a real SeaweedFS S3 gateway (tests/seaweed.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from dockyard.config.model import S3Settings
from dockyard.storage.base import BlobStore, StorageError
from dockyard.storage.s3 import S3Store
from tests.seaweed import SeaweedServer
from tests.storage_conformance import (
    MiB,
    StorageConformance,
    payload,
    push,
    read_all,
    read_upload_all,
    sha256,
    write_upload,
)


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    server = SeaweedServer().start()
    try:
        yield server
    finally:
        server.stop()


def s3_settings(seaweed: SeaweedServer, bucket: str, **overrides: Any) -> S3Settings:
    settings = S3Settings(
        bucket=bucket,
        endpoint=seaweed.endpoint,
        region=seaweed.region,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        path_style=True,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def bucket_contents(seaweed: SeaweedServer, bucket: str) -> tuple[list[str], list[str]]:
    """(every object key, every incomplete multipart upload's key) in the bucket."""
    client = seaweed.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return keys, [upload["Key"] for upload in uploads]


class TestS3Store(StorageConformance):
    @pytest.fixture
    def bucket(self, seaweed: SeaweedServer) -> str:
        return seaweed.new_bucket()

    @pytest.fixture
    async def store(self, seaweed: SeaweedServer, bucket: str) -> AsyncIterator[BlobStore]:
        # The smallest part size: multipart commits and their boundaries at small sizes.
        s = S3Store(s3_settings(seaweed, bucket, prefix="registry/", part_size=5 * MiB))
        s.test_seaweed, s.test_bucket = seaweed, bucket  # type: ignore[attr-defined]
        yield s
        await s.aclose()

    async def reopen(self, store: BlobStore) -> BlobStore:
        seaweed: SeaweedServer = store.test_seaweed  # type: ignore[attr-defined]
        bucket: str = store.test_bucket  # type: ignore[attr-defined]
        return S3Store(s3_settings(seaweed, bucket, prefix="registry/", part_size=5 * MiB))

    def assert_contained(self, store: BlobStore) -> None:
        seaweed: SeaweedServer = store.test_seaweed  # type: ignore[attr-defined]
        bucket: str = store.test_bucket  # type: ignore[attr-defined]
        keys, uploads = bucket_contents(seaweed, bucket)
        assert [key for key in keys + uploads if not key.startswith("registry/")] == []

    async def assert_empty(self, store: BlobStore) -> None:
        await super().assert_empty(store)
        seaweed: SeaweedServer = store.test_seaweed  # type: ignore[attr-defined]
        bucket: str = store.test_bucket  # type: ignore[attr-defined]
        assert bucket_contents(seaweed, bucket) == ([], [])


# -- s3-specific behaviour -----------------------------------------------------------------


@pytest.fixture
def bucket(seaweed: SeaweedServer) -> str:
    return seaweed.new_bucket()


def new_store(seaweed: SeaweedServer, bucket: str, **overrides: Any) -> S3Store:
    return S3Store(s3_settings(seaweed, bucket, **overrides))


async def test_patches_each_on_a_new_store(seaweed: SeaweedServer, bucket: str) -> None:
    # Three PATCHes of 4 MiB, each handled by another instance that knows only the state.
    data = payload(12 * MiB, seed=50)
    first = new_store(seaweed, bucket)
    state = await first.create_upload("u")
    await first.aclose()
    for offset in range(0, len(data), 4 * MiB):
        store = new_store(seaweed, bucket)
        writer = await store.open_writer("u", offset, state)
        await writer.write(data[offset : offset + 4 * MiB])
        state = await writer.close()
        await store.aclose()
        json.dumps(state)  # the state is saved as JSON with the upload session
    # 8 MiB parts: one full segment and the 4 MiB tail.
    assert [size for _, size in state["segments"]] == [8 * MiB, 4 * MiB]
    store = new_store(seaweed, bucket)
    assert await read_upload_all(store, "u", state, len(data)) == data
    await store.commit_upload("u", state, len(data), sha256(data))
    assert await read_all(store, sha256(data)) == data
    keys, multipart = bucket_contents(seaweed, bucket)
    assert keys == [store.blob_key(sha256(data))] and multipart == []
    await store.aclose()


async def test_short_chunks_become_a_tail_then_a_part(seaweed: SeaweedServer, bucket: str) -> None:
    data = payload(7 * MiB + 3, seed=51)
    store = new_store(seaweed, bucket, part_size=5 * MiB)
    state = await store.create_upload("u")
    sizes = []
    for offset in range(0, len(data), MiB):
        writer = await store.open_writer("u", offset, state)
        await writer.write(data[offset : offset + MiB])
        state = await writer.close()
        sizes.append([size for _, size in state["segments"]])
        tail_key = state["segments"][-1][0]
        assert tail_key.startswith(store.upload_prefix("u"))
        assert await store._head(tail_key) == state["segments"][-1][1]  # a stored object
    # A tail below 5 MiB grows with each PATCH (a new object each time) until it is a
    # whole part; the next bytes start a new tail.
    assert sizes == [
        [MiB],
        [2 * MiB],
        [3 * MiB],
        [4 * MiB],
        [5 * MiB],
        [5 * MiB, MiB],
        [5 * MiB, 2 * MiB],
        [5 * MiB, 2 * MiB + 3],
    ]
    await store.commit_upload("u", state, len(data), sha256(data))
    assert await read_all(store, sha256(data)) == data
    keys, multipart = bucket_contents(seaweed, bucket)
    # The superseded tails went with the upload.
    assert keys == [store.blob_key(sha256(data))] and multipart == []
    await store.aclose()


async def test_dedupe_keeps_the_stored_object(seaweed: SeaweedServer, bucket: str) -> None:
    store = new_store(seaweed, bucket, part_size=5 * MiB)
    data = payload(11 * MiB, seed=52)
    digest = await push(store, data, upload_id="first", chunk=MiB)
    client = seaweed.client()
    before = client.head_object(Bucket=bucket, Key=store.blob_key(digest))
    # Multipart-sized and small second uploads of the same digest.
    await push(store, data, upload_id="second", chunk=3 * MiB)
    await push(store, b"other bytes", upload_id="third", digest=digest)
    after = client.head_object(Bucket=bucket, Key=store.blob_key(digest))
    assert after["ETag"] == before["ETag"]
    assert after["LastModified"] == before["LastModified"]
    assert await read_all(store, digest) == data
    assert bucket_contents(seaweed, bucket) == ([store.blob_key(digest)], [])
    await store.aclose()


async def test_failed_commit_leaves_no_multipart_upload(
    seaweed: SeaweedServer, bucket: str
) -> None:
    store = new_store(seaweed, bucket, part_size=5 * MiB)
    data = payload(11 * MiB, seed=53)
    state = await write_upload(store, "u", data, chunk=MiB)
    # A segment lost behind the driver's back: the part copy fails, the commit fails.
    seaweed.client().delete_object(Bucket=bucket, Key=state["segments"][1][0])
    with pytest.raises(StorageError):
        await store.commit_upload("u", state, len(data), sha256(data))
    assert await store.stat(sha256(data)) is None
    assert bucket_contents(seaweed, bucket)[1] == []  # the multipart upload was aborted
    await store.delete_upload("u", state)
    assert bucket_contents(seaweed, bucket) == ([], [])
    await store.aclose()
