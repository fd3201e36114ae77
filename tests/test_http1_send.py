"""A response's head goes out with what follows it (http/edge.py, StrictServerConnection):
one socket write per small answer instead of two, the bytes unchanged."""

from __future__ import annotations

import h11

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
