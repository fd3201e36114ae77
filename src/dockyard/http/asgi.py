"""The ASGI entry point: ``RegistryApp`` serves ``/v2/`` and the health endpoints itself
and hands every other path to the Quart app (``http/web.py``).

It owns what surrounds a handler: building the ``Request`` from the scope, dispatch
through the route table (``http/routing.py``), turning core errors into OCI error
answers (``http/errors.py``) and anything else into a logged 500, sending the response
(streamed bodies with one chunk held back), the access log, websocket routing by exact
path (the event feed) and the ASGI lifespan, which starts the services' background tasks
and the web app.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Protocol
from urllib.parse import parse_qs

import anyio
from anyio.abc import TaskGroup

from dockyard.auth import Authorizer, Identity
from dockyard.auth.tickets import FeedTickets
from dockyard.core import errors as err
from dockyard.core.registry import Registry, RequestInfo
from dockyard.core.stats import Statistics
from dockyard.http.answers import Answer, AnswerCache, AnswerKey
from dockyard.http.bodyrate import BodyPace, BodyTooSlow, PacedReceive
from dockyard.http.errors import (
    INTERNAL,
    NO_ENDPOINT,
    entry_for,
    error_body,
    internal_error_body,
    render,
)
from dockyard.http.guard import Guard, open_guard
from dockyard.http.handlers.blobs import Blobs
from dockyard.http.handlers.health import Health
from dockyard.http.handlers.listing import Listing
from dockyard.http.handlers.manifests import Manifests
from dockyard.http.handlers.uploads import Uploads
from dockyard.http.outage import database_failed, storage_failed
from dockyard.http.request import (
    API_VERSION,
    ClientDisconnected,
    Message,
    Receive,
    Request,
    Response,
    Scope_,
    Send,
    certificate_user,
    discard_body,
    peer_address,
    scope_headers,
)
from dockyard.http.routing import Route, Router, registry_routes
from dockyard.http.websocket import no_endpoint
from dockyard.meta.records import StoreUnavailable
from dockyard.observability.record import Observer, RequestRecord
from dockyard.observability.record import request_id as make_request_id
from dockyard.storage import StorageError

log = logging.getLogger("dockyard.http")

_API_VERSION_RAW = (API_VERSION[0].encode(), API_VERSION[1].encode())


class WebApp(Protocol):
    """The app for paths outside ``/v2/`` (``http/web.py``), with its lifespan hooks."""

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None: ...

    async def startup(self, nursery: TaskGroup) -> None: ...

    async def shutdown(self) -> None: ...


def _is_registry_path(path: str) -> bool:
    return path.startswith("/v2/") or path in ("/v2", "/healthz", "/readyz")


class RegistryApp:
    """The ASGI application; its ASGI lifespan runs ``lifespan`` (the services' background
    tasks, in the lifespan's nursery) and starts and stops the web app."""

    def __init__(
        self,
        registry: Registry,
        authorizer: Authorizer,
        *,
        max_manifest_bytes: int,
        default_page_size: int,
        max_page_size: int,
        ready: Callable[[], Awaitable[bool]],
        lifespan: Callable[[TaskGroup], Awaitable[None]] | None = None,
        on_shutdown: Callable[[], Awaitable[None]] | None = None,
        observers: Iterable[Observer] = (),
        statistics: Statistics | None = None,
        web: WebApp | None = None,
        tickets: FeedTickets | None = None,
        guard: Guard | None = None,
        client_user: str | None = None,
        body_pace: BodyPace | None = None,
        max_headers: int = 100,
    ) -> None:
        self.registry = registry
        # Header fields a request may have: HTTP/1 heads are refused before this (edge.py),
        # HTTP/2 requests here (h2 has no such limit).
        self.max_headers = max_headers
        # The minimum pace of request bodies (http/bodyrate.py); None: unchecked.
        self._body_pace = body_pace if body_pace is not None and body_pace.enabled else None
        self.guard = guard or open_guard()
        # Subject attribute naming the user of a verified client certificate (None: no mTLS).
        self._client_user = client_user
        self.authorizer = authorizer
        self._lifespan = lifespan
        self._on_shutdown = on_shutdown
        self.observers = list(observers)
        self.web = web
        # Paths outside /v2/ this app serves itself (the token service), see add_routes.
        self._own_paths: set[str] = set()
        # With a separate metrics listener (metrics.listen): its port, and the one path it
        # serves; it serves nothing else and the main port does not serve that path.
        self.metrics_port: int | None = None
        self.metrics_path = ""
        # Websocket endpoints by path (the event feed), added by the composition root.
        self.websockets: dict[str, Callable[[Scope_, Receive, Send], Awaitable[None]]] = {}
        health = Health(authorizer, ready, statistics, tickets)
        resources = (
            health,
            Blobs(registry, authorizer),
            Uploads(registry, authorizer),
            Manifests(registry, authorizer, max_manifest_bytes),
            Listing(registry, authorizer, default_page_size, max_page_size),
        )
        for resource in resources:
            resource.guard = self.guard
        self.router = Router(registry_routes(*resources), health.authorize)
        # Bound once: the request path calls the router's method with no lookup between.
        self._dispatch = self.router.dispatch
        # Manifest answers kept in memory (http/answers.py), where the composition root
        # finds nothing about the caller can change them; None: every request is served.
        self.answers: AnswerCache | None = None

    def add_routes(self, routes: list[Route], paths: Iterable[str]) -> None:
        """Serve ``routes`` at the exact ``paths`` outside /v2/ (the token service) in this
        app rather than the web app; added by the composition root."""
        self.router.routes[:0] = routes
        self._own_paths.update(paths)

    # -- ASGI plumbing

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and len(scope["headers"]) > self.max_headers:
            await too_many_headers(send)
            return
        web = self.web
        path = scope.get("path", "")
        if self.metrics_port is not None and scope["type"] != "lifespan":
            on_metrics_port = (scope.get("server") or ("", None))[1] == self.metrics_port
            if on_metrics_port != (path == self.metrics_path):
                await self._not_here(scope, receive, send)
                return
        if (
            web is not None
            and scope["type"] != "lifespan"
            and not _is_registry_path(path)
            and path not in self._own_paths
        ):
            await web(scope, receive, send)
            return
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._run_lifespan(receive, send)
        elif scope["type"] == "websocket":
            handler = self.websockets.get(scope["path"])
            if handler is None:
                await no_endpoint(receive, send)
                return
            await handler(scope, receive, send)

    async def _not_here(self, scope: Scope_, receive: Receive, send: Send) -> None:
        """404 for the API on the metrics listener, and for metrics on the main port."""
        if scope["type"] == "websocket":
            await no_endpoint(receive, send)
            return
        await discard_body(receive)  # hypercorn waits for a body nobody read
        body = error_body(NO_ENDPOINT.code, "")
        await send(
            {
                "type": "http.response.start",
                "status": NO_ENDPOINT.status,
                "headers": [(b"content-length", str(len(body)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _run_lifespan(self, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            async with anyio.create_task_group() as nursery:
                if self._lifespan is not None:
                    await self._lifespan(nursery)
                # The web app's own nursery: its shutdown may put a deadline on it.
                async with anyio.create_task_group() as web_nursery:
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
        client = self.guard.proxies.client_address(peer_address(scope), headers)
        request_id = make_request_id(headers.get("x-request-id", ""))
        method = scope["method"]
        # HTTP/2 has no Transfer-Encoding: a body without Content-Length is only known by
        # its frames, so such a request counts as having one (an empty one ends at once).
        body_pending = (
            "transfer-encoding" in headers
            or headers.get("content-length", "0") != "0"
            or (scope.get("http_version") == "2" and "content-length" not in headers)
        )
        bytes_in = 0
        paced = receive
        if body_pending and self._body_pace is not None:
            paced = PacedReceive(receive, self._body_pace)

        async def receive_tracked() -> Message:
            nonlocal body_pending, bytes_in
            message = await paced()
            bytes_in += len(message.get("body", b""))
            if message["type"] == "http.disconnect" or not message.get("more_body", False):
                body_pending = False
            return message

        answers = self.answers
        key: AnswerKey | None = None
        made_under: int | None = None
        if (
            answers is not None
            and not body_pending
            and method in _KEPT_METHODS
            and _KEPT_PATH in scope["path"]
        ):
            key = (method, scope["path"], scope.get("query_string", b""), headers.get("accept"))
            answer = answers.get(key)
            if answer is not None:
                await self._answer_again(answer, scope, send, headers, client, request_id, started)
                return
            made_under = answers.marker()  # before the database is read

        user = certificate_user(scope, self._client_user) if self._client_user else None
        req = Request(
            method=method,
            path=scope["path"],
            query=parse_qs(
                scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
            ),
            headers=headers,
            receive=receive_tracked,
            client=client,
            info=RequestInfo(
                request_id,
                client,
                headers.get("user-agent", "")[:256],
                method,
            ),
            identity=Identity(user) if user is not None else None,
        )
        try:
            response = await self._dispatch(req)
        except err.RegistryError as e:
            response = self._error(e)
        except ClientDisconnected:
            return
        except BodyTooSlow as e:
            # What the body wrote is forgotten and an upload stays where it was (core
            # aborts on any exception); no OCI code fits, so a bare 408.
            log.warning(
                "request body too slow, cut off: %s %s from %s: %s",
                method,
                scope["path"][:200],
                client,
                e,
            )
            response = Response(408, _close_headers(scope))
        except StorageError as e:
            response = storage_failed(e, method, scope["path"], request_id)
        except StoreUnavailable as e:
            response = database_failed(e, method, scope["path"], request_id)
        except Exception:
            log.exception("unhandled error in %s %s", method, scope["path"][:200])
            response = Response(
                INTERNAL.status,
                [("content-type", "application/json")],
                internal_error_body(request_id),
                error_code=INTERNAL.code.value if INTERNAL.code else None,
            )
        head = method == "HEAD"
        if key is not None and response.keepable and response.status == 200:
            assert answers is not None and response.stream is None
            answers.keep(
                key,
                made_under,
                Answer(
                    response.status,
                    _raw_headers(response),
                    response.body,
                    req.route,
                    req.repository,
                    req.reference,
                    response.again,
                ),
            )
        if not body_pending:
            sent = await self._send(send, response, head, request_id)
        else:
            sent = await self._answer_early(
                send, response, head, request_id, receive_tracked, scope.get("http_version") == "2"
            )
        if self.observers:
            duration = time.perf_counter() - started
            self._observe(
                RequestRecord(
                    request_id=req.info.id,
                    method=req.method,
                    path=req.path,
                    client=req.client,
                    user_agent=req.info.user_agent,
                    route=req.route,
                    repository=req.repository,
                    reference=req.reference,
                    user=req.identity.name if req.identity is not None else None,
                    status=response.status,
                    error_code=response.error_code,
                    bytes_in=bytes_in,
                    bytes_out=sent,
                    started=time.time() - duration,
                    duration=duration,
                    query=req.query,
                )
            )

    async def _answer_again(
        self,
        answer: Answer,
        scope: Scope_,
        send: Send,
        headers: dict[str, str],
        client: str,
        request_id: str,
        started: float,
    ) -> None:
        """Give a kept answer (http/answers.py) as the request path would have given it."""
        method = scope["method"]
        user_agent = headers.get("user-agent", "")[:256]
        if answer.record_pull is not None:
            answer.record_pull(RequestInfo(request_id, client, user_agent, method))
        raw = [_API_VERSION_RAW, (b"x-request-id", request_id.encode()), *answer.headers]
        await send({"type": "http.response.start", "status": answer.status, "headers": raw})
        body = b"" if method == "HEAD" else answer.body
        await send({"type": "http.response.body", "body": body, "more_body": False})
        if self.observers:
            duration = time.perf_counter() - started
            self._observe(
                RequestRecord(
                    request_id=request_id,
                    method=method,
                    path=scope["path"],
                    client=client,
                    user_agent=user_agent,
                    route=answer.route,
                    repository=answer.repository,
                    reference=answer.reference,
                    user=None,
                    status=answer.status,
                    error_code=None,
                    bytes_in=0,
                    bytes_out=len(body),
                    started=time.time() - duration,
                    duration=duration,
                    query=parse_qs(
                        scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True
                    ),
                )
            )

    def _observe(self, record: RequestRecord) -> None:
        for observe in self.observers:
            try:
                observe(record)
            except Exception:  # an observer's bug must not fail the request it watched
                log.exception("request observer failed")

    def _error(self, e: err.RegistryError) -> Response:
        status, headers, body = render(e)
        code = entry_for(e).code
        return Response(status, headers, body, error_code=code.value if code else None)

    async def _answer_early(
        self,
        send: Send,
        response: Response,
        head: bool,
        request_id: str,
        receive: Receive,
        http2: bool = False,
    ) -> int:
        """Send an answer given before the request body was read (an error), draining the
        body meanwhile; the number of body bytes sent.

        hypercorn queues only a few body chunks and, once the response is sent, waits for
        room to post http.disconnect: unless the rest is drained, the connection hangs for
        good. And it keeps an HTTP/1 connection only if the request was read whole when
        the response ends. So the answer goes out at once (a client that stops sending on
        an early answer sees it) but its end only after the drain, unless the answer
        closes the connection anyway (a body too slow: 408) or is one HTTP/2 stream.
        """
        drained = anyio.Event()

        async def drain() -> None:
            try:
                await _drain(receive)
            finally:
                drained.set()

        async def drained_or_late() -> None:
            with anyio.move_on_after(_DRAIN_WAIT):
                await drained.wait()

        # HTTP/2 keeps the connection whatever one stream does, and a client may go on
        # sending a body nobody reads (its frames are dropped, http/h2edge.py) or stall it:
        # the stream's answer ends at once (tests/e2e/test_http2_edge.py).
        end_at_once = http2 or ("connection", "close") in response.headers
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(drain)
            sent = await self._send(
                send, response, head, request_id, None if end_at_once else drained_or_late
            )
        return sent

    async def _send(
        self,
        send: Send,
        response: Response,
        head: bool,
        request_id: str,
        before_end: Callable[[], Awaitable[object]] | None = None,
    ) -> int:
        """Send ``response``; the number of body bytes sent. ``before_end``, if given, is
        awaited after the body is sent and before the response's end is."""
        raw = [_API_VERSION_RAW, (b"x-request-id", request_id.encode()), *_raw_headers(response)]
        await send({"type": "http.response.start", "status": response.status, "headers": raw})
        if head or response.status in (204, 304):
            if before_end is not None:
                await before_end()
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return 0
        if response.stream is None:
            if before_end is None:
                await send(
                    {"type": "http.response.body", "body": response.body, "more_body": False}
                )
            else:
                await send({"type": "http.response.body", "body": response.body, "more_body": True})
                await before_end()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            return len(response.body)
        # Hold one chunk back so the last one carries more_body=False: one ASGI message
        # (and h11 event) less per download, which counts for 1 MiB ranged GETs.
        sent = 0
        held: bytes | None = None
        try:
            async for chunk in response.stream:
                if held is not None:
                    await send({"type": "http.response.body", "body": held, "more_body": True})
                    sent += len(held)
                held = chunk
        except err.RegistryError as e:
            # The status line is gone: the only way to say "failed" is to end the response
            # short of its Content-Length. Returning without the last message does that
            # (hypercorn closes the connection of an unfinished response); the held chunk
            # is never sent. A pull-through fill whose bytes do not match is one case.
            log.warning("response cut short (request %s): %s", request_id, e)
            return sent
        if before_end is not None:
            await before_end()
        await send({"type": "http.response.body", "body": held or b"", "more_body": False})
        return sent + len(held or b"")


# Requests whose answers may be kept (http/answers.py).
_KEPT_METHODS = frozenset(("GET", "HEAD"))
# Only the manifests route keeps answers: other GETs and HEADs (blobs, tags, the catalog)
# skip the change marker's read (4.6 CPU-us) they could never use.
_KEPT_PATH = "/manifests/"


def _raw_headers(response: Response) -> list[tuple[bytes, bytes]]:
    """``response``'s headers as ASGI sends them, Content-Length included."""
    raw = [(k.encode(), v.encode("latin-1")) for k, v in response.headers]
    if response.status not in (204, 304):
        raw.append((b"content-length", str(response.length).encode()))
    return raw


# How long an early answer's end waits for the rest of the body (a client that neither
# sends it nor goes away, with body pacing off); then hypercorn closes the connection.
_DRAIN_WAIT = 30.0


async def _drain(receive: Receive) -> None:
    """Discard the rest of a body after an early answer; a body too slow even for that
    is left (hypercorn closes an HTTP/1 connection whose request was not read whole)."""
    with contextlib.suppress(BodyTooSlow):
        await discard_body(receive)


async def too_many_headers(send: Send) -> None:
    """A bare 431: the request is not looked at further (no OCI code fits)."""
    await send(
        {"type": "http.response.start", "status": 431, "headers": [(b"content-length", b"0")]}
    )
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _close_headers(scope: Scope_) -> list[tuple[str, str]]:
    """Headers that make hypercorn close the connection after the response (HTTP/1 only:
    HTTP/2 forbids the header, and ending the stream is enough there)."""
    return [("connection", "close")] if scope.get("http_version", "1.1") < "2" else []


__all__ = ["RegistryApp", "WebApp"]
