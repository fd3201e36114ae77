"""Blobs on a local filesystem.

Layout under ``root``::

    blobs/<algorithm>/<first 2 of encoded>/<encoded>   committed blobs, immutable
    uploads/<upload id>                                  in-progress upload bytes

Commit is ``fsync(upload)``, ``link(upload, blob)``, ``unlink(upload)``, ``fsync(dir)``:
the blob path appears only once its bytes are durable, and ``link`` fails on an existing
blob, which is how a second upload of the same digest dedupes instead of overwriting.
A crash between ``link`` and ``unlink`` leaves an upload file that is also the blob (two
links): a writer continuing that upload first replaces it by a private copy
(``uploads/<upload id>.copy``, renamed over it), so a blob never changes.

Chunk writes and reads happen inline on the event loop: a page-cache write of one body
chunk costs less than the hop to a worker thread and back; fsync (which waits on the
disk) and directory walks go to a thread.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from dockyard.storage.base import (
    READ_CHUNK,
    BlobNotFound,
    DriverState,
    StorageError,
    StoredBlob,
    UploadNotFound,
)


def _fsync_path(path: str, directory: bool = False) -> None:
    fd = os.open(path, (os.O_RDONLY | os.O_DIRECTORY) if directory else os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_copy(path: str, length: int) -> None:
    """Replace ``path`` by a new file (inode) holding its first ``length`` bytes."""
    temporary = f"{path}.copy"
    source = os.open(path, os.O_RDONLY)
    try:
        target = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
        try:
            copied = 0
            while copied < length:
                chunk = os.pread(source, min(READ_CHUNK, length - copied), copied)
                if not chunk:
                    break  # shorter than length: FilesystemWriter reports it
                view = memoryview(chunk)
                while view:
                    view = view[os.write(target, view) :]
                copied += len(chunk)
        finally:
            os.close(target)
        os.replace(temporary, path)
    finally:
        os.close(source)


class FilesystemWriter:
    def __init__(self, path: str, offset: int) -> None:
        self._path = path
        self._offset = offset
        try:
            self._fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            raise UploadNotFound(path) from None
        size = os.fstat(self._fd).st_size
        if size < offset:
            os.close(self._fd)
            raise StorageError(f"upload {path} holds fewer than {offset} bytes")
        if size > offset:
            # Anything past offset was written by a request that did not finish: drop it.
            # Only then: ext4 flushes a file on close() after it was truncated to zero
            # (auto_da_alloc), which cost 0.5 s per GiB uploaded when done every time.
            os.ftruncate(self._fd, offset)
        os.lseek(self._fd, offset, os.SEEK_SET)

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self._fd, view)
            view = view[n:]

    async def close(self) -> DriverState:
        os.close(self._fd)
        return {}

    async def abort(self) -> None:
        os.ftruncate(self._fd, self._offset)
        os.close(self._fd)


class FilesystemStore:
    name = "filesystem"

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"
        self._uploads = self.root / "uploads"
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._uploads.mkdir(parents=True, exist_ok=True)

    def _blob_path(self, digest: str) -> str:
        algorithm, _, encoded = digest.partition(":")
        # Each part becomes one path component: ASCII only (digests are), no separators,
        # dots, NULs or over-long names (those escape the layout or raise OSError/ValueError).
        if (
            not algorithm
            or not encoded
            or len(digest) > 255
            or not digest.isascii()
            or any(c in digest for c in "/.\0")
        ):
            raise BlobNotFound(digest)
        return str(self._blobs / algorithm / encoded[:2] / encoded)

    def _upload_path(self, upload_id: str) -> str:
        if (
            not upload_id
            or len(upload_id) > 255
            or not upload_id.isascii()
            or "/" in upload_id
            or "\0" in upload_id
            or upload_id.startswith(".")
        ):
            raise UploadNotFound(upload_id)
        return str(self._uploads / upload_id)

    async def stat(self, digest: str) -> int | None:
        try:
            return os.stat(self._blob_path(digest)).st_size
        except (FileNotFoundError, BlobNotFound):
            return None

    async def read(
        self, digest: str, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[bytes]:
        try:
            fd = os.open(self._blob_path(digest), os.O_RDONLY)
        except FileNotFoundError:
            raise BlobNotFound(digest) from None
        try:
            remaining = os.fstat(fd).st_size - offset if length is None else length
            while remaining > 0:
                chunk = os.pread(fd, min(READ_CHUNK, remaining), offset)
                if not chunk:
                    raise StorageError(f"{digest} is shorter than expected")
                offset += len(chunk)
                remaining -= len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def delete(self, digest: str) -> bool:
        try:
            os.unlink(self._blob_path(digest))
        except (FileNotFoundError, BlobNotFound):
            return False
        return True

    async def list_blobs(self) -> AsyncIterator[str]:
        def walk() -> list[str]:
            found = []
            for algorithm in os.listdir(self._blobs):
                for prefix in os.listdir(self._blobs / algorithm):
                    for encoded in os.listdir(self._blobs / algorithm / prefix):
                        found.append(f"{algorithm}:{encoded}")
            return found

        for digest in await anyio.to_thread.run_sync(walk):
            yield digest

    async def list_blob_details(self) -> AsyncIterator[StoredBlob]:
        async for digest in self.list_blobs():
            try:
                found = os.stat(self._blob_path(digest))
            except (FileNotFoundError, BlobNotFound):
                continue  # deleted since the listing, or not a digest
            yield StoredBlob(digest, found.st_size, found.st_mtime)

    async def create_upload(self, upload_id: str) -> DriverState:
        try:
            fd = os.open(self._upload_path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            raise StorageError(f"upload {upload_id} already exists") from None
        os.close(fd)
        return {}

    async def open_writer(
        self, upload_id: str, offset: int, state: DriverState
    ) -> FilesystemWriter:
        path = self._upload_path(upload_id)
        try:
            shared = os.stat(path).st_nlink > 1
        except FileNotFoundError:
            shared = False  # the writer reports it
        if shared:
            # A commit died between link() and unlink(): this file is also a stored blob,
            # which must never change. Continue on a private copy of the saved bytes.
            await anyio.to_thread.run_sync(_private_copy, path, offset)
        return FilesystemWriter(path, offset)

    async def read_upload(
        self, upload_id: str, state: DriverState, length: int
    ) -> AsyncIterator[bytes]:
        try:
            fd = os.open(self._upload_path(upload_id), os.O_RDONLY)
        except FileNotFoundError:
            raise UploadNotFound(upload_id) from None
        try:
            offset = 0
            while offset < length:
                chunk = os.pread(fd, min(READ_CHUNK, length - offset), offset)
                if not chunk:
                    raise StorageError(f"upload {upload_id} is shorter than expected")
                offset += len(chunk)
                yield chunk
        finally:
            os.close(fd)

    async def commit_upload(
        self, upload_id: str, state: DriverState, size: int, digest: str
    ) -> None:
        source = self._upload_path(upload_id)
        target = self._blob_path(digest)

        def commit() -> None:
            try:
                actual = os.stat(source).st_size
            except FileNotFoundError:
                raise UploadNotFound(upload_id) from None
            if actual != size:
                raise StorageError(f"upload {upload_id} holds {actual} bytes, expected {size}")
            _fsync_path(source)
            parent = os.path.dirname(target)
            os.makedirs(parent, exist_ok=True)
            try:
                os.link(source, target)
            except FileExistsError:
                pass  # already stored: keep the existing copy (dedupe)
            except OSError as e:
                raise StorageError(f"cannot commit {digest}: {e}") from e
            else:
                _fsync_path(parent, directory=True)
            os.unlink(source)

        await anyio.to_thread.run_sync(commit)

    async def delete_upload(self, upload_id: str, state: DriverState) -> None:
        try:
            os.unlink(self._upload_path(upload_id))
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise StorageError(str(e)) from e

    async def list_uploads(self) -> AsyncIterator[tuple[str, float]]:
        def scan() -> list[tuple[str, float]]:
            out = []
            try:
                with os.scandir(self._uploads) as it:
                    for entry in it:
                        try:
                            out.append((entry.name, entry.stat().st_mtime))
                        except FileNotFoundError:
                            continue
            except OSError as e:  # the data directory is gone (unmounted, say)
                raise StorageError(f"cannot list uploads: {e}") from e
            return out

        for item in await anyio.to_thread.run_sync(scan):
            yield item

    async def presigned_url(self, digest: str, method: str = "GET") -> str | None:
        return None

    def local_path(self, digest: str) -> str | None:
        try:
            path = self._blob_path(digest)
        except StorageError:  # not a digest this store could hold
            return None
        return path if os.path.isfile(path) else None

    async def check(self) -> None:
        # Both directories, as a removed or unmounted data directory makes every push fail.
        def look() -> None:
            for directory in (self._blobs, self._uploads):
                if not os.path.isdir(directory) or not os.access(directory, os.W_OK):
                    raise StorageError(f"{directory} is not a writable directory")

        await anyio.to_thread.run_sync(look)

    async def aclose(self) -> None:
        return None
