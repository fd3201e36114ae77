"""The referrers API: GET /v2/<name>/referrers/<digest>."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from tests.authfixtures import client_logged_in, settings_with_and_without_auth  # noqa: F401
from tests.conftest import (
    OCI_CONFIG,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    assert_error,
    data_descriptor,
    descriptor,
    digest_of,
    fake_digest,
    image_manifest,
    index_manifest,
    parse_link,
    push_blob,
    push_image,
    put_manifest,
    sqlite_and_postgres,
)

SBOM = "application/vnd.example.sbom.v1"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Every test here runs on SQLite and on a real PostgreSQL."""
    return sqlite_and_postgres(request)


SIGNATURE = "application/vnd.example.signature.v1"
SIG_CONFIG = "application/vnd.example.signature.config.v1+json"


async def push_referrer(
    client: httpx.AsyncClient,
    repo: str,
    subject: dict[str, Any],
    artifact_type: str | None = SBOM,
    annotations: dict[str, str] | None = None,
    config_type: str = OCI_EMPTY,
    algorithm: str = "sha256",
) -> dict[str, Any]:
    """Push an artifact manifest about ``subject``; returns its expected referrers entry."""
    config = b"{}" if config_type == OCI_EMPTY else json.dumps({"k": repr(annotations)}).encode()
    extra: dict[str, Any] = {"subject": subject}
    if artifact_type is not None:
        extra["artifactType"] = artifact_type
    if annotations:
        extra["annotations"] = annotations
    payload = image_manifest(
        data_descriptor(config_type, config),
        [data_descriptor("application/vnd.example.payload", json.dumps(extra).encode())],
        **extra,
    )
    digest = digest_of(payload, algorithm)
    r = await put_manifest(client, repo, digest, payload)
    assert r.status_code == 201, r.text
    assert r.headers["oci-subject"] == subject["digest"]
    entry: dict[str, Any] = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(payload)}
    entry["artifactType"] = artifact_type or config_type
    if annotations:
        entry["annotations"] = annotations
    return entry


async def get_referrers(
    client: httpx.AsyncClient, repo: str, digest: str, **params: str
) -> httpx.Response:
    r = await client.get(f"/v2/{repo}/referrers/{digest}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == OCI_INDEX
    doc = r.json()
    assert doc["schemaVersion"] == 2
    assert doc["mediaType"] == OCI_INDEX
    assert isinstance(doc["manifests"], list)
    return r


def by_digest(entries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {e["digest"]: e for e in entries}
    assert len(out) == len(entries), "duplicate referrers"
    return out


async def test_referrers(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "app", "v1")
    sbom = await push_referrer(
        client,
        "app",
        image.descriptor,
        SBOM,
        {"org.opencontainers.image.created": "2024-01-01T00:00:00Z", "format": "spdx"},
    )
    # No artifactType: the config's media type stands in for it.
    sig = await push_referrer(
        client, "app", image.descriptor, None, {"fingerprint": "abcd"}, SIG_CONFIG
    )
    # An index referrer with and without artifactType (omitted then).
    idx_payload = index_manifest(
        [], subject=image.descriptor, artifactType="application/vnd.example.bundle.v1"
    )
    assert (await put_manifest(client, "app", "bundle", idx_payload, OCI_INDEX)).is_success
    bare_payload = index_manifest([], subject=image.descriptor, annotations={"k": "v"})
    assert (await put_manifest(client, "app", "bare", bare_payload, OCI_INDEX)).is_success

    r = await get_referrers(client, "app", image.digest)
    assert "oci-filters-applied" not in r.headers
    assert "link" not in r.headers
    assert by_digest(r.json()["manifests"]) == {
        sbom["digest"]: sbom,
        sig["digest"]: sig,
        digest_of(idx_payload): {
            "mediaType": OCI_INDEX,
            "digest": digest_of(idx_payload),
            "size": len(idx_payload),
            "artifactType": "application/vnd.example.bundle.v1",
        },
        digest_of(bare_payload): {
            "mediaType": OCI_INDEX,
            "digest": digest_of(bare_payload),
            "size": len(bare_payload),
            "annotations": {"k": "v"},
        },
    }
    # Not a referrer of anything else.
    r = await get_referrers(client, "app", sbom["digest"])
    assert r.json()["manifests"] == []


async def test_image_manifest_artifact_type_defaults_to_config_type(
    client: httpx.AsyncClient,
) -> None:
    image = await push_image(client, "app", "v1")
    # A plain image (config + layers) may have a subject too.
    config = b'{"os": "linux"}'
    await push_blob(client, "app", config)
    payload = image_manifest(descriptor(OCI_CONFIG, config), [], subject=image.descriptor)
    assert (await put_manifest(client, "app", digest_of(payload), payload)).is_success
    r = await get_referrers(client, "app", image.digest)
    assert r.json()["manifests"] == [
        {
            "mediaType": OCI_MANIFEST,
            "digest": digest_of(payload),
            "size": len(payload),
            "artifactType": OCI_CONFIG,
        }
    ]


async def test_referrers_of_unknown_digest_is_empty(client: httpx.AsyncClient) -> None:
    await push_image(client, "app", "v1")
    for repo, digest in (
        ("app", fake_digest()),
        ("app", fake_digest("sha512")),
        ("app", fake_digest("blake3")),
        ("never/pushed", fake_digest()),
    ):
        r = await get_referrers(client, repo, digest)
        assert r.json()["manifests"] == []
        assert "link" not in r.headers


async def test_referrer_before_its_subject(client: httpx.AsyncClient) -> None:
    # The subject does not exist yet: push it later, the referrer is already listed.
    config, layer = b'{"os": "linux"}', b"layer"
    payload = image_manifest(descriptor(OCI_CONFIG, config), [descriptor(OCI_MANIFEST, layer)])
    subject = descriptor(OCI_MANIFEST, payload)
    entry = await push_referrer(client, "early", subject)
    r = await get_referrers(client, "early", subject["digest"])
    assert r.json()["manifests"] == [entry]
    await push_blob(client, "early", config)
    await push_blob(client, "early", layer)
    assert (await put_manifest(client, "early", "v1", payload)).status_code == 201
    r = await get_referrers(client, "early", subject["digest"])
    assert r.json()["manifests"] == [entry]


async def test_artifact_type_filter(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "app", "v1")
    sboms = [
        await push_referrer(client, "app", image.descriptor, SBOM, {"i": str(i)}) for i in range(3)
    ]
    await push_referrer(client, "app", image.descriptor, SIGNATURE)
    await push_referrer(client, "app", image.descriptor, None, None, SIG_CONFIG)

    r = await get_referrers(client, "app", image.digest, artifactType=SBOM)
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert by_digest(r.json()["manifests"]) == by_digest(sboms)

    r = await get_referrers(client, "app", image.digest, artifactType=SIG_CONFIG)
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert [e["artifactType"] for e in r.json()["manifests"]] == [SIG_CONFIG]

    r = await get_referrers(client, "app", image.digest, artifactType="application/none")
    assert r.headers["oci-filters-applied"] == "artifactType"
    assert r.json()["manifests"] == []

    r = await get_referrers(client, "app", image.digest)
    assert len(r.json()["manifests"]) == 5


@pytest.mark.parametrize("artifact_type", [None, SBOM])
async def test_referrers_pagination(client: httpx.AsyncClient, artifact_type: str | None) -> None:
    image = await push_image(client, "app", "v1")
    expected = [
        await push_referrer(client, "app", image.descriptor, SBOM, {"i": str(i)}) for i in range(7)
    ]
    await push_referrer(client, "app", image.descriptor, SIGNATURE)
    if artifact_type is None:
        expected = (await get_referrers(client, "app", image.digest)).json()["manifests"]
        assert len(expected) == 8
    params = {"n": "3"}
    if artifact_type:
        params["artifactType"] = artifact_type
    seen: list[dict[str, Any]] = []
    r = await get_referrers(client, "app", image.digest, **params)
    pages = 1
    while True:
        page = r.json()["manifests"]
        assert 1 <= len(page) <= 3
        seen += page
        if artifact_type:
            assert r.headers["oci-filters-applied"] == "artifactType"
        if "link" not in r.headers:
            break
        assert len(page) == 3
        link = parse_link(r.headers["link"])
        parts = urlsplit(link)
        query = parse_qs(parts.query)
        assert query["n"] == ["3"]
        if artifact_type:
            assert query["artifactType"] == [artifact_type]
        r = await client.get(link)
        assert r.status_code == 200
        assert r.headers["content-type"] == OCI_INDEX
        pages += 1
        assert pages < 10
    assert pages == 3
    assert by_digest(seen) == by_digest(expected)


async def test_referrers_n_zero(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "app", "v1")
    await push_referrer(client, "app", image.descriptor)
    r = await get_referrers(client, "app", image.digest, n="0")
    assert r.json()["manifests"] == []
    assert "link" not in r.headers


async def test_referrers_are_per_repository(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "one", "v1")
    entry = await push_referrer(client, "one", image.descriptor)
    await push_referrer(client, "two", image.descriptor)  # same subject digest, other repo
    r = await get_referrers(client, "one", image.digest)
    assert r.json()["manifests"] == [entry]


async def test_deleted_referrer_disappears(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "app", "v1")
    keep = await push_referrer(client, "app", image.descriptor, SBOM, {"keep": "1"})
    gone = await push_referrer(client, "app", image.descriptor, SBOM, {"keep": "0"})
    assert (await client.delete(f"/v2/app/manifests/{gone['digest']}")).status_code == 202
    r = await get_referrers(client, "app", image.digest)
    assert r.json()["manifests"] == [keep]


async def test_sha512_subject_and_referrer(client: httpx.AsyncClient) -> None:
    image = await push_image(client, "app")
    payload = image.payload
    sha512 = digest_of(payload, "sha512")
    assert (await put_manifest(client, "app", sha512, payload)).status_code == 201
    subject = {"mediaType": OCI_MANIFEST, "digest": sha512, "size": len(payload)}
    entry = await push_referrer(client, "app", subject, algorithm="sha512")
    assert entry["digest"].startswith("sha512:")
    r = await get_referrers(client, "app", sha512)
    assert r.json()["manifests"] == [entry]
    # The same content under its sha256 digest has no referrers.
    assert (await get_referrers(client, "app", image.digest)).json()["manifests"] == []


@pytest.mark.parametrize("bad", ["sha256:abc", "latest", "md5:" + "0" * 32, "sha256:" + "Z" * 64])
async def test_referrers_malformed_digest(client: httpx.AsyncClient, bad: str) -> None:
    assert_error(await client.get(f"/v2/app/referrers/{bad}"), 400, "DIGEST_INVALID")


async def test_referrers_invalid_name(client: httpx.AsyncClient) -> None:
    assert_error(await client.get(f"/v2/App/referrers/{fake_digest()}"), 400, "NAME_INVALID")
