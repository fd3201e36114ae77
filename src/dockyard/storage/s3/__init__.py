"""The S3 storage driver (store.py: layout and commit; writer.py: uploads and their
saved state; client.py: botocore in worker threads, retries, errors)."""

from dockyard.storage.s3.store import S3Store

__all__ = ["S3Store"]
