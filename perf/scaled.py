"""ci-storm and pull-storm through haproxy on the scaled topology (two dockyard instances
sharing one backend, round robin, no stickiness) against one instance alone, alternated
(A, B, B, A, ...); the table goes to ``perf/RESULTS.md``::

    python -m perf.scaled                       # interim backend, 3 repeats, recorded
    python -m perf.scaled --quick               # tiny sizes, 1 repeat, not recorded
    python -m perf.scaled --backend pg-s3       # PostgreSQL + S3 (SeaweedFS)

The topology is the end-to-end suite's (``tests/topology.py``: needs the test extras
and Debian's haproxy). The single instance has a backend of its own (same kind, same
settings, same ``--workers``), so neither sees the other's blobs: ci-storm pushes the
same images to both in a repeat. A's CPU figures sum both instances and haproxy.

``--backend pg-s3`` starts a temporary PostgreSQL cluster and a SeaweedFS S3 gateway (the
test suite's tests/pgserver.py and tests/seaweed.py, as perf.meta and perf.s3client do):
A gets one database and one bucket, B another pair, both connected directly (no test
relays). Their CPU is not in the figures (dockyard's and haproxy's only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from perf import report
from perf.modes import quick_and_record, record, recording
from perf.run import run_scenarios
from perf.scenarios import Params, Record, Target
from perf.servers import Dockyard

if TYPE_CHECKING:
    from tests.topology import Backend

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
    quick_and_record(ap, "tiny sizes, 1 repeat")
    args = ap.parse_args(argv)
    if shutil.which("haproxy") is None:
        print("haproxy is not installed: apt-get install -y haproxy", file=sys.stderr)
        return 2
    # The e2e suite's harness, so both measure the same topology.
    from tests.topology import Topology

    params = Params.quick() if args.quick else Params()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    keep = recording(args)
    started = dt.datetime.now(dt.UTC)
    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="perf-scaled-") as tmp, ExitStack() as servers:
        directory = Path(tmp)
        backend, single_settings = backends(args.backend, directory, servers)
        topology = Topology(
            directory / "topology", backend, instances=2, workers=args.workers, env=SETTINGS
        )
        single = Dockyard(workers=args.workers, settings={**SETTINGS, **single_settings})
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


def backends(kind: str, directory: Path, servers: ExitStack) -> tuple[Backend, dict[str, str]]:
    """A's backend and B's settings (a backend of its own, the same kind); servers the
    backends need are started on ``servers``."""
    # The e2e suite's harness and servers, so both measure the same topology.
    from tests.topology import interim_backend, pg_s3_backend

    if kind == "interim":
        return interim_backend(directory / "backend"), {}
    from tests.pgserver import PostgresServer, postgres_bin_dir
    from tests.seaweed import SeaweedServer

    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed: apt-get install -y postgresql")
    postgres = PostgresServer(bin_dir).start()
    servers.callback(postgres.stop)
    seaweed = servers.enter_context(SeaweedServer(directory / "seaweed"))
    a = pg_s3_backend(
        directory / "backend",
        postgres.new_database(),
        seaweed,
        seaweed.new_bucket("perf-a"),
        relayed=False,
    )
    b = pg_s3_backend(
        directory / "single",
        postgres.new_database(),
        seaweed,
        seaweed.new_bucket("perf-b"),
        relayed=False,
    )
    return a, {**b.env, **b.instance_env(0)}


def setup_line(backend: str, workers: int, repeats: int) -> str:
    what: dict[str, Any] = {
        "interim": "one SQLite file and one blob directory on the local disk, shared "
        "(the interim until PostgreSQL + S3)",
        "pg-s3": "one PostgreSQL database (a local temporary cluster, fsync off) and one "
        "S3 bucket on SeaweedFS (`weed server -s3`, local), both over loopback TCP; their "
        "CPU is not counted",
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
