"""One bucket's objects: the S3 operations the store is made of, errors as StorageError.

``put``, ``copy`` and ``compose`` with ``only_new`` send ``If-None-Match: *``: they
create the key or, when it exists, leave it alone and answer False (the dedupe of
concurrent commits).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Any

import anyio
from botocore.exceptions import ClientError

from dockyard.storage.base import READ_CHUNK, StorageError
from dockyard.storage.s3.client import (
    ThreadedClient,
    describe,
    is_not_found,
    is_precondition_failed,
)

DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys
# What a redirected client is served (CopyObject keeps the segment's type).
BINARY = "application/octet-stream"


class BucketObjects:
    def __init__(self, client: ThreadedClient, bucket: str, sse: dict[str, str]) -> None:
        self.client = client
        self.bucket = bucket
        self.sse = sse  # ServerSideEncryption / SSEKMSKeyId of every object written

    async def call(self, operation: str, key: str, **params: Any) -> Any:
        return await self.client.call(operation, key, Bucket=self.bucket, **params)

    async def head(self, key: str) -> int | None:
        try:
            answer = await self.call("head_object", key, Key=key)
        except ClientError as e:  # the answers call() leaves to us: 404, 412
            if is_not_found(e):
                return None
            raise StorageError(describe("head_object", key, e)) from None
        return int(answer["ContentLength"])

    async def put(self, key: str, data: bytes, only_new: bool = False) -> bool:
        """PUT ``data``; with ``only_new``, False when the key already exists."""
        condition = {"IfNoneMatch": "*"} if only_new else {}
        try:
            await self.call(
                "put_object", key, Key=key, Body=data, ContentType=BINARY, **condition, **self.sse
            )
        except ClientError as e:
            if only_new and is_precondition_failed(e):
                return False
            raise StorageError(describe("put_object", key, e)) from None
        return True

    async def delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = keys[start : start + DELETE_BATCH]
            answer = await self.call(
                "delete_objects",
                batch[0],
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            failed = [e for e in answer.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if failed:
                raise StorageError(
                    f"s3 delete_objects: {len(failed)} not deleted ({failed[0].get('Code')})"
                )

    async def listing(self, prefix: str) -> AsyncIterator[dict[str, Any]]:
        """Every object under ``prefix``, flat, in key order, a page at a time."""
        token: str | None = None
        while True:
            params: dict[str, Any] = {"Prefix": prefix}
            if token:
                params["ContinuationToken"] = token
            page = await self.call("list_objects_v2", prefix, **params)
            for item in page.get("Contents", []):
                yield item
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    async def read(
        self, key: str, offset: int, length: int | None, missing: StorageError
    ) -> AsyncIterator[bytes]:
        """``length`` bytes of ``key`` from ``offset`` (None: all of it, from 0): one GET,
        ranged unless it reads the whole object, streamed ``READ_CHUNK`` at a time."""
        if length is not None and length <= 0:
            return
        ranged = {} if length is None else {"Range": f"bytes={offset}-{offset + length - 1}"}
        try:
            answer = await self.call("get_object", key, Key=key, **ranged)
        except ClientError as e:
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
                chunk: bytes = await self.client.run(functools.partial(body.read, want))
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

    async def get(self, key: str, offset: int, length: int, missing: StorageError) -> bytes:
        return b"".join([c async for c in self.read(key, offset, length, missing)])

    async def copy(self, target: str, source: str, only_new: bool = False) -> bool:
        """Server-side copy of ``source`` (at most 5 GiB) onto ``target``."""
        condition = {"IfNoneMatch": "*"} if only_new else {}
        try:
            await self.call(
                "copy_object",
                target,
                Key=target,
                CopySource={"Bucket": self.bucket, "Key": source},
                **condition,
                **self.sse,
            )
        except ClientError as e:
            if only_new and is_precondition_failed(e):
                return False
            raise StorageError(describe("copy_object", target, e)) from None
        return True

    async def compose(self, target: str, sources: list[str], only_new: bool = False) -> bool:
        """``target`` made of ``sources`` in order, each a part of a multipart upload
        copied server-side (UploadPartCopy, in parallel); every source but the last
        must be at least 5 MiB. An interrupted compose aborts its multipart upload."""
        created = await self.call(
            "create_multipart_upload", target, Key=target, ContentType=BINARY, **self.sse
        )
        multipart = created["UploadId"]
        etags: list[str] = [""] * len(sources)

        async def copy_part(index: int, key: str) -> None:
            answer = await self.call(
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
                async with anyio.create_task_group() as tasks:
                    for index, key in enumerate(sources):
                        tasks.start_soon(copy_part, index, key)
            except BaseExceptionGroup as group:
                raise _first_error(group) from None
            parts = [{"PartNumber": i + 1, "ETag": etag} for i, etag in enumerate(etags)]
            await self.call(
                "complete_multipart_upload",
                target,
                Key=target,
                UploadId=multipart,
                MultipartUpload={"Parts": parts},
                **({"IfNoneMatch": "*"} if only_new else {}),
            )
        except BaseException as e:
            # A failed abort leaves an incomplete upload for the bucket's lifecycle rule;
            # the error that matters is the one that got us here.
            with anyio.CancelScope(shield=True), contextlib.suppress(StorageError):
                await self.abort_multipart(target, multipart)
            if only_new and is_precondition_failed(e):
                return False  # stored meanwhile by another commit: keep that copy
            if isinstance(e, Exception) and not isinstance(e, StorageError):
                raise StorageError(describe("complete_multipart_upload", target, e)) from None
            raise
        return True

    async def abort_multipart(self, key: str, multipart: str) -> None:
        try:
            await self.call("abort_multipart_upload", key, Key=key, UploadId=multipart)
        except ClientError as e:
            if not is_not_found(e):
                raise StorageError(describe("abort_multipart_upload", key, e)) from None


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a task group's exception group (a StorageError when there is one)."""
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
    failures = [error for error in leaves if not isinstance(error, anyio.get_cancelled_exc_class())]
    return failures[0] if failures else group  # only cancelled: the group, as it came
