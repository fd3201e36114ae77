"""``FrameWriter`` (http/websocket.py) on a real socket pair: frames written at once or
queued in order, hypercorn's send lock held across a partly written frame, an overflow,
and a socket closed under it (its number may be another connection's by then)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

import pytest
import trio

from dockyard.http.websocket import FrameWriter, SendLock, text_frame


@pytest.fixture
def anyio_backend() -> str:
    """Trio only: FrameWriter writes to hypercorn's trio worker's socket streams and is
    used only there (on asyncio the feed sends through ASGI, tests/test_feed_asgi_path.py)."""
    return "trio"


@dataclass
class _Connection:
    """What FrameWriter uses of hypercorn's TCPServer: its stream and send lock."""

    stream: trio.SocketStream
    send_lock: SendLock = field(default_factory=SendLock)


def _pair() -> tuple[_Connection, socket.socket]:
    a, b = socket.socketpair()
    for s in (a, b):  # small buffers: a few frames fill them
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    b.setblocking(False)
    return _Connection(trio.SocketStream(trio.socket.from_stdlib_socket(a))), b


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
    conn, peer = _pair()
    writer = FrameWriter(conn, limit=1000)
    frames = [text_frame(f'{{"n":{i},"pad":"{"x" * 700}"}}') for i in range(60)]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        for i, f in enumerate(frames, 1):
            assert writer.offer(f, i)
        # The socket took only part: the rest is queued, and the lock is held meanwhile.
        assert writer.queued() > 0
        assert conn.send_lock.held
        got = b""
        with trio.fail_after(10):
            while len(got) < sum(map(len, frames)):
                got += _drain(peer)
                await trio.sleep(0.001)
            await writer.wait_drained()
        assert got == b"".join(frames)
        assert not conn.send_lock.held and writer.written_id == len(frames)
        # hypercorn's own send (a close frame) can take the lock again.
        async with conn.send_lock:
            pass
        nursery.cancel_scope.cancel()
    conn.stream.socket.close()
    peer.close()


async def test_an_overflow_drops_the_queue_but_finishes_the_partial_frame() -> None:
    conn, peer = _pair()
    writer = FrameWriter(conn, limit=3)
    frames = [text_frame("y" * 1500) for _ in range(40)]
    results = [writer.offer(f, i) for i, f in enumerate(frames, 1)]
    assert False in results and writer.overflowed.is_set()
    assert writer.offer(frames[0], 99) is False  # nothing more after an overflow
    written = writer.written_id
    async with trio.open_nursery() as nursery:
        nursery.start_soon(writer.run)
        got = b""
        with trio.fail_after(10):
            await trio.sleep(0.01)
            while writer.queued() or conn.send_lock.held:
                got += _drain(peer)
                await trio.sleep(0.001)
        got += _drain(peer)
        nursery.cancel_scope.cancel()
    # Whole frames only, up to the last one that had started going out.
    assert got == b"".join(frames[:written])
    conn.stream.socket.close()
    peer.close()


async def test_a_closed_socket_is_never_written_to() -> None:
    conn, peer = _pair()
    writer = FrameWriter(conn, limit=10)
    assert writer.offer(text_frame("before"), 1)
    await conn.stream.aclose()  # as hypercorn does when the client leaves
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
