"""Retention policies: which tags a policy keeps, which it deletes, and a run that
deletes them while the registry serves (docs/gc.md, "Retention policies").

Semantics, for the policy of a repository (the first whose globs match it):

- protected: the ``keep_last`` most recently pushed tags, tags matching ``keep_tags``
  and immutable tags (``immutable_tags``), whatever else the policy says;
- candidates: with an age rule, the tags an age rule selects (``delete_older_than_days``:
  pushed before now - D days; ``delete_unpulled_days``: neither pushed nor pulled since
  now - D days); with ``keep_last`` alone, every tag; with no rule, none;
- deleted: candidates minus protected.

Only tags are deleted. The manifests they leave untagged are for garbage collection
(``delete_untagged_days``). A delete re-checks, in its transaction, that the tag still
points at the digest the policy saw and was not pushed since, so a tag re-pushed during a
run survives it. Core does not import config: policies are anything shaped like
``RetentionPolicy`` (``PolicyLike``).
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from dockyard.core.common import EventMaker, RequestInfo
from dockyard.core.jobs import JobLease
from dockyard.globs import any_glob_matches
from dockyard.meta.records import Event, RetentionTag
from dockyard.meta.store import Database

DAY = 86400.0
JOB = "retention"
# The server's scheduled runs: holding this lease for an interval means "run in this
# interval already started" across every worker and instance (services.py).
SCHEDULE_JOB = "retention.schedule"
LEASE_SECONDS = 60.0
BATCH = 200  # tags deleted per transaction
REPOSITORY_PAGE = 500


class HasRepositories(Protocol):
    @property
    def repositories(self) -> Sequence[str]: ...


class PolicyLike(HasRepositories, Protocol):
    """What a policy is made of (``config.model.RetentionPolicy`` is one)."""

    @property
    def keep_last(self) -> int: ...
    @property
    def keep_tags(self) -> Sequence[str]: ...
    @property
    def delete_older_than_days(self) -> float: ...
    @property
    def delete_unpulled_days(self) -> float: ...
    @property
    def delete_untagged_days(self) -> float: ...
    @property
    def immutable_tags(self) -> Sequence[str]: ...


P = TypeVar("P", bound=HasRepositories)


def policy_for(policies: Iterable[P], repository: str) -> P | None:
    """The first policy whose ``repositories`` globs match ``repository``, or None."""
    for policy in policies:
        if any_glob_matches(repository, policy.repositories):
            return policy
    return None


def _days(value: float) -> str:
    return f"{value:g}"


@dataclass(frozen=True, slots=True)
class Rules:
    """One policy, its patterns compiled (``re.fullmatch``: the whole tag)."""

    repositories: tuple[str, ...]
    keep_last: int
    keep_tags: tuple[re.Pattern[str], ...]
    older_than_days: float
    unpulled_days: float
    immutable: tuple[re.Pattern[str], ...]

    @classmethod
    def of(cls, p: PolicyLike) -> Rules:
        return cls(
            tuple(p.repositories),
            p.keep_last,
            tuple(re.compile(t) for t in p.keep_tags),
            p.delete_older_than_days,
            p.delete_unpulled_days,
            tuple(re.compile(t) for t in p.immutable_tags),
        )

    def is_immutable(self, tag: str) -> bool:
        return any(p.fullmatch(tag) for p in self.immutable)

    @property
    def deletes_tags(self) -> bool:
        return self.keep_last > 0 or self.older_than_days > 0 or self.unpulled_days > 0


@dataclass(frozen=True, slots=True)
class Decision:
    tag: RetentionTag
    rule: str  # why: the rule (or rules) that selected it


def select(rules: Rules, tags: Sequence[RetentionTag], now: float) -> list[Decision]:
    """The tags ``rules`` delete of ``tags`` (one repository's) at time ``now``."""
    if not rules.deletes_tags:
        return []
    protected: set[str] = set()
    if rules.keep_last > 0:
        recent = sorted(tags, key=lambda t: (-t.pushed, t.tag))[: rules.keep_last]
        protected.update(t.tag for t in recent)
    keep = rules.keep_tags + rules.immutable
    protected.update(t.tag for t in tags if any(p.fullmatch(t.tag) for p in keep))
    by_age = rules.older_than_days > 0 or rules.unpulled_days > 0
    out: list[Decision] = []
    for t in tags:
        if t.tag in protected:
            continue
        why: list[str] = []
        if rules.older_than_days > 0 and t.pushed < now - rules.older_than_days * DAY:
            why.append(f"delete_older_than_days {_days(rules.older_than_days)}")
        last_used = max(t.pushed, t.pulled or 0.0)
        if rules.unpulled_days > 0 and last_used < now - rules.unpulled_days * DAY:
            why.append(f"delete_unpulled_days {_days(rules.unpulled_days)}")
        if not by_age:
            why.append(f"keep_last {rules.keep_last}")
        if why:
            out.append(Decision(t, ", ".join(why)))
    return out


class Policies:
    """The configured policies, compiled once: the lookup pushes and deletes use."""

    def __init__(self, policies: Sequence[PolicyLike]) -> None:
        self.rules = [Rules.of(p) for p in policies]

    def for_repository(self, repository: str) -> Rules | None:
        return policy_for(self.rules, repository)

    def immutable(self, repository: str) -> Callable[[str], bool] | None:
        """The predicate "this tag of ``repository`` is immutable", or None if none is."""
        rules = self.for_repository(repository)
        return rules.is_immutable if rules is not None and rules.immutable else None


@dataclass(frozen=True, slots=True)
class RetentionItem:
    repository: str
    tag: str
    digest: str
    size: int
    rule: str


@dataclass
class RetentionReport:
    dry_run: bool
    items: list[RetentionItem] = field(default_factory=list)
    repositories: int = 0  # repositories looked at (those a policy covers)

    @property
    def deleted_tags(self) -> int:
        return len(self.items)

    @property
    def bytes(self) -> int:
        return sum(i.size for i in self.items)


Progress = Callable[[RetentionReport, str], None]


class Retention:
    """Runs the policies over every repository (``run``), one holder at a time."""

    def __init__(
        self,
        db: Database,
        policies: Policies,
        instance: str,
        clock: Callable[[], float] = time.time,
        batch: int = BATCH,
    ) -> None:
        self.db = db
        self.policies = policies
        self.instance = instance
        self.clock = clock
        self.batch = batch
        self._event = EventMaker(instance, clock)
        self._held: JobLease | None = None  # the "retention" lease while a run holds it

    async def run(self, dry_run: bool = False, progress: Progress | None = None) -> RetentionReport:
        """Apply every policy once under the ``retention`` lease (``JobBusy`` if taken)."""
        lease = f"{self.instance}/{uuid.uuid4().hex}"
        busy = "another retention run holds the lease"
        async with JobLease.hold(self.db, JOB, lease, LEASE_SECONDS, busy) as held:
            self._held = held
            return await self._run(lease, dry_run, progress)

    async def _keep_lease(self) -> None:
        assert self._held is not None
        await self._held.keep("the retention lease expired; run stopped")

    async def _run(self, lease: str, dry_run: bool, progress: Progress | None) -> RetentionReport:
        meta = self.db.meta
        report = RetentionReport(dry_run)
        ctx = RequestInfo(id=lease.rpartition("/")[2], method="RETENTION", actor="retention")
        last: str | None = None
        while True:
            names = await self.db.run(meta.list_repositories, last, REPOSITORY_PAGE)
            for repository in names:
                await self._keep_lease()
                rules = self.policies.for_repository(repository)
                if rules is None or not rules.deletes_tags:
                    continue
                report.repositories += 1
                tags = await self.db.run(meta.retention_tags, repository)
                decisions = select(rules, tags, self.clock())
                await self._apply(ctx, repository, decisions, report, dry_run)
                if progress is not None:
                    progress(report, repository)
            if len(names) < REPOSITORY_PAGE:
                return report
            last = names[-1]

    async def _apply(
        self,
        ctx: RequestInfo,
        repository: str,
        decisions: list[Decision],
        report: RetentionReport,
        dry_run: bool,
    ) -> None:
        rule_of = {d.tag.tag: d.rule for d in decisions}

        def item(t: RetentionTag) -> RetentionItem:
            return RetentionItem(repository, t.tag, t.digest, t.size, rule_of[t.tag])

        if dry_run:
            report.items += [item(d.tag) for d in decisions]
            return

        def untag(t: RetentionTag) -> list[Event]:
            return [
                self._event(
                    ctx,
                    "untag",
                    repository,
                    t.digest,
                    t.media_type,
                    t.manifest_size,
                    t.tag,
                    kind="tag",
                    reason=rule_of[t.tag],
                    by="retention",
                )
            ]

        for start in range(0, len(decisions), self.batch):
            await self._keep_lease()
            part = [d.tag for d in decisions[start : start + self.batch]]
            deleted = await self.db.run(
                self.db.meta.delete_tags_if_unchanged, repository, part, untag
            )
            report.items += [item(t) for t in deleted]
