"""The event log: every change appends its event with the change; pulls are batched;
a rejected request appends nothing."""

from __future__ import annotations

import anyio
import httpx
import pytest

from dockyard.meta.records import StoredEvent
from dockyard.services import Services
from tests.authfixtures import (  # noqa: F401
    client_logged_in,
    settings_with_and_without_auth,
    with_tokens,
)
from tests.conftest import (
    DOCKER_MANIFEST,
    OCI_MANIFEST,
    descriptor,
    digest_of,
    events,
    fake_digest,
    image_manifest,
    last_event_id,
    push_blob,
    push_image,
    put_manifest,
    random_blob,
    sqlite_and_postgres,
    start_upload,
    wait_for_events,
)

OCTET = "application/octet-stream"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on a real PostgreSQL."""
    return sqlite_and_postgres(request)


def only(found: list[StoredEvent]) -> StoredEvent:
    assert len(found) == 1, [(e.action, e.repository, e.digest) for e in found]
    return found[0]


async def events_before_a_sentinel_pull(
    svc: Services, client: httpx.AsyncClient, after: int
) -> list[StoredEvent]:
    """Events after ``after``, once every pull recorded so far has been written.

    Pull events are written in batches, in the order they were recorded: pull a sentinel
    blob and wait for its event; any earlier pull event is then in the log too.
    """
    sentinel = random_blob(64)
    digest = await push_blob(client, "sentinel", sentinel)
    assert (await client.get(f"/v2/sentinel/blobs/{digest}")).content == sentinel
    with anyio.fail_after(5):
        while True:
            found = events(svc, after)
            if any(e.action == "pull" and e.digest == digest for e in found):
                break
            await anyio.sleep(0.01)
    return [e for e in found if e.repository != "sentinel"]


async def test_blob_push_event(services: Services, client: httpx.AsyncClient) -> None:
    data = random_blob(321)
    r = await client.post(
        "/v2/lib/app/blobs/uploads/",
        params={"digest": digest_of(data)},
        content=data,
        headers={"x-request-id": "req-1", "user-agent": "tests/1.0"},
    )
    assert r.status_code == 201
    # Visible as soon as the response is: written with the link, not after it.
    event = only(events(services))
    assert (event.action, event.repository, event.digest) == ("push", "lib/app", digest_of(data))
    assert (event.media_type, event.size, event.tag) == (OCTET, 321, None)
    assert event.body["request"]["id"] == "req-1"
    assert event.body["request"]["useragent"] == "tests/1.0"
    assert event.body["request"]["method"] == "POST"
    assert event.body["source"] == {"instance": "test"}


async def test_chunked_upload_events(services: Services, client: httpx.AsyncClient) -> None:
    data = random_blob(2000)
    location = await start_upload(client, "chunks")
    assert (await client.patch(location, content=data[:1000])).status_code == 202
    assert (await client.get(location)).status_code == 204
    assert events(services) == []  # sessions and chunks are not changes to content
    r = await client.put(location, params={"digest": digest_of(data)}, content=data[1000:])
    assert r.status_code == 201
    event = only(events(services))
    assert (event.action, event.digest, event.size) == ("push", digest_of(data), 2000)
    assert event.body["request"]["method"] == "PUT"


async def test_mount_event(services: Services, client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "src", b"shared")
    after = last_event_id(services)
    r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": "src"})
    assert r.status_code == 201
    event = only(events(services, after))
    assert (event.action, event.repository, event.digest, event.size) == (
        "mount",
        "dst",
        digest,
        6,
    )
    assert event.body["target"]["from"] == "src"
    if with_tokens(client):
        return  # a mount without from= sees only what the token grants (test_api_uploads)
    # Without from=, the same.
    after = last_event_id(services)
    assert (
        await client.post("/v2/dst2/blobs/uploads/", params={"mount": digest})
    ).status_code == 201
    event = only(events(services, after))
    assert (event.action, event.repository) == ("mount", "dst2")
    assert event.body["target"]["from"] in ("src", "dst")  # any repository holding it


async def test_blob_delete_event(services: Services, client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "repo", b"bytes")
    after = last_event_id(services)
    assert (await client.delete(f"/v2/repo/blobs/{digest}")).status_code == 202
    event = only(events(services, after))
    assert (event.action, event.repository, event.digest) == ("delete", "repo", digest)


async def test_manifest_events(services: Services, client: httpx.AsyncClient) -> None:
    image = await push_image(client, "app", "v1")
    pushes = events(services)
    assert [e.action for e in pushes] == ["push"] * 4  # config, two layers, manifest
    manifest = pushes[-1]
    assert (manifest.repository, manifest.digest, manifest.tag) == ("app", image.digest, "v1")
    assert (manifest.media_type, manifest.size) == (OCI_MANIFEST, len(image.payload))
    assert manifest.body["target"]["tags"] == ["v1"]

    after = last_event_id(services)
    r = await put_manifest(client, "app", image.digest, image.payload, params={"tag": ["a", "b"]})
    assert r.status_code == 201
    event = only(events(services, after))
    assert (event.action, event.digest, event.tag) == ("push", image.digest, "a")
    assert event.body["target"]["tags"] == ["a", "b"]

    after = last_event_id(services)
    assert (await client.delete("/v2/app/manifests/a")).status_code == 202
    event = only(events(services, after))
    assert (event.action, event.repository, event.digest, event.tag) == (
        "untag",
        "app",
        image.digest,
        "a",
    )

    after = last_event_id(services)
    assert (await client.delete(f"/v2/app/manifests/{image.digest}")).status_code == 202
    event = only(events(services, after))
    assert (event.action, event.repository, event.digest) == ("delete", "app", image.digest)


async def test_subject_and_artifact_type_in_event(
    services: Services, client: httpx.AsyncClient
) -> None:
    image = await push_image(client, "app", "v1")
    await push_blob(client, "app", b"{}")
    payload = image_manifest(
        descriptor("application/vnd.oci.empty.v1+json", b"{}"),
        [],
        artifactType="application/vnd.example.sig",
        subject=image.descriptor,
    )
    after = last_event_id(services)
    assert (await put_manifest(client, "app", digest_of(payload), payload)).status_code == 201
    event = only(events(services, after))
    assert event.body["target"]["subject"] == image.digest
    assert event.body["target"]["artifactType"] == "application/vnd.example.sig"
    assert event.tag is None


async def test_pull_events(services: Services, client: httpx.AsyncClient) -> None:
    image = await push_image(client, "app", "v1", media_type=DOCKER_MANIFEST)
    after = last_event_id(services)
    layer = digest_of(image.layers[0])
    assert (await client.get(f"/v2/app/blobs/{layer}")).status_code == 200
    assert (await client.get("/v2/app/manifests/v1")).status_code == 200
    assert (await client.get(f"/v2/app/manifests/{image.digest}")).status_code == 200
    await wait_for_events(services, after, 3)
    found = await events_before_a_sentinel_pull(services, client, after)
    assert [(e.action, e.digest, e.tag) for e in found] == [
        ("pull", layer, None),
        ("pull", image.digest, "v1"),
        ("pull", image.digest, None),
    ]
    assert found[0].media_type == OCTET
    assert found[0].size == len(image.layers[0])
    assert found[1].media_type == DOCKER_MANIFEST
    assert found[1].size == len(image.payload)


async def test_heads_are_not_pulls(services: Services, client: httpx.AsyncClient) -> None:
    image = await push_image(client, "app", "v1")
    after = last_event_id(services)
    assert (await client.head("/v2/app/manifests/v1")).status_code == 200
    assert (await client.head(f"/v2/app/blobs/{digest_of(image.config)}")).status_code == 200
    assert await events_before_a_sentinel_pull(services, client, after) == []


async def test_rejected_requests_append_nothing(
    services: Services, client: httpx.AsyncClient
) -> None:
    image = await push_image(client, "app", "v1")
    data = random_blob(100)
    location = await start_upload(client, "app")
    assert (await client.patch(location, content=data[:50])).status_code == 202
    missing = image_manifest(
        descriptor("application/vnd.oci.image.config.v1+json", b"{}"),
        [descriptor("application/vnd.oci.image.layer.v1.tar", random_blob(10))],
    )
    after = last_event_id(services)
    rejected = [
        # uploads
        await client.post(
            "/v2/app/blobs/uploads/", params={"digest": digest_of(data + b"!")}, content=data
        ),
        await client.post(
            "/v2/app/blobs/uploads/",
            params={"digest": digest_of(data)},
            content=data,
            headers={"content-length": "99"},
        ),
        await client.patch(location, content=data, headers={"content-range": "10-109"}),
        await client.put(f"{location}x", params={"digest": digest_of(data)}),
        await client.post(
            "/v2/App/blobs/uploads/", params={"digest": digest_of(data)}, content=data
        ),
        # manifests
        await put_manifest(client, "app", "v2", missing),
        await put_manifest(client, "app", "v2", b"{not json"),
        await put_manifest(client, "app", fake_digest(), image.payload),
        await put_manifest(client, "app", "-bad", image.payload),
        await put_manifest(client, "app", image.digest, image.payload, params={"tag": "-x"}),
        await put_manifest(client, "app", "v2", image.payload, DOCKER_MANIFEST),
        # deletes of what is not there
        await client.delete(f"/v2/app/blobs/{fake_digest()}"),
        await client.delete(f"/v2/app/manifests/{fake_digest()}"),
        await client.delete("/v2/app/manifests/nope"),
        await client.delete("/v2/other/manifests/v1"),
        # reads that do not deliver content
        await client.get(f"/v2/app/blobs/{fake_digest()}"),
        await client.get(f"/v2/other/blobs/{digest_of(image.config)}"),
        await client.get("/v2/app/manifests/nope"),
        await client.get("/v2/app/manifests/v1", headers={"accept": DOCKER_MANIFEST}),
        await client.get(
            f"/v2/app/blobs/{digest_of(image.config)}", headers={"range": "bytes=9999-"}
        ),
    ]
    for r in rejected:
        assert 400 <= r.status_code < 500, (r.request.method, r.request.url, r.text)
    # A mount that cannot happen starts an upload instead: not a change either.
    r = await client.post("/v2/app2/blobs/uploads/", params={"mount": fake_digest(), "from": "app"})
    assert r.status_code == 202
    assert await events_before_a_sentinel_pull(services, client, after) == []
    # And the state is as before.
    r = await client.get("/v2/app/tags/list")
    assert r.json() == {"name": "app", "tags": ["v1"]}
    assert (await client.get(f"/v2/app/blobs/{digest_of(data)}")).status_code == 404
