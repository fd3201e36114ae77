"""The route table of the raw ASGI app and the dispatch of a request to its handler.

Routes are anchored regular expressions tried in order. A repository name may contain
slashes, so ``blobs/uploads/`` comes before ``blobs/<digest>``, and the name group is
non-greedy. Handlers are bound methods of the per-resource classes in ``http/handlers/``,
bound once when the table is built: dispatch calls them directly.

Every method of every route names the scope it needs (``Need``): dispatch authorizes it
(``Resource.authorize``) before the handler runs, so no handler can forget to.

Routes (``<name>`` may contain slashes)::

    GET|HEAD   /v2/                                          login
    GET        /v2/_catalog                  ?n= &last=      catalog (lists what may be pulled)
    GET        /v2/_dockyard/stats  ?window= &bucket= &repositories=   admin (the dashboard's)
    GET        /v2/_dockyard/ticket                          admin (a ticket for the feed)
    GET        /v2/<name>/tags/list          ?n= &last=      pull
    GET|HEAD   /v2/<name>/manifests/<reference>              pull
    PUT        /v2/<name>/manifests/<reference>  ?tag=       push
    DELETE     /v2/<name>/manifests/<reference>              delete
    GET        /v2/<name>/referrers/<digest>  ?artifactType= &n= &last=   pull
    POST       /v2/<name>/blobs/uploads/  ?digest= | ?mount= [&from=] | ?digest-algorithm=  push
    GET|PATCH|PUT|DELETE /v2/<name>/blobs/uploads/<id>  PUT: ?digest=    push
    GET|HEAD   /v2/<name>/blobs/<digest>                     pull
    DELETE     /v2/<name>/blobs/<digest>                     delete
    GET|HEAD   /healthz  /readyz                             public
    GET|HEAD   /metrics (metrics.path, added by services.py) metrics

The websocket feed (``/v2/_dockyard/events``) is routed by exact path in ``http/asgi.py``
and authorizes itself (``admin``, ``http/handlers/feed.py``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NamedTuple

from dockyard.auth import ADMIN, ANONYMOUS, CATALOG, LOGIN, METRICS, PUBLIC, Action, Scope
from dockyard.core import errors as err
from dockyard.http.errors import METHOD_NOT_ALLOWED, NO_ENDPOINT, error_body
from dockyard.http.handlers.blobs import Blobs
from dockyard.http.handlers.health import Health
from dockyard.http.handlers.listing import Listing
from dockyard.http.handlers.manifests import Manifests
from dockyard.http.handlers.metrics import MetricsEndpoint
from dockyard.http.handlers.token import TokenEndpoint
from dockyard.http.handlers.uploads import Uploads
from dockyard.http.request import Request, Response
from dockyard.oci.names import is_valid_name

Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]
Authorize = Callable[[Request, Scope], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Need:
    """The scope a route needs: a fixed one, or an action on the route's repository."""

    fixed: Scope | None = None
    action: Action | None = None
    # The handler checks the request's credentials itself (the token endpoint exchanges
    # them for a token): refusing them is its answer, with its own challenge, not the
    # registry's Bearer one pointing back at it.
    own_credentials: bool = False

    def scope(self, params: dict[str, str]) -> Scope:
        if self.fixed is not None:
            return self.fixed
        assert self.action is not None
        return Scope(self.action, params["name"])


def on_repository(action: Action) -> Need:
    return Need(action=action)


def registry_wide(scope: Scope) -> Need:
    return Need(fixed=scope)


Endpoint = tuple[Handler, Need]


class Route(NamedTuple):
    pattern: re.Pattern[str]
    methods: dict[str, Endpoint]
    # The route's class, recorded for the access log and metrics (a bounded label).
    kind: str


def registry_routes(
    health: Health, blobs: Blobs, uploads: Uploads, manifests: Manifests, listing: Listing
) -> list[Route]:
    name = r"(?P<name>[^?#]+?)"
    pull, push, delete = on_repository("pull"), on_repository("push"), on_repository("delete")
    public, admin = registry_wide(PUBLIC), registry_wide(ADMIN)
    return [
        Route(
            re.compile(r"/v2/?"),
            {m: (health.base, registry_wide(LOGIN)) for m in ("GET", "HEAD")},
            "version",
        ),
        Route(
            re.compile(r"/v2/_catalog"),
            {"GET": (listing.catalog, registry_wide(CATALOG))},
            "catalog",
        ),
        Route(re.compile(r"/v2/_dockyard/stats"), {"GET": (health.stats, admin)}, "dashboard"),
        Route(re.compile(r"/v2/_dockyard/ticket"), {"GET": (health.ticket, admin)}, "dashboard"),
        Route(re.compile(rf"/v2/{name}/tags/list"), {"GET": (listing.tags, pull)}, "tags"),
        Route(
            re.compile(rf"/v2/{name}/manifests/(?P<reference>[^/]+)"),
            {
                "GET": (manifests.get, pull),
                "HEAD": (manifests.get, pull),
                "PUT": (manifests.put, push),
                "DELETE": (manifests.delete, delete),
            },
            "manifests",
        ),
        Route(
            re.compile(rf"/v2/{name}/referrers/(?P<digest>[^/]+)"),
            {"GET": (listing.referrers, pull)},
            "referrers",
        ),
        Route(
            re.compile(rf"/v2/{name}/blobs/uploads/?"), {"POST": (uploads.start, push)}, "uploads"
        ),
        Route(
            re.compile(rf"/v2/{name}/blobs/uploads/(?P<upload>[^/]+)"),
            {
                "GET": (uploads.status, push),
                "PATCH": (uploads.patch, push),
                "PUT": (uploads.finish, push),
                "DELETE": (uploads.cancel, push),
            },
            "uploads",
        ),
        Route(
            re.compile(rf"/v2/{name}/blobs/(?P<digest>[^/]+)"),
            {"GET": (blobs.get, pull), "HEAD": (blobs.get, pull), "DELETE": (blobs.delete, delete)},
            "blobs",
        ),
        Route(
            re.compile(r"/healthz"),
            {m: (health.healthz, public) for m in ("GET", "HEAD")},
            "health",
        ),
        Route(
            re.compile(r"/readyz"), {m: (health.readyz, public) for m in ("GET", "HEAD")}, "health"
        ),
    ]


def jwks_path(token_path: str) -> str:
    """The JWKS is served beside the token endpoint: /auth/token -> /auth/jwks.json."""
    return token_path.rsplit("/", 1)[0] + "/jwks.json"


def token_routes(endpoint: TokenEndpoint, path: str) -> list[Route]:
    return [
        Route(
            re.compile(re.escape(path)),
            {
                "GET": (endpoint.get, Need(fixed=PUBLIC, own_credentials=True)),
                "POST": (endpoint.post, Need(fixed=PUBLIC, own_credentials=True)),
            },
            "token",
        ),
        Route(
            re.compile(re.escape(jwks_path(path))),
            {m: (endpoint.jwks, registry_wide(PUBLIC)) for m in ("GET", "HEAD")},
            "token",
        ),
    ]


def metrics_routes(endpoint: MetricsEndpoint, path: str) -> list[Route]:
    """``metrics.path``: the ``metrics`` action, registry-wide (like ``admin``)."""
    need = registry_wide(METRICS)
    return [
        Route(
            re.compile(re.escape(path)),
            {m: (endpoint.get, need) for m in ("GET", "HEAD")},
            "metrics",
        )
    ]


class Router:
    def __init__(self, routes: list[Route], authorize: Authorize) -> None:
        self.routes = routes
        self.authorize = authorize
        # containerd's ?ns= (the registry it mirrors) -> the [[upstreams]] prefix that
        # caches it (services_cache.py); an unknown ns serves the name as it is.
        self.namespaces: dict[str, str] = {}

    async def dispatch(self, req: Request) -> Response:
        """The handler's response; 404 or 405 without one. Raises core errors."""
        path = req.path
        for pattern, methods, kind in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            req.route = kind
            endpoint = methods.get(req.method)
            if endpoint is None:
                allow = ", ".join(methods)
                return Response(
                    METHOD_NOT_ALLOWED.status,
                    [("allow", allow), ("content-type", "application/json")],
                    error_body(
                        METHOD_NOT_ALLOWED.code,
                        f"{req.method} is not supported here (allowed: {allow})",
                    ),
                    error_code=METHOD_NOT_ALLOWED.code.value if METHOD_NOT_ALLOWED.code else None,
                )
            params = match.groupdict()
            name = params.get("name")
            if name is not None and not is_valid_name(name):
                raise err.NameInvalid(f"invalid repository name {name[:100]!r}")
            if name is not None and self.namespaces and "ns" in req.query:
                prefix = self.namespaces.get(req.query["ns"][0])
                if prefix is not None:
                    name = params["name"] = f"{prefix}/{name}"
            req.repository = name
            req.reference = params.get("reference") or params.get("digest")
            handler, need = endpoint
            scope = need.scope(params)
            try:
                await self.authorize(req, scope)
            except err.Unauthorized:
                if not need.own_credentials:
                    raise
                # Network lists and rate limits still apply, to an anonymous caller (the
                # failed-login limiter has counted the failure already).
                req.identity = ANONYMOUS
                await self.authorize(req, scope)
            return await handler(req, params)
        # No spec code means "no such endpoint": the bare status.
        return Response(NO_ENDPOINT.status, [], error_body(NO_ENDPOINT.code, ""))
