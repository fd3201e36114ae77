"""The metadata store on SQLite: ``SQLiteMeta``, one class composed of a module per domain.

    core.py       connections, write transactions, the event append, ``migrate``
    content.py    repositories, blob links, manifests, tags, referrers
    events.py     the event log
    stats.py      the dashboard snapshot
    (meta/retention.py: tag details, retention's deletes, pulled times; meta/webhooks.py:
    webhook cursors, leases and failures; meta/uploads.py: upload sessions and their
    leases; meta/replication.py: pull-mode replication runs, a consumer's backlog;
    meta/robots.py: robot tokens' rows; both dialects)

The schema is in ``meta/migrations.py``; the lease SQL that uploads and webhooks share is
in ``meta/leases.py``. Each domain class derives from ``SQLiteCore`` and adds methods
only, so a call on ``SQLiteMeta`` is a plain method call: the hot point reads (manifests
and blob sizes, run inline on the event loop) pay for no extra layer.
"""

from __future__ import annotations

from dockyard.meta.cached import CacheStore
from dockyard.meta.replication import ReplicationStore
from dockyard.meta.retention import RetentionStore
from dockyard.meta.robots import RobotStore
from dockyard.meta.scans import ScanStore
from dockyard.meta.sqlite.content import ContentStore
from dockyard.meta.sqlite.events import EventStore
from dockyard.meta.sqlite.stats import StatsStore
from dockyard.meta.uploads import UploadStore
from dockyard.meta.webhooks import WebhookStore

__all__ = ["SQLiteMeta"]


class SQLiteMeta(
    ContentStore,
    EventStore,
    StatsStore,
    RetentionStore,
    WebhookStore,
    UploadStore,
    CacheStore,
    ReplicationStore,
    ScanStore,
    RobotStore,
):
    """Every ``MetadataStore`` method, on one SQLite file shared by all workers."""
