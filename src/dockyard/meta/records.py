"""The records the metadata store reads and writes: plain frozen dataclasses, no I/O.

Every store (``meta/sqlite/`` today, PostgreSQL next) returns these, and ``core/``,
``events/`` and ``http/`` use them without knowing which store made them.

Errors::

    StoreError                  anything a store raises on purpose
    ├── Conflict                a conditional update found the row changed (lost a race)
    ├── StoreBusy               an inline read met a lock; retry it off the event loop
    ├── ReferencesGone          a manifest push found a blob link or child it relies on
    │                           collected meanwhile (the client pushes again)
    └── BlobBeingDeleted        garbage collection is deleting the blob's bytes right now
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class StoreError(Exception):
    """Base of the errors a metadata store raises on purpose."""


class Conflict(StoreError):
    """A conditional update found the row changed (lost a race)."""


class StoreBusy(StoreError):
    """An inline read (``MetadataStore.inline_reads``) met a lock it must not wait for."""


class ReferencesGone(StoreError):
    """``put_manifest`` could not refresh a blob link or child manifest it checked: the
    garbage collector removed it between the check and the write. Nothing was written."""

    def __init__(self, message: str, digest: str) -> None:
        super().__init__(message)
        self.digest = digest


class BlobBeingDeleted(StoreError):
    """``claim_blob``: the collector is deleting this digest's bytes (``blob_deletions``);
    the upload must not rely on stored bytes until it is done."""


class StoreUnavailable(StoreError):
    """The database could not be reached: at ``migrate``, or (PostgreSQL) a call that lost
    its connection or got none in time. The message names why, never a password."""


@dataclass(frozen=True, slots=True)
class Event:
    """One row of the event log, before it has an id."""

    action: str
    repository: str
    digest: str | None = None
    media_type: str | None = None
    size: int | None = None
    tag: str | None = None
    body: dict[str, Any] = field(default_factory=dict)
    ts: float = 0.0


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    ts: float
    action: str
    repository: str | None
    digest: str | None
    media_type: str | None
    size: int | None
    tag: str | None
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ManifestRecord:
    digest: str
    media_type: str
    size: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class ReferrerRecord:
    digest: str
    media_type: str
    size: int
    artifact_type: str | None
    annotations: dict[str, str] | None


@dataclass(frozen=True, slots=True)
class RepositorySummary:
    """One repository as the dashboard lists it. ``size`` counts the linked blobs and the
    manifests once each (a blob shared with other repositories counts in each of them)."""

    name: str
    tags: int
    manifests: int
    size: int
    updated: float  # last manifest push, or the repository's creation


@dataclass(frozen=True, slots=True)
class ActivityCount:
    """Events of one action in one group (a time bucket or a repository)."""

    key: str | int  # bucket number (ts // bucket) or repository name
    action: str
    count: int
    size: int  # the events' sizes added up (bytes moved, for pushes and pulls)


@dataclass(frozen=True, slots=True)
class BucketActivity:
    """Events of one action on one repository in one time bucket."""

    bucket: int  # ts // bucket length
    repository: str
    action: str
    count: int
    size: int


MANIFEST_KINDS = ("image", "index", "artifact")


@dataclass(frozen=True, slots=True)
class InventoryRecord:
    """What is stored, for the metrics: counts read in one snapshot, each blob once."""

    repositories: int
    tags: int
    manifests: dict[str, int]  # by kind (MANIFEST_KINDS), every kind present
    blobs: int
    blob_bytes: int
    upload_sessions: int
    last_event_id: int
    webhook_cursors: dict[str, int]  # endpoint name -> last event handled


@dataclass(frozen=True, slots=True)
class StatsRecord:
    """What the dashboard loads, read in one transaction: the counts cover exactly the
    events up to ``last_id``, so a reader adds live events after it without gap or double."""

    last_id: int
    repositories: list[RepositorySummary]
    repository_count: int
    tag_count: int
    manifest_count: int
    blob_count: int
    blob_bytes: int
    by_bucket: list[ActivityCount]
    by_repository: list[ActivityCount]
    # Only when asked for (a caller who may see some repositories only).
    by_bucket_and_repository: list[BucketActivity] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UploadRecord:
    id: str
    repository: str
    algorithm: str
    received: int
    hash_state: bytes | None
    driver_state: dict[str, Any]
    lease: str | None
    lease_expires: float | None
    started: float
    touched: float


@dataclass(frozen=True, slots=True)
class NewManifest:
    repository: str
    digest: str
    media_type: str
    artifact_type: str | None
    subject: str | None
    payload: bytes
    annotations: dict[str, str] | None
    blob_refs: Sequence[str]
    manifest_refs: Sequence[str]
    tags: Sequence[str]
    # What the push checked is there: the blobs it requires (linked to the repository) and
    # the children found stored. ``put_manifest`` refreshes each in its transaction and
    # raises ``ReferencesGone`` if one was collected since (``docs/gc.md``).
    required_blobs: Sequence[str] = ()
    stored_children: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class WebhookCursor:
    name: str
    cursor: int
    lease: str | None
    lease_expires: float | None
    created: float
    delivered: float | None
    failed: int


@dataclass(frozen=True, slots=True)
class WebhookFailure:
    name: str
    event_id: int
    attempts: int
    last_error: str
    failed: float
    redeliver: bool
