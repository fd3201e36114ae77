"""The conformance tests of what replication asks of a store (``meta/replication.py``,
and the webhook cursor rows its push consumers share), with the fixtures of
``MetaConformance``: ``tests/test_replication_store.py`` runs them against SQLite and
PostgreSQL alike."""

from __future__ import annotations

from dockyard.meta.replication import ReplicationRun
from dockyard.meta.store import MetadataStore
from tests.meta_conformance import T0, Clock, MetaConformance, ev

CONSUMER = "replication:mirror:http://127.0.0.1:5001"


class ReplicationConformance:
    """Subclasses provide ``make_store`` (as for ``MetaConformance``)."""

    clock = MetaConformance.clock
    store = MetaConformance.store

    def test_no_runs_at_first(self, store: MetadataStore) -> None:
        assert store.replication_runs() == []

    def test_a_run_is_recorded_and_replaced(self, store: MetadataStore) -> None:
        store.replication_record_run(ReplicationRun("pull-b", T0))
        store.replication_record_run(ReplicationRun("pull-a", T0 + 1, T0 + 2, 3, 1, "x" * 5000))
        runs = store.replication_runs()
        assert [r.name for r in runs] == ["pull-a", "pull-b"]
        assert runs[1] == ReplicationRun("pull-b", T0, None, 0, 0, None)
        assert runs[0].copied == 3 and runs[0].failed == 1 and runs[0].finished == T0 + 2
        assert runs[0].last_error == "x" * 2000  # bounded
        store.replication_record_run(ReplicationRun("pull-b", T0 + 10, T0 + 11, 7, 0, None))
        assert store.replication_runs()[1] == ReplicationRun("pull-b", T0 + 10, T0 + 11, 7)

    def test_job_holder(self, store: MetadataStore, clock: Clock) -> None:
        assert store.replication_job_holder("replication:r", clock()) is None
        assert store.job_acquire("replication:r", "inst/1-a", 60)
        assert store.replication_job_holder("replication:r", clock()) == "inst/1-a"
        assert store.replication_job_holder("replication:r", clock() + 61) is None
        store.job_release("replication:r", "inst/1-a")
        assert store.replication_job_holder("replication:r", clock()) is None

    def test_events_after_count(self, store: MetadataStore) -> None:
        assert store.events_after_count(0) == 0
        store.append_events([ev("push"), ev("push"), ev("delete")])
        last = store.last_event_id()
        assert store.events_after_count(0) == 3
        assert store.events_after_count(last - 1) == 1
        assert store.events_after_count(last) == 0

    def test_a_push_consumer_holds_the_event_floor(
        self, store: MetadataStore, clock: Clock
    ) -> None:
        """A replication consumer is a row of the webhook cursors: the pruner keeps every
        event it has not handled, and its failures are pinned like a webhook's."""
        store.append_events([ev("push")])
        store.webhook_init([CONSUMER])
        start = store.last_event_id()
        store.append_events([ev("push"), ev("push")])
        floor = store.event_floor()
        assert floor.id == start + 1
        assert floor.consumer is not None and CONSUMER in floor.consumer
        lease = "inst/1-a"
        assert store.webhook_acquire(CONSUMER, lease, 30) == start
        assert store.webhook_failed(CONSUMER, lease, start + 1, 10, "rejected", True)
        assert store.webhook_advance(CONSUMER, lease, start + 2, True)
        assert store.event_floor().id == start + 3
        assert [f.event_id for f in store.webhook_failures(CONSUMER)] == [start + 1]
        # Another process stands by until the lease expires.
        assert store.webhook_acquire(CONSUMER, "inst/2-b", 30) is None
        clock.advance(31)
        assert store.webhook_acquire(CONSUMER, "inst/2-b", 30) == start + 2
