"""Blob uploads: sessions, chunks under a lease, the digest check and the commit.

Bodies go through ``core.stream.receive`` (hash and write each chunk as it arrives).

Invariants:

- A chunked upload is held by one request at a time through a lease in the upload row
  (works across worker processes and instances); the bytes a failed request wrote past
  the saved offset are discarded by the next writer.
- The saved offset, hash state and driver state move together, in the UPDATE that
  releases the lease, and only after the chunk's bytes were closed in storage.
- A blob is linked to a repository (``repository_blobs``) only after the storage driver
  committed its verified bytes; the link, the removal of the upload row and the ``push``
  event are one transaction. A crash between commit and link leaves an unlinked blob,
  which is not served; the client's retry dedupes onto it.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from dockyard.core.common import Body, EventMaker, RequestInfo, UploadStatus, parse_digest
from dockyard.core.errors import (
    DigestInvalid,
    TooManyRequests,
    UploadInvalid,
    UploadOutOfOrder,
    UploadUnknown,
)
from dockyard.core.quotas import NO_QUOTAS, Quotas
from dockyard.core.stream import Progress, receive
from dockyard.meta.records import BlobBeingDeleted, Conflict, UploadRecord
from dockyard.meta.store import Database
from dockyard.meta.usage import QuotaExceeded
from dockyard.oci.digest import CANONICAL, DigestError, Hasher, new_hasher
from dockyard.storage.base import BlobStore, DriverState, UploadNotFound, UploadWriter

# An upload whose blob the garbage collector is deleting waits this long at most for it
# to finish (it deletes a batch of bytes at a time), looking again this often.
CLAIM_WAIT = 30.0
CLAIM_RETRY = 0.1
CLAIM_RETRY_AFTER = 5.0

# Hashers kept in memory for uploads whose hash state cannot be saved (blake3).
LIVE_HASHERS = 1024


@dataclass(frozen=True, slots=True)
class UploadStatistics:
    live_hashers: int  # hashers held for the next chunk of a blake3 upload
    # Hashers evicted (least recently used first) past LIVE_HASHERS: the next chunk of
    # such an upload re-hashes its stored bytes instead (slower, not wrong).
    hashers_dropped: int


@dataclass(frozen=True, slots=True)
class Purged:
    sessions: int  # stale upload sessions this process deleted
    orphans: int  # upload bytes with no session (a crash between the two writes)


class Uploads:
    # Set by the Registry; checked before the bytes are committed and again in the link.
    quotas: Quotas = NO_QUOTAS

    def __init__(
        self,
        db: Database,
        storage: BlobStore,
        events: EventMaker,
        *,
        instance: str,
        lease_seconds: float = 60.0,
        gc_lease_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.meta = db.meta
        self.storage = storage
        self._event = events
        self.instance = instance
        self.lease_seconds = lease_seconds
        self.gc_lease_seconds = gc_lease_seconds
        self._clock = clock
        # Hashers that cannot export their state (blake3), kept for the next chunk when it
        # reaches this process; otherwise the upload is re-hashed from its stored bytes.
        self._live_hashers: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()
        self._hashers_dropped = 0

    def statistics(self) -> UploadStatistics:
        return UploadStatistics(len(self._live_hashers), self._hashers_dropped)

    # -- sessions

    async def start_upload(self, repository: str, algorithm: str = CANONICAL) -> UploadStatus:
        try:
            new_hasher(algorithm)
        except DigestError as e:
            raise DigestInvalid(str(e)) from None
        upload_id = uuid.uuid4().hex
        state = await self.storage.create_upload(upload_id)
        await self.db.run(self.meta.create_upload, upload_id, repository, algorithm, state)
        return UploadStatus(upload_id, repository, 0)

    async def _get_upload(self, repository: str, upload_id: str) -> UploadRecord:
        record = await self.db.run(self.meta.get_upload, upload_id)
        if record is None or record.repository != repository:
            raise UploadUnknown(f"upload {upload_id[:64]} is not in progress in {repository}")
        return record

    async def upload_status(self, repository: str, upload_id: str) -> UploadStatus:
        record = await self._get_upload(repository, upload_id)
        return UploadStatus(record.id, repository, record.received)

    async def cancel_upload(self, repository: str, upload_id: str) -> None:
        record = await self._get_upload(repository, upload_id)
        await self.db.run(self.meta.delete_upload, upload_id)
        self._live_hashers.pop(upload_id, None)
        await self.storage.delete_upload(upload_id, record.driver_state)

    async def purge_stale_uploads(self, max_idle: float) -> Purged:
        """Delete upload sessions untouched for ``max_idle`` seconds, and orphan bytes.

        Every instance runs this. A session is first taken with a lease, as a PATCH takes
        it, at the offset it was listed with: a request writing it, or one that wrote
        since it was listed, keeps it alive. Only the process whose delete removed the row
        counts it and deletes its bytes, so each stale session is purged once."""
        stale = await self.db.run(self.meta.stale_uploads, self._clock() - max_idle)
        sessions = 0
        for record in stale:
            lease = f"{self.instance}/purge-{uuid.uuid4().hex}"
            taken = await self.db.run(
                self.meta.claim_upload, record.id, record.received, lease, self.lease_seconds
            )
            if taken and await self.db.run(self.meta.delete_upload, record.id):
                await self.storage.delete_upload(record.id, record.driver_state)
                sessions += 1
        known = await self.db.run(self.meta.upload_ids)
        cutoff = self._clock() - max_idle
        orphans = 0
        async for upload_id, touched in self.storage.list_uploads():
            if upload_id not in known and touched < cutoff:
                await self.storage.delete_upload(upload_id, {})
                orphans += 1
        return Purged(sessions, orphans)

    # -- hashing across chunks

    async def _resume_hasher(self, record: UploadRecord, algorithm: str) -> Hasher:
        if algorithm == record.algorithm and record.hash_state is not None:
            return new_hasher(algorithm, record.hash_state)
        # Taken out, not just read: the request updates this hasher in place, so if it
        # fails half-way the hasher holds bytes the upload does not; success puts it back.
        live = self._live_hashers.pop(record.id, None)
        if algorithm == record.algorithm and live is not None and live[0] == record.received:
            return live[1]
        if algorithm == record.algorithm and record.received == 0:
            return new_hasher(algorithm)
        # Recovery path: the state was not saved (blake3) or another algorithm is asked
        # for at PUT. Re-read what is stored.
        hasher = new_hasher(algorithm)
        async for chunk in self.storage.read_upload(
            record.id, record.driver_state, record.received
        ):
            hasher.update(chunk)
        return hasher

    def _remember_hasher(self, upload_id: str, offset: int, hasher: Hasher) -> None:
        self._live_hashers[upload_id] = (offset, hasher)
        self._live_hashers.move_to_end(upload_id)
        while len(self._live_hashers) > LIVE_HASHERS:
            self._live_hashers.popitem(last=False)
            self._hashers_dropped += 1

    # -- the lease

    async def _claim(self, record: UploadRecord, start: int | None) -> str:
        if start is not None and start != record.received:
            raise UploadOutOfOrder(
                f"chunk starts at {start}, upload is at {record.received}", record.received
            )
        lease = f"{self.instance}/{uuid.uuid4().hex}"
        if not await self.db.run(
            self.meta.claim_upload, record.id, record.received, lease, self.lease_seconds
        ):
            current = await self.db.run(self.meta.get_upload, record.id)
            if current is None:
                raise UploadUnknown(f"upload {record.id} was cancelled or finished")
            raise UploadOutOfOrder("another request is writing this upload", current.received)
        return lease

    async def _release(self, upload_id: str, lease: str) -> None:
        with anyio.CancelScope(shield=True):
            await self.db.run(self.meta.release_upload, upload_id, lease)

    # -- bodies

    async def _receive(
        self,
        record: UploadRecord,
        lease: str,
        body: Body,
        expected: int | None,
        algorithm: str,
        finishing: bool,
    ) -> tuple[Progress, DriverState]:
        """Hash and append ``body`` to a claimed upload; the progress and new driver state.

        If anything fails, what this request wrote is forgotten (the writer aborts).
        """
        progress = Progress(await self._resume_hasher(record, algorithm))

        async def open_writer() -> UploadWriter:
            try:
                return await self.storage.open_writer(
                    record.id, record.received, record.driver_state
                )
            except UploadNotFound:
                # A crash after the commit moved the bytes, before the session went.
                with anyio.CancelScope(shield=True):
                    await self.db.run(self.meta.delete_upload, record.id)
                raise UploadUnknown(f"upload {record.id} lost its bytes; start again") from None

        async def renew() -> None:
            await self.db.run(self.meta.renew_lease, record.id, lease, self.lease_seconds)

        async def last_writer() -> UploadWriter | None:
            # No last chunk: still drop what a failed request left past the saved offset,
            # since the commit takes the whole upload. If the bytes are gone, _commit
            # checks whether a crashed attempt stored them.
            with contextlib.suppress(UploadNotFound):
                return await self.storage.open_writer(
                    record.id, record.received, record.driver_state
                )
            return None

        state = await receive(
            body,
            progress,
            expected,
            open_writer,
            renew=renew,
            renew_every=self.lease_seconds / 3,
            finishing=last_writer if finishing else None,
        )
        return progress, record.driver_state if state is None else state

    async def write_chunk(
        self,
        repository: str,
        upload_id: str,
        body: Body,
        start: int | None = None,
        expected: int | None = None,
    ) -> UploadStatus:
        """Append a chunk (PATCH). ``start`` is Content-Range's first byte, if given."""
        record = await self._get_upload(repository, upload_id)
        lease = await self._claim(record, start)
        try:
            progress, state = await self._receive(
                record, lease, body, expected, record.algorithm, finishing=False
            )
            offset = record.received + progress.written
            with anyio.CancelScope(shield=True):
                await self.db.run(
                    self.meta.save_upload, upload_id, lease, offset, progress.hasher.state(), state
                )
            if progress.hasher.state() is None:
                self._remember_hasher(upload_id, offset, progress.hasher)
            return UploadStatus(upload_id, repository, offset)
        except Conflict:
            raise UploadInvalid("the upload was taken over after its lease expired") from None
        except BaseException:
            await self._release(upload_id, lease)
            raise

    async def finish_upload(
        self,
        ctx: RequestInfo,
        repository: str,
        upload_id: str,
        digest: str,
        body: Body,
        start: int | None = None,
        expected: int | None = None,
    ) -> str:
        """Complete an upload (PUT), with an optional last chunk; returns the digest."""
        want = parse_digest(digest)
        record = await self._get_upload(repository, upload_id)
        lease = await self._claim(record, start)
        try:
            progress, state = await self._receive(
                record, lease, body, expected, want.algorithm, finishing=True
            )
            size = record.received + progress.written
            got = progress.hasher.digest()
            if got != want:
                # Nothing is stored: the session and its bytes go.
                with anyio.CancelScope(shield=True):
                    await self.db.run(self.meta.delete_upload, upload_id)
                    await self.storage.delete_upload(upload_id, state)
                self._live_hashers.pop(upload_id, None)
                raise DigestInvalid(f"content has digest {got}, not {want}")
            with anyio.CancelScope(shield=True):
                await self._commit(ctx, repository, upload_id, state, size, str(want))
            self._live_hashers.pop(upload_id, None)
            return str(want)
        except BaseException:
            await self._release(upload_id, lease)
            raise

    async def put_blob(
        self, ctx: RequestInfo, repository: str, digest: str, body: Body, expected: int | None
    ) -> str:
        """A whole blob in one request (POST ?digest=)."""
        want = parse_digest(digest)
        storage_id = f"mono-{uuid.uuid4().hex}"
        state = await self.storage.create_upload(storage_id)
        committed = False
        try:
            progress = Progress(new_hasher(want.algorithm))
            created = state

            async def open_writer() -> UploadWriter:
                return await self.storage.open_writer(storage_id, 0, created)

            # An empty body opens its writer at the end (finishing): an empty blob has
            # bytes to commit too.
            closed = await receive(body, progress, expected, open_writer, finishing=open_writer)
            assert closed is not None  # finishing always opens a writer
            state = closed
            got = progress.hasher.digest()
            if got != want:
                raise DigestInvalid(f"content has digest {got}, not {want}")
            with anyio.CancelScope(shield=True):
                await self._commit(
                    ctx, repository, None, state, progress.written, str(want), storage_id
                )
            committed = True
            return str(want)
        finally:
            if not committed:
                with anyio.CancelScope(shield=True):
                    await self.storage.delete_upload(storage_id, state)

    async def _commit(
        self,
        ctx: RequestInfo,
        repository: str,
        upload_id: str | None,
        state: DriverState,
        size: int,
        digest: str,
        storage_id: str | None = None,
    ) -> None:
        sid = storage_id or upload_id
        assert sid is not None
        quota = self.quotas.scope_for(repository)
        if quota is not None:
            try:
                await self.db.run(self.meta.check_blob_quota, quota, repository, digest, size)
            except QuotaExceeded as e:
                # Over anyway: nothing is committed, the session and its bytes go.
                if upload_id is not None:
                    await self.db.run(self.meta.delete_upload, upload_id)
                    await self.storage.delete_upload(upload_id, state)
                raise self.quotas.refused(repository, e) from None
        # Before the commit, which may drop these bytes for stored ones (dedupe): from now
        # on the collector keeps the stored bytes, or this waits until it has deleted them.
        await claim_blob(self.db, digest, size, self.gc_lease_seconds, "push")
        try:
            await self.storage.commit_upload(sid, state, size, digest)
        except UploadNotFound:
            # A previous attempt committed the bytes and died before linking them.
            if await self.storage.stat(digest) != size:
                raise
        event = self._event(
            ctx, "push", repository, digest, "application/octet-stream", size, kind="blob"
        )
        try:
            await self.db.run(
                self.meta.link_blob,
                repository,
                digest,
                size,
                [event],
                finished_upload=upload_id,
                quota=quota,
            )
        except QuotaExceeded as e:
            # Another push took the room since the check: no link, the session goes. New
            # bytes stay unlinked (never served) until garbage collection removes them.
            if upload_id is not None:
                await self.db.run(self.meta.delete_upload, upload_id)
            raise self.quotas.refused(repository, e) from None


async def claim_blob(
    db: Database, digest: str, size: int, gc_lease_seconds: float, then: str
) -> None:
    """Claim a blob row before committing bytes of ``digest`` (``meta.claim_blob``: from
    then on the collector keeps the stored bytes), waiting up to CLAIM_WAIT while garbage
    collection is deleting them; then 429, telling the client to ``then`` it again."""
    waited = 0.0
    while True:
        try:
            await db.run(db.meta.claim_blob, digest, size, gc_lease_seconds)
            return
        except BlobBeingDeleted:
            if waited >= CLAIM_WAIT:
                raise TooManyRequests(
                    f"blob {digest} is being garbage-collected; {then} it again shortly",
                    CLAIM_RETRY_AFTER,
                ) from None
        await anyio.sleep(CLAIM_RETRY)
        waited += CLAIM_RETRY
