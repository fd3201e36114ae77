"""The scans endpoint (docs/api.md, "Scans"): a manifest's scan, and asking for one.

Routes (``<name>`` may contain slashes)::

    GET   /v2/_dockyard/repositories/<name>/scans/<digest>   pull
    POST  /v2/_dockyard/repositories/<name>/scans/<digest>   push (scan it again now)
"""

from __future__ import annotations

import re

from dockyard.auth import Authorizer
from dockyard.core.common import parse_digest
from dockyard.http.handlers.repositories import PREFIX
from dockyard.http.handlers.resource import Resource
from dockyard.http.request import Request, Response, json_response
from dockyard.http.routing import Route, on_repository
from dockyard.scanning.status import Scans


class ScansResource(Resource):
    def __init__(self, scans: Scans, authorizer: Authorizer) -> None:
        super().__init__(authorizer)
        self.scans = scans

    async def get(self, req: Request, p: dict[str, str]) -> Response:
        digest = str(parse_digest(p["digest"]))
        return json_response(200, await self.scans.describe(p["name"], digest))

    async def post(self, req: Request, p: dict[str, str]) -> Response:
        digest = str(parse_digest(p["digest"]))
        await self.scans.request(p["name"], digest)
        return json_response(202, {"status": "queued"})


def scan_routes(resource: ScansResource) -> list[Route]:
    name = r"(?P<name>[^?#]+?)"
    return [
        Route(
            re.compile(rf"{PREFIX}{name}/scans/(?P<digest>[^/]+)"),
            {
                "GET": (resource.get, on_repository("pull")),
                "POST": (resource.post, on_repository("push")),
            },
            "scans",
        )
    ]
