"""The s3 driver against a real SeaweedFS S3 gateway (tests/seaweed.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from dockyard.config.model import S3Settings
from dockyard.storage.base import BlobStore
from dockyard.storage.s3 import S3Store
from tests.seaweed import SeaweedServer
from tests.storage_conformance import MiB, StorageConformance


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedServer]:
    server = SeaweedServer().start()
    try:
        yield server
    finally:
        server.stop()


def s3_settings(seaweed: SeaweedServer, bucket: str, **overrides: Any) -> S3Settings:
    settings = S3Settings(
        bucket=bucket,
        endpoint=seaweed.endpoint,
        region=seaweed.region,
        access_key=seaweed.access_key,
        secret_key=seaweed.secret_key,
        path_style=True,
    )
    for key, value in overrides.items():
        setattr(settings, key, value)
    return settings


def bucket_contents(seaweed: SeaweedServer, bucket: str) -> tuple[list[str], list[str]]:
    """(every object key, every incomplete multipart upload's key) in the bucket."""
    client = seaweed.client()
    keys: list[str] = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys += [item["Key"] for item in page.get("Contents", [])]
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return keys, [upload["Key"] for upload in uploads]


class TestS3Store(StorageConformance):
    @pytest.fixture
    def bucket(self, seaweed: SeaweedServer) -> str:
        return seaweed.new_bucket()

    @pytest.fixture
    async def store(self, seaweed: SeaweedServer, bucket: str) -> AsyncIterator[BlobStore]:
        # The smallest part size: multipart commits and their boundaries at small sizes.
        s = S3Store(s3_settings(seaweed, bucket, prefix="registry/", part_size=5 * MiB))
        s.test_seaweed, s.test_bucket = seaweed, bucket  # type: ignore[attr-defined]
        yield s
        await s.aclose()

    async def reopen(self, store: BlobStore) -> BlobStore:
        seaweed: SeaweedServer = store.test_seaweed  # type: ignore[attr-defined]
        bucket: str = store.test_bucket  # type: ignore[attr-defined]
        return S3Store(s3_settings(seaweed, bucket, prefix="registry/", part_size=5 * MiB))

    def assert_contained(self, store: BlobStore) -> None:
        seaweed: SeaweedServer = store.test_seaweed  # type: ignore[attr-defined]
        bucket: str = store.test_bucket  # type: ignore[attr-defined]
        keys, uploads = bucket_contents(seaweed, bucket)
        assert [key for key in keys + uploads if not key.startswith("registry/")] == []

    async def assert_empty(self, store: BlobStore) -> None:
        await super().assert_empty(store)
        seaweed: SeaweedServer = store.test_seaweed  # type: ignore[attr-defined]
        bucket: str = store.test_bucket  # type: ignore[attr-defined]
        assert bucket_contents(seaweed, bucket) == ([], [])
