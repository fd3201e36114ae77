"""The ``Collection`` part of the metadata-store contract (``meta/collect.py``): what
garbage collection reads, its conditional deletes, and the pushes' side of each race,
in both orders. Run against each store like ``MetaConformance`` (a ``make_store``
fixture in a ``test_*.py`` subclass: ``tests/test_meta.py``, ``test_meta_postgres.py``).

Times: the ``Clock`` starts at ``T0``; a cutoff of ``T0 + 1`` makes everything written at
``T0`` old enough to go, ``T0`` makes it too recent.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pytest

from dockyard.meta.gcrecords import Doomed
from dockyard.meta.records import BlobBeingDeleted, Event, NewManifest, ReferencesGone
from dockyard.meta.store import MetadataStore
from tests.meta_conformance import T0, Clock, MakeStore, StoreFixtures, digest, ev, manifest

OLD = T0 + 1  # a cutoff after everything written at T0
NEW = T0  # a cutoff nothing written at T0 is older than


def doom(name: str, cutoff: float = OLD, repository: str = "repo") -> Doomed:
    return Doomed(digest(name), cutoff, Event("delete", repository, digest(name)))


def repo_id(store: MetadataStore, name: str = "repo") -> int:
    found = store.gc_repository(name)
    assert found is not None
    return found.id


def _requiring(
    m: NewManifest, blobs: Sequence[str] = (), children: Sequence[str] = ()
) -> NewManifest:
    """``m`` as core pushes it: naming the links and children its checks found."""
    return dataclasses.replace(
        m, required_blobs=list(blobs), stored_children=[digest(c) for c in children]
    )


class CollectionConformance(StoreFixtures):
    def log(self, store: MetadataStore) -> list[str]:
        return [e.action for e in store.events_after(0, 1000)]

    def test_gc_repository_reads_manifests_references_and_links(
        self, store: MetadataStore, clock: Clock
    ) -> None:
        store.link_blob("repo", digest("layer"), 7, [])
        store.put_manifest(manifest("repo", "img", blobs=[digest("layer")], tags=["v1"]), [])
        clock.advance(5)
        index = manifest("repo", "idx", children=[digest("img")], media_type="x/index")
        store.put_manifest(_requiring(index, children=["img"]), [])
        store.put_manifest(manifest("repo", "sig", subject=digest("img")), [])
        assert store.gc_repository("absent") is None
        repo = store.gc_repository("repo")
        assert repo is not None and repo.name == "repo"
        found = {m.digest: (m.tagged, m.subject, m.touched) for m in repo.manifests}
        assert found == {
            digest("img"): (True, None, T0 + 5),  # the index push relied on it: touched
            digest("idx"): (False, None, T0 + 5),
            digest("sig"): (False, digest("img"), T0 + 5),
        }
        refs = {(r.manifest, r.child, r.kind) for r in repo.references}
        assert refs == {
            (digest("img"), digest("layer"), "blob"),
            (digest("idx"), digest("img"), "manifest"),
        }
        assert [(link.digest, link.size, link.linked) for link in repo.links] == [
            (digest("layer"), 7, T0)
        ]
        assert store.gc_repository_names() == ["repo"]

    def test_gc_delete_manifests_is_conditional(self, store: MetadataStore, clock: Clock) -> None:
        store.put_manifest(manifest("repo", "tagged", tags=["v1"]), [])
        store.put_manifest(manifest("repo", "child"), [])
        store.put_manifest(manifest("repo", "index", children=[digest("child")]), [])
        store.put_manifest(manifest("repo", "sig", subject=digest("tagged")), [])
        store.put_manifest(manifest("repo", "loose"), [])
        rid = repo_id(store)
        doomed = [doom(n) for n in ("tagged", "child", "sig")] + [doom("loose", NEW)]
        assert store.gc_delete_manifests(rid, doomed) == []
        assert self.log(store) == []
        # Parents first: the index, then the child it listed, in one call.
        deleted = store.gc_delete_manifests(rid, [doom("index"), doom("child"), doom("loose")])
        assert deleted == [digest("index"), digest("child"), digest("loose")]
        assert [e.digest for e in store.events_after(0, 10)] == deleted
        repo = store.gc_repository("repo")
        assert repo is not None
        assert {m.digest for m in repo.manifests} == {digest("tagged"), digest("sig")}
        assert repo.references == []  # the index's went with it

    def test_a_referrer_goes_only_with_its_subject(
        self, store: MetadataStore, clock: Clock
    ) -> None:
        store.put_manifest(manifest("repo", "img"), [])
        store.put_manifest(manifest("repo", "sig", subject=digest("img")), [])
        rid = repo_id(store)
        clock.advance(10)
        store.put_manifest(manifest("repo", "img", tags=["v2"]), [])  # tagged again
        assert store.gc_delete_manifests(rid, [doom("sig", T0 + 5)]) == []
        store.delete_tag("repo", "v2", lambda d: [])
        # Untagged, but re-pushed since the cutoff: its referrer stays with it.
        assert store.gc_delete_manifests(rid, [doom("sig", T0 + 5)]) == []
        assert store.gc_delete_manifests(rid, [doom("sig", T0 + 11)]) == [digest("sig")]

    def test_gc_delete_links_is_conditional(self, store: MetadataStore) -> None:
        for name in ("used", "loose", "fresh"):
            store.link_blob("repo", digest(name), 3, [])
        store.put_manifest(manifest("repo", "m", blobs=[digest("used")], tags=["t"]), [])
        rid = repo_id(store)
        assert store.gc_delete_links(rid, [doom("used"), doom("fresh", NEW)]) == []
        assert store.gc_delete_links(rid, [doom("loose")]) == [digest("loose")]
        assert store.linked_blob_size("repo", digest("loose")) is None
        assert store.linked_blob_size("repo", digest("used")) == 3
        assert [e.action for e in store.events_after(0, 10)] == ["delete"]

    def test_gc_mark_blobs_then_unmark(self, store: MetadataStore) -> None:
        store.link_blob("repo", digest("linked"), 1, [])
        store.link_blob("repo", digest("a"), 2, [])
        store.link_blob("repo", digest("b"), 3, [])
        rid = repo_id(store)
        store.gc_delete_links(rid, [doom("a"), doom("b")])
        blobs = store.gc_blobs(None, 10)
        assert [(b.digest, b.size, b.links) for b in blobs] == [
            (digest("a"), 2, 0),
            (digest("b"), 3, 0),
            (digest("linked"), 1, 1),
        ]
        assert [b.digest for b in store.gc_blobs(digest("a"), 1)] == [digest("b")]
        marked = store.gc_mark_blobs([doom("linked"), doom("a"), doom("b", NEW)])
        assert marked == [digest("a")]
        assert store.blob_size(digest("a")) is None and store.blob_size(digest("b")) == 3
        assert store.gc_pending_deletions(10) == [digest("a")]
        assert store.gc_known_digests([digest("a"), digest("b"), digest("x")]) == {
            digest("a"),
            digest("b"),
        }
        store.gc_unmark_blobs(marked)
        assert store.gc_pending_deletions(10) == []

    def test_gc_mark_stray_bytes_skips_digests_with_rows(self, store: MetadataStore) -> None:
        store.claim_blob(digest("claimed"), 4, 60)
        assert store.gc_mark_stray_bytes([digest("claimed"), digest("stray")]) == [digest("stray")]
        assert store.gc_mark_stray_bytes([digest("stray")]) == []  # already marked
        assert store.gc_pending_deletions(10) == [digest("stray")]

    # -- the races, both orders

    def test_push_after_the_link_was_collected_fails_cleanly(self, store: MetadataStore) -> None:
        store.link_blob("repo", digest("layer"), 5, [])
        assert store.gc_delete_links(repo_id(store), [doom("layer")]) == [digest("layer")]
        m = manifest("repo", "m", blobs=[digest("layer")], tags=["v1"])
        with pytest.raises(ReferencesGone) as caught:
            store.put_manifest(_requiring(m, blobs=[digest("layer")]), [ev("push")])
        assert caught.value.digest == digest("layer")
        assert store.get_manifest("repo", digest("m")) is None
        assert [e.action for e in store.events_after(0, 10)] == ["delete"]  # no push

    def test_push_before_the_sweep_keeps_its_link(self, store: MetadataStore, clock: Clock) -> None:
        store.link_blob("repo", digest("layer"), 5, [])
        rid = repo_id(store)
        clock.advance(100)
        m = manifest("repo", "m", blobs=[digest("layer")])
        # A manifest whose references the collector's snapshot did not see: the push
        # refreshed the link, so the stale decision deletes nothing.
        store.put_manifest(_requiring(m, blobs=[digest("layer")]), [])
        store.delete_manifest("repo", digest("m"), [])  # unreferenced again, but recent
        assert store.gc_delete_links(rid, [doom("layer", T0 + 50)]) == []
        assert store.linked_blob_size("repo", digest("layer")) == 5

    def test_index_push_races_the_collection_of_its_child(
        self, store: MetadataStore, clock: Clock
    ) -> None:
        store.put_manifest(manifest("repo", "child"), [])
        rid = repo_id(store)
        clock.advance(100)
        index = _requiring(manifest("repo", "idx", children=[digest("child")]), children=["child"])
        store.put_manifest(index, [])
        store.delete_manifest("repo", digest("idx"), [])
        assert store.gc_delete_manifests(rid, [doom("child", T0 + 50)]) == []
        assert store.gc_delete_manifests(rid, [doom("child", T0 + 101)]) == [digest("child")]
        with pytest.raises(ReferencesGone):
            store.put_manifest(index, [])
        assert store.get_manifest("repo", digest("idx")) is None

    def test_repushing_a_manifest_refreshes_it(self, store: MetadataStore, clock: Clock) -> None:
        store.put_manifest(manifest("repo", "m"), [])
        clock.advance(100)
        store.put_manifest(manifest("repo", "m"), [])
        assert store.gc_delete_manifests(repo_id(store), [doom("m", T0 + 50)]) == []

    def test_claim_blob_refreshes_and_waits_for_a_deletion(
        self, store: MetadataStore, make_store: MakeStore, clock: Clock
    ) -> None:
        store.link_blob("repo", digest("b"), 3, [])
        store.gc_delete_links(repo_id(store), [doom("b")])
        clock.advance(100)
        store.claim_blob(digest("b"), 3, 60)  # an upload of the same bytes: refreshed
        assert store.gc_mark_blobs([doom("b", T0 + 50)]) == []
        store.claim_blob(digest("new"), 9, 60)
        assert store.blob_size(digest("new")) == 9
        # The collector marks first: the claim waits while the collector lives.
        collector = make_store(clock)
        assert collector.job_acquire("gc", "gc-host/1", 60)
        assert collector.gc_mark_blobs([doom("b", T0 + 200)]) == [digest("b")]
        clock.advance(500)
        collector.job_renew("gc", "gc-host/1", 60)
        with pytest.raises(BlobBeingDeleted):
            store.claim_blob(digest("b"), 3, 60)
        # It died (its lease expired) and its mark is old: the upload takes over.
        clock.advance(61)
        store.claim_blob(digest("b"), 3, 60)
        assert store.gc_pending_deletions(10) == [] and store.blob_size(digest("b")) == 3
        collector.close()

    def test_claim_blob_waits_for_a_recent_mark_even_without_a_lease(
        self, store: MetadataStore
    ) -> None:
        assert store.gc_mark_stray_bytes([digest("b")]) == [digest("b")]
        with pytest.raises(BlobBeingDeleted):
            store.claim_blob(digest("b"), 3, 60)

    def test_link_stored_blob_needs_the_row(self, store: MetadataStore, clock: Clock) -> None:
        assert not store.link_stored_blob("other", digest("b"), [ev("mount", "other")])
        assert not store.repository_exists("other") and self.log(store) == []
        store.link_blob("repo", digest("b"), 3, [])
        clock.advance(100)
        assert store.link_stored_blob("other", digest("b"), [ev("mount", "other")])
        assert store.linked_blob_size("other", digest("b")) == 3
        # The mount refreshed the blob row: a collector's stale decision keeps it.
        store.gc_delete_links(repo_id(store, "repo"), [doom("b")])
        store.gc_delete_links(repo_id(store, "other"), [doom("b", T0 + 101)])
        assert store.gc_mark_blobs([doom("b", T0 + 50)]) == []
