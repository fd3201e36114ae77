"""The HTTP/1 edge of a real ``dockyard serve`` (hypercorn + h11), over raw sockets.

Ambiguous framing and invalid request lines are refused and the connection closed: the
request smuggled behind them is never answered. See docs/security.md "The HTTP edge".
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from tests.serverproc import DockyardServer

pytestmark = pytest.mark.e2e

SMUGGLED = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
UPLOAD = b"POST /v2/edge/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n"


def exchange(server: DockyardServer, raw: bytes, wait: float = 3.0) -> tuple[list[int], bool]:
    """The statuses answered to ``raw`` on one connection and whether the server closed it."""
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.settimeout(wait)
        sock.sendall(raw)
        received = b""
        closed = False
        try:
            while chunk := sock.recv(65536):
                received += chunk
            closed = True
        except TimeoutError:
            pass
    statuses = [
        int(line.split()[1])
        for line in received.split(b"\r\n")
        if line.startswith(b"HTTP/1.") and len(line.split()) >= 2
    ]
    return statuses, closed


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(UPLOAD + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", id="cl-te"),
        pytest.param(UPLOAD + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", id="te-cl"),
        pytest.param(UPLOAD + b"Content-Length: 0\r\nContent-Length: 0\r\n", id="cl-twice"),
        pytest.param(UPLOAD + b"Content-Length: 0, 0\r\n", id="cl-list"),
        pytest.param(UPLOAD + b"Content-Length: 0\r\nContent-Length: 5\r\n", id="cl-conflict"),
        pytest.param(UPLOAD + b"Content-Length: +0\r\n", id="cl-sign"),
        pytest.param(UPLOAD + b"Content-Length: 0x0\r\n", id="cl-hex"),
        pytest.param(UPLOAD + b"Content-Length: 99999999999999999999999\r\n", id="cl-over-64-bit"),
        pytest.param(UPLOAD + b"Transfer-Encoding: gzip\r\n", id="te-gzip"),
        pytest.param(UPLOAD + b"Transfer-Encoding: gzip, chunked\r\n", id="te-list"),
        pytest.param(UPLOAD + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", id="te-2"),
    ],
)
def test_ambiguous_framing_is_400_and_closes(registry: DockyardServer, head: bytes) -> None:
    statuses, closed = exchange(registry, head + b"\r\n0\r\n\r\n" + SMUGGLED)
    assert statuses == [400], statuses
    assert closed


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"get /v2/ HTTP/1.1", 400),
        (b"Get /v2/ HTTP/1.1", 400),
        (b"FOO /v2/ HTTP/1.1", 400),
        (b"BREW /v2/ HTTP/1.1", 400),
        (b"GET /v2/ HTTP/1.2", 505),
        (b"GET /v2/ HTTP/2.0", 505),
        (b"GET /v2/ HTTP/0.9", 505),
        (b"GET /v2/ HTTP/9.9", 505),
        (b"GET /v2/ HTTP/1", 400),
        (b"GET /v2/ http/1.1", 400),
        (b"GET  /v2/ HTTP/1.1", 400),
    ],
)
def test_invalid_request_line_is_refused(
    registry: DockyardServer, line: bytes, status: int
) -> None:
    statuses, closed = exchange(registry, line + b"\r\nHost: x\r\n\r\n" + SMUGGLED)
    assert statuses == [status], statuses
    assert closed


@pytest.mark.parametrize(
    "host", [b"a b", b"x/y", b"x@y", b"[::1", b"x:port", b"x:123456", b""], ids=repr
)
def test_malformed_host_is_400(registry: DockyardServer, host: bytes) -> None:
    statuses, closed = exchange(registry, b"GET /v2/ HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert statuses == [400], statuses
    assert closed


def test_absolute_form_is_served_as_its_path(registry: DockyardServer) -> None:
    raw = b"GET http://127.0.0.1/v2/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert exchange(registry, raw, wait=1.0)[0] == [200]
    # Not a path dockyard serves once the absolute form is taken apart: 404, not 200.
    raw = b"GET http://127.0.0.1/v3/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    assert exchange(registry, raw, wait=1.0)[0] == [404]


@pytest.mark.parametrize("host", [b"[::1]:5000", b"127.0.0.1", b"registry.example:443"])
def test_valid_requests_are_served(registry: DockyardServer, host: bytes) -> None:
    raw = b"GET /v2/ HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    assert exchange(registry, raw, wait=1.0)[0] == [200]
    raw = b"GET /v2/ HTTP/1.0\r\n\r\n"
    assert exchange(registry, raw, wait=1.0)[0] == [200]


@pytest.fixture(scope="module")
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("edge") / "data"
    env = {
        "DOCKYARD_SERVER_HEADER_TIMEOUT": "1.5",
        "DOCKYARD_SERVER_MAX_HEADER_BYTES": "4096",
        "DOCKYARD_SERVER_MAX_HEADERS": "20",
    }
    with DockyardServer(root, env=env) as server:
        yield server


def test_slowloris_head_is_cut_off(impatient: DockyardServer) -> None:
    """A head trickled a byte at a time is cut off after header_timeout, not held."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", impatient.port)) as sock:
        sock.settimeout(10)
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        answer = b""
        try:
            for _ in range(40):
                time.sleep(0.25)
                sock.sendall(b"X-A: b\r\n")
        except OSError:
            pass  # the server closed the connection under us
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    assert time.monotonic() - started < 8, "the trickling client was held"
    assert answer.startswith(b"HTTP/1.1 408"), answer[:100]


def test_header_bytes_are_bounded(impatient: DockyardServer) -> None:
    raw = b"GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 8000 + b"\r\n\r\n"
    statuses, closed = exchange(impatient, raw)
    assert statuses and 400 <= statuses[0] < 500, statuses
    assert closed
    assert exchange(impatient, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n", wait=1.0)[0] == [200]


def test_silent_partial_head_is_cut_off(impatient: DockyardServer) -> None:
    """Part of a head and then silence: closed (hypercorn's idle timer), not held."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", impatient.port)) as sock:
        sock.settimeout(15)
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n")
        try:
            while sock.recv(65536):
                pass
        except OSError:
            pass
    assert time.monotonic() - started < 12, "the silent client was held"


def test_header_count_is_bounded(impatient: DockyardServer) -> None:
    """More header lines than server.max_headers: 431 and closed, even when each is small
    and the head is well under max_header_bytes."""
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(20))
    statuses, closed = exchange(impatient, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n")
    assert statuses == [431], statuses
    assert closed
    # The same header repeated counts each time.
    lines = b"Accept: */*\r\n" * 20
    raw = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n" + SMUGGLED
    assert exchange(impatient, raw) == ([431], True)
    lines = b"".join(b"X-%d: v\r\n" % i for i in range(19))
    raw = b"GET /v2/ HTTP/1.1\r\nHost: x\r\n" + lines + b"\r\n"
    assert exchange(impatient, raw, wait=1.0)[0] == [200]


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """One whole response (head and Content-Length body) from ``sock``: status, body."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before a whole head: {data!r}"
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.split(b"\r\n")
    fields = dict(line.split(b":", 1) for line in lines[1:])
    length = int({k.strip().lower(): v for k, v in fields.items()}[b"content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), body[:length]


def test_early_answer_keeps_the_connection(registry: DockyardServer) -> None:
    """An answer given before a body is read (a PUT to an unknown upload: 404) arrives
    while the client is still sending, and the connection stays usable once the body is
    sent: the client reads the error, sends the rest, and its next request is answered.
    (hypercorn closes a connection whose request was not read whole when the response
    ended, so dockyard ends an early answer only after the body is drained.)"""
    size = 8 << 20
    digest = "sha256:" + "0" * 64
    head = (
        f"PUT /v2/edge/blobs/uploads/no-such-upload?digest={digest} HTTP/1.1\r\n"
        f"Host: x\r\nContent-Length: {size}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", registry.port)) as sock:
        sock.settimeout(10)
        sock.sendall(head + b"x" * (1 << 20))
        status, body = read_response(sock)  # the answer comes before the body is all sent
        assert status == 404 and b"BLOB_UPLOAD_UNKNOWN" in body
        time.sleep(0.3)  # the server has sent the answer: nothing else must end it
        sock.sendall(b"x" * (size - (1 << 20)))
        sock.sendall(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
