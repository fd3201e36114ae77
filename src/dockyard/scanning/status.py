"""What the scans API and the tags list show of a manifest's scan (docs/api.md, "Scans").

``Scans`` is the one object ``http/handlers/scans.py`` calls: ``describe`` (GET),
``request`` (POST), ``summaries`` (the tags list's ``scan`` field).
"""

from __future__ import annotations

from typing import Any

from dockyard.core.errors import ManifestUnknown, Unsupported
from dockyard.meta.scans import ScanRecord
from dockyard.meta.store import Database
from dockyard.oci.manifest import INDEX_TYPES
from dockyard.scanning.policy import PullPolicy
from dockyard.scanning.queue import ScanQueue, index_children
from dockyard.scanning.report import rfc3339


def _time(seconds: float | None) -> str | None:
    return None if seconds is None else rfc3339(seconds)


def summary(row: ScanRecord | None) -> dict[str, int] | None:
    if row is None or row.counts is None or row.status != "done":
        return None
    # Most severe first, as the API example shows.
    return {k: row.counts[k] for k in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "UNKNOWN")}


def document(
    repository: str,
    digest: str,
    media_type: str,
    rows: dict[str, ScanRecord],
    children: list[tuple[str, str]],
) -> dict[str, Any]:
    """The API's document of ``digest``'s scan (``rows``: its own and its platforms')."""
    row = rows.get(digest)
    return {
        "repository": repository,
        "digest": digest,
        "mediaType": media_type,
        "status": "none" if row is None else row.status,
        "scanner": None if row is None else row.scanner,
        "dbUpdated": None if row is None else _time(row.db_updated),
        "scannedAt": None if row is None or row.status != "done" else _time(row.finished),
        "summary": summary(row),
        "findings": [] if row is None else row.findings,
        "report": None if row is None else row.report_digest,
        "attempts": 0 if row is None else row.attempts,
        "lastError": None if row is None else row.last_error,
        "nextAttempt": None if row is None or row.status != "queued" else _time(row.next_attempt),
        "platforms": [
            {
                "digest": d,
                "platform": platform,
                "status": "none" if d not in rows else rows[d].status,
                "summary": summary(rows.get(d)),
            }
            for d, platform in children
        ],
        "policy": {"allowed": True, "reason": None},
    }


class Scans:
    def __init__(self, db: Database, queue: ScanQueue | None, policy: PullPolicy | None) -> None:
        # queue None: no scanner configured. A manifest's scan is then "none" (what the
        # dashboard shows for every image), and asking for a scan is refused.
        self.db = db
        self.queue = queue
        self.policy = policy

    async def request(self, repository: str, digest: str) -> None:
        if self.queue is None:
            raise Unsupported("no scanner is configured ([scanning] scanner)")
        if not await self.queue.request(repository, digest):
            raise ManifestUnknown(f"no manifest {digest} in {repository}")

    async def describe(self, repository: str, digest: str) -> dict[str, Any]:
        meta = self.db.meta
        found = await self.db.run(meta.get_manifest, repository, digest)
        if found is None:
            raise ManifestUnknown(f"no manifest {digest} in {repository}")
        children = index_children(found.payload) if found.media_type in INDEX_TYPES else []
        rows = await self.db.run(meta.scans_get, [digest, *(d for d, _ in children)])
        doc = document(repository, digest, found.media_type, rows, children)
        if self.policy is not None:
            verdict = await self.policy.verdict(repository, digest, found.payload)
            doc["policy"] = {"allowed": verdict.allowed, "reason": verdict.reason}
        return doc

    async def summaries(self, digests: list[str]) -> dict[str, dict[str, Any]]:
        """The tags list's ``scan`` field of each digest that has a row."""
        rows = await self.db.run(self.db.meta.scans_get, sorted(set(digests)))
        return {d: {"status": r.status, "summary": summary(r)} for d, r in rows.items()}
