"""Committed blobs: size, download, delete, cross-repository mount.

Invariant: a blob is served from a repository only while ``repository_blobs`` links it
there. Every read checks the link first (``blob_size``), so a blob stored for another
repository, or committed but never linked (a crash before the link), is unknown here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dockyard.core.common import Body, EventMaker, RequestInfo, parse_digest
from dockyard.core.errors import BlobUnknown
from dockyard.events.pulls import PullEventWriter
from dockyard.meta.store import Database
from dockyard.storage.base import BlobStore

# Repositories holding a blob read at a time when a mount without ``from`` looks for one.
MOUNT_CANDIDATES = 100


class Blobs:
    def __init__(
        self, db: Database, storage: BlobStore, pulls: PullEventWriter, events: EventMaker
    ) -> None:
        self.db = db
        self.meta = db.meta
        self.storage = storage
        self.pulls = pulls
        self._event = events

    async def blob_size(self, repository: str, digest: str) -> int:
        parse_digest(digest)
        size = await self.db.read(self.meta.linked_blob_size, repository, digest)
        if size is None:
            raise BlobUnknown(f"blob {digest} is not in {repository}")
        return size

    async def read_blob(
        self,
        ctx: RequestInfo,
        repository: str,
        digest: str,
        size: int,
        start: int = 0,
        length: int | None = None,
    ) -> Body:
        """Stream a blob already checked with ``blob_size``; records a pull event."""
        self.pulls.record(
            self._event(
                ctx, "pull", repository, digest, "application/octet-stream", size, kind="blob"
            )
        )
        return self.storage.read(digest, start, length)

    async def blob_redirect(
        self, ctx: RequestInfo, repository: str, digest: str, size: int
    ) -> str | None:
        """A URL the client may fetch a blob checked with ``blob_size`` from directly
        (the store's presigned URL), recording the pull; None: serve it here."""
        url = await self.storage.presigned_url(digest, "GET")
        if url is not None:
            self.pulls.record(
                self._event(
                    ctx, "pull", repository, digest, "application/octet-stream", size, kind="blob"
                )
            )
        return url

    async def delete_blob(self, ctx: RequestInfo, repository: str, digest: str) -> None:
        parse_digest(digest)
        # Like every blob event, it names the media type and size (a digest has one size).
        size = await self.db.run(self.meta.blob_size, digest)
        event = self._event(
            ctx, "delete", repository, digest, "application/octet-stream", size, kind="blob"
        )
        if not await self.db.run(self.meta.unlink_blob, repository, digest, [event]):
            raise BlobUnknown(f"blob {digest} is not in {repository}")

    async def mount_blob(
        self,
        ctx: RequestInfo,
        repository: str,
        digest: str,
        source: str | None,
        may_read: Callable[[str], Awaitable[bool]],
    ) -> bool:
        """Link a blob readable elsewhere into ``repository``; False if none is readable.

        With ``source`` only that repository is considered; without it, any repository
        holding the blob that ``may_read`` allows (read page by page, so repositories the
        caller may not read cannot hide one it may).
        """
        parse_digest(digest)
        if source is not None:
            return await self._mount_from(ctx, repository, digest, source, may_read)
        after: str | None = None
        while True:
            page = await self.db.run(
                self.meta.repositories_linking, digest, MOUNT_CANDIDATES, after
            )
            for candidate in page:
                if await self._mount_from(ctx, repository, digest, candidate, may_read):
                    return True
            if len(page) < MOUNT_CANDIDATES:
                return False
            after = page[-1]

    async def _mount_from(
        self,
        ctx: RequestInfo,
        repository: str,
        digest: str,
        candidate: str,
        may_read: Callable[[str], Awaitable[bool]],
    ) -> bool:
        if not await may_read(candidate):
            return False
        if candidate == repository:
            size = await self.db.run(self.meta.linked_blob_size, repository, digest)
            return size is not None
        size = await self.db.run(self.meta.linked_blob_size, candidate, digest)
        if size is None:
            return False
        event = self._event(
            ctx,
            "mount",
            repository,
            digest,
            "application/octet-stream",
            size,
            kind="blob",
            **{"from": candidate},
        )
        # Only onto a blob row that still exists (garbage collection may be deleting its
        # bytes): otherwise the client gets an upload session and pushes the bytes.
        return await self.db.run(self.meta.link_stored_blob, repository, digest, [event])
