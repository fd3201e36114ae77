"""The conformance tests of what the pull-through cache asks of a store
(``meta/cached.py``), with the fixtures of ``MetaConformance``: ``tests/test_meta.py`` and
``tests/test_meta_postgres.py`` run them against SQLite and PostgreSQL alike."""

from __future__ import annotations

from dockyard.meta.cached import CachedTag
from dockyard.meta.store import MetadataStore
from tests.meta_conformance import T0, Clock, MetaConformance, digest, manifest


class CacheConformance:
    """Subclasses provide ``make_store`` (as for ``MetaConformance``)."""

    clock = MetaConformance.clock
    store = MetaConformance.store

    def test_cached_manifest_is_sparse_marked_and_tagged(
        self, store: MetadataStore, clock: Clock
    ) -> None:
        # Neither its blobs nor its children are stored: a cached manifest needs none.
        m = manifest(
            "hub/lib/a", "img", tags=["v1"], blobs=[digest("layer")], children=[digest("kid")]
        )
        store.put_cached_manifest(m, "hub", T0)
        found = store.get_tagged_manifest("hub/lib/a", "v1")
        assert found is not None and found.digest == m.digest and found.payload == m.payload
        assert store.cached_tag("hub/lib/a", "v1") == CachedTag(m.digest, T0)
        assert store.cached_from("hub/lib/a", m.digest) == "hub"
        assert store.cached_tag("hub/lib/a", "nope") is None
        assert store.cached_tag("nowhere", "v1") is None
        # Its references are recorded, as a push's are (garbage collection reads them).
        gc = store.gc_repository("hub/lib/a")
        assert gc is not None

    def test_tag_moves_with_the_upstream(self, store: MetadataStore, clock: Clock) -> None:
        old = manifest("hub/a", "old", tags=["latest"])
        store.put_cached_manifest(old, "hub", T0)
        clock.advance(5)
        new = manifest("hub/a", "new", tags=["latest"])
        store.put_cached_manifest(new, "hub", T0 + 5)
        assert store.cached_tag("hub/a", "latest") == CachedTag(new.digest, T0 + 5)
        # The old manifest stays (untagged: garbage collection's to remove).
        assert store.get_manifest("hub/a", old.digest) is not None
        # Resolving only touches a tag still at the digest the upstream named.
        assert store.resolve_cached_tag("hub/a", "latest", new.digest, T0 + 9)
        assert store.cached_tag("hub/a", "latest") == CachedTag(new.digest, T0 + 9)
        assert not store.resolve_cached_tag("hub/a", "latest", old.digest, T0 + 10)
        assert not store.resolve_cached_tag("hub/a", "gone", new.digest, T0 + 10)
        assert store.cached_tag("hub/a", "latest") == CachedTag(new.digest, T0 + 9)

    def test_pushed_tag_has_no_resolved_time(self, store: MetadataStore) -> None:
        m = manifest("repo", "img", tags=["v1"])
        store.put_manifest(m, [])
        assert store.cached_tag("repo", "v1") == CachedTag(m.digest, None)
        assert store.cached_from("repo", m.digest) is None

    def test_cached_blob_is_linked_and_marked(self, store: MetadataStore) -> None:
        d = digest("layer")
        store.link_cached_blob("hub/a", d, 1234, "hub")
        store.link_cached_blob("hub/a", d, 1234, "hub")  # idempotent
        assert store.linked_blob_size("hub/a", d) == 1234
        assert store.blob_size(d) == 1234
        assert store.cached_from("hub/a", d) == "hub"
        store.link_blob("pushed", d, 1234, [])
        assert store.cached_from("pushed", d) is None

    def test_job_forget(self, store: MetadataStore) -> None:
        assert store.job_acquire("fill:x", "me/1", 30)
        assert not store.job_forget("fill:x", "other/2")  # held by another: kept
        assert not store.job_acquire("fill:x", "other/2", 30)
        assert store.job_forget("fill:x", "me/1")
        assert store.job_acquire("fill:x", "other/2", 30)
        store.job_release("fill:x", "other/2")
        assert store.job_forget("fill:x", "whoever/3")  # released: anyone may delete it
        assert not store.job_forget("fill:x", "whoever/3")
