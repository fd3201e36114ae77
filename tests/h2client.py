"""A raw HTTP/2 client over TLS (the h2 library on a blocking socket) for edge tests that
need frames no ordinary client sends: a body after the answer, resets mid-upload, more
header fields than allowed."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events


@dataclass
class H2Answer:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    ended: bool = False
    reset: int | None = None  # the RST_STREAM error code, if the server reset the stream


class H2Client:
    """One HTTP/2 connection; ``answers`` collects what the server sent per stream."""

    def __init__(self, port: int, context: ssl.SSLContext | None, timeout: float = 10.0) -> None:
        """Over TLS with ALPN h2; without ``context``, cleartext with prior knowledge."""
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock: socket.socket = raw
        if context is not None:
            context.set_alpn_protocols(["h2"])
            self.sock = context.wrap_socket(raw, server_hostname="127.0.0.1")
            assert self.sock.selected_alpn_protocol() == "h2", "the server did not pick HTTP/2"
        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.flush()
        self.answers: dict[int, H2Answer] = {}
        self.terminated = False

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        end: bool = True,
    ) -> int:
        """Open a stream with a HEADERS frame (and END_STREAM if ``end``); its id."""
        stream_id: int = self.conn.get_next_available_stream_id()
        pseudo = [(":method", method), (":path", path), (":scheme", "https")]
        pseudo.append((":authority", "127.0.0.1"))
        self.conn.send_headers(stream_id, [*pseudo, *headers], end_stream=end)
        self.flush()
        self.answers[stream_id] = H2Answer()
        return stream_id

    def send_data(self, stream_id: int, data: bytes, end: bool = False) -> None:
        self.conn.send_data(stream_id, data, end_stream=end)
        self.flush()

    def send_body(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """Send ``data`` in frames as the server's flow-control window allows."""
        view = memoryview(data)
        while view:
            window = min(
                self.conn.local_flow_control_window(stream_id), self.conn.max_outbound_frame_size
            )
            if window <= 0:
                if not self.read():
                    raise ConnectionError("the server closed the connection")
                continue
            self.conn.send_data(stream_id, bytes(view[:window]))
            self.flush()
            view = view[window:]
        if end:
            self.send_data(stream_id, b"", end=True)

    def reset(self, stream_id: int) -> None:
        self.conn.reset_stream(stream_id)
        self.flush()

    def read(self) -> bool:
        """Read once and take in the server's frames; False if the server closed."""
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLError, OSError):
            return False
        if not data:
            return False
        for event in self.conn.receive_data(data):
            self._take(event)
        self.flush()
        return True

    def _take(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ConnectionTerminated):
            self.terminated = True
            return
        stream_id = getattr(event, "stream_id", 0)
        answer = self.answers.setdefault(stream_id, H2Answer())
        if isinstance(event, h2.events.ResponseReceived):
            answer.headers = list(event.headers)
            answer.status = int(dict(event.headers)[b":status"])
        elif isinstance(event, h2.events.DataReceived):
            answer.body += event.data
            self.conn.acknowledge_received_data(event.flow_controlled_length, stream_id)
        elif isinstance(event, h2.events.StreamEnded):
            answer.ended = True
        elif isinstance(event, h2.events.StreamReset):
            answer.reset = event.error_code

    def wait(self, stream_id: int) -> H2Answer:
        """Read until ``stream_id`` is answered in full or reset."""
        answer = self.answers[stream_id]
        while not (answer.ended or answer.reset is not None):
            if not self.read():
                break
        return answer

    def get(self, path: str) -> H2Answer:
        return self.wait(self.request("GET", path))

    def close(self) -> None:
        try:
            self.conn.close_connection()
            self.flush()
        except OSError:
            pass
        self.sock.close()
