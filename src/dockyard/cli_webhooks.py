"""``dockyard events webhooks list | failed | redeliver``: the operator's view of delivery.

These commands read the same configuration as ``dockyard serve`` (``--config``,
``DOCKYARD_*``) to find the database and the configured endpoints, and work while the
server runs: ``redeliver`` only marks failed events in the database; the process that
holds the endpoint's lease sends them within about a second (``events.consumer.IDLE_CHECK``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dockyard.config import Settings
from dockyard.events.schema import timestamp
from dockyard.meta.open import open_meta
from dockyard.meta.records import StoreUnavailable
from dockyard.meta.store import MetadataStore

SettingsLoader = Callable[[argparse.Namespace], Settings]


def add_parsers(
    events_sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    """Add ``webhooks`` and its subcommands to the ``dockyard events`` group."""
    webhooks = events_sub.add_parser("webhooks", help="webhook endpoints and failed deliveries")
    sub = webhooks.add_subparsers(dest="webhooks_command", required=True)

    ls = sub.add_parser("list", help="endpoints, their cursors, lease holders and failures")
    ls.add_argument("--config", "-c", help="TOML config file")
    ls.add_argument("--json", action="store_true", help="one JSON document")
    ls.set_defaults(func=lambda args: _list(args, settings(args)))

    failed = sub.add_parser("failed", help="events given up on after max_attempts")
    failed.add_argument("--config", "-c", help="TOML config file")
    failed.add_argument("--endpoint", help="only this endpoint's failures")
    failed.add_argument("--json", action="store_true", help="one JSON document")
    failed.set_defaults(func=lambda args: _failed(args, settings(args)))

    redeliver = sub.add_parser("redeliver", help="have the running server send failed events again")
    redeliver.add_argument("--config", "-c", help="TOML config file")
    redeliver.add_argument("--endpoint", required=True, help="endpoint name")
    which = redeliver.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", type=int, help="id of one failed event")
    which.add_argument("--all", action="store_true", help="every failed event of the endpoint")
    redeliver.set_defaults(func=lambda args: _redeliver(args, settings(args)))


class NoDatabase(Exception):
    pass


@contextmanager
def open_store(settings: Settings) -> Iterator[MetadataStore]:
    path = settings.database_path
    if not settings.database.url and not path.exists():
        raise NoDatabase(
            f"no database at {path} (has `dockyard serve` run with this configuration?)"
        )
    meta = open_meta(settings)
    try:
        try:
            meta.migrate()  # an older database gains the webhook tables; a no-op otherwise
        except StoreUnavailable as e:
            raise NoDatabase(f"database: {e}") from None
        yield meta
    finally:
        meta.close()


def _fail(message: str) -> int:
    print(f"dockyard: {message}", file=sys.stderr)
    return 1


def output(args: argparse.Namespace, doc: dict[str, Any], show: Callable[[Any], None]) -> int:
    """Print ``doc`` as JSON with ``--json``, else by ``show``; 0 (the commands here,
    ``dockyard scan`` and ``dockyard replication status``)."""
    try:
        if args.json:
            print(json.dumps(doc, indent=2))
        else:
            show(doc)
        sys.stdout.flush()
    except BrokenPipeError:
        # `| head` closed the pipe: stop quietly, and keep Python's exit flush from failing.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return 0


def _time(ts: float | None) -> str | None:
    return None if ts is None else timestamp(ts)


def _list(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with open_store(settings) as meta:
            cursors = {c.name: c for c in meta.webhook_cursors()}
            end = meta.last_event_id()
    except NoDatabase as e:
        return _fail(str(e))
    now = time.time()
    rows: list[dict[str, Any]] = []
    configured = {h.name: h for h in settings.webhooks}
    # Replication's push consumers share the cursor table: `dockyard replication status`;
    # so does the scan queue's consumer "scanning" (scanning/queue.py): `dockyard scan status`.
    stale = {
        n
        for n in set(cursors) - set(configured)
        if not n.startswith("replication:") and n != "scanning"
    }
    for name in list(configured) + sorted(stale):
        hook, c = configured.get(name), cursors.get(name)
        live = c is not None and c.lease is not None and (c.lease_expires or 0) > now
        rows.append(
            {
                "name": name,
                "configured": hook is not None,
                "url": hook.url if hook else None,
                "format": hook.format if hook else None,
                "cursor": c.cursor if c else None,
                "log_end": end,
                "lease": c.lease if c and live else None,
                "lease_expires": _time(c.lease_expires) if c and live else None,
                "last_delivered": _time(c.delivered) if c else None,
                "failed": c.failed if c else 0,
            }
        )
    return output(args, {"endpoints": rows}, lambda doc: _print_list(doc["endpoints"], end))


def _print_list(rows: list[dict[str, Any]], end: int) -> None:
    if not rows:
        print("no webhook endpoints configured (add [[webhooks]] tables; see docs/webhooks.md)")
        return
    print(f"event log ends at {end}")
    for r in rows:
        cursor = "not started" if r["cursor"] is None else str(r["cursor"])
        print(f"{r['name']}")
        print(f"  url:            {r['url'] or '(no longer configured)'}")
        if r["format"]:
            print(f"  format:         {r['format']}")
        print(f"  cursor:         {cursor}")
        print(f"  lease holder:   {r['lease'] or '-'}")
        print(f"  last delivered: {r['last_delivered'] or '-'}")
        print(f"  failed events:  {r['failed']}")


def _failed(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with open_store(settings) as meta:
            failures = meta.webhook_failures(args.endpoint)
            if args.endpoint is None:  # replication's consumers: `dockyard replication status`
                failures = [f for f in failures if not f.name.startswith("replication:")]
            events = {f.event_id: meta.event(f.event_id) for f in failures}
    except NoDatabase as e:
        return _fail(str(e))
    rows: list[dict[str, Any]] = []
    for f in failures:
        ev = events[f.event_id]
        rows.append(
            {
                "endpoint": f.name,
                "event_id": f.event_id,
                "action": ev.action if ev else None,
                "repository": ev.repository if ev else None,
                "digest": ev.digest if ev else None,
                "tag": ev.tag if ev else None,
                "attempts": f.attempts,
                "last_error": f.last_error,
                "failed": _time(f.failed),
                "redeliver": f.redeliver,
            }
        )
    return output(args, {"failed": rows}, lambda doc: _print_failed(doc["failed"]))


def _print_failed(rows: list[dict[str, Any]]) -> None:
    if not rows:
        print("no failed deliveries")
        return
    for r in rows:
        what = " ".join(str(r[k]) for k in ("action", "repository", "digest", "tag") if r[k])
        pending = " (redelivery pending)" if r["redeliver"] else ""
        print(f"{r['endpoint']} event {r['event_id']}: {what or '(not in the log)'}{pending}")
        print(f"  {r['attempts']} attempts, last at {r['failed']}: {r['last_error']}")


def _redeliver(args: argparse.Namespace, settings: Settings) -> int:
    if args.endpoint not in {h.name for h in settings.webhooks}:
        return _fail(
            f"no webhook endpoint named {args.endpoint!r} in the configuration"
            " (the server only delivers to configured endpoints)"
        )
    try:
        with open_store(settings) as meta:
            marked = meta.webhook_mark_redeliver(args.endpoint, None if args.all else args.event)
    except NoDatabase as e:
        return _fail(str(e))
    if not args.all and marked == 0:
        return _fail(f"event {args.event} is not a failed delivery to {args.endpoint!r}")
    print(
        f"marked {marked} failed event{'s' if marked != 1 else ''} of {args.endpoint!r} for"
        " redelivery; the running server sends them shortly"
    )
    return 0
