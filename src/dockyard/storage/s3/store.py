"""Blobs in an S3 bucket (AWS S3 or an S3-compatible store such as SeaweedFS).

Layout under ``<prefix>`` in the bucket::

    blobs/<algorithm>/<encoded>        committed blobs, immutable
    uploads/<upload id>/info           the upload exists (made by create_upload)
    uploads/<upload id>/s-<random>     upload segments (see writer.py)

Commit makes the blob in one atomic step: an empty blob is one PUT, a blob of one
segment one server-side CopyObject, a longer one a multipart upload onto the blob key
whose parts are server-side copies of the segments (UploadPartCopy), completed at once.
Every such write carries ``If-None-Match: *`` and a HEAD comes first, so a digest that
is already stored keeps its stored copy (dedupe); then the upload's objects are deleted.
Listings are flat (no delimiter): some S3-compatible stores show deleted "directories"
in delimited listings for a while.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from dockyard.config.model import S3Settings
from dockyard.storage.base import (
    BlobNotFound,
    DriverState,
    StorageError,
    StoredBlob,
    UploadNotFound,
)
from dockyard.storage.s3.client import (
    ThreadedClient,
    describe,
    make_client,
)
from dockyard.storage.s3.objects import BucketObjects
from dockyard.storage.s3.writer import (
    MIN_PART,
    S3Writer,
    Segment,
    held,
    segments_of,
    state_of,
)

# The OCI digest grammar: anything else cannot be stored, so it is simply not there.
DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
UPLOAD_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


class S3Store:
    name = "s3"

    def __init__(self, settings: S3Settings, client: Any | None = None) -> None:
        self.bucket = settings.bucket
        self.prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self.part_size = settings.part_size
        self.redirect = settings.redirect
        self.redirect_expiry = settings.redirect_expiry
        sse: dict[str, str] = {}
        if settings.sse:
            sse["ServerSideEncryption"] = settings.sse
        if settings.sse_kms_key_id:
            sse["SSEKMSKeyId"] = settings.sse_kms_key_id
        raw = make_client(settings) if client is None else client
        self._client = ThreadedClient(raw, settings.max_connections)
        self.objects = BucketObjects(self._client, self.bucket, sse)

    def __repr__(self) -> str:
        return f"S3Store(bucket={self.bucket!r}, prefix={self.prefix!r})"

    # -- keys -----------------------------------------------------------------------------

    def blob_key(self, digest: str) -> str:
        if len(digest) > 255 or not DIGEST.fullmatch(digest):
            raise BlobNotFound(digest)
        algorithm, _, encoded = digest.partition(":")
        return f"{self.prefix}blobs/{algorithm}/{encoded}"

    def _uploads_prefix(self) -> str:
        return f"{self.prefix}uploads/"

    def upload_prefix(self, upload_id: str) -> str:
        if not UPLOAD_ID.fullmatch(upload_id):
            raise UploadNotFound(upload_id)
        return f"{self._uploads_prefix()}{upload_id}/"

    def upload_key(self, upload_id: str, name: str) -> str:
        return self.upload_prefix(upload_id) + name

    # -- blobs ----------------------------------------------------------------------------

    async def stat(self, digest: str) -> int | None:
        try:
            key = self.blob_key(digest)
        except BlobNotFound:
            return None
        return await self.objects.head(key)

    async def read(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self.blob_key(digest)
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"{digest}: cannot read {length} bytes at {offset}")
        if length == 0 or (length is None and offset > 0):
            # No GET can say whether these are there (S3 has no empty ranges): ask the size.
            size = await self.objects.head(key)
            if size is None:
                raise BlobNotFound(digest)
            if length is None:
                length = size - offset
            if offset + length > size:
                raise StorageError(f"{digest} has {size} bytes, cannot read to {offset + length}")
        # One GET: a missing blob is a 404, a range past the end a short answer.
        async for chunk in self.objects.read(key, offset, length, BlobNotFound(digest)):
            yield chunk

    async def delete(self, digest: str) -> bool:
        try:
            key = self.blob_key(digest)
        except BlobNotFound:
            return False
        if await self.objects.head(key) is None:
            return False
        await self.objects.call("delete_object", key, Key=key)
        return True

    async def list_blobs(self) -> AsyncIterator[str]:
        async for blob in self.list_blob_details():
            yield blob.digest

    async def list_blob_details(self) -> AsyncIterator[StoredBlob]:
        start = len(self.prefix) + len("blobs/")
        async for item in self.objects.listing(f"{self.prefix}blobs/"):
            algorithm, _, encoded = item["Key"][start:].partition("/")
            if algorithm and encoded and "/" not in encoded:
                modified = item["LastModified"].timestamp()
                yield StoredBlob(f"{algorithm}:{encoded}", int(item["Size"]), modified)

    # -- uploads --------------------------------------------------------------------------

    async def _require_upload(self, upload_id: str) -> None:
        if await self.objects.head(self.upload_key(upload_id, "info")) is None:
            raise UploadNotFound(upload_id)

    async def create_upload(self, upload_id: str) -> DriverState:
        if not await self.objects.put(self.upload_key(upload_id, "info"), b"", only_new=True):
            raise StorageError(f"upload {upload_id} already exists")
        return state_of([])

    async def open_writer(self, upload_id: str, offset: int, state: DriverState) -> S3Writer:
        segments = segments_of(state)
        await self._require_upload(upload_id)
        if offset < 0 or offset > held(segments):
            raise StorageError(f"upload {upload_id} holds fewer than {offset} bytes")
        await self._drop_unnamed_segments(upload_id, segments)
        # Keep the segments wholly below offset; bytes past it were a failed writer's.
        kept: list[Segment] = []
        position = 0
        for segment in segments:
            if position + segment[1] > offset:
                break
            kept.append(segment)
            position += segment[1]
        carried = b""
        if position < offset:  # offset falls inside the next segment: keep its head
            key = segments[len(kept)][0]
            carried = await self.objects.get(key, 0, offset - position, _missing(key))
        if kept and kept[-1][1] < MIN_PART:  # a short tail: the next part starts with it
            tail_key, tail_size = kept.pop()
            tail = await self.objects.get(tail_key, 0, tail_size, _missing(tail_key))
            carried = tail + carried
        return S3Writer(self, upload_id, kept, carried)

    async def _drop_unnamed_segments(self, upload_id: str, named: list[Segment]) -> None:
        """Delete the segments the saved state does not name: tails that a later PATCH
        superseded, and what failed writers stored. Safe here: the writer that opens holds
        the upload's lease, so no other writer's state can be saved meanwhile."""
        keep = {key for key, _ in named} | {self.upload_key(upload_id, "info")}
        listed = self.objects.listing(self.upload_prefix(upload_id))
        unnamed = [item["Key"] async for item in listed if item["Key"] not in keep]
        await self.objects.delete_keys(unnamed)

    async def read_upload(
        self, upload_id: str, state: DriverState, length: int
    ) -> AsyncIterator[bytes]:
        segments = segments_of(state)
        await self._require_upload(upload_id)
        if length > held(segments):
            raise StorageError(f"upload {upload_id} holds {held(segments)} bytes, not {length}")
        remaining = length
        for key, size in segments:
            if remaining <= 0:
                break
            async for chunk in self.objects.read(key, 0, min(size, remaining), _missing(key)):
                yield chunk
            remaining -= size

    async def commit_upload(
        self, upload_id: str, state: DriverState, size: int, digest: str
    ) -> None:
        segments = segments_of(state)
        await self._require_upload(upload_id)
        if held(segments) != size:
            raise StorageError(f"upload {upload_id} holds {held(segments)} bytes, expected {size}")
        target = self.blob_key(digest)
        if await self.objects.head(target) is None:  # else: already stored, keep it (dedupe)
            await self._make_blob(target, segments)
        await self._drop_upload(upload_id)

    async def _make_blob(self, target: str, segments: list[Segment]) -> None:
        """Create ``target`` from the segments at once; nothing if it appeared meanwhile."""
        if not segments:
            await self.objects.put(target, b"", only_new=True)
            return
        keys = [key for key, _ in segments]
        if len(keys) == 1:
            await self.objects.copy(target, keys[0], only_new=True)
        else:
            await self.objects.compose(target, keys, only_new=True)

    async def _drop_upload(self, upload_id: str) -> None:
        """Delete every object of the upload, ``info`` last (until then it is listed)."""
        info = self.upload_key(upload_id, "info")
        keys = [item["Key"] async for item in self.objects.listing(self.upload_prefix(upload_id))]
        await self.objects.delete_keys([key for key in keys if key != info])
        await self.objects.delete_keys([info])

    async def delete_upload(self, upload_id: str, state: DriverState) -> None:
        if UPLOAD_ID.fullmatch(upload_id):  # nothing can be stored under another id
            await self._drop_upload(upload_id)

    async def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        # An upload's objects are contiguous in key order: yield each when the next begins.
        start = len(self._uploads_prefix())
        current, touched = "", 0.0
        async for item in self.objects.listing(self._uploads_prefix()):
            upload_id = item["Key"][start:].partition("/")[0]
            modified = item["LastModified"].timestamp()
            if upload_id != current:
                if current:
                    yield current, touched
                current, touched = upload_id, modified
            else:
                touched = max(touched, modified)
        if current:
            yield current, touched

    # -- the rest -------------------------------------------------------------------------

    def local_path(self, digest: str) -> str | None:
        return None  # not on this machine's file system

    async def presigned_url(self, digest: str, method: str = "GET") -> str | None:
        if not self.redirect or method not in ("GET", "HEAD"):
            return None
        try:
            key = self.blob_key(digest)
        except BlobNotFound:
            return None
        operation = "get_object" if method == "GET" else "head_object"
        params = {"Bucket": self.bucket, "Key": key}
        try:
            url: str = await self._client.run(
                lambda: self._client.raw.generate_presigned_url(
                    operation, Params=params, ExpiresIn=self.redirect_expiry
                )
            )
        except Exception as e:
            raise StorageError(describe("presign", key, e)) from None
        return url

    async def check(self) -> None:
        try:
            await self.objects.call("head_bucket", self.bucket)
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(describe("head_bucket", self.bucket, e)) from None

    async def aclose(self) -> None:
        await self._client.run(self._client.raw.close)


def _missing(key: str) -> StorageError:
    return StorageError(f"upload segment {key!r} is missing: the upload must start again")
