"""``FrameWriter`` (http/websocket.py) on a real socket pair: frames written at once or
queued in order, hypercorn's send lock held across a partly written frame, an overflow,
and a socket closed under it (its number may be another connection's by then).

On each worker's connection: trio (``TrioFrameWriter``, the connection's trio socket
stream) and asyncio with its standard loop and with uvloop (``AsyncioFrameWriter``, the
connection's asyncio transport)."""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest
import sniffio

from dockyard.http.websocket import (
    AsyncioFrameWriter,
    FrameWriter,
    SendLock,
    TrioFrameWriter,
    text_frame,
)


@pytest.fixture(
    params=[
        pytest.param("trio", id="trio"),
        pytest.param("asyncio", id="asyncio"),
        pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


@dataclass
class _Connection:
    """What FrameWriter uses of hypercorn's TCPServer: its trio stream (trio worker) or
    its asyncio stream writer (asyncio worker), and its send lock."""

    stream: Any = None
    writer: Any = None
    send_lock: SendLock = field(default_factory=SendLock)

    async def close(self) -> None:
        """As hypercorn does when the client leaves."""
        if self.stream is not None:
            await self.stream.aclose()
        else:
            self.writer.close()


async def _pair() -> tuple[_Connection, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):  # small buffers: a few frames fill them
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    b.setblocking(False)
    if sniffio.current_async_library() == "trio":
        import trio

        return _Connection(stream=trio.SocketStream(trio.socket.from_stdlib_socket(a))), b
    _reader, writer = await asyncio.open_connection(sock=a)
    return _Connection(writer=writer), b


def _writer(conn: _Connection, limit: int) -> FrameWriter:
    if conn.stream is not None:
        return TrioFrameWriter(conn, limit)
    return AsyncioFrameWriter(conn, limit)


def _drain(peer: socket.socket) -> bytes:
    out = b""
    while True:
        try:
            chunk = peer.recv(1 << 16)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


async def test_frames_arrive_whole_and_in_order_through_a_full_socket() -> None:
    conn, peer = await _pair()
    writer = _writer(conn, 1000)
    frames = [text_frame(f'{{"n":{i},"pad":"{"x" * 700}"}}') for i in range(60)]
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(writer.run)
        for i, f in enumerate(frames, 1):
            assert writer.offer(f, i)
        # The socket took only part: the rest is queued, and the lock is held meanwhile.
        assert writer.queued() > 0
        assert conn.send_lock.held
        got = b""
        with anyio.fail_after(10):
            while len(got) < sum(map(len, frames)):
                got += _drain(peer)
                await anyio.sleep(0.001)
            await writer.wait_drained()
        assert got == b"".join(frames)
        assert not conn.send_lock.held and writer.written_id == len(frames)
        # hypercorn's own send (a close frame) can take the lock again.
        async with conn.send_lock:
            pass
        nursery.cancel_scope.cancel()
    await conn.close()
    peer.close()


async def test_an_overflow_drops_the_queue_but_finishes_the_partial_frame() -> None:
    conn, peer = await _pair()
    writer = _writer(conn, 3)
    frames = [text_frame("y" * 1500) for _ in range(40)]
    results = [writer.offer(f, i) for i, f in enumerate(frames, 1)]
    assert False in results and writer.overflowed.is_set()
    assert writer.offer(frames[0], 99) is False  # nothing more after an overflow
    written = writer.written_id
    async with anyio.create_task_group() as nursery:
        nursery.start_soon(writer.run)
        got = b""
        with anyio.fail_after(10):
            await anyio.sleep(0.01)
            while writer.queued() or conn.send_lock.held:
                got += _drain(peer)
                await anyio.sleep(0.001)
        got += _drain(peer)
        nursery.cancel_scope.cancel()
    # Whole frames only, up to the last one that had started going out.
    assert got == b"".join(frames[:written])
    await conn.close()
    peer.close()


async def test_a_closed_socket_is_never_written_to() -> None:
    conn, peer = await _pair()
    writer = _writer(conn, 10)
    assert writer.offer(text_frame("before"), 1)
    await conn.close()
    # A new socket may now have the old descriptor number.
    reuse_a, reuse_b = socket.socketpair()
    try:
        reuse_b.setblocking(False)
        assert writer.offer(text_frame("after"), 2)
        assert writer.broken
        assert _drain(reuse_b) == b""
    finally:
        reuse_a.close()
        reuse_b.close()
        peer.close()


@pytest.mark.parametrize("anyio_backend", ["trio"])  # trio's streams detect concurrent sends
async def test_a_send_in_progress_elsewhere_means_the_connection_is_closing(
    anyio_backend: Any,
) -> None:
    """On trio, hypercorn's ``_close`` sends EOF without the send lock when the client
    leaves; the writer task's ``send_all`` meanwhile raises ``BusyResourceError``, which
    must end the writer quietly (it crashed the connection's handler)."""
    conn, peer = await _pair()
    writer = _writer(conn, 10)
    async with anyio.create_task_group() as nursery:
        # Stands for the EOF being sent: a send outside the lock, stuck on a full socket.
        nursery.start_soon(conn.stream.send_all, b"z" * 200_000)
        await anyio.sleep(0.05)
        async with conn.send_lock:  # the frame is queued, for the writer task
            assert writer.offer(text_frame("queued"), 1)
        nursery.start_soon(writer.run)
        with anyio.fail_after(5):
            await writer.wait_drained()  # returns once the writer found it broken
        assert writer.broken
        nursery.cancel_scope.cancel()
    await conn.close()
    peer.close()
