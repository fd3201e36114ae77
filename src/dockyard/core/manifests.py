"""Manifests, tags, referrers and the catalog.

Invariants:

- A manifest is stored only if every blob it requires (not embedded, not
  non-distributable) is linked to the repository with the size its descriptor states;
  children of an index need not be stored (sparse indexes), but a stored child must have
  the stated size. With ``require_layers`` off (``[manifests] require_layers = false``),
  an image manifest may be sparse too: a missing blob is allowed, a linked one must still
  have the stated size and is refreshed in the push's transaction like any other.
- Stored payloads are the exact bytes pushed: the digest is computed over them, and a
  digest reference must match it.
- Delete and untag events name the manifest's media type and size, read before the
  change: a digest names one content, so what was read describes what is deleted.
- An immutable tag (``immutable``: the repository's retention policy) is never moved to
  another digest nor deleted, by tag or with its manifest: the store checks the tag rows
  in the change's own transaction (``TagImmutable``), answered as ``Denied``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from dockyard.core.common import (
    EventMaker,
    Page,
    PushedManifest,
    RequestInfo,
    page,
    parse_digest,
)
from dockyard.core.errors import (
    Denied,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameUnknown,
    TagInvalid,
)
from dockyard.core.quotas import NO_QUOTAS, Quotas
from dockyard.events.pulls import PullEventWriter
from dockyard.meta.records import (
    Event,
    ManifestRecord,
    NewManifest,
    ReferencesGone,
    ReferrerRecord,
    TagImmutable,
)
from dockyard.meta.store import Database
from dockyard.meta.usage import QuotaExceeded
from dockyard.oci.digest import Digest, DigestError, digest_of
from dockyard.oci.manifest import ManifestError, parse_manifest, referrer_artifact_type
from dockyard.oci.names import ReferenceError_, is_valid_tag, parse_reference

# Names read at a time when the catalog is filtered (a caller who may pull few of many).
CATALOG_BATCH = 500

# A repository's "is this tag immutable" predicate, or None when none of its tags is.
ImmutableTags = Callable[[str], Callable[[str], bool] | None]


def _immutable_denied(repository: str, tag: str) -> Denied:
    return Denied(f"tag {tag} is immutable in {repository} (retention policy)")


# Called with each manifest a GET or HEAD found; raises (Denied) to refuse the pull
# (scanning/policy.py's pull policies, set by the composition root).
PullCheck = Callable[[RequestInfo, str, ManifestRecord], Awaitable[None]]


class Manifests:
    quotas: Quotas = NO_QUOTAS  # set by the Registry
    pull_check: PullCheck | None = None

    def __init__(
        self,
        db: Database,
        pulls: PullEventWriter,
        events: EventMaker,
        immutable: ImmutableTags | None = None,
        require_layers: bool = True,
    ) -> None:
        self.db = db
        self._require_layers = require_layers
        self.meta = db.meta
        self.pulls = pulls
        self._event = events
        self._immutable = immutable

    def _immutable_of(self, repository: str) -> Callable[[str], bool] | None:
        return self._immutable(repository) if self._immutable is not None else None

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
        if self.pull_check is not None:
            await self.pull_check(ctx, repository, found)
        if record_pull:
            self.record_pull(ctx, repository, None if isinstance(ref, Digest) else ref, found)
        return found

    def pull_recorder(
        self, repository: str, reference: str, found: ManifestRecord
    ) -> Callable[[RequestInfo], None]:
        """What records the pull event of another GET of ``found`` by ``reference`` (a GET
        answered again from memory, ``http/answers.py``)."""
        ref = _manifest_reference(repository, reference)
        tag = None if isinstance(ref, Digest) else ref
        return lambda ctx: self.record_pull(ctx, repository, tag, found)

    def record_pull(
        self,
        ctx: RequestInfo,
        repository: str,
        tag: str | None,
        found: ManifestRecord,
        **target: str,
    ) -> None:
        """Record the pull event of ``found``, pulled by ``tag`` (None: by digest);
        ``target`` adds to the event's target (the pull-through cache's fill)."""
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
                **target,
            )
        )

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
                if not self._require_layers:
                    continue  # a sparse manifest: the blob may come later, or never
                raise ManifestBlobUnknown(
                    f"blob {d.digest} is not in {repository}", {"digest": str(d.digest)}
                )
            if size != d.size:
                raise ManifestInvalid(
                    f"descriptor of {d.digest} says {d.size} bytes, the blob has {size}"
                )
        # Children of an index need not be stored: sparse indexes are allowed.
        children = [str(d.digest) for d in manifest.children]
        stored: dict[str, int] = {}
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
        immutable = self._immutable_of(repository)
        quota = self.quotas.scope_for(repository)
        try:
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
                    [t for t in tags if immutable(t)] if immutable else (),
                    # Only what is linked: the store refreshes each in the transaction
                    # and refuses the push if garbage collection took one meanwhile.
                    required_blobs=[str(d.digest) for d in required if str(d.digest) in linked],
                    stored_children=list(stored),
                ),
                [event],
                quota=quota,
            )
        except TagImmutable as e:
            raise _immutable_denied(repository, e.tag) from None
        except QuotaExceeded as e:
            raise self.quotas.refused(repository, e) from None
        except ReferencesGone as e:
            # Garbage collection removed it after the check: the client pushes it again.
            raise ManifestBlobUnknown(
                f"{e.digest} was garbage-collected from {repository} during the push",
                {"digest": e.digest},
            ) from None
        return PushedManifest(str(digest), tuple(tags), subject)

    async def delete_manifest(self, ctx: RequestInfo, repository: str, reference: str) -> None:
        ref = _manifest_reference(repository, reference)
        immutable = self._immutable_of(repository)
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
            try:
                deleted = await self.db.run(
                    self.meta.delete_manifest, repository, str(ref), [event], immutable
                )
            except TagImmutable as e:
                raise _immutable_denied(repository, e.tag) from None
            if not deleted:
                raise ManifestUnknown(f"no manifest {ref} in {repository}")
            return
        tagged = await self._find_manifest(repository, ref)
        if immutable is not None and immutable(ref):
            # The name decides: no state of the tag row would let this delete through.
            if tagged is None:
                raise ManifestUnknown(f"no tag {ref} in {repository}")
            raise _immutable_denied(repository, ref)

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
        return page(tags, n)

    async def catalog(
        self, n: int, last: str | None, visible: Callable[[str], bool] | None = None
    ) -> Page:
        """Repository names after ``last``; with ``visible``, only those it accepts: the
        store is read batch by batch until the page (and one more, for its Link) is full."""
        if visible is None:
            return page(await self.db.run(self.meta.list_repositories, last, n + 1), n)
        found: list[str] = []
        batch = max(n + 1, CATALOG_BATCH)
        while len(found) <= n:
            names = await self.db.run(self.meta.list_repositories, last, batch)
            found += [name for name in names if visible(name)]
            if len(names) < batch:
                break
            last = names[-1]
        return page(found[: n + 1], n)

    async def referrers(
        self, repository: str, digest: str, artifact_type: str | None, n: int, last: str | None
    ) -> tuple[list[ReferrerRecord], str | None]:
        parse_digest(digest)
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
