"""The HTTP/1 edge hands Content-Length body reads through without h11's copies, and
frames every byte stream exactly as h11 does."""

from __future__ import annotations

import itertools
from typing import Any

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockyard.http.edge import StrictServerConnection

HEAD = b"PUT /v2/a/blobs/uploads/x HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"


def _events(conn: h11.Connection, reads: list[bytes], eof: bool = False) -> list[Any]:
    """What hypercorn's HTTP/1 protocol sees: each read, then events until NEED_DATA."""
    out: list[Any] = []
    for read in [*reads, b""] if eof else reads:
        conn.receive_data(read)
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as e:
                out.append(("error", str(e)))
                return out
            if event is h11.NEED_DATA or event is h11.PAUSED:
                break
            out.append(event)
            if isinstance(event, h11.ConnectionClosed):
                return out
            if isinstance(event, h11.EndOfMessage):
                conn.send(h11.Response(status_code=201, headers=[("content-length", "0")]))
                conn.send(h11.EndOfMessage())
                conn.start_next_cycle()
    return out


def _normalized(events: list[Any]) -> list[Any]:
    """Events with the body joined (h11 splits Data wherever the reads fell)."""
    out: list[Any] = []
    for event in events:
        if isinstance(event, h11.Data):
            if out and isinstance(out[-1], bytes):
                out[-1] += bytes(event.data)
            else:
                out.append(bytes(event.data))
        elif isinstance(event, h11.Request):
            out.append((event.method, event.target, list(event.headers)))
        else:
            out.append(event if isinstance(event, tuple) else type(event).__name__)
    return out


def test_a_body_read_is_handed_out_as_it_came() -> None:
    conn = StrictServerConnection(h11.SERVER)
    conn.receive_data(HEAD % (3 << 20))
    assert isinstance(conn.next_event(), h11.Request)
    assert conn.next_event() is h11.NEED_DATA
    read = bytes(range(256)) * 4096  # 1 MiB
    conn.receive_data(read)
    event = conn.next_event()
    assert isinstance(event, h11.Data)
    assert event.data is read  # no copy
    assert conn.next_event() is h11.NEED_DATA


def test_a_read_past_the_body_keeps_the_next_request() -> None:
    conn = StrictServerConnection(h11.SERVER)
    events = _events(conn, [HEAD % 10, b"01234", b"56789" + HEAD % 2 + b"a", b"b"])
    assert _normalized(events) == _normalized(_events(h11.Connection(h11.SERVER), [
        HEAD % 10, b"01234", b"56789" + HEAD % 2 + b"a", b"b",
    ]))  # fmt: skip
    bodies = [e for e in _normalized(events) if isinstance(e, bytes)]
    assert bodies == [b"0123456789", b"ab"]


def test_a_body_cut_short_is_an_error() -> None:
    conn = StrictServerConnection(h11.SERVER)
    events = _events(conn, [HEAD % 10, b"01234"], eof=True)
    assert events[-1][0] == "error"
    assert conn.their_state is h11.ERROR


# Two pipelined requests (a body, then an empty one), a chunked one and a third with a
# body, cut into reads at arbitrary places, with or without the stream ending early.
STREAM = (
    HEAD % 300
    + bytes(range(150)) * 2
    + HEAD % 0
    + b"PATCH /v2/a/blobs/uploads/y HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    + b"5\r\nhello\r\n0\r\n\r\n"
    + HEAD % 7
    + b"trailer"
)


@settings(max_examples=300, deadline=None)
@given(
    cuts=st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12),
    end=st.integers(min_value=0, max_value=len(STREAM)),
)
def test_framing_is_h11s_wherever_the_reads_fall(cuts: list[int], end: int) -> None:
    data = STREAM[:end]
    bounds = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    reads = [data[a:b] for a, b in itertools.pairwise(bounds)]
    ours = _events(StrictServerConnection(h11.SERVER), reads, eof=True)
    theirs = _events(h11.Connection(h11.SERVER), reads, eof=True)
    assert _normalized(ours) == _normalized(theirs)


@pytest.mark.parametrize("split", [1, 150, 299])
def test_held_read_then_more_data_before_next_event(split: int) -> None:
    # Two reads arrive before the protocol asks for events: order is kept.
    conn = StrictServerConnection(h11.SERVER)
    conn.receive_data(HEAD % 300)
    assert isinstance(conn.next_event(), h11.Request)
    body = bytes(range(150)) * 2
    conn.receive_data(body[:split])
    conn.receive_data(body[split:] + HEAD % 0)
    got = b""
    while True:
        event = conn.next_event()
        if isinstance(event, h11.EndOfMessage):
            break
        assert isinstance(event, h11.Data)
        got += bytes(event.data)
    assert got == body
    assert conn.trailing_data == (HEAD % 0, False)
