"""The route table of the raw ASGI app and the dispatch of a request to its handler.

Routes are anchored regular expressions tried in order. A repository name may contain
slashes, so ``blobs/uploads/`` comes before ``blobs/<digest>``, and the name group is
non-greedy. Handlers are bound methods of the per-resource classes in ``http/handlers/``,
bound once when the table is built: dispatch calls them directly.

Routes (``<name>`` may contain slashes)::

    GET|HEAD   /v2/
    GET        /v2/_catalog                                  ?n= &last=
    GET        /v2/_dockyard/stats          ?window= &bucket= &repositories= (the dashboard's)
    GET        /v2/<name>/tags/list                          ?n= &last=
    GET|HEAD|PUT|DELETE  /v2/<name>/manifests/<reference>    PUT: ?tag= (repeatable)
    GET        /v2/<name>/referrers/<digest>                 ?artifactType= &n= &last=
    POST       /v2/<name>/blobs/uploads/    ?digest= | ?mount= [&from=] | ?digest-algorithm=
    GET|PATCH|PUT|DELETE /v2/<name>/blobs/uploads/<id>       PUT: ?digest=
    GET|HEAD|DELETE      /v2/<name>/blobs/<digest>
    GET|HEAD   /healthz  /readyz
    GET|POST   /auth/token  GET /auth/jwks.json   (the built-in token service, when on;
               paths from auth.token.path; added with ``token_routes``)

The websocket feed (``/v2/_dockyard/events``) is routed by exact path in ``http/asgi.py``.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

from dockyard.core import errors as err
from dockyard.http.errors import METHOD_NOT_ALLOWED, NO_ENDPOINT, error_body
from dockyard.http.handlers.blobs import Blobs
from dockyard.http.handlers.health import Health
from dockyard.http.handlers.listing import Listing
from dockyard.http.handlers.manifests import Manifests
from dockyard.http.handlers.token import TokenEndpoint
from dockyard.http.handlers.uploads import Uploads
from dockyard.http.request import Request, Response
from dockyard.oci.names import is_valid_name

Handler = Callable[[Request, dict[str, str]], Awaitable[Response]]
Route = tuple[re.Pattern[str], dict[str, Handler]]


def registry_routes(
    health: Health, blobs: Blobs, uploads: Uploads, manifests: Manifests, listing: Listing
) -> list[Route]:
    name = r"(?P<name>[^?#]+?)"
    return [
        (re.compile(r"/v2/?"), {"GET": health.base, "HEAD": health.base}),
        (re.compile(r"/v2/_catalog"), {"GET": listing.catalog}),
        (re.compile(r"/v2/_dockyard/stats"), {"GET": health.stats}),
        (re.compile(rf"/v2/{name}/tags/list"), {"GET": listing.tags}),
        (
            re.compile(rf"/v2/{name}/manifests/(?P<reference>[^/]+)"),
            {
                "GET": manifests.get,
                "HEAD": manifests.get,
                "PUT": manifests.put,
                "DELETE": manifests.delete,
            },
        ),
        (re.compile(rf"/v2/{name}/referrers/(?P<digest>[^/]+)"), {"GET": listing.referrers}),
        (re.compile(rf"/v2/{name}/blobs/uploads/?"), {"POST": uploads.start}),
        (
            re.compile(rf"/v2/{name}/blobs/uploads/(?P<upload>[^/]+)"),
            {
                "GET": uploads.status,
                "PATCH": uploads.patch,
                "PUT": uploads.finish,
                "DELETE": uploads.cancel,
            },
        ),
        (
            re.compile(rf"/v2/{name}/blobs/(?P<digest>[^/]+)"),
            {"GET": blobs.get, "HEAD": blobs.get, "DELETE": blobs.delete},
        ),
        (re.compile(r"/healthz"), {"GET": health.healthz, "HEAD": health.healthz}),
        (re.compile(r"/readyz"), {"GET": health.readyz, "HEAD": health.readyz}),
    ]


def jwks_path(token_path: str) -> str:
    """The JWKS is served beside the token endpoint: /auth/token -> /auth/jwks.json."""
    return token_path.rsplit("/", 1)[0] + "/jwks.json"


def token_routes(endpoint: TokenEndpoint, path: str) -> list[Route]:
    return [
        (re.compile(re.escape(path)), {"GET": endpoint.get, "POST": endpoint.post}),
        (re.compile(re.escape(jwks_path(path))), {"GET": endpoint.jwks, "HEAD": endpoint.jwks}),
    ]


class Router:
    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes

    async def dispatch(self, req: Request) -> Response:
        """The handler's response; 404 or 405 without one. Raises core errors."""
        path = req.path
        for pattern, methods in self.routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = methods.get(req.method)
            if handler is None:
                allow = ", ".join(methods)
                return Response(
                    METHOD_NOT_ALLOWED.status,
                    [("allow", allow), ("content-type", "application/json")],
                    error_body(
                        METHOD_NOT_ALLOWED.code,
                        f"{req.method} is not supported here (allowed: {allow})",
                    ),
                )
            params = match.groupdict()
            name = params.get("name")
            if name is not None and not is_valid_name(name):
                raise err.NameInvalid(f"invalid repository name {name[:100]!r}")
            return await handler(req, params)
        return Response(
            NO_ENDPOINT.status,
            [("content-type", "application/json")],
            error_body(NO_ENDPOINT.code, f"no endpoint at {path[:100]!r}"),
        )
