"""What the request log costs: manifest HEAD rate with the access log off, and on as ECS
JSON and as text, each written to a file.

Three ``dockyard serve`` processes of the same build and worker count run at once, each on
its own temporary data directory and log file; runs alternate between them (off, json,
text, then reversed) and the figures are medians over the repeats with ratios to "off"
per repeat::

    python -m perf.logs --repeats 5               # prints, and appends to perf/RESULTS.md
    python -m perf.logs --repeats 1 --no-record   # a smoke run

Each run also counts the access lines written, which must equal the requests answered.
"""

from __future__ import annotations

import datetime as dt
import sys
import time
from pathlib import Path

from perf import oci
from perf.data import ACCEPT, blob, image
from perf.httpclient import Connection
from perf.modes import Results, common_args, machine, ratio_table, record
from perf.procstat import cpu_seconds, process_tree
from perf.rate import build_requests, run_py
from perf.servers import Dockyard

REPO = "perf/rps"
MODES = ("off", "json", "text")


def settings(mode: str, log_file: Path) -> dict[str, str]:
    if mode == "off":
        return {"DOCKYARD_LOG_ACCESS": "false", "DOCKYARD_LOG_FILE": str(log_file)}
    return {
        "DOCKYARD_LOG_ACCESS": "true",
        "DOCKYARD_LOG_FORMAT": mode,
        "DOCKYARD_LOG_FILE": str(log_file),
    }


def access_lines(log_file: Path) -> int:
    text = log_file.read_text(errors="replace")
    return text.count("dockyard.access")


def run(
    repeats: int, duration: float, connections: int, workers: int
) -> dict[str, list[dict[str, float]]]:
    images = [image(f"rps-{i}", [blob(f"rps-{i}/layer", 1024)]) for i in range(16)]
    servers: dict[str, Dockyard] = {}
    logs: dict[str, Path] = {}
    results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
    try:
        for mode in MODES:
            server = Dockyard(workers=workers)
            logs[mode] = server.tmp / "dockyard.log"
            server.settings.update(settings(mode, logs[mode]))
            server.start()
            servers[mode] = server
            with Connection("127.0.0.1", server.port) as conn:
                for i, im in enumerate(images):
                    oci.push_image(conn, REPO, f"t{i}", im)
        targets = [f"/v2/{REPO}/manifests/t{i}" for i in range(len(images))]
        for repeat in range(repeats):
            order = MODES if repeat % 2 == 0 else tuple(reversed(MODES))
            for mode in order:
                server = servers[mode]
                pids = process_tree([server.pid])
                requests = build_requests(
                    "127.0.0.1", server.port, "HEAD", targets, [("accept", ACCEPT)]
                )
                lines_before = access_lines(logs[mode])
                before = cpu_seconds(pids)
                res = run_py(
                    "127.0.0.1", server.port, requests, head=True, connections=connections,
                    duration=duration, max_requests=1_000_000, procs=2,
                )  # fmt: skip
                time.sleep(0.5)  # the log threads write what is queued
                cpu = cpu_seconds(pids) - before
                done = res.ok + res.failed
                written = access_lines(logs[mode]) - lines_before
                figures = {
                    "req_s": res.ok / res.elapsed,
                    "failed": res.failed,
                    "server_cpu_us_per_req": 1e6 * cpu / max(done, 1),
                    "lines": written,
                    "missing_lines": 0 if mode == "off" else done - written,
                }
                results[mode].append(figures)
                print(
                    f"  r{repeat} {mode}: " + " ".join(f"{k}={v:.0f}" for k, v in figures.items())
                )
    finally:
        for server in servers.values():
            server.stop()
    return results


def table(results: Results) -> str:
    def missing(mine: list[dict[str, float]], base: list[dict[str, float]]) -> str:
        return str(sum(int(r["missing_lines"]) for r in mine))

    return ratio_table("access log", MODES, "off", results, [("lines missing", missing)])


def main() -> int:
    args = common_args(__doc__.splitlines()[0]).parse_args()
    started = dt.datetime.now(dt.UTC)
    m = machine()
    results = run(args.repeats, args.duration, args.connections, args.workers)
    text = table(results)
    print(text)
    bad = sum(int(r["failed"]) + int(r["missing_lines"]) for rs in results.values() for r in rs)
    if args.record:
        setup = (
            f"Manifest HEAD by tag, {args.connections} connections, {args.duration:g} s per "
            f"measurement, dockyard --workers {args.workers} per server, three servers "
            "alternated (access log off, json, text, then reversed), each logging to its own "
            "file; lines missing counts requests answered without an access line."
        )
        record("perf.logs", started, m, setup, text)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
