"""``GET /metrics`` (``metrics.path``): the Prometheus text format (docs/monitoring.md)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dockyard.http.request import Request, Response


class MetricsEndpoint:
    def __init__(self, render: Callable[[], Awaitable[bytes]], content_type: str) -> None:
        self._render = render
        self._content_type = content_type

    async def get(self, req: Request, p: dict[str, str]) -> Response:
        body = await self._render()
        return Response(
            200, [("content-type", self._content_type), ("cache-control", "no-store")], body
        )
