"""Retention policies applied by a real registry (in process, SQLite and PostgreSQL) with
a controllable clock: every rule, their combinations, the first matching policy, dry
runs, immutable tags, the re-push race, the events, and the server's scheduled run."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from dockyard.config import Settings, load
from dockyard.core.jobs import JobBusy
from dockyard.core.retention import DAY, JOB, Retention, RetentionReport
from dockyard.events.pulls import pull_times
from dockyard.meta.records import Event, PullTime
from dockyard.meta.store import Database
from dockyard.services import Services
from tests.conftest import (
    events,
    last_event_id,
    make_client,
    open_services,
    push_image,
    sqlite_and_postgres,
    wait_for_events,
)
from tests.meta_conformance import T0, Clock


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    return sqlite_and_postgres(request)


def policy_settings(root: Path, database_url: str, policies: str, **environ: str) -> Settings:
    """Settings of a test registry (as tests/conftest.py makes them) with ``policies``,
    [[retention.policies]] tables in TOML."""
    path = root / "dockyard.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(policies)
    env = {
        "DOCKYARD_STORAGE_ROOT": str(root / "data"),
        "DOCKYARD_SERVER_INSTANCE": "test",
        "DOCKYARD_EVENTS_PULL_FLUSH_INTERVAL": "0.02",
        "DOCKYARD_UPLOADS_PURGE_INTERVAL": "3600",
        **environ,
    }
    if database_url:
        env["DOCKYARD_DATABASE_URL"] = database_url
    return load(path, environ=env)


class Registry:
    """A running registry, its client and its clock."""

    def __init__(self, svc: Services, client: httpx.AsyncClient, clock: Clock) -> None:
        self.svc = svc
        self.client = client
        self.clock = clock

    async def push(self, repo: str, *tags: str, days: float = 0.0) -> str:
        """Push an image tagged ``tags`` at T0 + ``days``; its digest."""
        self.clock.now = T0 + days * DAY
        image = await push_image(self.client, repo, tags[0])
        for tag in tags[1:]:
            r = await self.client.put(
                f"/v2/{repo}/manifests/{tag}",
                content=image.payload,
                headers={"content-type": image.media_type},
            )
            assert r.status_code == 201, r.text
        return image.digest

    async def run(self, days: float, dry_run: bool = False) -> RetentionReport:
        self.clock.now = T0 + days * DAY
        assert self.svc.retention is not None
        return await self.svc.retention.run(dry_run)

    def tags(self, repo: str) -> list[str]:
        return self.svc.meta.list_tags(repo, None, 1000) or []


Open = Callable[[str], Any]


@pytest.fixture
def open_registry(tmp_path: Path, database_url: str) -> Callable[[str], Any]:
    """``async with open_registry(toml) as reg``: a registry with those policies."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def opened(policies: str, **environ: str) -> AsyncIterator[Registry]:
        clock = Clock()
        settings = policy_settings(tmp_path, database_url, policies, **environ)
        async with open_services(settings, clock) as svc, make_client(svc) as client:
            yield Registry(svc, client, clock)

    return opened


def policy(repositories: str = '["*"]', **rules: Any) -> str:
    """One [[retention.policies]] table (values as JSON, which TOML reads the same)."""
    lines = ["[[retention.policies]]", f"repositories = {repositories}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in rules.items()]
    return "\n".join(lines) + "\n"


def items(report: RetentionReport) -> list[tuple[str, str, str]]:
    return sorted((i.repository, i.tag, i.rule) for i in report.items)


async def test_keep_last_deletes_all_but_the_newest(open_registry: Open) -> None:
    async with open_registry(policy(keep_last=2)) as reg:
        digests = {t: await reg.push("app", t, days=i) for i, t in enumerate("abcde")}
        after = last_event_id(reg.svc)
        report = await reg.run(days=10)
        assert items(report) == [("app", t, "keep_last 2") for t in "abc"]
        assert reg.tags("app") == ["d", "e"]
        assert report.deleted_tags == 3 and not report.dry_run
        # One untag event per tag, with the rule, by retention, in the log.
        untags = [e for e in events(reg.svc, after) if e.action == "untag"]
        assert sorted((e.tag or "", e.digest or "") for e in untags) == [
            (t, digests[t]) for t in "abc"
        ]
        for e in untags:
            assert e.body["target"] == {"kind": "tag", "reason": "keep_last 2", "by": "retention"}
            assert e.body["actor"] == {"name": "retention"}
            assert e.body["request"]["method"] == "RETENTION"
        # The manifests stay (untagged): garbage collection's to delete.
        assert reg.svc.meta.get_manifest("app", digests["a"]) is not None
        # Nothing left to do.
        assert (await reg.run(days=10)).deleted_tags == 0


async def test_keep_tags_protect_matching_tags(open_registry: Open) -> None:
    toml = policy(keep_last=1, keep_tags=[r"v\d+", "stable"])
    async with open_registry(toml) as reg:
        for i, t in enumerate(["v1", "v2", "v2-rc", "stable", "x", "newest"]):
            await reg.push("app", t, days=i)
        report = await reg.run(days=10)
        assert [i.tag for i in report.items] == ["v2-rc", "x"]
        assert reg.tags("app") == ["newest", "stable", "v1", "v2"]


async def test_keep_tags_alone_delete_nothing(open_registry: Open) -> None:
    async with open_registry(policy(keep_tags=["v1"], delete_untagged_days=1)) as reg:
        await reg.push("app", "a", "b")
        assert (await reg.run(days=100)).deleted_tags == 0
        assert reg.tags("app") == ["a", "b"]


async def test_delete_older_than(open_registry: Open) -> None:
    async with open_registry(policy(delete_older_than_days=30)) as reg:
        await reg.push("app", "old", days=0)
        await reg.push("app", "edge", days=5)
        await reg.push("app", "young", days=20)
        report = await reg.run(days=35)  # cutoff: day 5; "edge" was pushed at it, not before
        assert items(report) == [("app", "old", "delete_older_than_days 30")]
        assert reg.tags("app") == ["edge", "young"]


async def test_delete_unpulled_counts_pulls_from_the_pull_writer(open_registry: Open) -> None:
    async with open_registry(policy(delete_unpulled_days=30)) as reg:
        await reg.push("app", "pulled-by-tag", days=0)
        by_digest = await reg.push("app", "pulled-by-digest", days=0)
        await reg.push("app", "never-pulled", days=0)
        await reg.push("app", "pushed-late", days=25)
        reg.clock.now = T0 + 20 * DAY
        after = last_event_id(reg.svc)
        for reference in ("pulled-by-tag", by_digest):
            r = await reg.client.get(f"/v2/app/manifests/{reference}")
            assert r.status_code == 200
        await wait_for_events(reg.svc, after, 2)
        report = await reg.run(days=31)  # cutoff: day 1
        assert items(report) == [("app", "never-pulled", "delete_unpulled_days 30")]
        assert reg.tags("app") == ["pulled-by-digest", "pulled-by-tag", "pushed-late"]
        # Later, the pulls are old too; the tag pushed at day 25 is still young.
        report = await reg.run(days=51)
        assert sorted(i.tag for i in report.items) == ["pulled-by-digest", "pulled-by-tag"]
        assert reg.tags("app") == ["pushed-late"]


async def test_rules_combined(open_registry: Open) -> None:
    toml = policy(keep_last=2, keep_tags=["release-.*"], delete_older_than_days=10)
    toml += "delete_unpulled_days = 20\n"
    async with open_registry(toml) as reg:
        await reg.push("app", "release-1", days=0)
        await reg.push("app", "old", days=1)
        await reg.push("app", "middle", days=15)
        await reg.push("app", "day-2", days=2)
        await reg.push("app", "day-3", days=3)
        # At day 22: keep_last 2 protects middle (day 15) and day-3; release-1 matches
        # keep_tags; older than 10 days: the rest; unpulled for 20 days: pushed before day 2.
        report = await reg.run(days=22)
        got = {i.tag: i.rule for i in report.items}
        assert got == {
            "old": "delete_older_than_days 10, delete_unpulled_days 20",
            "day-2": "delete_older_than_days 10",
        }
        assert reg.tags("app") == ["day-3", "middle", "release-1"]


async def test_first_matching_policy_applies(open_registry: Open) -> None:
    toml = policy('["team/special"]', keep_last=1) + policy('["team/*"]', keep_last=2)
    async with open_registry(toml) as reg:
        for repo in ("team/special", "team/other", "elsewhere"):
            for i, t in enumerate("abc"):
                await reg.push(repo, t, days=i)
        report = await reg.run(days=5)
        assert items(report) == [
            ("team/other", "a", "keep_last 2"),
            ("team/special", "a", "keep_last 1"),
            ("team/special", "b", "keep_last 1"),
        ]
        assert report.repositories == 2
        assert reg.tags("elsewhere") == ["a", "b", "c"]


async def test_dry_run_changes_nothing(open_registry: Open) -> None:
    async with open_registry(policy(keep_last=1)) as reg:
        await reg.push("app", "a", days=0)
        await reg.push("app", "b", days=1)
        after = last_event_id(reg.svc)
        preview = await reg.run(days=2, dry_run=True)
        assert preview.dry_run and items(preview) == [("app", "a", "keep_last 1")]
        assert reg.tags("app") == ["a", "b"]
        assert events(reg.svc, after) == []
        done = await reg.run(days=2)
        assert items(done) == items(preview) and done.bytes == preview.bytes > 0


async def test_retention_never_deletes_immutable_tags(open_registry: Open) -> None:
    toml = policy(delete_older_than_days=1, immutable_tags=[r"v\d+"])
    async with open_registry(toml) as reg:
        await reg.push("app", "v1", "dev", days=0)
        report = await reg.run(days=5)
        assert [i.tag for i in report.items] == ["dev"]
        assert reg.tags("app") == ["v1"]


async def test_a_tag_pushed_again_during_a_run_survives(open_registry: Open) -> None:
    """The policy reads the tags, then (before its delete) a CI job pushes one again:
    the delete's transaction sees the new push time and leaves that tag alone."""
    async with open_registry(policy(keep_last=1)) as reg:
        await reg.push("app", "moved", days=0)
        await reg.push("app", "repushed", days=1)
        await reg.push("app", "stale", days=2)
        await reg.push("app", "newest", days=3)
        moved_to = await reg.push("other", "x", days=3)  # a manifest to move "moved" to
        assert moved_to
        real = reg.svc.db
        pushed_meanwhile = False

        class Interleaving(Database):
            async def run(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
                nonlocal pushed_meanwhile
                if fn == real.meta.delete_tags_if_unchanged and not pushed_meanwhile:
                    pushed_meanwhile = True
                    await reg.push("app", "repushed", days=4)  # same name, new image
                    image = await push_image(reg.client, "app", "moved")
                    assert image.digest
                return await real.run(fn, *args, **kwargs)

        assert reg.svc.retention is not None
        retention = Retention(
            Interleaving(real.meta, 2), reg.svc.retention.policies, "test", reg.clock
        )
        reg.clock.now = T0 + 5 * DAY
        report = await retention.run()
        assert pushed_meanwhile
        assert [i.tag for i in report.items] == ["stale"]
        assert reg.tags("app") == ["moved", "newest", "repushed"]


async def test_one_run_at_a_time(open_registry: Open) -> None:
    async with open_registry(policy(keep_last=1)) as reg:
        assert reg.svc.meta.job_acquire(JOB, "elsewhere/1", 60)
        with pytest.raises(JobBusy):
            await reg.run(days=0)
        reg.svc.meta.job_release(JOB, "elsewhere/1")
        assert (await reg.run(days=0)).deleted_tags == 0


async def test_scheduled_run_in_the_server(open_registry: Open) -> None:
    toml = "[retention]\ninterval = 0.2\n" + policy(keep_last=1)
    async with open_registry(toml) as reg:
        await reg.push("app", "a", days=0)
        await reg.push("app", "b", days=1)
        assert reg.svc.metrics is not None
        counter = reg.svc.metrics.retention_deleted
        for _ in range(600):  # the first run starts after one interval (slow when loaded)
            # The run counts what it deleted when it returns, a moment after the delete.
            if reg.tags("app") == ["b"] and counter._value.get() == 1:
                break
            await anyio.sleep(0.05)
        assert reg.tags("app") == ["b"]
        assert counter._value.get() == 1


def test_pull_times_one_update_per_tag_and_manifest() -> None:
    """A batch of many pulls becomes one latest time per tag and per manifest; blob pulls
    and other events none."""

    def pull(tag: str | None, digest: str, ts: float, kind: str = "manifest") -> Event:
        return Event("pull", "app", digest, None, None, tag, {"target": {"kind": kind}}, ts)

    batch = [
        pull("v1", "sha256:a", T0 + 3),
        pull("v1", "sha256:a", T0 + 9),
        pull("v1", "sha256:a", T0 + 5),
        pull(None, "sha256:a", T0 + 7),
        pull("v2", "sha256:b", T0 + 1),
        pull(None, "sha256:c", T0 + 20, kind="blob"),
        Event("push", "app", "sha256:d", None, None, "v3", {"target": {"kind": "manifest"}}, T0),
    ]
    tags, manifests = pull_times(batch)
    assert sorted(tags, key=str) == [
        PullTime("app", "v1", "sha256:a", T0 + 9),
        PullTime("app", "v2", "sha256:b", T0 + 1),
    ]
    assert sorted(manifests, key=str) == [
        PullTime("app", "sha256:a", "sha256:a", T0 + 9),
        PullTime("app", "sha256:b", "sha256:b", T0 + 1),
    ]
