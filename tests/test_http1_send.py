"""A response's head goes out with what follows it (http/edge.py, StrictServerConnection):
one socket write per small answer instead of two, the bytes unchanged."""

from __future__ import annotations

import h11
import pytest

from dockyard.http import edge
from dockyard.http.edge import StrictServerConnection


def answering(request: bytes) -> StrictServerConnection:
    conn = StrictServerConnection(h11.SERVER)
    conn.receive_data(request)
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    return conn


def test_the_head_goes_out_with_the_body() -> None:
    conn = answering(b"GET /v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n")
    head = h11.Response(status_code=200, headers=[("content-length", "2")])
    assert conn.send(head) == b""
    assert conn.send(h11.Data(data=b"{}")) == b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\n{}"
    assert conn.send(h11.EndOfMessage()) == b""


def test_a_bodiless_answer_goes_out_at_its_end() -> None:
    conn = answering(b"HEAD /v2/ HTTP/1.1\r\nHost: registry.test\r\n\r\n")
    assert conn.send(h11.Response(status_code=200, headers=[("content-length", "2")])) == b""
    assert conn.send(h11.EndOfMessage()) == b"HTTP/1.1 200 \r\ncontent-length: 2\r\n\r\n"


def test_informational_answers_are_not_held() -> None:
    conn = StrictServerConnection(h11.SERVER)
    conn.receive_data(
        b"PUT /x HTTP/1.1\r\nHost: registry.test\r\nContent-Length: 2\r\n"
        b"Expect: 100-continue\r\n\r\n"
    )
    assert isinstance(conn.next_event(), h11.Request)
    sent = conn.send(h11.InformationalResponse(status_code=100, headers=[]))
    assert sent == b"HTTP/1.1 100 \r\n\r\n"


def test_chunked_bodies_keep_their_framing() -> None:
    conn = answering(b"GET /big HTTP/1.1\r\nHost: registry.test\r\n\r\n")
    assert (
        conn.send(h11.Response(status_code=200, headers=[("transfer-encoding", "chunked")])) == b""
    )
    first = conn.send(h11.Data(data=b"abc"))
    assert first == b"HTTP/1.1 200 \r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
    assert conn.send(h11.Data(data=b"de")) == b"2\r\nde\r\n"
    assert conn.send(h11.EndOfMessage()) == b"0\r\n\r\n"


# -- responses made and sent the short way (edge.response, and h11's rewrite skipped when it
# would change nothing): the same events, errors and bytes as h11's own way.

HEADER_SETS: list[list[tuple[bytes, bytes]]] = [
    [(b"content-length", b"2"), (b"content-type", b"application/json")],
    [(b"Content-Length", b"10"), (b"Docker-Content-Digest", b"sha256:" + b"ab" * 32)],
    [(b"content-length", b"5, 5")],  # h11 collapses equal lengths
    [(b"x-empty", b"")],
    [(b"etag", b'"a b"'), (b"content-length", b"0")],
    [(b"transfer-encoding", b"chunked")],
    [(b"transfer-encoding", b"Chunked")],
    [(b"connection", b"close"), (b"content-length", b"1")],
    [(b"connection", b"keep-alive"), (b"content-length", b"1")],
    [],
]
BAD_HEADER_SETS: list[list[tuple[bytes, bytes]]] = [
    [(b"x-bad", b"a\r\nInjected: yes")],
    [(b"x-bad", b"a\nb")],
    [(b"x-bad", b"nul\0")],
    [(b"x-bad", b" leading")],
    [(b"x-bad", b"trailing ")],
    [(b"bad name", b"v")],
    [(b"bad:name", b"v")],
    [(b"", b"v")],
    [(b"content-length", b"1"), (b"content-length", b"2")],
    [(b"content-length", b"-1")],
    [(b"transfer-encoding", b"gzip")],
]


def made(headers: list[tuple[bytes, bytes]], status: int, short: bool) -> object:
    """The event, or the error's type and text."""
    try:
        if short:
            return edge.response(headers, status)
        return h11.Response(headers=headers, status_code=status)
    except h11.LocalProtocolError as e:
        return ("LocalProtocolError", str(e))


def fields(event: object) -> object:
    if isinstance(event, h11.Response):
        return (event.status_code, event.reason, event.http_version, event.headers._full_items)
    return event


@pytest.mark.parametrize("headers", HEADER_SETS + BAD_HEADER_SETS)
def test_a_response_is_made_as_h11_makes_it(headers: list[tuple[bytes, bytes]]) -> None:
    for status in (200, 204, 304, 404):
        assert fields(made(headers, status, True)) == fields(made(headers, status, False))


def test_bad_headers_are_still_refused() -> None:
    for headers in BAD_HEADER_SETS:
        with pytest.raises(h11.LocalProtocolError):
            edge.response(headers, 200)
    edge.response([(b"x-fine", b"v")], 200)  # a good name and value are remembered ...
    with pytest.raises(h11.LocalProtocolError):
        edge.response([(b"x-fine", b"v\r\n")], 200)  # ... other values still checked
    with pytest.raises(h11.LocalProtocolError):
        edge.response([(b"x fine", b"v")], 200)  # ... and other names


def test_str_headers_are_converted_as_h11_does() -> None:
    assert fields(edge.response([("Content-Length", "3")], 200)) == fields(  # type: ignore[list-item]
        h11.Response(headers=[("Content-Length", "3")], status_code=200)
    )


REQUESTS = [
    b"GET /v2/ HTTP/1.1\r\nHost: r.test\r\n\r\n",
    b"HEAD /v2/ HTTP/1.1\r\nHost: r.test\r\n\r\n",
    b"GET /v2/ HTTP/1.1\r\nHost: r.test\r\nConnection: close\r\n\r\n",
    b"GET /v2/ HTTP/1.0\r\nHost: r.test\r\n\r\n",
    b"HEAD /v2/ HTTP/1.0\r\n\r\n",
    b"GET /v2/ HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
]


def answer(conn: h11.Connection, request: bytes, response: h11.Response, body: bytes) -> object:
    """Every byte of the answer, then both sides' states: or the error h11 raised."""
    conn.receive_data(request)
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    try:
        out = conn.send(response) or b""
        if body:
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError as e:
        return ("LocalProtocolError", str(e))
    return out, conn.our_state, conn.their_state


@pytest.mark.parametrize("request_bytes", REQUESTS)
@pytest.mark.parametrize("headers", HEADER_SETS)
@pytest.mark.parametrize("status", [200, 204, 304, 500])
def test_an_answer_goes_out_as_h11_sends_it(
    request_bytes: bytes, headers: list[tuple[bytes, bytes]], status: int
) -> None:
    lengths = [v for n, v in headers if n.lower() == b"content-length"]
    body = b"x" * int(lengths[0].split(b",")[0]) if lengths and status not in (204, 304) else b""
    ours = answer(
        StrictServerConnection(h11.SERVER), request_bytes, edge.response(headers, status), body
    )
    theirs = answer(
        h11.Connection(h11.SERVER),
        request_bytes,
        h11.Response(headers=headers, status_code=status),
        body,
    )
    assert ours == theirs


def test_hypercorns_final_response_lines_are_the_ones_copied() -> None:
    from hypercorn.protocol.h11 import H11Protocol

    edge._check_stream_send(H11Protocol)  # the pinned hypercorn: nothing raised

    class Changed:
        async def stream_send(self, event: object) -> None:
            headers: list[tuple[bytes, bytes]] = []
            await self.send(h11.Response(headers=headers, status_code=200))  # type: ignore[attr-defined]

    with pytest.raises(RuntimeError, match="stream_send"):
        edge._check_stream_send(Changed)
