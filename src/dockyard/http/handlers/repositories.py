"""The repository management endpoint (docs/api.md, "Repository management").

Routes (``<name>`` may contain slashes; a repository whose name ends in ``/tags`` can
only be reached by its own tags route)::

    GET     /v2/_dockyard/repositories/<name>/tags  ?n= &last=   pull
    (GET|POST /v2/_dockyard/repositories/<name>/scans/<digest>: http/handlers/scans.py)
    GET     /v2/_dockyard/repositories/<name>                    pull
    DELETE  /v2/_dockyard/repositories/<name>                    delete
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from dockyard.auth import Authorizer
from dockyard.core.repositories import RepositoryManager
from dockyard.http.handlers.resource import Resource
from dockyard.http.request import Page, Request, Response, json_response
from dockyard.http.routing import Route, on_repository

PREFIX = "/v2/_dockyard/repositories/"
# The tags list's ``scan`` field of each digest scanned (scanning/status.py; unset: null).
ScanSummaries = Callable[[list[str]], Awaitable[dict[str, dict[str, Any]]]]


def timestamp(seconds: float | None) -> str | None:
    """RFC 3339 in UTC with milliseconds, or None."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


class Repositories(Resource):
    scan_summaries: ScanSummaries | None = None

    def __init__(
        self,
        manager: RepositoryManager,
        authorizer: Authorizer,
        default_page_size: int,
        max_page_size: int,
    ) -> None:
        super().__init__(authorizer)
        self.manager = manager
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size

    async def tags(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        page = Page(req, self.default_page_size, self.max_page_size)
        found = await self.manager.tags(name, page.n, page.last)
        scans: dict[str, dict[str, Any]] = {}
        if self.scan_summaries is not None and found.tags:
            scans = await self.scan_summaries([t.digest for t in found.tags])
        tags = [
            {
                "name": t.name,
                "digest": t.digest,
                "mediaType": t.media_type,
                "size": t.size,
                "pushed_at": timestamp(t.pushed),
                "last_pulled_at": timestamp(t.pulled),
                "scan": scans.get(t.digest),
            }
            for t in found.tags
        ]
        return json_response(
            200,
            {"name": name, "tags": tags},
            page.link(f"{PREFIX}{name}/tags", found.next_last),
        )

    async def info(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        usage = await self.manager.usage(name)
        return json_response(200, {"name": name, "usage": usage.figures()})

    async def delete(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        deleted = await self.manager.delete(req.info, name)
        doc = {"name": name, "deleted": {"manifests": deleted.manifests, "links": deleted.links}}
        return json_response(202, doc)


def repository_routes(resource: Repositories) -> list[Route]:
    name = r"(?P<name>[^?#]+?)"
    return [
        Route(
            re.compile(rf"{PREFIX}{name}/tags"),
            {"GET": (resource.tags, on_repository("pull"))},
            "repositories",
        ),
        Route(
            re.compile(rf"{PREFIX}{name}"),
            {
                "GET": (resource.info, on_repository("pull")),
                "DELETE": (resource.delete, on_repository("delete")),
            },
            "repositories",
        ),
    ]
