"""What every scanner is to the rest of dockyard: ``Scanner.scan`` of one image manifest
(never an index: the queue scans an index's platforms one by one), answering a
``ScanResult`` or raising ``ScanFailed``.

A scanner pulls the image from dockyard itself (``ScanRequest.registry``, with a
short-lived pull-only credential when auth is on), or reads it in place
(``ScanRequest.local``, the stored files of a filesystem blob store), so it sees exactly
the stored bytes.
Scanners know nothing of the queue, the metadata store or the HTTP layer.

Errors::

    ScanFailed        the scan did not produce a result; ``reason`` says why (what
                      operators see in the CLI and metrics), ``retry_after`` when known
      reasons: "unavailable" (the scanner or its server cannot be reached), "database"
      (the vulnerability database is missing or stale and could not be fetched),
      "timeout", "crashed" (non-zero exit, unreadable output), "unsupported" (the
      scanner cannot scan this artifact: not an image)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from dockyard.config import SEVERITIES

REASONS = ("unavailable", "database", "timeout", "crashed", "unsupported")


class ScanFailed(Exception):
    def __init__(self, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        assert reason in REASONS
        self.reason = reason
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class LocalImage:
    """The image as files on this machine (a filesystem blob store): a scanner that can
    read it in place does, instead of pulling it from the registry over HTTP."""

    media_type: str
    manifest: bytes
    blobs: tuple[tuple[str, str], ...]  # (digest, path) of the config and every layer


@dataclass(frozen=True, slots=True)
class ScanRequest:
    # host:port the scanner pulls from (dockyard itself), and whether it is plain HTTP.
    registry: str
    insecure: bool
    repository: str
    digest: str  # an image manifest's digest
    # A short-lived credential that may pull ``repository`` (None: anonymous pulls).
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    # Also produce a CycloneDX SBOM.
    sbom: bool = False
    # The same image readable in place, when the blob store keeps files here.
    local: LocalImage | None = None


@dataclass(frozen=True, slots=True)
class Finding:
    id: str  # CVE-2024-1234, GHSA-..., as the scanner names it
    severity: str  # one of SEVERITIES
    package: str
    installed: str
    fixed: str  # "" when no fixed version is known
    title: str = ""


@dataclass(frozen=True, slots=True)
class ScanResult:
    scanner: str  # name and version, e.g. "Trivy 0.76.0"
    db_version: str | None  # identifies the vulnerability database (rescans on change)
    db_updated: float | None  # when that database was built (seconds since the epoch)
    findings: tuple[Finding, ...]
    report: bytes  # the scanner's own report, stored as the referrer's layer
    report_media_type: str
    sbom: bytes | None = None
    sbom_media_type: str | None = None

    def counts(self) -> dict[str, int]:
        """Findings per severity (every severity present, zero when none)."""
        counts = dict.fromkeys(SEVERITIES, 0)
        for f in self.findings:
            counts[f.severity if f.severity in counts else "UNKNOWN"] += 1
        return counts


class Scanner(Protocol):
    name: str  # "trivy", "harbor"

    async def scan(self, request: ScanRequest) -> ScanResult: ...

    async def database_version(self) -> str | None:
        """The version of the vulnerability database the next scan would use (fetching
        or refreshing it if needed); None when the scanner cannot tell. A change makes
        the queue rescan what an older version scanned."""
        ...

    async def aclose(self) -> None: ...
