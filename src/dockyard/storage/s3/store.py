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

import functools
import re
from collections.abc import AsyncIterator
from typing import Any

import trio

from dockyard.config.model import S3Settings
from dockyard.storage.base import (
    READ_CHUNK,
    BlobNotFound,
    DriverState,
    StorageError,
    UploadNotFound,
)
from dockyard.storage.s3.client import (
    ThreadedClient,
    describe,
    is_not_found,
    is_precondition_failed,
    make_client,
)
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
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


class S3Store:
    name = "s3"

    def __init__(self, settings: S3Settings, client: Any | None = None) -> None:
        self.bucket = settings.bucket
        self.prefix = settings.prefix.strip("/") + "/" if settings.prefix.strip("/") else ""
        self.part_size = settings.part_size
        self.redirect = settings.redirect
        self.redirect_expiry = settings.redirect_expiry
        self._sse: dict[str, str] = {}
        if settings.sse:
            self._sse["ServerSideEncryption"] = settings.sse
        if settings.sse_kms_key_id:
            self._sse["SSEKMSKeyId"] = settings.sse_kms_key_id
        raw = make_client(settings) if client is None else client
        self._client = ThreadedClient(raw, settings.max_connections)

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

    # -- object primitives ----------------------------------------------------------------

    async def _call(self, operation: str, key: str, **params: Any) -> Any:
        return await self._client.call(operation, key, Bucket=self.bucket, **params)

    async def _head(self, key: str) -> int | None:
        try:
            answer = await self._call("head_object", key, Key=key)
        except Exception as e:
            if is_not_found(e):
                return None
            raise StorageError(describe("head_object", key, e)) from None
        return int(answer["ContentLength"])

    async def put(self, key: str, data: bytes, only_new: bool = False) -> bool:
        """PUT ``data``; with ``only_new``, False when the key already exists."""
        condition = {"IfNoneMatch": "*"} if only_new else {}
        try:
            await self._call("put_object", key, Key=key, Body=data, **condition, **self._sse)
        except Exception as e:
            if only_new and is_precondition_failed(e):
                return False
            raise StorageError(describe("put_object", key, e)) from None
        return True

    async def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            answer = await self._call(
                "delete_objects",
                batch[0],
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise StorageError(
                    f"s3 delete_objects: {len(failed)} not deleted ({failed[0].get('Code')})"
                )

    async def _list(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """Every object under ``prefix``, flat, in key order, a page at a time."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": prefix}
            if token:
                params["ContinuationToken"] = token
            page = await self._call("list_objects_v2", prefix, **params)
            for item in page.get("Contents", []):
                yield item
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def _read_object(
        self, key: str, offset: int, length: int | None, missing: StorageError
    ) -> AsyncIterator[bytes]:
        """``length`` bytes of ``key`` from ``offset`` (None: all of it, from 0): one GET,
        ranged unless it reads the whole object, streamed ``READ_CHUNK`` at a time."""
        if length is not None and length <= 0:
            return
        ranged = {} if length is None else {"Range": f"bytes={offset}-{offset + length - 1}"}
        try:
            answer = await self._call("get_object", key, Key=key, **ranged)
        except Exception as e:
            if is_not_found(e):
                raise missing from None
            raise StorageError(describe("get_object", key, e)) from None
        body = answer["Body"]
        try:
            expected = int(answer["ContentLength"])
            if length is not None and expected != length:  # the range ran past the end
                raise StorageError(f"{key!r} holds fewer than {offset + length} bytes")
            received = 0
            while received < expected:
                want = min(READ_CHUNK, expected - received)
                chunk: bytes = await self._client.run(functools.partial(body.read, want))
                if not chunk:
                    raise StorageError(f"{key!r}: the store sent fewer bytes than announced")
                received += len(chunk)
                yield chunk
        except StorageError:
            raise
        except Exception as e:  # a connection that broke mid-body
            raise StorageError(describe("get_object", key, e)) from None
        finally:
            body.close()

    # -- blobs ----------------------------------------------------------------------------

    async def stat(self, digest: str) -> int | None:
        try:
            key = self.blob_key(digest)
        except BlobNotFound:
            return None
        return await self._head(key)

    async def read(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        key = self.blob_key(digest)
        if offset < 0 or (length is not None and length < 0):
            raise StorageError(f"{digest}: cannot read {length} bytes at {offset}")
        if length == 0 or (length is None and offset > 0):
            # No GET can say whether these are there (S3 has no empty ranges): ask the size.
            size = await self._head(key)
            if size is None:
                raise BlobNotFound(digest)
            if length is None:
                length = size - offset
            if offset + length > size:
                raise StorageError(f"{digest} has {size} bytes, cannot read to {offset + length}")
        # One GET: a missing blob is a 404, a range past the end a short answer.
        async for chunk in self._read_object(key, offset, length, BlobNotFound(digest)):
            yield chunk

    async def delete(self, digest: str) -> bool:
        try:
            key = self.blob_key(digest)
        except BlobNotFound:
            return False
        if await self._head(key) is None:
            return False
        await self._call("delete_object", key, Key=key)
        return True

    async def list_blobs(self) -> AsyncIterator[str]:
        start = len(self.prefix) + len("blobs/")
        async for item in self._list(f"{self.prefix}blobs/"):
            algorithm, _, encoded = item["Key"][start:].partition("/")
            if algorithm and encoded and "/" not in encoded:
                yield f"{algorithm}:{encoded}"

    # -- uploads --------------------------------------------------------------------------

    async def _require_upload(self, upload_id: str) -> None:
        if await self._head(self.upload_key(upload_id, "info")) is None:
            raise UploadNotFound(upload_id)

    async def create_upload(self, upload_id: str) -> DriverState:
        if not await self.put(self.upload_key(upload_id, "info"), b"", only_new=True):
            raise StorageError(f"upload {upload_id} already exists")
        return state_of([])

    async def open_writer(self, upload_id: str, offset: int, state: DriverState) -> S3Writer:
        segments = segments_of(state)
        await self._require_upload(upload_id)
        if offset < 0 or offset > held(segments):
            raise StorageError(f"upload {upload_id} holds fewer than {offset} bytes")
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
            carried = await self._get(segments[len(kept)][0], 0, offset - position)
        if kept and kept[-1][1] < MIN_PART:  # a short tail: the next part starts with it
            tail_key, tail_size = kept.pop()
            carried = await self._get(tail_key, 0, tail_size) + carried
        return S3Writer(self, upload_id, kept, carried)

    async def _get(self, key: str, offset: int, length: int) -> bytes:
        missing = StorageError(f"upload segment {key!r} is missing")
        return b"".join([c async for c in self._read_object(key, offset, length, missing)])

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
            missing = StorageError(f"upload segment {key!r} is missing")
            async for chunk in self._read_object(key, 0, min(size, remaining), missing):
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
        if await self._head(target) is None:  # else: already stored, keep it (dedupe)
            await self._make_blob(target, segments)
        await self._drop_upload(upload_id)

    async def _make_blob(self, target: str, segments: list[Segment]) -> None:
        """Create ``target`` from the segments at once; nothing if it appeared meanwhile."""
        if not segments:
            await self.put(target, b"", only_new=True)
            return
        if len(segments) == 1:
            source = {"Bucket": self.bucket, "Key": segments[0][0]}
            try:
                await self._call(
                    "copy_object",
                    target,
                    Key=target,
                    CopySource=source,
                    IfNoneMatch="*",
                    **self._sse,
                )
            except Exception as e:
                if not is_precondition_failed(e):
                    raise StorageError(describe("copy_object", target, e)) from None
            return
        await self._multipart_copy(target, segments)

    async def _multipart_copy(self, target: str, segments: list[Segment]) -> None:
        created = await self._call("create_multipart_upload", target, Key=target, **self._sse)
        multipart = created["UploadId"]
        etags: list[str] = [""] * len(segments)

        async def copy_part(index: int, key: str) -> None:
            answer = await self._call(
                "upload_part_copy",
                target,
                Key=target,
                UploadId=multipart,
                PartNumber=index + 1,
                CopySource={"Bucket": self.bucket, "Key": key},
            )
            etags[index] = answer["CopyPartResult"]["ETag"]

        try:
            try:
                async with trio.open_nursery() as nursery:
                    for index, (key, _) in enumerate(segments):
                        nursery.start_soon(copy_part, index, key)
            except BaseExceptionGroup as group:
                raise _first_error(group) from None
            parts = [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]
            await self._call(
                "complete_multipart_upload",
                target,
                Key=target,
                UploadId=multipart,
                MultipartUpload={"Parts": parts},
                IfNoneMatch="*",
            )
        except BaseException as e:
            with trio.CancelScope(shield=True):
                await self._abort_multipart(target, multipart)
            if is_precondition_failed(e):
                return  # stored meanwhile by another commit: keep that copy
            if isinstance(e, Exception) and not isinstance(e, StorageError):
                raise StorageError(describe("complete_multipart_upload", target, e)) from None
            raise

    async def _abort_multipart(self, key: str, multipart: str) -> None:
        try:
            await self._call("abort_multipart_upload", key, Key=key, UploadId=multipart)
        except Exception as e:
            if not is_not_found(e):
                raise StorageError(describe("abort_multipart_upload", key, e)) from None

    async def _drop_upload(self, upload_id: str) -> None:
        """Delete every object of the upload, ``info`` last (until then it is listed)."""
        info = self.upload_key(upload_id, "info")
        keys = [item["Key"] async for item in self._list(self.upload_prefix(upload_id))]
        await self.delete_keys([key for key in keys if key != info])
        await self.delete_keys([info])

    async def delete_upload(self, upload_id: str, state: DriverState) -> None:
        if UPLOAD_ID.fullmatch(upload_id):  # nothing can be stored under another id
            await self._drop_upload(upload_id)

    async def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        # An upload's objects are contiguous in key order: yield each when the next begins.
        start = len(self._uploads_prefix())
        current, touched = "", 0.0
        async for item in self._list(self._uploads_prefix()):
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
            await self._call("head_bucket", self.bucket)
        except StorageError:
            raise
        except Exception as e:
            raise StorageError(describe("head_bucket", self.bucket, e)) from None

    async def aclose(self) -> None:
        await self._client.run(self._client.raw.close)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a nursery's group (a StorageError when there is one)."""
    leaves: list[BaseException] = []

    def walk(error: BaseException) -> None:
        if isinstance(error, BaseExceptionGroup):
            for inner in error.exceptions:
                walk(inner)
        else:
            leaves.append(error)

    walk(group)
    for error in leaves:
        if isinstance(error, StorageError):
            return error
    return leaves[0]
