"""What ``dockyard replication status`` shows, read from the store: per push rule and
target its consumer's cursor, backlog, lease holder and failures; per pull rule its last
run. Plain data (``status_rows``) so the CLI and tests share it."""

from __future__ import annotations

import time
from typing import Any

from dockyard.config import Settings
from dockyard.events.schema import timestamp
from dockyard.meta.store import MetadataStore
from dockyard.replication.pull import job_name
from dockyard.replication.rules import CONSUMER_PREFIX, consumer_name


def _time(ts: float | None) -> str | None:
    return None if ts is None else timestamp(ts)


def status_rows(settings: Settings, meta: MetadataStore) -> dict[str, Any]:
    """``{"log_end": id, "rules": [...]}``: one entry per configured rule."""
    now = time.time()
    cursors = {c.name: c for c in meta.webhook_cursors()}
    runs = {r.name: r for r in meta.replication_runs()}
    failures: dict[str, list[Any]] = {}
    for f in meta.webhook_failures():
        failures.setdefault(f.name, []).append(f)
    end = meta.last_event_id()
    rules: list[dict[str, Any]] = []
    for rule in settings.replication:
        entry: dict[str, Any] = {
            "name": rule.name,
            "mode": rule.mode,
            "repositories": rule.repositories,
            "tags": rule.tags,
        }
        if rule.mode == "push":
            targets = []
            for target in rule.targets:
                name = consumer_name(rule, target)
                c = cursors.get(name)
                live = c is not None and c.lease is not None and (c.lease_expires or 0) > now
                failed = sorted(failures.get(name, []), key=lambda f: f.failed)
                targets.append(
                    {
                        "url": target.url,
                        "prefix": target.prefix,
                        "consumer": name,
                        "cursor": c.cursor if c else None,
                        # Every event after the cursor, not only those the rule copies:
                        # counting matches would mean reading them all.
                        "backlog_events": meta.events_after_count(c.cursor) if c else None,
                        "lease": c.lease if c and live else None,
                        "last_copied": _time(c.delivered) if c else None,
                        "failed": len(failed),
                        "last_error": failed[-1].last_error if failed else None,
                        "failed_events": [f.event_id for f in failed][-20:],
                    }
                )
            entry["targets"] = targets
        else:
            run = runs.get(rule.name)
            entry["source"] = {"url": rule.source.url, "prefix": rule.source.prefix}
            entry["interval"] = rule.interval
            entry["job"] = job_name(rule)
            entry["lease"] = meta.replication_job_holder(job_name(rule), now)
            entry["last_run"] = (
                None
                if run is None
                else {
                    "started": _time(run.started),
                    "finished": _time(run.finished),
                    "copied": run.copied,
                    "failed": run.failed,
                    "last_error": run.last_error,
                }
            )
        rules.append(entry)
    # Consumers of rules (or targets) no longer configured keep their cursor, and so the
    # event pruner's floor, as a removed webhook endpoint does: shown so that it is seen.
    configured = {
        consumer_name(r, t) for r in settings.replication if r.mode == "push" for t in r.targets
    }
    unconfigured = [
        {"consumer": name, "cursor": c.cursor, "failed": c.failed}
        for name, c in sorted(cursors.items())
        if name.startswith(CONSUMER_PREFIX) and name not in configured
    ]
    return {"log_end": end, "rules": rules, "unconfigured": unconfigured}
