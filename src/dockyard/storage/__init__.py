"""Blob storage drivers behind one small interface (see ``base``)."""

from dockyard.storage.base import (
    BlobNotFound,
    BlobStore,
    DriverState,
    StorageError,
    UploadNotFound,
    UploadWriter,
)

__all__ = [
    "BlobNotFound",
    "BlobStore",
    "DriverState",
    "StorageError",
    "UploadNotFound",
    "UploadWriter",
]
