"""ci-storm and pull-storm through haproxy on the scaled topology (two dockyard instances
sharing one backend, round robin, no stickiness) against one instance alone, alternated
(A, B, B, A, ...); the table goes to ``perf/RESULTS.md``::

    python -m perf.scaled                       # interim backend, 3 repeats, recorded
    python -m perf.scaled --quick               # tiny sizes, 1 repeat, not recorded
    python -m perf.scaled --backend pg-s3       # PostgreSQL + S3 (once they are merged)

The topology is the end-to-end suite's (``tests/topology.py``: needs the test extras
and Debian's haproxy). The single instance has a backend of its own (same kind, same
settings, same ``--workers``), so neither sees the other's blobs: ci-storm pushes the
same images to both in a repeat. A's CPU figures sum both instances and haproxy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from perf import report
from perf.modes import record
from perf.run import run_scenarios
from perf.scenarios import Params, Record, Target
from perf.servers import Dockyard

SCENARIOS = ["ci-storm", "pull-storm"]
BACKENDS = ["interim", "pg-s3"]
# The access log is off, as perf.servers.Dockyard has it (perf.logs measures its cost).
SETTINGS = {"DOCKYARD_LOG_ACCESS": "false"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m perf.scaled",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--backend", choices=BACKENDS, default="interim")
    ap.add_argument("--repeats", type=int, default=None, help="alternated (default 3)")
    ap.add_argument("--workers", type=int, default=1, help="hypercorn workers per instance")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat")
    ap.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="append to perf/RESULTS.md (default: on unless --quick)",
    )
    args = ap.parse_args(argv)
    if args.backend == "pg-s3":
        print(
            "--backend pg-s3 is not available yet: the PostgreSQL metadata store and the "
            "s3 driver are not merged (use --backend interim)",
            file=sys.stderr,
        )
        return 2
    if shutil.which("haproxy") is None:
        print("haproxy is not installed: apt-get install -y haproxy", file=sys.stderr)
        return 2
    # The e2e suite's harness, so both measure the same topology.
    from tests.topology import Topology, interim_backend

    params = Params.quick() if args.quick else Params()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    keep = args.record if args.record is not None else not args.quick
    started = dt.datetime.now(dt.UTC)
    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="perf-scaled-") as tmp:
        directory = Path(tmp)
        topology = Topology(
            directory / "topology",
            interim_backend(directory / "backend"),
            instances=2,
            workers=args.workers,
            env=SETTINGS,
        )
        single = Dockyard(workers=args.workers, settings=SETTINGS)
        try:
            topology.start()
            single.start()
            targets = [
                Target("A", "2 instances + haproxy", topology.url, topology.pids()),
                Target("B", "1 instance", single.url, [single.pid]),
            ]
            for t in targets:
                print(f"{t.label}: {t.name} at {t.url} pids {t.pids}", flush=True)
            records = run_scenarios(SCENARIOS, params, targets, repeats)
        finally:
            single.stop()
            topology.stop()
    names = {"A": "2 instances + haproxy", "B": "1 instance"}
    table = report.table(records, names, goals=False)
    print()
    print(table)
    if keep:
        setup = setup_line(args.backend, args.workers, repeats)
        record("perf.scaled", started, report.machine(), setup, table)
        print("appended a section to perf/RESULTS.md")
    failures = sum(r.failures for r in records)
    return 1 if failures else 0


def setup_line(backend: str, workers: int, repeats: int) -> str:
    what: dict[str, Any] = {
        "interim": "one SQLite file and one blob directory on the local disk, shared "
        "(the interim until PostgreSQL + S3)",
    }
    return (
        f"A: two `dockyard serve --workers {workers}` instances behind haproxy (round "
        f"robin, no stickiness, /readyz checks), backend {backend}: {what[backend]}; CPU "
        f"is both instances' and haproxy's. B: one instance, --workers {workers}, a "
        f"backend of its own. {repeats} alternated repeats (A, B, B, A, ...); figures are "
        "median [min-max], A/B ratios per repeat."
    )


if __name__ == "__main__":
    sys.exit(main())
