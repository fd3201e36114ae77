"""The SQLite schema: ``MIGRATIONS``, applied in order by ``apply``.

Invariants: migrations are only ever appended, never edited, so a database made by any
earlier release upgrades in place; ``PRAGMA user_version`` records how many have been
applied, and ``apply`` runs inside the caller's ``BEGIN IMMEDIATE`` transaction, so
several processes starting at once apply each migration exactly once.

Schema after the last migration::

    repositories(id, name UNIQUE, created)
    blobs(digest PK, size, created)                       bytes are in the storage driver
    repository_blobs(repository_id, digest, linked)       which blobs a repository may serve
    manifests(repository_id, digest, media_type, artifact_type, subject, size, payload,
              annotations, pushed)
    manifest_references(repository_id, manifest_digest, child_digest, kind)
    tags(repository_id, name, digest, pushed)
    uploads(id, repository, algorithm, received, hash_state, driver_state, lease,
            lease_expires, started, touched)              lease: see meta/leases.py
    events(id AUTOINCREMENT, ts, action, repository, digest, media_type, size, tag, body)
    webhook_cursors(name PK, cursor, lease, lease_expires, created, delivered)
                                                          last event id handled per endpoint;
                                                          the lease says who delivers now
    webhook_failures(name, event_id, attempts, last_error, failed, redeliver)
                                                          events given up on; redeliver=1
                                                          asks the deliverer to try again
    secrets(name PK, value, created)                      keys every instance shares
    blobs.touched, manifests.touched                      last time a push, link or mount
                                                          relied on the row: garbage
                                                          collection spares it for the
                                                          grace period after (docs/gc.md)
    tags.pulled, manifests.pulled                         last pull (retention)
    blob_deletions(digest PK, marked)                     blobs whose rows are gone and whose
                                                          bytes are being deleted; no upload
                                                          may rely on stored bytes of these
    job_leases(name PK, lease, lease_expires)             one holder at a time of a job
                                                          (gc, retention) across instances
    events_by_ts                                          pruning and the dashboard's windows
    manifests.upstream, repository_blobs.upstream         the [[upstreams]] name content was
                                                          cached from (NULL: pushed here)
    tags.resolved                                         last time a cached tag was resolved
                                                          upstream (NULL: pushed here)
    replication_runs(name PK, started, finished, copied, failed, last_error)
                                                          pull-mode replication: each rule's
                                                          last run (docs/proxy.md)
    scans(digest PK, repository, media_type, status, requested, started, finished,
          scanner, db_version, db_updated, critical, high, medium, low, unknown,
          findings, report_digest, attempts, next_attempt, last_error, lease,
          lease_expires)                                  one row per scanned manifest: its
                                                          queue state, its summary, the
                                                          report referrer (docs/scanning.md)
    robot_tokens(name PK, secret_hash, scopes, created, expires, revoked, last_used,
                 created_by)                              long-lived scoped credentials of
                                                          pipelines (docs/ci.md)
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE repositories (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        created REAL NOT NULL
    );
    CREATE TABLE blobs (
        digest TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        created REAL NOT NULL
    );
    CREATE TABLE repository_blobs (
        repository_id INTEGER NOT NULL REFERENCES repositories(id),
        digest TEXT NOT NULL REFERENCES blobs(digest),
        linked REAL NOT NULL,
        PRIMARY KEY (repository_id, digest)
    ) WITHOUT ROWID;
    CREATE INDEX repository_blobs_by_digest ON repository_blobs(digest);
    CREATE TABLE manifests (
        repository_id INTEGER NOT NULL REFERENCES repositories(id),
        digest TEXT NOT NULL,
        media_type TEXT NOT NULL,
        artifact_type TEXT,
        subject TEXT,
        size INTEGER NOT NULL,
        payload BLOB NOT NULL,
        annotations TEXT,
        pushed REAL NOT NULL,
        PRIMARY KEY (repository_id, digest)
    );
    CREATE INDEX manifests_by_subject ON manifests(repository_id, subject)
        WHERE subject IS NOT NULL;
    CREATE TABLE manifest_references (
        repository_id INTEGER NOT NULL,
        manifest_digest TEXT NOT NULL,
        child_digest TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('blob', 'manifest')),
        PRIMARY KEY (repository_id, manifest_digest, child_digest)
    ) WITHOUT ROWID;
    CREATE INDEX manifest_references_by_child ON manifest_references(child_digest);
    CREATE TABLE tags (
        repository_id INTEGER NOT NULL REFERENCES repositories(id),
        name TEXT NOT NULL,
        digest TEXT NOT NULL,
        pushed REAL NOT NULL,
        pulled REAL,
        PRIMARY KEY (repository_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX tags_by_digest ON tags(repository_id, digest);
    CREATE TABLE uploads (
        id TEXT PRIMARY KEY,
        repository TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        received INTEGER NOT NULL,
        hash_state BLOB,
        driver_state TEXT NOT NULL,
        lease TEXT,
        lease_expires REAL,
        started REAL NOT NULL,
        touched REAL NOT NULL
    );
    CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ts REAL NOT NULL,
        action TEXT NOT NULL,
        repository TEXT,
        digest TEXT,
        media_type TEXT,
        size INTEGER,
        tag TEXT,
        body TEXT NOT NULL
    );
    """,
    # 2: webhook delivery state (events/webhooks.py).
    """
    CREATE TABLE webhook_cursors (
        name TEXT PRIMARY KEY,
        cursor INTEGER NOT NULL,
        lease TEXT,
        lease_expires REAL,
        created REAL NOT NULL,
        delivered REAL
    );
    CREATE TABLE webhook_failures (
        name TEXT NOT NULL,
        event_id INTEGER NOT NULL,
        attempts INTEGER NOT NULL,
        last_error TEXT NOT NULL,
        failed REAL NOT NULL,
        redeliver INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (name, event_id)
    ) WITHOUT ROWID;
    CREATE INDEX webhook_failures_to_redeliver ON webhook_failures(name, event_id)
        WHERE redeliver = 1;
    """,
    # 3: tags.pulled was never written. DROP COLUMN needs SQLite 3.35 (Debian bookworm,
    # the container's base, has 3.40).
    """
    ALTER TABLE tags DROP COLUMN pulled;
    """,
    # 4: keys every worker and instance must share (meta/store.py SharedSecrets).
    """
    CREATE TABLE secrets (
        name TEXT PRIMARY KEY,
        value BLOB NOT NULL,
        created REAL NOT NULL
    );
    """,
    # 5: garbage collection, retention and event pruning (docs/gc.md). NULL touched means
    # "never relied on since created/pushed".
    """
    ALTER TABLE blobs ADD COLUMN touched REAL;
    UPDATE blobs SET touched = created;
    ALTER TABLE manifests ADD COLUMN touched REAL;
    UPDATE manifests SET touched = pushed;
    ALTER TABLE manifests ADD COLUMN pulled REAL;
    ALTER TABLE tags ADD COLUMN pulled REAL;
    CREATE TABLE blob_deletions (
        digest TEXT PRIMARY KEY,
        marked REAL NOT NULL
    );
    CREATE TABLE job_leases (
        name TEXT PRIMARY KEY,
        lease TEXT,
        lease_expires REAL
    );
    CREATE INDEX events_by_ts ON events(ts);
    """,
    # 6: the pull-through cache and replication (docs/proxy.md).
    """
    ALTER TABLE manifests ADD COLUMN upstream TEXT;
    ALTER TABLE repository_blobs ADD COLUMN upstream TEXT;
    ALTER TABLE tags ADD COLUMN resolved REAL;
    CREATE TABLE replication_runs (
        name TEXT PRIMARY KEY,
        started REAL,
        finished REAL,
        copied INTEGER NOT NULL DEFAULT 0,
        failed INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    );
    """,
    # 7: vulnerability scans and robot tokens (docs/scanning.md, docs/ci.md).
    """
    CREATE TABLE scans (
        digest TEXT PRIMARY KEY,
        repository TEXT NOT NULL,
        media_type TEXT,
        status TEXT NOT NULL,
        requested REAL NOT NULL,
        started REAL,
        finished REAL,
        scanner TEXT,
        db_version TEXT,
        db_updated REAL,
        critical INTEGER,
        high INTEGER,
        medium INTEGER,
        low INTEGER,
        unknown INTEGER,
        findings TEXT,
        report_digest TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL,
        last_error TEXT,
        lease TEXT,
        lease_expires REAL
    );
    CREATE INDEX scans_due ON scans(status, next_attempt);
    CREATE TABLE robot_tokens (
        name TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        scopes TEXT NOT NULL,
        created REAL NOT NULL,
        expires REAL,
        revoked REAL,
        last_used REAL,
        created_by TEXT
    );
    """,
)


def apply(conn: sqlite3.Connection) -> None:
    """Apply the migrations ``conn``'s database lacks; the caller holds a write transaction."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for i, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # Statements one by one: executescript would commit the caller's transaction.
        for statement in script.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {i}")
