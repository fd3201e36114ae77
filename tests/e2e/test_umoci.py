"""umoci validates what dockyard serves: an image pulled back by skopeo unpacks into the
exact files its layers hold (umoci checks every blob digest and layer diff_id on the way),
and an image umoci repacks goes back through the registry intact.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Skopeo, run_tool
from tests.imagegen import OCILayout, build_image, layout_tags, make_layer
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e


def rootfs_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_pulled_image_unpacks_with_umoci(
    skopeo: Skopeo, registry: DockyardServer, tmp_path: Path
) -> None:
    umoci = require_tool("umoci")
    layout = OCILayout(tmp_path / "src")
    base = make_layer(200, files=3, file_size=32 * 1024, extra={"etc/os-release": b"ID=dockyard\n"})
    # The second layer replaces a file of the first and deletes another with a whiteout:
    # only a registry that keeps the layers and their order gives the right rootfs.
    top = make_layer(
        201,
        files=2,
        extra={"etc/os-release": b"ID=dockyard\nVERSION=2\n"},
        delete=["layer-200/file-1.bin"],
    )
    image = layout.add_image("v1", build_image([base, top]))
    expected = image.rootfs
    assert "layer-200/file-1.bin" not in expected
    assert expected["etc/os-release"] == b"ID=dockyard\nVERSION=2\n"

    skopeo.copy(layout.ref("v1"), skopeo.docker("umoci/app:v1"))
    pulled = tmp_path / "pulled"
    skopeo.copy(skopeo.docker("umoci/app:v1"), f"oci:{pulled}:v1", "--preserve-digests")
    assert layout_tags(pulled) == {"v1": image.digest}

    assert run_tool([umoci, "ls", "--layout", str(pulled)], registry).split() == ["v1"]
    stat = json.loads(run_tool([umoci, "stat", "--json", "--image", f"{pulled}:v1"], registry))
    history = stat["history"]
    assert [h["layer"]["digest"] for h in history] == [base.digest, top.digest]
    assert [h["diff_id"] for h in history] == [base.diff_id, top.diff_id]
    table = run_tool([umoci, "stat", "--image", f"{pulled}:v1"], registry)
    assert base.digest in table and top.digest in table

    bundle = tmp_path / "bundle"
    run_tool([umoci, "unpack", "--rootless", "--image", f"{pulled}:v1", str(bundle)], registry)
    assert rootfs_files(bundle / "rootfs") == expected
    config = json.loads((bundle / "config.json").read_text())
    assert config["process"]["args"] == ["/bin/sh"]

    # umoci writes a new layer from a changed bundle; the registry must take it as well.
    (bundle / "rootfs" / "added.txt").write_bytes(b"added by umoci repack\n")
    (bundle / "rootfs" / "layer-201" / "file-0.bin").unlink()
    run_tool([umoci, "repack", "--image", f"{pulled}:v2", str(bundle)], registry)
    v2 = layout_tags(pulled)["v2"]
    skopeo.copy(f"oci:{pulled}:v2", skopeo.docker("umoci/app:v2"), "--preserve-digests")

    again = tmp_path / "again"
    skopeo.copy(skopeo.docker("umoci/app:v2"), f"oci:{again}:v2", "--preserve-digests")
    assert layout_tags(again) == {"v2": v2}
    bundle2 = tmp_path / "bundle2"
    run_tool([umoci, "unpack", "--rootless", "--image", f"{again}:v2", str(bundle2)], registry)
    expected["added.txt"] = b"added by umoci repack\n"
    del expected["layer-201/file-0.bin"]
    assert rootfs_files(bundle2 / "rootfs") == expected
    history = json.loads(run_tool([umoci, "stat", "--json", "--image", f"{again}:v2"], registry))
    assert len(history["history"]) == 3
