"""``dockyard retention run [--dry-run] [--json]``: apply the retention policies now.

Reads the same configuration as ``dockyard serve`` and works while the server runs: the
run takes the ``retention`` job lease (exit 3 if another run holds it) and deletes tags
in small transactions that re-check each tag, so pushes during a run are never lost.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import trio

from dockyard.cli_webhooks import NoDatabase, open_store
from dockyard.config import Settings
from dockyard.core.jobs import JobBusy
from dockyard.core.retention import Policies, Retention, RetentionReport
from dockyard.meta.store import Database

SettingsLoader = Callable[[argparse.Namespace], Settings]
EXIT_BUSY = 3


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    retention = sub.add_parser("retention", help="retention policies (docs/gc.md)")
    retention_sub = retention.add_subparsers(dest="retention_command", required=True)
    run = retention_sub.add_parser("run", help="delete the tags the policies select, now")
    run.add_argument("--config", "-c", help="TOML config file")
    run.add_argument("--dry-run", action="store_true", help="only say what would be deleted")
    run.add_argument("--json", action="store_true", help="one JSON document")
    run.set_defaults(func=lambda args: _run(args, settings(args)))


def as_json(report: RetentionReport) -> dict[str, Any]:
    return {
        "dry_run": report.dry_run,
        "deleted_tags": report.deleted_tags,
        "bytes": report.bytes,
        "repositories": report.repositories,
        "items": [
            {
                "repository": i.repository,
                "tag": i.tag,
                "digest": i.digest,
                "size": i.size,
                "rule": i.rule,
            }
            for i in report.items
        ],
    }


def _progress(report: RetentionReport, repository: str) -> None:
    verb = "selected" if report.dry_run else "deleted"
    line = f"{report.repositories} repositories, {report.deleted_tags} tags {verb}: {repository}"
    sys.stderr.write(f"\r\x1b[K{line[:120]}")
    sys.stderr.flush()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from dockyard.services import instance_name  # the server's wiring: only when run

    tty = sys.stderr.isatty()
    try:
        with open_store(settings) as meta:
            db = Database(meta, 2)
            retention = Retention(
                db, Policies(settings.retention.policies), f"{instance_name(settings)}-cli"
            )
            report = trio.run(retention.run, args.dry_run, _progress if tty else None)
    except NoDatabase as e:
        print(f"dockyard: {e}", file=sys.stderr)
        return 1
    except JobBusy:
        print("dockyard: another retention run holds the lease; try again later", file=sys.stderr)
        return EXIT_BUSY
    finally:
        if tty:
            sys.stderr.write("\r\x1b[K")
    if args.json:
        print(json.dumps(as_json(report), indent=2))
        return 0
    if not settings.retention.policies:
        print("no retention policies configured (add [[retention.policies]]; see docs/gc.md)")
        return 0
    verb = "would delete" if report.dry_run else "deleted"
    for i in report.items:
        print(f"{verb} {i.repository}:{i.tag}  {i.digest}  {i.size} bytes  ({i.rule})")
    print(
        f"{verb} {report.deleted_tags} tags ({report.bytes} bytes of images) in"
        f" {report.repositories} repositories with a policy"
    )
    return 0
