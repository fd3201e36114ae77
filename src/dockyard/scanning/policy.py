"""Pull policies (``[[scanning.policies]]``): which manifest GETs and HEADs are refused
because of what a scan found (or that there was none yet).

The first policy whose repository globs match applies (none: the pull is not checked at
all, at no cost). For a manifest it refuses with ``Denied`` (403 DENIED):

- a finding at or above ``block_severity`` whose id is not in ``exempt_cves`` (an index:
  the findings of all its platforms, which its own row holds together);
- with ``require_scan``, a manifest not scanned yet (no row, or not done).

Never refused: digests in ``exempt_digests``; manifests with a subject (referrers: scan
reports, signatures); artifacts the queue does not scan ("unsupported"); the scanner's
own pulls (actor ``robot$scan-*``, the short-lived credentials of ``auth/robots.py``);
with auth off the scanner pulls anonymously, so a manifest is not refused while its row
is running (being scanned), and verdicts are not cached (a rescan starts without an
event): turn auth on for a policy without that window.

The check costs one point read of the manifest's ``scans`` row; the verdict on a scanned
(or unsupported) manifest is cached per digest and repository until a ``scan`` event for
that digest (any worker's or instance's, through the event hub) drops it.
"""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Callable
from dataclasses import dataclass

import anyio
from anyio.abc import TaskStatus

from dockyard.config import SEVERITIES, ScanPolicy
from dockyard.core.common import RequestInfo
from dockyard.core.errors import Denied
from dockyard.events.hub import EventHub, SubscriberLagged
from dockyard.events.schema import EventFilter
from dockyard.globs import any_glob_matches
from dockyard.meta.records import ManifestRecord
from dockyard.meta.scans import ScanRecord
from dockyard.meta.store import Database
from dockyard.oci.manifest import ManifestError, parse_manifest

log = logging.getLogger("dockyard.scanning")

SCANNER_ROBOTS = "robot$scan-*"
# Cached verdicts kept at most (a pull-heavy registry reads the same few digests).
CACHE_SIZE = 10_000


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str | None = None


ALLOWED = Verdict(True)


def blocking(policy: ScanPolicy, row: ScanRecord | None) -> list[str]:
    """The ids of ``row``'s findings the policy blocks on (sorted, unique)."""
    if row is None or not policy.block_severity:
        return []
    floor = SEVERITIES.index(policy.block_severity)
    exempt = set(policy.exempt_cves)
    ids = {
        str(f.get("id"))
        for f in row.findings
        if f.get("severity") in SEVERITIES
        and SEVERITIES.index(str(f.get("severity"))) >= floor
        and f.get("id") not in exempt
    }
    return sorted(ids)


def judge(
    policy: ScanPolicy,
    row: ScanRecord | None,
    digest: str,
    has_subject: Callable[[], bool],
    open_while_scanning: bool = False,
) -> Verdict:
    """Whether ``policy`` lets ``digest`` (its scan ``row``) be pulled, and why not. A row
    scanned before is judged on its last findings while a rescan is queued or runs;
    ``open_while_scanning``: a row being scanned is not refused (auth off: the scanner's
    pulls are anonymous)."""
    if digest in policy.exempt_digests:
        return ALLOWED
    if open_while_scanning and row is not None and row.status == "running":
        return ALLOWED
    where = f"(policy for {', '.join(policy.repositories) or '*'})"
    if row is not None and row.counts is not None:
        ids = blocking(policy, row)
        if ids:
            shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
            return Verdict(
                False,
                f"{digest} has {len(ids)} finding{'s' if len(ids) != 1 else ''} at or above "
                f"{policy.block_severity}: {shown} {where}",
            )
        return ALLOWED
    if row is not None and row.status == "unsupported":
        return ALLOWED
    if policy.require_scan and not has_subject():
        return Verdict(False, f"{digest} is not scanned yet {where}")
    return ALLOWED


class PullPolicy:
    """``check`` for the core's manifest reads; ``run`` (a task) keeps its cache true."""

    def __init__(
        self,
        db: Database,
        hub: EventHub,
        policies: list[ScanPolicy],
        open_while_scanning: bool = False,
    ) -> None:
        self.db = db
        self.open_while_scanning = open_while_scanning
        self.hub = hub
        self.policies = policies
        # digest -> repository -> verdict (policies are per repository).
        self._cache: dict[str, dict[str, Verdict]] = {}

    def policy_for(self, repository: str) -> ScanPolicy | None:
        for p in self.policies:
            if not p.repositories or any_glob_matches(repository, p.repositories):
                return p
        return None

    def forget(self, digest: str) -> None:
        self._cache.pop(digest, None)

    async def verdict(self, repository: str, digest: str, payload: bytes | None) -> Verdict:
        """The verdict without the cache (the scans API shows it)."""
        policy = self.policy_for(repository)
        if policy is None:
            return ALLOWED
        rows = await self.db.read(self.db.meta.scans_get, [digest])
        return judge(policy, rows.get(digest), digest, lambda: _has_subject(payload), False)

    async def check(self, ctx: RequestInfo, repository: str, found: ManifestRecord) -> None:
        """Raise ``Denied`` if a policy refuses this pull of ``found``."""
        policy = self.policy_for(repository)
        if policy is None:
            return
        if ctx.actor is not None and fnmatch.fnmatchcase(ctx.actor, SCANNER_ROBOTS):
            return
        verdict = self._cache.get(found.digest, {}).get(repository)
        if verdict is None:
            rows = await self.db.read(self.db.meta.scans_get, [found.digest])
            row = rows.get(found.digest)
            verdict = judge(
                policy,
                row,
                found.digest,
                lambda: _has_subject(found.payload),
                self.open_while_scanning,
            )
            # Only final answers: a row becomes unsupported without a scan event, and one
            # not scanned yet is read again (a point read) until its scan event.
            # Auth off: a cached verdict would refuse a rescan's anonymous pulls.
            final = row is not None and row.status in ("done", "unsupported")
            if final and not self.open_while_scanning:
                if len(self._cache) >= CACHE_SIZE:
                    self._cache.clear()
                self._cache.setdefault(found.digest, {})[repository] = verdict
        if not verdict.allowed:
            raise Denied(verdict.reason or "refused by a scanning policy")

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Drop a digest's cached verdict when a scan event names it."""
        wanted = EventFilter(actions=frozenset({"scan"}))
        started = False
        while True:
            try:
                async with self.hub.subscribe(wanted) as sub:
                    if not started:
                        started = True
                        task_status.started()
                    async for event in sub:
                        if event.digest:
                            self.forget(event.digest)
            except SubscriberLagged:
                self._cache.clear()


def _has_subject(payload: bytes | None) -> bool:
    if payload is None:
        return False
    try:
        return parse_manifest(payload, None).subject is not None
    except ManifestError:
        return False
