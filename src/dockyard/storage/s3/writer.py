"""Upload bytes in an S3 bucket: segments, the saved state, the writer.

An upload is a few objects under ``<prefix>uploads/<upload id>/``: ``info`` (made by
``create_upload``: the upload exists) and the segments the writers stored, one PUT each.
The driver state saved with the upload session lists the segments in order::

    {"segments": [["<key>", <size>], ...]}

Every segment but the last is at least ``MIN_PART`` (5 MiB) long, so that the commit can
make each one a part of a multipart upload with UploadPartCopy (a server-side copy).
A last segment shorter than that is the tail: the next writer reads it back, prepends it
to its own bytes and stores the result as new segments. Segment keys are new for every
write (a random suffix), so a writer that crashed or is still running after losing its
lease never overwrites a segment the saved state names; the segments nobody names are
deleted by the next writer to open (``S3Store.open_writer``) or with the upload.
Segments are readable objects, so ``read_upload`` and a writer continuing below what the
state holds are plain ranged GETs.
"""

from __future__ import annotations

import secrets
from typing import Any, Protocol

from dockyard.storage.base import DriverState, StorageError
from dockyard.storage.s3.objects import BucketObjects

MIN_PART = 5 * 1024 * 1024
Segment = tuple[str, int]


def segments_of(state: DriverState) -> list[Segment]:
    """The segments a saved state names (StorageError if it is not one of ours)."""
    raw: Any = state.get("segments", [])
    try:
        segments = [(str(key), int(size)) for key, size in raw]
    except (TypeError, ValueError):
        raise StorageError("upload state is not an s3 driver state") from None
    if any(size < 0 for _, size in segments):
        raise StorageError("upload state is not an s3 driver state")
    return segments


def state_of(segments: list[Segment]) -> DriverState:
    return {"segments": [[key, size] for key, size in segments]}


def held(segments: list[Segment]) -> int:
    return sum(size for _, size in segments)


class SegmentBucket(Protocol):
    """What a writer needs of the store (S3Store is one): the bucket, the part size and
    the key of an upload's object; a protocol so the writer does not import the store."""

    part_size: int
    objects: BucketObjects

    def upload_key(self, upload_id: str, name: str) -> str: ...


class S3Writer:
    """Buffers up to ``part_size`` bytes; each full buffer becomes one segment (one PUT)."""

    def __init__(
        self,
        store: SegmentBucket,
        upload_id: str,
        kept: list[Segment],
        carried: bytes,
    ) -> None:
        self._store = store
        self._upload_id = upload_id
        self._segments = list(kept)
        self._buffer = bytearray(carried)
        self._written: list[str] = []  # segment keys this writer stored

    async def write(self, data: bytes) -> None:
        self._buffer += data
        part_size = self._store.part_size
        while len(self._buffer) >= part_size:
            await self._store_segment(bytes(self._buffer[:part_size]))
            del self._buffer[:part_size]

    async def _store_segment(self, data: bytes) -> None:
        key = self._store.upload_key(self._upload_id, f"s-{secrets.token_hex(8)}")
        await self._store.objects.put(key, data)
        self._written.append(key)
        self._segments.append((key, len(data)))

    async def close(self) -> DriverState:
        if self._buffer:
            await self._store_segment(bytes(self._buffer))
            self._buffer.clear()
        return state_of(self._segments)

    async def abort(self) -> None:
        # The saved state never named these segments: nothing else can reach them.
        self._buffer.clear()
        keys, self._written = self._written, []
        await self._store.objects.delete_keys(keys)
