"""skopeo against a real ``dockyard serve``: push, inspect, list, dedupe, pull, delete.

Images are built from scratch (``tests/imagegen.py``) so every digest is known before the
push; ``--preserve-digests`` makes skopeo fail rather than silently rewrite a manifest, so
a digest that comes back equal proves the registry kept the bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Skopeo, server_events
from tests.imagegen import (
    DOCKER_LAYER,
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    OCI_MANIFEST,
    Image,
    Index,
    Layer,
    OCILayout,
    build_image,
    build_index,
    layout_blob,
    layout_tags,
    make_layer,
    random_layers,
    sha256,
    write_dir_image,
    write_dir_index,
)
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e


@dataclass(frozen=True)
class Images:
    layout: OCILayout
    base: Layer
    v1: Image  # base + two layers of its own
    v2: Image  # base + one layer of its own
    multi: Index  # amd64 and arm64 images, both on base
    docker: Image  # a Docker schema2 image on base


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Images:
    layout = OCILayout(tmp_path_factory.mktemp("images") / "layout")
    base = make_layer(1, files=4, file_size=64 * 1024)
    v1 = layout.add_image("v1", build_image([base, *random_layers(2, 2)]))
    v2 = layout.add_image("v2", build_image([base, make_layer(3)]))
    amd64 = build_image([base, make_layer(4)], architecture="amd64")
    arm64 = build_image([base, make_layer(5)], architecture="arm64")
    multi = layout.add_index("multi", build_index([amd64, arm64]))
    docker = build_image([base, make_layer(6)], docker=True)
    return Images(layout, base, v1, v2, multi, docker)


def all_blobs(image: Image) -> list[tuple[str, bytes]]:
    return [
        (image.manifest.digest, image.manifest.data),
        (image.config.digest, image.config.data),
        *((layer.digest, layer.blob.data) for layer in image.layers),
    ]


def test_copy_in_inspect_and_list_tags(skopeo: Skopeo, images: Images) -> None:
    skopeo.copy(images.layout.ref("v1"), skopeo.docker("e2e/app:v1"), "--preserve-digests")

    info = json.loads(skopeo("inspect", "--tls-verify=false", skopeo.docker("e2e/app:v1")).stdout)
    assert info["Digest"] == images.v1.digest
    assert info["Layers"] == [layer.digest for layer in images.v1.layers]
    assert info["Architecture"] == "amd64"
    assert skopeo.raw("e2e/app:v1") == images.v1.manifest.data
    assert skopeo.raw(f"e2e/app@{images.v1.digest}") == images.v1.manifest.data
    config = skopeo(
        "inspect", "--tls-verify=false", "--config", "--raw", skopeo.docker("e2e/app:v1")
    ).stdout
    assert config == images.v1.config.data

    tags = json.loads(skopeo("list-tags", "--tls-verify=false", skopeo.docker("e2e/app")).stdout)
    assert tags["Tags"] == ["v1"]


def test_shared_layers_are_not_uploaded_again(
    skopeo: Skopeo, registry: DockyardServer, tmp_path: Path
) -> None:
    # Layers of its own, so what other tests pushed cannot be mounted from elsewhere.
    layout = OCILayout(tmp_path / "layout")
    base = make_layer(100, files=4, file_size=64 * 1024)
    layout.add_image("v1", build_image([base, make_layer(101)]))
    v2 = layout.add_image("v2", build_image([base, make_layer(102)]))
    own = v2.layers[1].digest

    skopeo.copy(layout.ref("v1"), skopeo.docker("shared/app:v1"))
    log = skopeo.copy(layout.ref("v2"), skopeo.docker("shared/app:v2"), debug=True)
    assert f"Skipping blob {base.digest} (already present)" in log
    assert f"Skipping blob {own}" not in log
    assert f"Upload of layer {own} complete" in log

    # Another repository: skopeo knows where the layers are and asks for cross-repository
    # mounts, so not one layer byte is sent again.
    log = skopeo.copy(layout.ref("v2"), skopeo.docker("shared/other:v2"), debug=True)
    assert f"Skipping blob {base.digest} (already present)" in log
    assert f"Skipping blob {own} (already present)" in log
    assert "Upload of layer" not in log.replace(f"Upload of layer {v2.config.digest}", "")

    events = server_events(registry)

    def actions(repository: str, digest: str) -> list[str]:
        return [e.action for e in events if e.repository == repository and e.digest == digest]

    assert actions("shared/app", base.digest) == ["push"]
    assert actions("shared/app", own) == ["push"]
    assert actions("shared/other", base.digest) == ["mount"]
    assert actions("shared/other", own) == ["mount"]
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", skopeo.docker("shared/app")).stdout)
    assert sorted(tags["Tags"]) == ["v1", "v2"]
    assert skopeo.raw("shared/other:v2") == v2.manifest.data


def test_copy_out_gives_back_identical_content(
    skopeo: Skopeo, images: Images, tmp_path: Path
) -> None:
    skopeo.copy(images.layout.ref("v1"), skopeo.docker("out/app:v1"), "--preserve-digests")
    skopeo.copy(images.layout.ref("v2"), skopeo.docker("out/app:v2"), "--preserve-digests")

    out = tmp_path / "out"
    for tag in ("v1", "v2"):
        skopeo.copy(skopeo.docker(f"out/app:{tag}"), f"oci:{out}:{tag}", "--preserve-digests")
    assert layout_tags(out) == {"v1": images.v1.digest, "v2": images.v2.digest}
    for image in (images.v1, images.v2):
        for digest, data in all_blobs(image):
            assert layout_blob(out, digest) == data, digest


def test_multi_arch_index_copy_all(skopeo: Skopeo, images: Images, tmp_path: Path) -> None:
    index = images.multi
    skopeo.copy(
        images.layout.ref("multi"), skopeo.docker("multi/app:latest"), "--all", "--preserve-digests"
    )

    assert skopeo.raw("multi/app:latest") == index.manifest.data
    assert json.loads(index.manifest.data)["mediaType"] == OCI_INDEX
    for image in index.images:
        assert skopeo.raw(f"multi/app@{image.digest}") == image.manifest.data
        # skopeo resolves the index to the platform asked for ("Digest" stays the index's).
        info = json.loads(
            skopeo(
                "--override-arch",
                image.architecture,
                "inspect",
                "--tls-verify=false",
                skopeo.docker("multi/app:latest"),
            ).stdout
        )
        assert (info["Digest"], info["Architecture"]) == (index.digest, image.architecture)
        assert info["Layers"] == [layer.digest for layer in image.layers]

    out = tmp_path / "out"
    skopeo.copy(
        skopeo.docker("multi/app:latest"), f"oci:{out}:latest", "--all", "--preserve-digests"
    )
    assert layout_tags(out) == {"latest": index.digest}
    assert layout_blob(out, index.digest) == index.manifest.data
    for image in index.images:
        for digest, data in all_blobs(image):
            assert layout_blob(out, digest) == data, digest


def test_delete_tag(skopeo: Skopeo, registry: DockyardServer, images: Images) -> None:
    skopeo.copy(images.layout.ref("v1"), skopeo.docker("del/app:gone"))
    skopeo.copy(images.layout.ref("v2"), skopeo.docker("del/app:kept"))

    skopeo("delete", "--tls-verify=false", skopeo.docker("del/app:gone"))

    tags = json.loads(skopeo("list-tags", "--tls-verify=false", skopeo.docker("del/app")).stdout)
    assert tags["Tags"] == ["kept"]
    missing = skopeo("inspect", "--tls-verify=false", skopeo.docker("del/app:gone"), check=False)
    assert missing.returncode != 0
    assert b"manifest unknown" in missing.stderr
    # skopeo deletes the manifest by digest: it is gone, not only untagged.
    r = httpx.get(f"{registry.url}/v2/del/app/manifests/{images.v1.digest}")
    assert r.status_code == 404
    assert r.json()["errors"][0]["code"] == "MANIFEST_UNKNOWN"
    # The other image, which shares the base layer, is whole.
    assert skopeo.raw("del/app:kept") == images.v2.manifest.data
    r = httpx.get(f"{registry.url}/v2/del/app/blobs/{images.base.digest}")
    assert r.status_code == 200
    assert r.content == images.base.blob.data


def test_docker_schema2_conversion_round_trip(
    skopeo: Skopeo, registry: DockyardServer, images: Images, tmp_path: Path
) -> None:
    skopeo.copy(images.layout.ref("v1"), skopeo.docker("docker/app:v1"), "--format", "v2s2")

    raw = skopeo.raw("docker/app:v1")
    manifest = json.loads(raw)
    assert manifest["mediaType"] == DOCKER_MANIFEST
    assert [d["digest"] for d in manifest["layers"]] == [layer.digest for layer in images.v1.layers]
    assert {d["mediaType"] for d in manifest["layers"]} == {DOCKER_LAYER}
    r = httpx.get(f"{registry.url}/v2/docker/app/manifests/v1", headers={"accept": DOCKER_MANIFEST})
    assert r.status_code == 200
    assert r.headers["content-type"] == DOCKER_MANIFEST
    assert r.headers["docker-content-digest"] == sha256(raw)

    # dir: keeps the manifest bytes as served: the digest the registry gave must hold.
    out = tmp_path / "dir"
    skopeo.copy(skopeo.docker("docker/app:v1"), f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == raw
    for layer in images.v1.layers:
        assert (out / layer.digest.removeprefix("sha256:")).read_bytes() == layer.blob.data

    # And back into OCI form: skopeo converts the manifest, the layers stay the same bytes.
    oci = tmp_path / "oci"
    skopeo.copy(skopeo.docker("docker/app:v1"), f"oci:{oci}:v1")
    back = json.loads(layout_blob(oci, layout_tags(oci)["v1"]))
    assert back["mediaType"] == OCI_MANIFEST
    assert [d["digest"] for d in back["layers"]] == [layer.digest for layer in images.v1.layers]


def test_docker_schema2_built_from_scratch(
    skopeo: Skopeo, registry: DockyardServer, images: Images, tmp_path: Path
) -> None:
    src = write_dir_image(tmp_path / "src", images.docker)
    skopeo.copy(f"dir:{src}", skopeo.docker("docker/scratch:v1"), "--preserve-digests")

    assert skopeo.raw("docker/scratch:v1") == images.docker.manifest.data
    r = httpx.head(f"{registry.url}/v2/docker/scratch/manifests/v1")
    assert r.headers["content-type"] == DOCKER_MANIFEST
    assert r.headers["docker-content-digest"] == images.docker.digest
    out = tmp_path / "out"
    skopeo.copy(skopeo.docker(f"docker/scratch@{images.docker.digest}"), f"dir:{out}")
    assert (out / "manifest.json").read_bytes() == images.docker.manifest.data


def test_docker_manifest_list(skopeo: Skopeo, images: Images) -> None:
    skopeo.copy(
        images.layout.ref("multi"),
        skopeo.docker("docker/multi:latest"),
        "--all",
        "--format",
        "v2s2",
    )

    listing = json.loads(skopeo.raw("docker/multi:latest"))
    assert listing["mediaType"] == DOCKER_LIST
    platforms = [d["platform"]["architecture"] for d in listing["manifests"]]
    assert platforms == ["amd64", "arm64"]
    for entry, image in zip(listing["manifests"], images.multi.images, strict=True):
        child = skopeo.raw(f"docker/multi@{entry['digest']}")
        assert sha256(child) == entry["digest"]
        assert len(child) == entry["size"]
        assert json.loads(child)["mediaType"] == DOCKER_MANIFEST
        assert [d["digest"] for d in json.loads(child)["layers"]] == [
            layer.digest for layer in image.layers
        ]
        info = json.loads(
            skopeo(
                "--override-arch",
                image.architecture,
                "inspect",
                "--tls-verify=false",
                skopeo.docker("docker/multi:latest"),
            ).stdout
        )
        assert info["Architecture"] == image.architecture
        assert info["Layers"] == [layer.digest for layer in image.layers]


def test_docker_list_from_scratch(skopeo: Skopeo, images: Images, tmp_path: Path) -> None:
    """A Docker manifest list built here, pushed with its images byte for byte."""
    children = [
        build_image([images.base, make_layer(seed)], architecture=arch, docker=True)
        for seed, arch in ((7, "amd64"), (8, "arm64"))
    ]
    listing = build_index(children, docker=True)
    src = write_dir_index(tmp_path / "src", listing)
    skopeo.copy(f"dir:{src}", skopeo.docker("docker/list:latest"), "--all", "--preserve-digests")

    assert skopeo.raw("docker/list:latest") == listing.manifest.data
    for child in children:
        assert skopeo.raw(f"docker/list@{child.digest}") == child.manifest.data
    info = json.loads(
        skopeo(
            "--override-arch",
            "arm64",
            "inspect",
            "--tls-verify=false",
            skopeo.docker("docker/list:latest"),
        ).stdout
    )
    assert info["Digest"] == listing.digest
    assert info["Architecture"] == "arm64"
    assert info["Layers"] == [layer.digest for layer in children[1].layers]
    out = tmp_path / "out"
    skopeo.copy(skopeo.docker("docker/list:latest"), f"dir:{out}", "--all")
    assert (out / "manifest.json").read_bytes() == listing.manifest.data


def test_tag_moves_to_the_new_image(skopeo: Skopeo, images: Images) -> None:
    skopeo.copy(images.layout.ref("v1"), skopeo.docker("moving/app:latest"))
    assert skopeo.raw("moving/app:latest") == images.v1.manifest.data
    skopeo.copy(images.layout.ref("v2"), skopeo.docker("moving/app:latest"))
    assert skopeo.raw("moving/app:latest") == images.v2.manifest.data
    # The image that lost its tag is still there by digest.
    assert skopeo.raw(f"moving/app@{images.v1.digest}") == images.v1.manifest.data
    tags = json.loads(skopeo("list-tags", "--tls-verify=false", skopeo.docker("moving/app")).stdout)
    assert tags["Tags"] == ["latest"]


def test_paginated_tags_list_and_sync(
    registry_small_pages: DockyardServer, images: Images, tmp_path: Path
) -> None:
    skopeo = Skopeo(require_tool("skopeo"), registry_small_pages)
    tags = ["t1", "t2", "t3", "t4", "t5"]
    for i, tag in enumerate(tags):
        src = images.layout.ref("v1" if i % 2 else "v2")
        skopeo.copy(src, skopeo.docker(f"paged/app:{tag}"))

    # The server answers in pages of two and links the next page ...
    r = httpx.get(f"{registry_small_pages.url}/v2/paged/app/tags/list")
    assert r.json()["tags"] == ["t1", "t2"]
    assert 'rel="next"' in r.headers["link"]
    # ... and skopeo follows the links to list every tag.
    listed = skopeo("--debug", "list-tags", "--tls-verify=false", skopeo.docker("paged/app"))
    assert json.loads(listed.stdout)["Tags"] == tags
    assert b"last=t2" in listed.stderr and b"last=t4" in listed.stderr

    # skopeo sync lists the tags the same way and copies every image.
    out = tmp_path / "sync"
    out.mkdir()
    skopeo(
        "sync",
        "--src-tls-verify=false",
        "--src",
        "docker",
        "--dest",
        "dir",
        f"{registry_small_pages.host}/paged/app",
        str(out),
    )
    for i, tag in enumerate(tags):
        want = images.v1 if i % 2 else images.v2
        assert (out / f"app:{tag}" / "manifest.json").read_bytes() == want.manifest.data
    skopeo(
        "sync",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src",
        "docker",
        "--dest",
        "docker",
        f"{registry_small_pages.host}/paged/app",
        f"{registry_small_pages.host}/mirror",
    )
    mirrored = skopeo("list-tags", "--tls-verify=false", skopeo.docker("mirror/app"))
    assert json.loads(mirrored.stdout)["Tags"] == tags
    assert skopeo.raw("mirror/app:t2") == images.v1.manifest.data
