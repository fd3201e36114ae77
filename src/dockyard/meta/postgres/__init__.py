"""The metadata store on PostgreSQL: ``PostgresMeta``, the SQLite store's twin.

    core.py        the connection pool, write transactions, the event append (event ids
                   in commit order), ``migrate``, shared secrets
    content.py     repositories, blob links, manifests, tags, referrers
    events.py      the event log
    stats.py       the dashboard snapshot
    leases.py      ``meta/leases.py``'s SQL in PostgreSQL's dialect
    (meta/retention.py: tag details, retention's deletes, pulled times; meta/webhooks.py:
    webhook cursors, leases and failures; meta/uploads.py: upload sessions and their
    leases; meta/replication.py: pull-mode replication runs, a consumer's backlog;
    meta/robots.py: robot tokens' rows; both dialects)
    listen.py      event wake-ups across processes (LISTEN/NOTIFY)
    migrations.py  the schema, in step with ``meta/migrations.py``

Same tables, same behaviour: ``tests/meta_conformance.py`` passes unchanged against both.
"""

from __future__ import annotations

from dockyard.meta.cached import CacheStore
from dockyard.meta.postgres.content import ContentStore
from dockyard.meta.postgres.events import EventStore
from dockyard.meta.postgres.listen import EventListener
from dockyard.meta.postgres.stats import StatsStore
from dockyard.meta.replication import ReplicationStore
from dockyard.meta.retention import RetentionStore
from dockyard.meta.robots import RobotStore
from dockyard.meta.scans import ScanStore
from dockyard.meta.uploads import UploadStore
from dockyard.meta.webhooks import WebhookStore

__all__ = ["PostgresMeta"]


class PostgresMeta(
    ContentStore,
    EventStore,
    StatsStore,
    EventListener,
    RetentionStore,
    WebhookStore,
    UploadStore,
    CacheStore,
    ReplicationStore,
    ScanStore,
    RobotStore,
):
    """Every ``MetadataStore`` method, on a PostgreSQL database shared by every worker and
    instance; with ``wait_for_events`` (``EventWakeups``) besides."""
