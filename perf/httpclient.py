"""A blocking HTTP/1.1 keep-alive client on a raw socket, built to cost the client little.

- Request heads are formatted once per request; small bodies go out in the same
  ``sendall`` as the head, large ones straight from the caller's memory (no copy), and a
  :class:`RepeatedBody` streams a block many times (a 4 GiB upload from 8 MiB of memory).
- Response bodies the caller does not keep are drained with ``recv_into`` into one
  reused 1 MiB buffer: no copy into Python objects and no hashing. Only the first bytes
  that arrive with the head pass through a small bytearray.
- Content-Length, chunked and read-until-close bodies; HEAD, 1xx, 204 and 304 carry none.
- A request on a reused connection that the server closed while idle is retried once on a
  new connection (``reconnects`` counts them); any other failure raises.
- Over TLS (``tls``: ``perf.tls.ClientTLS``) the socket is wrapped after connecting, the
  server's certificate verified against the run's CA, and ALPN must choose http/1.1.
  :func:`open_connection` gives an HTTP/2 connection instead when ``tls.http2`` is set
  (``perf.h2client``).

Not thread-safe: one :class:`Connection` per thread.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import ClassVar
from urllib.parse import urlsplit

from perf.tls import ClientTLS

BUFFER = 1 << 20
HEAD_READ = 64 * 1024
MAX_HEAD = 256 * 1024
INLINE_BODY = 64 * 1024


class HTTPError(Exception):
    """The server broke HTTP/1.1 or the connection failed mid-response."""


class ConnectionClosed(HTTPError):
    """The server closed the connection before a complete response."""


class NotStarted(ConnectionClosed):
    """The server closed or went away before it took the request: safe to retry."""


@dataclass(frozen=True, slots=True)
class RepeatedBody:
    """``prefix`` then ``block`` ``count`` times then ``suffix``, never materialized."""

    prefix: bytes
    block: bytes
    count: int
    suffix: bytes = b""

    def __len__(self) -> int:
        return len(self.prefix) + len(self.block) * self.count + len(self.suffix)

    def chunks(self) -> Iterator[memoryview]:
        if self.prefix:
            yield memoryview(self.prefix)
        view = memoryview(self.block)
        for _ in range(self.count):
            yield view
        if self.suffix:
            yield memoryview(self.suffix)


Body = bytes | bytearray | memoryview | RepeatedBody


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    received: int  # body bytes received (kept or drained)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@dataclass
class Counters:
    requests: int = 0
    sent: int = 0  # body bytes sent
    received: int = 0  # body bytes received
    reconnects: int = 0


def add_header(headers: dict[str, str], key: str, value: str) -> None:
    """A response header; a repeated one is joined with ", " (RFC 9110 5.3)."""
    headers[key] = f"{headers[key]}, {value}" if key in headers else value


def split_url(url: str) -> tuple[str, int]:
    """(host, port) of an ``http://`` or ``https://host:port`` URL; loopback hosts only."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or parts.hostname is None:
        raise ValueError(f"only http:// and https:// URLs are supported, not {url!r}")
    if parts.hostname not in ("127.0.0.1", "localhost", "::1") and not parts.hostname.startswith(
        "127."
    ):
        raise ValueError(f"the perf suite talks to loopback addresses only, not {url!r}")
    return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)


def wrap(sock: socket.socket, context: ssl.SSLContext, tls: ClientTLS, host: str) -> ssl.SSLSocket:
    """``sock`` after a verified TLS handshake that chose ``tls.protocol``; closed if not."""
    try:
        wrapped = context.wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise
    try:
        tls.check(wrapped)
    except BaseException:
        wrapped.close()
        raise
    return wrapped


def target_of(location: str) -> str:
    """The request target (path and query) of a Location header, absolute or not."""
    if location.startswith(("http://", "https://")):
        parts = urlsplit(location)
        return parts.path + (f"?{parts.query}" if parts.query else "")
    return location


@dataclass
class Connection:
    host: str
    port: int
    timeout: float = 120.0
    counters: Counters = field(default_factory=Counters)
    tls: ClientTLS | None = None

    protocol: ClassVar[str] = "HTTP/1.1"
    # Errors of a protocol library that mean the server broke the protocol (HTTPError).
    protocol_errors: ClassVar[tuple[type[Exception], ...]] = ()

    def __post_init__(self) -> None:
        self._sock: socket.socket | None = None
        self._buffer = bytearray(BUFFER)
        self._view = memoryview(self._buffer)
        self._pending = bytearray()
        self._used = 0  # responses read on the current socket
        self._nothing_read = True  # no byte of the current response arrived yet
        self._host_header = f"{self.host}:{self.port}"
        self._context = self.tls.context() if self.tls is not None else None

    # -- socket

    def _open_socket(self) -> socket.socket:
        """A connected socket; over TLS verified and with the protocol ALPN must choose."""
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is None or self._context is None:
            return sock
        return wrap(sock, self._context, self.tls, self.host)

    def connect(self) -> None:
        if self._sock is not None:
            return
        self._sock = self._open_socket()
        self._pending.clear()
        self._used = 0

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._pending.clear()

    def negotiated(self) -> str:
        """What the open connection speaks: "plain HTTP/1.1" or, over TLS, its version,
        cipher and the ALPN protocol, e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384, ALPN h2"."""
        self.connect()
        sock = self._sock
        if not isinstance(sock, ssl.SSLSocket):
            return "plain HTTP/1.1"
        cipher = sock.cipher()
        alpn = sock.selected_alpn_protocol() or "none"
        return f"{sock.version()} {cipher[0] if cipher else '?'}, ALPN {alpn}"

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- requests

    def request(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]] = (),
        body: Body | None = None,
        keep_body: bool = False,
    ) -> Response:
        """Send one request and read its whole response (``_exchange``, per protocol).

        ``keep_body`` keeps the body in ``Response.body``; otherwise it is drained. A
        request the server never took (``NotStarted``, or nothing read on a reused
        connection it closed while idle) is sent once more on a new connection.
        """
        for attempt in (0, 1):
            self.connect()
            reused = self._used > 0
            try:
                response = self._exchange(method, target, headers, body, keep_body)
            except ConnectionClosed as e:
                self.close()
                retry = isinstance(e, NotStarted) or (reused and self._nothing_read)
                if attempt == 0 and retry:
                    self.counters.reconnects += 1
                    continue
                raise
            except (OSError, HTTPError):
                self.close()
                raise
            except self.protocol_errors as e:  # the protocol library's own
                self.close()
                raise HTTPError(f"{self.protocol}: {e}") from e
            self.counters.requests += 1
            self.counters.received += response.received
            return response
        raise AssertionError("unreachable")

    def _exchange(
        self,
        method: str,
        target: str,
        headers: Sequence[tuple[str, str]],
        body: Body | None,
        keep_body: bool,
    ) -> Response:
        sock = self._sock
        assert sock is not None
        self._nothing_read = True
        lines = [f"{method} {target} HTTP/1.1", f"host: {self._host_header}"]
        lines += [f"{k}: {v}" for k, v in headers]
        if body is not None:
            lines.append(f"content-length: {len(body)}")
        elif method in ("POST", "PUT", "PATCH"):
            lines.append("content-length: 0")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        send_failed: OSError | None = None
        try:
            if body is None:
                sock.sendall(head)
            elif isinstance(body, RepeatedBody):
                sock.sendall(head)
                for chunk in body.chunks():
                    sock.sendall(chunk)
            elif len(body) <= INLINE_BODY:
                sock.sendall(head + bytes(body))
            else:
                sock.sendall(head)
                sock.sendall(body)
        except (BrokenPipeError, ConnectionResetError) as e:
            # The server may have answered early (an error) and closed: read that answer.
            send_failed = e
        if body is not None and send_failed is None:
            self.counters.sent += len(body)
        try:
            response = self._read_response(method, keep_body)
        except ConnectionClosed:
            if send_failed is not None and self._nothing_read and self._used > 0:
                raise
            if send_failed is not None:
                raise HTTPError(f"{method} {target}: {send_failed}") from send_failed
            raise
        self._used += 1
        if send_failed is not None:
            self.close()
        return response

    # -- reading

    def _fill(self) -> None:
        assert self._sock is not None
        try:
            n = self._sock.recv_into(self._view[:HEAD_READ])
        except (ConnectionResetError, ssl.SSLEOFError):
            n = 0
        if n == 0:
            raise ConnectionClosed("connection closed by the server")
        self._nothing_read = False
        self._pending += self._view[:n]

    def _read_line(self) -> bytes:
        while True:
            end = self._pending.find(b"\r\n")
            if end >= 0:
                line = bytes(self._pending[:end])
                del self._pending[: end + 2]
                return line
            if len(self._pending) > MAX_HEAD:
                raise HTTPError("line too long")
            self._fill()

    def _read_exact(self, n: int, out: bytearray | None) -> None:
        take = min(n, len(self._pending))
        if take:
            if out is not None:
                out += self._pending[:take]
            del self._pending[:take]
            n -= take
        sock = self._sock
        assert sock is not None
        view = self._view
        while n > 0:
            got = sock.recv_into(view, min(n, BUFFER))
            if got == 0:
                raise ConnectionClosed("connection closed in the middle of a body")
            if out is not None:
                out += view[:got]
            n -= got

    def _read_to_close(self, out: bytearray | None) -> int:
        total = len(self._pending)
        if out is not None:
            out += self._pending
        self._pending.clear()
        sock = self._sock
        assert sock is not None
        while True:
            got = sock.recv_into(self._view)
            if got == 0:
                return total
            if out is not None:
                out += self._view[:got]
            total += got

    def _read_response(self, method: str, keep_body: bool) -> Response:
        while True:
            while True:
                end = self._pending.find(b"\r\n\r\n")
                if end >= 0:
                    break
                if len(self._pending) > MAX_HEAD:
                    raise HTTPError("response head too large")
                self._fill()
            raw = bytes(self._pending[:end]).decode("latin-1")
            del self._pending[: end + 4]
            lines = raw.split("\r\n")
            status_line = lines[0]
            if not status_line.startswith("HTTP/1.") or len(status_line) < 12:
                raise HTTPError(f"bad status line {status_line[:80]!r}")
            status = int(status_line[9:12])
            headers: dict[str, str] = {}
            for line in lines[1:]:
                key, sep, value = line.partition(":")
                if not sep:
                    raise HTTPError(f"bad header line {line[:80]!r}")
                add_header(headers, key.strip().lower(), value.strip())
            if 100 <= status < 200:
                continue  # interim response: the real one follows
            break
        out = bytearray() if keep_body else None
        received = 0
        close = "close" in headers.get("connection", "").lower() or status_line.startswith(
            "HTTP/1.0"
        )
        if method == "HEAD" or status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                size_line = self._read_line().split(b";")[0].strip()
                try:
                    size = int(size_line, 16)
                except ValueError:
                    raise HTTPError(f"bad chunk size {size_line[:20]!r}") from None
                if size == 0:
                    while self._read_line():
                        pass  # trailers
                    break
                self._read_exact(size, out)
                received += size
                if self._read_line():
                    raise HTTPError("chunk not followed by CRLF")
        elif "content-length" in headers:
            length = int(headers["content-length"])
            self._read_exact(length, out)
            received = length
        else:
            received = self._read_to_close(out)
            close = True
        if close:
            self.close()
        return Response(status, headers, bytes(out) if out is not None else b"", received)


def open_connection(
    host: str, port: int, timeout: float = 120.0, tls: ClientTLS | None = None
) -> Connection:
    """A :class:`Connection`, or over TLS with ``tls.http2`` an HTTP/2 one (same methods)."""
    if tls is not None and tls.http2:
        from perf.h2client import H2Connection

        return H2Connection(host, port, timeout, tls=tls)
    return Connection(host, port, timeout, tls=tls)
