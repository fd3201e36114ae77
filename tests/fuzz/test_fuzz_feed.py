"""The event feed's websocket, fuzzed live: a real ``dockyard serve`` and raw websocket
frames (wsproto for the handshake and for reading the server, frames written by hand so
they can be anything: invalid UTF-8, binary, unmasked, oversized, fragmented).

Whatever the first message, the server answers with a welcome (a valid subscription) or
closes with the feed's 4400 or a websocket protocol code, never an internal error (1011)
and never a traceback in its log; afterwards it still serves.
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

from dockyard.events.feed import CLOSE_BAD_REQUEST, FEED_PATH
from tests.e2e.conftest import serving
from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e

# What a refused first message may get: the feed's own code, or the websocket protocol's
# for a frame it cannot take (protocol error, invalid UTF-8, message too big).
ALLOWED_CLOSE = {CLOSE_BAD_REQUEST, 1002, 1007, 1009}


@pytest.fixture(scope="module")
def feed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root: Path = tmp_path_factory.mktemp("feedfuzz") / "data"
    yield from serving(DockyardServer(root))


@dataclass
class Frame:
    opcode: int  # 1 text, 2 binary, 0 continuation, 8 close, 9 ping, 10 pong, others reserved
    payload: bytes
    fin: bool = True
    masked: bool = True  # a client must mask; an unmasked frame is a protocol error
    rsv: int = 0

    def encode(self) -> bytes:
        head = bytes([(0x80 if self.fin else 0) | (self.rsv << 4) | self.opcode])
        size = len(self.payload)
        mask_bit = 0x80 if self.masked else 0
        if size < 126:
            head += bytes([mask_bit | size])
        elif size < 2**16:
            head += bytes([mask_bit | 126]) + struct.pack("!H", size)
        else:
            head += bytes([mask_bit | 127]) + struct.pack("!Q", size)
        if not self.masked:
            return head + self.payload
        key = os.urandom(4)
        return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(self.payload))


@dataclass
class Outcome:
    welcome: bool = False
    close_code: int | None = None
    # Closed without a close frame: hypercorn's answer to a frame that breaks the
    # websocket protocol (wsproto fails the connection, RFC 6455 7.1.7; the close frame
    # is a SHOULD that hypercorn does not send).
    dropped: bool = False


def exchange(
    server: DockyardServer, frames: list[Frame], then: list[Frame] | None = None
) -> Outcome:
    """Open the feed, send ``frames`` raw, and read until a welcome or the server's close;
    after a welcome, send ``then`` and read until the server closes or is quiet."""
    wait = 5.0
    ws = WSConnection(ConnectionType.CLIENT)
    outcome = Outcome()
    with socket.create_connection(("127.0.0.1", server.port), timeout=wait) as sock:
        sock.sendall(ws.send(Request(host=server.host, target=FEED_PATH)))
        accepted = False
        while not accepted:
            data = sock.recv(65536)
            assert data, "the server closed during the handshake"
            ws.receive_data(data)
            for event in ws.events():
                assert not isinstance(event, RejectConnection), event
                accepted = accepted or isinstance(event, AcceptConnection)
        try:
            for frame in frames:
                sock.sendall(frame.encode())
        except OSError:
            pass  # closed under us: the close frame may already be in our buffer
        while outcome.close_code is None and not outcome.welcome:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break  # neither answered nor closed: check() fails it
            except OSError:
                data = b""
            if not data:
                outcome.dropped = True
                break
            take(ws, data, outcome)
        if then is not None and outcome.welcome:
            later(sock, ws, then, outcome)
    return outcome


def take(ws: WSConnection, data: bytes, outcome: Outcome) -> None:
    ws.receive_data(data)
    for event in ws.events():
        if isinstance(event, TextMessage):
            outcome.welcome = outcome.welcome or json.loads(event.data)["type"] == "welcome"
        elif isinstance(event, CloseConnection):
            outcome.close_code = event.code


def later(sock: socket.socket, ws: WSConnection, frames: list[Frame], outcome: Outcome) -> None:
    """Send a subscriber's later ``frames``; read until closed or quiet for a moment."""
    try:
        for frame in frames:
            sock.sendall(frame.encode())
    except OSError:
        pass
    sock.settimeout(0.15)
    while outcome.close_code is None:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return  # still open: the messages were ignored
        except OSError:
            data = b""
        if not data:
            outcome.dropped = True
            return
        take(ws, data, outcome)


def check(outcome: Outcome, protocol_error_possible: bool) -> None:
    """A welcome or an allowed close code; or, for frames that may break the websocket
    protocol itself, a dropped connection."""
    if protocol_error_possible and outcome.dropped:
        return
    assert outcome.welcome or outcome.close_code in ALLOWED_CLOSE, outcome


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=30,
)
KEYS = st.sampled_from(["type", "since", "repository", "action", "mediaType", "x", ""])
SUBSCRIBE_LIKE = st.builds(
    lambda pairs: "{" + ",".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in pairs) + "}",
    # A list of pairs, not a dict: keys may repeat ({"since": 1, "since": 2}).
    st.lists(st.tuples(KEYS, JSON | st.just("subscribe")), max_size=6).map(
        lambda pairs: [("type", "subscribe"), *pairs]
    ),
)
DEEP = st.integers(min_value=1, max_value=20_000).flatmap(
    lambda n: st.sampled_from(["[" * n + "]" * n, '{"a":' * n + "1" + "}" * n, "[" * n])
)
TEXT = st.one_of(
    JSON.map(lambda doc: json.dumps(doc, allow_nan=True)),
    SUBSCRIBE_LIKE,
    DEEP,
    st.text(max_size=200),
    st.integers(min_value=1, max_value=200_000).map(lambda n: '"' + "a" * n + '"'),
)
# Well-formed websocket messages: only the feed's answer counts (welcome or 4400; 1009
# for one over the size limit).
MESSAGES = st.one_of(
    TEXT.map(lambda text: [Frame(1, text.encode())]),
    # A text message in two fragments.
    TEXT.map(lambda text: [Frame(1, text.encode()[:5], fin=False), Frame(0, text.encode()[5:])]),
)
# Frames that may break the protocol: the server may also just drop the connection.
RAW_FRAMES = st.one_of(
    # Not UTF-8 (a lone continuation byte, a truncated sequence, surrogates).
    st.binary(max_size=100).map(lambda b: [Frame(1, b + b"\x80\xed\xa0\x80")]),
    st.binary(max_size=300).map(lambda b: [Frame(2, b)]),
    st.builds(
        Frame,
        st.sampled_from([0, 1, 2, 3, 7, 8, 9, 10, 11, 15]),
        st.binary(max_size=200),
        st.booleans(),
        st.booleans(),
        st.integers(min_value=0, max_value=7),
    ).map(lambda frame: [frame]),
    # A fragment never finished, or a continuation with nothing to continue.
    TEXT.map(lambda text: [Frame(1, text.encode(), fin=False), Frame(1, b"{}")]),
    st.binary(max_size=50).map(lambda b: [Frame(0, b)]),
)


@given(MESSAGES)
def test_first_messages(feed_server: DockyardServer, frames: list[Frame]) -> None:
    check(exchange(feed_server, frames), protocol_error_possible=False)


@given(RAW_FRAMES)
def test_first_frames(feed_server: DockyardServer, frames: list[Frame]) -> None:
    check(exchange(feed_server, frames), protocol_error_possible=True)


# Each example that stays open waits a moment to see it stay open: fewer examples.
@settings(max_examples=max(20, settings().max_examples // 4))
@given(st.lists(MESSAGES | RAW_FRAMES, min_size=1, max_size=3))
def test_messages_after_subscribing(feed_server: DockyardServer, sent: list[list[Frame]]) -> None:
    """A subscriber's later messages are read and ignored, or closed on; nothing else."""
    first = Frame(1, b'{"type": "subscribe", "repository": "fuzz/*"}')
    outcome = exchange(feed_server, [first], then=[f for frames in sent for f in frames])
    assert outcome.welcome, outcome
    assert outcome.close_code in (None, *ALLOWED_CLOSE), outcome


def test_message_too_big_is_1009(feed_server: DockyardServer) -> None:
    outcome = exchange(feed_server, [Frame(1, b'"' + b"a" * (128 * 1024) + b'"')])
    assert outcome.close_code == 1009, outcome


def test_the_server_still_serves(feed_server: DockyardServer) -> None:
    """Run last in the module: after everything above, requests and the feed work."""
    assert httpx.get(f"{feed_server.url}/v2/").status_code == 200
    outcome = exchange(feed_server, [Frame(1, b'{"type": "subscribe", "since": 0}')])
    assert outcome.welcome, outcome
    assert "Traceback" not in feed_server.log()
