"""The ``azure`` driver against Azurite: the conformance suite, then what is its own
(uploads continued by other store objects from saved state, block ids, credentials,
SAS tokens and connection strings, readiness)."""

from __future__ import annotations

import base64
import json
import os
import traceback
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from azure.storage.blob import ContainerSasPermissions, generate_container_sas

from dockyard.storage.azure import DEFAULT_BLOCK_SIZE, AzureStore
from dockyard.storage.azure_client import AzureAccount
from dockyard.storage.base import BlobStore, StorageError, UploadNotFound
from tests.azurite import AzuriteServer
from tests.serverproc import free_port
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
from tests.tools import require_tool

SERVERS: dict[str, AzuriteServer] = {}  # container name -> its Azurite


def container_names(azurite: AzuriteServer, container: str) -> list[str]:
    """Every blob in the container, uncommitted ones (staged blocks only) included."""
    with azurite.container(container) as client:
        return [b.name for b in client.list_blobs(include=["uncommittedblobs"])]


class TestAzureStore(StorageConformance):
    """Small blocks (300 000 bytes, not a power of two) so that writes, reads and
    restarts cross block boundaries, under a key prefix."""

    block_size = 300_000
    prefix = "registry/one"

    @pytest.fixture
    async def store(self, azurite: AzuriteServer) -> AsyncIterator[BlobStore]:
        account = azurite.account_for(azurite.new_container())
        s = AzureStore(account, self.prefix, block_size=self.block_size)
        # pytest runs fixtures and tests on other instances of this class.
        SERVERS[s.container] = azurite
        yield s
        await s.aclose()

    async def assert_empty(self, store: BlobStore) -> None:
        await super().assert_empty(store)
        assert isinstance(store, AzureStore)
        assert container_names(SERVERS[store.container], store.container) == []


class TestAzureStoreDefaults(TestAzureStore):
    """The default block size, no prefix."""

    block_size = DEFAULT_BLOCK_SIZE
    prefix = ""


# -- the driver's own behaviour ------------------------------------------------------------


@pytest.fixture
def container(azurite: AzuriteServer) -> str:
    return azurite.new_container()


@pytest.fixture
async def store(azurite: AzuriteServer, container: str) -> AsyncIterator[AzureStore]:
    s = AzureStore(azurite.account_for(container), block_size=64 * 1024)
    yield s
    await s.aclose()


def new_store(azurite: AzuriteServer, container: str, **overrides: str) -> AzureStore:
    return AzureStore(azurite.account_for(container, **overrides), block_size=64 * 1024)


async def test_upload_continues_in_new_store_objects(
    azurite: AzuriteServer, container: str
) -> None:
    # Each step runs in a store object of its own, as each PATCH may reach another
    # instance: only the saved (JSON) state carries the upload from one to the next.
    data = payload(700_000, seed=30)
    first = new_store(azurite, container)
    state = await first.create_upload("u1")
    writer = await first.open_writer("u1", 0, state)
    await writer.write(data[:200_000])
    saved = json.dumps(await writer.close())
    await first.aclose()

    second = new_store(azurite, container)
    writer = await second.open_writer("u1", 200_000, json.loads(saved))
    await writer.write(data[200_000:])
    saved = json.dumps(await writer.close())
    await second.aclose()

    third = new_store(azurite, container)
    state = json.loads(saved)
    assert await read_upload_all(third, "u1", state, len(data)) == data
    await third.commit_upload("u1", state, len(data), sha256(data))
    await third.aclose()

    fourth = new_store(azurite, container)
    assert await read_all(fourth, sha256(data)) == data
    assert container_names(azurite, container) == [f"blobs/sha256/{sha256(data)[7:]}"]
    await fourth.aclose()


async def test_block_ids_in_the_state(store: AzureStore) -> None:
    data = payload(200_000, seed=31)
    state = await write_upload(store, "u1", data[:150_000], chunk=10_000)
    blocks = state["blocks"]
    # 150 000 bytes in 64 KiB blocks staged as the buffer fills: three blocks.
    assert [size for _, size in blocks] == [70_000, 70_000, 10_000]
    writer = await store.open_writer("u1", 150_000, state)
    await writer.write(data[150_000:])
    state = await writer.close()
    ids = [block_id for block_id, _ in state["blocks"]]
    assert len({len(block_id) for block_id in ids}) == 1, "Azure needs equal-length ids"
    assert len(set(ids)) == len(ids)
    assert ids[:3] == [block_id for block_id, _ in blocks]
    # Two writers at one offset (a crashed one and its successor) use different ids.
    again = await store.open_writer("u1", 150_000, state)
    await again.write(b"x")
    other = await again.close()
    assert other["blocks"][-1][0] != ids[-1]
    assert other["blocks"][-1][0][:12] == ids[-1][:12] == f"{150_000:012x}"


async def test_commit_after_a_failed_writer_committed_past_the_saved_offset(
    store: AzureStore,
) -> None:
    state = await write_upload(store, "u1", b"good")
    crashed = await store.open_writer("u1", 4, state)
    await crashed.write(b"JUNK")
    await crashed.close()  # committed, but its session was never saved
    await store.commit_upload("u1", state, 4, sha256(b"good"))
    assert await read_all(store, sha256(b"good")) == b"good"


async def test_a_stale_writer_cannot_overwrite_a_newer_commit(store: AzureStore) -> None:
    state = await write_upload(store, "u1", b"base")
    stale = await store.open_writer("u1", 4, state)
    newer = await store.open_writer("u1", 4, state)
    await newer.write(b"-newer")
    saved = await newer.close()
    await stale.write(b"-stale")
    with pytest.raises(StorageError, match="another writer"):
        await stale.close()
    assert await read_upload_all(store, "u1", saved, 10) == b"base-newer"


async def test_restart_inside_a_saved_block(store: AzureStore) -> None:
    data = payload(100_000, seed=32)
    state = await write_upload(store, "u1", data)
    writer = await store.open_writer("u1", 12_345, state)
    await writer.write(b"tail")
    state = await writer.close()
    expected = data[:12_345] + b"tail"
    assert await read_upload_all(store, "u1", state, len(expected)) == expected
    await store.commit_upload("u1", state, len(expected), sha256(expected))
    assert await read_all(store, sha256(expected)) == expected


async def test_wrong_key_is_a_storage_error_without_the_key(
    azurite: AzuriteServer, container: str
) -> None:
    wrong = base64.b64encode(os.urandom(64)).decode()
    s = new_store(azurite, container, account_key=wrong)
    calls = (
        s.check(),
        s.stat(sha256(b"x")),
        s.create_upload("u1"),
        s.delete_upload("u1", {}),
    )
    for call in calls:
        with pytest.raises(StorageError) as caught:
            await call
        text = "".join(traceback.format_exception(caught.value))
        assert "refused the credentials" in str(caught.value)
        assert "403" in str(caught.value)
        for secret in (wrong, azurite.key, wrong[:20]):
            assert secret not in text
            assert secret not in repr(s)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    await s.aclose()
    assert container_names(azurite, container) == []


def container_sas(azurite: AzuriteServer, container: str) -> str:
    permission = ContainerSasPermissions(
        read=True, add=True, create=True, write=True, delete=True, list=True
    )
    return generate_container_sas(
        azurite.account,
        container,
        account_key=azurite.key,
        permission=permission,
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )


async def test_sas_token(azurite: AzuriteServer, container: str) -> None:
    sas = container_sas(azurite, container)
    s = new_store(azurite, container, account_key="", sas_token="?" + sas)
    await s.check()
    data = payload(150_000, seed=33)
    digest = await push(s, data, chunk=50_000)
    assert await read_all(s, digest, 10, 1000) == data[10:1010]
    assert [d async for d in s.list_blobs()] == [digest]
    assert await s.delete(digest)
    await s.aclose()
    # A SAS token with a wrong signature: refused, and the token is not in the error.
    forged = sas.replace("sig=", "sig=A")
    bad = new_store(azurite, container, account_key="", sas_token=forged)
    with pytest.raises(StorageError) as caught:
        await bad.create_upload("u2")
    text = "".join(traceback.format_exception(caught.value))
    assert "sig=" not in text and forged not in text
    await bad.aclose()
    assert container_names(azurite, container) == []


async def test_connection_string(azurite: AzuriteServer, container: str) -> None:
    connection = (
        f"DefaultEndpointsProtocol=http;AccountName={azurite.account};"
        f"AccountKey={azurite.key};BlobEndpoint={azurite.endpoint};"
    )
    account = AzureAccount(container=container, connection_string=connection)
    assert azurite.key not in repr(account)
    s = AzureStore(account)
    digest = await push(s, b"by connection string")
    assert await read_all(s, digest) == b"by connection string"
    assert await s.delete(digest)
    await s.aclose()


async def test_check_fails_for_a_missing_container_or_service(
    azurite: AzuriteServer, tmp_path: Path
) -> None:
    s = new_store(azurite, "no-such-container")
    with pytest.raises(StorageError, match="container no-such-container does not exist"):
        await s.check()
    await s.aclose()
    nobody = f"http://127.0.0.1:{free_port()}/{azurite.account}"
    s = new_store(azurite, "c1", endpoint=nobody)
    with pytest.raises(StorageError, match=r"cannot reach http://127\.0\.0\.1"):
        await s.check()
    await s.aclose()


async def test_prefix_keeps_to_its_part_of_the_container(
    azurite: AzuriteServer, container: str
) -> None:
    inside = AzureStore(azurite.account_for(container), "/team/registry/")
    other = AzureStore(azurite.account_for(container), "team/other")
    digest = await push(inside, b"prefixed")
    await inside.create_upload("open")
    assert sorted(container_names(azurite, container)) == [
        f"team/registry/blobs/sha256/{digest[7:]}",
        "team/registry/uploads/open",
    ]
    assert [d async for d in other.list_blobs()] == []
    assert [u async for u in other.list_uploads()] == []
    assert await other.stat(digest) is None
    await inside.delete(digest)
    await inside.delete_upload("open", {})
    await inside.aclose()
    await other.aclose()


async def test_large_blob_in_default_blocks(azurite: AzuriteServer, container: str) -> None:
    s = AzureStore(azurite.account_for(container))
    data = payload(20 * MiB + 1, seed=34)
    state = await write_upload(s, "big", data, chunk=256 * 1024)
    # A block is staged as soon as 8 MiB are buffered; the rest at close.
    assert [size for _, size in state["blocks"]] == [8 * MiB, 8 * MiB, 4 * MiB + 1]
    await s.commit_upload("big", state, len(data), sha256(data))
    assert await read_all(s, sha256(data), 9 * MiB, MiB) == data[9 * MiB : 10 * MiB]
    await s.aclose()


async def test_writer_of_a_deleted_upload_leaves_nothing_for_good(
    azurite: AzuriteServer, container: str, store: AzureStore
) -> None:
    # The upload is cancelled while a request still writes it: the blocks it stages make
    # an uncommitted blob, its close cannot commit (the blob it opened is gone), and the
    # leftover is listed as an upload, so the janitor's delete_upload removes it.
    state = await write_upload(store, "u1", b"saved")
    writer = await store.open_writer("u1", 5, state)
    await store.delete_upload("u1", state)
    await writer.write(payload(100_000, seed=35))  # over the block size: staged now
    with pytest.raises(StorageError):
        await writer.close()
    assert [u async for u, _ in store.list_uploads()] == ["u1"]
    assert container_names(azurite, container) == ["uploads/u1"]
    with pytest.raises(UploadNotFound):
        await store.open_writer("u1", 0, state)
    await store.delete_upload("u1", {})
    assert container_names(azurite, container) == []


async def test_calls_are_retried_while_the_service_restarts(tmp_path: Path) -> None:
    # A server of its own, stopped and started again on the same port and workspace:
    # the SDK's retry policy carries a call over the gap (connection refused meanwhile).
    server = AzuriteServer(tmp_path, require_tool("azurite-blob")).start()
    try:
        container = server.new_container()
        s = new_store(server, container)
        digest = await push(s, b"survives a restart")
        server.stop()

        async def restart() -> None:
            await anyio.to_thread.run_sync(server.start)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(restart)
            assert await s.stat(digest) == len(b"survives a restart")
        assert await read_all(s, digest) == b"survives a restart"
        await s.aclose()
    finally:
        server.stop()
