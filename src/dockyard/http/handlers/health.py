"""``/v2/`` (the API version check), ``/healthz``, ``/readyz``, the dashboard's
statistics (``/v2/_dockyard/stats``) and its feed tickets (``/v2/_dockyard/ticket``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dockyard.auth import Authorizer
from dockyard.auth.tickets import FeedTickets
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
        tickets: FeedTickets | None = None,
    ) -> None:
        super().__init__(authorizer)
        self._ready = ready
        self.statistics = statistics
        self.tickets = tickets

    async def base(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(200, {})

    async def ticket(self, req: Request, p: dict[str, str]) -> Response:
        if self.tickets is None:
            raise err.Unsupported("feed tickets are not enabled")
        assert req.identity is not None
        doc = {"ticket": self.tickets.issue(req.identity), "expires_in": self.tickets.lifetime}
        return json_response(200, doc, [("cache-control", "no-store")])

    async def healthz(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(200, {"status": "ok"})

    async def readyz(self, req: Request, p: dict[str, str]) -> Response:
        if await self._ready():
            return json_response(200, {"status": "ready"})
        return json_response(503, {"status": "not ready"})

    async def stats(self, req: Request, p: dict[str, str]) -> Response:
        if self.statistics is None:
            raise err.Unsupported("statistics are not enabled")

        def number(key: str, default: int) -> int:
            raw = req.arg(key)
            if raw is None or raw == "":
                return default
            # isascii: str.isdigit takes digits int() refuses ("\u00b2").
            if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
                raise err.ParameterInvalid(f"{key} must be a whole number, not {raw[:20]!r}")
            return int(raw)

        snapshot = await self.statistics.snapshot(
            number("window", DEFAULT_WINDOW),
            number("bucket", DEFAULT_BUCKET),
            number("repositories", DEFAULT_REPOSITORIES),
            visible=self.pull_filter(req),
        )
        return json_response(200, snapshot.to_json(), [("cache-control", "no-store")])
