"""oras-py (the ORAS Python SDK) against a real ``dockyard serve``: artifacts, subjects and
the referrers API.

oras-py pushes files as artifacts and can set a manifest ``subject``, but it has no
``artifactType`` field and no referrers call: the artifact manifest with an explicit
``artifactType`` is built here and sent through oras-py's own requests (its blobs through
``upload_blob``), and referrers are listed with plain HTTP.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import httpx
import oras.client
import oras.defaults
import oras.oci
import pytest

from tests.e2e.conftest import Skopeo
from tests.imagegen import OCI_INDEX, OCI_MANIFEST, OCILayout, build_image, make_layer, sha256
from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e

UNKNOWN_CONFIG = "application/vnd.unknown.config.v1+json"
SIGNATURE_TYPE = "application/vnd.example.signature.v1+json"
SBOM_TYPE = "application/vnd.example.sbom.v1+json"
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
TITLE = "org.opencontainers.image.title"


def client(registry: DockyardServer) -> Any:
    return oras.client.OrasClient(hostname=registry.host, insecure=True)


def manifest_of(registry: DockyardServer, repository: str, reference: str) -> httpx.Response:
    r = httpx.get(
        f"{registry.url}/v2/{repository}/manifests/{reference}",
        headers={"accept": f"{OCI_MANIFEST}, {OCI_INDEX}"},
    )
    assert r.status_code == 200, r.text
    return r


def referrers(
    registry: DockyardServer, repository: str, digest: str, artifact_type: str | None = None
) -> httpx.Response:
    params = {"artifactType": artifact_type} if artifact_type else {}
    r = httpx.get(f"{registry.url}/v2/{repository}/referrers/{digest}", params=params)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == OCI_INDEX
    return r


def subject_of(registry: DockyardServer, repository: str, reference: str) -> Any:
    r = manifest_of(registry, repository, reference)
    return oras.oci.Subject(
        mediaType=r.headers["content-type"],
        digest=r.headers["docker-content-digest"],
        size=len(r.content),
    )


def test_artifact_push_pull_and_referrers(registry: DockyardServer, tmp_path: Path) -> None:
    oras_client = client(registry)
    repo = "artifacts/doc"
    target = f"{registry.host}/{repo}"

    # 1. An artifact: one file, the default (unknown) config media type.
    readme = tmp_path / "readme.md"
    readme.write_bytes(b"# dockyard artifact\n" + bytes(range(256)) * 40)
    r = oras_client.push(
        target=f"{target}:v1", files=[str(readme)], disable_path_validation=True, quiet=True
    )
    assert r.status_code == 201
    doc = manifest_of(registry, repo, "v1")
    assert doc.headers["docker-content-digest"] == r.headers["docker-content-digest"]
    manifest = doc.json()
    assert manifest["config"]["mediaType"] == UNKNOWN_CONFIG
    assert manifest["layers"][0]["annotations"][TITLE] == "readme.md"
    assert manifest["layers"][0]["digest"] == sha256(readme.read_bytes())
    subject = subject_of(registry, repo, "v1")

    # 2. A signature referring to it, pushed by oras-py with its subject support; its
    # artifact type is its config's media type.
    signature = tmp_path / "signature.json"
    signature.write_text(json.dumps({"signed": subject.digest}))
    sig_config = tmp_path / "sig-config.json"
    sig_config.write_text("{}")
    r = oras_client.push(
        target=f"{target}:sig",
        files=[f"{signature}:application/vnd.example.signature.payload"],
        manifest_config=f"{sig_config}:{SIGNATURE_TYPE}",
        manifest_annotations={"org.example.kind": "signature"},
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    assert r.status_code == 201
    assert r.headers["oci-subject"] == subject.digest
    sig_digest = r.headers["docker-content-digest"]

    # 3. An SBOM with an explicit artifactType and the empty config, pushed by digest, no tag.
    sbom = tmp_path / "sbom.spdx.json"
    sbom.write_text(json.dumps({"spdxVersion": "SPDX-2.3", "name": "dockyard"}))
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    container = oras_client.get_container(f"{target}:unused")
    config = oras.oci.NewLayer(str(empty), media_type=OCI_EMPTY)
    layer = oras.oci.NewLayer(str(sbom), media_type="application/spdx+json")
    layer["annotations"] = {TITLE: sbom.name}
    for path, descriptor in ((empty, config), (sbom, layer)):
        upload = oras_client.upload_blob(str(path), container, descriptor)
        assert upload.status_code in (200, 201), upload.text
    sbom_manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": SBOM_TYPE,
        "config": config,
        "layers": [layer],
        "subject": {
            "mediaType": subject.mediaType,
            "digest": subject.digest,
            "size": subject.size,
        },
        "annotations": {"org.example.kind": "sbom"},
    }
    payload = json.dumps(sbom_manifest, separators=(",", ":")).encode()
    sbom_digest = sha256(payload)
    put = oras_client.do_request(
        f"http://{registry.host}/v2/{repo}/manifests/{sbom_digest}",
        "PUT",
        data=payload,
        headers={"Content-Type": OCI_MANIFEST},
    )
    assert put.status_code == 201, put.text
    assert put.headers["docker-content-digest"] == sbom_digest
    assert put.headers["oci-subject"] == subject.digest

    # Referrers: both, then each kind alone through the artifactType filter.
    listing = referrers(registry, repo, subject.digest)
    assert "oci-filters-applied" not in listing.headers
    index = listing.json()
    assert index["mediaType"] == OCI_INDEX
    found = {m["digest"]: m for m in index["manifests"]}
    assert set(found) == {sig_digest, sbom_digest}
    assert found[sig_digest]["artifactType"] == SIGNATURE_TYPE
    assert found[sig_digest]["annotations"] == {"org.example.kind": "signature"}
    assert found[sbom_digest]["artifactType"] == SBOM_TYPE
    assert found[sbom_digest]["size"] == len(payload)
    assert found[sbom_digest]["mediaType"] == OCI_MANIFEST

    for wanted, digest in ((SBOM_TYPE, sbom_digest), (SIGNATURE_TYPE, sig_digest)):
        filtered = referrers(registry, repo, subject.digest, wanted)
        assert filtered.headers["oci-filters-applied"] == "artifactType"
        assert [m["digest"] for m in filtered.json()["manifests"]] == [digest]
    none = referrers(registry, repo, subject.digest, "application/vnd.example.none")
    assert none.json()["manifests"] == []
    # The referrers themselves are referred to by nothing.
    assert referrers(registry, repo, sbom_digest).json()["manifests"] == []

    # Pull everything back with oras-py and compare the bytes.
    files = oras_client.pull(target=f"{target}:v1", outdir=str(tmp_path / "pull-v1"))
    assert [Path(f).name for f in files] == ["readme.md"]
    assert Path(files[0]).read_bytes() == readme.read_bytes()
    files = oras_client.pull(target=f"{target}@{sbom_digest}", outdir=str(tmp_path / "pull-sbom"))
    assert [Path(f).read_bytes() for f in files] == [sbom.read_bytes()]
    fetched = oras_client.get_manifest(f"{target}@{sbom_digest}")
    assert fetched == sbom_manifest
    files = oras_client.pull(target=f"{target}:sig", outdir=str(tmp_path / "pull-sig"))
    assert [Path(f).read_bytes() for f in files] == [signature.read_bytes()]


def test_signature_on_an_image_pushed_by_skopeo(
    skopeo: Skopeo, registry: DockyardServer, tmp_path: Path
) -> None:
    layout = OCILayout(tmp_path / "layout")
    image = layout.add_image("v1", build_image([make_layer(300)]))
    skopeo.copy(layout.ref("v1"), skopeo.docker("signed/app:v1"), "--preserve-digests")
    assert referrers(registry, "signed/app", image.digest).json()["manifests"] == []

    oras_client = client(registry)
    signature = tmp_path / "cosign.sig"
    signature.write_bytes(b"not really a signature")
    subject = oras.oci.Subject(OCI_MANIFEST, image.digest, image.manifest.size)
    r = oras_client.push(
        target=f"{registry.host}/signed/app:sig",
        files=[str(signature)],
        # No such file: oras-py then uploads its empty "{}" config with this media type.
        manifest_config=f"{tmp_path / 'absent.json'}:{SIGNATURE_TYPE}",
        subject=subject,
        disable_path_validation=True,
        quiet=True,
    )
    assert r.status_code == 201
    found = referrers(registry, "signed/app", image.digest).json()["manifests"]
    assert [m["digest"] for m in found] == [r.headers["docker-content-digest"]]
    assert found[0]["artifactType"] == SIGNATURE_TYPE

    # The image is untouched and still pulls as before.
    assert skopeo.raw("signed/app:v1") == image.manifest.data
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", skopeo.docker("signed/app")).stdout)
    assert sorted(tags["Tags"]) == ["sig", "v1"]
    # skopeo deletes the signature manifest by digest: it is no longer a referrer.
    skopeo("delete", "--tls-verify=false", skopeo.docker("signed/app:sig"))
    assert referrers(registry, "signed/app", image.digest).json()["manifests"] == []


def test_chunked_push_of_files_and_a_directory(registry: DockyardServer, tmp_path: Path) -> None:
    oras_client = client(registry)
    big = tmp_path / "model.bin"
    big.write_bytes(random.Random(500).randbytes(1_300_000))
    tree = tmp_path / "docs"
    (tree / "sub").mkdir(parents=True)
    (tree / "index.txt").write_text("top\n")
    (tree / "sub" / "page.txt").write_text("nested\n" * 100)

    # oras-py's chunked upload: POST, one PATCH per 200 kB with Content-Range, then PUT.
    r = oras_client.push(
        target=f"{registry.host}/chunked/art:v1",
        files=[str(big), str(tree)],
        do_chunked=True,
        chunk_size=200_000,
        disable_path_validation=True,
        quiet=True,
    )
    assert r.status_code == 201
    manifest = manifest_of(registry, "chunked/art", "v1").json()
    layers = {layer["annotations"][TITLE]: layer for layer in manifest["layers"]}
    assert layers["model.bin"]["digest"] == sha256(big.read_bytes())
    assert layers["docs"]["mediaType"] == oras.defaults.default_blob_dir_media_type

    out = tmp_path / "out"
    files = oras_client.pull(target=f"{registry.host}/chunked/art:v1", outdir=str(out))
    assert sorted(Path(f).name for f in files) == ["docs", "model.bin"]
    assert (out / "model.bin").read_bytes() == big.read_bytes()
    assert (out / "docs" / "index.txt").read_text() == "top\n"
    assert (out / "docs" / "sub" / "page.txt").read_text() == "nested\n" * 100


def test_tags_pages_and_delete(registry_small_pages: DockyardServer, tmp_path: Path) -> None:
    oras_client = client(registry_small_pages)
    note = tmp_path / "note.txt"
    note.write_text("tagged many times\n")
    target = f"{registry_small_pages.host}/paged/art"
    tags = [f"v{i}" for i in range(1, 6)]
    for tag in tags:
        # An annotation per tag makes each manifest (and digest) distinct.
        oras_client.push(
            target=f"{target}:{tag}",
            files=[str(note)],
            manifest_annotations={"org.example.tag": tag},
            disable_path_validation=True,
            quiet=True,
        )

    # The server pages by two; oras-py follows the Link headers.
    assert oras_client.get_tags(target) == tags
    assert oras_client.get_tags(target, N=3) == tags[:3]

    # oras-py deletes the manifest behind a tag, by digest.
    assert oras_client.delete_tag(target, "v3") is True
    assert oras_client.get_tags(target) == ["v1", "v2", "v4", "v5"]
    r = httpx.get(f"{registry_small_pages.url}/v2/paged/art/manifests/v3")
    assert r.status_code == 404
    files = oras_client.pull(target=f"{target}:v4", outdir=str(tmp_path / "out"))
    assert [Path(f).read_text() for f in files] == ["tagged many times\n"]
