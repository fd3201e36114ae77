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

import argparse
import datetime as dt
import statistics
import sys
import time
from pathlib import Path

from perf import oci
from perf.data import ACCEPT, blob, image
from perf.httpclient import Connection
from perf.procstat import cpu_seconds, process_tree
from perf.rate import build_requests, run_py
from perf.report import machine
from perf.servers import Dockyard

HERE = Path(__file__).resolve().parent
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


def table(results: dict[str, list[dict[str, float]]]) -> str:
    rows = [
        "| access log | req/s median [min-max] | server CPU-us/req median "
        "| req/s ratio to off (median [per repeat]) | lines missing | failed |",
        "|---|---|---|---|---|---|",
    ]
    base = [r["req_s"] for r in results["off"]]
    for mode in MODES:
        rates = [r["req_s"] for r in results[mode]]
        cpus = [r["server_cpu_us_per_req"] for r in results[mode]]
        ratios = [a / b for a, b in zip(rates, base, strict=True)]
        failed = sum(int(r["failed"]) for r in results[mode])
        missing = sum(int(r["missing_lines"]) for r in results[mode])
        rows.append(
            f"| {mode} | {statistics.median(rates):.0f} [{min(rates):.0f}-{max(rates):.0f}] "
            f"| {statistics.median(cpus):.0f} | {statistics.median(ratios):.3f} "
            f"[{', '.join(f'{x:.2f}' for x in ratios)}] | {missing} | {failed} |"
        )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="dockyard workers per server")
    ap.add_argument("--record", action=argparse.BooleanOptionalAction, default=True)
    args = ap.parse_args()
    started = dt.datetime.now(dt.UTC)
    m = machine()
    results = run(args.repeats, args.duration, args.connections, args.workers)
    text = table(results)
    print(text)
    bad = sum(int(r["failed"]) + int(r["missing_lines"]) for rs in results.values() for r in rs)
    if args.record:
        command = " ".join(["python -m perf.logs", *sys.argv[1:]])
        section = (
            f"\n## {started.strftime('%Y-%m-%d %H:%M UTC')}: `{command}`\n\n"
            f"- Machine: nproc {m['nproc']}, {m['cpu_model']}, {m['memory_gib']} GiB memory, "
            f"Linux {m['kernel']}, Python {m['python']}; load average at start "
            f"{', '.join(f'{x:.2f}' for x in m['loadavg'])}.\n"
            f"- Manifest HEAD by tag, {args.connections} connections, {args.duration:g} s per "
            f"measurement, dockyard --workers {args.workers} per server, three servers "
            "alternated (access log off, json, text, then reversed), each logging to its own "
            "file; lines missing counts requests answered without an access line.\n\n" + text + "\n"
        )
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(section)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
