"""The registry: one object with every operation the HTTP layer calls.

A facade over the parts, each in its own module: ``blobs.Blobs`` (size, download,
delete, mount), ``uploads.Uploads`` (sessions, chunks, commit, whole-blob pushes, the
janitor's purge) and ``manifests.Manifests`` (manifests, tags, referrers, catalog). They
share the request and result types of ``common`` and one ``EventMaker``, so every event
names its source the same way.

No HTTP objects and no driver-specific code here or in the parts. Bodies arrive as async
iterators of byte chunks; every chunk is hashed and written as it arrives
(``core.stream.receive``), so memory per upload is one chunk whatever the blob size.

The public methods are the parts' own bound methods, set as attributes in ``__init__``:
a call costs what it did before the split (no wrapper coroutine on the manifest and blob
HEAD/GET paths), and type checkers see each attribute with its method's exact signature.

Invariants (each part's docstring has its own):

- A blob is served from a repository only when ``repository_blobs`` links it there; the
  link is written after the storage driver committed the bytes, so nothing half-written
  or unverified is ever served.
- A chunked upload is held by one request at a time through a lease in the upload row.
- Each change appends its event in the same transaction as the change.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from dockyard.core.blobs import Blobs
from dockyard.core.common import Body, EventMaker, Page, PushedManifest, RequestInfo, UploadStatus
from dockyard.core.manifests import ImmutableTags, Manifests
from dockyard.core.quotas import NO_QUOTAS, Quotas
from dockyard.core.uploads import Uploads
from dockyard.events.pulls import PullEventWriter
from dockyard.meta.store import Database
from dockyard.storage.base import BlobStore


class Registry:
    def __init__(
        self,
        db: Database,
        storage: BlobStore,
        pulls: PullEventWriter,
        *,
        instance: str,
        lease_seconds: float = 60.0,
        gc_lease_seconds: float = 60.0,
        clock: Callable[[], float] = time.time,
        immutable: ImmutableTags | None = None,
        quotas: Quotas = NO_QUOTAS,
        require_layers: bool = True,
    ) -> None:
        events = EventMaker(instance, clock)
        self.blobs = Blobs(db, storage, pulls, events)
        self.uploads = Uploads(
            db,
            storage,
            events,
            instance=instance,
            lease_seconds=lease_seconds,
            gc_lease_seconds=gc_lease_seconds,
            clock=clock,
        )
        self.manifests = Manifests(db, pulls, events, immutable, require_layers)
        # Every path that links bytes or stores a manifest checks the same quotas.
        self.quotas = self.blobs.quotas = self.uploads.quotas = self.manifests.quotas = quotas
        # The public API: the parts' bound methods (see the module docstring).
        # blobs
        self.blob_size = self.blobs.blob_size
        self.read_blob = self.blobs.read_blob
        self.blob_redirect = self.blobs.blob_redirect
        self.delete_blob = self.blobs.delete_blob
        self.mount_blob = self.blobs.mount_blob
        # uploads
        self.start_upload = self.uploads.start_upload
        self.upload_status = self.uploads.upload_status
        self.cancel_upload = self.uploads.cancel_upload
        self.write_chunk = self.uploads.write_chunk
        self.finish_upload = self.uploads.finish_upload
        self.put_blob = self.uploads.put_blob
        self.purge_stale_uploads = self.uploads.purge_stale_uploads
        # manifests and listings
        self.get_manifest = self.manifests.get_manifest
        self.manifest_pull_recorder = self.manifests.pull_recorder
        self.put_manifest = self.manifests.put_manifest
        self.delete_manifest = self.manifests.delete_manifest
        self.list_tags = self.manifests.list_tags
        self.catalog = self.manifests.catalog
        self.referrers = self.manifests.referrers


__all__ = ["Body", "Page", "PushedManifest", "Registry", "RequestInfo", "UploadStatus"]
