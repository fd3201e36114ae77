"""On hypercorn's asyncio worker, a socket read brings up to ``server.read_size`` bytes
(services.set_read_size), not the 128 KiB asyncio's StreamReader holds by default."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

from hypercorn.config import Config

from dockyard.http.worker import tcp_server_module
from dockyard.services import set_read_size

READ_SIZE = 1 << 20


async def _first_read(module: Any) -> int:
    ours, theirs = socket.socketpair()
    with ours, theirs:
        reader, writer = await asyncio.open_connection(sock=ours)
        # The connection as the worker makes it (only its reader is used here).
        module.TCPServer(None, asyncio.get_running_loop(), Config(), None, None, reader, writer)
        theirs.setblocking(False)
        block = b"x" * READ_SIZE
        # Fill the socket's buffers until the reader stops taking more.
        for _ in range(60):
            with contextlib.suppress(BlockingIOError):
                theirs.send(block)
            await asyncio.sleep(0.005)
        data = await reader.read(module.MAX_RECV)
        writer.close()
        return len(data)


def test_the_asyncio_worker_reads_up_to_read_size() -> None:
    module: Any = tcp_server_module("asyncio")
    before = module.MAX_RECV
    try:
        set_read_size(READ_SIZE, "asyncio")
        assert asyncio.run(_first_read(module)) == READ_SIZE
    finally:
        module.MAX_RECV = before
