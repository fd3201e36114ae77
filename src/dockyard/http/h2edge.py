"""The HTTP/2 edge and a guard around every hypercorn connection (both protocols).

hypercorn 0.18's HTTP/2 protocol looks a stream up by id for each DATA frame, and drops
the stream once the app has answered. A client still sending the body of a request that
was answered early (an error before the body was read, a 408 for a slow body) thus
raised ``KeyError`` inside hypercorn, which ended the trio worker process and every other
connection it held (hypercorn issue 329; the fixes proposed upstream are not released).
``install`` makes such frames go to a stream that drops them (their flow-control credit
is still returned), and wraps each connection (``GuardedTCPServer``) so that an error
inside hypercorn closes that connection with a log line instead of ending the worker
(the connection class of the worker that serves: trio's or asyncio's, ``http/worker.py``).

Header limits over HTTP/2: hypercorn's ``h2_max_header_list_size`` (``dockyard serve``
sets it to ``server.max_header_bytes``) is advertised to clients but was never enforced
(h2 applies a setting when the client acknowledges a change, and hypercorn sets it as
the initial value); ``install`` gives it to h2's header decoder, which then refuses a
larger header block as a connection error (GOAWAY). The count of header fields
(``server.max_headers``) is checked by the app (``http/asgi.py``): 431 on that stream.

Bodies in bigger pieces: hypercorn advertises h2's defaults, a 64 KiB window (stream and
connection) and 16 KiB frames, so an upload over HTTP/2 came in 16 KiB frames with a
WINDOW_UPDATE every 32 KiB, each a trip through h2 and hypercorn (about 9x the CPU per
GiB of HTTP/1.1). ``install`` advertises what Go's HTTP/2 server does (the CNCF
Distribution's, golang.org/x/net/http2 server.go): frames of up to 1 MiB, and a 1 MiB
window per stream; the connection window is opened wider (``CONNECTION_WINDOW``) so that
parallel uploads on one connection do not share one stream's worth. These bound what a
client may send ahead of the app, which reads one connection's frames in order
(hypercorn); a frame is buffered whole before it is handed on, so ``MAX_FRAME_SIZE`` is
also the most a connection's parser holds.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

from dockyard.http.worker import (
    DEFAULT_BACKEND,
    connection_class,
    extend_connection_class,
    is_asyncio,
)

log = logging.getLogger("dockyard.http")

MAX_FRAME_SIZE = 1 << 20  # Go's defaultMaxReadFrameSize
STREAM_WINDOW = 1 << 20  # Go's server: MaxUploadBufferPerStream (1 MiB)
CONNECTION_WINDOW = 16 << 20  # room for several streams' windows at once


class _DroppedStream:
    """Where the events of a stream hypercorn already closed go: nowhere."""

    async def handle(self, event: object) -> None:
        return None


_DROPPED = _DroppedStream()


class StreamTable(dict[int, Any]):
    """hypercorn's ``H2Protocol.streams``: a lookup of a closed stream finds a stream that
    drops the event (``in`` and iteration see only the open streams, as before)."""

    def __missing__(self, stream_id: int) -> _DroppedStream:
        return _DROPPED


def _describe(error: BaseException) -> str:
    """``KeyError: 1`` for an error, or for each error in a group."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in error.exceptions)
    return f"{type(error).__name__}: {error}"


def check_hooks(backend: str = DEFAULT_BACKEND) -> None:
    """Fail fast if hypercorn no longer has what ``install`` changes: a silently missing
    hook would bring the worker-ending KeyError back. ``dockyard serve`` checks before it
    starts workers, and each worker again when it installs them."""
    from importlib.metadata import version

    try:
        from hypercorn.protocol.h2 import H2Protocol

        server = connection_class(backend)
        source = inspect.getsource(H2Protocol)
        ok = (
            inspect.iscoroutinefunction(server.run)
            and "self.streams[event.stream_id]" in source
            and "self.connection = h2.connection.H2Connection(" in source
            and "self.connection.initiate_connection()" in source
        )
    except (ImportError, AttributeError, OSError, TypeError):
        ok = False
    if not ok:
        raise RuntimeError(
            f"hypercorn {version('hypercorn')} is not the HTTP/2 protocol and connection "
            f"class dockyard.http.h2edge guards (H2Protocol.streams, {backend} TCPServer.run); "
            "install the hypercorn version in constraints.txt or update dockyard.http.h2edge"
        )


def _install_h2() -> None:
    import h2.settings
    from hypercorn.protocol import h2 as hypercorn_h2

    protocol = hypercorn_h2.H2Protocol
    if getattr(protocol, "_dockyard_guarded", False):
        return
    original_init = protocol.__init__
    original_initiate = protocol.initiate

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.streams = StreamTable()
        connection = self.connection
        # hypercorn passes its limit to h2 as an initial setting, which h2 only advertises:
        # the decoder enforces a setting when the client acknowledges a change of it.
        connection.decoder.max_header_list_size = self.config.h2_max_header_list_size
        # The same goes for the frame size h2's parser accepts; the stream window of a
        # stream is taken from the settings when the stream opens.
        codes = h2.settings.SettingCodes
        values = dict(connection.local_settings)
        values[codes.INITIAL_WINDOW_SIZE] = STREAM_WINDOW
        values[codes.MAX_FRAME_SIZE] = MAX_FRAME_SIZE
        connection.local_settings = h2.settings.Settings(client=False, initial_values=values)
        connection.max_inbound_frame_size = MAX_FRAME_SIZE

    async def initiate(self: Any, *args: Any, **kwargs: Any) -> None:
        await original_initiate(self, *args, **kwargs)  # sends the SETTINGS frame first
        # The connection window is not a setting: only a WINDOW_UPDATE opens it.
        opened = CONNECTION_WINDOW - self.connection.inbound_flow_control_window
        if opened > 0:
            self.connection.increment_flow_control_window(opened)
            await self._flush()

    protocol.__init__ = init  # type: ignore[method-assign]
    protocol.initiate = initiate  # type: ignore[method-assign]
    protocol._dockyard_guarded = True  # type: ignore[attr-defined]
    # Kept for a test that needs hypercorn's own protocol in a process that installed this.
    protocol._dockyard_unguarded = (original_init, original_initiate)  # type: ignore[attr-defined]


def install_connection_guard(backend: str = DEFAULT_BACKEND) -> None:
    """Wrap hypercorn's connection class (``hypercorn.trio.run.TCPServer``, or the asyncio
    worker's) in the guard."""
    asyncio_worker = is_asyncio(backend)

    def guarded(base: type[Any]) -> type[Any]:
        class GuardedTCPServer(base):  # type: ignore[misc]
            async def run(self) -> None:
                try:
                    await super().run()  # closes the stream on the way out, whatever happened
                # Not Cancelled (trio) nor CancelledError (asyncio, a BaseException too): a
                # stopping worker must still stop.
                except Exception as e:
                    error = _describe(e)
                    log.error("connection closed after an error inside hypercorn: %s", error)
                except asyncio.CancelledError:
                    if not asyncio_worker:
                        raise
                    # Only the asyncio worker's stop cancels a connection's task (one still
                    # open after graceful_timeout), and Python 3.11's asyncio then logs it
                    # as an unhandled error with a traceback (its client_connected_cb
                    # callback asks the cancelled task for its exception; 3.12 checks
                    # first). The task ends here, quietly, as it would have.
                    return

        return GuardedTCPServer

    extend_connection_class(backend, "dockyard_guarded", guarded)


def install(backend: str = DEFAULT_BACKEND) -> None:
    """Guard hypercorn's HTTP/2 protocol and its connections in this worker (idempotent)."""
    check_hooks(backend)
    _install_h2()
    install_connection_guard(backend)


__all__ = ["StreamTable", "check_hooks", "install", "install_connection_guard"]
