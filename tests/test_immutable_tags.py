"""Immutable tags through the HTTP API: a push may create one or re-push its digest, never
move it; DELETE of it, or of its manifest by digest, is refused with 403 DENIED; other
tags and repositories the policy does not cover behave as before."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from dockyard.config import Settings
from dockyard.services import Services
from tests.conftest import (
    assert_error,
    events,
    last_event_id,
    push_image,
    put_manifest,
    sqlite_and_postgres,
)
from tests.test_retention import policy_settings


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    return sqlite_and_postgres(request)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    return policy_settings(
        tmp_path,
        database_url,
        "[[retention.policies]]\n"
        'repositories = ["team/*"]\n'
        "immutable_tags = ['v[0-9]+\\.[0-9]+\\.[0-9]+', 'stable']\n",
    )


async def test_an_immutable_tag_cannot_be_moved(client: httpx.AsyncClient) -> None:
    first = await push_image(client, "team/app", "v1.2.3")
    second = await push_image(client, "team/app", "dev")
    r = await put_manifest(client, "team/app", "v1.2.3", second.payload)
    error = assert_error(r, 403, "DENIED")
    assert error["message"] == "tag v1.2.3 is immutable in team/app (retention policy)"
    r = await client.get("/v2/team/app/manifests/v1.2.3")
    assert r.headers["docker-content-digest"] == first.digest
    # The same digest again (a CI retry) is fine.
    r = await put_manifest(client, "team/app", "v1.2.3", first.payload)
    assert r.status_code == 201, r.text
    # Moving it with extra tags of a push by digest is refused too, and nothing changes.
    r = await put_manifest(
        client, "team/app", second.digest, second.payload, params={"tag": ["x", "stable"]}
    )
    assert r.status_code == 201, r.text
    third = await push_image(client, "team/app", "y")
    r = await put_manifest(
        client, "team/app", third.digest, third.payload, params={"tag": ["z", "stable"]}
    )
    assert_error(r, 403, "DENIED")
    r = await client.get("/v2/team/app/tags/list")
    assert r.json()["tags"] == ["dev", "stable", "v1.2.3", "x", "y"]


async def test_immutable_tags_cannot_be_deleted(
    services: Services, client: httpx.AsyncClient
) -> None:
    image = await push_image(client, "team/app", "v1.0.0")
    r = await put_manifest(client, "team/app", "latest", image.payload)
    assert r.status_code == 201
    after = last_event_id(services)
    r = await client.delete("/v2/team/app/manifests/v1.0.0")
    error = assert_error(r, 403, "DENIED")
    assert error["message"] == "tag v1.0.0 is immutable in team/app (retention policy)"
    r = await client.delete(f"/v2/team/app/manifests/{image.digest}")
    assert_error(r, 403, "DENIED")
    assert events(services, after) == []
    r = await client.get("/v2/team/app/tags/list")
    assert r.json()["tags"] == ["latest", "v1.0.0"]
    # A mutable tag of the same image goes as before; an immutable one never pushed is 404.
    assert (await client.delete("/v2/team/app/manifests/latest")).status_code == 202
    r = await client.delete("/v2/team/app/manifests/v9.9.9")
    assert_error(r, 404, "MANIFEST_UNKNOWN")


async def test_repositories_without_the_policy_are_unaffected(client: httpx.AsyncClient) -> None:
    first = await push_image(client, "elsewhere", "v1.2.3")
    second = await push_image(client, "elsewhere", "other")
    r = await put_manifest(client, "elsewhere", "v1.2.3", second.payload)
    assert r.status_code == 201
    assert (await client.delete(f"/v2/elsewhere/manifests/{first.digest}")).status_code == 202
    assert (await client.delete("/v2/elsewhere/manifests/v1.2.3")).status_code == 202


async def test_a_repository_holding_an_immutable_tag_cannot_be_deleted(
    services: Services, client: httpx.AsyncClient
) -> None:
    await push_image(client, "team/app", "v2.0.0")
    await push_image(client, "team/tmp", "dev")
    after = last_event_id(services)
    r = await client.delete("/v2/_dockyard/repositories/team/app")
    error = assert_error(r, 403, "DENIED")
    assert error["message"] == "repository team/app holds immutable tag v2.0.0 (retention policy)"
    assert events(services, after) == []
    r = await client.get("/v2/team/app/tags/list")
    assert r.json()["tags"] == ["v2.0.0"]
    # A repository of the same policy without an immutable tag goes as before.
    assert (await client.delete("/v2/_dockyard/repositories/team/tmp")).status_code == 202
