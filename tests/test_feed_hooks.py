"""The hypercorn internals the feed's hooks rely on (http/websocket.py): the connection
class and worker context of hypercorn's worker (trio's or asyncio's). Start-up fails,
naming the hypercorn version, if a release changes them (a stop would silently wait the
whole ``graceful_timeout`` again, and feeds would fall back to nothing)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

from dockyard.cli import main
from dockyard.http import websocket
from dockyard.http.worker import run_module


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_the_installed_hypercorn_has_what_the_stop_notice_uses(backend: str) -> None:
    websocket.check_stop_notice_hook(backend)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_hypercorn_without_it_stops_start_up(
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def worker_serve(*args: object, **kwargs: object) -> None:
        """A worker that never tells its connections it terminates."""

    monkeypatch.setattr(run_module(backend), "worker_serve", worker_serve)
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_SERVER_PORT", "0")
    monkeypatch.setenv("DOCKYARD_SERVER_BACKEND", backend)
    match = f"hypercorn {version('hypercorn')} is not the {backend}"
    with pytest.raises(RuntimeError, match=match):
        websocket.check_stop_notice_hook(backend)
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    assert "dockyard.http.websocket" in capsys.readouterr().err
    assert not (tmp_path / "dockyard.sqlite3").exists()
