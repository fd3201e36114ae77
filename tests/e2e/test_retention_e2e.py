"""Retention against real ``dockyard serve`` processes (two workers each):

- ``dockyard retention run --dry-run --json`` and ``--json`` on a live server's data
  directory: the preview names what the run then deletes, the server serves the result at
  once, and the log holds one ``untag`` event per deleted tag with its rule;
- the server's own scheduled run (``[retention] interval``) applies the policies with
  nobody asking, once per interval across both workers, and counts it in the metrics.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import push_image
from tests.e2e.conftest import server_events, serving
from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e

POLICY = """
[[retention.policies]]
repositories = ["ci/*"]
keep_last = 1
immutable_tags = ['v\\d+']
"""


def write_config(root: Path, interval: float) -> Path:
    conf = root / "dockyard.toml"
    data = json.dumps(str(root / "data"))
    conf.write_text(
        f'[server]\ninstance = "e2e"\n[storage]\nroot = {data}\n'
        f"[retention]\ninterval = {interval}\n{POLICY}"
    )
    return conf


def start(root: Path, interval: float) -> Iterator[DockyardServer]:
    conf = write_config(root, interval)
    server = DockyardServer(root / "data", workers=2, env={"DOCKYARD_CONFIG": str(conf)})
    yield from serving(server)


@pytest.fixture(scope="module")
def on_demand(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    yield from start(tmp_path_factory.mktemp("retention-cli"), interval=0)


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    yield from start(tmp_path_factory.mktemp("retention-scheduled"), interval=1)


async def retention_cli(conf: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    done = await trio.run_process(
        [sys.executable, "-m", "dockyard.cli", "retention", "run", "--config", str(conf), *args],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def tags(client: httpx.AsyncClient, repo: str) -> list[str]:
    r = await client.get(f"/v2/{repo}/tags/list")
    assert r.status_code == 200, r.text
    found: list[str] = r.json()["tags"]
    return found


async def test_retention_run_json(on_demand: DockyardServer) -> None:
    conf = on_demand.data_dir.parent / "dockyard.toml"
    async with httpx.AsyncClient(base_url=on_demand.url, timeout=30) as client:
        images = {t: await push_image(client, "ci/app", t) for t in ("v1", "a", "b", "c")}
        await push_image(client, "other/app", "x")
        await push_image(client, "other/app", "y")

        code, out, err = await retention_cli(conf, "--dry-run", "--json")
        assert code == 0, err
        preview = json.loads(out)
        assert preview["dry_run"] is True and preview["deleted_tags"] == 2
        assert [(i["repository"], i["tag"], i["rule"]) for i in preview["items"]] == [
            ("ci/app", "a", "keep_last 1"),
            ("ci/app", "b", "keep_last 1"),
        ]
        item = preview["items"][0]
        image = images["a"]
        assert item["digest"] == image.digest
        assert item["size"] == len(image.payload) + len(image.config) + sum(
            len(layer) for layer in image.layers
        )
        assert await tags(client, "ci/app") == ["a", "b", "c", "v1"]

        code, out, err = await retention_cli(conf, "--json")
        assert code == 0, err
        done = json.loads(out)
        assert done["dry_run"] is False
        assert done["items"] == preview["items"] and done["deleted_tags"] == 2
        assert done["bytes"] == sum(i["size"] for i in done["items"])
        # Served at once by both workers; the immutable tag and other repositories stay.
        assert await tags(client, "ci/app") == ["c", "v1"]
        assert await tags(client, "other/app") == ["x", "y"]
        r = await client.get(f"/v2/ci/app/manifests/{images['a'].digest}")
        assert r.status_code == 200  # untagged, not deleted: that is gc's job

        code, out, err = await retention_cli(conf, "--json")
        assert code == 0 and json.loads(out)["deleted_tags"] == 0

    untags = [e for e in server_events(on_demand) if e.action == "untag"]
    assert sorted(e.tag or "" for e in untags) == ["a", "b"]
    for e in untags:
        assert e.body["target"]["reason"] == "keep_last 1"
        assert e.body["target"]["by"] == "retention" and e.body["target"]["kind"] == "tag"
        assert e.body["actor"]["name"] == "retention"


async def test_scheduled_run(scheduled: DockyardServer) -> None:
    async with httpx.AsyncClient(base_url=scheduled.url, timeout=30) as client:
        for t in ("v1", "old", "new"):
            await push_image(client, "ci/scheduled", t)
        for _ in range(100):  # the server's own run, at most an interval away
            if await tags(client, "ci/scheduled") == ["new", "v1"]:
                break
            await trio.sleep(0.2)
        assert await tags(client, "ci/scheduled") == ["new", "v1"]
        r = await client.get("/metrics")
        assert r.status_code == 200
        lines = r.text.splitlines()
        assert "dockyard_retention_deleted_tags_total 1.0" in lines, r.text[-3000:]
        assert any(
            line.startswith("dockyard_retention_last_run_timestamp_seconds ") for line in lines
        )
    untags = [e for e in server_events(scheduled) if e.action == "untag"]
    assert [e.tag for e in untags] == ["old"]
