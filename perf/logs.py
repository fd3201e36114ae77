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
from pathlib import Path

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
from perf.servers import Dockyard

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


def run(repeats: int, duration: float, connections: int, workers: int) -> Results:
    servers: dict[str, Dockyard] = {}
    logs: dict[str, Path] = {}
    results: Results = {m: [] for m in MODES}
    try:
        for mode in MODES:
            server = Dockyard(workers=workers)
            logs[mode] = server.tmp / "dockyard.log"
            server.settings.update(settings(mode, logs[mode]))
            server.start()
            servers[mode] = server
            targets = push_images(server)
        for repeat in range(repeats):
            for mode in alternated(MODES, repeat):
                lines_before = access_lines(logs[mode])
                # The settle: the log threads write what is queued (counted as the log's CPU).
                figures = head_load(
                    servers[mode], targets, HEAD_HEADERS, connections, duration, settle=0.5
                )
                written = access_lines(logs[mode]) - lines_before
                figures["lines"] = written
                figures["missing_lines"] = 0 if mode == "off" else figures["done"] - written
                results[mode].append(figures)
                report(repeat, mode, figures)
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
