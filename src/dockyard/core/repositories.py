"""Managing whole repositories (``/v2/_dockyard/repositories/``, docs/gc.md "Managing
repositories"): tags with their details, usage, and deleting a repository.

A deletion runs in batches (``meta/repository_admin.py``), each one transaction with a
``delete`` event per manifest, and ends with one ``delete`` event whose target kind is
``repository``; every event's target says ``reason: api`` (where the feed and webhooks
show it, as gc's and retention's reasons). The repository then leaves the catalog; blobs
it alone linked become collectable by garbage collection. A repository holding an
immutable tag (a retention policy's ``immutable_tags``) is not deleted: ``DENIED``.
"""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.core.common import EventMaker, RequestInfo
from dockyard.core.errors import Denied, NameUnknown
from dockyard.core.manifests import ImmutableTags
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


class RepositoryManager:
    def __init__(
        self,
        db: Database,
        events: EventMaker,
        batch: int = DELETE_BATCH,
        immutable: ImmutableTags | None = None,
    ) -> None:
        self.db = db
        self.meta = db.meta
        self._event = events
        self.batch = batch
        self._immutable = immutable

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
        await self._refuse_immutable(repository)
        manifests = links = 0

        def manifest_event(digest: str, media_type: str, size: int) -> Event:
            return self._event(
                ctx, "delete", repository, digest, media_type, size, kind="manifest", reason="api"
            )

        def repository_event() -> Event:
            return self._event(
                ctx,
                "delete",
                repository,
                kind="repository",
                reason="api",
                manifests=manifests,
                links=links,
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

    async def _refuse_immutable(self, repository: str) -> None:
        """No DELETE may remove an immutable tag: nor may deleting its repository."""
        immutable = self._immutable(repository) if self._immutable is not None else None
        if immutable is None:
            return
        last: str | None = None
        while True:
            page = await self.db.run(self.meta.list_tags, repository, last, 1000) or []
            for tag in page:
                if immutable(tag):
                    raise Denied(
                        f"repository {repository} holds immutable tag {tag} (retention policy)"
                    )
            if len(page) < 1000:
                return
            last = page[-1]
