"""``dockyard gc [--config FILE] [--dry-run] [--json] [--walk-storage]``: one garbage
collection, safe while the server runs (``docs/gc.md``).

Exit status: 0 done; 3 another collector holds the lease (busy); 1 the lease was lost
mid-run, or the database or storage failed; 2 a configuration error. With ``--json`` the
one document on stdout says so too (``{"error": "busy", ...}``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

import trio

from dockyard.config import Settings

SettingsLoader = Callable[[argparse.Namespace], Settings]

EXIT_BUSY = 3


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    gc = sub.add_parser(
        "gc",
        help="delete unreferenced manifests, links and blobs (safe while serving)",
        description="Run one garbage collection: untagged manifests a retention policy lets"
        " go, links and blobs nothing references, older than [gc] grace_period. Safe while"
        " the registry serves. See docs/gc.md.",
    )
    gc.add_argument("--config", "-c", help="TOML config file")
    gc.add_argument("--dry-run", action="store_true", help="list what would go; delete nothing")
    gc.add_argument("--json", action="store_true", help="print one JSON document")
    gc.add_argument(
        "--walk-storage",
        action="store_true",
        help="also list the storage for bytes with no metadata (slow on object stores)",
    )
    gc.set_defaults(func=lambda args: run(args, settings(args)))


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def _failed(args: argparse.Namespace, error: str, message: str, status: int) -> int:
    if args.json:
        print(json.dumps({"error": error, "message": message}))
    print(f"dockyard gc: {message}", file=sys.stderr)
    return status


def _progress() -> Callable[[str], None] | None:
    if not sys.stderr.isatty():
        return None

    def show(text: str) -> None:
        sys.stderr.write(f"\r\x1b[K{text[:100]}")
        sys.stderr.flush()

    return show


def _print(report: dict[str, Any]) -> None:
    verb = "would delete" if report["dry_run"] else "deleted"
    for item in report["items"]:
        where = f"{item['repository']}@" if item["repository"] else ""
        print(
            f"{verb} {item['kind']} {where}{item['digest']} ({_human(item['size'])}):"
            f" {item['reason']}"
        )
    if report["items_truncated"]:
        print("(list truncated; the totals count everything)")
    print(
        f"{verb} {report['deleted_manifests']} manifests, {report['deleted_links']} links,"
        f" {report['deleted_blobs']} blobs; {_human(report['freed_bytes'])} freed"
        f" in {report['duration_seconds']:.1f} s"
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    from dockyard.core.common import EventMaker
    from dockyard.core.gc import Collector
    from dockyard.core.jobs import JobBusy, LeaseLost
    from dockyard.meta.open import open_meta
    from dockyard.meta.records import StoreError
    from dockyard.meta.store import Database
    from dockyard.services import build_storage, instance_name
    from dockyard.storage.base import StorageError

    if not settings.database.url and not settings.database_path.exists():
        return _failed(args, "no_database", f"no database at {settings.database_path}", status=1)
    meta = open_meta(settings)
    progress = _progress()
    try:
        meta.migrate()
        storage = build_storage(settings)
        instance = instance_name(settings)
        collector = Collector(
            Database(meta, settings.database.threads),
            storage,
            EventMaker(instance),
            settings.gc,
            settings.retention.policies,
            instance=instance,
            progress=progress,
        )

        async def collect() -> dict[str, Any]:
            try:
                report = await collector.run(args.dry_run, args.walk_storage or None)
            finally:
                await storage.aclose()
            return report.as_dict()

        try:
            report = trio.run(collect)
        finally:
            if progress is not None:
                sys.stderr.write("\r\x1b[K")
    except JobBusy as e:
        return _failed(args, "busy", str(e), EXIT_BUSY)
    except LeaseLost as e:
        return _failed(args, "lease_lost", str(e), 1)
    except (StoreError, StorageError) as e:
        return _failed(args, "failed", f"{type(e).__name__}: {e}", 1)
    finally:
        meta.close()
    if args.json:
        print(json.dumps(report))
    else:
        _print(report)
    return 0
