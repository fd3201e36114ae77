"""The events scenario's latency is measured from the event, not from the push response.

Issue 14: the scenario reported negative minimum latencies (about -114 ms). It paired
each subscriber's arrival time with the time the PUT's *response* reached the pusher,
which a busy server sends late: dockyard wakes its feeds when the event is committed,
and the response is written by a task that runs after part of the fan-out. An event then
"arrived before it happened". The delay a subscriber sees starts when the change was
made: the event's own ``timestamp`` (server clock, microseconds; CLOCK_REALTIME on the
same host, moved to CLOCK_MONOTONIC like the arrival times).

The server here is a stand-in that does exactly that, deliberately: on a manifest PUT it
sends the event to every subscriber first and answers the PUT ``LATE`` seconds later.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest
from perf import feed
from perf.scenarios import Events, Params, Target

LATE = 0.3  # seconds between the fan-out and the PUT's response


def frame(text: bytes) -> bytes:
    n = len(text)
    head = bytes([0x81, n]) if n < 126 else bytes([0x81, 126]) + n.to_bytes(2, "big")
    return head + text


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.subscribers: list[socket.socket] = []
        self.events = 0


class _FanOutFirst(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            headers = {
                k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
            }
            if headers.get("upgrade", "").lower() == "websocket":
                self._subscribe(sock, headers["sec-websocket-key"])
                return
            length = int(headers.get("content-length", "0"))
            while len(buf) < length:
                buf += sock.recv(65536)
            body, buf = buf[:length], buf[length:]
            if lines[0].startswith("PUT "):
                self._publish("sha256:" + hashlib.sha256(body).hexdigest())
                time.sleep(LATE)
            sock.sendall(b"HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n")

    def _subscribe(self, sock: socket.socket, key: str) -> None:
        accept = base64.b64encode(hashlib.sha1(key.encode() + feed.GUID).digest()).decode()
        sock.sendall(
            (
                "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
                f"connection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
            ).encode()
            + frame(b'{"type":"welcome","last_id":0,"since":0,"filter":{},"heartbeat":15}')
        )
        with self.server.state.lock:
            self.server.state.subscribers.append(sock)
        while sock.recv(65536):
            pass  # until the client closes

    def _publish(self, digest: str) -> None:
        state = self.server.state
        with state.lock:
            state.events += 1
            now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            event = {"id": state.events, "timestamp": now, "action": "push"}
            event["target"] = {"repository": Events.REPO, "digest": digest}
            text = json.dumps({"type": "event", "event": event}, separators=(",", ":"))
            for sub in state.subscribers:
                sub.sendall(frame(text.encode()))


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _FanOutFirst)
        self.state = _State()


@pytest.fixture
def fan_out_first() -> Iterator[Target]:
    server = _Server()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Target("A", "fan-out-first", f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_an_event_sent_before_its_push_response_has_a_positive_latency(
    fan_out_first: Target,
) -> None:
    params = Params.quick().with_overrides(
        events_subscribers=4, events_pushes=3, events_procs=1, events_grace=2.0
    )
    scenario = Events(params)
    scenario.prepare(0)
    record = scenario.run(fan_out_first, 0)[0]
    f = record.figures
    assert f["events_received"] == f["events_expected"] == 12, record.info
    # From the event's timestamp: never negative, and well under the response's delay.
    assert 0 <= f["min_ms"] <= f["p50_ms"] <= f["max_ms"] < 1000 * LATE / 2, f
    assert f["early_events"] == 0
    # What the old pairing measured is still reported, and it is negative here.
    assert f["from_response_min_ms"] < -1000 * LATE / 2, f
