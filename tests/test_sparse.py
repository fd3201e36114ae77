"""Sparse image manifests (``[manifests] require_layers = false``) over HTTP and in the
store, on SQLite and PostgreSQL: refused by default; accepted with the setting; a present
blob must still have the stated size; a missing layer is a clean 404; garbage collection
keeps a tagged sparse manifest, takes it once untagged per policy and never trips on its
missing blobs; referrers and indexes of sparse manifests work; the in-transaction race
check with the collector still covers the blobs that are linked."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pytest

from dockyard.config import Settings
from dockyard.config.model import RetentionPolicy
from dockyard.core.common import EventMaker
from dockyard.core.gc import Collector, GcReport
from dockyard.meta.gcrecords import Doomed
from dockyard.meta.records import Event
from dockyard.services import Services
from tests.conftest import (
    OCI_CONFIG,
    OCI_EMPTY,
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
    push_blob,
    put_manifest,
    random_blob,
    sqlite_and_postgres,
)

T0 = time.time()
GRACE = 3600.0
DAY = 86400.0
SBOM = "application/vnd.example.sbom.v1"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on a real PostgreSQL."""
    return sqlite_and_postgres(request)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Env:
    svc: Services
    client: httpx.AsyncClient
    clock: Clock
    settings: Settings

    async def collect(self, policies: list[RetentionPolicy] | None = None) -> GcReport:
        collector = Collector(
            self.svc.db,
            self.svc.storage,
            EventMaker("test", self.clock),
            replace(self.settings.gc, grace_period=GRACE),
            policies or [],
            instance="test",
            clock=self.clock,
        )
        return await collector.run(False)


async def _environment(settings: Settings) -> AsyncIterator[Env]:
    clock = Clock()
    async with open_services(settings, clock=clock) as svc, make_client(svc) as client:
        yield Env(svc, client, clock, settings)


def _settings(root: Path, database_url: str, require_layers: bool) -> Settings:
    env = {"DOCKYARD_MANIFESTS_REQUIRE_LAYERS": "true" if require_layers else "false"}
    if database_url:
        env["DOCKYARD_DATABASE_URL"] = database_url
    return make_settings(root, **env)


@pytest.fixture
async def sparse(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    """A registry that accepts sparse image manifests."""
    async for env in _environment(_settings(tmp_path / "data", database_url, False)):
        yield env


@pytest.fixture
async def strict(tmp_path: Path, database_url: str) -> AsyncIterator[Env]:
    """A registry with the default setting."""
    async for env in _environment(_settings(tmp_path / "data", database_url, True)):
        yield env


@dataclass
class SparseImage:
    payload: bytes
    digest: str
    config: bytes
    present: bytes  # a layer pushed before the manifest
    missing: bytes  # a layer never pushed


async def push_sparse(
    client: httpx.AsyncClient, repo: str, tag: str | None, *, push_config: bool = True
) -> SparseImage:
    """An image whose second layer (and, unless ``push_config``, config) was never pushed."""
    config = json.dumps({"architecture": "amd64", "os": "linux", "n": random_blob(8).hex()})
    config_bytes = config.encode()
    present, missing = random_blob(700), random_blob(900)
    if push_config:
        await push_blob(client, repo, config_bytes)
    await push_blob(client, repo, present)
    payload = image_manifest(
        descriptor(OCI_CONFIG, config_bytes),
        [descriptor(OCI_LAYER, present), descriptor(OCI_LAYER, missing)],
    )
    digest = digest_of(payload)
    r = await put_manifest(client, repo, tag or digest, payload)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    return SparseImage(payload, digest, config_bytes, present, missing)


# -- the setting


async def test_a_manifest_with_a_missing_layer_is_refused_by_default(strict: Env) -> None:
    present, missing = random_blob(), random_blob()
    config = b'{"os": "linux"}'
    await push_blob(strict.client, "app", config)
    await push_blob(strict.client, "app", present)
    payload = image_manifest(
        descriptor(OCI_CONFIG, config),
        [descriptor(OCI_LAYER, present), descriptor(OCI_LAYER, missing)],
    )
    r = await put_manifest(strict.client, "app", "v1", payload)
    error = assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert error["detail"] == {"digest": digest_of(missing)}
    assert_error(await strict.client.get("/v2/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_a_sparse_manifest_is_accepted_and_served(sparse: Env) -> None:
    image = await push_sparse(sparse.client, "app", "v1", push_config=False)
    r = await sparse.client.get("/v2/app/manifests/v1", headers={"accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.content == image.payload
    assert r.headers["docker-content-digest"] == image.digest
    r = await sparse.client.head("/v2/app/manifests/v1", headers={"accept": OCI_MANIFEST})
    assert r.status_code == 200 and r.headers["docker-content-digest"] == image.digest
    # What is there is served; what is not is a clean BLOB_UNKNOWN (GET and HEAD).
    r = await sparse.client.get(f"/v2/app/blobs/{digest_of(image.present)}")
    assert r.status_code == 200 and r.content == image.present
    for blob in (image.missing, image.config):
        url = f"/v2/app/blobs/{digest_of(blob)}"
        assert_error(await sparse.client.get(url), 404, "BLOB_UNKNOWN")
        r = await sparse.client.head(url)
        assert r.status_code == 404 and r.content == b""
    # The missing layer pushed later is served like any other.
    await push_blob(sparse.client, "app", image.missing)
    r = await sparse.client.get(f"/v2/app/blobs/{digest_of(image.missing)}")
    assert r.status_code == 200 and r.content == image.missing


async def test_a_present_blob_must_still_have_the_stated_size(sparse: Env) -> None:
    config, layer = b'{"os": "linux"}', random_blob(600)
    await push_blob(sparse.client, "app", config)
    await push_blob(sparse.client, "app", layer)
    wrong = {**descriptor(OCI_LAYER, layer), "size": len(layer) + 1}
    payload = image_manifest(
        descriptor(OCI_CONFIG, config), [wrong, descriptor(OCI_LAYER, random_blob())]
    )
    r = await put_manifest(sparse.client, "app", "v1", payload)
    assert_error(r, 400, "MANIFEST_INVALID")
    assert_error(await sparse.client.get("/v2/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")
    r = await sparse.client.get(f"/v2/app/manifests/{digest_of(payload)}")
    assert_error(r, 404, "MANIFEST_UNKNOWN")


async def test_a_manifest_with_no_blob_at_all_is_accepted(sparse: Env) -> None:
    """Nothing linked, not even the repository: the push creates it."""
    payload = image_manifest(
        descriptor(OCI_CONFIG, b'{"os": "linux"}'), [descriptor(OCI_LAYER, random_blob())]
    )
    r = await put_manifest(sparse.client, "fresh/repo", "v1", payload)
    assert r.status_code == 201, r.text
    r = await sparse.client.get("/v2/fresh/repo/tags/list")
    assert r.status_code == 200 and r.json()["tags"] == ["v1"]


# -- referrers and indexes of sparse manifests


async def test_referrers_and_indexes_of_sparse_manifests(sparse: Env) -> None:
    amd = await push_sparse(sparse.client, "app", None)
    arm = await push_sparse(sparse.client, "app", None)
    index = index_manifest(
        [
            descriptor(
                OCI_MANIFEST, amd.payload, platform={"os": "linux", "architecture": "amd64"}
            ),
            descriptor(
                OCI_MANIFEST, arm.payload, platform={"os": "linux", "architecture": "arm64"}
            ),
        ]
    )
    r = await put_manifest(sparse.client, "app", "latest", index, OCI_INDEX)
    assert r.status_code == 201, r.text
    r = await sparse.client.get("/v2/app/manifests/latest", headers={"accept": OCI_INDEX})
    assert r.status_code == 200 and r.content == index
    # A stored child of the index must still have the stated size.
    bad = index_manifest([{**descriptor(OCI_MANIFEST, amd.payload), "size": 1}])
    assert_error(
        await put_manifest(sparse.client, "app", "bad", bad, OCI_INDEX), 400, "MANIFEST_INVALID"
    )
    # A referrer of a sparse manifest, itself with a missing (empty) config blob.
    sbom = image_manifest(
        descriptor(OCI_EMPTY, b"{}"),
        [descriptor("application/spdx+json", b'{"spdx": true}')],
        artifactType=SBOM,
        subject=descriptor(OCI_MANIFEST, amd.payload),
    )
    r = await put_manifest(sparse.client, "app", digest_of(sbom), sbom)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == amd.digest
    r = await sparse.client.get(f"/v2/app/referrers/{amd.digest}")
    assert r.status_code == 200
    assert [m["digest"] for m in r.json()["manifests"]] == [digest_of(sbom)]
    assert r.json()["manifests"][0]["artifactType"] == SBOM


# -- garbage collection


async def test_gc_keeps_a_tagged_sparse_manifest_and_takes_it_once_untagged(
    sparse: Env,
) -> None:
    image = await push_sparse(sparse.client, "app", "v1")
    policy = [RetentionPolicy(repositories=["*"], delete_untagged_days=1)]
    sparse.clock.now += 400 * DAY
    report = await sparse.collect(policy)
    assert (report.deleted_manifests, report.deleted_links, report.deleted_blobs) == (0, 0, 0)
    r = await sparse.client.get("/v2/app/manifests/v1")
    assert r.status_code == 200 and r.content == image.payload
    for blob in (image.present, image.config):
        r = await sparse.client.get(f"/v2/app/blobs/{digest_of(blob)}")
        assert r.status_code == 200 and r.content == blob
    # Untagged, then older than the policy: the manifest and its present blobs go; the
    # missing one was never there and trips nothing.
    r = await sparse.client.delete("/v2/app/manifests/v1")
    assert r.status_code == 202, r.text
    sparse.clock.now += 2 * DAY
    report = await sparse.collect(policy)
    assert report.deleted_manifests == 1
    assert (report.deleted_links, report.deleted_blobs) == (2, 2)
    assert {i["digest"] for i in report.items if i["kind"] == "blob"} == {
        digest_of(image.present),
        digest_of(image.config),
    }
    r = await sparse.client.get(f"/v2/app/manifests/{image.digest}")
    assert_error(r, 404, "MANIFEST_UNKNOWN")
    assert await sparse.svc.storage.stat(digest_of(image.present)) is None


async def test_gc_keeps_the_missing_layer_once_it_is_pushed(sparse: Env) -> None:
    image = await push_sparse(sparse.client, "app", "v1")
    await push_blob(sparse.client, "app", image.missing)
    sparse.clock.now += GRACE + 1
    report = await sparse.collect()
    assert (report.deleted_links, report.deleted_blobs) == (0, 0)
    r = await sparse.client.get(f"/v2/app/blobs/{digest_of(image.missing)}")
    assert r.status_code == 200 and r.content == image.missing


async def test_untagged_sparse_manifests_stay_without_a_policy(sparse: Env) -> None:
    image = await push_sparse(sparse.client, "app", None)
    sparse.clock.now += 400 * DAY
    report = await sparse.collect()
    assert (report.deleted_manifests, report.deleted_links, report.deleted_blobs) == (0, 0, 0)
    r = await sparse.client.get(f"/v2/app/manifests/{image.digest}")
    assert r.status_code == 200


# -- the store: the race check covers what is linked


async def test_a_present_blob_collected_during_a_sparse_push_refuses_it(sparse: Env) -> None:
    """The collector takes a linked layer between the push's check and its transaction:
    the store's refresh (``touch_references``) still sees it and refuses the push, rather
    than storing a manifest that relied on a link that is gone."""
    config, layer = b'{"os": "linux"}', random_blob(500)
    await push_blob(sparse.client, "app", config)
    await push_blob(sparse.client, "app", layer)
    sparse.clock.now += GRACE + 1
    meta = sparse.svc.meta
    original = meta.linked_blobs
    layer_digest = digest_of(layer)

    def check_then_collect(repository: str, digests: Sequence[str]) -> dict[str, int]:
        found = original(repository, digests)
        repo = meta.gc_repository("app")
        assert repo is not None
        doomed = Doomed(
            layer_digest, sparse.clock.now - GRACE, Event("delete", "app", layer_digest)
        )
        assert meta.gc_delete_links(repo.id, [doomed]) == [layer_digest]
        return found

    meta.linked_blobs = check_then_collect  # type: ignore[method-assign]
    payload = image_manifest(
        descriptor(OCI_CONFIG, config),
        [descriptor(OCI_LAYER, layer), descriptor(OCI_LAYER, random_blob())],
    )
    try:
        r = await put_manifest(sparse.client, "app", "v1", payload)
    finally:
        meta.linked_blobs = original  # type: ignore[method-assign]
    error = assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert error["detail"] == {"digest": layer_digest}
    assert_error(await sparse.client.get("/v2/app/manifests/v1"), 404, "MANIFEST_UNKNOWN")


async def test_the_store_references_every_blob_of_a_sparse_manifest(sparse: Env) -> None:
    """Missing blobs are referenced (a later push of one is kept by gc) but not linked."""
    image = await push_sparse(sparse.client, "app", "v1")
    repo = await sparse.svc.db.run(sparse.svc.meta.gc_repository, "app")
    assert repo is not None
    refs = {r.child for r in repo.references if r.manifest == image.digest and r.kind == "blob"}
    assert refs == {digest_of(b) for b in (image.config, image.present, image.missing)}
    assert {link.digest for link in repo.links} == {
        digest_of(image.config),
        digest_of(image.present),
    }
