"""The pull-through cache in process (``cache/``) against a real upstream: Debian's
Distribution 2.8 (tests/distribution.py, one per module, its access log counting what
the cache asked), plus an ``http.server`` stub for the one answer no real registry gives
on demand (429). Each test runs its own dockyard with a controllable clock."""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from dockyard.config import UpstreamSettings
from dockyard.config.model import RetentionPolicy
from dockyard.core.common import EventMaker
from dockyard.core.gc import Collector
from dockyard.core.retention import DAY, Policies, Retention
from dockyard.services import Services
from dockyard.upstream.client import RegistryClient
from tests.conftest import (
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    assert_error,
    descriptor,
    digest_of,
    image_manifest,
    index_manifest,
    make_client,
    make_settings,
    open_services,
    wait_for_events,
)
from tests.distribution import Distribution
from tests.meta_conformance import T0, Clock
from tests.serverthread import ServerThread

TTL = 60.0


@pytest.fixture(scope="module")
def distribution(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Distribution]:
    with Distribution(tmp_path_factory.mktemp("distribution")) as d:
        yield d


@dataclass
class UpImage:
    repo: str
    digest: str
    payload: bytes
    blobs: dict[str, bytes]

    @property
    def layer(self) -> str:
        return list(self.blobs)[-1]


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def push_upstream(
    up: RegistryClient, repo: str, tag: str | None, layer_size: int = 200_000
) -> UpImage:
    """An image pushed to the upstream (random content): config and one layer."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": uuid.uuid4().hex}).encode()
    layer = os.urandom(layer_size)
    blobs = {digest_of(config): config, digest_of(layer): layer}
    for d, data in blobs.items():
        await up.push_blob(repo, d, len(data), functools.partial(_chunks, data))
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    digest = await up.put_manifest(repo, tag or digest_of(payload), payload, OCI_MANIFEST)
    return UpImage(repo, digest, payload, blobs)


@dataclass
class Cache:
    svc: Services
    client: httpx.AsyncClient
    clock: Clock

    def sample(self, name: str, **labels: str) -> float:
        assert self.svc.metrics is not None
        self.svc.metrics.batch.flush()
        return self.svc.metrics.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def open_cache(
    root: Path, url: str, tag_ttl: float = TTL, policies: list[RetentionPolicy] | None = None
) -> AsyncIterator[Cache]:
    settings = make_settings(root)
    settings.upstreams = [UpstreamSettings(url=url, name="hub", prefix="hub", tag_ttl=tag_ttl)]
    if policies:
        settings.retention.policies = policies
    clock = Clock()
    async with open_services(settings, clock) as svc, make_client(svc) as client:
        yield Cache(svc, client, clock)


@pytest.fixture
async def upstream(distribution: Distribution) -> AsyncIterator[RegistryClient]:
    async with RegistryClient(distribution.url) as client:
        yield client


@pytest.fixture
async def cache(tmp_path: Path, distribution: Distribution) -> AsyncIterator[Cache]:
    async with open_cache(tmp_path / "data", distribution.url) as c:
        yield c


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def test_manifest_by_tag_follows_the_upstream_after_the_ttl(
    cache: Cache, upstream: RegistryClient, distribution: Distribution
) -> None:
    repo = unique("lib/tagged")
    first = await push_upstream(upstream, repo, "v1")
    path = f"/v2/hub/{repo}/manifests/v1"
    r = await cache.client.get(path, headers={"accept": OCI_MANIFEST})
    assert r.status_code == 200, r.text
    assert r.content == first.payload
    assert r.headers["docker-content-digest"] == first.digest
    assert cache.svc.meta.cached_from(f"hub/{repo}", first.digest) == "hub"
    heads = distribution.count("HEAD", f"/{repo}/manifests/")
    gets = distribution.count("GET", f"/{repo}/manifests/")
    assert (heads, gets) == (1, 1)

    # Moved upstream: not seen before the TTL, seen after it.
    second = await push_upstream(upstream, repo, "v1")
    cache.clock.advance(TTL - 1)
    r = await cache.client.get(path)
    assert r.headers["docker-content-digest"] == first.digest
    assert distribution.count("HEAD", f"/{repo}/manifests/") == heads
    cache.clock.advance(2)
    r = await cache.client.get(path)
    assert r.status_code == 200 and r.content == second.payload
    assert distribution.count("HEAD", f"/{repo}/manifests/") == heads + 1
    assert distribution.count("GET", f"/{repo}/manifests/") == gets + 1
    # Past the TTL again, unchanged upstream: one HEAD, no GET (rate limits spared).
    cache.clock.advance(TTL + 1)
    r = await cache.client.head(path)
    assert r.status_code == 200 and r.headers["docker-content-digest"] == second.digest
    assert distribution.count("HEAD", f"/{repo}/manifests/") == heads + 2
    assert distribution.count("GET", f"/{repo}/manifests/") == gets + 1
    assert (
        cache.sample(
            "dockyard_cache_requests_total", upstream="hub", kind="manifest", result="fill"
        )
        == 2
    )
    # The pulls that filled the cache say so in their events; the others are plain.
    pulls = [e for e in await wait_for_events(cache.svc, 0, 3) if e.action == "pull"]
    targets = [e.body["target"] for e in pulls]
    assert [(t.get("cache"), t.get("upstream")) for t in targets] == [
        ("fill", "hub"),
        (None, None),
        ("fill", "hub"),
    ]


async def test_blobs_are_filled_once_then_served_here(
    cache: Cache, upstream: RegistryClient, distribution: Distribution
) -> None:
    repo = unique("lib/blobs")
    image = await push_upstream(upstream, repo, "v1", layer_size=3 * 1024 * 1024 + 5)
    layer = image.layer
    path = f"/v2/hub/{repo}/blobs/{layer}"
    # HEAD of a missing blob asks the upstream with a HEAD, fetches nothing.
    r = await cache.client.head(path)
    assert r.status_code == 200 and r.headers["content-length"] == str(len(image.blobs[layer]))
    assert distribution.count("GET", layer) == 0
    assert cache.svc.meta.linked_blob_size(f"hub/{repo}", layer) is None
    r = await cache.client.get(path)
    assert r.status_code == 200 and r.content == image.blobs[layer]
    assert cache.svc.meta.cached_from(f"hub/{repo}", layer) == "hub"
    assert await cache.svc.storage.stat(layer) == len(image.blobs[layer])
    r = await cache.client.get(path)
    assert r.content == image.blobs[layer]
    assert distribution.count("GET", layer) == 1
    # A ranged GET of a missing blob: filled whole, then the range served.
    config = next(iter(image.blobs))
    r = await cache.client.get(f"/v2/hub/{repo}/blobs/{config}", headers={"range": "bytes=2-9"})
    assert r.status_code == 206 and r.content == image.blobs[config][2:10]
    assert cache.svc.meta.linked_blob_size(f"hub/{repo}", config) == len(image.blobs[config])
    assert cache.sample("dockyard_cache_fetched_bytes_total", upstream="hub") == sum(
        len(b) for b in image.blobs.values()
    )
    # No fill lease rows are left behind.
    assert not cache.svc.meta.job_forget(f"fill:{layer}", "nobody/1")


async def test_by_digest_and_index_children(cache: Cache, upstream: RegistryClient) -> None:
    repo = unique("lib/multi")
    amd = await push_upstream(upstream, repo, None)
    arm = await push_upstream(upstream, repo, None)
    index = index_manifest(
        [descriptor(OCI_MANIFEST, amd.payload), descriptor(OCI_MANIFEST, arm.payload)]
    )
    await upstream.put_manifest(repo, "multi", index, OCI_INDEX)
    r = await cache.client.get(f"/v2/hub/{repo}/manifests/multi", headers={"accept": OCI_INDEX})
    assert r.status_code == 200 and r.content == index
    # The children are not stored with the index (sparse), and come when asked for.
    assert cache.svc.meta.get_manifest(f"hub/{repo}", amd.digest) is None
    r = await cache.client.get(f"/v2/hub/{repo}/manifests/{arm.digest}")
    assert r.status_code == 200 and r.content == arm.payload
    assert cache.svc.meta.cached_from(f"hub/{repo}", arm.digest) == "hub"


async def test_upstream_404_and_pushes_refused(cache: Cache, upstream: RegistryClient) -> None:
    repo = unique("lib/missing")
    r = await cache.client.get(f"/v2/hub/{repo}/manifests/latest")
    assert_error(r, 404, "MANIFEST_UNKNOWN")
    r = await cache.client.get(f"/v2/hub/{repo}/blobs/{digest_of(b'nothing')}")
    assert_error(r, 404, "BLOB_UNKNOWN")
    r = await cache.client.post(f"/v2/hub/{repo}/blobs/uploads/")
    body = assert_error(r, 403, "DENIED")
    assert "hub" in json.dumps(body)
    payload = image_manifest(descriptor(OCI_CONFIG, b"{}"), [])
    r = await cache.client.put(
        f"/v2/hub/{repo}/manifests/v1", content=payload, headers={"content-type": OCI_MANIFEST}
    )
    assert_error(r, 403, "DENIED")
    # Other repositories take pushes as ever.
    r = await cache.client.post("/v2/local/app/blobs/uploads/")
    assert r.status_code == 202


async def test_corrupt_upstream_blob_is_not_stored(
    cache: Cache, upstream: RegistryClient, distribution: Distribution
) -> None:
    repo = unique("lib/corrupt")
    image = await push_upstream(upstream, repo, "v1", layer_size=2 * 1024 * 1024)
    layer = image.layer
    good = image.blobs[layer]
    stored = distribution.blob_path(layer)
    stored.write_bytes(bytes(len(good)))  # same size, other bytes
    with pytest.raises(Exception):  # noqa: B017 (the response is cut short)
        r = await cache.client.get(f"/v2/hub/{repo}/blobs/{layer}")
        assert r.content != good
    assert cache.svc.meta.linked_blob_size(f"hub/{repo}", layer) is None
    assert await cache.svc.storage.stat(layer) is None
    assert [u async for u in cache.svc.storage.list_uploads()] == []
    assert cache.sample("dockyard_cache_upstream_errors_total", upstream="hub", reason="corrupt")
    stored.write_bytes(good)
    r = await cache.client.get(f"/v2/hub/{repo}/blobs/{layer}")
    assert r.status_code == 200 and r.content == good


async def test_upstream_down_serves_what_is_cached(tmp_path: Path) -> None:
    with Distribution(tmp_path / "upstream") as d:
        async with RegistryClient(d.url) as up:
            image = await push_upstream(up, "lib/app", "v1")
        async with open_cache(tmp_path / "data", d.url, tag_ttl=0) as cache:
            r = await cache.client.get("/v2/hub/lib/app/manifests/v1")
            assert r.status_code == 200
            for blob in image.blobs:
                assert (await cache.client.get(f"/v2/hub/lib/app/blobs/{blob}")).status_code == 200
            d.stop()
            r = await cache.client.get("/v2/hub/lib/app/manifests/v1")  # past its TTL (0)
            assert r.status_code == 200 and r.content == image.payload
            r = await cache.client.get(f"/v2/hub/lib/app/blobs/{image.layer}")
            assert r.content == image.blobs[image.layer]
            assert (
                cache.sample(
                    "dockyard_cache_requests_total", upstream="hub", kind="manifest", result="stale"
                )
                == 1
            )
            # Nothing cached: a clear error.
            r = await cache.client.get("/v2/hub/lib/other/manifests/v1")
            assert r.status_code == 503
            # Distribution's code for it (not one of the spec's, which assert_error checks).
            assert r.json()["errors"][0]["code"] == "UNAVAILABLE"
            assert "upstream hub" in r.json()["errors"][0]["message"]


class TooMany(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(429)
        self.send_header("retry-after", "0")
        self.send_header("content-length", "0")
        self.end_headers()

    do_HEAD = do_GET

    def log_message(self, format: str, *args: object) -> None:
        pass


async def test_upstream_429_is_passed_on(tmp_path: Path) -> None:
    with ServerThread(TooMany) as stub:
        url = f"http://127.0.0.1:{stub.port}"
        async with open_cache(tmp_path / "data", url) as cache:
            r = await cache.client.get("/v2/hub/lib/app/manifests/v1")
            assert_error(r, 429, "TOOMANYREQUESTS")
            assert r.headers["retry-after"] == "1"
            assert cache.sample(
                "dockyard_cache_upstream_errors_total", upstream="hub", reason="throttled"
            )


async def test_containerd_ns_is_mapped_to_the_prefix(
    cache: Cache, upstream: RegistryClient, distribution: Distribution
) -> None:
    repo = unique("library/alpine")
    image = await push_upstream(upstream, repo, "latest")
    r = await cache.client.get(f"/v2/{repo}/manifests/latest", params={"ns": distribution.host})
    assert r.status_code == 200 and r.content == image.payload
    r = await cache.client.get(f"/v2/{repo}/blobs/{image.layer}", params={"ns": distribution.host})
    assert r.status_code == 200 and r.content == image.blobs[image.layer]
    assert cache.svc.meta.linked_blob_size(f"hub/{repo}", image.layer) is not None
    # An unknown namespace: the name as it is (here, nothing).
    r = await cache.client.get(f"/v2/{repo}/manifests/latest", params={"ns": "quay.io"})
    assert_error(r, 404, "NAME_UNKNOWN")


async def test_retention_and_gc_evict_cached_images(
    tmp_path: Path, distribution: Distribution, upstream: RegistryClient
) -> None:
    repo = unique("lib/old")
    image = await push_upstream(upstream, repo, "v1")
    # Untagged manifests are kept unless the policy says otherwise (core/gcplan.py).
    policies = [
        RetentionPolicy(repositories=["hub/*"], delete_unpulled_days=30, delete_untagged_days=1)
    ]
    async with open_cache(tmp_path / "data", distribution.url, policies=policies) as cache:
        local = f"hub/{repo}"
        r = await cache.client.get(f"/v2/{local}/manifests/v1")
        assert r.status_code == 200
        for blob in image.blobs:
            assert (await cache.client.get(f"/v2/{local}/blobs/{blob}")).status_code == 200
        await wait_for_events(cache.svc, 0, 3)
        svc = cache.svc
        gc = Collector(
            svc.db,
            svc.storage,
            EventMaker("test", cache.clock),
            svc.settings.gc,
            policies,
            instance="test",
            clock=cache.clock,
        )
        # While tagged, the collector keeps the cached manifest's blobs.
        cache.clock.advance(svc.settings.gc.grace_period + 10)
        await gc.run()
        assert [await svc.storage.stat(b) for b in image.blobs] == [
            len(b) for b in image.blobs.values()
        ]
        cache.clock.now = T0 + 31 * DAY
        retention = Retention(svc.db, Policies(policies), "test", cache.clock)
        report = await retention.run(False)
        assert [(i.repository, i.tag) for i in report.items] == [(local, "v1")]
        cache.clock.advance(2 * DAY)
        await gc.run()
        assert [await svc.storage.stat(b) for b in image.blobs] == [None, None]
        assert svc.meta.get_manifest(local, image.digest) is None
