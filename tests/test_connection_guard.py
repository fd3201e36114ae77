"""An error inside hypercorn on one connection closes that connection only: the guard
dockyard wraps around hypercorn's connections (``http/h2edge.py``) logs it, and the
worker (here: the test's own hypercorn, trio's or asyncio's worker as the test's
backend) goes on serving its other connections.

The error is hypercorn 0.18's own KeyError for HTTP/2 data on a stream it already
closed, with only the guard installed (``dockyard serve`` also installs the fix for that
error, tested in tests/e2e/test_http2_edge.py).
"""

from __future__ import annotations

import logging

import anyio
import pytest
import sniffio
from hypercorn.protocol.h2 import H2Protocol

from dockyard.http import h2edge
from dockyard.http.worker import run_module
from tests.feedclient import Message, Receive, Send, serve_app
from tests.h2client import H2Client


async def answer_at_once(scope: Message, receive: Receive, send: Send) -> None:
    """Answers 404 without reading the request body (an early error answer)."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 404, "headers": []})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


async def test_one_connections_error_closes_only_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Restored after the test: the guard is installed on hypercorn's module (that of the
    # worker serve_app runs: trio's or asyncio's, as the test's backend).
    backend = sniffio.current_async_library()
    module = run_module(backend)
    original = getattr(module, "TCPServer")  # noqa: B009 - not exported
    monkeypatch.setattr(module, "TCPServer", original)
    h2edge.install_connection_guard(backend)
    # hypercorn's own HTTP/2 protocol, which raises the KeyError: an earlier test's
    # in-process server may have installed h2edge's fix of it for this whole process.
    unguarded = getattr(H2Protocol, "_dockyard_unguarded", None)
    if unguarded is not None:
        monkeypatch.setattr(H2Protocol, "__init__", unguarded[0])
        monkeypatch.setattr(H2Protocol, "initiate", unguarded[1])
        monkeypatch.setattr(H2Protocol, "_dockyard_guarded", False)
    caplog.set_level(logging.ERROR, logger="dockyard.http")
    # Heard on the logger itself: whatever an earlier test did to the root logger's
    # handlers or to this logger (configure_logging, dictConfig) cannot hide the line.
    logger = logging.getLogger("dockyard.http")
    monkeypatch.setattr(logger, "disabled", False)
    heard: list[str] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = lambda record: heard.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    async with serve_app(answer_at_once) as server:

        def run() -> None:
            clients = [H2Client(server.port, None) for _ in range(3)]
            bystander, faulty, later = clients
            try:
                assert bystander.get("/").status == 404
                stream = faulty.request("PUT", "/", end=False)
                assert faulty.wait(stream).status == 404
                faulty.send_data(stream, b"x" * 1000)  # its stream is closed: KeyError
                while faulty.read():
                    pass  # the guard closes this connection
                assert bystander.get("/").status == 404  # the server serves on
                assert later.get("/").status == 404
            finally:
                for client in clients:
                    client.close()

        try:
            await anyio.to_thread.run_sync(run)
        finally:
            logger.removeHandler(handler)
    assert any("connection closed after an error inside hypercorn: KeyError" in m for m in heard)
