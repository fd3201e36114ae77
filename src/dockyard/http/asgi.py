"""The OCI Distribution API over raw ASGI.

Each route parses the request, asks the authorizer for the scope it needs, makes one core
call and renders the answer; core errors become OCI error bodies through
``http/errors.py``. Blob bodies stream straight from hypercorn's bounded receive queue
into the core (DESIGN.md 3.1) and downloads go out in 1 MiB chunks (3.3).

Routes (``<name>`` may contain slashes)::

    GET|HEAD   /v2/
    GET        /v2/_catalog                                  ?n= &last=
    GET        /v2/<name>/tags/list                          ?n= &last=
    GET|HEAD|PUT|DELETE  /v2/<name>/manifests/<reference>    PUT: ?tag= (repeatable)
    GET        /v2/<name>/referrers/<digest>                 ?artifactType= &n= &last=
    GET|HEAD|DELETE      /v2/<name>/blobs/<digest>
    POST       /v2/<name>/blobs/uploads/    ?digest= | ?mount= [&from=] | ?digest-algorithm=
    GET|PATCH|PUT|DELETE /v2/<name>/blobs/uploads/<id>       PUT: ?digest=
    GET        /v2/_dockyard/stats          ?window= &bucket= &repositories= (the dashboard's)
    GET        /healthz  /readyz

Every other path (the dashboard at ``/dashboard/``) goes to the Quart-trio app ``web``
(``http/web.py``); this app's ASGI lifespan starts and stops it.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qs, quote, urlencode

import trio

from dockyard.auth import Authorizer, Identity, Scope
from dockyard.core import errors as err
from dockyard.core.registry import Registry, RequestInfo
from dockyard.core.stats import DEFAULT_BUCKET, DEFAULT_REPOSITORIES, DEFAULT_WINDOW, Statistics
from dockyard.http.errors import error_body, status_and_code
from dockyard.oci.manifest import OCI_INDEX
from dockyard.oci.names import is_valid_name

Scope_ = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("dockyard.http")
access_log = logging.getLogger("dockyard.access")

API_VERSION = (b"docker-distribution-api-version", b"registry/2.0")


class WebApp(Protocol):
    """The app for paths outside ``/v2/`` (``http/web.py``), with its lifespan hooks."""

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None: ...

    async def startup(self, nursery: trio.Nursery) -> None: ...

    async def shutdown(self) -> None: ...


def _is_registry_path(path: str) -> bool:
    return path.startswith("/v2/") or path in ("/v2", "/healthz", "/readyz")


def scope_headers(scope: Scope_) -> dict[str, str]:
    """An ASGI scope's headers by lower-case name."""
    headers: dict[str, str] = {}
    for k, v in scope["headers"]:
        key, value = k.decode("latin-1").lower(), v.decode("latin-1")
        # Repeated headers (clients send several Accept lines) combine per RFC 9110.
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    return headers


class ClientDisconnected(Exception):
    """The client went away before sending its whole body."""


async def _discard_body(receive: Receive) -> None:
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

    def arg(self, key: str) -> str | None:
        values = self.query.get(key)
        return values[0] if values else None

    def body(self) -> AsyncIterator[bytes]:
        return _BodyStream(self.receive)

    def content_length(self) -> int | None:
        raw = self.headers.get("content-length")
        if raw is None:
            return None
        if not raw.isdigit():
            raise err.SizeInvalid(f"bad Content-Length {raw[:40]!r}")
        return int(raw)


class Response:
    def __init__(
        self,
        status: int,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        stream: AsyncIterator[bytes] | None = None,
        length: int | None = None,
    ) -> None:
        self.status = status
        self.headers = headers or []
        self.body = body
        self.stream = stream
        self.length = len(body) if length is None else length


def json_response(
    status: int, doc: object, headers: list[tuple[str, str]] | None = None
) -> Response:
    body = json.dumps(doc, separators=(",", ":")).encode()
    return Response(status, [("content-type", "application/json"), *(headers or [])], body)


def _upload_location(name: str, upload_id: str) -> str:
    return f"/v2/{name}/blobs/uploads/{upload_id}"


def _range_header(offset: int) -> str:
    # Inclusive last byte, "0-0" for an empty upload (as Distribution and clients expect).
    return f"0-{max(offset - 1, 0)}"


def _parse_content_range(value: str | None) -> tuple[int, int] | None:
    """PATCH Content-Range "<start>-<end>" (a "bytes " prefix is tolerated)."""
    if value is None:
        return None
    text = value.strip()
    if text.startswith("bytes "):
        text = text[6:].split("/")[0]
    match = re.fullmatch(r"(\d{1,19})-(\d{1,19})", text)
    if not match:
        raise err.UploadInvalid(f"malformed Content-Range {value[:60]!r}")
    start, end = int(match[1]), int(match[2])
    if end < start:
        raise err.UploadOutOfOrder(f"Content-Range {value[:60]!r} ends before it starts", -1)
    return start, end


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """A single ``bytes=`` range as (start, length); None to ignore the header (RFC 9110)."""
    match = re.fullmatch(r"\s*bytes\s*=\s*(\d{0,19})\s*-\s*(\d{0,19})\s*", value)
    if not match or (not match[1] and not match[2]):
        return None  # malformed or multi-range: serve the whole blob
    if not match[1]:  # suffix: the last n bytes
        n = int(match[2])
        if n == 0 or size == 0:
            raise err.RangeNotSatisfiable(f"range {value[:60]!r} selects nothing", size)
        n = min(n, size)
        return size - n, n
    start = int(match[1])
    if match[2] and int(match[2]) < start:
        return None  # "b-a" is invalid: ignore it
    end = int(match[2]) if match[2] else size - 1
    # An open range "a-" past the end is unsatisfiable (416), not invalid (RFC 9110 14.1.2).
    if start >= size:
        raise err.RangeNotSatisfiable(f"range {value[:60]!r} starts past the end", size)
    end = min(end, size - 1)
    return start, end - start + 1


def _accepts(accept: str | None, media_type: str) -> bool:
    """Does an Accept header admit ``media_type``? No header admits everything."""
    if not accept:
        return True
    main = media_type.split("/")[0]
    for part in accept.split(","):
        item = part.split(";")[0].strip().lower()
        if item in ("*/*", f"{main}/*", media_type, ""):
            return True
    return False


class Page_:
    """Shared n/last handling of tag lists, the catalog and referrers."""

    def __init__(self, req: Request, default: int, maximum: int) -> None:
        raw_n = req.arg("n")
        if raw_n is None or raw_n == "":
            self.n = default
        elif raw_n.isdigit():
            self.n = min(int(raw_n), maximum)
        else:
            raise err.PaginationInvalid(f"n must be a non-negative integer, not {raw_n[:20]!r}")
        self.last = req.arg("last")

    def link(
        self, path: str, last: str | None, extra: dict[str, str] | None = None
    ) -> list[tuple[str, str]]:
        if last is None:
            return []
        query = urlencode({**(extra or {}), "n": str(self.n), "last": last})
        return [("link", f'<{path}?{query}>; rel="next"')]


Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]


class RegistryApp:
    """The ASGI application. ``start`` runs background tasks in the caller's nursery."""

    def __init__(
        self,
        registry: Registry,
        authorizer: Authorizer,
        *,
        max_manifest_bytes: int,
        default_page_size: int,
        max_page_size: int,
        ready: Callable[[], Awaitable[bool]],
        lifespan: Callable[[trio.Nursery], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        access: bool = False,
        statistics: Statistics | None = None,
        web: WebApp | None = None,
    ) -> None:
        self.registry = registry
        self.authorizer = authorizer
        self.max_manifest_bytes = max_manifest_bytes
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size
        self._ready = ready
        self._lifespan = lifespan
        self._on_shutdown = on_shutdown
        self._access = access
        self.statistics = statistics
        self.web = web
        # Websocket endpoints by path (the event feed), added by the composition root.
        self.websockets: dict[str, Callable[[Scope_, Receive, Send], Awaitable[None]]] = {}
        name = r"(?P<name>[^?#]+?)"
        self.routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/v2/?"), {"GET": self.base, "HEAD": self.base}),
            (re.compile(r"/v2/_catalog"), {"GET": self.catalog}),
            (re.compile(r"/v2/_dockyard/stats"), {"GET": self.stats}),
            (re.compile(rf"/v2/{name}/tags/list"), {"GET": self.tags}),
            (
                re.compile(rf"/v2/{name}/manifests/(?P<reference>[^/]+)"),
                {
                    "GET": self.get_manifest,
                    "HEAD": self.get_manifest,
                    "PUT": self.put_manifest,
                    "DELETE": self.delete_manifest,
                },
            ),
            (re.compile(rf"/v2/{name}/referrers/(?P<digest>[^/]+)"), {"GET": self.referrers}),
            (re.compile(rf"/v2/{name}/blobs/uploads/?"), {"POST": self.start_upload}),
            (
                re.compile(rf"/v2/{name}/blobs/uploads/(?P<upload>[^/]+)"),
                {
                    "GET": self.upload_status,
                    "PATCH": self.patch_upload,
                    "PUT": self.finish_upload,
                    "DELETE": self.cancel_upload,
                },
            ),
            (
                re.compile(rf"/v2/{name}/blobs/(?P<digest>[^/]+)"),
                {"GET": self.get_blob, "HEAD": self.get_blob, "DELETE": self.delete_blob},
            ),
            (re.compile(r"/healthz"), {"GET": self.healthz, "HEAD": self.healthz}),
            (re.compile(r"/readyz"), {"GET": self.readyz, "HEAD": self.readyz}),
        ]

    # -- ASGI plumbing

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
        web = self.web
        if web is not None and scope["type"] != "lifespan" and not _is_registry_path(scope["path"]):
            await web(scope, receive, send)
            return
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._run_lifespan(receive, send)
        elif scope["type"] == "websocket":
            handler = self.websockets.get(scope["path"])
            if handler is None:
                await receive()  # websocket.connect
                await send({"type": "websocket.close", "code": 1008, "reason": "no such feed"})
                return
            await handler(scope, receive, send)

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            async with trio.open_nursery() as nursery:
                if self._lifespan is not None:
                    await self._lifespan(nursery)
                # The web app's own nursery: its shutdown may put a deadline on it.
                async with trio.open_nursery() as web_nursery:
                    if self.web is not None:
                        await self.web.startup(web_nursery)
                    await send({"type": "lifespan.startup.complete"})
                    message = await receive()
                    if self.web is not None:
                        await self.web.shutdown()
                if self._on_shutdown is not None:
                    await self._on_shutdown()
                nursery.cancel_scope.cancel()
        except Exception as e:  # start-up failed: tell the server, which exits
            log.exception("lifespan failed")
            await send({"type": "lifespan.startup.failed", "message": str(e)})
            return
        await send({"type": "lifespan.shutdown.complete"})

    async def _http(self, scope: Scope_, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        headers = scope_headers(scope)
        client = scope.get("client")
        request_id = headers.get("x-request-id", "")[:64] or uuid.uuid4().hex
        method = scope["method"]
        body_pending = "transfer-encoding" in headers or headers.get("content-length", "0") != "0"

        async def receive_tracked() -> Message:
            nonlocal body_pending
            message = await receive()
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_pending = False
            return message

        req = Request(
            method=method,
            path=scope["path"],
            query=parse_qs(
                scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
            ),
            headers=headers,
            receive=receive_tracked,
            client=client[0] if client else "",
            info=RequestInfo(
                request_id,
                client[0] if client else "",
                headers.get("user-agent", "")[:256],
                method,
            ),
        )
        try:
            response = await self._dispatch(req)
        except err.RegistryError as e:
            response = self._error(e)
        except ClientDisconnected:
            return
        except Exception:
            log.exception("unhandled error in %s %s", method, scope["path"][:200])
            response = json_response(
                500,
                {
                    "errors": [
                        {
                            "code": "UNKNOWN",
                            "message": "internal error",
                            "detail": {"request": request_id},
                        }
                    ]
                },
            )
        if not body_pending:
            await self._send(send, response, head=method == "HEAD", request_id=request_id)
        else:
            # An early answer (an error before the body was read). hypercorn queues only a
            # few body chunks and, once the response is sent, waits for room to post
            # http.disconnect: unless the rest is drained, the connection hangs for good.
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_discard_body, receive_tracked)
                await self._send(send, response, head=method == "HEAD", request_id=request_id)
        if self._access:
            access_log.info(
                json.dumps(
                    {
                        "request": request_id,
                        "method": method,
                        "path": scope["path"][:512],
                        "status": response.status,
                        "ms": round((time.perf_counter() - started) * 1000, 3),
                        "client": req.client,
                    }
                )
            )

    def _error(self, e: err.RegistryError) -> Response:
        code, status = status_and_code(e)
        headers: list[tuple[str, str]] = [("content-type", "application/json")]
        if isinstance(e, err.UploadOutOfOrder) and e.offset >= 0:
            headers.append(("range", _range_header(e.offset)))
        if isinstance(e, err.RangeNotSatisfiable):
            headers.append(("content-range", f"bytes */{e.size}"))
        return Response(status, headers, error_body(code, e.message, e.detail))

    async def _send(self, send: Send, response: Response, head: bool, request_id: str) -> None:
        raw = [API_VERSION, (b"x-request-id", request_id.encode())]
        raw += [(k.encode(), v.encode("latin-1")) for k, v in response.headers]
        if response.status not in (204, 304):
            raw.append((b"content-length", str(response.length).encode()))
        await send({"type": "http.response.start", "status": response.status, "headers": raw})
        if head or response.status in (204, 304):
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        if response.stream is None:
            await send({"type": "http.response.body", "body": response.body, "more_body": False})
            return
        # Hold one chunk back so the last one carries more_body=False: one ASGI message
        # (and h11 event) less per download, which counts for 1 MiB ranged GETs.
        held: bytes | None = None
        async for chunk in response.stream:
            if held is not None:
                await send({"type": "http.response.body", "body": held, "more_body": True})
            held = chunk
        await send({"type": "http.response.body", "body": held or b"", "more_body": False})

    async def _dispatch(self, req: Request) -> Response:
        path = req.path
        for pattern, methods in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = methods.get(req.method)
            if handler is None:
                allow = ", ".join(methods)
                return Response(
                    405,
                    [("allow", allow), ("content-type", "application/json")],
                    error_body(
                        "UNSUPPORTED", f"{req.method} is not supported here (allowed: {allow})"
                    ),
                )
            params = match.groupdict()
            name = params.get("name")
            if name is not None and not is_valid_name(name):
                raise err.NameInvalid(f"invalid repository name {name[:100]!r}")
            return await handler(req, params)
        return Response(
            404,
            [("content-type", "application/json")],
            error_body("NOT_FOUND", f"no endpoint at {path[:100]!r}"),
        )

    async def _authorize(self, req: Request, scope: Scope) -> None:
        if req.identity is None:
            req.identity = await self.authorizer.authenticate(req.headers)
        if not await self.authorizer.allowed(req.identity, scope):
            raise err.Denied(f"access to {scope} denied")

    async def _may_read(self, req: Request, repository: str) -> bool:
        assert req.identity is not None
        return await self.authorizer.allowed(req.identity, Scope("pull", repository))

    # -- base, health

    async def base(self, req: Request, p: dict[str, str]) -> Response:
        req.identity = await self.authorizer.authenticate(req.headers)
        return json_response(200, {})

    async def healthz(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(self, req: Request, p: dict[str, str]) -> Response:
        if await self._ready():
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "not ready"})

    # -- dashboard statistics

    async def stats(self, req: Request, p: dict[str, str]) -> Response:
        await self._authorize(req, Scope("catalog"))
        if self.statistics is None:
            raise err.Unsupported("statistics are not enabled")

        def number(key: str, default: int) -> int:
            raw = req.arg(key)
            if raw is None or raw == "":
                return default
            if not raw.isdigit() or len(raw) > 9:
                raise err.ParameterInvalid(f"{key} must be a whole number, not {raw[:20]!r}")
            return int(raw)

        snapshot = await self.statistics.snapshot(
            number("window", DEFAULT_WINDOW),
            number("bucket", DEFAULT_BUCKET),
            number("repositories", DEFAULT_REPOSITORIES),
        )
        return json_response(200, snapshot.to_json(), [("cache-control", "no-store")])

    # -- blobs

    async def get_blob(self, req: Request, p: dict[str, str]) -> Response:
        name, digest = p["name"], p["digest"]
        await self._authorize(req, Scope("pull", name))
        size = await self.registry.blob_size(name, digest)
        headers = [
            ("content-type", "application/octet-stream"),
            ("docker-content-digest", digest),
            ("accept-ranges", "bytes"),
            ("etag", f'"{digest}"'),
            ("cache-control", "max-age=31536000"),
        ]
        status, start, length = 200, 0, size
        range_header = req.headers.get("range")
        if range_header is not None:
            selected = _parse_range(range_header, size)
            if selected is not None:
                start, length = selected
                status = 206
                headers.append(("content-range", f"bytes {start}-{start + length - 1}/{size}"))
        if req.method == "HEAD":
            return Response(status, headers, length=length)
        stream = await self.registry.read_blob(req.info, name, digest, size, start, length)
        return Response(status, headers, stream=stream, length=length)

    async def delete_blob(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("delete", name))
        await self.registry.delete_blob(req.info, name, p["digest"])
        return Response(202)

    # -- uploads

    async def start_upload(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("push", name))
        mount = req.arg("mount")
        if mount is not None:
            source = req.arg("from")
            if source is not None and not is_valid_name(source):
                raise err.NameInvalid(f"invalid repository name {source[:100]!r} in from=")
            if await self.registry.mount_blob(
                req.info, name, mount, source, lambda repo: self._may_read(req, repo)
            ):
                return Response(
                    201,
                    [("location", f"/v2/{name}/blobs/{mount}"), ("docker-content-digest", mount)],
                )
        digest = req.arg("digest")
        if digest is not None and mount is None:
            stored = await self.registry.put_blob(
                req.info, name, digest, req.body(), req.content_length()
            )
            return Response(
                201,
                [("location", f"/v2/{name}/blobs/{stored}"), ("docker-content-digest", stored)],
            )
        algorithm = req.arg("digest-algorithm") or "sha256"
        status = await self.registry.start_upload(name, algorithm)
        return Response(
            202,
            [
                ("location", _upload_location(name, status.id)),
                ("range", _range_header(0)),
                ("docker-upload-uuid", status.id),
            ],
        )

    def _upload_headers(self, name: str, upload_id: str, offset: int) -> list[tuple[str, str]]:
        return [
            ("location", _upload_location(name, upload_id)),
            ("range", _range_header(offset)),
            ("docker-upload-uuid", upload_id),
        ]

    async def upload_status(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("push", name))
        status = await self.registry.upload_status(name, p["upload"])
        return Response(204, self._upload_headers(name, status.id, status.offset))

    def _chunk_bounds(self, req: Request) -> tuple[int | None, int | None]:
        announced = req.content_length()
        content_range = _parse_content_range(req.headers.get("content-range"))
        if content_range is None:
            return None, announced
        start, end = content_range
        length = end - start + 1
        if announced is not None and announced != length:
            raise err.SizeInvalid(
                f"Content-Length {announced} disagrees with Content-Range {start}-{end}"
            )
        return start, length

    async def patch_upload(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("push", name))
        start, expected = self._chunk_bounds(req)
        status = await self.registry.write_chunk(name, p["upload"], req.body(), start, expected)
        return Response(202, self._upload_headers(name, status.id, status.offset))

    async def finish_upload(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("push", name))
        digest = req.arg("digest")
        if not digest:
            raise err.DigestInvalid("PUT needs ?digest= to complete an upload")
        start, expected = self._chunk_bounds(req)
        stored = await self.registry.finish_upload(
            req.info, name, p["upload"], digest, req.body(), start, expected
        )
        return Response(
            201, [("location", f"/v2/{name}/blobs/{stored}"), ("docker-content-digest", stored)]
        )

    async def cancel_upload(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("push", name))
        await self.registry.cancel_upload(name, p["upload"])
        return Response(204)

    # -- manifests

    async def get_manifest(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("pull", name))
        accept = req.headers.get("accept")
        found = await self.registry.get_manifest(
            req.info,
            name,
            p["reference"],
            record_pull=req.method == "GET",
            accepts=lambda media_type: _accepts(accept, media_type),
        )
        headers = [
            ("content-type", found.media_type),
            ("docker-content-digest", found.digest),
            ("etag", f'"{found.digest}"'),
        ]
        return Response(200, headers, found.payload)

    async def _read_manifest_body(self, req: Request) -> bytes:
        limit = self.max_manifest_bytes
        announced = req.content_length()
        if announced is not None and announced > limit:
            raise err.ManifestTooLarge(f"manifest of {announced} bytes is over the {limit} limit")
        parts: list[bytes] = []
        total = 0
        async for chunk in req.body():
            total += len(chunk)
            if total > limit:
                raise err.ManifestTooLarge(f"manifest is over the {limit} byte limit")
            parts.append(chunk)
        if announced is not None and total != announced:
            raise err.SizeInvalid(f"body has {total} bytes, Content-Length said {announced}")
        return b"".join(parts)

    async def put_manifest(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("push", name))
        payload = await self._read_manifest_body(req)
        content_type = req.headers.get("content-type")
        if content_type is not None:
            content_type = content_type.split(";")[0].strip() or None
        pushed = await self.registry.put_manifest(
            req.info, name, p["reference"], payload, content_type, req.query.get("tag", [])
        )
        headers = [
            ("location", f"/v2/{name}/manifests/{pushed.digest}"),
            ("docker-content-digest", pushed.digest),
        ]
        headers += [("oci-tag", tag) for tag in pushed.tags if req.query.get("tag")]
        if pushed.subject is not None:
            headers.append(("oci-subject", pushed.subject))
        return Response(201, headers)

    async def delete_manifest(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("delete", name))
        await self.registry.delete_manifest(req.info, name, p["reference"])
        return Response(202)

    # -- listings

    async def tags(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        await self._authorize(req, Scope("pull", name))
        page = Page_(req, self.default_page_size, self.max_page_size)
        result = await self.registry.list_tags(name, page.n, page.last)
        return json_response(
            200,
            {"name": name, "tags": result.items},
            page.link(f"/v2/{name}/tags/list", result.next_last),
        )

    async def catalog(self, req: Request, p: dict[str, str]) -> Response:
        await self._authorize(req, Scope("catalog"))
        page = Page_(req, self.default_page_size, self.max_page_size)
        result = await self.registry.catalog(page.n, page.last)
        return json_response(
            200, {"repositories": result.items}, page.link("/v2/_catalog", result.next_last)
        )

    async def referrers(self, req: Request, p: dict[str, str]) -> Response:
        name, digest = p["name"], p["digest"]
        await self._authorize(req, Scope("pull", name))
        page = Page_(req, self.default_page_size, self.max_page_size)
        artifact_type = req.arg("artifactType") or None
        found, next_last = await self.registry.referrers(
            name, digest, artifact_type, page.n, page.last
        )
        manifests = []
        for r in found:
            entry: dict[str, object] = {
                "mediaType": r.media_type,
                "digest": r.digest,
                "size": r.size,
            }
            if r.artifact_type:
                entry["artifactType"] = r.artifact_type
            if r.annotations:
                entry["annotations"] = r.annotations
            manifests.append(entry)
        headers = [("content-type", OCI_INDEX)]
        if artifact_type is not None:
            headers.append(("oci-filters-applied", "artifactType"))
        extra = {"artifactType": artifact_type} if artifact_type else {}
        headers += page.link(f"/v2/{name}/referrers/{quote(digest)}", next_last, extra)
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests},
            separators=(",", ":"),
        ).encode()
        return Response(200, headers, body)


__all__ = ["ClientDisconnected", "RegistryApp", "scope_headers"]
