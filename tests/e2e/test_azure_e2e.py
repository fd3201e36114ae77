"""A real ``dockyard serve`` (two workers) with ``storage.driver = "azure"`` on Azurite:
skopeo pushes and pulls an image, a chunked upload spreads over requests, and the bytes
are in the container, not on the local disk."""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.azurite import AzuriteServer
from tests.e2e.conftest import Skopeo, serving
from tests.imagegen import OCILayout, build_image, layout_blob, layout_tags, make_layer
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

PREFIX = "dockyard"


@pytest.fixture(scope="module")
def container(azurite: AzuriteServer) -> str:
    return azurite.new_container()


@pytest.fixture(scope="module")
def registry(
    azurite: AzuriteServer, container: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockyardServer]:
    env = {
        "DOCKYARD_STORAGE_DRIVER": "azure",
        "DOCKYARD_STORAGE_AZURE_ACCOUNT_NAME": azurite.account,
        "DOCKYARD_STORAGE_AZURE_ACCOUNT_KEY": azurite.key,
        "DOCKYARD_STORAGE_AZURE_CONTAINER": container,
        "DOCKYARD_STORAGE_AZURE_ENDPOINT": azurite.endpoint,
        "DOCKYARD_STORAGE_AZURE_PREFIX": PREFIX,
    }
    root = tmp_path_factory.mktemp("dockyard-azure")
    yield from serving(DockyardServer(root / "data", workers=2, env=env))


@pytest.fixture
def skopeo(registry: DockyardServer) -> Skopeo:
    return Skopeo(require_tool("skopeo"), registry)


def stored(azurite: AzuriteServer, container: str, area: str) -> set[str]:
    """Names under ``<prefix>/<area>/`` in the container (uncommitted blobs too)."""
    start = f"{PREFIX}/{area}/"
    with azurite.container(container) as client:
        names = client.list_blobs(name_starts_with=start, include=["uncommittedblobs"])
        return {b.name[len(start) :] for b in names}


def test_push_and_pull_with_skopeo(
    skopeo: Skopeo,
    registry: DockyardServer,
    azurite: AzuriteServer,
    container: str,
    tmp_path: Path,
) -> None:
    # One layer of 12 MiB of random bytes: more than one 8 MiB block.
    big = make_layer(701, files=4, file_size=3 * 1024 * 1024)
    image = build_image([big, make_layer(702)])
    layout = OCILayout(tmp_path / "in")
    layout.add_image("v1", image)
    skopeo.copy(layout.ref("v1"), skopeo.docker("azure/app:v1"), "--preserve-digests")

    out = tmp_path / "out"
    skopeo.copy(skopeo.docker("azure/app:v1"), f"oci:{out}:v1", "--preserve-digests")
    assert layout_tags(out) == {"v1": image.digest}
    for blob in (image.config, *(layer.blob for layer in image.layers)):
        assert layout_blob(out, blob.digest) == blob.data

    # The bytes are in the container, each blob once; no upload is left; nothing went
    # to the local data directory but the database.
    expected = {d.replace(":", "/") for d in image.blob_digests}
    assert expected <= stored(azurite, container, "blobs")
    assert stored(azurite, container, "uploads") == set()
    local = [p for p in registry.data_dir.rglob("*") if p.is_file() and "blobs" in p.parts]
    assert local == []
    assert httpx.get(f"{registry.url}/readyz").status_code == 200


def test_chunked_upload_over_several_requests(
    registry: DockyardServer, azurite: AzuriteServer, container: str
) -> None:
    # Each PATCH is a request of its own (and may reach either worker process): only the
    # saved driver state carries the blocks from one to the next.
    data = os.urandom(3 * 1024 * 1024 + 17)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    cuts = [0, 1024 * 1024 + 5, 2 * 1024 * 1024 + 9, len(data)]
    with httpx.Client(base_url=registry.url) as client:
        started = client.post("/v2/azure/chunked/blobs/uploads/")
        assert started.status_code == 202
        location = started.headers["Location"]
        for start, end in itertools.pairwise(cuts):
            with httpx.Client(base_url=registry.url) as fresh:  # a new connection each
                answer = fresh.patch(
                    location,
                    content=data[start:end],
                    headers={
                        "Content-Type": "application/octet-stream",
                        "Content-Range": f"{start}-{end - 1}",
                    },
                )
            assert answer.status_code == 202, answer.text
            assert answer.headers["Range"] == f"0-{end - 1}"
            location = answer.headers["Location"]
        done = client.put(location, params={"digest": digest})
        assert done.status_code == 201, done.text
        got = client.get(f"/v2/azure/chunked/blobs/{digest}")
        assert got.status_code == 200
        assert got.content == data
        part = client.get(f"/v2/azure/chunked/blobs/{digest}", headers={"Range": "bytes=10-19"})
        assert part.status_code == 206
        assert part.content == data[10:20]
    assert digest.replace(":", "/") in stored(azurite, container, "blobs")
    assert stored(azurite, container, "uploads") == set()
