"""``/v2/`` (the API version check), ``/healthz``, ``/readyz`` and the dashboard's
statistics (``/v2/_dockyard/stats``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dockyard.auth import Authorizer, Scope
from dockyard.core import errors as err
from dockyard.core.stats import DEFAULT_BUCKET, DEFAULT_REPOSITORIES, DEFAULT_WINDOW, Statistics
from dockyard.http.handlers.resource import Resource
from dockyard.http.request import Request, Response, json_response


class Health(Resource):
    def __init__(
        self,
        authorizer: Authorizer,
        ready: Callable[[], Awaitable[bool]],
        statistics: Statistics | None,
    ) -> None:
        super().__init__(authorizer)
        self._ready = ready
        self.statistics = statistics

    async def base(self, req: Request, p: dict[str, str]) -> Response:
        if req.identity is None:  # a client certificate may have named the user already
            req.identity = await self.authorizer.authenticate(req.headers)
        return json_response(200, {})

    async def healthz(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(self, req: Request, p: dict[str, str]) -> Response:
        if await self._ready():
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "not ready"})

    async def stats(self, req: Request, p: dict[str, str]) -> Response:
        await self.authorize(req, Scope("catalog"))
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
