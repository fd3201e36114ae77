"""perf.scan --quick: ci-storm's scannable images pushed to a dockyard scanning on push
with the real trivy and to one with scanning off; every push succeeds, every image of the
"on" server is scanned (done, none failed), the CPU figures are read and the table has
both rows and the on/off ratio. Speed is not asserted (perf/RESULTS.md records it)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

from perf.data import Blob
from perf.scan import ScannableCiStorm, run, table
from perf.scenarios import Params

from tests.tools import trivy_binary

TINY = Params.quick().with_overrides(
    storm_images=4, storm_concurrency=2, storm_base_size=256 * 1024, storm_layer_size=8 * 1024
)


def raw(b: Blob) -> bytes:
    assert isinstance(b.data, bytes)
    return b.data


def test_images_are_what_trivy_reads() -> None:
    storm = ScannableCiStorm(TINY)
    storm.prepare(0)
    image = storm.images[0]
    manifest = json.loads(image.manifest)
    config = json.loads(raw(image.config))
    assert manifest["layers"][0]["digest"] == storm.base.digest
    assert len(manifest["layers"]) == 1 + TINY.storm_layers
    for layer, diff_id in zip(image.layers, config["rootfs"]["diff_ids"], strict=True):
        tar = gzip.decompress(raw(layer))
        assert "sha256:" + hashlib.sha256(tar).hexdigest() == diff_id
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw(storm.base)))) as base:
        assert "lib/apk/db/installed" in base.getnames()
    assert storm.pushed(0)[1] == ("storm/r0-app1", storm.images[1].digest)


def test_scan_on_push_against_off_quick() -> None:
    trivy_binary()  # skips (fails in CI) without trivy
    # Through --nice's wrapper script: the scans still run and finish.
    results = run(TINY, repeats=1, workers=1, settle=0, nice=10)
    (on,), (off,) = results["on"], results["off"]
    for figures in (on, off):
        assert figures["failed"] == 0 and figures["images_s"] > 0
        assert figures["server_cpu_s"] > 0
    assert on["images"] == TINY.storm_images
    assert on["scans_done"] == TINY.storm_images and on["scans_failed"] == 0
    assert 0 <= on["scans_done_during"] <= on["scans_done"]
    # trivy's processes count: the scans cost CPU beyond the pushes.
    assert on["server_cpu_s_with_scans"] > on["server_cpu_s"]
    text = table(results)
    assert "| scanning on |" in text and "| scanning off |" in text
    assert "images/s on/off per repeat:" in text
