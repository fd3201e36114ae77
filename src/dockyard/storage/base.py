"""The storage driver interface: blob bytes by digest, and in-progress uploads.

Contract (checked by ``tests/storage_conformance.py`` for every driver):

- A committed blob is immutable and addressed only by its digest. ``commit_upload`` is
  atomic: readers see either no blob or the whole blob, never a part of it. Committing a
  digest that is already stored keeps the stored copy and drops the upload (dedupe).
- An upload is private scratch space named by an id. ``open_writer(id, offset, state)``
  continues it at ``offset``, discarding anything a crashed writer left past it; the
  writer's ``close`` returns the driver state to save with the upload session (object
  stores keep multipart ids and part tags there; the filesystem needs none).
- Asking for bytes that are not there is a ``StorageError``: reading a blob or an upload
  past its end, opening a writer at an offset beyond what the upload holds, creating an
  upload whose id exists.
- Nothing here knows repositories, manifests or SQL: which blob a repository may serve
  is metadata.

Errors::

    StorageError          the backend failed (I/O error, unreachable service)
    +-- BlobNotFound      no committed blob with that digest
    +-- UploadNotFound    no upload with that id
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

DriverState = dict[str, Any]
# Downloads are read and sent 1 MiB at a time: few enough reads and ASGI messages per
# blob that their per-call cost is small, little enough memory per download in flight.
READ_CHUNK = 1024 * 1024


class StorageError(Exception):
    """The storage backend failed."""


class BlobNotFound(StorageError):
    """No committed blob with that digest."""


class UploadNotFound(StorageError):
    """No upload with that id."""


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """A committed blob as a listing sees it."""

    digest: str
    size: int
    modified: float  # seconds since the epoch: when its bytes were written


class UploadWriter(Protocol):
    async def write(self, data: bytes) -> None: ...

    async def close(self) -> DriverState:
        """Make what was written durable enough to continue from; return the new state."""
        ...

    async def abort(self) -> None:
        """Forget what this writer wrote (the upload continues from where it began)."""
        ...


class BlobStore(Protocol):
    name: str

    async def stat(self, digest: str) -> int | None:
        """The size of a committed blob, or None."""
        ...

    def read(self, digest: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """Stream a committed blob's bytes (raises BlobNotFound)."""
        ...

    async def delete(self, digest: str) -> bool:
        """Remove a committed blob; False if it was not there."""
        ...

    def list_blobs(self) -> AsyncIterator[str]:
        """Every committed digest (for garbage collection; may be slow)."""
        ...

    def list_blob_details(self) -> AsyncIterator[StoredBlob]:
        """Every committed blob with its size and write time, from the listing itself (no
        request per blob on object stores): the storage walk of garbage collection."""
        ...

    async def create_upload(self, upload_id: str) -> DriverState: ...

    async def open_writer(
        self, upload_id: str, offset: int, state: DriverState
    ) -> UploadWriter: ...

    def read_upload(self, upload_id: str, state: DriverState, length: int) -> AsyncIterator[bytes]:
        """The first ``length`` bytes of an upload (to re-hash when state was lost)."""
        ...

    async def commit_upload(
        self, upload_id: str, state: DriverState, size: int, digest: str
    ) -> None:
        """Atomically make the first ``size`` bytes of the upload the blob ``digest``."""
        ...

    async def delete_upload(self, upload_id: str, state: DriverState) -> None: ...

    def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        """(upload id, last modified unix time) of every upload (to purge stale ones)."""
        ...

    async def presigned_url(self, digest: str, method: str = "GET") -> str | None:
        """A URL a client may fetch the blob from directly, or None: not supported."""
        ...

    def local_path(self, digest: str) -> str | None:
        """The path of a stored blob's bytes on this machine's file system, for a local
        reader that may open it (never write it: scanners read layers in place); None
        when the driver keeps blobs elsewhere or the blob is not stored."""
        ...

    async def check(self) -> None:
        """Raise ``StorageError`` unless the backend answers now (``/readyz``: a balancer
        takes an instance whose store is unreachable out of rotation). Cheap: one round
        trip or one system call, no data written."""
        ...

    async def aclose(self) -> None: ...
