"""The metadata-store contract for event pruning, storage usage, quotas and repository
management (issue 11), a mixin of ``MetaConformance``'s fixtures: both store test
modules add it to their conformance class."""

from __future__ import annotations

import pytest

from dockyard.meta.prune import PruneCount, PruneCutoffs
from dockyard.meta.records import Event
from dockyard.meta.store import MetadataStore
from dockyard.meta.usage import QuotaExceeded, QuotaScope
from tests.meta_conformance import Clock, digest, ev, manifest

DAY = 86400.0


def prune_all(store: MetadataStore, cutoffs: PruneCutoffs, limit: int = 2) -> PruneCount:
    plan = store.prune_plan(cutoffs)
    pulls = others = 0
    after = 0
    while True:
        step = store.prune_batch(plan, cutoffs, after, limit)
        pulls, others = pulls + step.pulls, others + step.others
        if step.last is None:
            return PruneCount(pulls, others)
        after = step.last


class HousekeepingConformance:
    # -- pruning the event log

    def _history(self, store: MetadataStore, clock: Clock) -> None:
        """Day 0: a push and 3 pulls; day 10: a push and 2 pulls; day 20: one pull."""
        store.append_events([ev("push"), ev("pull"), ev("pull"), ev("pull")])
        clock.advance(10 * DAY)
        store.append_events([ev("push"), ev("pull"), ev("pull")])
        clock.advance(10 * DAY)
        store.append_events([ev("pull")])

    def test_prune_deletes_old_pulls_and_keeps_the_rest(
        self, store: MetadataStore, clock: Clock
    ) -> None:
        self._history(store, clock)
        cutoffs = PruneCutoffs(pulls_before=clock.now - 5 * DAY, others_before=0.0)
        plan = store.prune_plan(cutoffs)
        assert store.prune_count(plan, cutoffs) == PruneCount(5, 0)
        assert prune_all(store, cutoffs) == PruneCount(5, 0)
        left = store.events_after(0, 100)
        assert [(e.id, e.action) for e in left] == [(1, "push"), (5, "push"), (8, "pull")]
        assert prune_all(store, cutoffs) == PruneCount(0, 0)

    def test_prune_others_by_their_own_cutoff(self, store: MetadataStore, clock: Clock) -> None:
        self._history(store, clock)
        cutoffs = PruneCutoffs(pulls_before=0.0, others_before=clock.now - 15 * DAY)
        assert prune_all(store, cutoffs) == PruneCount(0, 1)
        assert [e.id for e in store.events_after(0, 100)] == [2, 3, 4, 5, 6, 7, 8]

    def test_prune_never_deletes_the_newest_event(self, store: MetadataStore, clock: Clock) -> None:
        store.append_events([ev("push"), ev("pull")])
        clock.advance(DAY)
        cutoffs = PruneCutoffs(pulls_before=clock.now, others_before=clock.now)
        assert prune_all(store, cutoffs) == PruneCount(0, 1)
        assert store.last_event_id() == 2
        store.append_events([ev("push")])
        assert store.last_event_id() == 3  # ids never go back

    def test_a_webhook_behind_keeps_its_events(self, store: MetadataStore, clock: Clock) -> None:
        store.append_events([ev("push")] * 3)
        store.webhook_init(["hook"])  # cursor 3
        store.append_events([ev("pull")] * 4)  # 4..7, not delivered yet
        assert store.webhook_acquire("hook", "i/1", 30) == 3
        assert store.webhook_advance("hook", "i/1", 5, True)
        clock.advance(DAY)
        cutoffs = PruneCutoffs(pulls_before=clock.now, others_before=clock.now)
        floor = store.event_floor()
        assert (floor.id, floor.consumer) == (6, "webhook:hook")
        plan = store.prune_plan(cutoffs)
        assert plan.held_back and plan.end == 6
        assert prune_all(store, cutoffs) == PruneCount(2, 3)
        assert [e.id for e in store.events_after(0, 100)] == [6, 7]

    def test_failed_webhook_events_are_pinned(self, store: MetadataStore, clock: Clock) -> None:
        store.webhook_init(["hook"])  # cursor 0
        store.append_events([ev("push")] * 4)
        assert store.webhook_acquire("hook", "i/1", 30) == 0
        assert store.webhook_failed("hook", "i/1", 2, 5, "down", advance=False)
        assert store.webhook_advance("hook", "i/1", 4, True)
        clock.advance(DAY)
        store.append_events([ev("push")])
        cutoffs = PruneCutoffs(pulls_before=clock.now - 1, others_before=clock.now - 1)
        assert prune_all(store, cutoffs) == PruneCount(0, 3)
        assert [e.id for e in store.events_after(0, 100)] == [2, 5]

    def test_event_floor_without_consumers_is_past_the_end(self, store: MetadataStore) -> None:
        store.append_events([ev("push")] * 2)
        floor = store.event_floor()
        assert (floor.id, floor.consumer) == (3, None)

    # -- usage

    def _shared(self, store: MetadataStore) -> None:
        # team/a and team/b share blob "s" (100 bytes); each has its own blob and manifest.
        store.link_blob("team/a", digest("s"), 100, [])
        store.link_blob("team/a", digest("a"), 10, [])
        store.link_blob("team/b", digest("s"), 100, [])
        store.link_blob("team/b", digest("b"), 20, [])
        store.link_blob("other", digest("s"), 100, [])
        store.put_manifest(manifest("team/a", "ma", tags=["v1"], blobs=[digest("s")]), [])
        store.put_manifest(manifest("team/b", "mb", tags=["v1"], blobs=[digest("s")]), [])

    def test_usage_counts_shared_blobs_once_per_scope(self, store: MetadataStore) -> None:
        self._shared(store)
        size_ma = len(manifest("team/a", "ma").payload)
        size_mb = len(manifest("team/b", "mb").payload)
        a = store.repository_usage("team/a")
        assert a is not None
        assert (a.blobs, a.blob_bytes, a.manifests, a.manifest_bytes) == (2, 110, 1, size_ma)
        team = store.namespace_usage("team")
        assert (team.repositories, team.blobs, team.blob_bytes) == (2, 3, 130)
        assert team.manifest_bytes == size_ma + size_mb
        total = store.registry_usage()
        assert (total.repositories, total.blobs, total.blob_bytes) == (3, 3, 130)
        assert store.repository_usage("nope") is None
        assert store.namespace_usage("tea").repositories == 0  # a prefix is not a namespace
        by_ns = store.usage_by_namespace(10)
        assert [(u.name, u.blob_bytes) for u in by_ns] == [("team", 130), ("other", 100)]
        by_repo = store.usage_by_repository(2)
        assert [u.name for u in by_repo] == ["team/b", "team/a"]

    def test_quota_refuses_a_link_and_changes_nothing(self, store: MetadataStore) -> None:
        quota = QuotaScope("quotas[0]", 150)
        store.link_blob("repo", digest("a"), 100, [], quota=quota)
        store.create_upload("u1", "repo", "sha256", {})
        with pytest.raises(QuotaExceeded) as refused:
            store.link_blob("repo", digest("b"), 60, [ev("push")], "u1", quota=quota)
        assert (refused.value.usage, refused.value.adding) == (100, 60)
        assert store.linked_blob_size("repo", digest("b")) is None
        assert store.blob_size(digest("b")) is None
        assert store.get_upload("u1") is not None
        assert store.last_event_id() == 0
        with pytest.raises(QuotaExceeded):
            store.check_blob_quota(quota, "repo", digest("b"), 60)
        # Linking a blob the repository has adds nothing; one that fits still links.
        store.link_blob("repo", digest("a"), 100, [], quota=quota)
        store.check_blob_quota(quota, "repo", digest("c"), 50)
        store.link_blob("repo", digest("c"), 50, [], quota=quota)

    def test_namespace_quota_counts_a_shared_blob_once(self, store: MetadataStore) -> None:
        quota = QuotaScope("quotas[1]", 150, namespace="team")
        store.link_blob("team/a", digest("s"), 100, [], quota=quota)
        store.link_blob("team/b", digest("s"), 100, [], quota=quota)  # already in the scope
        with pytest.raises(QuotaExceeded, match="namespace team"):
            store.link_blob("team/c", digest("x"), 60, [], quota=quota)
        m = manifest("team/a", "m")
        with pytest.raises(QuotaExceeded):
            store.put_manifest(m, [], quota=QuotaScope("q", 100, namespace="team"))
        assert store.get_manifest("team/a", digest("m")) is None
        store.put_manifest(m, [], quota=quota)
        store.put_manifest(m, [], quota=QuotaScope("q", 1, namespace="team"))  # stored already

    # -- repository management

    def test_tag_details(self, store: MetadataStore, clock: Clock) -> None:
        store.link_blob("repo", digest("c"), 7, [])
        store.link_blob("repo", digest("l"), 100, [])
        image = manifest("repo", "img", tags=["v1"], blobs=[digest("c"), digest("l")])
        store.put_manifest(image, [])
        clock.advance(5)
        index = manifest(
            "repo", "idx", tags=["multi"], children=[digest("img")], media_type="x/index"
        )
        store.put_manifest(index, [])
        details = store.tag_details("repo", None, 10)
        assert details is not None
        assert [(d.name, d.digest, d.media_type) for d in details] == [
            ("multi", digest("idx"), "x/index"),
            ("v1", digest("img"), image.media_type),
        ]
        assert details[1].size == len(image.payload) + 107
        assert details[0].size == len(index.payload) + len(image.payload) + 107
        assert details[0].pushed == details[1].pushed + 5
        assert details[0].pulled is None
        assert [d.name for d in store.tag_details("repo", "multi", 10) or []] == ["v1"]
        assert store.tag_details("nope", None, 10) is None

    def test_delete_repository_in_steps(self, store: MetadataStore) -> None:
        self._shared(store)
        store.put_manifest(manifest("team/a", "m2", tags=["v2"]), [])

        def manifest_event(d: str, media_type: str, size: int) -> Event:
            return ev("delete", "team/a", digest=d, media_type=media_type, size=size)

        def repository_event() -> Event:
            return ev("delete", "team/a", body={"target": {"kind": "repository"}})

        steps = []
        while True:
            step = store.delete_repository_step("team/a", 1, manifest_event, repository_event)
            steps.append((step.manifests, step.links, step.done))
            if step.done:
                break
        assert steps == [(1, 0, False), (1, 0, False), (0, 1, False), (0, 1, False), (0, 0, True)]
        assert not store.repository_exists("team/a")
        assert "team/a" not in store.list_repositories(None, 10)
        assert store.linked_blob_size("team/b", digest("s")) == 100
        assert [e.action for e in store.events_after(0, 10)] == ["delete"] * 3
        assert store.delete_repository_step("team/a", 1, manifest_event, repository_event).done
