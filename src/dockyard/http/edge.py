"""The HTTP/1 edge: refuse what h11 accepts but must not, before hypercorn sees the request.

h11 lets ``Transfer-Encoding`` win over a ``Content-Length`` sent with it, collapses
duplicated equal lengths (``Content-Length: 0, 0`` or the header twice) into one, accepts
any token as a method and any ``HTTP/d.d`` as the version, and does not check ``Host``'s
grammar. Checks in the ASGI app come too late: the request was framed by then, and what
follows it on the connection is already being read. So ``install`` swaps the h11
connection hypercorn's HTTP/1 protocol makes for ``StrictServerConnection``, whose
``next_event`` raises h11's own RemoteProtocolError for such a request; hypercorn then
answers its status (400 or 505) with ``Connection: close`` and reads nothing more.
Absolute-form targets (RFC 9112 3.2.2) are rewritten to their path here too: hypercorn
would otherwise route ``http://host/v2/`` as a path.

Responses skip h11's repeated looks at their headers: hypercorn builds each
``h11.Response`` with h11's validation of every header (two regular expressions each,
through Python helpers), and h11's ``send`` then rebuilds it to add framing headers it
almost never needs. ``response`` checks each name and value with h11's own expressions,
remembers those that passed, and builds the event as h11's parser does (``_parsed``);
``StrictServerConnection`` keeps the response as it is when it is already framed (a
``Content-Length``, no ``Transfer-Encoding``) on a kept-alive connection, and lets h11
rewrite it otherwise. A manifest HEAD's answer is made in 9 us instead of 19 (the rebuild
skipped saves about 2 more; ``python -m perf.micro h11-cycle``). Same bytes on the wire
(tests/test_http1_send.py compares them with h11's).

``StrictServerConnection`` also hands a ``Content-Length`` body's reads through as they
came: h11 appends every read to its bytearray buffer and slices each ``Data`` out of it
(three copies of every body byte, plus hypercorn's ``bytes()`` of the slice), which cost
more CPU per GiB uploaded than the socket reads themselves.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import urlsplit

import h11
from h11._connection import _body_framing
from h11._headers import _field_name_re, _field_value_re
from h11._readers import ContentLengthReader

METHODS = frozenset(
    {b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"}
)
VERSIONS = frozenset({b"1.0", b"1.1"})
# RFC 3986 host (reg-name, IPv4 or [IPv6]) with an optional port.
_HOST = re.compile(rb"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-._~%!$&'()*+,;=]+)(?::[0-9]{1,5})?")
_CONTENT_LENGTH_LINE = re.compile(rb"^content-length[ \t]*:(.*)$", re.IGNORECASE | re.MULTILINE)


def _refuse(reason: str, status: int = 400) -> h11.RemoteProtocolError:
    return h11.RemoteProtocolError(reason, error_status_hint=status)


# How h11 finds the end of a head (it accepts bare LF line endings too).
_HEAD_END = re.compile(rb"\n\r?\n")


def head_length(raw: bytes) -> int:
    """Bytes of the first request head in ``raw`` (all of ``raw`` if it is incomplete)."""
    match = _HEAD_END.search(raw)
    return match.end() if match else len(raw)


def _count_lengths(head: bytes) -> int:
    """How many Content-Length values the raw request head carries (h11 collapses them)."""
    block = head[: head_length(head)]
    return sum(len(m.group(1).split(b",")) for m in _CONTENT_LENGTH_LINE.finditer(block))


def check_request(request: h11.Request, raw_head: bytes) -> h11.Request:
    """The request to serve (absolute-form made origin-form); raises for one to refuse."""
    if request.http_version not in VERSIONS:
        raise _refuse("HTTP version not supported", 505)
    if request.method not in METHODS:
        raise _refuse("unknown method")
    # h11's own list of (raw name, lowercased name, value), read once: iterating its
    # Headers (a Sequence in Python) cost more than the checks.
    lengths = codings = False
    hosts: list[bytes] = []
    for _, name, value in request.headers._full_items:
        if name == b"host":
            hosts.append(value)
        elif name == b"content-length":
            lengths = True
        elif name == b"transfer-encoding":
            codings = True
    if codings and lengths:
        raise _refuse("both Content-Length and Transfer-Encoding")
    if lengths and _count_lengths(raw_head) != 1:
        raise _refuse("duplicated Content-Length")
    if len(hosts) > 1 or (hosts and not _HOST.fullmatch(hosts[0])):
        raise _refuse("malformed Host")
    target = request.target
    if not target.startswith(b"/") and target != b"*":
        if request.method == b"CONNECT":
            raise _refuse("CONNECT is not served")
        parts = urlsplit(target)
        if parts.scheme.lower() not in (b"http", b"https") or not parts.netloc:
            raise _refuse("malformed request target")
        path = parts.path or b"/"
        target = path + (b"?" + parts.query if parts.query else b"")
        return h11.Request(
            method=request.method,
            target=target,
            headers=request.headers,
            http_version=request.http_version,
        )
    return request


# Header names and values that passed h11's grammar before: a set lookup (a bytes object
# keeps its hash) costs a tenth of h11's expression, and most of an answer's headers are
# the same objects every time (a kept answer's, the server's). Bounded, so what a client
# puts in a header (echoed in a Location) cannot grow them.
_CHECKED_NAMES: set[bytes] = set()
_CHECKED_VALUES: set[bytes] = set()
_CHECKED_MAX = 4096


def response(headers: list[tuple[bytes, bytes]], status_code: int) -> h11.Response:
    """``h11.Response(headers=headers, status_code=status_code)``, the same event or the
    same ``LocalProtocolError``, for less: each name and value is checked with h11's own
    expressions, once, then h11 normalizes them as it does what its parser read."""
    for name, value in headers:
        if type(name) is not bytes or type(value) is not bytes:
            return h11.Response(headers=headers, status_code=status_code)  # h11 converts
        if name not in _CHECKED_NAMES:
            if not _field_name_re.fullmatch(name):
                raise h11.LocalProtocolError(f"Illegal header name {name!r}")
            if len(_CHECKED_NAMES) < _CHECKED_MAX:
                _CHECKED_NAMES.add(name)
        if value not in _CHECKED_VALUES:
            if not _field_value_re.fullmatch(value):
                raise h11.LocalProtocolError(f"Illegal header value {value!r}")
            if len(_CHECKED_VALUES) < _CHECKED_MAX:
                _CHECKED_VALUES.add(value)
    return h11.Response(headers=headers, status_code=status_code, _parsed=True)


class StrictServerConnection(h11.Connection):
    """hypercorn's server-side h11 connection, refusing ambiguous or invalid requests.

    It also bounds the time a request head may take in all: hypercorn's read_timeout
    is per read, so a client trickling a byte at a time (slowloris) would hold the
    connection for as long as it likes.
    """

    header_timeout = 10.0
    # A response's head, held back until what follows it (see ``send``).
    _held = b""
    # h11's max_incomplete_event_size only bounds a head still incomplete: one that
    # arrives whole in a single read passes at any size. This bounds every head.
    max_header_bytes = 16 * 1024
    # h11 has no limit on the number of header lines (only on their bytes).
    max_headers = 100
    _head_started: float | None = None
    # A body read not yet handed out: it arrived while h11's buffer was empty, in the
    # middle of a Content-Length body, and becomes a Data event as it is (no copy).
    _body_read: bytes = b""

    def receive_data(self, data: bytes) -> None:
        if (
            data
            and not self._body_read
            and not self._receive_buffer
            and self.their_state is h11.SEND_BODY
            and isinstance(self._reader, ContentLengthReader)
            and self._reader._remaining > 0
            and not self._receive_buffer_closed
        ):
            self._body_read = bytes(data)  # no copy for bytes (what the servers hand us)
            return
        # Anything else queues behind a held read in h11's buffer: next_event hands the
        # held read out first, so the order on the wire is kept.
        super().receive_data(data)

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        data, closed = super().trailing_data
        return self._body_read + data, closed

    def _body_event(self) -> h11.Data:
        reader = self._reader
        assert isinstance(reader, ContentLengthReader)
        read, remaining = self._body_read, reader._remaining
        if len(read) > remaining:
            # The body ends inside this read: what follows (the next request) goes to
            # h11's buffer, ahead of anything that arrived after this read.
            after = bytes(self._receive_buffer)
            self._receive_buffer = type(self._receive_buffer)()
            self._receive_buffer += read[remaining:]
            self._receive_buffer += after
            read = read[:remaining]
        self._body_read = b""
        reader._remaining -= len(read)
        event = h11.Data(data=read)
        self._process_event(self.their_role, event)
        return event

    def next_event(self) -> Any:
        if self._body_read and self.their_state is h11.SEND_BODY:
            return self._body_event()
        raw_head = self.trailing_data[0] if self.their_state is h11.IDLE else b""
        if raw_head:
            now = time.monotonic()
            if self._head_started is None:
                self._head_started = now
            elif now - self._head_started > self.header_timeout:
                raise _refuse("request head took too long", 408)
        try:
            event = super().next_event()
        except h11.RemoteProtocolError as e:
            # h11 hints 501 for a transfer coding other than chunked: framing it cannot
            # follow is a bad request like any other ambiguous framing.
            if e.error_status_hint == 501:
                raise _refuse(str(e)) from None
            raise
        if isinstance(event, h11.Request):
            self._head_started = None
            if head_length(raw_head) > self.max_header_bytes:
                raise _refuse("request head too large", 431)
            if len(event.headers._full_items) > self.max_headers:
                raise _refuse("too many header fields", 431)
            return check_request(event, raw_head)
        return event

    def _clean_up_response_headers_for_sending(self, response: h11.Response) -> h11.Response:
        # What h11 would change: framing headers for a body of unknown length, and
        # ``Connection: close`` when the connection will not be kept. Neither applies to a
        # framed response on a kept-alive connection, which h11 would only rebuild as it is.
        method = b"GET" if self._request_method == b"HEAD" else self._request_method
        framed = _body_framing(method, response)[0] == "content-length"  # type: ignore[arg-type]
        if self._cstate.keep_alive and framed:
            return response
        return super()._clean_up_response_headers_for_sending(response)

    def send(self, event: Any) -> Any:  # h11 types it by overloads, one per event class
        """What h11 would send for ``event``, except that a final response's head is held
        back and sent with what follows it (the body's first bytes, or its end): hypercorn
        writes each h11 event to the socket at once, so a small answer (a manifest GET)
        took two sends, each about 10 CPU-us on loopback, where one does."""
        data = super().send(event)
        if type(event) is h11.Response:
            self._held = data or b""
            return b""
        if self._held:
            held, self._held = self._held, b""
            if data is None:  # the connection closed mid-answer: the head goes unsent
                return None
            return held + data
        return data


def install(
    header_timeout: float = 10.0, max_header_bytes: int = 16 * 1024, max_headers: int = 100
) -> None:
    """Make hypercorn's HTTP/1 protocol use ``StrictServerConnection`` (once per process)."""
    StrictServerConnection.header_timeout = header_timeout
    StrictServerConnection.max_header_bytes = max_header_bytes
    StrictServerConnection.max_headers = max_headers
    from hypercorn.protocol import h11 as hypercorn_h11
    from hypercorn.protocol.events import Response as StreamResponse

    protocol = hypercorn_h11.H11Protocol
    if getattr(protocol, "_dockyard_strict", False):
        return
    _check_stream_send(protocol)
    original_init = protocol.__init__
    original_stream_send = protocol.stream_send

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        self.connection = StrictServerConnection(
            h11.SERVER, max_incomplete_event_size=self.config.h11_max_incomplete_size
        )

    async def stream_send(self: Any, event: Any) -> None:
        # hypercorn's own lines for a final response, with ``response`` for its
        # ``h11.Response`` (checked by _check_stream_send); everything else is its own.
        if type(event) is StreamResponse and event.status_code >= 200:
            headers = [*event.headers, *self.config.response_headers("h11")]
            if self.keep_alive_requests >= self.config.keep_alive_max_requests:
                headers.append((b"connection", b"close"))
            await self._send_h11_event(response(headers, event.status_code))
        else:
            await original_stream_send(self, event)

    protocol.__init__ = init  # type: ignore[method-assign]
    protocol.stream_send = stream_send  # type: ignore[method-assign]
    protocol._dockyard_strict = True  # type: ignore[attr-defined]


def _check_stream_send(protocol: Any) -> None:
    """Fail fast if hypercorn's HTTP/1 ``stream_send`` no longer makes a final response
    the way ``install``'s copy of it does."""
    import inspect
    from importlib.metadata import version

    source = inspect.getsource(protocol.stream_send)
    expected = (
        'headers = list(chain(event.headers, self.config.response_headers("h11")))',
        "if self.keep_alive_requests >= self.config.keep_alive_max_requests:",
        'headers.append((b"connection", b"close"))',
        "h11.Response(\n                        headers=headers,\n"
        "                        status_code=event.status_code,\n                    )",
    )
    if not all(line in source for line in expected):
        raise RuntimeError(
            f"hypercorn {version('hypercorn')}'s H11Protocol.stream_send is not the one "
            "dockyard.http.edge copies; install the hypercorn version in constraints.txt "
            "or update dockyard.http.edge"
        )


__all__ = ["METHODS", "VERSIONS", "StrictServerConnection", "check_request", "install"]
