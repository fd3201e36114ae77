"""Manifests: PUT, GET, HEAD, DELETE by tag and digest; negotiation; limits; validation."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.authfixtures import client_logged_in, settings_with_and_without_auth  # noqa: F401
from tests.conftest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    Image,
    assert_bare,
    assert_error,
    chunks,
    descriptor,
    digest_of,
    fake_digest,
    image_manifest,
    push_blob,
    push_image,
    put_manifest,
    random_blob,
)

MAX = 4 * 1024 * 1024


async def assert_manifest(
    client: httpx.AsyncClient, repo: str, reference: str, payload: bytes, media_type: str
) -> None:
    """GET and HEAD serve exactly ``payload`` with its type and digest."""
    digest = digest_of(payload) if ":" not in reference else reference
    r = await client.get(f"/v2/{repo}/manifests/{reference}")
    assert r.status_code == 200, r.text
    assert r.content == payload
    assert r.headers["content-type"] == media_type
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["content-length"] == str(len(payload))
    r = await client.head(f"/v2/{repo}/manifests/{reference}")
    assert r.status_code == 200
    assert r.content == b""
    assert r.headers["content-type"] == media_type
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["content-length"] == str(len(payload))


async def assert_no_manifest(client: httpx.AsyncClient, repo: str, reference: str) -> None:
    r = await client.get(f"/v2/{repo}/manifests/{reference}")
    assert r.status_code == 404, r.text
    assert r.json()["errors"][0]["code"] in ("MANIFEST_UNKNOWN", "NAME_UNKNOWN")
    assert (await client.head(f"/v2/{repo}/manifests/{reference}")).status_code == 404


async def tags_of(client: httpx.AsyncClient, repo: str) -> list[str]:
    r = await client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200, r.text
    tags: list[str] = r.json()["tags"]
    return tags


async def blobs_for(client: httpx.AsyncClient, repo: str) -> tuple[bytes, bytes]:
    config, layer = b'{"os":"linux"}', random_blob(100)
    await push_blob(client, repo, config)
    await push_blob(client, repo, layer)
    return config, layer


# -- PUT and GET


async def test_put_by_tag_and_get(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "lib/app")
    # Odd but valid formatting: the registry must keep the exact bytes.
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    payload = payload.replace(b"\n", b"\r\n  ") + b"\n\n"
    digest = digest_of(payload)
    r = await put_manifest(client, "lib/app", "v1.0", payload)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/lib/app/manifests/{digest}"
    assert r.headers["docker-content-digest"] == digest
    assert "oci-tag" not in r.headers
    assert "oci-subject" not in r.headers
    assert r.content == b""
    await assert_manifest(client, "lib/app", "v1.0", payload, OCI_MANIFEST)
    await assert_manifest(client, "lib/app", digest, payload, OCI_MANIFEST)
    assert await tags_of(client, "lib/app") == ["v1.0"]


async def test_put_by_digest(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "repo")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    digest = digest_of(payload)
    r = await put_manifest(client, "repo", digest, payload)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v2/repo/manifests/{digest}"
    assert r.headers["docker-content-digest"] == digest
    await assert_manifest(client, "repo", digest, payload, OCI_MANIFEST)
    assert await tags_of(client, "repo") == []


async def test_put_by_sha512_digest(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "repo")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    digest = digest_of(payload, "sha512")
    r = await put_manifest(client, "repo", digest, payload)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest
    assert r.headers["location"] == f"/v2/repo/manifests/{digest}"
    await assert_manifest(client, "repo", digest, payload, OCI_MANIFEST)


async def test_put_by_digest_with_tags(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "repo")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    digest = digest_of(payload)
    r = await put_manifest(client, "repo", digest, payload, params={"tag": ["a", "b"]})
    assert r.status_code == 201, r.text
    assert r.headers.get_list("oci-tag") == ["a", "b"]
    assert r.headers["docker-content-digest"] == digest
    for tag in ("a", "b"):
        await assert_manifest(client, "repo", tag, payload, OCI_MANIFEST)
    assert await tags_of(client, "repo") == ["a", "b"]


async def test_put_with_invalid_tag_parameter_stores_nothing(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "repo")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    digest = digest_of(payload)
    r = await put_manifest(client, "repo", digest, payload, params={"tag": ["ok", "-bad"]})
    assert_bare(r, 400)
    await assert_no_manifest(client, "repo", digest)
    await assert_no_manifest(client, "repo", "ok")


@pytest.mark.parametrize("tag", ["-leading-dash", ".dot", "a" * 129, "with space", "tag/slash"])
async def test_put_invalid_tag(client: httpx.AsyncClient, tag: str) -> None:
    config, layer = await blobs_for(client, "repo")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    r = await put_manifest(client, "repo", tag, payload)
    if "/" in tag:  # becomes part of the path: no such endpoint, or an invalid name
        assert r.status_code in (400, 404)
    else:
        assert_bare(r, 400)
    await assert_no_manifest(client, "repo", digest_of(payload))


async def test_longest_valid_tag(client: httpx.AsyncClient) -> None:
    tag = "T" + "a_b.c-" * 21 + "x"  # 128 characters
    assert len(tag) == 128
    image = await push_image(client, "repo", tag)
    await assert_manifest(client, "repo", tag, image.payload, OCI_MANIFEST)


async def test_retag_moves_the_tag(client: httpx.AsyncClient) -> None:
    first = await push_image(client, "repo", "latest")
    second = await push_image(client, "repo", "latest")
    await assert_manifest(client, "repo", "latest", second.payload, OCI_MANIFEST)
    # The old manifest is still there by digest.
    await assert_manifest(client, "repo", first.digest, first.payload, OCI_MANIFEST)


async def test_content_type_parameters_are_ignored(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "repo")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    r = await put_manifest(client, "repo", "v1", payload, f"{OCI_MANIFEST}; charset=utf-8")
    assert r.status_code == 201, r.text
    await assert_manifest(client, "repo", "v1", payload, OCI_MANIFEST)


async def test_media_type_from_content_type_when_payload_has_none(
    client: httpx.AsyncClient,
) -> None:
    config, layer = await blobs_for(client, "repo")
    doc = json.loads(image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)]))
    del doc["mediaType"]
    payload = json.dumps(doc).encode()
    r = await put_manifest(client, "repo", "v1", payload, OCI_MANIFEST)
    assert r.status_code == 201, r.text
    await assert_manifest(client, "repo", "v1", payload, OCI_MANIFEST)


# -- content negotiation


async def test_accept_negotiation(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "repo", "v1")
    url = "/v2/repo/manifests/v1"
    for accept in (
        OCI_MANIFEST,
        f"{DOCKER_MANIFEST}, {OCI_MANIFEST}",
        f"{OCI_INDEX};q=0.5, {OCI_MANIFEST};q=0.9",
        "*/*",
        "application/*",
    ):
        r = await client.get(url, headers={"accept": accept})
        assert r.status_code == 200, accept
        assert r.content == image.payload
        assert r.headers["content-type"] == OCI_MANIFEST
    # Several Accept lines combine.
    r = await client.get(url, headers=[("accept", DOCKER_MANIFEST), ("accept", OCI_MANIFEST)])
    assert r.status_code == 200
    for accept in (DOCKER_MANIFEST, f"{DOCKER_MANIFEST}, {DOCKER_LIST}", "text/*"):
        for method in ("GET", "HEAD"):
            r = await client.request(method, url, headers={"accept": accept})
            assert r.status_code == 404, (method, accept)
            if method == "GET":
                assert_error(r, 404, "MANIFEST_UNKNOWN")


# -- size limits


def padded_manifest(config: bytes, size: int) -> bytes:
    base = image_manifest(descriptor(OCI_CONFIG, config), [], annotations={"pad": ""})
    payload = base.replace(b'"pad": ""', b'"pad": "' + b"x" * (size - len(base)) + b'"')
    assert len(payload) == size
    json.loads(payload)
    return payload


async def test_manifest_of_exactly_4_mib_is_accepted(client: httpx.AsyncClient) -> None:
    config = b"{}"
    await push_blob(client, "big", config)
    payload = padded_manifest(config, MAX)
    r = await put_manifest(client, "big", "max", payload)
    assert r.status_code == 201, r.text[:200]
    await assert_manifest(client, "big", "max", payload, OCI_MANIFEST)


@pytest.mark.parametrize("streamed", [False, True])
async def test_manifest_over_4_mib_is_rejected(client: httpx.AsyncClient, streamed: bool) -> None:
    config = b"{}"
    await push_blob(client, "big", config)
    payload = padded_manifest(config, MAX + 1)
    content = chunks(payload[:MAX], payload[MAX:]) if streamed else payload
    r = await client.put(
        "/v2/big/manifests/over", content=content, headers={"content-type": OCI_MANIFEST}
    )
    assert_error(r, 413, "SIZE_INVALID")
    await assert_no_manifest(client, "big", "over")
    await assert_no_manifest(client, "big", digest_of(payload))


@pytest.mark.parametrize("delta", [-1, 1])
async def test_manifest_content_length_mismatch(client: httpx.AsyncClient, delta: int) -> None:
    config, layer = await blobs_for(client, "repo")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    r = await client.put(
        "/v2/repo/manifests/v1",
        content=payload,
        headers={"content-type": OCI_MANIFEST, "content-length": str(len(payload) + delta)},
    )
    assert_error(r, 400, "SIZE_INVALID")
    await assert_no_manifest(client, "repo", "v1")


# -- validation


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[1, 2]",
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"',
        b"\xff\xfe{}",
        b'{"schemaVersion": 3, "mediaType": "application/vnd.oci.image.manifest.v1+json",'
        b' "config": {"mediaType": "a/b", "digest": "sha256:'
        + b"0" * 64
        + b'", "size": 1}, "layers": []}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",'
        b' "layers": []}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",'
        b' "config": {"mediaType": "a/b", "digest": "sha256:zz", "size": 1}, "layers": []}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",'
        b' "config": {"mediaType": "a/b", "digest": "sha256:'
        + b"0" * 64
        + b'", "size": -1}, "layers": []}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",'
        b' "config": {"mediaType": "a/b", "digest": "sha256:'
        + b"0" * 64
        + b'", "size": 1}, "layers": {}}',
        b'{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json"}',
        b'{"schemaVersion": 2, "mediaType": "text/plain", "manifests": []}',
    ],
)
async def test_invalid_manifest(client: httpx.AsyncClient, payload: bytes) -> None:
    r = await client.put("/v2/repo/manifests/v1", content=payload)
    assert_error(r, 400, "MANIFEST_INVALID")
    await assert_no_manifest(client, "repo", "v1")


async def test_media_type_disagreeing_with_content_type(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "repo")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    r = await put_manifest(client, "repo", "v1", payload, DOCKER_MANIFEST)
    assert_error(r, 400, "MANIFEST_INVALID")
    await assert_no_manifest(client, "repo", "v1")
    await assert_no_manifest(client, "repo", digest_of(payload))


async def test_missing_blob(client: httpx.AsyncClient) -> None:
    config = b"{}"
    await push_blob(client, "repo", config)
    missing = random_blob(10)
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, missing)])
    r = await put_manifest(client, "repo", "v1", payload)
    error = assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    assert error["detail"] == {"digest": digest_of(missing)}
    await assert_no_manifest(client, "repo", "v1")
    await assert_no_manifest(client, "repo", digest_of(payload))


async def test_missing_config_blob(client: httpx.AsyncClient) -> None:
    layer = random_blob(10)
    await push_blob(client, "repo", layer)
    payload = image_manifest(descriptor(OCI_CONFIG, b"{}"), [descriptor(OCI_LAYER, layer)])
    assert_error(await put_manifest(client, "repo", "v1", payload), 400, "MANIFEST_BLOB_UNKNOWN")


async def test_blob_in_another_repository_is_missing(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "elsewhere")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    r = await put_manifest(client, "repo", "v1", payload)
    assert_error(r, 400, "MANIFEST_BLOB_UNKNOWN")
    await assert_no_manifest(client, "repo", "v1")


async def test_descriptor_size_must_match_blob(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "repo")
    wrong = {**descriptor(OCI_LAYER, layer), "size": len(layer) + 1}
    payload = image_manifest(descriptor(OCI_CONFIG, config), [wrong])
    assert_error(await put_manifest(client, "repo", "v1", payload), 400, "MANIFEST_INVALID")
    await assert_no_manifest(client, "repo", "v1")


async def test_digest_reference_must_match_payload(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "repo")
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)])
    for wrong in (fake_digest(), digest_of(payload + b" "), fake_digest("sha512")):
        r = await put_manifest(client, "repo", wrong, payload)
        assert_error(r, 400, "DIGEST_INVALID")
        await assert_no_manifest(client, "repo", wrong)
    await assert_no_manifest(client, "repo", digest_of(payload))


@pytest.mark.parametrize("reference", ["sha256:abc", "md5:" + "a" * 32, "sha256:" + "G" * 64])
async def test_malformed_digest_reference(client: httpx.AsyncClient, reference: str) -> None:
    image = await push_image(client, "repo", "v1")
    r = await put_manifest(client, "repo", reference, image.payload)
    assert_error(r, 400, "DIGEST_INVALID")
    for method in ("GET", "DELETE"):
        r = await client.request(method, f"/v2/repo/manifests/{reference}")
        assert_error(r, 400, "DIGEST_INVALID")


async def test_subject_need_not_exist(client: httpx.AsyncClient) -> None:
    config, layer = await blobs_for(client, "repo")
    subject = {"mediaType": OCI_MANIFEST, "digest": fake_digest(), "size": 1234}
    payload = image_manifest(
        descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer)], subject=subject
    )
    r = await put_manifest(client, "repo", digest_of(payload), payload)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == subject["digest"]
    await assert_manifest(client, "repo", digest_of(payload), payload, OCI_MANIFEST)


# -- GET errors


async def test_unknown_manifest(client: httpx.AsyncClient) -> None:
    await push_image(client, "repo", "v1")
    assert_error(await client.get("/v2/repo/manifests/v2"), 404, "MANIFEST_UNKNOWN")
    assert_error(await client.get(f"/v2/repo/manifests/{fake_digest()}"), 404, "MANIFEST_UNKNOWN")
    r = await client.head("/v2/repo/manifests/v2")
    assert r.status_code == 404
    assert r.content == b""
    # An invalid tag can name nothing.
    assert_error(await client.get("/v2/repo/manifests/-x"), 404, "MANIFEST_UNKNOWN")


async def test_manifest_in_unknown_repository(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/v2/no/such/manifests/latest"), 404, "NAME_UNKNOWN")
    r = await client.get(f"/v2/no/such/manifests/{fake_digest()}")
    assert_error(r, 404, "NAME_UNKNOWN")


async def test_manifest_is_private_to_its_repository(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "one", "v1")
    await push_image(client, "two", "other")
    assert_error(await client.get(f"/v2/two/manifests/{image.digest}"), 404, "MANIFEST_UNKNOWN")
    assert_error(await client.get("/v2/two/manifests/v1"), 404, "MANIFEST_UNKNOWN")


# -- DELETE


async def test_delete_by_tag_removes_only_that_tag(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "repo", "a")
    r = await put_manifest(client, "repo", "b", image.payload)
    assert r.status_code == 201
    r = await client.delete("/v2/repo/manifests/a")
    assert r.status_code == 202
    assert r.content == b""
    assert_error(await client.get("/v2/repo/manifests/a"), 404, "MANIFEST_UNKNOWN")
    await assert_manifest(client, "repo", "b", image.payload, OCI_MANIFEST)
    await assert_manifest(client, "repo", image.digest, image.payload, OCI_MANIFEST)
    assert await tags_of(client, "repo") == ["b"]
    assert_error(await client.delete("/v2/repo/manifests/a"), 404, "MANIFEST_UNKNOWN")


async def test_delete_by_digest_removes_its_tags(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "repo", "a")
    await put_manifest(client, "repo", "b", image.payload)
    other = await push_image(client, "repo", "c")
    r = await client.delete(f"/v2/repo/manifests/{image.digest}")
    assert r.status_code == 202
    for reference in ("a", "b", image.digest):
        assert_error(await client.get(f"/v2/repo/manifests/{reference}"), 404, "MANIFEST_UNKNOWN")
    assert await tags_of(client, "repo") == ["c"]
    await assert_manifest(client, "repo", "c", other.payload, OCI_MANIFEST)
    # Its blobs stay: other manifests may use them.
    r = await client.get(f"/v2/repo/blobs/{digest_of(image.config)}")
    assert r.status_code == 200
    r = await client.delete(f"/v2/repo/manifests/{image.digest}")
    assert_error(r, 404, "MANIFEST_UNKNOWN")


async def test_delete_then_push_again(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "repo", "a")
    assert (await client.delete(f"/v2/repo/manifests/{image.digest}")).status_code == 202
    r = await put_manifest(client, "repo", "a", image.payload)
    assert r.status_code == 201
    await assert_manifest(client, "repo", "a", image.payload, OCI_MANIFEST)


async def test_delete_unknown(client: httpx.AsyncClient) -> None:
    await push_image(client, "repo", "v1")
    assert_error(await client.delete("/v2/repo/manifests/nope"), 404, "MANIFEST_UNKNOWN")
    r = await client.delete(f"/v2/repo/manifests/{fake_digest()}")
    assert_error(r, 404, "MANIFEST_UNKNOWN")
    r = await client.delete(f"/v2/unknown/repo/manifests/{fake_digest()}")
    assert r.status_code == 404
    assert_error(await client.delete("/v2/unknown/manifests/tag"), 404, "MANIFEST_UNKNOWN")


async def test_delete_in_one_repository_leaves_the_other(client: httpx.AsyncClient) -> None:
    image: Image = await push_image(client, "one", "v1")
    for blob in (image.config, *image.layers):
        await push_blob(client, "two", blob)
    assert (await put_manifest(client, "two", "v1", image.payload)).status_code == 201
    assert (await client.delete(f"/v2/one/manifests/{image.digest}")).status_code == 202
    await assert_manifest(client, "two", "v1", image.payload, OCI_MANIFEST)
    await assert_no_manifest(client, "one", "v1")
