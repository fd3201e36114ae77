"""``dockyard retention run`` as a process: its text output, its JSON, and exit 3 while
another run holds the lease."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from dockyard.config import load
from dockyard.core.retention import JOB
from dockyard.meta.open import open_meta
from tests.conftest import make_client, open_services, push_image


def cli(conf: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    return subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "retention", "run", "--config", str(conf), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def push_two_tags(conf: Path) -> None:
    async with open_services(load(conf, environ={})) as svc, make_client(svc) as client:
        await push_image(client, "app", "a")
        await push_image(client, "app", "b")


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    """A config with one policy (keep_last 1) and a data directory holding tags a, b."""
    path = tmp_path / "dockyard.toml"
    data = json.dumps(str(tmp_path / "data"))
    path.write_text(
        f'[storage]\nroot = {data}\n[[retention.policies]]\nrepositories = ["*"]\nkeep_last = 1\n'
    )
    anyio.run(push_two_tags, path, backend="trio")  # as `dockyard retention` runs it
    return path


def test_text_output(conf: Path) -> None:
    done = cli(conf, "--dry-run")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("would delete app:a  sha256:") and "(keep_last 1)" in lines[0]
    assert lines[-1].startswith("would delete 1 tags (")
    done = cli(conf)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("deleted 1 tags (")
    doc = json.loads(cli(conf, "--json").stdout)
    assert doc == {"dry_run": False, "deleted_tags": 0, "bytes": 0, "repositories": 1, "items": []}


def test_busy_lease_exits_3(conf: Path) -> None:
    meta = open_meta(load(conf, environ={}))
    try:
        assert meta.job_acquire(JOB, "elsewhere/run", 600)
        done = cli(conf, "--json")
        assert done.returncode == 3, done.stdout
        assert "another retention run" in done.stderr and done.stdout == ""
        meta.job_release(JOB, "elsewhere/run")
        assert cli(conf, "--json").returncode == 0
    finally:
        meta.close()


def test_no_database_yet(tmp_path: Path) -> None:
    path = tmp_path / "dockyard.toml"
    path.write_text(f"[storage]\nroot = {json.dumps(str(tmp_path / 'none'))}\n")
    done = cli(path)
    assert done.returncode == 1 and "no database" in done.stderr
