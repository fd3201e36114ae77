"""What the PostgreSQL metadata store costs against the embedded SQLite: manifest HEAD
rate and server CPU per request, with the database server's own CPU beside it.

Three ``dockyard serve`` processes of the same build and worker count run at once: one on
SQLite, two on one temporary PostgreSQL cluster (Debian's ``postgresql`` package, started
as tests/pgserver.py starts it for the tests), reached over loopback TCP (``postgres``,
as a database on another machine is) and over its Unix socket (``postgres-unix``, an
option when it runs on the same machine). Runs alternate between them and the figures
are medians over the repeats::

    python -m perf.meta --repeats 5               # prints, and appends to perf/RESULTS.md
    python -m perf.meta --repeats 1 --no-record   # a smoke run

Target: PostgreSQL costs dockyard at most 1.3x SQLite's server CPU per HEAD (the PostgreSQL
server's own CPU is its own column: it is work another machine does in a deployment).
"""

from __future__ import annotations

import datetime as dt
import statistics
import sys
import urllib.parse

from tests.pgserver import PostgresServer, postgres_bin_dir

from perf.modes import (
    HEAD_HEADERS,
    Results,
    alternated,
    common_args,
    head_load,
    machine,
    push_images,
    ratio_table,
    record,
    report,
)
from perf.procstat import cpu_seconds, process_tree
from perf.servers import Dockyard

MODES = ("sqlite", "postgres", "postgres-unix")
TARGET = 1.3


def run(
    repeats: int, duration: float, connections: int, workers: int
) -> tuple[Results, PostgresServer]:
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise SystemExit("PostgreSQL is not installed: apt-get install -y postgresql")
    pg = PostgresServer(bin_dir).start()
    servers: dict[str, Dockyard] = {}
    results: Results = {m: [] for m in MODES}
    try:
        url = pg.new_database()
        # libpq takes a socket directory as the host, percent-encoded in a URL.
        unix_url = url.replace("127.0.0.1", urllib.parse.quote(str(pg.dir), safe=""))
        urls = {"postgres": url, "postgres-unix": unix_url}
        for mode in MODES:
            settings = {"DOCKYARD_DATABASE_URL": urls[mode]} if mode in urls else {}
            server = Dockyard(workers=workers, settings=settings)
            server.start()
            servers[mode] = server
            targets = push_images(server)
        assert pg.proc is not None
        for repeat in range(repeats):
            for mode in alternated(MODES, repeat):
                db_pids = process_tree([pg.proc.pid])
                db_before = cpu_seconds(db_pids)
                figures = head_load(servers[mode], targets, HEAD_HEADERS, connections, duration)
                db_cpu = cpu_seconds(process_tree([pg.proc.pid])) - db_before
                figures["db_cpu_us_per_req"] = 1e6 * db_cpu / max(figures["done"], 1)
                results[mode].append(figures)
                report(repeat, mode, figures)
    finally:
        for server in servers.values():
            server.stop()
        pg.stop()
    return results, pg


def cpu_ratio(results: Results) -> float:
    """PostgreSQL's dockyard CPU per HEAD over SQLite's: the median of the repeats' ratios."""
    return statistics.median(
        p["server_cpu_us_per_req"] / s["server_cpu_us_per_req"]
        for p, s in zip(results["postgres"], results["sqlite"], strict=True)
    )


def table(results: Results) -> str:
    def db_cpu(mine: list[dict[str, float]], base: list[dict[str, float]]) -> str:
        return f"{statistics.median(r['db_cpu_us_per_req'] for r in mine):.0f}"

    def cpu_vs_base(mine: list[dict[str, float]], base: list[dict[str, float]]) -> str:
        ratios = [
            m["server_cpu_us_per_req"] / b["server_cpu_us_per_req"]
            for m, b in zip(mine, base, strict=True)
        ]
        return f"{statistics.median(ratios):.2f}"

    return ratio_table(
        "metadata store",
        MODES,
        "sqlite",
        results,
        [
            ("dockyard CPU ratio to sqlite", cpu_vs_base),
            ("PostgreSQL server CPU-us/req", db_cpu),
        ],
    )


def main() -> int:
    args = common_args(__doc__.splitlines()[0]).parse_args()
    started = dt.datetime.now(dt.UTC)
    m = machine()
    results, _ = run(args.repeats, args.duration, args.connections, args.workers)
    text = table(results)
    ratio = cpu_ratio(results)
    verdict = f"dockyard CPU per HEAD, PostgreSQL / SQLite: {ratio:.2f} (target <= {TARGET})"
    print(text)
    print(verdict)
    failed = sum(int(r["failed"]) for rs in results.values() for r in rs)
    if args.record:
        setup = (
            f"Manifest HEAD by tag, {args.connections} connections, {args.duration:g} s per "
            f"measurement, dockyard --workers {args.workers} per server, three servers "
            "alternated (SQLite; PostgreSQL on a local temporary cluster over loopback TCP; "
            "the same over its Unix socket; then reversed). Server CPU is dockyard's "
            "processes; the PostgreSQL server's "
            f"CPU is its own column. {verdict}."
        )
        record("perf.meta", started, m, setup, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
