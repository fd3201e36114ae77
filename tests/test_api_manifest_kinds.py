"""Every kind of manifest a registry stores: OCI images, indexes (nested, sparse),
Docker schema2 manifests and lists, artifacts, embedded data, non-distributable layers;
and the one it refuses, Docker schema1."""

from __future__ import annotations

import json

import httpx
import pytest

from tests.authfixtures import client_logged_in, settings_with_and_without_auth  # noqa: F401
from tests.conftest import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_LAYER,
    OCI_MANIFEST,
    assert_error,
    data_descriptor,
    descriptor,
    digest_of,
    fake_digest,
    image_manifest,
    index_manifest,
    push_blob,
    push_image,
    put_manifest,
    random_blob,
)

PLATFORMS = [("amd64", "linux"), ("arm64", "linux"), ("amd64", "windows")]


async def assert_served(
    client: httpx.AsyncClient, repo: str, reference: str, payload: bytes, media_type: str
) -> None:
    r = await client.get(f"/v2/{repo}/manifests/{reference}", headers={"accept": media_type})
    assert r.status_code == 200, r.text
    assert r.content == payload
    assert r.headers["content-type"] == media_type
    assert r.headers["docker-content-digest"] == (
        reference if ":" in reference else digest_of(payload)
    )


async def assert_absent(client: httpx.AsyncClient, repo: str, reference: str) -> None:
    r = await client.get(f"/v2/{repo}/manifests/{reference}")
    assert r.status_code == 404, r.text


def platform_entry(image_descriptor: dict[str, object], arch: str, os_: str) -> dict[str, object]:
    return {**image_descriptor, "platform": {"architecture": arch, "os": os_}}


async def test_oci_index(client: httpx.AsyncClient) -> None:
    images = [await push_image(client, "multi") for _ in PLATFORMS]
    payload = index_manifest(
        [platform_entry(i.descriptor, a, o) for i, (a, o) in zip(images, PLATFORMS, strict=True)],
        annotations={"org.opencontainers.image.ref.name": "v1"},
    )
    r = await put_manifest(client, "multi", "v1", payload, OCI_INDEX)
    assert r.status_code == 201, r.text
    assert r.headers["docker-content-digest"] == digest_of(payload)
    await assert_served(client, "multi", "v1", payload, OCI_INDEX)
    for image in images:
        await assert_served(client, "multi", image.digest, image.payload, OCI_MANIFEST)


async def test_nested_indexes(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "nest")
    inner = index_manifest([image.descriptor])
    assert (await put_manifest(client, "nest", digest_of(inner), inner, OCI_INDEX)).is_success
    middle = index_manifest([descriptor(OCI_INDEX, inner)])
    assert (await put_manifest(client, "nest", digest_of(middle), middle, OCI_INDEX)).is_success
    outer = index_manifest([descriptor(OCI_INDEX, middle), image.descriptor])
    r = await put_manifest(client, "nest", "top", outer, OCI_INDEX)
    assert r.status_code == 201, r.text
    await assert_served(client, "nest", "top", outer, OCI_INDEX)
    await assert_served(client, "nest", digest_of(middle), middle, OCI_INDEX)
    await assert_served(client, "nest", digest_of(inner), inner, OCI_INDEX)


async def test_sparse_index(client: httpx.AsyncClient) -> None:
    # A mirror may copy only some platforms: children that are not stored are accepted.
    present = await push_image(client, "sparse")
    absent = {"mediaType": OCI_MANIFEST, "digest": fake_digest(), "size": 1234}
    absent_index = {"mediaType": OCI_INDEX, "digest": fake_digest("sha512"), "size": 99}
    payload = index_manifest([present.descriptor, absent, absent_index])
    r = await put_manifest(client, "sparse", "v1", payload, OCI_INDEX)
    assert r.status_code == 201, r.text
    await assert_served(client, "sparse", "v1", payload, OCI_INDEX)
    await assert_absent(client, "sparse", str(absent["digest"]))


async def test_index_child_size_must_match_stored_child(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "idx")
    wrong = {**image.descriptor, "size": len(image.payload) + 1}
    payload = index_manifest([wrong])
    assert_error(
        await put_manifest(client, "idx", "v1", payload, OCI_INDEX), 400, "MANIFEST_INVALID"
    )
    await assert_absent(client, "idx", "v1")


async def test_empty_index(client: httpx.AsyncClient) -> None:
    payload = index_manifest([])
    r = await put_manifest(client, "empty", "v1", payload, OCI_INDEX)
    assert r.status_code == 201, r.text
    await assert_served(client, "empty", "v1", payload, OCI_INDEX)


async def test_docker_schema2_manifest(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "docker", "v1", media_type=DOCKER_MANIFEST)
    await assert_served(client, "docker", "v1", image.payload, DOCKER_MANIFEST)
    # An OCI-only client does not get it.
    r = await client.get("/v2/docker/manifests/v1", headers={"accept": OCI_MANIFEST})
    assert_error(r, 404, "MANIFEST_UNKNOWN")


async def test_docker_manifest_list(client: httpx.AsyncClient) -> None:
    images = [await push_image(client, "dlist", media_type=DOCKER_MANIFEST) for _ in PLATFORMS]
    payload = index_manifest(
        [platform_entry(i.descriptor, a, o) for i, (a, o) in zip(images, PLATFORMS, strict=True)],
        media_type=DOCKER_LIST,
    )
    r = await put_manifest(client, "dlist", "v1", payload, DOCKER_LIST)
    assert r.status_code == 201, r.text
    await assert_served(client, "dlist", "v1", payload, DOCKER_LIST)
    r = await client.get(
        "/v2/dlist/manifests/v1", headers={"accept": f"{DOCKER_MANIFEST}, {OCI_INDEX}"}
    )
    assert r.status_code == 404


async def test_docker_manifest_cannot_have_subject(client: httpx.AsyncClient) -> None:
    base = await push_image(client, "docker", "base", media_type=DOCKER_MANIFEST)
    config, layer = b"{}", random_blob(10)
    await push_blob(client, "docker", config)
    await push_blob(client, "docker", layer)
    payload = image_manifest(
        descriptor("application/vnd.docker.container.image.v1+json", config),
        [descriptor("application/vnd.docker.image.rootfs.diff.tar.gzip", layer)],
        DOCKER_MANIFEST,
        subject=base.descriptor,
    )
    r = await put_manifest(client, "docker", "signed", payload, DOCKER_MANIFEST)
    assert_error(r, 400, "MANIFEST_INVALID")
    await assert_absent(client, "docker", "signed")


async def test_artifact_with_unknown_config_type(client: httpx.AsyncClient) -> None:
    config = b'{"tool": "example"}'
    blob = random_blob(1000)
    await push_blob(client, "art", config)
    await push_blob(client, "art", blob)
    payload = image_manifest(
        descriptor("application/vnd.unknown.config.v1+json", config),
        [descriptor("application/vnd.example.data.v1.tar", blob)],
        artifactType="application/vnd.example.thing.v1",
    )
    r = await put_manifest(client, "art", "v1", payload)
    assert r.status_code == 201, r.text
    await assert_served(client, "art", "v1", payload, OCI_MANIFEST)


async def test_artifact_with_empty_config_and_data(client: httpx.AsyncClient) -> None:
    # The data field embeds the content, so those blobs need not be pushed.
    payload = image_manifest(
        data_descriptor(OCI_EMPTY, b"{}"),
        [data_descriptor("application/vnd.example.note.v1+txt", b"hello, registry")],
        artifactType="application/vnd.example.note.v1",
        annotations={"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    )
    r = await put_manifest(client, "art", "note", payload)
    assert r.status_code == 201, r.text
    await assert_served(client, "art", "note", payload, OCI_MANIFEST)
    # Carrying data does not make the blob readable.
    r = await client.get(f"/v2/art/blobs/{digest_of(b'hello, registry')}")
    assert r.status_code == 404


async def test_artifact_without_layers(client: httpx.AsyncClient) -> None:
    await push_blob(client, "art", b"{}")
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.empty.v1",
        "config": descriptor(OCI_EMPTY, b"{}"),
        "layers": [descriptor(OCI_EMPTY, b"{}")],
    }
    payload = json.dumps(doc).encode()
    r = await put_manifest(client, "art", "empty", payload)
    assert r.status_code == 201, r.text
    await assert_served(client, "art", "empty", payload, OCI_MANIFEST)


@pytest.mark.parametrize(
    "bad",
    [
        {"data": "aGVsbG8="},  # "hello": not the content the digest names
        {"data": "not base64!"},
        {"data": 42},
    ],
)
async def test_data_must_match_descriptor(
    client: httpx.AsyncClient, bad: dict[str, object]
) -> None:
    layer = {**descriptor("application/vnd.example.note.v1+txt", b"hello, registry"), **bad}
    payload = image_manifest(data_descriptor(OCI_EMPTY, b"{}"), [layer])
    assert_error(await put_manifest(client, "art", "bad", payload), 400, "MANIFEST_INVALID")
    await assert_absent(client, "art", "bad")


@pytest.mark.parametrize(
    ("media_type", "layer_type", "urls"),
    [
        (OCI_MANIFEST, "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", None),
        (
            OCI_MANIFEST,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            ["https://example.com/layer.tar.gz"],
        ),
        (DOCKER_MANIFEST, "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", None),
    ],
)
async def test_non_distributable_layers_need_not_be_pushed(
    client: httpx.AsyncClient, media_type: str, layer_type: str, urls: list[str] | None
) -> None:
    config, layer = b'{"os": "windows"}', random_blob(100)
    await push_blob(client, "win", config)
    await push_blob(client, "win", layer)
    foreign = descriptor(layer_type, random_blob(50))
    if urls:
        foreign["urls"] = urls
    config_type = (
        "application/vnd.docker.container.image.v1+json"
        if media_type == DOCKER_MANIFEST
        else OCI_CONFIG
    )
    regular_type = (
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
        if media_type == DOCKER_MANIFEST
        else OCI_LAYER
    )
    payload = image_manifest(
        descriptor(config_type, config), [foreign, descriptor(regular_type, layer)], media_type
    )
    r = await put_manifest(client, "win", "v1", payload, media_type)
    assert r.status_code == 201, r.text
    await assert_served(client, "win", "v1", payload, media_type)


@pytest.mark.parametrize(
    ("content_type", "media_type_field"),
    [
        ("application/vnd.docker.distribution.manifest.v1+prettyjws", None),
        ("application/vnd.docker.distribution.manifest.v1+json", None),
        ("application/json", None),
        (None, "application/vnd.docker.distribution.manifest.v1+json"),
        (None, None),
    ],
)
async def test_schema1_rejected(
    client: httpx.AsyncClient, content_type: str | None, media_type_field: str | None
) -> None:
    doc: dict[str, object] = {
        "schemaVersion": 1,
        "name": "legacy",
        "tag": "v1",
        "architecture": "amd64",
        "fsLayers": [{"blobSum": fake_digest()}],
        "history": [{"v1Compatibility": "{}"}],
    }
    if media_type_field:
        doc["mediaType"] = media_type_field
    payload = json.dumps(doc).encode()
    r = await put_manifest(client, "legacy", "v1", payload, content_type)
    assert_error(r, 400, "MANIFEST_INVALID")
    await assert_absent(client, "legacy", "v1")


async def test_manifest_referencing_sha512_and_blake3_blobs(client: httpx.AsyncClient) -> None:
    config = b'{"os": "linux"}'
    layer_a, layer_b = random_blob(300), random_blob(400)
    await push_blob(client, "algos", config, "sha512")
    await push_blob(client, "algos", layer_a, "blake3")
    await push_blob(client, "algos", layer_b, "sha256")
    payload = image_manifest(
        descriptor(OCI_CONFIG, config, "sha512"),
        [descriptor(OCI_LAYER, layer_a, "blake3"), descriptor(OCI_LAYER, layer_b)],
    )
    r = await put_manifest(client, "algos", "v1", payload)
    assert r.status_code == 201, r.text
    await assert_served(client, "algos", "v1", payload, OCI_MANIFEST)
    # A blob pushed under one algorithm is not known under another digest of it.
    wrong = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_LAYER, layer_b)])
    assert_error(await put_manifest(client, "algos", "v2", wrong), 400, "MANIFEST_BLOB_UNKNOWN")
