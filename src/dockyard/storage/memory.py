"""Blobs in memory: for tests and throwaway registries. Lost when the process exits."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from dockyard.storage.base import (
    READ_CHUNK,
    BlobNotFound,
    DriverState,
    StorageError,
    StoredBlob,
    UploadNotFound,
)


class MemoryWriter:
    def __init__(self, buf: bytearray, offset: int) -> None:
        del buf[offset:]
        self._buf = buf
        self._offset = offset

    async def write(self, data: bytes) -> None:
        self._buf += data

    async def close(self) -> DriverState:
        return {}

    async def abort(self) -> None:
        del self._buf[self._offset :]


class MemoryStore:
    name = "memory"

    def __init__(self) -> None:
        self._blobs: dict[str, bytes] = {}
        self._written: dict[str, float] = {}
        self._uploads: dict[str, tuple[bytearray, float]] = {}

    async def stat(self, digest: str) -> int | None:
        blob = self._blobs.get(digest)
        return None if blob is None else len(blob)

    async def read(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        blob = self._blobs.get(digest)
        if blob is None:
            raise BlobNotFound(digest)
        end = len(blob) if length is None else offset + length
        if end > len(blob) or offset < 0:
            raise StorageError(f"{digest} has {len(blob)} bytes, cannot read to {end}")
        for start in range(offset, end, READ_CHUNK):
            yield blob[start : min(start + READ_CHUNK, end)]

    async def delete(self, digest: str) -> bool:
        return self._blobs.pop(digest, None) is not None

    async def list_blobs(self) -> AsyncIterator[str]:
        for digest in list(self._blobs):
            yield digest

    async def list_blob_details(self) -> AsyncIterator[StoredBlob]:
        for digest, blob in list(self._blobs.items()):
            yield StoredBlob(digest, len(blob), self._written.get(digest, 0.0))

    def _upload(self, upload_id: str) -> bytearray:
        try:
            return self._uploads[upload_id][0]
        except KeyError:
            raise UploadNotFound(upload_id) from None

    async def create_upload(self, upload_id: str) -> DriverState:
        if upload_id in self._uploads:
            raise StorageError(f"upload {upload_id} already exists")
        self._uploads[upload_id] = (bytearray(), time.time())
        return {}

    async def open_writer(self, upload_id: str, offset: int, state: DriverState) -> MemoryWriter:
        buf = self._upload(upload_id)
        if len(buf) < offset:
            raise StorageError(f"upload {upload_id} holds fewer than {offset} bytes")
        self._uploads[upload_id] = (buf, time.time())
        return MemoryWriter(buf, offset)

    async def read_upload(
        self, upload_id: str, state: DriverState, length: int
    ) -> AsyncIterator[bytes]:
        buf = self._upload(upload_id)
        if length > len(buf):
            raise StorageError(f"upload {upload_id} holds {len(buf)} bytes, not {length}")
        for start in range(0, length, READ_CHUNK):
            yield bytes(buf[start : min(start + READ_CHUNK, length)])

    async def commit_upload(
        self, upload_id: str, state: DriverState, size: int, digest: str
    ) -> None:
        buf = self._upload(upload_id)
        if len(buf) != size:
            raise StorageError(f"upload {upload_id} holds {len(buf)} bytes, expected {size}")
        if digest not in self._blobs:
            self._blobs[digest] = bytes(buf)
            self._written[digest] = time.time()
        del self._uploads[upload_id]

    async def delete_upload(self, upload_id: str, state: DriverState) -> None:
        self._uploads.pop(upload_id, None)

    async def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        for upload_id, (_, touched) in list(self._uploads.items()):
            yield upload_id, touched

    def local_path(self, digest: str) -> str | None:
        return None  # not on this machine's file system

    async def presigned_url(self, digest: str, method: str = "GET") -> str | None:
        return None

    async def check(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
