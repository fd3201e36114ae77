"""Paginated listings: tags, the catalog and referrers (``?n=`` and ``?last=``, with a
``Link`` header to the next page).

Routes::

    GET  /v2/_catalog
    GET  /v2/<name>/tags/list
    GET  /v2/<name>/referrers/<digest>     ?artifactType=
"""

from __future__ import annotations

import json
from urllib.parse import quote

from dockyard.auth import Authorizer
from dockyard.core.registry import Registry
from dockyard.http.handlers.resource import Resource
from dockyard.http.request import Page, Request, Response, json_response
from dockyard.oci.manifest import OCI_INDEX


class Listing(Resource):
    def __init__(
        self, registry: Registry, authorizer: Authorizer, default_page_size: int, max_page_size: int
    ) -> None:
        super().__init__(authorizer)
        self.registry = registry
        self.default_page_size = default_page_size
        self.max_page_size = max_page_size

    async def tags(self, req: Request, p: dict[str, str]) -> Response:
        name = p["name"]
        page = Page(req, self.default_page_size, self.max_page_size)
        result = await self.registry.list_tags(name, page.n, page.last)
        return json_response(
            200,
            {"name": name, "tags": result.items},
            page.link(f"/v2/{name}/tags/list", result.next_last),
        )

    async def catalog(self, req: Request, p: dict[str, str]) -> Response:
        page = Page(req, self.default_page_size, self.max_page_size)
        result = await self.registry.catalog(page.n, page.last, self.pull_filter(req))
        return json_response(
            200, {"repositories": result.items}, page.link("/v2/_catalog", result.next_last)
        )

    async def referrers(self, req: Request, p: dict[str, str]) -> Response:
        name, digest = p["name"], p["digest"]
        page = Page(req, self.default_page_size, self.max_page_size)
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
