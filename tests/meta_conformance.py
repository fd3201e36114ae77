"""The metadata-store conformance suite: the ``MetadataStore`` contract, written once.

A store is done when this suite passes against it unchanged. The suite drives the store
only through the protocol's methods (never SQL, never the driver), so the same tests
judge SQLite today and PostgreSQL next. To run it against a store, subclass
``MetaConformance`` in a ``test_*.py`` module and provide a ``make_store`` fixture: a
callable that takes a ``Clock`` and returns a store on one fresh database, not yet
migrated. Every call opens another handle on that same database (as another worker
process would), so tests can look at it from a second connection::

    class TestPostgresMeta(MetaConformance):
        @pytest.fixture
        def make_store(self, pg_schema: str) -> MakeStore:
            return lambda clock: PostgresMeta(pg_schema, clock=clock)

Time is the injected ``Clock``: tests move it forward to expire leases instead of waiting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from dockyard.meta.records import Conflict, Event, NewManifest, StoredEvent
from dockyard.meta.store import MetadataStore

T0 = 1_700_000_000.0


class Clock:
    """A settable time source (seconds since the epoch)."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


MakeStore = Callable[[Clock], MetadataStore]


def digest(name: str) -> str:
    """A well-formed digest, distinct per ``name`` and ordered like ``name``."""
    return "sha256:" + name.encode().hex().ljust(64, "0")[:64]


def manifest(
    repository: str,
    name: str,
    *,
    tags: Sequence[str] = (),
    subject: str | None = None,
    artifact_type: str | None = None,
    annotations: dict[str, str] | None = None,
    blobs: Sequence[str] = (),
    children: Sequence[str] = (),
    media_type: str = "application/vnd.oci.image.manifest.v1+json",
) -> NewManifest:
    payload = f'{{"name":"{name}"}}'.encode()
    return NewManifest(
        repository,
        digest(name),
        media_type,
        artifact_type,
        subject,
        payload,
        annotations,
        blobs,
        children,
        tags,
    )


def ev(action: str, repository: str = "repo", **kw: object) -> Event:
    return Event(action, repository, **kw)  # type: ignore[arg-type]


def actions(events: Sequence[StoredEvent]) -> list[str]:
    return [e.action for e in events]


class StoreFixtures:
    """A migrated ``store`` on its ``clock``, from the subclass's ``make_store``."""

    @pytest.fixture
    def clock(self) -> Clock:
        return Clock()

    @pytest.fixture
    def store(self, make_store: MakeStore, clock: Clock) -> Iterator[MetadataStore]:
        s = make_store(clock)
        s.migrate()
        yield s
        s.close()


class MetaConformance(StoreFixtures):
    """Every ``MetadataStore`` must pass these. Subclasses provide ``make_store``."""

    def log(self, store: MetadataStore) -> list[StoredEvent]:
        return store.events_after(0, 1000)

    # -- lifecycle

    def test_migrate_is_idempotent(self, store: MetadataStore, make_store: MakeStore) -> None:
        store.link_blob("repo", digest("a"), 3, [])
        store.migrate()
        other = make_store(Clock())
        other.migrate()
        assert other.linked_blob_size("repo", digest("a")) == 3
        other.close()
        assert store.list_repositories(None, 10) == ["repo"]

    def test_inline_reads_answer_point_reads(self, store: MetadataStore) -> None:
        store.put_manifest(manifest("repo", "m", tags=["v1"]), [])
        store.link_blob("repo", digest("b"), 5, [])
        with store.inline_reads():
            found = store.get_manifest("repo", digest("m"))
            tagged = store.get_tagged_manifest("repo", "v1")
            size = store.linked_blob_size("repo", digest("b"))
        assert found is not None and found == tagged
        assert size == 5

    def test_a_second_handle_sees_committed_changes(
        self, store: MetadataStore, make_store: MakeStore, clock: Clock
    ) -> None:
        other = make_store(clock)
        store.put_manifest(manifest("repo", "m", tags=["v1"]), [ev("push")])
        assert other.get_tagged_manifest("repo", "v1") == store.get_manifest("repo", digest("m"))
        assert other.last_event_id() == store.last_event_id() == 1
        other.close()

    # -- repositories

    def test_shared_secret_first_caller_wins_across_handles(
        self, store: MetadataStore, make_store: MakeStore
    ) -> None:
        assert store.shared_secret("ticket", b"\x00first\xff") == b"\x00first\xff"
        other = make_store(Clock())
        assert other.shared_secret("ticket", b"second") == b"\x00first\xff"
        assert other.shared_secret("signing", b"other key") == b"other key"
        other.close()
        assert store.shared_secret("signing", b"ignored") == b"other key"

    def test_job_lease_one_holder_across_handles(
        self, store: MetadataStore, make_store: MakeStore, clock: Clock
    ) -> None:
        other = make_store(clock)
        assert store.job_acquire("gc", "a/1", 30)
        assert not other.job_acquire("gc", "b/1", 30)
        assert other.job_acquire("retention", "b/1", 30)  # another job is its own lease
        assert store.job_acquire("gc", "a/1", 30)  # the holder may take it again
        assert store.job_renew("gc", "a/1", 30) and not other.job_renew("gc", "b/1", 30)
        clock.advance(31)
        assert other.job_acquire("gc", "b/1", 30)  # expired: taken over
        assert not store.job_renew("gc", "a/1", 30)
        store.job_release("gc", "a/1")  # not the holder: nothing changes
        assert not store.job_acquire("gc", "a/1", 30)
        other.job_release("gc", "b/1")
        assert store.job_acquire("gc", "a/1", 30)
        other.close()

    def test_starts_empty(self, store: MetadataStore) -> None:
        assert store.list_repositories(None, 10) == []
        assert store.repository_exists("repo") is False
        assert store.last_event_id() == 0
        assert store.upload_ids() == set()
        assert store.webhook_cursors() == []

    def test_repositories_are_made_by_links_and_pushes(self, store: MetadataStore) -> None:
        store.link_blob("linked", digest("a"), 1, [])
        store.put_manifest(manifest("pushed", "m"), [])
        assert store.repository_exists("linked") and store.repository_exists("pushed")
        assert not store.repository_exists("Linked")
        assert store.list_repositories(None, 10) == ["linked", "pushed"]

    def test_list_repositories_pages_in_byte_order(self, store: MetadataStore) -> None:
        names = ["b", "a/b", "A", "a", "a-b", "\u00e4", "a_b"]
        for n in names:
            store.link_blob(n, digest("x"), 1, [])
        expected = sorted(names, key=lambda n: n.encode())
        assert store.list_repositories(None, 100) == expected
        pages: list[str] = []
        last: str | None = None
        while page := store.list_repositories(last, 3):
            assert len(page) <= 3
            pages += page
            last = page[-1]
        assert pages == expected
        assert store.list_repositories("a", 2) == expected[expected.index("a") + 1 :][:2]

    # -- blob links

    def test_link_blob(self, store: MetadataStore) -> None:
        assert store.blob_size(digest("a")) is None
        store.link_blob("repo", digest("a"), 42, [])
        assert store.blob_size(digest("a")) == 42
        assert store.linked_blob_size("repo", digest("a")) == 42
        assert store.linked_blob_size("other", digest("a")) is None
        assert store.linked_blob_size("repo", digest("b")) is None
        store.link_blob("repo", digest("a"), 42, [])  # idempotent
        assert store.repositories_linking(digest("a")) == ["repo"]

    def test_unlink_blob(self, store: MetadataStore) -> None:
        store.link_blob("repo", digest("a"), 7, [])
        store.link_blob("other", digest("a"), 7, [])
        assert store.unlink_blob("repo", digest("a"), []) is True
        assert store.linked_blob_size("repo", digest("a")) is None
        assert store.linked_blob_size("other", digest("a")) == 7
        assert store.blob_size(digest("a")) == 7  # the blob itself stays known
        assert store.unlink_blob("repo", digest("a"), []) is False
        assert store.unlink_blob("nowhere", digest("a"), []) is False

    def test_repositories_linking_in_order_up_to_limit(self, store: MetadataStore) -> None:
        for n in ["c", "a", "b", "d"]:
            store.link_blob(n, digest("shared"), 1, [])
        store.link_blob("e", digest("other"), 1, [])
        assert store.repositories_linking(digest("shared")) == ["a", "b", "c", "d"]
        assert store.repositories_linking(digest("shared"), limit=2) == ["a", "b"]
        assert store.repositories_linking(digest("shared"), limit=2, after="b") == ["c", "d"]
        assert store.repositories_linking(digest("shared"), after="d") == []
        assert store.repositories_linking(digest("none")) == []

    def test_linked_blobs_many(self, store: MetadataStore) -> None:
        # More digests than a database takes as bound parameters in one statement.
        linked = {digest(f"b{i}"): i for i in range(0, 1500, 2)}
        for d, size in linked.items():
            store.link_blob("repo", d, size, [])
        store.link_blob("other", digest("b1"), 1, [])
        asked = [digest(f"b{i}") for i in range(1500)]
        assert store.linked_blobs("repo", asked) == linked
        assert store.linked_blobs("repo", []) == {}
        assert store.linked_blobs("nowhere", asked) == {}

    def test_link_blob_finishes_its_upload(self, store: MetadataStore) -> None:
        store.create_upload("u1", "repo", "sha256", {})
        store.create_upload("u2", "repo", "sha256", {})
        store.link_blob("repo", digest("a"), 1, [], finished_upload="u1")
        assert store.get_upload("u1") is None
        assert store.upload_ids() == {"u2"}

    # -- manifests and tags

    def test_put_and_get_manifest(self, store: MetadataStore) -> None:
        m = manifest("repo", "m", media_type="application/vnd.oci.image.index.v1+json")
        store.put_manifest(m, [])
        got = store.get_manifest("repo", digest("m"))
        assert got is not None
        assert (got.digest, got.media_type, got.size, got.payload) == (
            m.digest,
            m.media_type,
            len(m.payload),
            m.payload,
        )
        assert isinstance(got.payload, bytes)
        assert store.get_manifest("other", digest("m")) is None
        assert store.get_manifest("repo", digest("n")) is None
        store.put_manifest(m, [])  # idempotent
        assert store.get_manifest("repo", digest("m")) == got

    def test_tags(self, store: MetadataStore) -> None:
        store.put_manifest(manifest("repo", "one", tags=["v1", "latest"]), [])
        assert store.get_tagged_manifest("repo", "v1") == store.get_manifest("repo", digest("one"))
        store.put_manifest(manifest("repo", "two", tags=["latest"]), [])
        latest = store.get_tagged_manifest("repo", "latest")
        assert latest is not None and latest.digest == digest("two")
        assert store.get_tagged_manifest("repo", "v2") is None
        assert store.get_tagged_manifest("other", "v1") is None

    def test_existing_manifests_many(self, store: MetadataStore) -> None:
        stored = {f"m{i}" for i in range(0, 1200, 3)}
        for n in stored:
            store.put_manifest(manifest("repo", n), [])
        asked = [digest(f"m{i}") for i in range(1200)]
        found = store.existing_manifests("repo", asked)
        assert found == {digest(n): len(manifest("repo", n).payload) for n in stored}
        assert store.existing_manifests("other", asked) == {}

    def test_delete_manifest_deletes_its_tags(self, store: MetadataStore) -> None:
        store.put_manifest(manifest("repo", "a", tags=["v1", "v2"]), [])
        store.put_manifest(manifest("repo", "b", tags=["v3"]), [])
        assert store.delete_manifest("repo", digest("a"), []) is True
        assert store.get_manifest("repo", digest("a")) is None
        assert store.list_tags("repo", None, 10) == ["v3"]
        assert store.get_tagged_manifest("repo", "v1") is None
        assert store.delete_manifest("repo", digest("a"), []) is False
        assert store.delete_manifest("nowhere", digest("b"), []) is False
        assert store.get_manifest("repo", digest("b")) is not None
        store.put_manifest(manifest("repo", "a"), [])  # can be pushed again, untagged
        assert store.list_tags("repo", None, 10) == ["v3"]

    def test_delete_tag(self, store: MetadataStore) -> None:
        store.put_manifest(manifest("repo", "a", tags=["v1", "v2"]), [])
        seen: list[str] = []

        def make_events(d: str) -> list[Event]:
            seen.append(d)
            return [ev("delete", tag="v1", digest=d)]

        assert store.delete_tag("repo", "v1", make_events) == digest("a")
        assert seen == [digest("a")]
        assert store.list_tags("repo", None, 10) == ["v2"]
        assert store.get_manifest("repo", digest("a")) is not None
        assert store.delete_tag("repo", "v1", make_events) is None
        assert store.delete_tag("nowhere", "v2", make_events) is None
        assert seen == [digest("a")]
        assert [(e.action, e.tag, e.digest) for e in self.log(store)] == [
            ("delete", "v1", digest("a"))
        ]

    def test_list_tags(self, store: MetadataStore) -> None:
        assert store.list_tags("repo", None, 10) is None
        store.link_blob("repo", digest("a"), 1, [])
        assert store.list_tags("repo", None, 10) == []
        tags = ["v10", "v2", "V1", "latest", "v1", "a_b", "a-b"]
        store.put_manifest(manifest("repo", "m", tags=tags), [])
        expected = sorted(tags, key=lambda t: t.encode())
        assert store.list_tags("repo", None, 100) == expected
        assert store.list_tags("repo", None, 2) == expected[:2]
        assert store.list_tags("repo", expected[1], 3) == expected[2:5]
        assert store.list_tags("repo", expected[-1], 3) == []

    def test_referrers(self, store: MetadataStore) -> None:
        subject = digest("subject")
        store.put_manifest(manifest("repo", "subject"), [])
        store.put_manifest(manifest("repo", "r3", subject=subject, artifact_type="sig"), [])
        store.put_manifest(
            manifest("repo", "r1", subject=subject, artifact_type="sbom", annotations={"k": "v"}),
            [],
        )
        store.put_manifest(manifest("repo", "r2", subject=subject, artifact_type="sig"), [])
        store.put_manifest(manifest("repo", "r4", subject=digest("else")), [])
        store.put_manifest(manifest("other", "r5", subject=subject), [])
        found = store.referrers("repo", subject, None, None, 10)
        assert [r.digest for r in found] == [digest("r1"), digest("r2"), digest("r3")]
        r1 = found[0]
        assert (r1.artifact_type, r1.annotations) == ("sbom", {"k": "v"})
        assert r1.size == len(manifest("repo", "r1").payload)
        assert found[1].annotations is None
        sigs = store.referrers("repo", subject, "sig", None, 10)
        assert [r.digest for r in sigs] == [digest("r2"), digest("r3")]
        assert [r.digest for r in store.referrers("repo", subject, None, None, 2)] == [
            digest("r1"),
            digest("r2"),
        ]
        page = store.referrers("repo", subject, None, digest("r2"), 2)
        assert [r.digest for r in page] == [digest("r3")]
        assert store.referrers("repo", subject, "none", None, 10) == []
        assert store.referrers("nowhere", subject, None, None, 10) == []

    # -- uploads

    def test_create_and_get_upload(self, store: MetadataStore, clock: Clock) -> None:
        store.create_upload("u1", "repo", "sha256", {"part": 1})
        u = store.get_upload("u1")
        assert u is not None
        assert (u.id, u.repository, u.algorithm, u.received) == ("u1", "repo", "sha256", 0)
        assert (u.hash_state, u.driver_state, u.lease, u.lease_expires) == (
            None,
            {"part": 1},
            None,
            None,
        )
        assert u.started == u.touched == clock.now
        assert store.get_upload("u2") is None
        assert store.repository_exists("repo") is False  # an upload makes no repository

    def test_claim_only_at_the_recorded_offset(self, store: MetadataStore) -> None:
        store.create_upload("u1", "repo", "sha256", {})
        assert store.claim_upload("u1", 5, "i/a", 60) is False
        assert store.claim_upload("missing", 0, "i/a", 60) is False
        assert store.claim_upload("u1", 0, "i/a", 60) is True
        u = store.get_upload("u1")
        assert u is not None and u.lease == "i/a"

    def test_claim_waits_for_the_lease_to_expire(self, store: MetadataStore, clock: Clock) -> None:
        store.create_upload("u1", "repo", "sha256", {})
        assert store.claim_upload("u1", 0, "i/a", 60) is True
        u = store.get_upload("u1")
        assert u is not None and u.lease_expires == clock.now + 60
        clock.advance(59)
        assert store.claim_upload("u1", 0, "i/b", 60) is False
        clock.advance(2)
        assert store.claim_upload("u1", 0, "i/b", 60) is True
        assert store.renew_lease("u1", "i/a", 60) is False  # the first holder lost it

    def test_renew_lease(self, store: MetadataStore, clock: Clock) -> None:
        store.create_upload("u1", "repo", "sha256", {})
        store.claim_upload("u1", 0, "i/a", 60)
        clock.advance(50)
        assert store.renew_lease("u1", "i/a", 60) is True
        u = store.get_upload("u1")
        assert u is not None and (u.lease_expires, u.touched) == (clock.now + 60, clock.now)
        clock.advance(50)  # past the first expiry, not the renewed one
        assert store.claim_upload("u1", 0, "i/b", 60) is False
        assert store.renew_lease("u1", "i/b", 60) is False
        assert store.renew_lease("missing", "i/a", 60) is False

    def test_save_upload(self, store: MetadataStore, clock: Clock) -> None:
        store.create_upload("u1", "repo", "sha256", {"n": 0})
        store.claim_upload("u1", 0, "i/a", 60)
        clock.advance(5)
        store.save_upload("u1", "i/a", 100, b"\x00state", {"n": 1})
        u = store.get_upload("u1")
        assert u is not None
        assert (u.received, u.hash_state, u.driver_state) == (100, b"\x00state", {"n": 1})
        assert (u.lease, u.lease_expires, u.touched) == (None, None, clock.now)
        with pytest.raises(Conflict):
            store.save_upload("u1", "i/a", 200, None, {})  # no longer held
        assert store.claim_upload("u1", 0, "i/b", 60) is False
        assert store.claim_upload("u1", 100, "i/b", 60) is True
        with pytest.raises(Conflict):
            store.save_upload("u1", "i/a", 200, None, {})  # held by another
        got = store.get_upload("u1")
        assert got is not None and got.received == 100

    def test_release_upload(self, store: MetadataStore) -> None:
        store.create_upload("u1", "repo", "sha256", {})
        store.claim_upload("u1", 0, "i/a", 60)
        store.release_upload("u1", "i/b")  # not the holder: nothing happens
        assert store.claim_upload("u1", 0, "i/b", 60) is False
        store.release_upload("u1", "i/a")
        u = store.get_upload("u1")
        assert u is not None and (u.lease, u.lease_expires) == (None, None)
        assert store.claim_upload("u1", 0, "i/b", 60) is True

    def test_release_leases_of_matches_the_instance_exactly(self, store: MetadataStore) -> None:
        # Lease tokens are "<instance>/<random>". Only the named instance's leases are
        # freed: no wildcard characters, no case folding, no longer or nested names.
        leases = {
            "mine-1": "ci_runner/1a2b",
            "mine-2": "ci_runner/3c4d",
            "wildcard": "ciXrunner/5e6f",
            "case": "CI_RUNNER/7a8b",
            "longer": "ci_runner2/9c0d",
            "nested": "ci_runner/sub/1e2f",
            "percent": "ci%/3a4b",
        }
        for upload_id, lease in leases.items():
            store.create_upload(upload_id, "repo", "sha256", {})
            assert store.claim_upload(upload_id, 0, lease, 60) is True
        store.create_upload("free", "repo", "sha256", {})
        assert store.release_leases_of("ci_runner") == 2
        held = {}
        for upload_id in [*leases, "free"]:
            u = store.get_upload(upload_id)
            assert u is not None
            held[upload_id] = u.lease
        assert held == {**leases, "mine-1": None, "mine-2": None, "free": None}
        assert store.release_leases_of("ci%") == 1
        assert store.release_leases_of("ci") == 0

    def test_stale_uploads(self, store: MetadataStore, clock: Clock) -> None:
        store.create_upload("old", "repo", "sha256", {})
        store.create_upload("old-held", "repo", "sha256", {})
        store.claim_upload("old-held", 0, "i/a", 1000)
        store.create_upload("old-expired", "repo", "sha256", {})
        store.claim_upload("old-expired", 0, "i/a", 10)
        clock.advance(100)
        store.create_upload("new", "repo", "sha256", {})
        stale = store.stale_uploads(touched_before=clock.now - 50)
        assert sorted(u.id for u in stale) == ["old", "old-expired"]
        assert store.stale_uploads(touched_before=clock.now - 500) == []

    def test_upload_ids_and_delete(self, store: MetadataStore) -> None:
        for u in ["a", "b", "c"]:
            store.create_upload(u, "repo", "sha256", {})
        assert store.upload_ids() == {"a", "b", "c"}
        assert store.delete_upload("b") is True
        assert store.delete_upload("b") is False
        assert store.upload_ids() == {"a", "c"}
        assert store.get_upload("b") is None

    # -- the event log

    def test_append_and_read_events(self, store: MetadataStore, clock: Clock) -> None:
        assert store.events_after(0, 10) == [] and store.event(1) is None
        store.append_events([])
        assert store.last_event_id() == 0
        store.append_events(
            [
                ev("push", digest="sha256:a", media_type="t", size=3, tag="v1", body={"k": [1]}),
                ev("pull", repository="other", ts=T0 - 30),
            ]
        )
        store.append_events([ev("delete")])
        log = self.log(store)
        assert [e.id for e in log] == sorted(e.id for e in log)
        assert len({e.id for e in log}) == 3 and store.last_event_id() == log[-1].id
        first, second, third = log
        assert (first.action, first.repository, first.digest, first.media_type) == (
            "push",
            "repo",
            "sha256:a",
            "t",
        )
        assert (first.size, first.tag, first.body, first.ts) == (3, "v1", {"k": [1]}, T0)
        assert (second.repository, second.ts, second.size, second.tag) == (
            "other",
            T0 - 30,
            None,
            None,
        )
        assert third.body == {}
        assert store.events_after(first.id, 1) == [second]
        assert store.events_after(second.id, 10) == [third]
        assert store.events_after(third.id, 10) == []
        assert store.event(second.id) == second
        assert store.event(third.id + 1) is None

    def test_changes_append_their_events(self, store: MetadataStore) -> None:
        store.link_blob("repo", digest("a"), 1, [ev("push-blob")])
        store.put_manifest(manifest("repo", "m", tags=["v1"]), [ev("push"), ev("tag")])
        store.delete_tag("repo", "v1", lambda d: [ev("untag", digest=d)])
        store.delete_manifest("repo", digest("m"), [ev("delete")])
        store.unlink_blob("repo", digest("a"), [ev("unlink")])
        # Changes that change nothing append nothing.
        store.unlink_blob("repo", digest("a"), [ev("never")])
        store.delete_manifest("repo", digest("m"), [ev("never")])
        store.delete_tag("repo", "v1", lambda d: [ev("never")])
        assert actions(self.log(store)) == ["push-blob", "push", "tag", "untag", "delete", "unlink"]

    def test_a_failed_change_appends_nothing(self, store: MetadataStore) -> None:
        store.put_manifest(manifest("repo", "m", tags=["v1"]), [])

        def fail(d: str) -> list[Event]:
            raise RuntimeError(d)

        with pytest.raises(RuntimeError):
            store.delete_tag("repo", "v1", fail)
        assert store.list_tags("repo", None, 10) == ["v1"]  # rolled back with its events
        assert store.last_event_id() == 0

    def test_on_events_committed(self, store: MetadataStore) -> None:
        calls: list[int] = []
        store.on_events_committed = lambda: calls.append(store.last_event_id())
        store.create_upload("u", "repo", "sha256", {})
        store.link_blob("repo", digest("a"), 1, [])
        assert calls == []
        store.link_blob("repo", digest("b"), 1, [ev("push-blob")])
        assert calls == [1]  # after the commit: the event is visible
        store.put_manifest(manifest("repo", "m"), [ev("push")])
        store.append_events([ev("pull")])
        assert calls == [1, 2, 3]
        store.on_events_committed = None
        store.append_events([ev("pull")])
        assert calls == [1, 2, 3]

    # -- dashboard statistics

    def test_inventory(self, store: MetadataStore) -> None:
        empty = store.inventory()
        assert (empty.repositories, empty.tags, empty.blobs, empty.blob_bytes) == (0, 0, 0, 0)
        assert empty.manifests == {"image": 0, "index": 0, "artifact": 0}
        store.link_blob("a", digest("l1"), 100, [])
        store.link_blob("b", digest("l1"), 100, [])  # one blob, linked twice: counted once
        store.link_blob("b", digest("l2"), 20, [])
        image_config = "application/vnd.oci.image.config.v1+json"
        store.put_manifest(manifest("a", "img", tags=["v1", "v2"], artifact_type=image_config), [])
        store.put_manifest(
            manifest(
                "a", "docker", media_type="application/vnd.docker.distribution.manifest.v2+json"
            ),
            [],
        )
        store.put_manifest(
            manifest("b", "sbom", artifact_type="application/spdx+json", tags=["s"]), []
        )
        store.put_manifest(
            manifest(
                "b",
                "idx",
                media_type="application/vnd.oci.image.index.v1+json",
                children=[digest("img")],
            ),
            [],
        )
        store.create_upload("u1", "a", "sha256", {})
        store.append_events([ev("push", "a"), ev("push", "b")])
        store.webhook_init(["hook"])
        inv = store.inventory()
        assert (inv.repositories, inv.tags, inv.blobs, inv.blob_bytes) == (2, 3, 2, 120)
        assert inv.manifests == {"image": 2, "index": 1, "artifact": 1}
        assert inv.upload_sessions == 1
        assert inv.last_event_id == store.last_event_id() == 2
        assert inv.webhook_cursors == {"hook": 2}

    def test_stats(self, store: MetadataStore, clock: Clock) -> None:
        store.append_events([ev("push", size=1000, ts=T0 - 3600)])  # before the window
        store.link_blob("a", digest("l1"), 100, [ev("push-blob", "a", size=100)])
        store.link_blob("a", digest("l2"), 20, [])
        store.link_blob("b", digest("l1"), 100, [])
        store.put_manifest(manifest("a", "m1", tags=["v1", "v2"]), [ev("push", "a", size=5)])
        clock.advance(120)
        store.put_manifest(manifest("b", "m2", tags=["v1"]), [ev("push", "b", size=7)])
        store.append_events([ev("pull", "b", size=50), ev("pull", "b", size=70)])
        clock.advance(10)
        store.link_blob("c", digest("l3"), 3, [])  # no manifest: updated = created
        snap = store.stats(since=T0 - 60, bucket=60, repositories=10)
        assert snap.last_id == store.last_event_id() == 6
        m1, m2 = (len(manifest("x", n).payload) for n in ("m1", "m2"))
        summaries = [(r.name, r.tags, r.manifests, r.size, r.updated) for r in snap.repositories]
        assert summaries == [
            ("c", 0, 0, 3, T0 + 130),
            ("b", 1, 1, 100 + m2, T0 + 120),
            ("a", 2, 1, 120 + m1, T0),
        ]
        assert (snap.repository_count, snap.tag_count, snap.manifest_count) == (3, 3, 2)
        assert (snap.blob_count, snap.blob_bytes) == (3, 123)
        buckets = sorted((c.key, c.action, c.count, c.size) for c in snap.by_bucket)
        k = int(T0 // 60)
        assert buckets == [
            (k, "push", 1, 5),
            (k, "push-blob", 1, 100),
            (k + 2, "pull", 2, 120),
            (k + 2, "push", 1, 7),
        ]
        per_repo = sorted((c.key, c.action, c.count, c.size) for c in snap.by_repository)
        assert per_repo == [
            ("a", "push", 1, 5),
            ("a", "push-blob", 1, 100),
            ("b", "pull", 2, 120),
            ("b", "push", 1, 7),
        ]
        assert snap.by_bucket_and_repository == []  # only when asked for
        detailed = store.stats(since=T0 - 60, bucket=60, repositories=10, per_repository=True)
        assert sorted(
            (d.bucket, d.repository, d.action, d.count, d.size)
            for d in detailed.by_bucket_and_repository
        ) == [
            (k, "a", "push", 1, 5),
            (k, "a", "push-blob", 1, 100),
            (k + 2, "b", "pull", 2, 120),
            (k + 2, "b", "push", 1, 7),
        ]
        # Blobs of some repositories: l1 (in a and b) counts once.
        assert store.blob_totals(["a", "b"]) == (2, 120)
        assert store.blob_totals(["b", "c", "nothing"]) == (2, 103)
        assert store.blob_totals([]) == (0, 0)
        top = store.stats(since=T0 + 60, bucket=60, repositories=1)
        assert [r.name for r in top.repositories] == ["c"]
        assert sorted((c.action, c.count) for c in top.by_bucket) == [("pull", 2), ("push", 1)]

    # -- webhooks

    def test_webhook_init(self, store: MetadataStore, clock: Clock) -> None:
        store.append_events([ev("push"), ev("push")])
        store.webhook_init(["b", "a"])
        store.append_events([ev("push")])
        clock.advance(5)
        store.webhook_init(["a", "c"])  # a keeps its cursor
        cursors = {c.name: c for c in store.webhook_cursors()}
        assert [c.name for c in store.webhook_cursors()] == ["a", "b", "c"]
        assert {n: c.cursor for n, c in cursors.items()} == {"a": 2, "b": 2, "c": 3}
        a = cursors["a"]
        assert (a.lease, a.lease_expires, a.created, a.delivered, a.failed) == (
            None,
            None,
            T0,
            None,
            0,
        )

    def test_webhook_lease(self, store: MetadataStore, clock: Clock) -> None:
        store.webhook_init(["hook"])
        assert store.webhook_acquire("missing", "i/a", 30) is None
        assert store.webhook_lease_free("hook", "i/a") is True
        assert store.webhook_acquire("hook", "i/a", 30) == 0
        (c,) = store.webhook_cursors()
        assert (c.lease, c.lease_expires) == ("i/a", T0 + 30)
        assert store.webhook_lease_free("hook", "i/b") is False
        assert store.webhook_acquire("hook", "i/b", 30) is None
        assert store.webhook_lease_free("hook", "i/a") is True  # its holder may keep it
        assert store.webhook_acquire("hook", "i/a", 30) == 0
        clock.advance(20)
        assert store.webhook_renew("hook", "i/a", 30) is True
        assert store.webhook_renew("hook", "i/b", 30) is False
        clock.advance(20)  # past the first expiry, not the renewed one
        assert store.webhook_acquire("hook", "i/b", 30) is None
        clock.advance(11)
        assert store.webhook_lease_free("hook", "i/b") is True
        assert store.webhook_acquire("hook", "i/b", 30) == 0
        assert store.webhook_renew("hook", "i/a", 30) is False
        store.webhook_release("hook", "i/a")  # not the holder: nothing happens
        assert store.webhook_acquire("hook", "i/a", 30) is None
        store.webhook_release("hook", "i/b")
        (c,) = store.webhook_cursors()
        assert (c.lease, c.lease_expires) == (None, None)
        assert store.webhook_acquire("hook", "i/a", 30) == 0

    def test_webhook_advance(self, store: MetadataStore, clock: Clock) -> None:
        store.webhook_init(["hook"])
        store.webhook_acquire("hook", "i/a", 30)
        assert store.webhook_advance("hook", "i/b", 5, True) is False
        assert store.webhook_advance("hook", "i/a", 5, False) is True
        (c,) = store.webhook_cursors()
        assert (c.cursor, c.delivered) == (5, None)
        clock.advance(1)
        assert store.webhook_advance("hook", "i/a", 3, True) is True  # never moves back
        (c,) = store.webhook_cursors()
        assert (c.cursor, c.delivered) == (5, T0 + 1)
        assert store.webhook_acquire("hook", "i/a", 30) == 5

    def test_webhook_release_leases_of_matches_the_instance_exactly(
        self, store: MetadataStore
    ) -> None:
        leases = {
            "mine": "ci_runner/12-ab",
            "wildcard": "ciXrunner/12-ab",
            "case": "CI_RUNNER/12-ab",
            "longer": "ci_runner2/12-ab",
            "nested": "ci_runner/sub/12-ab",
        }
        store.webhook_init([*leases, "free"])
        for name, lease in leases.items():
            assert store.webhook_acquire(name, lease, 30) == 0
        assert store.webhook_release_leases_of("ci_runner") == 1
        held = {c.name: c.lease for c in store.webhook_cursors()}
        assert held == {**leases, "mine": None, "free": None}

    def test_webhook_failures(self, store: MetadataStore, clock: Clock) -> None:
        store.append_events([ev("push")] * 5)
        store.webhook_init(["hook", "other"])
        store.webhook_acquire("hook", "i/a", 30)
        assert store.webhook_failed("hook", "i/b", 6, 3, "refused", True) is False
        assert store.webhook_failed("hook", "i/a", 6, 3, "refused", True) is True
        assert store.webhook_failed("hook", "i/a", 7, 1, "x" * 5000, False) is True
        (f6, f7) = store.webhook_failures("hook")
        assert (f6.name, f6.event_id, f6.attempts, f6.last_error, f6.failed, f6.redeliver) == (
            "hook",
            6,
            3,
            "refused",
            T0,
            False,
        )
        assert f7.event_id == 7 and 0 < len(f7.last_error) <= 5000
        cursors = {c.name: c for c in store.webhook_cursors()}
        assert (cursors["hook"].cursor, cursors["hook"].failed) == (6, 2)  # 7: not advanced
        assert (cursors["other"].cursor, cursors["other"].failed) == (5, 0)
        clock.advance(1)
        assert store.webhook_failed("hook", "i/a", 6, 2, "timeout", False) is True
        (f6, _) = store.webhook_failures("hook")
        assert (f6.attempts, f6.last_error, f6.failed) == (5, "timeout", T0 + 1)
        assert store.webhook_failures("other") == []
        assert [(f.name, f.event_id) for f in store.webhook_failures()] == [
            ("hook", 6),
            ("hook", 7),
        ]

    def test_webhook_redelivery(self, store: MetadataStore) -> None:
        store.webhook_init(["hook", "other"])
        store.webhook_acquire("hook", "i/a", 30)
        store.webhook_acquire("other", "i/a", 30)
        for event_id in (3, 1, 2):
            store.webhook_failed("hook", "i/a", event_id, 1, "e", False)
        store.webhook_failed("other", "i/a", 1, 1, "e", False)
        assert store.webhook_to_redeliver("hook", 10) == []
        assert store.webhook_mark_redeliver("hook", 2) == 1
        assert store.webhook_mark_redeliver("hook", 9) == 0
        assert store.webhook_to_redeliver("hook", 10) == [2]
        assert store.webhook_mark_redeliver("hook", None) == 3
        assert store.webhook_to_redeliver("hook", 10) == [1, 2, 3]
        assert store.webhook_to_redeliver("hook", 2) == [1, 2]
        assert store.webhook_to_redeliver("other", 10) == []
        assert [f.redeliver for f in store.webhook_failures("hook")] == [True] * 3
        assert store.webhook_redelivered("hook", "i/b", 1) is False
        assert store.webhook_redelivered("hook", "i/a", 1) is True
        assert store.webhook_to_redeliver("hook", 10) == [2, 3]
        store.webhook_failed("hook", "i/a", 2, 1, "again", False)  # failing clears the ask
        assert store.webhook_to_redeliver("hook", 10) == [3]
        assert [f.event_id for f in store.webhook_failures("hook")] == [2, 3]
