"""The gcs driver against a real fake-gcs-server: the conformance suite and what is GCS's own
(parts, composes in rounds, uploads continued by other store objects, cleanup)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.config import ConfigError, load
from dockyard.services import build_storage
from dockyard.storage import gcs
from dockyard.storage.base import BlobStore, StorageError
from dockyard.storage.gcs import GcsStore
from tests.fakegcs import FakeGcsServer
from tests.storage_conformance import (
    MiB,
    StorageConformance,
    payload,
    read_all,
    read_upload_all,
    sha256,
)


def new_store(server: FakeGcsServer, bucket: str, prefix: str = "registry") -> GcsStore:
    return GcsStore(bucket=bucket, prefix=prefix, endpoint=server.endpoint)


def bucket_objects(store: GcsStore) -> list[str]:
    """Every object in the store's bucket, listed by the test, not by the driver."""
    return FakeGcsServer.list_objects(store._client.endpoint, store.bucket)


class TestGcsStore(StorageConformance):
    @pytest.fixture
    async def store(self, fake_gcs: FakeGcsServer) -> AsyncIterator[BlobStore]:
        s = new_store(fake_gcs, fake_gcs.new_bucket())
        yield s
        await s.aclose()

    async def assert_empty(self, store: BlobStore) -> None:
        await super().assert_empty(store)
        assert isinstance(store, GcsStore)
        assert bucket_objects(store) == []

    def assert_contained(self, store: BlobStore) -> None:
        assert isinstance(store, GcsStore)
        names = bucket_objects(store)
        assert all(name.startswith(store.prefix) for name in names), names


@pytest.fixture
async def bucket(fake_gcs: FakeGcsServer) -> str:
    return fake_gcs.new_bucket()


async def test_upload_continues_in_new_store_objects(fake_gcs: FakeGcsServer, bucket: str) -> None:
    # Each PATCH on another instance: a new store object that has only the saved state.
    data = payload(3 * MiB + 17, seed=40)
    pieces = [data[: MiB + 5], data[MiB + 5 : 2 * MiB], data[2 * MiB :]]
    first = new_store(fake_gcs, bucket)
    state = await first.create_upload("moving")
    await first.aclose()
    offset = 0
    for piece in pieces:
        store = new_store(fake_gcs, bucket)
        writer = await store.open_writer("moving", offset, state)
        await writer.write(piece)
        state = await writer.close()
        offset += len(piece)
        await store.aclose()
    assert [part["size"] for part in state["parts"]] == [len(p) for p in pieces]

    store = new_store(fake_gcs, bucket)
    assert await read_upload_all(store, "moving", state, len(data)) == data
    await store.commit_upload("moving", state, len(data), sha256(data))
    await store.aclose()
    reader = new_store(fake_gcs, bucket)
    assert await read_all(reader, sha256(data)) == data
    assert fake_gcs.object_names(bucket) == [
        f"registry/blobs/sha256/{sha256(data).removeprefix('sha256:')}"
    ]
    await reader.aclose()


async def test_more_than_32_parts_compose_in_rounds(fake_gcs: FakeGcsServer, bucket: str) -> None:
    # 70 parts: three composes of <= 32, then one of their three results.
    store = new_store(fake_gcs, bucket)
    pieces = [payload(1000 + i, seed=100 + i) for i in range(70)]
    data = b"".join(pieces)
    state = await store.create_upload("many")
    offset = 0
    for piece in pieces:
        writer = await store.open_writer("many", offset, state)
        await writer.write(piece)
        state = await writer.close()
        offset += len(piece)
    assert len(state["parts"]) == 70
    digest = sha256(data)
    await store.commit_upload("many", state, len(data), digest)
    assert await read_all(store, digest) == data
    assert await read_all(store, digest, 33_000, 5000) == data[33_000:38_000]
    # The parts and the intermediate composes are gone with the upload.
    assert fake_gcs.object_names(bucket) == [f"registry/blobs/sha256/{digest[7:]}"]
    await store.aclose()


@pytest.mark.parametrize(
    ("size", "write_size"),
    [
        (2 * MiB + 333, 100_001),  # the last chunk carries the odd tail
        (768 * 1024, 768 * 1024),  # all sent before close: an empty last chunk
    ],
)
async def test_large_part_goes_out_as_resumable_chunks(
    fake_gcs: FakeGcsServer,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    size: int,
    write_size: int,
) -> None:
    # A writer past PART_CHUNK streams its part in 256 KiB multiples and keeps the rest;
    # a small PART_CHUNK makes that happen with a few MiB.
    monkeypatch.setattr(gcs, "PART_CHUNK", 512 * 1024)
    store = new_store(fake_gcs, bucket)
    data = payload(size, seed=50)
    state = await store.create_upload("big")
    writer = await store.open_writer("big", 0, state)
    for start in range(0, len(data), write_size):
        await writer.write(data[start : start + write_size])
        assert len(writer._buffer) <= 512 * 1024  # bounded memory
    state = await writer.close()
    assert [part["size"] for part in state["parts"]] == [len(data)]  # one part per PATCH
    digest = sha256(data)
    await store.commit_upload("big", state, len(data), digest)
    assert await read_all(store, digest) == data
    await store.aclose()


async def test_aborted_resumable_part_leaves_the_upload_as_it_was(
    fake_gcs: FakeGcsServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcs, "PART_CHUNK", 256 * 1024)
    store = new_store(fake_gcs, bucket)
    state = await store.create_upload("u")
    writer = await store.open_writer("u", 0, state)
    await writer.write(b"kept")
    state = await writer.close()
    writer = await store.open_writer("u", 4, state)
    await writer.write(payload(600_000, seed=51))
    await writer.abort()
    assert await read_upload_all(store, "u", state, 4) == b"kept"
    with pytest.raises(StorageError):
        await read_upload_all(store, "u", state, 5)
    await store.delete_upload("u", state)
    assert fake_gcs.object_names(bucket) == []
    await store.aclose()


async def test_offset_inside_a_part_rewrites_its_head(fake_gcs: FakeGcsServer, bucket: str) -> None:
    store = new_store(fake_gcs, bucket)
    state = await store.create_upload("u")
    for offset, piece in ((0, b"abc"), (3, b"defgh")):
        writer = await store.open_writer("u", offset, state)
        await writer.write(piece)
        state = await writer.close()
    writer = await store.open_writer("u", 5, state)
    await writer.write(b"XY")
    state = await writer.close()
    assert [part["size"] for part in state["parts"]] == [3, 4]
    assert await read_upload_all(store, "u", state, 7) == b"abcdeXY"
    await store.commit_upload("u", state, 7, sha256(b"abcdeXY"))
    assert await read_all(store, sha256(b"abcdeXY")) == b"abcdeXY"
    await store.aclose()


async def test_offset_inside_a_large_part_is_copied_in_bounded_memory(
    fake_gcs: FakeGcsServer, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gcs, "PART_CHUNK", 256 * 1024)
    store = new_store(fake_gcs, bucket)
    data = payload(MiB, seed=52)
    state = await store.create_upload("u")
    writer = await store.open_writer("u", 0, state)
    await writer.write(data)
    state = await writer.close()
    writer = await store.open_writer("u", 700_000, state)
    assert len(writer._buffer) <= 256 * 1024
    await writer.write(b"tail")
    state = await writer.close()
    expected = data[:700_000] + b"tail"
    assert await read_upload_all(store, "u", state, len(expected)) == expected
    await store.delete_upload("u", state)
    assert fake_gcs.object_names(bucket) == []
    await store.aclose()


async def test_malformed_state_is_a_storage_error(fake_gcs: FakeGcsServer, bucket: str) -> None:
    store = new_store(fake_gcs, bucket)
    await store.create_upload("u")
    for state in (
        {"parts": "x"},
        {"parts": [{"name": "a"}]},
        {"parts": [{"name": 1, "size": 2}]},
        {"parts": [{"name": "../../blobs/sha256/x", "size": 2}]},
    ):
        with pytest.raises(StorageError):
            await store.open_writer("u", 0, state)
    await store.delete_upload("u", {})
    await store.aclose()


async def test_prefixes_keep_stores_apart(fake_gcs: FakeGcsServer, bucket: str) -> None:
    one = GcsStore(bucket=bucket, prefix="one/", endpoint=fake_gcs.endpoint)
    two = GcsStore(bucket=bucket, prefix="", endpoint=fake_gcs.endpoint)
    state = await one.create_upload("u")
    await one.commit_upload("u", state, 0, sha256(b""))
    assert [d async for d in one.list_blobs()] == [sha256(b"")]
    assert [d async for d in two.list_blobs()] == []
    assert await two.stat(sha256(b"")) is None
    await one.aclose()
    await two.aclose()


async def test_unreachable_endpoint_is_a_storage_error() -> None:
    from tests.serverproc import free_port

    store = GcsStore(bucket="b", endpoint=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageError):
        await store.check()
    await store.aclose()


async def test_repr_names_no_credentials(tmp_path: Path) -> None:
    secret_file = tmp_path / "service-account.json"
    store = GcsStore(bucket="b", credentials_file=str(secret_file), project="p")
    assert str(secret_file) not in repr(store)
    assert "credentials" not in repr(store._client)
    await store.aclose()


# -- settings and wiring ------------------------------------------------------------------


def test_settings_from_file_and_environment(tmp_path: Path) -> None:
    conf = tmp_path / "dockyard.toml"
    conf.write_text(
        '[storage]\ndriver = "gcs"\n[storage.gcs]\nbucket = "registry-blobs"\nprefix = "prod"\n'
        'endpoint = "http://127.0.0.1:4443"\n'
    )
    settings = load(conf, environ={"DOCKYARD_STORAGE_GCS_PREFIX": "staging"})
    assert settings.storage.gcs.bucket == "registry-blobs"
    assert settings.storage.gcs.prefix == "staging"
    store = build_storage(settings)
    assert isinstance(store, GcsStore)
    assert (store.bucket, store.prefix) == ("registry-blobs", "staging/")


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({}, "storage.gcs.bucket"),
        ({"DOCKYARD_STORAGE_GCS_BUCKET": "Not_A/Bucket"}, "storage.gcs.bucket"),
        (
            {
                "DOCKYARD_STORAGE_GCS_BUCKET": "ok-bucket",
                "DOCKYARD_STORAGE_GCS_ENDPOINT": "ftp://x",
            },
            "storage.gcs.endpoint",
        ),
        (
            {
                "DOCKYARD_STORAGE_GCS_BUCKET": "ok-bucket",
                "DOCKYARD_STORAGE_GCS_CREDENTIALS_FILE": "no-such-file.json",
            },
            "storage.gcs.credentials_file",
        ),
    ],
)
def test_bad_settings_name_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load(None, environ={"DOCKYARD_STORAGE_DRIVER": "gcs", **environ})


def test_gcs_settings_are_not_checked_for_other_drivers() -> None:
    assert load(None, environ={}).storage.gcs.bucket == ""
