"""Idle keep-alive connections: closed after hypercorn's ``keep_alive_timeout`` (5 s), kept
while requests keep coming, and closed at once when a graceful stop begins, on trio and on
the asyncio worker, whose per-connection timer is dockyard's (http/keepalive.py). The
time bounds are correctness bounds (the timeout is 5 s), not timing benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e

KEEP_ALIVE = 5.0  # hypercorn's default keep_alive_timeout, which dockyard keeps
REQUEST = b"GET /v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n"


@pytest.fixture(scope="module", params=["trio", "uvloop"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DockyardServer]:
    backend = request.param
    srv = DockyardServer(
        tmp_path_factory.mktemp(f"keepalive-{backend}") / "data",
        env={"DOCKYARD_SERVER_BACKEND": backend},
    )
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def ask(conn: socket.socket) -> None:
    """One request on ``conn`` and its whole response (``/v2/`` answers ``{}``)."""
    conn.sendall(REQUEST)
    received = b""
    while not received.endswith(b"\r\n\r\n{}"):
        chunk = conn.recv(4096)
        assert chunk, f"connection closed mid-response: {received!r}"
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received


def wait_closed(conn: socket.socket, timeout: float) -> float:
    """Seconds until the server closes ``conn`` (fails after ``timeout``)."""
    started = time.monotonic()
    conn.settimeout(timeout)
    assert conn.recv(1) == b"", "data on an idle connection"
    return time.monotonic() - started


def test_an_idle_connection_is_closed_after_the_keep_alive_timeout(
    server: DockyardServer,
) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        ask(conn)
        idle = wait_closed(conn, KEEP_ALIVE + 10)
    assert KEEP_ALIVE - 1 <= idle <= KEEP_ALIVE + 5, idle


def test_a_connection_in_use_is_kept(server: DockyardServer) -> None:
    """Each request restarts the idle time: requests 3 s apart outlive the 5 s timeout."""
    with socket.create_connection(("127.0.0.1", server.port)) as conn:
        for _ in range(3):
            ask(conn)
            time.sleep(KEEP_ALIVE * 0.6)
        ask(conn)


@pytest.mark.parametrize("backend", ["trio", "uvloop"])
def test_a_graceful_stop_closes_idle_connections_at_once(tmp_path: Path, backend: str) -> None:
    graceful_timeout = 30.0
    srv = DockyardServer(
        tmp_path / "data",
        env={
            "DOCKYARD_SERVER_BACKEND": backend,
            "DOCKYARD_SERVER_GRACEFUL_TIMEOUT": str(graceful_timeout),
        },
    )
    srv.start()
    try:
        assert srv.proc is not None
        with socket.create_connection(("127.0.0.1", srv.port)) as conn:
            ask(conn)
            os.killpg(srv.proc.pid, signal.SIGTERM)
            closed_after = wait_closed(conn, graceful_timeout)
            assert srv.proc.wait(graceful_timeout) == 0
        # Closed when the stop began, not when the keep-alive timeout ran out.
        assert closed_after < KEEP_ALIVE - 1, f"closed after {closed_after:.1f} s"
    finally:
        srv.kill()
