"""The Quart application for everything outside ``/v2/``: the live dashboard.

``RegistryApp`` keeps ``/v2/`` and the health endpoints on its raw ASGI path and hands
every other request here; its ASGI lifespan starts and stops this app (``startup``,
``shutdown``, and the task group QuartTrio runs background tasks in). On hypercorn's trio
worker the app is a ``QuartTrio`` (quart-trio); on its asyncio worker (``server.backend``
asyncio or uvloop) a plain ``Quart``, which runs only on asyncio, as QuartTrio only on trio.

Routes::

    GET  /dashboard            308 to dashboard/ (relative, so a path prefix survives)
    GET  /dashboard/           index.html
    GET  /dashboard/<file>     the page's assets (CSS, JS, icon)

The page's files are plain static files shipped in the package (``dockyard/dashboard/``),
read once when the app is built; they need no build step and load nothing from elsewhere.
The page gets its data from ``GET /v2/_dockyard/stats`` and the websocket feed
``/v2/_dockyard/events`` (``docs/dashboard.md``). Anything else is a 404 with an OCI
error body from the one error table (``http/errors.py``), as on ``/v2/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import sniffio
import xxhash
from anyio.abc import TaskGroup
from quart import Quart, Response, request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from dockyard.auth import PUBLIC, Scope
from dockyard.http.errors import error_body, for_status
from dockyard.http.request import API_VERSION
from dockyard.http.worker import DEFAULT_BACKEND, is_asyncio

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page loads only its own files and talks only to its own origin (ws: included).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


# The scope of every route below: the page and its files hold no registry data (that comes
# from /v2/_dockyard/, which needs admin), so anybody may load them.
WEB_SCOPES: dict[str, Scope] = {
    "/dashboard": PUBLIC,
    "/dashboard/": PUBLIC,
    "/dashboard/<path:name>": PUBLIC,
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str
    etag: str


def load_dashboard_assets() -> dict[str, Asset]:
    """The dashboard's files from the installed package, by file name."""
    root = resources.files("dockyard") / "dashboard"
    assets: dict[str, Asset] = {}
    for entry in root.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            body = entry.read_bytes()
            # A content fingerprint, not a security check: a fast non-cryptographic hash.
            etag = '"' + xxhash.xxh3_128_hexdigest(body) + '"'
            assets[entry.name] = Asset(body, CONTENT_TYPES[suffix], etag)
    if "index.html" not in assets:
        raise RuntimeError(f"the dashboard's index.html is missing from {root}")
    return assets


def create_web_app(assets: Mapping[str, Asset], backend: str = DEFAULT_BACKEND) -> Quart:
    """The dashboard's app for the worker of ``backend`` (see the module docstring)."""
    app_class = Quart if is_asyncio(backend) else QuartTrio
    app = app_class(__name__, static_folder=None, template_folder=None)

    def serve(name: str) -> Response:
        asset = assets.get(name)
        if asset is None:
            return _error(404, f"no dashboard file {name[:100]!r}")
        headers = {
            "cache-control": "no-cache",  # revalidate: an upgrade shows at once
            "etag": asset.etag,
            "x-content-type-options": "nosniff",
        }
        if asset.content_type.startswith("text/html"):
            headers["content-security-policy"] = CSP
            headers["referrer-policy"] = "no-referrer"
        if asset.etag in request.headers.get("if-none-match", ""):
            return Response(b"", 304, headers)
        return Response(asset.body, 200, headers, content_type=asset.content_type)

    @app.route("/dashboard", methods=["GET", "HEAD"])
    async def dashboard_slash() -> Response:
        return Response(b"", 308, {"location": "dashboard/"})

    @app.route("/dashboard/", methods=["GET", "HEAD"])
    async def dashboard_index() -> Response:
        return serve("index.html")

    @app.route("/dashboard/<path:name>", methods=["GET", "HEAD"])
    async def dashboard_file(name: str) -> Response:
        return serve(name)

    @app.errorhandler(HTTPException)
    async def http_error(e: HTTPException) -> Response:
        status = e.code or 500
        if status == 404:
            return _error(404, f"no endpoint at {request.path[:100]!r}")
        return _error(status, e.description or "error")

    return app


def _error(status: int, message: str) -> Response:
    entry = for_status(status)
    if entry.code is None:  # no spec code fits: the bare status
        return Response(b"", entry.status, {API_VERSION[0]: API_VERSION[1]})
    return Response(
        error_body(entry.code, message),
        entry.status,
        {API_VERSION[0]: API_VERSION[1]},
        content_type="application/json",
    )


class QuartWeb:
    """The Quart app with the interface ``RegistryApp`` drives (ASGI calls, lifespan)."""

    def __init__(self, app: Quart, assets: Mapping[str, Asset] | None = None) -> None:
        self.app = app
        self._assets = assets

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self._for_running_loop()
        await self.app(scope, receive, send)

    def _for_running_loop(self) -> None:
        """Rebuild the app for the event loop that runs it, if it was built for the other
        one (an app built once and run in process on each of the test backends, without
        its lifespan; hooks registered on the first app are not carried over)."""
        running = sniffio.current_async_library()
        if self._assets is not None and isinstance(self.app, QuartTrio) != (running == "trio"):
            self.app = create_web_app(self._assets, running)

    async def startup(self, task_group: TaskGroup) -> None:
        """Start serving: Quart's before-serving hooks; QuartTrio's background tasks go in
        ``task_group`` (Quart's own are asyncio tasks of its own)."""
        self._for_running_loop()
        if isinstance(self.app, QuartTrio):
            # QuartTrio uses start_soon and cancel_scope (its deadline on shutdown), which
            # an anyio task group has as a trio nursery does.
            self.app.nursery = task_group  # type: ignore[assignment]
        await self.app.startup()

    async def shutdown(self) -> None:
        """Quart's after-serving hooks; background tasks get its shutdown timeout."""
        await self.app.shutdown()


def build_web(
    assets: Mapping[str, Asset] | None = None, backend: str = DEFAULT_BACKEND
) -> QuartWeb:
    assets = load_dashboard_assets() if assets is None else assets
    return QuartWeb(create_web_app(assets, backend), assets)


__all__ = [
    "CSP",
    "WEB_SCOPES",
    "Asset",
    "QuartWeb",
    "build_web",
    "create_web_app",
    "load_dashboard_assets",
]
