"""The records garbage collection reads from a store and the deletions it asks of it
(``meta/collect.py``): plain frozen dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from dockyard.meta.records import Event


@dataclass(frozen=True, slots=True)
class GcManifest:
    digest: str
    media_type: str
    size: int
    subject: str | None
    touched: float  # the last push of it or of a manifest relying on it
    tagged: bool


@dataclass(frozen=True, slots=True)
class GcReference:
    manifest: str
    child: str
    kind: str  # "blob" or "manifest"


@dataclass(frozen=True, slots=True)
class GcLink:
    digest: str
    size: int
    linked: float  # the link's creation, or the last push that relied on it


@dataclass(frozen=True, slots=True)
class GcRepository:
    """What one repository holds, read in one transaction."""

    id: int
    name: str
    manifests: list[GcManifest]
    references: list[GcReference]
    links: list[GcLink]


@dataclass(frozen=True, slots=True)
class GcBlob:
    digest: str
    size: int
    touched: float
    links: int  # repositories linking it


@dataclass(frozen=True, slots=True)
class Doomed:
    """One row the collector asks the store to delete: only if still unneeded at
    ``cutoff`` (see the module docstring); ``event`` is appended if it goes."""

    digest: str
    cutoff: float
    event: Event
