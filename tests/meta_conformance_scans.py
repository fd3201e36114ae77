"""The conformance tests of the scan queue's store (``meta/scans.py``), with the fixtures
of ``MetaConformance``: ``tests/test_scan_store.py`` runs them against SQLite and
PostgreSQL alike."""

from __future__ import annotations

from dockyard.meta.scans import NewScan, ScanOutcome
from dockyard.meta.store import MetadataStore
from tests.meta_conformance import Clock, MetaConformance, ev

A = "sha256:" + "a" * 64
B = "sha256:" + "b" * 64
C = "sha256:" + "c" * 64
OUTCOME = ScanOutcome(
    "Trivy 0.0.1",
    "db-1",
    1_600_000_000.0,
    {"CRITICAL": 0, "HIGH": 2, "MEDIUM": 0, "LOW": 1, "UNKNOWN": 0},
    [{"id": "CVE-2024-1", "severity": "HIGH"}],
    "sha256:" + "e" * 64,
)


class ScanConformance:
    """Subclasses provide ``make_store`` (as for ``MetaConformance``)."""

    clock = MetaConformance.clock
    store = MetaConformance.store

    def test_enqueue_keeps_a_row_unless_again(self, store: MetadataStore, clock: Clock) -> None:
        assert store.scans_enqueue([NewScan(A, "team/app", "m"), NewScan(B, "team/app", "m")]) == 2
        assert store.scans_enqueue([NewScan(A, "other", "m")]) == 0
        assert store.scans_get([A])[A].repository == "team/app"
        assert store.scans_enqueue([NewScan(A, "other", "m")], again=True) == 1
        row = store.scans_get([A, C])
        assert list(row) == [A] and row[A].repository == "other"
        assert row[A].status == "queued" and row[A].next_attempt == clock()
        assert store.scans_counts() == {"queued": 2}

    def test_claim_is_exclusive_until_the_lease_expires(
        self, store: MetadataStore, clock: Clock
    ) -> None:
        store.scans_enqueue([NewScan(A, "r", "m"), NewScan(B, "r", "m")])
        first = store.scans_claim("i/1-w0", 30, 1)
        second = store.scans_claim("i/2-w0", 30, 5)
        assert len(first) == 1 and len(second) == 1
        assert {first[0].digest, second[0].digest} == {A, B}
        assert first[0].status == "running" and first[0].lease == "i/1-w0"
        assert store.scans_claim("i/3-w0", 30, 5) == []
        assert store.scans_renew(first[0].digest, "i/1-w0", 30)
        assert not store.scans_renew(first[0].digest, "i/3-w0", 30)
        clock.advance(31)
        # Both leases expired (a dead worker): another takes the rows over.
        again = store.scans_claim("i/3-w0", 30, 5)
        assert {r.digest for r in again} == {A, B}
        assert not store.scans_finish(A, "i/1-w0", OUTCOME, [])  # the lease is gone

    def test_finish_stores_the_result_and_its_event(self, store: MetadataStore) -> None:
        store.scans_enqueue([NewScan(A, "r", "m")])
        assert len(store.scans_claim("i/1-w0", 30, 1)) == 1
        before = store.last_event_id()
        event = ev("scan", "r", digest=A)
        assert store.scans_finish(A, "i/1-w0", OUTCOME, [event])
        done = store.scans_get([A])[A]
        assert done.status == "done" and done.lease is None and done.attempts == 1
        assert done.counts == OUTCOME.counts and done.findings == OUTCOME.findings
        assert done.scanner == "Trivy 0.0.1" and done.db_version == "db-1"
        assert done.report_digest == OUTCOME.report_digest and done.finished is not None
        events = store.events_after(before, 10)
        assert [(e.action, e.digest) for e in events] == [("scan", A)]
        assert store.scans_counts() == {"done": 1}

    def test_release_backs_off_and_keeps_the_row(self, store: MetadataStore, clock: Clock) -> None:
        store.scans_enqueue([NewScan(A, "r", "m")])
        store.scans_claim("i/1-w0", 30, 1)
        assert store.scans_release(A, "i/1-w0", "queued", clock() + 10, "database: x", True)
        assert store.scans_claim("i/1-w0", 30, 1) == []  # not due yet
        assert store.scans_counts() == {"retrying": 1}
        (failing,) = store.scans_failing(10)
        assert failing.last_error == "database: x" and failing.attempts == 1
        assert failing.next_attempt == clock() + 10
        clock.advance(10)
        (row,) = store.scans_claim("i/1-w0", 30, 1)
        assert row.attempts == 1
        # A wait (an index for its platforms) is not an attempt; the error stays.
        assert store.scans_release(A, "i/1-w0", "queued", clock(), None, False)
        assert store.scans_get([A])[A].attempts == 1
        store.scans_claim("i/1-w0", 30, 1)
        assert store.scans_release(A, "i/1-w0", "unsupported", None, "not an image", False)
        assert store.scans_get([A])[A].status == "unsupported"
        assert store.scans_claim("i/1-w0", 30, 1) == []

    def test_rows_scanned_with_another_database_are_queued_again(
        self, store: MetadataStore, clock: Clock
    ) -> None:
        for digest in (A, B, C):
            store.scans_enqueue([NewScan(digest, "r", "m")])
            store.scans_claim("i/1-w0", 30, 1)
            version = "db-2" if digest == C else "db-1"
            outcome = ScanOutcome("t", version, None, OUTCOME.counts, [], None)
            assert store.scans_finish(digest, "i/1-w0", outcome, [])
            clock.advance(1)
        assert store.scans_requeue_stale("db-2", 1) == 1
        assert store.scans_get([A])[A].status == "queued"  # the oldest first
        assert store.scans_get([B])[B].status == "done"
        assert store.scans_requeue_stale("db-2", 10) == 1
        assert store.scans_get([C])[C].status == "done"
        assert store.scans_requeue_stale("db-2", 10) == 0

    def test_a_restarted_instance_frees_its_rows(self, store: MetadataStore) -> None:
        store.scans_enqueue([NewScan(A, "r", "m"), NewScan(B, "r", "m")])
        assert len(store.scans_claim("inst/1-abc-w0", 600, 1)) == 1
        assert len(store.scans_claim("inst-2/1-abc-w0", 600, 1)) == 1
        assert store.scans_release_leases_of("inst") == 1
        (again,) = store.scans_claim("inst/2-def-w0", 600, 5)
        assert again.lease == "inst/2-def-w0"
        other = next(r for r in store.scans_get([A, B]).values() if r.digest != again.digest)
        assert other.lease == "inst-2/1-abc-w0"  # another instance's: not freed
