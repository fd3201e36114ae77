"""The core's parts behind the Registry facade: the one body loop, the upload counters."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest

import dockyard.core.uploads
from dockyard.core.registry import Registry, RequestInfo
from dockyard.core.stream import receive
from dockyard.core.uploads import UploadStatistics
from dockyard.services import Services
from tests.conftest import chunks, digest_of


async def test_the_facade_binds_the_parts_methods(services: Services) -> None:
    # No wrapper coroutine between the HTTP layer and the part (hot paths stay as cheap).
    r = services.registry
    assert r.get_manifest == r.manifests.get_manifest
    assert r.blob_size == r.blobs.blob_size
    assert r.write_chunk == r.uploads.write_chunk
    assert isinstance(r, Registry)


async def test_every_body_goes_through_the_one_loop(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int | None] = []

    def counting(*args: Any, **kwargs: Any) -> Awaitable[Any]:
        calls.append(args[2])  # expected
        return receive(*args, **kwargs)

    monkeypatch.setattr(dockyard.core.uploads, "receive", counting)
    r, ctx = services.registry, RequestInfo()
    whole = b"whole blob"
    assert await r.put_blob(ctx, "r", digest_of(whole), chunks(whole), len(whole)) == digest_of(
        whole
    )
    upload = await r.start_upload("r")
    await r.write_chunk("r", upload.id, chunks(b"ab", b"c"), 0, 3)
    await r.finish_upload(ctx, "r", upload.id, digest_of(b"abcd"), chunks(b"d"), 3, None)
    assert calls == [len(whole), 3, None]
    assert await r.blob_size("r", digest_of(b"abcd")) == 4


async def test_evicted_blake3_hashers_are_counted(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    # blake3 cannot save its state: the hasher stays in memory for the next chunk, up to
    # LIVE_HASHERS of them; one evicted is counted, and its upload re-hashes stored bytes.
    monkeypatch.setattr(dockyard.core.uploads, "LIVE_HASHERS", 1)
    r = services.registry
    first = await r.start_upload("r", "blake3")
    second = await r.start_upload("r", "blake3")
    await r.write_chunk("r", first.id, chunks(b"one"))
    assert r.uploads.statistics() == UploadStatistics(live_hashers=1, hashers_dropped=0)
    await r.write_chunk("r", second.id, chunks(b"two"))
    assert r.uploads.statistics() == UploadStatistics(live_hashers=1, hashers_dropped=1)
    digest = digest_of(b"one!", "blake3")
    assert await r.finish_upload(RequestInfo(), "r", first.id, digest, chunks(b"!")) == digest
