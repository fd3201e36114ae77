"""``dockyard gc --json`` (a real process) against a real server's data directory while
it serves: skopeo pushes two images, one is deleted through the API; the collector takes
exactly the deleted image's own blobs, and the kept image pulls back byte-identical."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Skopeo, serving
from tests.imagegen import OCILayout, build_image, make_layer
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def gc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("gc")
    yield from serving(DockyardServer(root / "data", env={"DOCKYARD_GC_GRACE_PERIOD": "0"}))


def dockyard_gc(server: DockyardServer, tmp_path: Path, *flags: str) -> tuple[int, Any]:
    config = tmp_path / "gc.toml"
    config.write_text(f'[storage]\nroot = "{server.data_dir}"\n[gc]\ngrace_period = 0\n')
    done = subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "gc", "--config", str(config), "--json", *flags],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return done.returncode, json.loads(done.stdout)


def test_gc_json_collects_a_deleted_image_and_keeps_the_tagged_one(
    gc_server: DockyardServer, tmp_path: Path
) -> None:
    skopeo = Skopeo(require_tool("skopeo"), gc_server)
    layout = OCILayout(tmp_path / "layout")
    base = make_layer(900)
    kept = layout.add_image("kept", build_image([base, make_layer(901)]))
    gone = layout.add_image("gone", build_image([base, make_layer(902)]))
    skopeo.copy(layout.ref("kept"), skopeo.docker("gc/app:kept"), "--preserve-digests")
    skopeo.copy(layout.ref("gone"), skopeo.docker("gc/app:gone"), "--preserve-digests")
    url = f"{gc_server.url}/v2/gc/app"
    assert httpx.delete(f"{url}/manifests/{gone.digest}").status_code == 202
    # What only the deleted image used: its config and its own layer (not the base).
    own = {
        gone.config.digest: len(gone.config.data),
        gone.layers[1].digest: len(gone.layers[1].blob.data),
    }

    status, dry = dockyard_gc(gc_server, tmp_path, "--dry-run")
    assert status == 0 and dry["dry_run"] is True
    assert httpx.head(f"{url}/blobs/{gone.config.digest}").status_code == 200

    status, report = dockyard_gc(gc_server, tmp_path)
    assert status == 0 and report["dry_run"] is False
    assert report["deleted_manifests"] == 0  # deleted through the API already
    assert report["deleted_blobs"] == 2 and report["deleted_links"] == 2
    assert report["freed_bytes"] == sum(own.values())
    assert {i["digest"] for i in report["items"] if i["kind"] == "blob"} == set(own)
    assert report["deleted_tags"] == 0 and report["items_truncated"] is False
    assert isinstance(report["duration_seconds"], float)
    for key in ("deleted_blobs", "deleted_manifests", "deleted_links", "freed_bytes"):
        assert report[key] == dry[key]
    for digest in own:
        assert httpx.head(f"{url}/blobs/{digest}").status_code == 404
        assert not (gc_server.data_dir / "blobs" / "sha256" / digest[7:9] / digest[7:]).exists()

    # The kept image (sharing the base layer) pulls back exactly as pushed.
    pulled = OCILayout(tmp_path / "pulled")
    skopeo.copy(skopeo.docker("gc/app:kept"), pulled.ref("kept"), "--preserve-digests")
    assert skopeo.raw("gc/app:kept") == kept.manifest.data
    for layer in kept.layers:
        path = pulled.blobs / layer.digest.removeprefix("sha256:")
        assert path.read_bytes() == layer.blob.data
    status, again = dockyard_gc(gc_server, tmp_path)
    assert (status, again["deleted_blobs"], again["deleted_links"]) == (0, 0, 0)
