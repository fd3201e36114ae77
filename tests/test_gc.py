"""The garbage collector in process (``core/gc.py``): the live-set rules, the grace period
under a controllable clock, dry runs, crash leftovers, the storage walk and the races
with uploads and mounts, on SQLite and PostgreSQL with a real storage driver."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from dockyard.config import Settings
from dockyard.config.model import RetentionPolicy
from dockyard.core.common import EventMaker, RequestInfo
from dockyard.core.errors import ManifestBlobUnknown
from dockyard.core.gc import Collector, GcReport
from dockyard.core.jobs import JobBusy, LeaseLost
from dockyard.meta.gcrecords import Doomed
from dockyard.meta.records import Event
from dockyard.services import Services
from tests.conftest import chunks, digest_of, open_services, sqlite_and_postgres

# Now: the upload janitor and the storage walk compare the clock with real file times.
T0 = time.time()
GRACE = 3600.0
DAY = 86400.0
CTX = RequestInfo()
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest) -> str:
    return sqlite_and_postgres(request)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@dataclasses.dataclass
class Env:
    svc: Services
    clock: Clock
    settings: Settings

    def collector(self, policies: list[RetentionPolicy] | None = None, **gc: Any) -> Collector:
        settings = dataclasses.replace(self.settings.gc, **{"grace_period": GRACE, **gc})
        return Collector(
            self.svc.db,
            self.svc.storage,
            EventMaker("test", self.clock),
            settings,
            policies or [],
            instance="test",
            clock=self.clock,
        )

    async def collect(self, policies: list[RetentionPolicy] | None = None, **kw: Any) -> GcReport:
        dry_run = kw.pop("dry_run", False)
        return await self.collector(policies, **kw).run(dry_run)

    async def blob(self, repo: str, data: bytes) -> tuple[str, int]:
        d = digest_of(data)
        await self.svc.registry.put_blob(CTX, repo, d, chunks(data), len(data))
        return d, len(data)

    async def image(
        self, repo: str, seed: str, tag: str | None = None, subject: str | None = None
    ) -> str:
        config = await self.blob(repo, f"config {seed}".encode())
        layer = await self.blob(repo, f"layer {seed}".encode())
        doc: dict[str, Any] = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": _desc("application/vnd.oci.image.config.v1+json", config),
            "layers": [_desc("application/vnd.oci.image.layer.v1.tar", layer)],
        }
        if subject is not None:
            doc["artifactType"] = "application/example.signature"
            found = await self.svc.db.run(self.svc.meta.get_manifest, repo, subject)
            assert found is not None
            doc["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject, "size": found.size}
        return await self._put(repo, doc, OCI_MANIFEST, tag)

    async def index(self, repo: str, children: list[str], tag: str | None = None) -> str:
        manifests = []
        for child in children:
            found = await self.svc.db.run(self.svc.meta.get_manifest, repo, child)
            assert found is not None
            manifests.append({"mediaType": OCI_MANIFEST, "digest": child, "size": found.size})
        doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
        return await self._put(repo, doc, OCI_INDEX, tag)

    async def _put(self, repo: str, doc: dict[str, Any], media_type: str, tag: str | None) -> str:
        payload = json.dumps(doc).encode()
        reference = tag or digest_of(payload)
        pushed = await self.svc.registry.put_manifest(CTX, repo, reference, payload, media_type, [])
        return pushed.digest

    async def manifests(self, repo: str) -> set[str]:
        found = await self.svc.db.run(self.svc.meta.gc_repository, repo)
        return set() if found is None else {m.digest for m in found.manifests}

    async def linked(self, repo: str, d: str) -> bool:
        return await self.svc.db.run(self.svc.meta.linked_blob_size, repo, d) is not None

    async def stored(self, d: str) -> bool:
        return await self.svc.storage.stat(d) is not None


def _desc(media_type: str, blob: tuple[str, int]) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": blob[0], "size": blob[1]}


@asynccontextmanager
async def environment(settings: Settings) -> AsyncIterator[Env]:
    clock = Clock()
    async with open_services(settings, clock=clock) as svc:
        yield Env(svc, clock, settings)


@pytest.fixture
async def env(settings: Settings) -> AsyncIterator[Env]:
    async with environment(settings) as e:
        yield e


def untagged_policy(days: float, *globs: str) -> list[RetentionPolicy]:
    return [RetentionPolicy(repositories=list(globs or ["*"]), delete_untagged_days=days)]


# -- the grace period and unreferenced blobs


async def test_an_unreferenced_blob_goes_after_the_grace_period(env: Env) -> None:
    d, size = await env.blob("app", b"an upload whose manifest never came")
    env.clock.now += GRACE - 1
    report = await env.collect()
    assert (report.deleted_links, report.deleted_blobs) == (0, 0)
    assert await env.linked("app", d) and await env.stored(d)
    env.clock.now += 2
    report = await env.collect()
    assert (report.deleted_links, report.deleted_blobs, report.freed_bytes) == (1, 1, size)
    assert not await env.linked("app", d) and not await env.stored(d)
    assert await env.svc.db.run(env.svc.meta.blob_size, d) is None
    kinds = {(i["kind"], i["reason"]) for i in report.items}
    assert kinds == {("link", "unreferenced"), ("blob", "unreferenced")}


async def test_a_blob_another_repository_links_keeps_its_bytes(env: Env) -> None:
    d, _ = await env.blob("one", b"layer keeper")
    tagged = await env.image("two", "keeper", tag="v1")  # its layer is the same blob
    env.clock.now += GRACE + 1
    report = await env.collect()
    assert (report.deleted_links, report.deleted_blobs) == (1, 0)
    assert not await env.linked("one", d) and await env.linked("two", d)
    assert await env.stored(d) and tagged in await env.manifests("two")


# -- what is live


async def test_tagged_images_indexes_and_referrers_stay(env: Env) -> None:
    amd = await env.image("app", "amd64")
    arm = await env.image("app", "arm64")
    index = await env.index("app", [amd, arm], tag="latest")
    signature = await env.image("app", "sig", subject=index)
    sbom_signature = await env.image("app", "sbom-sig", subject=signature)
    env.clock.now += 400 * DAY
    report = await env.collect(untagged_policy(1))
    assert report.deleted_manifests == report.deleted_links == report.deleted_blobs == 0
    assert await env.manifests("app") == {amd, arm, index, signature, sbom_signature}


async def test_untagged_manifests_stay_without_a_policy(env: Env) -> None:
    kept = await env.image("app", "untagged")
    env.clock.now += 400 * DAY
    report = await env.collect(untagged_policy(7, "other/*"))
    assert report.deleted_manifests == 0 and kept in await env.manifests("app")


async def test_the_untagged_policy_deletes_old_untagged_manifests_and_their_blobs(
    env: Env,
) -> None:
    old = await env.image("team/app", "old")
    sig = await env.image("team/app", "old-sig", subject=old)
    env.clock.now += 6 * DAY
    recent = await env.image("team/app", "recent")
    tagged = await env.image("team/app", "tagged", tag="v1")
    env.clock.now += 2 * DAY  # old: 8 days, recent: 2 days
    policies = untagged_policy(7, "team/*")
    report = await env.collect(policies)
    assert await env.manifests("team/app") == {recent, tagged}
    assert report.deleted_manifests == 2
    reasons = {i["digest"]: i["reason"] for i in report.items if i["kind"] == "manifest"}
    assert reasons == {old: "untagged over 7 days", sig: "subject collected"}
    # Their config and layer links (and blobs) are gone too: 2 images x 2 blobs.
    assert report.deleted_links == 4 and report.deleted_blobs == 4


async def test_an_index_keeps_its_children_and_goes_with_them(env: Env) -> None:
    child = await env.image("app", "child")
    index = await env.index("app", [child])
    env.clock.now += 10 * DAY
    other = await env.image("app", "other")
    keep = await env.index("app", [child, other], tag="keep")  # the children are live
    report = await env.collect(untagged_policy(7))
    assert [i["digest"] for i in report.items] == [index]  # only the untagged index
    assert await env.manifests("app") == {child, other, keep}
    await env.svc.registry.delete_manifest(CTX, "app", "keep")  # untag it
    env.clock.now += 8 * DAY
    report = await env.collect(untagged_policy(7))
    # The index first, then the children it listed, in one run.
    assert next(i["digest"] for i in report.items if i["kind"] == "manifest") == keep
    assert report.deleted_manifests == 3 and await env.manifests("app") == set()


async def test_an_orphan_referrer_goes_after_the_grace_period_without_a_policy(
    env: Env,
) -> None:
    image = await env.image("app", "image")
    sig = await env.image("app", "sig", subject=image)
    await env.svc.registry.delete_manifest(CTX, "app", image)
    env.clock.now += GRACE - 10
    assert (await env.collect()).deleted_manifests == 0
    env.clock.now += 20
    report = await env.collect()
    assert report.deleted_manifests == 1 and await env.manifests("app") == set()
    assert [i["reason"] for i in report.items if i["digest"] == sig] == ["subject gone"]


# -- dry runs, events, the report


async def test_a_dry_run_deletes_nothing_and_predicts_the_run(env: Env) -> None:
    await env.image("app", "old")
    await env.blob("app", b"loose")
    await env.blob("other", b"loose")
    env.clock.now += 8 * DAY
    before = await env.svc.db.run(env.svc.meta.last_event_id)
    dry = await env.collect(untagged_policy(7), dry_run=True)
    assert await env.svc.db.run(env.svc.meta.last_event_id) == before
    assert len(await env.manifests("app")) == 1
    real = await env.collect(untagged_policy(7))
    assert dry.dry_run and not real.dry_run
    counts = ("deleted_manifests", "deleted_links", "deleted_blobs", "freed_bytes")
    assert [getattr(dry, c) for c in counts] == [getattr(real, c) for c in counts]
    assert (real.deleted_manifests, real.deleted_links, real.deleted_blobs) == (1, 4, 3)
    assert sorted(map(str, dry.items)) == sorted(map(str, real.items))


async def test_every_deletion_is_an_event_with_its_reason(env: Env) -> None:
    d, size = await env.blob("app", b"loose")
    env.clock.now += GRACE + 1
    start = await env.svc.db.run(env.svc.meta.last_event_id)
    await env.collect()
    events = await env.svc.db.run(env.svc.meta.events_after, start, 10)
    assert [(e.action, e.repository, e.digest, e.size) for e in events] == [
        ("delete", "app", d, size),
        ("delete", "", d, size),
    ]
    targets = [e.body["target"] for e in events]
    assert targets == [
        {"kind": "link", "reason": "unreferenced", "by": "gc"},
        {"kind": "blob", "reason": "unreferenced", "by": "gc"},
    ]
    assert {e.body["actor"]["name"] for e in events} == {"gc"}
    assert {e.body["request"]["method"] for e in events} == {"GC"}


async def test_the_item_list_is_capped(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dockyard.core.gc.MAX_ITEMS", 3)
    for i in range(3):
        await env.blob("app", f"loose {i}".encode())
    env.clock.now += GRACE + 1
    report = await env.collect()
    assert (report.deleted_links, report.deleted_blobs) == (3, 3)
    assert len(report.items) == 3 and report.items_truncated
    assert report.as_dict()["items_truncated"] is True


# -- one collector at a time, crashes


async def test_a_second_collector_is_busy(env: Env) -> None:
    assert await env.svc.db.run(env.svc.meta.job_acquire, "gc", "elsewhere/1", 60)
    with pytest.raises(JobBusy):
        await env.collect()
    env.clock.now += 61  # the holder died: its lease expired
    await env.collect()


async def test_a_lost_lease_stops_the_run(env: Env) -> None:
    for i in range(4):
        await env.blob("app", f"loose {i}".encode())
    env.clock.now += GRACE + 1
    collector = env.collector(batch_size=1, lease_seconds=0.0)  # renew before every batch
    original = env.svc.meta.gc_delete_links
    calls: list[Sequence[Doomed]] = []

    def steal_after_first(repository_id: int, doomed: Sequence[Doomed]) -> list[str]:
        calls.append(doomed)
        if len(calls) == 1:  # another collector takes over after our lease expired
            env.clock.now += 61
            assert env.svc.meta.job_acquire("gc", "elsewhere/1", 60)
        return original(repository_id, doomed)

    env.svc.meta.gc_delete_links = steal_after_first  # type: ignore[method-assign]
    with pytest.raises(LeaseLost):
        await collector.run()
    assert len(calls) == 1  # stopped before the next batch


async def test_the_next_run_finishes_a_killed_runs_byte_deletions(env: Env) -> None:
    d, _ = await env.blob("app", b"marked, then killed")
    env.clock.now += GRACE + 1
    meta = env.svc.meta
    repo = await env.svc.db.run(meta.gc_repository, "app")
    assert repo is not None
    # What a run killed after marking (before deleting the bytes) leaves behind.
    await env.svc.db.run(meta.gc_delete_links, repo.id, [Doomed(d, T0 + GRACE, _ev(d))])
    assert await env.svc.db.run(meta.gc_mark_blobs, [Doomed(d, T0 + GRACE, _ev(d))]) == [d]
    assert await env.stored(d)
    await env.collect()
    assert not await env.stored(d)
    assert await env.svc.db.run(meta.gc_pending_deletions, 10) == []


def _ev(d: str) -> Event:
    return Event("delete", "app", d)


# -- the storage walk


async def test_the_walk_reclaims_old_bytes_without_metadata(env: Env) -> None:
    stray = b"committed, then the process died before the link"
    d = digest_of(stray)
    state = await env.svc.storage.create_upload("crashed")
    writer = await env.svc.storage.open_writer("crashed", 0, state)
    await writer.write(stray)
    await env.svc.storage.commit_upload("crashed", await writer.close(), len(stray), d)
    kept, _ = await env.blob("app", b"has metadata")
    env.clock.now += 10 * DAY  # well past the grace period, by the clock and file times
    # A short grace period in real time: the file was written a moment ago.
    report = await env.collector(walk_storage=True, grace_period=0.0).run()
    assert not await env.stored(d)
    assert [(i["kind"], i["digest"]) for i in report.items if i["kind"] == "bytes"] == [
        ("bytes", d)
    ]
    assert report.freed_bytes >= len(stray)
    assert await env.linked("app", kept) is False  # unreferenced: collected the usual way


async def test_the_walk_spares_recent_bytes(env: Env) -> None:
    d = digest_of(b"just committed")
    state = await env.svc.storage.create_upload("fresh")
    writer = await env.svc.storage.open_writer("fresh", 0, state)
    await writer.write(b"just committed")
    await env.svc.storage.commit_upload("fresh", await writer.close(), 14, d)
    await env.collector(walk_storage=True).run()  # the file is seconds old; grace: an hour
    assert await env.stored(d)


# -- the races with pushes and mounts


async def test_a_push_after_its_layer_was_collected_gets_manifest_blob_unknown(
    env: Env,
) -> None:
    layer = await env.blob("app", b"layer")
    config = await env.blob("app", b"{}")
    env.clock.now += GRACE + 1
    meta, db = env.svc.meta, env.svc.db
    # The push checked its blobs (linked_blobs) just before the collector removed one.
    original = meta.linked_blobs

    def check_then_collect(repository: str, digests: Sequence[str]) -> dict[str, int]:
        found = original(repository, digests)
        repo = meta.gc_repository("app")
        assert repo is not None
        meta.gc_delete_links(repo.id, [Doomed(layer[0], env.clock.now - GRACE, _ev(layer[0]))])
        return found

    meta.linked_blobs = check_then_collect  # type: ignore[method-assign]
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": _desc("application/vnd.oci.image.config.v1+json", config),
        "layers": [_desc("application/vnd.oci.image.layer.v1.tar", layer)],
    }
    with pytest.raises(ManifestBlobUnknown):
        await env.svc.registry.put_manifest(
            CTX, "app", "v1", json.dumps(doc).encode(), OCI_MANIFEST, []
        )
    assert await db.run(meta.get_tagged_manifest, "app", "v1") is None


async def test_an_upload_waits_while_its_bytes_are_being_deleted(env: Env) -> None:
    data = b"deleted and uploaded again"
    d, _ = await env.blob("app", data)
    env.clock.now += GRACE + 1
    meta, db = env.svc.meta, env.svc.db
    repo = await db.run(meta.gc_repository, "app")
    assert repo is not None
    await db.run(meta.gc_delete_links, repo.id, [Doomed(d, T0 + GRACE, _ev(d))])
    # A collector (holding the lease) marked the blob and is about to delete its bytes.
    assert await db.run(meta.job_acquire, "gc", "collector/1", 60)
    assert await db.run(meta.gc_mark_blobs, [Doomed(d, T0 + GRACE, _ev(d))]) == [d]
    uploaded = anyio.Event()

    async def upload() -> None:
        await env.blob("other", data)
        uploaded.set()

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(upload)
        await anyio.sleep(0.5)
        assert not uploaded.is_set()  # the claim waits for the collector
        await env.svc.storage.delete(d)
        await db.run(meta.gc_unmark_blobs, [d])
        with anyio.fail_after(5):
            await uploaded.wait()
    # The upload wrote the bytes again: the row points at bytes that exist.
    assert await env.stored(d) and await env.linked("other", d)


async def test_a_mount_of_a_collected_blob_falls_back_to_an_upload(env: Env) -> None:
    d, _ = await env.blob("source", b"mount me")
    env.clock.now += GRACE + 1
    meta, db = env.svc.meta, env.svc.db
    original = meta.linked_blob_size

    def found_then_collected(repository: str, digest: str) -> int | None:
        size = original(repository, digest)
        repo = meta.gc_repository("source")
        assert repo is not None
        meta.gc_delete_links(repo.id, [Doomed(d, T0 + GRACE, _ev(d))])
        meta.gc_mark_blobs([Doomed(d, T0 + GRACE, _ev(d))])
        return size

    meta.linked_blob_size = found_then_collected  # type: ignore[method-assign]

    async def may_read(repository: str) -> bool:
        return True

    assert not await env.svc.registry.mount_blob(CTX, "target", d, "source", may_read)
    meta.linked_blob_size = original  # type: ignore[method-assign]
    assert not await env.linked("target", d)
    assert await db.run(meta.blob_size, d) is None  # no row re-created by the mount


# -- retention and collection together


async def test_retention_then_gc_take_an_image_with_its_referrers_and_keep_the_rest(
    env: Env,
) -> None:
    """While tagged, an image keeps its signature however old both are; once retention
    untags it, the next collection takes it with its signature (untagged manifests are
    aged by their push), and leaves the kept image and its signature whole."""
    from dockyard.core.retention import Policies, Retention

    old = await env.image("ci/app", "old", tag="build-1")
    old_sig = await env.image("ci/app", "old-sig", subject=old)
    env.clock.now += 2 * DAY
    new = await env.image("ci/app", "new", tag="build-2")
    new_sig = await env.image("ci/app", "new-sig", subject=new)
    policies = [RetentionPolicy(repositories=["ci/*"], keep_last=1, delete_untagged_days=1)]
    env.clock.now += GRACE + 1
    assert (await env.collect(policies)).deleted_manifests == 0
    assert await env.manifests("ci/app") == {old, old_sig, new, new_sig}
    retention = Retention(env.svc.db, Policies(policies), "test", clock=env.clock)
    untagged = await retention.run()
    assert [(i.tag, i.rule) for i in untagged.items] == [("build-1", "keep_last 1")]
    report = await env.collect(policies)
    assert {i["digest"]: i["reason"] for i in report.items if i["kind"] == "manifest"} == {
        old: "untagged over 1 days",
        old_sig: "subject collected",
    }
    assert await env.manifests("ci/app") == {new, new_sig}
