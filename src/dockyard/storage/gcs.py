"""Blobs in a Google Cloud Storage bucket (or an emulator such as fake-gcs-server).

Objects under ``prefix``::

    blobs/<algorithm>/<encoded>         committed blobs, immutable
    uploads/<id>/info                   the upload exists (created by create_upload)
    uploads/<id>/<n>.<token>            part n: what one writer (one PATCH) wrote
    uploads/<id>/compose.<round>.<i>.<token>   intermediate composes of a commit

Why composed parts, not one resumable upload per blob upload: a resumable session only
grows. A PATCH that failed half-way leaves its bytes in the session, and the next PATCH
must continue at the offset the upload session saved, behind those bytes, which a
session cannot take back. Parts can: each writer writes its own part object (a unique
name, so a writer that outlived its lease overwrites nothing), and the saved driver
state lists the parts that count, ``{"parts": [{"name", "size"}]}``. Parts a failed
writer left are not listed and are deleted with the upload. Any instance can continue
an upload from that state alone; nothing lives in process memory between requests.

A writer keeps at most ``PART_CHUNK`` bytes in memory: a part smaller than that is one
media upload at ``close``; a larger one goes out as a resumable upload of the part object
(chunks of multiples of 256 KiB, as GCS requires), finished at ``close``. The session
lives only as long as the writer, one request.

Commit composes the parts (at most 32 sources per compose, as GCS allows, so more are
composed in rounds onto intermediate objects) straight onto the blob key with
``ifGenerationMatch=0``: the blob appears whole or not at all, and a precondition failure
means another upload stored the digest first (dedupe). fake-gcs-server ignores that
precondition (it overwrites), so commit also looks for the blob first; on real GCS the
precondition decides races. Both GCS and fake-gcs-server support compose, ranged reads
and resumable uploads; the JSON API is spoken with httpx (``gcs_client``).
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import anyio

from dockyard.storage.base import (
    BlobNotFound,
    DriverState,
    StorageError,
    StoredBlob,
    UploadNotFound,
)
from dockyard.storage.gcs_client import GcsClient, PreconditionFailed

MiB = 1024 * 1024
# Bytes a writer holds before it sends them: the memory per upload in flight.
PART_CHUNK = 8 * MiB
# Non-final chunks of a resumable upload must be multiples of this (GCS docs).
RESUMABLE_QUANTUM = 256 * 1024
MAX_COMPOSE_SOURCES = 32
# Object deletes in flight at once when an upload is cleaned up.
DELETE_PARALLEL = 8

# The OCI digest grammar (algorithm ":" encoded), bounded: the key is built from it.
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
# Upload ids are dockyard's own (uuid hex); anything else could escape uploads/<id>/.
_UPLOAD_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
# Part objects are named "<n>.<random hex>" by GcsWriter; a saved state naming anything
# else is not ours.
_PART_NAME = re.compile(r"[0-9]{1,6}\.[0-9a-f]{16}")


class GcsWriter:
    def __init__(self, client: GcsClient, folder: str, parts: list[dict[str, Any]]) -> None:
        self._client = client
        self._parts = parts
        self._name = f"{folder}{len(parts)}.{secrets.token_hex(8)}"
        self._buffer = bytearray()
        self._session: str | None = None
        self._sent = 0

    async def write(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) > PART_CHUNK:
            if self._session is None:
                self._session = await self._client.start_resumable(self._name)
            size = len(self._buffer) // RESUMABLE_QUANTUM * RESUMABLE_QUANTUM
            await self._client.put_chunk(
                self._session, bytes(self._buffer[:size]), self._sent, None
            )
            self._sent += size
            del self._buffer[:size]

    async def close(self) -> DriverState:
        total = self._sent + len(self._buffer)
        if self._session is not None:
            await self._client.put_chunk(self._session, bytes(self._buffer), self._sent, total)
        elif self._buffer:
            await self._client.upload(self._name, bytes(self._buffer))
        self._buffer.clear()
        parts = list(self._parts)
        if total:
            parts.append({"name": self._name.rpartition("/")[2], "size": total})
        return {"parts": parts}

    async def abort(self) -> None:
        self._buffer.clear()
        if self._session is not None:
            await self._client.cancel_resumable(self._session)


def _parts(state: DriverState) -> list[dict[str, Any]]:
    parts = state.get("parts", [])
    if not isinstance(parts, list) or not all(
        isinstance(p, dict)
        and isinstance(p.get("name"), str)
        and _PART_NAME.fullmatch(p["name"])
        and isinstance(p.get("size"), int)
        and p["size"] > 0
        for p in parts
    ):
        raise StorageError("gcs: the upload's saved driver state is malformed")
    return parts


def _timestamp(item: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(item["updated"]).replace("Z", "+00:00")).timestamp()
    except (KeyError, ValueError):
        return 0.0


class GcsStore:
    name = "gcs"

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str = "",
        credentials_file: str = "",
        project: str = "",
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self._client = GcsClient(bucket, endpoint, credentials_file, project)

    def __repr__(self) -> str:
        return f"GcsStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    # -- names ------------------------------------------------------------------------------

    def _blob_key(self, digest: str) -> str:
        if len(digest) > 255 or not _DIGEST.fullmatch(digest):
            raise BlobNotFound(digest)
        algorithm, _, encoded = digest.partition(":")
        return f"{self.prefix}blobs/{algorithm}/{encoded}"

    def _folder(self, upload_id: str) -> str:
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise UploadNotFound(upload_id)
        return f"{self.prefix}uploads/{upload_id}/"

    async def _existing_folder(self, upload_id: str) -> str:
        folder = self._folder(upload_id)
        if await self._client.get_metadata(folder + "info") is None:
            raise UploadNotFound(upload_id)
        return folder

    # -- blobs ------------------------------------------------------------------------------

    async def stat(self, digest: str) -> int | None:
        try:
            key = self._blob_key(digest)
        except BlobNotFound:
            return None
        meta = await self._client.get_metadata(key)
        return None if meta is None else int(meta["size"])

    async def read(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self._blob_key(digest)
        meta = await self._client.get_metadata(key)
        if meta is None:
            raise BlobNotFound(digest)
        size = int(meta["size"])
        end = size if length is None else offset + length
        if offset < 0 or end > size:
            raise StorageError(f"{digest} has {size} bytes, cannot read to {end}")
        if end > offset:
            # The generation read is the one measured: a blob deleted and pushed again
            # meanwhile makes this read fail rather than mix two objects.
            async for chunk in self._client.download(key, offset, end - 1, meta["generation"]):
                yield chunk

    async def delete(self, digest: str) -> bool:
        try:
            key = self._blob_key(digest)
        except BlobNotFound:
            return False
        return await self._client.delete(key)

    async def list_blobs(self) -> AsyncIterator[str]:
        async for blob in self.list_blob_details():
            yield blob.digest

    async def list_blob_details(self) -> AsyncIterator[StoredBlob]:
        root = f"{self.prefix}blobs/"
        async for item in self._client.list(root):
            algorithm, _, encoded = str(item["name"])[len(root) :].partition("/")
            if algorithm and encoded:
                yield StoredBlob(f"{algorithm}:{encoded}", int(item["size"]), _timestamp(item))

    # -- uploads ----------------------------------------------------------------------------

    async def create_upload(self, upload_id: str) -> DriverState:
        folder = self._folder(upload_id)
        if await self._client.get_metadata(folder + "info") is not None:
            raise StorageError(f"upload {upload_id} already exists")
        try:
            await self._client.upload(folder + "info", b"", if_generation_match=0)
        except PreconditionFailed:
            raise StorageError(f"upload {upload_id} already exists") from None
        return {"parts": []}

    async def open_writer(self, upload_id: str, offset: int, state: DriverState) -> GcsWriter:
        folder = await self._existing_folder(upload_id)
        kept: list[dict[str, Any]] = []
        position = 0
        cut: dict[str, Any] | None = None
        for part in _parts(state):
            if position + part["size"] > offset:
                cut = part if offset > position else None
                break
            kept.append(part)
            position += part["size"]
        if cut is None and position < offset:
            raise StorageError(f"upload {upload_id} holds fewer than {offset} bytes")
        writer = GcsWriter(self._client, folder, kept)
        if cut is not None:
            # The offset falls inside this part: the new part starts with its head, copied
            # through the writer (so memory stays bounded by PART_CHUNK).
            head = self._client.download(folder + cut["name"], 0, offset - position - 1)
            async for chunk in head:
                await writer.write(chunk)
        return writer

    async def read_upload(
        self, upload_id: str, state: DriverState, length: int
    ) -> AsyncIterator[bytes]:
        folder = await self._existing_folder(upload_id)
        parts = _parts(state)
        held = sum(part["size"] for part in parts)
        if length > held:
            raise StorageError(f"upload {upload_id} holds {held} bytes, not {length}")
        remaining = length
        for part in parts:
            if remaining <= 0:
                break
            take = min(part["size"], remaining)
            async for chunk in self._client.download(folder + part["name"], 0, take - 1):
                yield chunk
            remaining -= take

    async def commit_upload(
        self, upload_id: str, state: DriverState, size: int, digest: str
    ) -> None:
        key = self._blob_key(digest)
        folder = await self._existing_folder(upload_id)
        parts = _parts(state)
        held = sum(part["size"] for part in parts)
        if held != size:
            raise StorageError(f"upload {upload_id} holds {held} bytes, expected {size}")
        if await self._client.get_metadata(key) is None:
            sources = [folder + part["name"] for part in parts]
            # A failed precondition: another upload stored this digest first; keep its copy.
            with contextlib.suppress(PreconditionFailed):
                await self._compose(folder, sources, key)
        await self.delete_upload(upload_id, state)

    async def _compose(self, folder: str, sources: list[str], key: str) -> None:
        if not sources:
            await self._client.upload(key, b"", if_generation_match=0)
            return
        token = secrets.token_hex(4)
        round_number = 0
        while len(sources) > MAX_COMPOSE_SOURCES:
            merged = []
            for index in range(0, len(sources), MAX_COMPOSE_SOURCES):
                name = f"{folder}compose.{round_number}.{index}.{token}"
                await self._client.compose(name, sources[index : index + MAX_COMPOSE_SOURCES])
                merged.append(name)
            sources = merged
            round_number += 1
        await self._client.compose(key, sources, if_generation_match=0)

    async def delete_upload(self, upload_id: str, state: DriverState) -> None:
        try:
            folder = self._folder(upload_id)
        except UploadNotFound:
            return
        names = [str(item["name"]) async for item in self._client.list(folder)]
        marker = folder + "info"
        limiter = anyio.CapacityLimiter(DELETE_PARALLEL)

        async def delete(name: str) -> None:
            async with limiter:
                await self._client.delete(name)

        # Parts first, the marker last: an upload half cleaned up still exists, and the
        # stale-upload purge finishes the job.
        async with anyio.create_task_group() as tasks:
            for name in names:
                if name != marker:
                    tasks.start_soon(delete, name)
        await self._client.delete(marker)

    async def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        root = f"{self.prefix}uploads/"
        touched: dict[str, float] = {}
        async for item in self._client.list(root):
            upload_id = str(item["name"])[len(root) :].partition("/")[0]
            touched[upload_id] = max(touched.get(upload_id, 0.0), _timestamp(item))
        for upload_id, when in touched.items():
            yield upload_id, when

    # -- the rest ---------------------------------------------------------------------------

    def local_path(self, digest: str) -> str | None:
        return None  # not on this machine's file system

    async def presigned_url(self, digest: str, method: str = "GET") -> str | None:
        return None

    async def check(self) -> None:
        # One listing call: it needs only the permission the driver needs anyway.
        await self._client.list_page(self.prefix, max_results=1)

    async def aclose(self) -> None:
        await self._client.aclose()
