"""What garbage collection may delete in one repository: the live set, computed in memory
from one snapshot (``meta/collect.py`` ``GcRepository``). Pure functions, no I/O; the
store re-checks every deletion at delete time, so a plan may be stale, never unsafe.

Live (``docs/gc.md`` "What is live"):

- roots: every tagged manifest; every untagged one unless the repository's retention
  policy has ``delete_untagged_days`` and it was pushed (or relied on) longer ago than
  that and than the grace period; but an untagged referrer whose subject is not stored
  in the repository (an orphan) is no root once older than the grace period;
- the closure: the children a live index lists, and the referrers of a live manifest
  (their subject), recursively;
- links: a blob any manifest left in the repository references, or linked within the
  grace period.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from dockyard.config.model import RetentionPolicy
from dockyard.globs import any_glob_matches
from dockyard.meta.gcrecords import GcLink, GcManifest, GcRepository

DAY = 86400.0


@dataclass(frozen=True, slots=True)
class DeadManifest:
    manifest: GcManifest
    cutoff: float  # the store deletes it only if untouched since
    reason: str


@dataclass(frozen=True, slots=True)
class RepositoryPlan:
    manifests: list[DeadManifest]  # parents before the children they list
    references: dict[str, set[str]]  # manifest digest -> blob digests it references


def untagged_days(repository: str, policies: Sequence[RetentionPolicy]) -> float:
    """``delete_untagged_days`` of the first policy matching ``repository`` (0: keep)."""
    for policy in policies:
        if any_glob_matches(repository, policy.repositories):
            return policy.delete_untagged_days
    return 0.0


def plan_manifests(repo: GcRepository, now: float, grace: float, days: float) -> RepositoryPlan:
    cutoff = now - grace
    untagged_cutoff = min(cutoff, now - days * DAY) if days > 0 else None
    stored = {m.digest: m for m in repo.manifests}
    children: dict[str, list[str]] = defaultdict(list)
    blobs: dict[str, set[str]] = defaultdict(set)
    for r in repo.references:
        if r.kind == "manifest":
            children[r.manifest].append(r.child)
        else:
            blobs[r.manifest].add(r.child)
    referrers: dict[str, list[str]] = defaultdict(list)
    for m in repo.manifests:
        if m.subject is not None:
            referrers[m.subject].append(m.digest)

    def is_root(m: GcManifest) -> bool:
        if m.tagged:
            return True
        if m.subject is not None and m.subject not in stored:
            return m.touched >= cutoff  # an orphan referrer: only the grace period keeps it
        return untagged_cutoff is None or m.touched >= untagged_cutoff

    live = {m.digest for m in repo.manifests if is_root(m)}
    todo = list(live)
    while todo:
        digest = todo.pop()
        for nxt in (*children.get(digest, ()), *referrers.get(digest, ())):
            if nxt in stored and nxt not in live:
                live.add(nxt)
                todo.append(nxt)

    dead: list[DeadManifest] = []
    for m in repo.manifests:
        if m.digest in live:
            continue
        if m.subject is not None and m.subject not in stored:
            dead.append(DeadManifest(m, cutoff, "subject gone"))
        elif m.subject is not None and m.subject not in live:
            assert untagged_cutoff is not None
            dead.append(DeadManifest(m, untagged_cutoff, "subject collected"))
        else:
            assert untagged_cutoff is not None
            dead.append(DeadManifest(m, untagged_cutoff, f"untagged over {days:g} days"))
    return RepositoryPlan(_parents_first(dead, children), dict(blobs))


def _parents_first(dead: list[DeadManifest], children: dict[str, list[str]]) -> list[DeadManifest]:
    """Order ``dead`` so that an index comes before the children it lists: the store
    keeps a manifest another one still lists."""
    by_digest = {d.manifest.digest: d for d in dead}
    waiting = dict.fromkeys(by_digest, 0)
    for parent in by_digest:
        for child in children.get(parent, ()):
            if child in waiting:
                waiting[child] += 1
    ready = sorted(d for d, n in waiting.items() if n == 0)
    ordered: list[DeadManifest] = []
    while ready:
        digest = ready.pop()
        ordered.append(by_digest[digest])
        for child in children.get(digest, ()):
            if child in waiting:
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready.append(child)
    # Digests make cycles impossible; anything left is kept out of caution.
    return ordered


def dead_links(
    repo: GcRepository, plan: RepositoryPlan, deleted: set[str], cutoff: float
) -> list[GcLink]:
    """Links no manifest left after ``deleted`` references, linked before ``cutoff``."""
    needed: set[str] = set()
    for m in repo.manifests:
        if m.digest not in deleted:
            needed |= plan.references.get(m.digest, set())
    return [link for link in repo.links if link.digest not in needed and link.linked < cutoff]
