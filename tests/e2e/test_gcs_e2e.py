"""A real ``dockyard serve`` with ``storage.driver = "gcs"`` on fake-gcs-server: skopeo
pushes an image built by ``tests/imagegen.py`` and pulls it back; the blobs are objects
in the bucket, the data directory holds only the database."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Skopeo, serving
from tests.fakegcs import FakeGcsServer
from tests.imagegen import OCILayout, build_image, layout_blob, layout_tags, make_layer
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

PREFIX = "registry"


@pytest.fixture(scope="module")
def gcs_bucket(fake_gcs: FakeGcsServer) -> str:
    return fake_gcs.new_bucket()


@pytest.fixture(scope="module")
def gcs_registry(
    fake_gcs: FakeGcsServer, gcs_bucket: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockyardServer]:
    env = {
        "DOCKYARD_STORAGE_DRIVER": "gcs",
        "DOCKYARD_STORAGE_GCS_BUCKET": gcs_bucket,
        "DOCKYARD_STORAGE_GCS_PREFIX": PREFIX,
        "DOCKYARD_STORAGE_GCS_ENDPOINT": fake_gcs.endpoint,
    }
    root = tmp_path_factory.mktemp("dockyard-gcs")
    yield from serving(DockyardServer(root / "data", workers=2, env=env))


def test_push_and_pull_through_gcs(
    gcs_registry: DockyardServer, fake_gcs: FakeGcsServer, gcs_bucket: str, tmp_path: Path
) -> None:
    skopeo = Skopeo(require_tool("skopeo"), gcs_registry)
    layout = OCILayout(tmp_path / "layout")
    # One layer past the driver's 8 MiB part buffer (sent as a resumable upload of its
    # part), two small ones (single media uploads).
    big = make_layer(70, files=3, file_size=3 * 1024 * 1024 + 5)
    image = layout.add_image("v1", build_image([big, make_layer(71), make_layer(72)]))
    assert len(big.blob.data) > 8 * 1024 * 1024

    skopeo.copy(layout.ref("v1"), skopeo.docker("gcs/app:v1"), "--preserve-digests")
    assert httpx.get(f"{gcs_registry.url}/readyz").status_code == 200

    # Every blob is an object under the prefix; no upload is left behind.
    names = set(fake_gcs.object_names(gcs_bucket))
    for digest in image.blob_digests:
        assert f"{PREFIX}/blobs/sha256/{digest.removeprefix('sha256:')}" in names
    assert not [name for name in names if name.startswith(f"{PREFIX}/uploads/")]
    local = gcs_registry.data_dir / "blobs"
    assert not local.exists() or not any(p.is_file() for p in local.rglob("*"))

    out = tmp_path / "pulled"
    skopeo.copy(skopeo.docker("gcs/app:v1"), f"oci:{out}:v1", "--preserve-digests")
    assert layout_tags(out) == {"v1": image.digest}
    for layer in image.layers:
        assert layout_blob(out, layer.digest) == layer.blob.data
    assert layout_blob(out, image.config.digest) == image.config.data

    # A ranged read of the big layer straight from the registry.
    hex_ = big.digest
    response = httpx.get(
        f"{gcs_registry.url}/v2/gcs/app/blobs/{hex_}", headers={"Range": "bytes=100-8388707"}
    )
    assert response.status_code == 206
    assert response.content == big.blob.data[100:8388708]


def test_chunked_upload_across_workers_composes_every_chunk(
    gcs_registry: DockyardServer, fake_gcs: FakeGcsServer, gcs_bucket: str
) -> None:
    # 40 PATCHes, each on a new connection (either of the two workers may take it, with
    # only the saved state to go on): 40 parts, composed in two rounds at the PUT.
    data = b"".join(hashlib.sha256(str(i).encode()).digest() * 300 for i in range(40))
    chunk = len(data) // 40
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    base = gcs_registry.url
    started = httpx.post(f"{base}/v2/gcs/chunked/blobs/uploads/")
    assert started.status_code == 202
    location = started.headers["Location"]
    for start in range(0, len(data), chunk):
        piece = data[start : start + chunk]
        answer = httpx.patch(
            base + location if location.startswith("/") else location,
            content=piece,
            headers={
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{start}-{start + len(piece) - 1}",
            },
        )
        assert answer.status_code == 202, answer.text
        location = answer.headers["Location"]
    pending = [n for n in fake_gcs.object_names(gcs_bucket) if n.startswith(f"{PREFIX}/uploads/")]
    assert len([n for n in pending if not n.endswith("/info")]) == 40
    url = base + location if location.startswith("/") else location
    done = httpx.put(url, params={"digest": digest})
    assert done.status_code == 201, done.text

    assert httpx.get(f"{base}/v2/gcs/chunked/blobs/{digest}").content == data
    names = fake_gcs.object_names(gcs_bucket)
    assert f"{PREFIX}/blobs/sha256/{digest.removeprefix('sha256:')}" in names
    assert not [name for name in names if name.startswith(f"{PREFIX}/uploads/")]
