"""The repository management endpoint (/v2/_dockyard/repositories/) and storage quotas,
in process, on SQLite and PostgreSQL: tag details, usage with shared blobs, deleting a
repository, who may do which, and pushes refused over a quota with nothing stored."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from dockyard.config import Settings
from dockyard.config.model import QuotaSettings
from dockyard.events.schema import cloudevent, distribution_envelope, native
from dockyard.services import Services
from tests.authfixtures import ROOT_RULE, auth_settings, basic
from tests.conftest import (
    assert_bare,
    assert_error,
    digest_of,
    events,
    make_client,
    make_settings,
    open_services,
    parse_link,
    push_blob,
    push_image,
    put_manifest,
    random_blob,
    sqlite_and_postgres,
)
from tests.test_metrics import parse, value

BASE = "/v2/_dockyard/repositories"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    return sqlite_and_postgres(request)


# -- tags and usage


async def test_tags_list_digest_size_and_times(client: httpx.AsyncClient) -> None:
    first = await push_image(client, "team/app", "v1")
    second = await push_image(client, "team/app", "v2")
    r = await client.get(f"{BASE}/team/app/tags")
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["name"] == "team/app"
    assert [t["name"] for t in doc["tags"]] == ["v1", "v2"]
    v1 = doc["tags"][0]
    assert v1["digest"] == first.digest
    assert v1["mediaType"] == first.media_type
    assert v1["size"] == len(first.payload) + len(first.config) + sum(map(len, first.layers))
    assert v1["pushed_at"].endswith("Z") and v1["last_pulled_at"] is None
    assert doc["tags"][1]["digest"] == second.digest


async def test_scans_api_without_a_scanner(client: httpx.AsyncClient) -> None:
    """Scanning off: a manifest's scan is "none" (what the dashboard asks about every
    pushed image), the tags carry no scan, and asking for a scan is refused."""
    pushed = await push_image(client, "team/app", "v1")
    r = await client.get(f"{BASE}/team/app/scans/{pushed.digest}")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "none" and r.json()["findings"] == []
    assert (await client.get(f"{BASE}/team/app/tags")).json()["tags"][0]["scan"] is None
    r = await client.post(f"{BASE}/team/app/scans/{pushed.digest}")
    assert_error(r, 405, "UNSUPPORTED")
    missing = digest_of(b"not pushed")
    assert_error(await client.get(f"{BASE}/team/app/scans/{missing}"), 404, "MANIFEST_UNKNOWN")


async def test_tags_are_paged_with_a_link(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "app", "a")
    for tag in ("b", "c"):
        assert (await put_manifest(client, "app", tag, image.payload)).status_code == 201
    r = await client.get(f"{BASE}/app/tags", params={"n": "2"})
    assert [t["name"] for t in r.json()["tags"]] == ["a", "b"]
    following = parse_link(r.headers["link"])
    assert following == f"{BASE}/app/tags?n=2&last=b"
    r = await client.get(following)
    assert [t["name"] for t in r.json()["tags"]] == ["c"]
    assert "link" not in r.headers


async def test_usage_counts_a_shared_blob_once(client: httpx.AsyncClient) -> None:
    shared = random_blob(4000)
    await push_blob(client, "app", shared)
    await push_blob(client, "app", shared)
    own = await push_blob(client, "app", random_blob(100))
    r = await client.get(f"{BASE}/app")
    assert r.status_code == 200, r.text
    usage = r.json()["usage"]
    assert (usage["blobs"], usage["blob_bytes"], usage["manifests"]) == (2, 4100, 0)
    assert usage["bytes"] == 4100
    assert own


async def test_unknown_and_invalid_names(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(f"{BASE}/nope"), 404, "NAME_UNKNOWN")
    assert_error(await client.get(f"{BASE}/nope/tags"), 404, "NAME_UNKNOWN")
    assert_error(await client.delete(f"{BASE}/nope"), 404, "NAME_UNKNOWN")
    assert_error(await client.get(f"{BASE}/Bad..Name"), 400, "NAME_INVALID")
    await push_blob(client, "app", b"x")
    assert_bare(await client.get(f"{BASE}/app/tags", params={"n": "x"}), 400)


# -- deleting a repository


async def test_delete_repository(services: Services, client: httpx.AsyncClient) -> None:
    image = await push_image(client, "team/app", "v1")
    await push_image(client, "team/app", "v2")
    other = await push_image(client, "team/other", "v1")
    before = len(events(services))
    r = await client.delete(f"{BASE}/team/app")
    assert r.status_code == 202, r.text
    assert r.json() == {"name": "team/app", "deleted": {"manifests": 2, "links": 6}}
    catalog = (await client.get("/v2/_catalog")).json()["repositories"]
    assert catalog == ["team/other"]
    assert_error(await client.get("/v2/team/app/tags/list"), 404, "NAME_UNKNOWN")
    assert_error(await client.get(f"/v2/team/app/blobs/{image.digest}"), 404, "BLOB_UNKNOWN")
    r = await client.get("/v2/team/other/manifests/v1")
    assert r.status_code == 200 and r.content == other.payload
    added = events(services)[before:]
    assert [(e.action, e.body["target"]["kind"]) for e in added] == [
        ("delete", "manifest"),
        ("delete", "manifest"),
        ("delete", "repository"),
    ]
    assert all(e.body["target"]["reason"] == "api" for e in added)
    assert added[-1].repository == "team/app"
    # The name can be pushed to again, from nothing.
    await push_image(client, "team/app", "v3")
    tags = (await client.get(f"{BASE}/team/app/tags")).json()["tags"]
    assert [t["name"] for t in tags] == ["v3"]


# -- authorization


@pytest.fixture
def auth(tmp_path: Path) -> Settings:
    rules = [
        ROOT_RULE,
        {"users": ["bob"], "repositories": ["team/*"], "actions": ["pull"]},
        {"users": ["alice"], "repositories": ["team/*"], "actions": ["pull", "push", "delete"]},
    ]
    return auth_settings(tmp_path / "data", rules)


async def test_pull_reads_and_only_delete_deletes(auth: Settings) -> None:
    async with open_services(auth) as svc:
        async with make_client(svc, basic("root")) as root:
            await push_image(root, "team/app", "v1")
        async with make_client(svc, basic("bob")) as bob:
            assert (await bob.get(f"{BASE}/team/app/tags")).status_code == 200
            assert (await bob.get(f"{BASE}/team/app")).status_code == 200
            assert_error(await bob.delete(f"{BASE}/team/app"), 403, "DENIED")
            assert_error(await bob.get(f"{BASE}/other/tags"), 403, "DENIED")
        async with make_client(svc) as anonymous:
            assert_error(await anonymous.get(f"{BASE}/team/app"), 401, "UNAUTHORIZED")
        assert svc.meta.repository_exists("team/app")
        async with make_client(svc, basic("alice")) as alice:
            assert (await alice.delete(f"{BASE}/team/app")).status_code == 202
        assert not svc.meta.repository_exists("team/app")


# -- quotas


@pytest.fixture
async def quota_services(settings: Settings) -> AsyncIterator[Services]:
    settings.quotas = [
        QuotaSettings(repositories=["small/*"], max_bytes=3000),
        QuotaSettings(namespace="team", max_bytes=5000),
    ]
    async with open_services(settings) as svc:
        yield svc


async def test_a_blob_over_the_quota_is_refused_and_nothing_stored(
    quota_services: Services,
) -> None:
    async with make_client(quota_services) as client:
        await push_blob(client, "small/a", random_blob(2000))
        before = len(events(quota_services))
        big = random_blob(1500)
        digest = digest_of(big)
        r = await client.post("/v2/small/a/blobs/uploads/", params={"digest": digest}, content=big)
        error = assert_error(r, 403, "DENIED")
        assert "quota exceeded" in error["message"] and "quotas[0]" in error["message"]
        assert error["detail"] == {
            "quota": "quotas[0]",
            "limit": 3000,
            "usage": 2000,
            "requested": 1500,
        }
        assert len(events(quota_services)) == before
        assert quota_services.meta.blob_size(digest) is None
        assert not await quota_services.storage.stat(digest)
        # The same push in chunks: refused at the PUT, the session gone.
        location = (await client.post("/v2/small/a/blobs/uploads/")).headers["location"]
        r = await client.patch(location, content=big)
        assert r.status_code == 202
        r = await client.put(location, params={"digest": digest})
        assert_error(r, 403, "DENIED")
        assert_error(await client.get(location), 404, "BLOB_UPLOAD_UNKNOWN")
        uploads = Path(quota_services.settings.storage.root) / "uploads"
        assert not uploads.exists() or not any(uploads.iterdir())
        # Another repository under the same glob has its own limit.
        await push_blob(client, "small/b", big)


async def test_a_mount_into_a_full_repository_is_refused(quota_services: Services) -> None:
    async with make_client(quota_services) as client:
        data = random_blob(2500)
        digest = await push_blob(client, "big", data)
        await push_blob(client, "small/a", random_blob(1000))
        r = await client.post("/v2/small/a/blobs/uploads/", params={"mount": digest, "from": "big"})
        assert_error(r, 403, "DENIED")
        assert quota_services.meta.linked_blob_size("small/a", digest) is None


async def test_namespace_quota_and_manifest_push(quota_services: Services) -> None:
    async with make_client(quota_services) as client:
        shared = random_blob(2000)
        await push_blob(client, "team/a", shared)
        await push_blob(client, "team/b", shared)  # the namespace holds it once
        image = await push_image(client, "team/c", "v1", layers=1)
        used = quota_services.meta.namespace_usage("team").bytes
        assert used == 2000 + len(image.config) + len(image.layers[0]) + len(image.payload)
        r = await client.post(
            "/v2/team/d/blobs/uploads/",
            params={"digest": digest_of(b"x" * 3000)},
            content=b"x" * 3000,
        )
        assert "namespace team" in assert_error(r, 403, "DENIED")["message"]
        # A manifest that would go over is refused; one already stored is accepted again.
        fill = 5000 - used - 10
        await push_blob(client, "team/c", random_blob(fill))
        r = await put_manifest(client, "team/c", "v2", image.payload.replace(b"  ", b"   "))
        assert_error(r, 403, "DENIED")
        assert (await put_manifest(client, "team/c", "again", image.payload)).status_code == 201


async def test_concurrent_pushes_cannot_both_pass(quota_services: Services) -> None:
    """Ten pushes of 1000 bytes into a repository with room for three: exactly three fit."""
    results: list[int] = []

    async def push(i: int) -> None:
        async with make_client(quota_services) as client:
            data = random_blob(1000)
            r = await client.post(
                "/v2/small/race/blobs/uploads/", params={"digest": digest_of(data)}, content=data
            )
            results.append(r.status_code)

    async with anyio.create_task_group() as nursery:
        for i in range(10):
            nursery.start_soon(push, i)
    assert sorted(results) == [201] * 3 + [403] * 7
    usage = quota_services.meta.repository_usage("small/race")
    assert usage is not None and usage.blob_bytes == 3000


# -- metrics


async def test_quota_refusals_and_usage_are_metrics(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "data", DOCKYARD_METRICS_INVENTORY_CACHE="0")
    settings.quotas = [
        QuotaSettings(repositories=["small/*"], max_bytes=3000),
        QuotaSettings(namespace="team", max_bytes=5000),
    ]
    async with open_services(settings) as svc, make_client(svc) as client:
        await push_blob(client, "team/a", random_blob(1200))
        await push_blob(client, "team/b", random_blob(300))
        for repo in ("small/x", "small/y"):
            data = random_blob(3500)
            r = await client.post(
                f"/v2/{repo}/blobs/uploads/", params={"digest": digest_of(data)}, content=data
            )
            assert_error(r, 403, "DENIED")
        samples = parse((await client.get("/metrics")).text)
    assert value(samples, "dockyard_quota_refusals_total", quota="quotas[0]") == 2
    assert value(samples, "dockyard_quota_refusals_total", quota="namespace:team") == 0
    assert value(samples, "dockyard_quota_used_bytes", quota="quotas[1]") == 1500
    assert value(samples, "dockyard_quota_limit_bytes", quota="quotas[0]") == 3000
    assert value(samples, "dockyard_stored_bytes") == 1500


async def test_a_repository_delete_event_renders_in_every_webhook_format(
    services: Services, client: httpx.AsyncClient
) -> None:
    await push_image(client, "app", "v1")
    assert (await client.delete(f"{BASE}/app")).status_code == 202
    last = events(services)[-1]
    doc = native(last)
    assert doc["action"] == "delete" and doc["target"]["kind"] == "repository"
    assert "digest" not in doc["target"]
    envelope = distribution_envelope([last], "http://127.0.0.1:5000")
    assert envelope["events"][0]["target"]["repository"] == "app"
    assert cloudevent(last)["subject"] == "app"
