"""The conformance tests of what retention asks of a store (``meta/retention.py``, the
immutable-tag checks of ``put_manifest`` and ``delete_manifest``), with the fixtures of
``MetaConformance``: ``tests/test_meta.py`` and ``tests/test_meta_postgres.py`` run them
against SQLite and PostgreSQL alike."""

from __future__ import annotations

import dataclasses

from dockyard.meta.records import Event, PullTime, RetentionTag, TagImmutable
from dockyard.meta.store import MetadataStore
from tests.meta_conformance import T0, Clock, MetaConformance, digest, ev, manifest


def _push(store: MetadataStore, name: str, tags: list[str], immutable: list[str]) -> None:
    m = dataclasses.replace(manifest("repo", name, tags=tags), immutable_tags=immutable)
    store.put_manifest(m, [ev("push", digest=m.digest)])


class RetentionConformance:
    """Subclasses provide ``make_store`` (as for ``MetaConformance``)."""

    clock = MetaConformance.clock
    store = MetaConformance.store

    def test_tag_details(self, store: MetadataStore, clock: Clock) -> None:
        store.link_blob("repo", digest("config"), 100, [])
        store.link_blob("repo", digest("layer"), 1000, [])
        m = manifest("repo", "img", tags=["v1"], blobs=[digest("config"), digest("layer")])
        store.put_manifest(m, [])
        clock.advance(10)
        store.put_manifest(manifest("repo", "bare", tags=["a", "b"]), [])
        store.put_manifest(manifest("other", "img", tags=["x"]), [])
        details = store.retention_tags("repo")
        assert [d.tag for d in details] == ["a", "b", "v1"]
        v1 = details[2]
        assert v1 == RetentionTag(
            "repo",
            "v1",
            m.digest,
            m.media_type,
            len(m.payload),
            len(m.payload) + 1100,
            T0,
            None,
        )
        assert details[0].pushed == T0 + 10 and details[0].size == details[0].manifest_size
        assert store.retention_tags("nowhere") == []

    def test_record_pulls(self, store: MetadataStore, clock: Clock) -> None:
        store.put_manifest(manifest("repo", "one", tags=["v1", "latest"]), [])
        store.put_manifest(manifest("repo", "two", tags=["v2"]), [])
        pulls = [ev("pull", digest=digest("one"), tag="v1", ts=T0 + 5)]
        store.record_pulls(
            pulls,
            [PullTime("repo", "v1", digest("one"), T0 + 5)],
            [PullTime("repo", digest("one"), digest("one"), T0 + 5)],
        )
        assert [e.action for e in store.events_after(0, 10)] == ["pull"]
        by_tag = {d.tag: d for d in store.retention_tags("repo")}
        # v1 pulled by tag; latest shares the manifest, so it counts as pulled too.
        assert by_tag["v1"].pulled == T0 + 5 and by_tag["latest"].pulled == T0 + 5
        assert by_tag["v2"].pulled is None
        # Times only move forward; a pull of a tag that since moved does not count.
        store.record_pulls([], [PullTime("repo", "v1", digest("one"), T0 + 1)], [])
        store.record_pulls([], [PullTime("repo", "v2", digest("one"), T0 + 9)], [])
        store.record_pulls([], [PullTime("repo", "v2", digest("two"), T0 + 7)], [])
        by_tag = {d.tag: d for d in store.retention_tags("repo")}
        assert by_tag["v1"].pulled == T0 + 5 and by_tag["v2"].pulled == T0 + 7
        store.record_pulls([], [], [PullTime("repo", digest("one"), digest("one"), T0 + 20)])
        assert {d.tag: d.pulled for d in store.retention_tags("repo")}["v1"] == T0 + 20

    def test_delete_tags_if_unchanged(self, store: MetadataStore, clock: Clock) -> None:
        store.put_manifest(manifest("repo", "one", tags=["keep", "moved", "repushed", "gone"]), [])
        seen = {d.tag: d for d in store.retention_tags("repo")}
        clock.advance(1)
        store.put_manifest(manifest("repo", "two", tags=["moved"]), [])
        store.put_manifest(manifest("repo", "one", tags=["repushed"]), [])

        def make_events(t: RetentionTag) -> list[Event]:
            return [ev("untag", tag=t.tag, digest=t.digest)]

        asked = [seen["moved"], seen["repushed"], seen["gone"]]
        deleted = store.delete_tags_if_unchanged("repo", asked, make_events)
        assert [d.tag for d in deleted] == ["gone"]
        assert store.list_tags("repo", None, 10) == ["keep", "moved", "repushed"]
        assert [(e.action, e.tag) for e in store.events_after(0, 10)] == [("untag", "gone")]
        assert store.get_manifest("repo", digest("one")) is not None  # tags only
        assert store.delete_tags_if_unchanged("repo", asked, make_events) == []
        assert len(store.events_after(0, 10)) == 1

    def test_immutable_tag_is_never_moved(self, store: MetadataStore) -> None:
        _push(store, "one", ["v1", "dev"], ["v1"])
        _push(store, "one", ["v1"], ["v1"])  # the same digest again: fine
        before = store.events_after(0, 10)
        try:
            _push(store, "two", ["dev", "v1"], ["v1"])
        except TagImmutable as e:
            assert e.tag == "v1"
        else:
            raise AssertionError("an immutable tag was moved")
        tagged = store.get_tagged_manifest("repo", "v1")
        assert tagged is not None and tagged.digest == digest("one")
        # Nothing of the refused push was kept: not the manifest, not dev's move, no event.
        assert store.get_manifest("repo", digest("two")) is None
        dev = store.get_tagged_manifest("repo", "dev")
        assert dev is not None and dev.digest == digest("one")
        assert store.events_after(0, 10) == before
        _push(store, "two", ["v2"], ["v2"])  # a new immutable tag can be created
        assert store.list_tags("repo", None, 10) == ["dev", "v1", "v2"]

    def test_delete_manifest_refuses_an_immutable_tag(self, store: MetadataStore) -> None:
        store.put_manifest(manifest("repo", "one", tags=["v1", "dev"]), [])
        try:
            store.delete_manifest("repo", digest("one"), [ev("delete")], lambda t: t == "v1")
        except TagImmutable as e:
            assert e.tag == "v1"
        else:
            raise AssertionError("a manifest with an immutable tag was deleted")
        assert store.list_tags("repo", None, 10) == ["dev", "v1"]
        assert store.get_manifest("repo", digest("one")) is not None
        assert store.events_after(0, 10) == []
        assert store.delete_manifest("repo", digest("one"), [], lambda t: t == "v9") is True
        assert store.list_tags("repo", None, 10) == []
