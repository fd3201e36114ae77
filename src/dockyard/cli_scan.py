"""``dockyard scan REPO@DIGEST [--wait SECONDS] [--json]``: queue a manifest for a scan
(again) in the scan queue the running server works through (docs/scanning.md); with
``--wait``, wait for its result. Exit status 0 when it is scanned (or the artifact is not
an image, so there is nothing to scan), 1 when it failed, is still waiting after
``--wait`` seconds, or is not in the repository.

``dockyard scan status [--json]``: rows per status, and the failing ones with their
reasons and next attempts.

Both read the same configuration as ``dockyard serve`` and work while the server runs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from dockyard.cli_webhooks import NoDatabase, open_store
from dockyard.cli_webhooks import output as _output
from dockyard.config import Settings
from dockyard.meta.store import MetadataStore
from dockyard.oci.manifest import INDEX_TYPES
from dockyard.scanning.queue import index_children, scan_rows
from dockyard.scanning.report import rfc3339
from dockyard.scanning.status import document

SettingsLoader = Callable[[argparse.Namespace], Settings]
FINAL = ("done", "failed", "unsupported")
POLL = 0.5


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    scan = sub.add_parser(
        "scan",
        help="scan REPO@DIGEST (again) now, or `scan status`: the scan queue",
        description="dockyard scan REPO@DIGEST [--wait S] | dockyard scan status",
    )
    scan.add_argument("target", metavar="REPO@DIGEST|status", help="a manifest, or `status`")
    scan.add_argument("--config", "-c", help="TOML config file")
    scan.add_argument("--wait", type=float, default=0.0, help="seconds to wait for the result")
    scan.add_argument("--json", action="store_true", help="one JSON document")
    scan.set_defaults(func=lambda args: _run(args, settings(args)))


def _run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with open_store(settings) as meta:
            if args.target == "status":
                return _output(args, _status(meta), _print_status)
            return _scan(args, meta)
    except NoDatabase as e:
        return _fail(str(e))


def _fail(message: str) -> int:
    print(f"dockyard: {message}", file=sys.stderr)
    return 1


def _scan(args: argparse.Namespace, meta: MetadataStore) -> int:
    repository, at, digest = args.target.partition("@")
    if not at or not repository or ":" not in digest:
        return _fail(f"{args.target!r} is not REPO@DIGEST (or `status`)")
    found = meta.get_manifest(repository, digest)
    if found is None:
        return _fail(f"no manifest {digest} in {repository}")
    meta.scans_enqueue(
        scan_rows(meta, repository, digest, found.media_type, found.payload), again=True
    )
    children = index_children(found.payload) if found.media_type in INDEX_TYPES else []
    digests = [digest, *(d for d, _ in children)]
    deadline = time.monotonic() + max(args.wait, 0.0)
    while True:
        rows = meta.scans_get(digests)
        doc = document(repository, digest, found.media_type, rows, children)
        doc.pop("policy")  # the server's to judge
        if doc["status"] in FINAL or time.monotonic() >= deadline:
            break
        time.sleep(POLL)
    if not args.json and args.wait <= 0:
        print(f"{repository}@{digest} queued; the running server scans it shortly")
        return 0
    _output(args, doc, _print_scan)
    if args.wait <= 0:
        return 0
    return 0 if doc["status"] in ("done", "unsupported") else 1


def _print_scan(doc: dict[str, Any]) -> None:
    print(f"{doc['repository']}@{doc['digest']}: {doc['status']}")
    if doc["summary"] is not None:
        print("  " + ", ".join(f"{n} {s}" for s, n in doc["summary"].items()))
        print(f"  scanner {doc['scanner']}, database of {doc['dbUpdated'] or 'unknown date'}")
        if doc["report"]:
            print(f"  report {doc['report']}")
    for f in doc["findings"]:
        fixed = f" (fixed in {f['fixed']})" if f.get("fixed") else ""
        print(f"  {f['severity']:<8} {f['id']:<20} {f['package']} {f['installed']}{fixed}")
    if doc["lastError"]:
        print(f"  last error: {doc['lastError']} (attempt {doc['attempts']})")
    if doc["nextAttempt"]:
        print(f"  next attempt: {doc['nextAttempt']}")


def _status(meta: MetadataStore) -> dict[str, Any]:
    counts = meta.scans_counts()
    failing = meta.scans_failing(50)
    return {
        "counts": counts,
        "failing": [
            {
                "repository": r.repository,
                "digest": r.digest,
                "status": r.status,
                "attempts": r.attempts,
                "lastError": r.last_error,
                "nextAttempt": None if r.next_attempt is None else rfc3339(r.next_attempt),
            }
            for r in failing
        ],
    }


def _print_status(doc: dict[str, Any]) -> None:
    counts = doc["counts"]
    if not counts:
        print("no scans yet")
    for status in ("queued", "retrying", "running", "done", "unsupported", "failed"):
        if status in counts:
            print(f"{status:<12} {counts[status]}")
    if doc["failing"]:
        print("failing:")
    for f in doc["failing"]:
        when = f" next attempt {f['nextAttempt']}" if f["nextAttempt"] else ""
        print(f"  {f['repository']}@{f['digest']} ({f['status']}, {f['attempts']} attempts){when}")
        print(f"    {f['lastError']}")
