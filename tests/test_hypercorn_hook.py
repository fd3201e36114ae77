"""The socket read size dockyard sets in hypercorn (services.set_read_size) is a hypercorn
module constant, and the HTTP/2 guard (http/h2edge.py) changes private hypercorn classes:
start-up fails, naming the hypercorn version, if a release drops either."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import hypercorn.trio.tcp_server
import pytest

from dockyard.cli import main
from dockyard.http import h2edge
from dockyard.services import app_queue_size, check_read_size_hook, set_read_size


def test_the_installed_hypercorn_has_the_constant() -> None:
    before = hypercorn.trio.tcp_server.MAX_RECV
    try:
        check_read_size_hook()
        set_read_size(128 * 1024)
        assert hypercorn.trio.tcp_server.MAX_RECV == 128 * 1024
    finally:
        hypercorn.trio.tcp_server.MAX_RECV = before


def test_a_hypercorn_without_it_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(hypercorn.trio.tcp_server, "MAX_RECV")
    # `serve` puts its overrides in the environment (for the workers): restore it after.
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_SERVER_PORT", "0")
    with pytest.raises(RuntimeError, match=f"hypercorn {version('hypercorn')} has no .*MAX_RECV"):
        set_read_size(256 * 1024)
    assert not hasattr(hypercorn.trio.tcp_server, "MAX_RECV")  # nothing set in its place
    # `dockyard serve` says so before it touches the data directory or starts workers.
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    assert "MAX_RECV" in capsys.readouterr().err
    assert not (tmp_path / "dockyard.sqlite3").exists()


def test_the_installed_hypercorn_has_what_the_http2_guard_changes() -> None:
    h2edge.check_hooks()


def test_a_hypercorn_without_it_stops_start_up_too(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hypercorn.trio.run

    monkeypatch.delattr(hypercorn.trio.run, "TCPServer")
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_SERVER_PORT", "0")
    with pytest.raises(RuntimeError, match=f"hypercorn {version('hypercorn')} is not the HTTP/2"):
        h2edge.check_hooks()
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    assert "dockyard.http.h2edge" in capsys.readouterr().err
    assert not (tmp_path / "dockyard.sqlite3").exists()


def test_memory_per_upload_is_bounded_whatever_the_read_size() -> None:
    """The app queue holds as many reads as make 1 MiB, at least 2: an upload holds at
    most max(1 MiB, 2 reads) of body in memory."""
    mib = 1 << 20
    for read_size in (16 * 1024, 64 * 1024, 256 * 1024, 300_000, mib, 4 * mib, 16 * mib):
        queued = app_queue_size(read_size) * read_size
        assert app_queue_size(read_size) >= 2
        assert queued <= max(mib, 2 * read_size), read_size
    assert app_queue_size(mib) == 2 and app_queue_size(256 * 1024) == 4
