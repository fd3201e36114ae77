"""The dockyard command line: version, config check, and start-up refusing bad settings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dockyard import __version__


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    return subprocess.run(
        [sys.executable, "-m", "dockyard.cli", *args],
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version() -> None:
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"dockyard {__version__}"


def test_config_check_prints_effective_settings(tmp_path: Path) -> None:
    conf = tmp_path / "d.toml"
    conf.write_text('[server]\nport = 5123\n[storage]\nroot = "/srv/x"\n')
    result = run("config", "check", "--config", str(conf), env={"DOCKYARD_SERVER_WORKERS": "3"})
    assert result.returncode == 0, result.stderr
    assert '"port": 5123' in result.stdout
    assert '"workers": 3' in result.stdout
    assert '"root": "/srv/x"' in result.stdout


def test_config_check_names_an_unknown_key(tmp_path: Path) -> None:
    conf = tmp_path / "d.toml"
    conf.write_text("[server]\nprot = 5123\n")
    result = run("config", "check", "--config", str(conf))
    assert result.returncode == 2
    assert "server.prot" in result.stderr


def test_serve_refuses_a_bad_value_before_listening(tmp_path: Path) -> None:
    result = run("serve", "--data-dir", str(tmp_path), env={"DOCKYARD_STORAGE_DRIVER": "floppy"})
    assert result.returncode == 2
    assert "storage.driver" in result.stderr and "floppy" in result.stderr
    assert not (tmp_path / "dockyard.sqlite3").exists()


def test_serve_refuses_an_unknown_variable(tmp_path: Path) -> None:
    result = run("serve", "--data-dir", str(tmp_path), env={"DOCKYARD_SERVER_PROT": "1"})
    assert result.returncode == 2
    assert "DOCKYARD_SERVER_PROT" in result.stderr
