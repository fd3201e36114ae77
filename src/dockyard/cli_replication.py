"""``dockyard replication status``: each rule, its targets' cursors, backlogs, lease
holders and failures (push), its last run (pull). Reads the same configuration as
``dockyard serve`` and works while the server runs.

``dockyard replication redeliver --rule R [--target URL] (--event N | --all)``: mark failed
push events to be copied again (the consumers' rows are in the webhook tables; the lease
holder picks the marks up within a second, as webhook redelivery does)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from dockyard.cli_webhooks import NoDatabase, open_store, output
from dockyard.config import Settings
from dockyard.replication.rules import consumer_name
from dockyard.replication.status import status_rows

SettingsLoader = Callable[[argparse.Namespace], Settings]


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    replication = sub.add_parser("replication", help="replication rules and their progress")
    rsub = replication.add_subparsers(dest="replication_command", required=True)
    status = rsub.add_parser("status", help="cursors, backlogs, leases, failures, last runs")
    status.add_argument("--config", "-c", help="TOML config file")
    status.add_argument("--json", action="store_true", help="one JSON document")
    status.set_defaults(func=lambda args: _status(args, settings(args)))

    again = rsub.add_parser(
        "redeliver", help="have the running server copy failed push events again"
    )
    again.add_argument("--config", "-c", help="TOML config file")
    again.add_argument("--rule", required=True, help="push rule name")
    again.add_argument("--target", help="target url (default: every target of the rule)")
    which = again.add_mutually_exclusive_group(required=True)
    which.add_argument("--event", type=int, help="id of one failed event")
    which.add_argument("--all", action="store_true", help="every failed event")
    again.set_defaults(func=lambda args: _redeliver(args, settings(args)))


def _status(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with open_store(settings) as meta:
            doc = status_rows(settings, meta)
    except NoDatabase as e:
        print(f"dockyard: {e}", file=sys.stderr)
        return 1
    return output(args, doc, _print)


def _redeliver(args: argparse.Namespace, settings: Settings) -> int:
    rule = next((r for r in settings.replication if r.name == args.rule), None)
    if rule is None or rule.mode != "push":
        print(f"dockyard: no push rule named {args.rule!r} in the configuration", file=sys.stderr)
        return 1
    targets = [
        t
        for t in rule.targets
        if args.target is None or t.url.rstrip("/") == args.target.rstrip("/")
    ]
    if not targets:
        print(f"dockyard: rule {rule.name!r} has no target {args.target!r}", file=sys.stderr)
        return 1
    try:
        with open_store(settings) as meta:
            marked = sum(
                meta.webhook_mark_redeliver(
                    consumer_name(rule, t), None if args.all else args.event
                )
                for t in targets
            )
    except NoDatabase as e:
        print(f"dockyard: {e}", file=sys.stderr)
        return 1
    if not args.all and marked == 0:
        print(
            f"dockyard: event {args.event} is not a failed copy of {rule.name!r}", file=sys.stderr
        )
        return 1
    print(
        f"marked {marked} failed event{'s' if marked != 1 else ''} of {rule.name!r} to copy"
        " again; the running server does it shortly"
    )
    return 0


def _print(doc: dict[str, Any]) -> None:
    if not doc["rules"] and not doc["unconfigured"]:
        print("no replication rules configured (add [[replication]] tables; see docs/proxy.md)")
        return
    print(f"event log ends at {doc['log_end']}")
    for old in doc["unconfigured"]:
        print(f"{old['consumer']} (no longer configured)")
        print(f"    cursor:         {old['cursor']}")
        print(f"    failed events:  {old['failed']}")
    for rule in doc["rules"]:
        print(f"{rule['name']} ({rule['mode']})")
        for t in rule.get("targets", []):
            cursor = "not started" if t["cursor"] is None else str(t["cursor"])
            print(f"  target {t['url']}" + (f" (prefix {t['prefix']})" if t["prefix"] else ""))
            print(f"    cursor:         {cursor}")
            print(f"    backlog:        {t['backlog_events']} events after the cursor")
            print(f"    lease holder:   {t['lease'] or '-'}")
            print(f"    last copied:    {t['last_copied'] or '-'}")
            print(f"    failed events:  {t['failed']}")
            if t["last_error"]:
                print(f"    last error:     {t['last_error']}")
        if rule["mode"] == "pull":
            src = rule["source"]
            print(
                f"  source {src['url']}" + (f" (prefix {src['prefix']})" if src["prefix"] else "")
            )
            print(f"    interval:       {rule['interval']:g}s")
            print(f"    running in:     {rule['lease'] or '-'}")
            run = rule["last_run"]
            if run is None:
                print("    last run:       none yet")
            else:
                print(f"    last run:       {run['started']} .. {run['finished'] or '(running)'}")
                print(f"    copied/failed:  {run['copied']}/{run['failed']}")
                if run["last_error"]:
                    print(f"    last error:     {run['last_error']}")
