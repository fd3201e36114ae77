"""Managing whole repositories (``/v2/_dockyard/repositories/``, docs/gc.md "Managing
repositories"): tags with their details, usage, and deleting a repository.

A deletion runs in batches (``meta/repository_admin.py``), each one transaction with a
``delete`` event per manifest, and ends with one ``delete`` event whose target kind is
``repository``; every event's body says ``reason: api``. The repository then leaves the
catalog; blobs it alone linked become collectable by garbage collection.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dockyard.core.common import EventMaker, RequestInfo
from dockyard.core.errors import NameUnknown
from dockyard.meta.records import Event
from dockyard.meta.repository_admin import TagDetail
from dockyard.meta.store import Database
from dockyard.meta.usage import Usage

# Manifests (or blob links) deleted per transaction.
DELETE_BATCH = 200


@dataclass(frozen=True, slots=True)
class TagPage:
    tags: list[TagDetail]
    next_last: str | None


@dataclass(frozen=True, slots=True)
class RepositoryDeleted:
    manifests: int
    links: int


def _by_api(event: Event) -> Event:
    return dataclasses.replace(event, body={**event.body, "reason": "api"})


class RepositoryManager:
    def __init__(self, db: Database, events: EventMaker, batch: int = DELETE_BATCH) -> None:
        self.db = db
        self.meta = db.meta
        self._event = events
        self.batch = batch

    async def tags(self, repository: str, n: int, last: str | None) -> TagPage:
        found = await self.db.run(self.meta.tag_details, repository, last, n + 1)
        if found is None:
            raise NameUnknown(f"repository {repository} is not known")
        if len(found) > n:  # one more than asked for: there is a next page
            return TagPage(found[:n], found[n - 1].name if n else None)
        return TagPage(found, None)

    async def usage(self, repository: str) -> Usage:
        found = await self.db.run(self.meta.repository_usage, repository)
        if found is None:
            raise NameUnknown(f"repository {repository} is not known")
        return found

    async def delete(self, ctx: RequestInfo, repository: str) -> RepositoryDeleted:
        if not await self.db.run(self.meta.repository_exists, repository):
            raise NameUnknown(f"repository {repository} is not known")
        manifests = links = 0

        def manifest_event(digest: str, media_type: str, size: int) -> Event:
            return _by_api(
                self._event(ctx, "delete", repository, digest, media_type, size, kind="manifest")
            )

        def repository_event() -> Event:
            return _by_api(
                self._event(
                    ctx,
                    "delete",
                    repository,
                    kind="repository",
                    manifests=manifests,
                    links=links,
                )
            )

        while True:
            step = await self.db.run(
                self.meta.delete_repository_step,
                repository,
                self.batch,
                manifest_event,
                repository_event,
            )
            manifests += step.manifests
            links += step.links
            if step.done:
                return RepositoryDeleted(manifests, links)
