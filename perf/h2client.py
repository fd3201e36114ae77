"""A blocking HTTP/2 client (the h2 library over TLS) with :class:`perf.httpclient.Connection`'s
methods, so every scenario task runs over HTTP/2 unchanged.

One stream at a time per connection, like the HTTP/1.1 client: a scenario's concurrency
is its number of connections either way. Settings as Go's HTTP/2 transport sends them
(what docker, containerd, crane and skopeo use; golang.org/x/net/http2 transport.go):
a 4 MiB stream window, a 1 GiB connection window, frames of up to 1 MiB from the server
(``MAX_FRAME_SIZE``), no server push. ALPN must choose ``h2``
(:class:`perf.tls.ProtocolMismatch` otherwise).

Cost-conscious where h2 allows: a request body goes out from the caller's memory in
frames as large as the server's window and frame size allow (h2 copies each frame once
into its output), a response body the caller does not keep is counted and dropped, and
received data is acknowledged as h2 decides (a WINDOW_UPDATE once half a window is used).

A GOAWAY ends the connection after the streams it still serves; a request the server
never started (a stream above the GOAWAY's last id, or a reused connection closed while
idle) is retried once on a new connection (``reconnects``).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from perf.httpclient import (
    Body,
    Connection,
    ConnectionClosed,
    HTTPError,
    NotStarted,
    RepeatedBody,
    Response,
    add_header,
)

STREAM_WINDOW = 4 << 20  # Go's transportDefaultStreamFlow
CONNECTION_WINDOW = 1 << 30  # Go's transportDefaultConnFlow
MAX_FRAME = 1 << 20  # Go's defaultMaxReadFrameSize, which its transport advertises
READ = 1 << 20


def client_state() -> h2.connection.H2Connection:
    """A client-side h2 state machine with Go's settings, its preamble not yet sent."""
    config = h2.config.H2Configuration(client_side=True, header_encoding=None)
    state = h2.connection.H2Connection(config=config)
    state.local_settings = h2.settings.Settings(
        client=True,
        initial_values={
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: MAX_FRAME,
        },
    )
    # Settings given as initial values apply at once (no acknowledgement changes them), so
    # h2 must be told the frame size it now accepts.
    state.max_inbound_frame_size = MAX_FRAME
    state.initiate_connection()
    state.increment_flow_control_window(CONNECTION_WINDOW - 65535)
    return state


class _Stream:
    __slots__ = ("body", "ended", "headers", "received", "reset", "status")

    def __init__(self, keep: bool) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body: bytearray | None = bytearray() if keep else None
        self.received = 0
        self.ended = False
        self.reset: int | None = None


class H2Connection(Connection):
    """One HTTP/2 connection over TLS; ``request`` sends one request and reads its answer."""

    protocol = "HTTP/2"
    protocol_errors = (h2.exceptions.ProtocolError,)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tls is None or not self.tls.http2:
            raise ValueError("H2Connection needs tls with http2")
        self._state: h2.connection.H2Connection | None = None
        self._streams: dict[int, _Stream] = {}
        self._goaway: int | None = None  # the last stream id a GOAWAY promised to serve
        self._authority = f"{self.host}:{self.port}".encode()

    # -- socket

    def connect(self) -> None:
        if self._sock is not None:
            return
        self._sock = self._open_socket()
        self._state = client_state()
        self._streams = {}
        self._goaway = None
        self._used = 0
        self._flush()

    def close(self) -> None:
        if self._sock is not None and self._state is not None and self._goaway is None:
            try:
                self._state.close_connection()
                self._sock.sendall(self._state.data_to_send())
            except (OSError, h2.exceptions.ProtocolError):
                pass
        super().close()
        self._state = None

    def _flush(self) -> None:
        assert self._sock is not None and self._state is not None
        data = self._state.data_to_send()
        if data:
            self._sock.sendall(data)

    def _read(self) -> None:
        """Receive once and take in the frames; ConnectionClosed if the server closed."""
        assert self._sock is not None and self._state is not None
        try:
            data = self._sock.recv(READ)
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
        if not data:
            raise ConnectionClosed("connection closed by the server")
        try:
            events = self._state.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            raise HTTPError(f"HTTP/2 protocol error: {e}") from e
        for event in events:
            self._take(event)
        self._flush()

    def _take(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.received += len(event.data)
                if stream.body is not None:
                    stream.body += event.data
            assert self._state is not None
            self._state.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        elif isinstance(
            event, h2.events.ResponseReceived | h2.events.InformationalResponseReceived
        ):
            if isinstance(event, h2.events.InformationalResponseReceived):
                return  # 1xx: the real answer follows
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                for k, v in event.headers:
                    key, value = bytes(k).decode("latin-1"), bytes(v).decode("latin-1")
                    if key == ":status":
                        stream.status = int(value)
                    else:
                        add_header(stream.headers, key, value)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.ended = True
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                stream.reset = event.error_code
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._goaway = event.last_stream_id if event.last_stream_id is not None else 0

    # -- requests

    def _exchange(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: Body | None,
        keep_body: bool,
    ) -> Response:
        state = self._state
        assert state is not None
        self._nothing_read = True
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"https"),
            (b":authority", self._authority),
            (b":path", target.encode("latin-1")),
        ]
        fields += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]
        size = len(body) if body is not None else 0
        if body is not None or method in ("POST", "PUT", "PATCH"):
            fields.append((b"content-length", str(size).encode()))
        sid: int = state.get_next_available_stream_id()
        stream = self._streams[sid] = _Stream(keep_body)
        try:
            state.send_headers(sid, fields, end_stream=size == 0)
            try:
                self._flush()
            except (BrokenPipeError, ConnectionResetError) as e:
                if self._used:  # closed while idle: the request never reached the server
                    raise NotStarted(f"connection closed while idle: {e}") from e
                raise
            if size:
                assert body is not None
                self._send_body(sid, stream, body)
            while not (stream.ended or stream.reset is not None):
                if self._goaway is not None and sid > self._goaway:
                    raise NotStarted(f"GOAWAY before stream {sid} was served")
                self._read()
                self._nothing_read = self._nothing_read and not stream.status
        finally:
            del self._streams[sid]
        if stream.reset is not None and not stream.status:
            if stream.reset == h2.errors.ErrorCodes.REFUSED_STREAM:
                raise NotStarted(f"stream {sid} refused")
            raise HTTPError(f"{method} {target}: stream reset by the server ({stream.reset})")
        if not stream.status:
            raise HTTPError(f"{method} {target}: no :status in the answer")
        self._used += 1
        if self._goaway is not None:
            self.close()  # the server is done with this connection: the next one is new
        out = bytes(stream.body) if stream.body is not None else b""
        return Response(stream.status, stream.headers, out, stream.received)

    def _send_body(self, sid: int, stream: _Stream, body: Body) -> None:
        """Send ``body`` in DATA frames as the windows allow; stop if the server answered
        (or reset the stream) before taking all of it."""
        state = self._state
        assert state is not None
        chunks: Iterator[memoryview]
        if isinstance(body, RepeatedBody):
            chunks = body.chunks()
        else:
            chunks = iter([memoryview(body).cast("B")])
        sent = 0
        for chunk in chunks:
            view = chunk
            while len(view):
                if stream.ended or stream.reset is not None:
                    if not stream.reset:
                        state.reset_stream(sid, h2.errors.ErrorCodes.NO_ERROR)
                        self._flush()
                    return
                window = min(state.local_flow_control_window(sid), state.max_outbound_frame_size)
                if window <= 0:
                    self._read()
                    continue
                # Up to a window's worth of frames in one write.
                budget = state.local_flow_control_window(sid)
                while len(view) and budget > 0:
                    n = min(len(view), state.max_outbound_frame_size, budget)
                    state.send_data(sid, view[:n])
                    view = view[n:]
                    budget -= n
                    sent += n
                self._flush()
        state.end_stream(sid)
        self._flush()
        self.counters.sent += sent
