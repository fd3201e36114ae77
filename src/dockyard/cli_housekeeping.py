"""``dockyard events prune`` and ``dockyard usage``: the event log's pruning and the
storage usage report, run by hand against the configured database (docs/gc.md)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable

import trio

from dockyard.cli_webhooks import NoDatabase, open_store
from dockyard.config import Settings
from dockyard.core.prune import EventPruner, PruneReport
from dockyard.meta.store import Database
from dockyard.meta.usage import Usage

SettingsLoader = Callable[[argparse.Namespace], Settings]


def add_prune_parser(
    events_sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    prune = events_sub.add_parser(
        "prune",
        help="delete old events (events.keep_pulls_days, events.keep_days)",
        description="Delete events older than their age limit, never one a webhook endpoint"
        " has not handled yet. One prune runs at a time across every instance.",
    )
    prune.add_argument("--config", "-c", help="TOML config file")
    prune.add_argument("--dry-run", action="store_true", help="count, delete nothing")
    prune.add_argument("--json", action="store_true", help="one JSON document")
    prune.set_defaults(func=lambda args: _prune(args, settings(args)))


def add_usage_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    usage = sub.add_parser(
        "usage",
        help="storage used per namespace and repository (each blob once per scope)",
    )
    usage.add_argument("--config", "-c", help="TOML config file")
    usage.add_argument("--top", type=int, default=20, help="show this many of each (default 20)")
    usage.add_argument("--json", action="store_true", help="one JSON document")
    usage.set_defaults(func=lambda args: _usage(args, settings(args)))


def _fail(message: str) -> int:
    print(f"dockyard: {message}", file=sys.stderr)
    return 1


def _prune(args: argparse.Namespace, settings: Settings) -> int:
    from dockyard.services import instance_name

    events = settings.events
    interactive = sys.stderr.isatty() and not args.json

    def progress(report: PruneReport) -> None:
        if interactive:
            print(f"\rdeleted {report.deleted} events...", end="", file=sys.stderr, flush=True)

    try:
        with open_store(settings) as meta:
            pruner = EventPruner(
                Database(meta, 1),
                instance=instance_name(settings),
                keep_pulls_days=events.keep_pulls_days,
                keep_days=events.keep_days,
                batch_size=events.prune_batch_size,
            )
            report = trio.run(pruner.run, args.dry_run, progress)
    except NoDatabase as e:
        return _fail(str(e))
    if interactive:
        print("\r", end="", file=sys.stderr)
    if report is None:
        return _fail("another prune is running (the prune job lease is taken); try again later")
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    verb = "would delete" if report.dry_run else "deleted"
    print(
        f"{verb} {report.deleted} events ({report.deleted_pulls} pull,"
        f" {report.deleted_others} other) in {report.seconds:.1f} s"
    )
    if report.held_back:
        print(f"held back by {report.held_by}: it has not handled event {report.floor} yet")
    return 0


def _usage_json(u: Usage) -> dict[str, object]:
    return {"name": u.name, "repositories": u.repositories, **u.figures()}


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{n} B"
        value /= 1024
    return f"{n} B"


def _usage(args: argparse.Namespace, settings: Settings) -> int:
    if args.top < 1:
        return _fail("--top must be at least 1")
    try:
        with open_store(settings) as meta:
            total = meta.registry_usage()
            namespaces = meta.usage_by_namespace(args.top)
            repositories = meta.usage_by_repository(args.top)
    except NoDatabase as e:
        return _fail(str(e))
    if args.json:
        doc = {
            "total": _usage_json(total),
            "namespaces": [_usage_json(u) for u in namespaces],
            "repositories": [_usage_json(u) for u in repositories],
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"total: {_size(total.bytes)} in {total.repositories} repositories ({total.blobs} blobs)")
    for title, rows in (("namespaces", namespaces), ("repositories", repositories)):
        print(f"\n{title} (most bytes first):")
        for u in rows:
            print(f"  {_size(u.bytes):>12}  {u.name}")
    return 0
