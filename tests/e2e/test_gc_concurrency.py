"""Online garbage collection under load: a real ``dockyard serve --workers 2`` with a grace
period of a few seconds takes pushes, pulls, retags and deletes (the HTTP API and skopeo,
``tests/gcload.py``) while ``dockyard gc --json`` runs over and over, two loops at once
(one of them is refused while the other holds the lease).

Then: every image still tagged pulls back byte for byte (API GETs, and skopeo copies to an
OCI layout for skopeo's images), pushes failed only with MANIFEST_BLOB_UNKNOWN (counted and
printed), one more collection after the grace period leaves no unreferenced blob or
needless link older than the grace period, and the store is consistent
(``tests/gc_consistency.py``). Once on SQLite, once on PostgreSQL.

``DOCKYARD_TEST_GC_LOAD_SECONDS`` sets how long the load runs (60 by default).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.conftest import serving
from tests.gc_consistency import Completed, check, gc_delete_events
from tests.gcload import (
    SEED_REPOSITORY,
    Api,
    Ledger,
    Pushed,
    api_pusher,
    blob_pool,
    gc_loop,
    manifest_for,
    run_gc,
    sha256,
    skopeo_pusher,
)
from tests.imagegen import (
    Image,
    OCILayout,
    build_image,
    layout_blob,
    layout_tags,
    make_layer,
)
from tests.pgserver import PostgresServer
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

GRACE = 3.0
LOAD_SECONDS = float(os.environ.get("DOCKYARD_TEST_GC_LOAD_SECONDS", "60"))
API_TASKS = 3


@dataclass
class Setup:
    server: DockyardServer
    config: Path
    database: str
    env: dict[str, str]


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}


@pytest.fixture(params=["sqlite", "postgres"])
def setup(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Setup]:
    data = tmp_path / "data"
    config = tmp_path / "dockyard.toml"
    text = f'[storage]\nroot = "{data}"\n\n[gc]\ngrace_period = {GRACE}\n'
    database = str(data / "dockyard.sqlite3")
    if request.param == "postgres":
        postgres: PostgresServer = request.getfixturevalue("postgres_server")
        database = postgres.new_database()
        text += f'\n[database]\nurl = "{database}"\n'
    config.write_text(text)
    server = DockyardServer(data, workers=2, env={"DOCKYARD_CONFIG": str(config)})
    for running in serving(server):
        yield Setup(running, config, database, clean_env())


def skopeo_images(root: Path) -> tuple[OCILayout, list[Image]]:
    """Four small images on one base layer; two of them with a second layer of their own."""
    layout = OCILayout(root)
    base = make_layer(900, files=2, file_size=2048)
    images = []
    for i in range(4):
        own = [make_layer(910 + i, files=1, file_size=1024 + i)]
        if i % 2:
            own.append(make_layer(920 + i, files=1, file_size=512))
        images.append(layout.add_image(f"img{i}", build_image([base, *own])))
    return layout, images


async def seed_bases(client: httpx.AsyncClient, ledger: Ledger) -> list[bytes]:
    """Base layers every task shares, tagged in the seed repository (live throughout)."""
    bases = blob_pool(99, 4)
    api = Api(client, random.Random(0), ledger)
    config = b'{"seed":true}'
    for data in [config, *bases]:
        await api.upload(SEED_REPOSITORY, data)
    pushed = Pushed(manifest_for(config, bases, "seed"), {sha256(d): d for d in [config, *bases]})
    assert await api.put_manifest(SEED_REPOSITORY, "base", pushed)
    return bases


async def skopeo_pull_back(skopeo: str, setup: Setup, ledger: Ledger, out: Path) -> int:
    """skopeo copies every tag of skopeo's repositories into an OCI layout; the digests and
    every blob must be what was pushed."""
    pulled = 0
    for (repo, tag), pushed in sorted(ledger.tags.items()):
        if not repo.startswith("gcc/sk-"):
            continue
        name = f"{repo.replace('/', '-')}-{tag}"
        cmd = [
            skopeo, "--insecure-policy", "copy", "--src-tls-verify=false", "--preserve-digests",
            f"docker://{setup.server.host}/{repo}:{tag}", f"oci:{out}:{name}",
        ]  # fmt: skip
        done = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
        if done.returncode != 0:
            ledger.fail(f"skopeo pull {repo}:{tag}: {done.stderr.decode()[-800:]}")
            continue
        if layout_tags(out).get(name) != pushed.digest:
            ledger.fail(f"skopeo pull {repo}:{tag}: digest {layout_tags(out).get(name)}")
        for digest, data in pushed.blobs.items():
            if layout_blob(out, digest) != data:
                ledger.fail(f"skopeo pull {repo}:{tag}: blob {digest} differs")
        pulled += 1
    return pulled


async def test_gc_runs_while_images_are_pushed_and_pulled(
    setup: Setup, tmp_path: Path, record_property: Any
) -> None:
    skopeo = require_tool("skopeo")
    layout, images = skopeo_images(tmp_path / "layout")
    ledger = Ledger()
    async with httpx.AsyncClient(base_url=setup.server.url, timeout=60) as client:
        bases = await seed_bases(client, ledger)
        deadline = trio.current_time() + LOAD_SECONDS
        async with trio.open_nursery() as nursery:
            for task in range(API_TASKS):
                nursery.start_soon(api_pusher, client, task, ledger, deadline, bases, GRACE)
            nursery.start_soon(
                skopeo_pusher, skopeo, setup.server.host, layout, images, ledger, deadline
            )
            for seed in range(2):
                nursery.start_soon(gc_loop, setup.config, setup.env, ledger, deadline, seed)
        during = ledger.summary()

        # Quiet now: after the grace period one more run must leave nothing collectable.
        await trio.sleep(GRACE + 0.5)
        started = time.time()
        final = await run_gc(setup.config, setup.env, ledger)
        report = check(setup.database, setup.server.data_dir, completed=Completed(started, GRACE))

        api = Api(client, random.Random(1), ledger)
        for (repo, tag), pushed in sorted(ledger.tags.items()):
            await api.verify(repo, tag, pushed)
        pulled = await skopeo_pull_back(skopeo, setup, ledger, tmp_path / "out")

    totals = {k: v for k, v in (final or {}).items() if k != "items"}
    summary = f"{during}; final run {totals}; skopeo pulled back {pulled}"
    print(summary)
    record_property("gc_concurrency", summary)
    assert not ledger.failures, (
        f"{len(ledger.failures)} failures, the first: "
        + "\n".join(ledger.failures[:5])
        + "\n"
        + summary
    )
    assert final is not None, summary
    report.assert_ok(f"after the final collection ({summary})")
    # Every deletion is an event in the log, one per item of the runs' reports.
    logged = Counter[str]()
    for run in ledger.gc_reports:
        logged.update(item["kind"] for item in run["items"])
        assert not run["items_truncated"], "a report's item list was cut short"
    assert gc_delete_events(setup.database) == logged
    # The load did what it is for: the collector deleted, races happened, pulls checked.
    deleted = sum(int(r["deleted_blobs"]) for r in ledger.gc_reports)
    assert deleted > 0 and ledger.counts["gc runs"] >= 5, summary
    assert ledger.counts["manifest deletes"] > 0 and ledger.counts["skopeo pushes"] > 0, summary
    assert ledger.counts["verified pulls"] > len(ledger.tags), summary
