"""The storage conformance suite against the memory and filesystem drivers."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from dockyard.storage.base import BlobStore, StorageError
from dockyard.storage.filesystem import FilesystemStore
from dockyard.storage.memory import MemoryStore
from tests.storage_conformance import StorageConformance, push, sha256


class TestMemoryStore(StorageConformance):
    @pytest.fixture
    async def store(self) -> AsyncIterator[BlobStore]:
        s = MemoryStore()
        yield s
        await s.aclose()


class TestFilesystemStore(StorageConformance):
    @pytest.fixture
    def root(self, tmp_path: Path) -> Path:
        # The root sits alone in its own directory, so anything that escapes it shows up
        # as a sibling (see assert_contained).
        return tmp_path / "registry-root"

    @pytest.fixture
    async def store(self, root: Path) -> AsyncIterator[BlobStore]:
        s = FilesystemStore(root)
        yield s
        await s.aclose()

    def assert_contained(self, store: BlobStore) -> None:
        assert isinstance(store, FilesystemStore)
        assert sorted(os.listdir(store.root.parent)) == [store.root.name]

    async def assert_empty(self, store: BlobStore) -> None:
        await super().assert_empty(store)
        assert isinstance(store, FilesystemStore)
        leftovers = [
            os.path.join(directory, name)
            for directory, _, files in os.walk(store.root)
            for name in files
        ]
        assert leftovers == [], "only empty directories may remain under the root"

    async def test_layout(self, store: BlobStore) -> None:
        # The layout drawn in the filesystem module's docstring.
        assert isinstance(store, FilesystemStore)
        await store.create_upload("in-progress")
        assert (store.root / "uploads" / "in-progress").is_file()
        digest = await push(store, b"laid out")
        encoded = digest.removeprefix("sha256:")
        blob = store.root / "blobs" / "sha256" / encoded[:2] / encoded
        assert blob.read_bytes() == b"laid out"
        assert not (store.root / "uploads" / "upload-1").exists()

    async def test_a_vanished_root_is_a_storage_error(self, root: Path) -> None:
        # The janitor and /readyz tell an unreachable store from a bug by StorageError.
        store = FilesystemStore(root)
        await store.create_upload("pending")
        shutil.rmtree(root)
        with pytest.raises(StorageError, match="cannot list uploads"):
            [u async for u, _ in store.list_uploads()]
        with pytest.raises(StorageError):
            await store.check()

    async def test_survives_reopen(self, root: Path) -> None:
        first = FilesystemStore(root)
        digest = await push(first, b"durable")
        await first.create_upload("pending")
        await first.aclose()

        second = FilesystemStore(root)
        assert await second.stat(digest) == len(b"durable")
        assert [d async for d in second.list_blobs()] == [digest]
        assert [u async for u, _ in second.list_uploads()] == ["pending"]
        await second.aclose()

    async def test_committed_blob_is_read_only_to_later_writes(self, store: BlobStore) -> None:
        # commit links the upload file to the blob path: a later upload reusing the id
        # must not write through into the committed blob.
        digest = await push(store, b"immutable", upload_id="reused")
        state = await store.create_upload("reused")
        writer = await store.open_writer("reused", 0, state)
        await writer.write(b"overwrite!")
        await writer.close()
        assert await store.stat(digest) == len(b"immutable")
        chunks = [c async for c in store.read(digest)]
        assert b"".join(chunks) == b"immutable"
        assert digest == sha256(b"immutable")
