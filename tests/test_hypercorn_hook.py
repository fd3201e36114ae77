"""The socket read size dockyard sets in hypercorn (services.set_read_size) is a hypercorn
module constant, and the HTTP/2 guard (http/h2edge.py) changes private hypercorn classes:
start-up fails, naming the hypercorn version, if a release drops either, for the worker
``[server] backend`` chooses; and an unknown backend, or uvloop not installed, stop it too."""

from __future__ import annotations

import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from dockyard.cli import main
from dockyard.config import load
from dockyard.http import h2edge
from dockyard.http.worker import run_module, tcp_server_module
from dockyard.services import app_queue_size, check_read_size_hook, set_read_size

# hypercorn's two workers ("uvloop" is its asyncio worker on another event loop).
HYPERCORN_WORKERS = ("trio", "asyncio")


@pytest.mark.parametrize("backend", HYPERCORN_WORKERS)
def test_the_installed_hypercorn_has_the_constant(backend: str) -> None:
    module: Any = tcp_server_module(backend)
    before = module.MAX_RECV
    try:
        check_read_size_hook(backend)
        set_read_size(128 * 1024, backend)
        assert module.MAX_RECV == 128 * 1024
    finally:
        module.MAX_RECV = before


@pytest.mark.parametrize("backend", HYPERCORN_WORKERS)
def test_a_hypercorn_without_it_stops_start_up(
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    module = tcp_server_module(backend)
    monkeypatch.delattr(module, "MAX_RECV")
    # `serve` puts its overrides in the environment (for the workers): restore it after.
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_SERVER_PORT", "0")
    monkeypatch.setenv("DOCKYARD_SERVER_BACKEND", backend)
    with pytest.raises(RuntimeError, match=f"hypercorn {version('hypercorn')} has no .*MAX_RECV"):
        set_read_size(256 * 1024, backend)
    assert not hasattr(module, "MAX_RECV")  # nothing set in its place
    # `dockyard serve` says so before it touches the data directory or starts workers.
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    assert f"{module.__name__}.MAX_RECV" in capsys.readouterr().err
    assert not (tmp_path / "dockyard.sqlite3").exists()


@pytest.mark.parametrize("backend", HYPERCORN_WORKERS)
def test_the_installed_hypercorn_has_what_the_http2_guard_changes(backend: str) -> None:
    h2edge.check_hooks(backend)


@pytest.mark.parametrize("backend", HYPERCORN_WORKERS)
def test_a_hypercorn_without_it_stops_start_up_too(
    backend: str,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delattr(run_module(backend), "TCPServer")
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_SERVER_PORT", "0")
    monkeypatch.setenv("DOCKYARD_SERVER_BACKEND", backend)
    with pytest.raises(RuntimeError, match=f"hypercorn {version('hypercorn')} is not the HTTP/2"):
        h2edge.check_hooks(backend)
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    assert "dockyard.http.h2edge" in capsys.readouterr().err
    assert not (tmp_path / "dockyard.sqlite3").exists()


def test_start_up_checks_only_the_chosen_workers_hooks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The trio worker's constant gone does not concern a server on the asyncio worker."""
    monkeypatch.delattr(tcp_server_module("trio"), "MAX_RECV")
    check_read_size_hook("asyncio")
    with pytest.raises(RuntimeError):
        check_read_size_hook("trio")


def test_an_unknown_backend_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_SERVER_BACKEND", "curio")
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "server.backend: unknown backend 'curio' (one of trio, asyncio, uvloop)" in err
    assert not (tmp_path / "dockyard.sqlite3").exists()


def test_the_test_suites_backend_choices_are_not_settings() -> None:
    """DOCKYARD_TEST_BACKENDS and DOCKYARD_TEST_SERVER_BACKEND (the event loops the tests
    and their servers run on) are not DOCKYARD_<SECTION>_<KEY> settings: start-up
    within a test run does not refuse them as unknown."""
    environ = {"DOCKYARD_TEST_BACKENDS": "trio,asyncio", "DOCKYARD_TEST_SERVER_BACKEND": "uvloop"}
    assert load(environ=environ).server.backend == "trio"


def test_uvloop_without_uvloop_installed_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes `import uvloop` raise ImportError, as when not installed.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_SERVER_BACKEND", "uvloop")
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    assert "needs uvloop: install dockyard[uvloop]" in capsys.readouterr().err
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


def test_server_config_dates_every_response_and_names_no_server() -> None:
    """``ServerConfig`` formats Date once a second (hypercorn: once a response) and sends no
    Server header; both as hypercorn's own Config would otherwise."""
    from email.utils import parsedate_to_datetime
    from time import time

    from hypercorn.config import Config

    from dockyard.http.worker import ServerConfig

    before = int(time())
    headers = dict(ServerConfig().response_headers("h11"))
    after = time()
    assert b"server" not in headers
    assert before <= parsedate_to_datetime(headers[b"date"].decode()).timestamp() <= after
    ours = ServerConfig().response_headers("h2")
    theirs = Config().response_headers("h2")
    assert [name for name, _ in ours] == [n for n, _ in theirs if n != b"server"]
    config = ServerConfig()
    config.include_date_header = False
    assert config.response_headers("h11") == []


def test_an_asyncio_tcp_server_without_its_idle_task_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """http/keepalive.py replaces the asyncio TCPServer's idle task: a hypercorn whose
    TCPServer no longer has one stops ``dockyard serve`` (trio has nothing to check)."""
    from dockyard.http.keepalive import check_idle_timer_hook

    check_idle_timer_hook("uvloop")  # the installed hypercorn has it
    check_idle_timer_hook("trio")

    class TCPServer:  # a release that times idle connections some other way
        async def run(self) -> None: ...

    monkeypatch.setattr(tcp_server_module("asyncio"), "TCPServer", TCPServer)
    with pytest.raises(RuntimeError, match="idle task"):
        check_idle_timer_hook("asyncio")
    monkeypatch.setenv("DOCKYARD_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("DOCKYARD_SERVER_PORT", "0")
    monkeypatch.setenv("DOCKYARD_SERVER_BACKEND", "asyncio")
    assert main(["serve", "--data-dir", str(tmp_path), "--port", "0"]) == 2
    assert "dockyard.http.keepalive" in capsys.readouterr().err


def test_the_client_certificate_hook_still_finds_its_class_after_the_idle_timer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """tls.py checks the worker's TCPServer signature (a ``writer`` parameter) after
    http/keepalive.py has subclassed it: the subclass keeps hypercorn's parameters (with
    ``*args`` client certificates stopped start-up on uvloop)."""
    from dockyard.http.keepalive import install_idle_timer
    from dockyard.tls import check_tls_hook

    module = run_module("uvloop")
    monkeypatch.setattr(module, "TCPServer", tcp_server_module("uvloop").TCPServer)
    install_idle_timer("uvloop")
    check_tls_hook("uvloop")
