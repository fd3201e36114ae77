"""``dockyard gc`` in process: the JSON document, the human listing, a busy collector."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from dockyard.cli import main
from dockyard.core.registry import RequestInfo
from dockyard.meta.sqlite import SQLiteMeta
from tests.conftest import chunks, digest_of, make_settings, open_services


@pytest.fixture(autouse=True)
def restore_config_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKYARD_CONFIG", "")  # the CLI sets it; restored after


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A data directory holding one unreferenced blob, and a config with no grace period."""
    root = tmp_path / "data"

    async def push() -> None:
        async with open_services(make_settings(root)) as svc:
            data = b"nothing references this"
            await svc.registry.put_blob(RequestInfo(), "app", digest_of(data), chunks(data), 23)

    anyio.run(push, backend="trio")  # as `dockyard gc` runs it
    path = tmp_path / "dockyard.toml"
    path.write_text(f'[storage]\nroot = "{root}"\n[gc]\ngrace_period = 0\n')
    return path


def test_json_document(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gc", "--config", str(config), "--dry-run", "--json"]) == 0
    dry = json.loads(capsys.readouterr().out)
    assert main(["gc", "--config", str(config), "--json"]) == 0
    done = json.loads(capsys.readouterr().out)
    digest = digest_of(b"nothing references this")
    assert dry["dry_run"] is True and done["dry_run"] is False
    for doc in (dry, done):
        assert (doc["deleted_blobs"], doc["deleted_links"], doc["freed_bytes"]) == (1, 1, 23)
        assert (doc["deleted_manifests"], doc["deleted_tags"]) == (0, 0)
        assert doc["items"] == [
            {"kind": "link", "repository": "app", "digest": digest, "size": 23,
             "reason": "unreferenced"},
            {"kind": "blob", "repository": "", "digest": digest, "size": 23,
             "reason": "unreferenced"},
        ]  # fmt: skip
    assert main(["gc", "--config", str(config), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["deleted_blobs"] == 0


def test_human_listing(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gc", "--config", str(config), "--dry-run"]) == 0
    out = capsys.readouterr()
    lines = out.out.splitlines()
    assert lines[0].startswith("would delete link app@sha256:")
    assert lines[-1].startswith("would delete 0 manifests, 1 links, 1 blobs; 23 B freed")
    assert out.err == ""  # no progress when stderr is not a terminal


def test_busy_when_another_collector_runs(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = SQLiteMeta(tmp_path / "data" / "dockyard.sqlite3")
    assert meta.job_acquire("gc", "elsewhere/1", 600)
    assert main(["gc", "--config", str(config), "--json"]) == 3
    out = capsys.readouterr()
    assert json.loads(out.out)["error"] == "busy"
    assert "another garbage collection is running" in out.err
    assert main(["gc", "--config", str(config)]) == 3
    assert capsys.readouterr().out == ""
    meta.job_release("gc", "elsewhere/1")
    meta.close()
    assert main(["gc", "--config", str(config), "--json"]) == 0


def test_no_database(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "dockyard.toml"
    path.write_text(f'[storage]\nroot = "{tmp_path / "none"}"\n')
    assert main(["gc", "--config", str(path), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["error"] == "no_database"
