"""A storage driver that times every operation of the driver it wraps and counts its
failures (``dockyard_storage_operation_duration_seconds``, ``dockyard_storage_errors_total``).

A missing blob or upload is an answer, not a failure. Streams (``read``, ``read_upload``,
the listings) are timed from the first request to the last chunk; a stream its consumer
leaves early is timed to that point.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from dockyard.observability.metrics import RegistryMetrics
from dockyard.storage.base import (
    BlobNotFound,
    BlobStore,
    DriverState,
    StoredBlob,
    UploadNotFound,
    UploadWriter,
)

T = TypeVar("T")
OPERATIONS = (
    "stat",
    "read",
    "delete",
    "list_blobs",
    "create_upload",
    "open_writer",
    "write",
    "close_writer",
    "abort_writer",
    "read_upload",
    "commit_upload",
    "delete_upload",
    "list_uploads",
    "presigned_url",
    "check",
)
_ANSWERS = (BlobNotFound, UploadNotFound)


class _Timer:
    def __init__(self, metrics: RegistryMetrics) -> None:
        self.durations = {op: metrics.storage_calls.labels(op) for op in OPERATIONS}
        self.errors = {op: metrics.storage_errors.labels(op) for op in OPERATIONS}
        self.batch = metrics.batch

    async def call(self, op: str, fn: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            return await fn()
        except _ANSWERS:
            raise
        except Exception:
            self.batch.count(self.errors[op])
            raise
        finally:
            self.batch.observe(self.durations[op], time.perf_counter() - started)

    async def stream(self, op: str, source: AsyncIterator[T]) -> AsyncIterator[T]:
        started = time.perf_counter()
        try:
            async for item in source:
                yield item
        except _ANSWERS:
            raise
        except Exception:
            self.batch.count(self.errors[op])
            raise
        finally:
            self.batch.observe(self.durations[op], time.perf_counter() - started)
            # Close the driver's stream now, not when it is garbage-collected.
            closer = getattr(source, "aclose", None)
            if closer is not None:
                await closer()


class _TimedWriter:
    def __init__(self, writer: UploadWriter, timer: _Timer) -> None:
        self._writer = writer
        self._timer = timer

    async def write(self, data: bytes) -> None:
        await self._timer.call("write", lambda: self._writer.write(data))

    async def close(self) -> DriverState:
        return await self._timer.call("close_writer", self._writer.close)

    async def abort(self) -> None:
        await self._timer.call("abort_writer", self._writer.abort)


class TimedStore:
    """``BlobStore`` around another, measured."""

    def __init__(self, inner: BlobStore, metrics: RegistryMetrics) -> None:
        self.inner = inner
        self.name = inner.name
        self._timer = _Timer(metrics)

    async def stat(self, digest: str) -> int | None:
        return await self._timer.call("stat", lambda: self.inner.stat(digest))

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        return self._timer.stream("read", self.inner.read(digest, offset, length))

    async def delete(self, digest: str) -> bool:
        return await self._timer.call("delete", lambda: self.inner.delete(digest))

    def list_blobs(self) -> AsyncIterator[str]:
        return self._timer.stream("list_blobs", self.inner.list_blobs())

    def list_blob_details(self) -> AsyncIterator[StoredBlob]:
        return self._timer.stream("list_blobs", self.inner.list_blob_details())

    async def create_upload(self, upload_id: str) -> DriverState:
        return await self._timer.call("create_upload", lambda: self.inner.create_upload(upload_id))

    async def open_writer(self, upload_id: str, offset: int, state: DriverState) -> UploadWriter:
        writer = await self._timer.call(
            "open_writer", lambda: self.inner.open_writer(upload_id, offset, state)
        )
        return _TimedWriter(writer, self._timer)

    def read_upload(self, upload_id: str, state: DriverState, length: int) -> AsyncIterator[bytes]:
        return self._timer.stream("read_upload", self.inner.read_upload(upload_id, state, length))

    async def commit_upload(
        self, upload_id: str, state: DriverState, size: int, digest: str
    ) -> None:
        await self._timer.call(
            "commit_upload", lambda: self.inner.commit_upload(upload_id, state, size, digest)
        )

    async def delete_upload(self, upload_id: str, state: DriverState) -> None:
        await self._timer.call("delete_upload", lambda: self.inner.delete_upload(upload_id, state))

    def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        return self._timer.stream("list_uploads", self.inner.list_uploads())

    async def presigned_url(self, digest: str, method: str = "GET") -> str | None:
        return await self._timer.call(
            "presigned_url", lambda: self.inner.presigned_url(digest, method)
        )

    def local_path(self, digest: str) -> str | None:
        return self.inner.local_path(digest)

    async def check(self) -> None:
        await self._timer.call("check", self.inner.check)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:  # a driver's own extras (tests, tools)
        return getattr(self.inner, name)
