"""Request and response plumbing of the raw ASGI app, and the header grammar of the API.

``Request`` is what a handler sees (method, path, query, headers by lower-case name, the
body as a stream of hypercorn's chunks, the request info for events); ``Response`` is what
it returns (a body or a stream, and the ``Content-Length`` a HEAD must announce). The
parsers here cover the headers and query parameters several handlers share:
``Content-Range`` of upload chunks, ``Range`` of blob downloads, ``Accept`` of manifests,
and the ``n``/``last`` pagination with its ``Link`` header.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from dockyard.auth import Identity
from dockyard.core import errors as err
from dockyard.core.registry import RequestInfo

Scope_ = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

API_VERSION = ("docker-distribution-api-version", "registry/2.0")


def scope_headers(scope: Scope_) -> dict[str, str]:
    """An ASGI scope's headers by lower-case name."""
    headers: dict[str, str] = {}
    for k, v in scope["headers"]:
        key, value = k.decode("latin-1").lower(), v.decode("latin-1")
        # Repeated headers (clients send several Accept lines) combine per RFC 9110.
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


# dockyard's addition to the ASGI tls extension (dockyard/tls.py fills it in): the
# verified client certificate's subject as [[attribute, value], ...] pairs.
CLIENT_SUBJECT = "dockyard.client_subject"


# Python's ssl names subject attributes in long form; config and RFC 4514 use these.
SHORT_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "domainComponent": "DC",
    "userId": "UID",
    "emailAddress": "emailAddress",
}


def certificate_user(scope: Scope_, attribute: str) -> str | None:
    """The ``attribute`` (CN, emailAddress, ...) of the verified client certificate."""
    tls = scope.get("extensions", {}).get("tls") or {}
    for name, value in tls.get(CLIENT_SUBJECT, ()):
        if attribute in (name, SHORT_NAMES.get(name)):
            return str(value)
    return None


def peer_address(scope: Scope_) -> str:
    """The TCP peer's address ("" when hypercorn has none, as on a unix socket)."""
    client = scope.get("client")
    return str(client[0]) if client else ""


class ClientDisconnected(Exception):
    """The client went away before sending its whole body."""


async def discard_body(receive: Receive) -> None:
    """Read what is left of a request body, throwing it away."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


class _BodyStream:
    """A request body as an async iterator of chunks.

    A plain iterator rather than an async generator: handlers stop reading half-way on bad
    input (too long, wrong size), and an abandoned async generator is a resource leak that
    trio warns about when it is garbage collected.
    """

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._done = False

    def __aiter__(self) -> _BodyStream:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnected()
            self._done = not message.get("more_body", False)
            chunk: bytes = message.get("body", b"")
            if chunk:
                return chunk
        raise StopAsyncIteration


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    receive: Receive
    client: str
    info: RequestInfo
    identity: Identity | None = None
    # Set by the router for the access log and metrics (observability/record.py).
    route: str = ""
    repository: str | None = None
    reference: str | None = None

    def arg(self, key: str) -> str | None:
        values = self.query.get(key)
        return values[0] if values else None

    def body(self) -> AsyncIterator[bytes]:
        return _BodyStream(self.receive)

    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        if raw is None:
            return None
        if not _DIGITS.fullmatch(raw):
            raise err.SizeInvalid(f"bad Content-Length {raw[:40]!r}")
        return _number(raw)


class Response:
    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        stream: AsyncIterator[bytes] | None = None,
        length: int | None = None,
        error_code: str | None = None,
    ) -> None:
        self.status = status
        self.headers = headers or []
        self.body = body
        self.stream = stream
        self.length = len(body) if length is None else length
        self.error_code = error_code  # the OCI code of an error answer, for metrics and logs
        # The same request may be answered with this response again, from memory, while the
        # database is unchanged (http/answers.py); ``again`` is what doing so must still do
        # (a GET's pull event).
        self.keepable = False
        self.again: Callable[[RequestInfo], None] | None = None


def json_response(
    status: int, doc: object, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Response(status, [("content-type", "application/json"), *(headers or [])], body)


def range_header(offset: int) -> str:
    """An upload's ``Range`` value for ``offset`` bytes received."""
    # Inclusive last byte, "0-0" for an empty upload (as Distribution and clients expect).
    return f"0-{max(offset - 1, 0)}"


# Larger than any blob or offset: a number with more digits than this is treated as this
# value, so a number too large for 64 bits is out of range like any other (and Python's
# limit on converting long digit strings is never reached).
_HUGE = 10**30


# ASCII digits only: \d and str.isdigit take "\u00b2" and Arabic-Indic digits too, which
# int() refuses or reads as numbers no client means.
_DIGITS = re.compile(r"[0-9]+")


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 30 else _HUGE


def parse_content_range(value: str | None) -> tuple[int, int] | None:
    """PATCH Content-Range "<start>-<end>" (a "bytes " prefix is tolerated)."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("bytes "):
        text = text[6:].split("/")[0]
    match = re.fullmatch(r"([0-9]+)-([0-9]+)", text)
    if not match:
        raise err.UploadInvalid(f"malformed Content-Range {value[:60]!r}")
    start, end = _number(match[1]), _number(match[2])
    if end < start:
        raise err.UploadOutOfOrder(f"Content-Range {value[:60]!r} ends before it starts", -1)
    return start, end


def parse_range(value: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as (start, length); None to ignore the header (RFC 9110)."""
    match = re.fullmatch(r"[ \t]*bytes[ \t]*=[ \t]*([0-9]*)[ \t]*-[ \t]*([0-9]*)[ \t]*", value)
    if not match or (not match[1] and not match[2]):
        return None  # malformed or multi-range: serve the whole blob
    if not match[1]:  # suffix: the last n bytes
        n = _number(match[2])
        if n == 0 or size == 0:
            raise err.RangeNotSatisfiable(f"range {value[:60]!r} selects nothing", size)
        n = min(n, size)
        return size - n, n
    start = _number(match[1])
    if match[2] and _number(match[2]) < start:
        return None  # "b-a" is invalid: ignore it
    end = _number(match[2]) if match[2] else size - 1
    # An open range "a-" past the end is unsatisfiable (416), not invalid (RFC 9110 14.1.2).
    if start >= size:
        raise err.RangeNotSatisfiable(f"range {value[:60]!r} starts past the end", size)
    end = min(end, size - 1)
    return start, end - start + 1


def accepts(accept: str | None, media_type: str) -> bool:
    """Does an Accept header admit ``media_type``? No header admits everything."""
    if not accept:
        return True
    main = media_type.split("/")[0]
    for part in accept.split(","):
        item = part.split(";")[0].strip().lower()
        if item in ("*/*", f"{main}/*", media_type, ""):
            return True
    return False


class Page:
    """Shared n/last handling of tag lists, the catalog and referrers."""

    def __init__(self, req: Request, default: int, maximum: int) -> None:
        raw_n = req.arg("n")
        if raw_n is None or raw_n == "":
            self.n = default
        elif raw_n.isascii() and raw_n.isdigit():  # not "²": str.isdigit takes it
            self.n = min(_number(raw_n), maximum)
        else:
            raise err.PaginationInvalid(f"n must be a non-negative integer, not {raw_n[:20]!r}")
        self.last = req.arg("last")

    def link(
        self, path: str, last: str | None, extra: dict[str, str] | None = None
    ) -> list[tuple[str, str]]:
        """The ``Link`` header to the next page; none when this page is the last."""
        if last is None:
            return []
        query = urlencode({**(extra or {}), "n": str(self.n), "last": last})
        return [("link", f'<{path}?{query}>; rel="next"')]
