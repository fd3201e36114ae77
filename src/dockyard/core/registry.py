"""The registry: blobs, uploads, manifests, tags, referrers and the catalog.

No HTTP objects and no driver-specific code here. Bodies arrive as async iterators of
byte chunks; every chunk is hashed and written as it arrives (DESIGN.md 3.2), so memory
per upload is one chunk whatever the blob size.

Invariants:

- A blob is served from a repository only when ``repository_blobs`` links it there; the
  link is written after the storage driver committed the bytes, so nothing half-written
  or unverified is ever served. A crash between the two leaves an unlinked blob that
  garbage collection may remove; the client's retry stores it again (or dedupes).
- A chunked upload is held by one request at a time through a lease in the upload row
  (works across worker processes and instances); the bytes a failed request wrote past
  the saved offset are discarded by the next writer.
- Each change appends its event in the same transaction as the change.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from dockyard.core.errors import (
    BlobUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    SizeInvalid,
    TagInvalid,
    UploadInvalid,
    UploadOutOfOrder,
    UploadUnknown,
)
from dockyard.events.pulls import PullEventWriter
from dockyard.meta.records import (
    Conflict,
    Event,
    ManifestRecord,
    NewManifest,
    ReferrerRecord,
    UploadRecord,
)
from dockyard.meta.store import Database
from dockyard.oci.digest import CANONICAL, Digest, DigestError, Hasher, digest_of, new_hasher
from dockyard.oci.manifest import ManifestError, parse_manifest, referrer_artifact_type
from dockyard.oci.names import ReferenceError_, is_valid_tag, parse_reference
from dockyard.storage.base import BlobStore, UploadNotFound, UploadWriter

Body = AsyncIterator[bytes]


@dataclass(frozen=True, slots=True)
class RequestInfo:
    """Who caused a change, for the event log."""

    id: str = ""
    addr: str = ""
    user_agent: str = ""
    method: str = ""
    actor: str | None = None


@dataclass(frozen=True, slots=True)
class UploadStatus:
    id: str
    repository: str
    offset: int


@dataclass(frozen=True, slots=True)
class PushedManifest:
    digest: str
    tags: tuple[str, ...]
    subject: str | None


@dataclass(frozen=True, slots=True)
class Page:
    items: list[str]
    next_last: str | None  # pass as `last` to get the next page; None when this is the end


@dataclass
class _Progress:
    """What a request wrote to an upload before it is saved."""

    hasher: Hasher
    written: int = 0
    writer: UploadWriter | None = None
    last_renew: float = field(default_factory=time.monotonic)


class Registry:
    def __init__(
        self,
        db: Database,
        storage: BlobStore,
        pulls: PullEventWriter,
        *,
        instance: str,
        lease_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.meta = db.meta
        self.storage = storage
        self.pulls = pulls
        self.instance = instance
        self.lease_seconds = lease_seconds
        self._clock = clock
        # Hashers that cannot export their state (blake3), kept for the next chunk when it
        # reaches this process; otherwise the upload is re-hashed from its stored bytes.
        self._live_hashers: OrderedDict[str, tuple[int, Hasher]] = OrderedDict()

    # -- events

    def _event(
        self,
        ctx: RequestInfo,
        action: str,
        repository: str,
        digest: str | None = None,
        media_type: str | None = None,
        size: int | None = None,
        tag: str | None = None,
        **target: Any,
    ) -> Event:
        body: dict[str, Any] = {
            "target": {k: v for k, v in target.items() if v is not None},
            "request": {
                "id": ctx.id,
                "addr": ctx.addr,
                "useragent": ctx.user_agent,
                "method": ctx.method,
            },
            "actor": {"name": ctx.actor} if ctx.actor else {},
            "source": {"instance": self.instance},
        }
        return Event(action, repository, digest, media_type, size, tag, body, self._clock())

    # -- blobs

    async def blob_size(self, repository: str, digest: str) -> int:
        _parse_digest(digest)
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

    async def delete_blob(self, ctx: RequestInfo, repository: str, digest: str) -> None:
        _parse_digest(digest)
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
        holding the blob that ``may_read`` allows.
        """
        _parse_digest(digest)
        candidates = (
            [source]
            if source is not None
            else await self.db.run(self.meta.repositories_linking, digest)
        )
        for candidate in candidates:
            if candidate == repository:
                size = await self.db.run(self.meta.linked_blob_size, repository, digest)
                if size is not None:
                    return True
                continue
            size = await self.db.run(self.meta.linked_blob_size, candidate, digest)
            if size is None or not await may_read(candidate):
                continue
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
            await self.db.run(self.meta.link_blob, repository, digest, size, [event])
            return True
        return False

    # -- uploads

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
        with trio.CancelScope(shield=True):
            await self.db.run(self.meta.release_upload, upload_id, lease)

    async def _stream(
        self,
        record: UploadRecord,
        lease: str,
        progress: _Progress,
        body: Body,
        expected: int | None,
    ) -> None:
        """Hash and write ``body`` after the upload's saved bytes."""
        async for chunk in body:
            if not chunk:
                continue
            if progress.writer is None:
                try:
                    progress.writer = await self.storage.open_writer(
                        record.id, record.received, record.driver_state
                    )
                except UploadNotFound:
                    # A crash after the commit moved the bytes, before the session went.
                    with trio.CancelScope(shield=True):
                        await self.db.run(self.meta.delete_upload, record.id)
                    raise UploadUnknown(f"upload {record.id} lost its bytes; start again") from None
            progress.hasher.update(chunk)
            await progress.writer.write(chunk)
            progress.written += len(chunk)
            if expected is not None and progress.written > expected:
                raise SizeInvalid(f"body is longer than the {expected} bytes announced")
            now = time.monotonic()
            if now - progress.last_renew > self.lease_seconds / 3:
                progress.last_renew = now
                await self.db.run(self.meta.renew_lease, record.id, lease, self.lease_seconds)
        if expected is not None and progress.written != expected:
            raise SizeInvalid(f"body has {progress.written} bytes, {expected} were announced")

    async def _receive(
        self,
        record: UploadRecord,
        lease: str,
        body: Body,
        expected: int | None,
        algorithm: str,
        finishing: bool,
    ) -> tuple[_Progress, dict[str, Any]]:
        """Hash and append ``body`` to a claimed upload; the progress and new driver state.

        If anything fails, what this request wrote is forgotten (the writer aborts).
        """
        progress = _Progress(await self._resume_hasher(record, algorithm))
        try:
            await self._stream(record, lease, progress, body, expected)
            if progress.writer is None and finishing:
                # No last chunk: still drop what a failed request left past the saved
                # offset, since the commit takes the whole upload. If the bytes are gone,
                # _commit checks whether a crashed attempt stored them.
                with contextlib.suppress(UploadNotFound):
                    progress.writer = await self.storage.open_writer(
                        record.id, record.received, record.driver_state
                    )
            state = record.driver_state
            if progress.writer is not None:
                state = await progress.writer.close()
        except BaseException:
            if progress.writer is not None:
                with trio.CancelScope(shield=True):
                    await progress.writer.abort()
            raise
        return progress, state

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
            with trio.CancelScope(shield=True):
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

    def _remember_hasher(self, upload_id: str, offset: int, hasher: Hasher) -> None:
        self._live_hashers[upload_id] = (offset, hasher)
        self._live_hashers.move_to_end(upload_id)
        while len(self._live_hashers) > 1024:
            self._live_hashers.popitem(last=False)

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
        want = _parse_digest(digest)
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
                with trio.CancelScope(shield=True):
                    await self.db.run(self.meta.delete_upload, upload_id)
                    await self.storage.delete_upload(upload_id, state)
                self._live_hashers.pop(upload_id, None)
                raise DigestInvalid(f"content has digest {got}, not {want}")
            with trio.CancelScope(shield=True):
                await self._commit(ctx, repository, upload_id, state, size, str(want))
            self._live_hashers.pop(upload_id, None)
            return str(want)
        except BaseException:
            await self._release(upload_id, lease)
            raise

    async def _commit(
        self,
        ctx: RequestInfo,
        repository: str,
        upload_id: str | None,
        state: dict[str, Any],
        size: int,
        digest: str,
        storage_id: str | None = None,
    ) -> None:
        sid = storage_id or upload_id
        assert sid is not None
        try:
            await self.storage.commit_upload(sid, state, size, digest)
        except UploadNotFound:
            # A previous attempt committed the bytes and died before linking them.
            if await self.storage.stat(digest) != size:
                raise
        event = self._event(
            ctx, "push", repository, digest, "application/octet-stream", size, kind="blob"
        )
        await self.db.run(
            self.meta.link_blob, repository, digest, size, [event], finished_upload=upload_id
        )

    async def put_blob(
        self, ctx: RequestInfo, repository: str, digest: str, body: Body, expected: int | None
    ) -> str:
        """A whole blob in one request (POST ?digest=)."""
        want = _parse_digest(digest)
        storage_id = f"mono-{uuid.uuid4().hex}"
        state = await self.storage.create_upload(storage_id)
        committed = False
        try:
            hasher = new_hasher(want.algorithm)
            writer = await self.storage.open_writer(storage_id, 0, state)
            written = 0
            try:
                async for chunk in body:
                    hasher.update(chunk)
                    await writer.write(chunk)
                    written += len(chunk)
                    if expected is not None and written > expected:
                        raise SizeInvalid(f"body is longer than the {expected} bytes announced")
                if expected is not None and written != expected:
                    raise SizeInvalid(f"body has {written} bytes, {expected} were announced")
                state = await writer.close()
            except BaseException:
                with trio.CancelScope(shield=True):
                    await writer.abort()
                raise
            got = hasher.digest()
            if got != want:
                raise DigestInvalid(f"content has digest {got}, not {want}")
            with trio.CancelScope(shield=True):
                await self._commit(ctx, repository, None, state, written, str(want), storage_id)
            committed = True
            return str(want)
        finally:
            if not committed:
                with trio.CancelScope(shield=True):
                    await self.storage.delete_upload(storage_id, state)

    async def purge_stale_uploads(self, max_idle: float) -> int:
        """Delete upload sessions untouched for ``max_idle`` seconds, and orphan bytes."""
        stale = await self.db.run(self.meta.stale_uploads, self._clock() - max_idle)
        for record in stale:
            await self.db.run(self.meta.delete_upload, record.id)
            await self.storage.delete_upload(record.id, record.driver_state)
        known = await self.db.run(self.meta.upload_ids)
        cutoff = self._clock() - max_idle
        orphans = 0
        async for upload_id, touched in self.storage.list_uploads():
            if upload_id not in known and touched < cutoff:
                await self.storage.delete_upload(upload_id, {})
                orphans += 1
        return len(stale) + orphans

    # -- manifests

    async def get_manifest(
        self,
        ctx: RequestInfo,
        repository: str,
        reference: str,
        record_pull: bool,
        accepts: Callable[[str], bool] | None = None,
    ) -> ManifestRecord:
        """The manifest ``reference`` names; ``accepts`` (the client's Accept header) may
        refuse its media type, which is "unknown" to that client and records no pull."""
        ref = _manifest_reference(repository, reference)
        found = await self._find_manifest(repository, ref)
        if found is None:
            if not await self.db.run(self.meta.repository_exists, repository):
                raise NameUnknown(f"repository {repository} is not known")
            raise ManifestUnknown(f"no manifest {reference} in {repository}")
        if accepts is not None and not accepts(found.media_type):
            raise ManifestUnknown(
                f"manifest is {found.media_type}, which the Accept header does not list"
            )
        if record_pull:
            tag = None if isinstance(ref, Digest) else ref
            self.pulls.record(
                self._event(
                    ctx,
                    "pull",
                    repository,
                    found.digest,
                    found.media_type,
                    found.size,
                    tag,
                    kind="manifest",
                )
            )
        return found

    async def _find_manifest(self, repository: str, ref: Digest | str) -> ManifestRecord | None:
        if isinstance(ref, Digest):
            return await self.db.read(self.meta.get_manifest, repository, str(ref))
        return await self.db.read(self.meta.get_tagged_manifest, repository, ref)

    async def put_manifest(
        self,
        ctx: RequestInfo,
        repository: str,
        reference: str,
        payload: bytes,
        content_type: str | None,
        extra_tags: list[str],
    ) -> PushedManifest:
        try:
            ref = parse_reference(reference)
        except DigestError as e:
            raise DigestInvalid(str(e)) from None
        except ReferenceError_ as e:
            raise TagInvalid(str(e)) from None
        tags: list[str] = [] if isinstance(ref, Digest) else [ref]
        for tag in extra_tags:
            if not is_valid_tag(tag):
                raise TagInvalid(f"invalid tag {tag[:80]!r}")
            if tag not in tags:
                tags.append(tag)
        try:
            manifest = parse_manifest(payload, content_type)
        except ManifestError as e:
            raise ManifestInvalid(str(e)) from None
        if isinstance(ref, Digest):
            digest = digest_of(payload, ref.algorithm)
            if digest != ref:
                raise DigestInvalid(f"manifest has digest {digest}, not {ref}")
        else:
            digest = digest_of(payload)
        required = [d for d in manifest.blobs if d.data is None and not d.non_distributable]
        linked = await self.db.run(
            self.meta.linked_blobs, repository, [str(d.digest) for d in required]
        )
        for d in required:
            size = linked.get(str(d.digest))
            if size is None:
                raise ManifestBlobUnknown(
                    f"blob {d.digest} is not in {repository}", {"digest": str(d.digest)}
                )
            if size != d.size:
                raise ManifestInvalid(
                    f"descriptor of {d.digest} says {d.size} bytes, the blob has {size}"
                )
        # Children of an index need not be stored: sparse indexes are allowed.
        children = [str(d.digest) for d in manifest.children]
        if children:
            stored = await self.db.run(self.meta.existing_manifests, repository, children)
            for d in manifest.children:
                size = stored.get(str(d.digest))
                if size is not None and size != d.size:
                    raise ManifestInvalid(
                        f"descriptor of {d.digest} says {d.size} bytes, the manifest has {size}"
                    )
        subject = str(manifest.subject.digest) if manifest.subject else None
        artifact_type = referrer_artifact_type(manifest)
        event = self._event(
            ctx,
            "push",
            repository,
            str(digest),
            manifest.media_type,
            len(payload),
            tags[0] if tags else None,
            kind="manifest",
            tags=tags or None,
            artifactType=artifact_type,
            subject=subject,
        )
        await self.db.run(
            self.meta.put_manifest,
            NewManifest(
                repository,
                str(digest),
                manifest.media_type,
                artifact_type,
                subject,
                payload,
                manifest.annotations or None,
                [str(d.digest) for d in manifest.blobs],
                children,
                tags,
            ),
            [event],
        )
        return PushedManifest(str(digest), tuple(tags), subject)

    async def delete_manifest(self, ctx: RequestInfo, repository: str, reference: str) -> None:
        ref = _manifest_reference(repository, reference)
        # Delete and untag events name the manifest's media type and size, as pushes and
        # pulls do (so mediaType filters see them). Read before the change: a digest names
        # one content, so what was read describes what is deleted.
        if isinstance(ref, Digest):
            found = await self._find_manifest(repository, ref)
            event = self._event(
                ctx,
                "delete",
                repository,
                str(ref),
                found.media_type if found else None,
                found.size if found else None,
                kind="manifest",
            )
            if not await self.db.run(self.meta.delete_manifest, repository, str(ref), [event]):
                raise ManifestUnknown(f"no manifest {ref} in {repository}")
            return
        tagged = await self._find_manifest(repository, ref)

        def untag_event(digest: str) -> list[Event]:
            known = tagged if tagged is not None and tagged.digest == digest else None
            return [
                self._event(
                    ctx,
                    "untag",
                    repository,
                    digest,
                    known.media_type if known else None,
                    known.size if known else None,
                    ref,
                    kind="manifest",
                )
            ]

        if await self.db.run(self.meta.delete_tag, repository, ref, untag_event) is None:
            raise ManifestUnknown(f"no tag {ref} in {repository}")

    # -- listings

    async def list_tags(self, repository: str, n: int, last: str | None) -> Page:
        tags = await self.db.run(self.meta.list_tags, repository, last, n + 1)
        if tags is None:
            raise NameUnknown(f"repository {repository} is not known")
        return _page(tags, n)

    async def catalog(self, n: int, last: str | None) -> Page:
        return _page(await self.db.run(self.meta.list_repositories, last, n + 1), n)

    async def referrers(
        self, repository: str, digest: str, artifact_type: str | None, n: int, last: str | None
    ) -> tuple[list[ReferrerRecord], str | None]:
        _parse_digest(digest)
        found = await self.db.run(
            self.meta.referrers, repository, digest, artifact_type, last, n + 1
        )
        if len(found) > n:
            # n=0 asks for nothing and gets no next page (found[-1] would skip a referrer).
            return found[:n], found[n - 1].digest if n else None
        return found, None


def _manifest_reference(repository: str, reference: str) -> Digest | str:
    """A manifest reference to look up: a malformed tag names no manifest (404)."""
    try:
        return parse_reference(reference)
    except DigestError as e:
        raise DigestInvalid(str(e)) from None
    except ReferenceError_:
        raise ManifestUnknown(f"no manifest {reference[:80]!r} in {repository}") from None


def _parse_digest(text: str) -> Digest:
    try:
        return Digest.parse(text)
    except DigestError as e:
        raise DigestInvalid(str(e)) from None


def _page(items: list[str], n: int) -> Page:
    if len(items) > n:
        return Page(items[:n], items[n - 1] if n else None)
    return Page(items, None)


__all__ = ["Body", "Page", "PushedManifest", "Registry", "RequestInfo", "UploadStatus"]
