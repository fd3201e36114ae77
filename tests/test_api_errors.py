"""The base endpoint, routing, repository names, digests and the shape of every error."""

from __future__ import annotations

import json
from typing import Any

import anyio
import httpx
import pytest

from dockyard.config import Settings
from dockyard.services import Services, build
from dockyard.storage import StorageError
from tests.authfixtures import (  # noqa: F401
    client_logged_in,
    root_client,
    settings_with_and_without_auth,
)
from tests.conftest import (
    OCI_ERROR_CODES,
    OCI_MANIFEST,
    assert_bare,
    assert_error,
    digest_of,
    fake_digest,
    push_blob,
    push_image,
    put_manifest,
    random_blob,
    start_upload,
    wait_for_events,
)

# -- base


async def test_base(client: httpx.AsyncClient) -> None:
    for path in ("/v2/", "/v2"):
        r = await client.get(path)
        assert r.status_code == 200
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"
        assert r.headers["content-type"] == "application/json"
        assert r.json() == {}
    r = await client.head("/v2/")
    assert r.status_code == 200
    assert r.headers["docker-distribution-api-version"] == "registry/2.0"
    assert r.content == b""


async def test_health(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}
    r = await client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ready"}


async def test_request_id(client: httpx.AsyncClient) -> None:
    r = await client.get("/v2/", headers={"x-request-id": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    a, b = await client.get("/v2/"), await client.get("/v2/")
    assert a.headers["x-request-id"] and a.headers["x-request-id"] != b.headers["x-request-id"]


async def test_unknown_endpoint(client: httpx.AsyncClient) -> None:
    for path in ("/", "/v1/", "/v2/repo", "/v2/repo/unknown/thing", "/v2/repo/blobs/"):
        r = await client.get(path)
        assert_bare(r, 404)
        assert r.headers["docker-distribution-api-version"] == "registry/2.0"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/v2/", "GET, HEAD"),
        ("DELETE", "/v2/_catalog", "GET"),
        ("POST", "/v2/repo/manifests/latest", "GET, HEAD, PUT, DELETE"),
        ("PUT", "/v2/repo/tags/list", "GET"),
        ("PUT", "/v2/repo/blobs/" + "sha256:" + "a" * 64, "GET, HEAD, DELETE"),
        ("GET", "/v2/repo/blobs/uploads/", "POST"),
        ("POST", "/v2/repo/blobs/uploads/abc", "GET, PATCH, PUT, DELETE"),
        ("DELETE", "/v2/repo/referrers/sha256:" + "a" * 64, "GET"),
    ],
)
async def test_method_not_allowed(
    client: httpx.AsyncClient, method: str, path: str, allow: str
) -> None:
    r = await client.request(method, path)
    assert_error(r, 405, "UNSUPPORTED")
    assert r.headers["allow"] == allow


async def test_bad_content_length_header(client: httpx.AsyncClient) -> None:
    data = random_blob(10)
    r = await client.post(
        "/v2/repo/blobs/uploads/",
        params={"digest": digest_of(data)},
        content=data,
        headers={"content-length": "ten"},
    )
    assert_error(r, 400, "SIZE_INVALID")
    assert (await client.head(f"/v2/repo/blobs/{digest_of(data)}")).status_code == 404


# -- names

VALID_NAMES = [
    "a",
    "0",
    "library/ubuntu",
    "a/b/c/d/e/f",
    "my-org/my_app/sub.component",
    "a__b",
    "a--b",
    "x" * 255,
    "/".join(["abc"] * 64),  # 255 characters of nested components
]


@pytest.mark.parametrize("name", VALID_NAMES)
async def test_valid_names(client: httpx.AsyncClient, name: str) -> None:
    assert len(name) <= 255
    image = await push_image(client, name, "v1")
    r = await client.get(f"/v2/{name}/manifests/v1")
    assert r.status_code == 200
    assert r.content == image.payload
    r = await client.get(f"/v2/{name}/tags/list")
    assert r.json() == {"name": name, "tags": ["v1"]}
    assert name in (await client.get("/v2/_catalog")).json()["repositories"]
    location = await start_upload(client, name)
    assert location.startswith(f"/v2/{name}/blobs/uploads/")


INVALID_NAMES = [
    "Upper",
    "lib/Ubuntu",
    "a/%2E%2E/b",  # ".." arrives percent-encoded: clients normalise a literal one away
    "%2E%2E",
    "a/%2E/b",
    "repo/",  # trailing slash
    "a//b",
    "-lead",
    "trail-",
    "a_",
    "a___b",
    "a..b",
    "a.-b",
    "a%20b",
    "a%3Ab",
    "x" * 256,
    "/".join(["abc"] * 64) + "d",  # 256 characters
    "caf%C3%A9",
]


def _endpoints(name: str) -> list[tuple[str, str, dict[str, Any]]]:
    digest = fake_digest()
    return [
        ("GET", f"/v2/{name}/tags/list", {}),
        ("GET", f"/v2/{name}/manifests/latest", {}),
        ("HEAD", f"/v2/{name}/manifests/latest", {}),
        ("PUT", f"/v2/{name}/manifests/latest", {"content": b"{}"}),
        ("DELETE", f"/v2/{name}/manifests/latest", {}),
        ("GET", f"/v2/{name}/blobs/{digest}", {}),
        ("DELETE", f"/v2/{name}/blobs/{digest}", {}),
        ("POST", f"/v2/{name}/blobs/uploads/", {}),
        ("POST", f"/v2/{name}/blobs/uploads/", {"params": {"digest": digest_of(b"x")}}),
        ("GET", f"/v2/{name}/blobs/uploads/abc", {}),
        ("PATCH", f"/v2/{name}/blobs/uploads/abc", {"content": b"x"}),
        ("GET", f"/v2/{name}/referrers/{digest}", {}),
    ]


@pytest.mark.parametrize("name", INVALID_NAMES)
async def test_invalid_names(client: httpx.AsyncClient, name: str) -> None:
    for method, path, kwargs in _endpoints(name):
        r = await client.request(method, path, **kwargs)
        if method == "HEAD":
            assert r.status_code == 400, (method, path)
            continue
        error = assert_error(r, 400, "NAME_INVALID")
        assert "name" in error["message"]
    # Nothing was created.
    assert (await client.get("/v2/_catalog")).json() == {"repositories": []}


async def test_invalid_from_name_in_mount(client: httpx.AsyncClient) -> None:
    digest = await push_blob(client, "src", b"abc")
    for bad in ("Src", "a//b", "x" * 256):
        r = await client.post("/v2/dst/blobs/uploads/", params={"mount": digest, "from": bad})
        assert_error(r, 400, "NAME_INVALID")
    assert (await client.head(f"/v2/dst/blobs/{digest}")).status_code == 404


# -- digests: malformed or unsupported is a client error, never a 500

BAD_DIGESTS = [
    "sha256:",
    "sha256:abc",
    "sha256:" + "a" * 63,
    "sha256:" + "a" * 65,
    "sha256:" + "A" * 64,
    "sha256:" + "g" * 64,
    "sha512:" + "a" * 64,
    "blake3:" + "a" * 128,
    "md5:" + "a" * 32,
    "sha1:" + "a" * 40,
    "SHA256:" + "a" * 64,
    ":" + "a" * 64,
    "sha256::" + "a" * 64,
    "sha256:" + "a" * 300,
    "a" * 64,
]


@pytest.mark.parametrize("bad", BAD_DIGESTS)
async def test_bad_digests_everywhere(client: httpx.AsyncClient, bad: str) -> None:
    image = await push_image(client, "repo", "v1")
    location = await start_upload(client, "repo")
    data = random_blob(10)
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/v2/repo/blobs/{bad}", {}),
        ("HEAD", f"/v2/repo/blobs/{bad}", {}),
        ("DELETE", f"/v2/repo/blobs/{bad}", {}),
        ("POST", "/v2/repo/blobs/uploads/", {"params": {"digest": bad}, "content": data}),
        ("POST", "/v2/repo/blobs/uploads/", {"params": {"mount": bad, "from": "repo"}}),
        ("PUT", location, {"params": {"digest": bad}, "content": data}),
        ("GET", f"/v2/repo/manifests/{bad}", {}),
        ("HEAD", f"/v2/repo/manifests/{bad}", {}),
        ("DELETE", f"/v2/repo/manifests/{bad}", {}),
        ("PUT", f"/v2/repo/manifests/{bad}", {"content": image.payload}),
        ("GET", f"/v2/repo/referrers/{bad}", {}),
    ]
    for method, path, kwargs in requests:
        if ":" not in bad and "/manifests/" in path:
            continue  # without ':' it is a (valid) tag, covered elsewhere
        r = await client.request(method, path, **kwargs)
        assert r.status_code in (400, 404), (method, path, r.status_code, r.text)
        if method != "HEAD" and r.content:  # no body: no such endpoint
            assert r.json()["errors"][0]["code"] in (
                "DIGEST_INVALID",
                "BLOB_UNKNOWN",
                "MANIFEST_UNKNOWN",
            ), (method, path, r.text)
    # The upload session and the image survived the bad requests.
    assert (await client.get(location)).status_code == 204
    r = await client.put(location, params={"digest": digest_of(data)}, content=data)
    assert r.status_code == 201
    assert (await client.get("/v2/repo/manifests/v1")).content == image.payload


@pytest.mark.parametrize("algorithm", ["sha256", "sha512", "blake3"])
async def test_every_algorithm_end_to_end(client: httpx.AsyncClient, algorithm: str) -> None:
    config, layer = b'{"os": "linux"}', random_blob(5000)
    config_digest = await push_blob(client, "algo", config, algorithm)
    location = await start_upload(client, "algo", **{"digest-algorithm": algorithm})
    r = await client.patch(location, content=layer[:3000], headers={"content-range": "0-2999"})
    assert r.status_code == 202
    layer_digest = digest_of(layer, algorithm)
    r = await client.put(location, params={"digest": layer_digest}, content=layer[3000:])
    assert r.status_code == 201, r.text
    payload = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": layer_digest,
                    "size": len(layer),
                }
            ],
        }
    ).encode()
    digest = digest_of(payload, algorithm)
    r = await put_manifest(client, "algo", digest, payload, params={"tag": "v1"})
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    r = await client.get(f"/v2/algo/manifests/{digest}")
    assert r.content == payload
    assert r.headers["docker-content-digest"] == digest
    r = await client.get("/v2/algo/manifests/v1")
    assert r.headers["docker-content-digest"] == digest
    for blob, blob_digest in ((config, config_digest), (layer, layer_digest)):
        r = await client.get(f"/v2/algo/blobs/{blob_digest}")
        assert r.content == blob
        assert r.headers["docker-content-digest"] == blob_digest
    r = await client.post(
        "/v2/other/blobs/uploads/", params={"mount": layer_digest, "from": "algo"}
    )
    assert r.status_code == 201
    assert (await client.delete(f"/v2/algo/blobs/{layer_digest}")).status_code == 202
    assert (await client.delete(f"/v2/algo/manifests/{digest}")).status_code == 202
    assert (await client.get(f"/v2/other/blobs/{layer_digest}")).content == layer


# -- error bodies


async def test_error_body_shape(client: httpx.AsyncClient) -> None:
    await push_blob(client, "repo", b"x")
    responses = [
        await client.get(f"/v2/repo/blobs/{fake_digest()}"),
        await client.get("/v2/repo/manifests/none"),
        await client.get("/v2/none/tags/list"),
        await client.get("/v2/BAD/tags/list"),
        await client.get("/v2/repo/blobs/uploads/nope"),
        await client.put("/v2/repo/manifests/v1", content=b"{"),
        await client.post("/v2/repo/blobs/uploads/", params={"digest": "x"}),
    ]
    # No spec code means "no such endpoint": the bare status.
    assert_bare(await client.post("/v2/repo/blobs/", content=b""), 404)
    for r in responses:
        assert 400 <= r.status_code < 500, r.text
        doc = json.loads(r.content)
        assert set(doc) == {"errors"}
        assert len(doc["errors"]) == 1
        entry = doc["errors"][0]
        assert set(entry) <= {"code", "message", "detail"}
        assert entry["code"] in OCI_ERROR_CODES, doc
        assert isinstance(entry["message"], str) and entry["message"]
        assert r.headers["content-length"] == str(len(r.content))


# -- ASGI lifespan


async def test_lifespan_protocol(settings: Settings) -> None:
    """The ASGI lifespan (as hypercorn drives it) starts and stops the background tasks."""
    svc = build(settings)
    to_app_send, to_app_receive = anyio.create_memory_object_stream[dict[str, Any]](4)
    from_app_send, from_app_receive = anyio.create_memory_object_stream[dict[str, Any]](4)

    async def receive() -> dict[str, Any]:
        return await to_app_receive.receive()

    async def send(message: Any) -> None:
        await from_app_send.send(dict(message))

    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as nursery:
                scope = {"type": "lifespan", "asgi": {"version": "3.0"}}
                nursery.start_soon(svc.app, scope, receive, send)
                await to_app_send.send({"type": "lifespan.startup"})
                assert (await from_app_receive.receive())["type"] == "lifespan.startup.complete"
                async with root_client(svc) as client:
                    digest = await push_blob(client, "life", b"cycle")
                    assert (await client.get(f"/v2/life/blobs/{digest}")).status_code == 200
                # The pull-event writer runs: the pull is written after its batch interval.
                found = await wait_for_events(svc, 0, 2)
                assert [e.action for e in found] == ["push", "pull"]
                await to_app_send.send({"type": "lifespan.shutdown"})
                assert (await from_app_receive.receive())["type"] == "lifespan.shutdown.complete"
    finally:
        for stream in (to_app_send, to_app_receive, from_app_send, from_app_receive):
            stream.close()  # anyio warns of memory streams left open
        svc.meta.close()


class _Unreachable:
    """A blob store whose backend stopped answering (after the driver's own retries)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def create_upload(self, upload_id: str) -> Any:
        raise StorageError("PUT uploads/x: connection refused")

    async def check(self) -> None:
        raise StorageError("HEAD bucket: connection refused")

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_storage_outage_is_a_503_to_retry_and_changes_nothing(
    services: Services, client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    uploads = services.registry.uploads
    uploads.storage = _Unreachable(uploads.storage)
    r = await client.post("/v2/app/blobs/uploads/")
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    error = r.json()["errors"][0]
    assert (error["code"], error["message"]) == ("UNKNOWN", "storage unavailable")
    assert error["detail"] == {"request": r.headers["x-request-id"]}
    assert "connection refused" not in r.text  # the driver's text stays in the log
    assert await services.db.run(services.meta.upload_ids) == set()
    assert (await client.get("/v2/_catalog")).json()["repositories"] == []
    assert any("storage failed in POST" in m and "connection refused" in m for m in caplog.messages)
    assert not any(rec.exc_info for rec in caplog.records)  # an outage logs no traceback


async def test_readyz_fails_while_the_blob_store_is_unreachable(
    services: Services, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/readyz")).status_code == 200
    services.storage = _Unreachable(services.storage)
    assert (await client.get("/readyz")).status_code == 503
