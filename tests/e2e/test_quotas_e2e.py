"""Quotas and the repository management endpoint against a real ``dockyard serve`` and
skopeo: a push over its repository's quota fails in the client with the registry's
"quota exceeded" message and stores nothing; one that fits goes through; the management
endpoint lists its tags and deletes the repository."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Skopeo, serving
from tests.imagegen import OCILayout, build_image, make_layer
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

LIMIT = 200_000


@pytest.fixture(scope="module")
def quota_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("dockyard-quota")
    config = root / "dockyard.toml"
    config.write_text(f'[[quotas]]\nrepositories = ["limited/*"]\nmax_bytes = {LIMIT}\n')
    yield from serving(DockyardServer(root / "data", env={"DOCKYARD_CONFIG": str(config)}))


@pytest.fixture
def skopeo(quota_registry: DockyardServer) -> Skopeo:
    return Skopeo(require_tool("skopeo"), quota_registry)


def test_a_push_over_the_quota_fails_in_the_client(
    skopeo: Skopeo, quota_registry: DockyardServer, tmp_path: Path
) -> None:
    layout = OCILayout(tmp_path / "layout")
    # Random file contents do not compress: about 300 KB of layers against 200 KB.
    big = layout.add_image(
        "big", build_image([make_layer(70 + i, files=3, file_size=50_000) for i in range(2)])
    )
    small = layout.add_image("small", build_image([make_layer(80, files=2, file_size=20_000)]))
    cmd = (
        "copy",
        "--dest-tls-verify=false",
        "--retry-times=0",
        layout.ref("big"),
        skopeo.docker("limited/app:big"),
    )
    refused = skopeo(*cmd, check=False)
    assert refused.returncode != 0
    message = refused.stderr.decode(errors="replace")
    assert "quota exceeded" in message, message
    url = quota_registry.url
    usage = httpx.get(f"{url}/v2/_dockyard/repositories/limited/app").json()["usage"]
    assert usage["bytes"] <= LIMIT and usage["manifests"] == 0
    for layer in big.layers:
        r = httpx.head(f"{url}/v2/limited/app/blobs/{layer.digest}")
        if r.status_code == 200:
            continue  # the layer that fitted
        assert r.status_code == 404
    # A push that fits goes through, into another repository under the same glob.
    skopeo.copy(layout.ref("small"), skopeo.docker("limited/ok:v1"), "--preserve-digests")
    tags = httpx.get(f"{url}/v2/_dockyard/repositories/limited/ok/tags").json()["tags"]
    assert [(t["name"], t["digest"]) for t in tags] == [("v1", small.digest)]
    total = (
        len(small.manifest.data)
        + len(small.config.data)
        + sum(len(layer.blob.data) for layer in small.layers)
    )
    assert tags[0]["size"] == total
    # Deleting a repository: the client sees it gone.
    assert httpx.delete(f"{url}/v2/_dockyard/repositories/limited/ok").status_code == 202
    gone = skopeo("inspect", "--tls-verify=false", skopeo.docker("limited/ok:v1"), check=False)
    assert gone.returncode != 0
    catalog = httpx.get(f"{url}/v2/_catalog").json()["repositories"]
    assert "limited/ok" not in catalog
