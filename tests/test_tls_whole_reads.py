"""``WholeReads`` (tls.py) on a real loopback TLS connection: a receive returns every
record already received (read from the socket as much at a time as asked for), not one
16 KiB record, the bytes come through whole and in order, and the end of the stream is
seen; hypercorn's trio connections get it."""

from __future__ import annotations

import hashlib
import ssl
from pathlib import Path
from typing import Any

import hypercorn.trio.tcp_server
import pytest
import trio
import trio.testing

from dockyard.http.worker import run_module
from dockyard.tls import WholeReads, install_whole_reads_hook
from tests.pki import server_files

RECORD = 16 * 1024  # TLS's largest record: what one trio SSLStream receive returns


@pytest.fixture
def anyio_backend() -> str:
    """Trio only: the wrapper is for hypercorn's trio worker (asyncio's reads are whole)."""
    return "trio"


async def receive_all(tmp_path: Path, total: int, ask: int) -> tuple[list[int], bytes, bytes]:
    """Send ``total`` random bytes over loopback TLS and read them through ``WholeReads``
    with ``receive_some(ask)`` until the end: the sizes read, the sha256 of what was
    sent and of what was read."""
    files = server_files(tmp_path / "pki")
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)
    sizes: list[int] = []
    read = hashlib.sha256()
    sent = hashlib.sha256()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async with trio.open_nursery() as nursery:
        done = trio.Event()

        async def serve(stream: trio.SocketStream) -> None:
            tls = WholeReads.wrap(trio.SSLStream(stream, server_context, server_side=True))
            assert isinstance(tls, WholeReads)  # this trio has what it reads from
            while data := await tls.receive_some(ask):
                sizes.append(len(data))
                read.update(data)
            await tls.aclose()
            done.set()

        nursery.start_soon(trio.serve_listeners, serve, listeners)
        client = await trio.open_ssl_over_tcp_stream(
            "127.0.0.1", port, ssl_context=files.client_context()
        )
        block = bytearray(256 * 1024)
        for _ in range(total // len(block)):
            block[:32] = hashlib.sha256(block).digest()  # not all zeros
            sent.update(block)
            await client.send_all(block)
        await client.aclose()  # close_notify, then the end of the socket
        with trio.fail_after(30):
            await done.wait()
        nursery.cancel_scope.cancel()
    return sizes, sent.digest(), read.digest()


async def test_a_receive_returns_the_records_already_received(tmp_path: Path) -> None:
    sizes, sent, read = await receive_all(tmp_path, 16 << 20, 1 << 20)
    assert read == sent
    # trio's SSLStream alone: one record per receive (1024 for 16 MiB), and its socket
    # reads of 64 KiB at most (4 records) whatever the receive asks for
    assert max(sizes) > 4 * RECORD, sizes[:20]
    assert len(sizes) < (16 << 20) // RECORD // 4, len(sizes)


async def test_no_more_than_asked_for(tmp_path: Path) -> None:
    sizes, sent, read = await receive_all(tmp_path, 4 << 20, 20_000)
    assert read == sent
    assert max(sizes) <= 20_000
    assert max(sizes) > RECORD  # a record and the start of the next


def test_hypercorns_trio_connections_read_whole(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The hook wraps a TLS connection's stream and leaves a plain one as it is."""
    module = run_module("trio")
    # hypercorn's own class (other tests may have left hooks of their own installed, as a
    # worker does), put back after the test
    monkeypatch.setattr(module, "TCPServer", hypercorn.trio.tcp_server.TCPServer)
    install_whole_reads_hook("trio")
    server_class: Any = module.TCPServer
    files = server_files(tmp_path / "pki")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    a, b = trio.testing.memory_stream_pair()
    tls = trio.SSLStream(a, context, server_side=True)
    wrapped = server_class(None, None, None, None, tls).stream
    assert isinstance(wrapped, WholeReads) and wrapped.stream is tls
    assert wrapped.transport_stream.stream is a  # hypercorn reads its .socket through it
    assert server_class(None, None, None, None, b).stream is b
