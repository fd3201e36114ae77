"""What perf.auth, perf.metrics and perf.logs share: several dockyard servers that differ
in one setting, measured alternately in one run; their common options, the table of
medians with the ratio to the base mode per repeat, and the dated entry in RESULTS.md."""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from perf import oci
from perf.data import ACCEPT, blob, image
from perf.httpclient import Connection
from perf.procstat import cpu_seconds, process_tree
from perf.rate import build_requests, run_py
from perf.report import machine
from perf.servers import Dockyard

HERE = Path(__file__).resolve().parent
REPO = "perf/rps"
IMAGES = 16
HEAD_HEADERS = [("accept", ACCEPT)]
Results = dict[str, list[dict[str, float]]]
# An extra column: its heading and its cell for (this mode's repeats, the base's repeats).
Column = tuple[str, Callable[[list[dict[str, float]], list[dict[str, float]]], str]]


def common_args(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    ap.add_argument("--connections", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2, help="dockyard workers per server")
    ap.add_argument("--record", action=argparse.BooleanOptionalAction, default=True)
    return ap


def quick_and_record(ap: argparse.ArgumentParser, quick_help: str) -> None:
    """``--quick`` and ``--record/--no-record`` (default: record unless quick)."""
    ap.add_argument("--quick", action="store_true", help=quick_help)
    ap.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="append to perf/RESULTS.md (default: on unless --quick)",
    )


def recording(args: argparse.Namespace) -> bool:
    """Whether ``quick_and_record``'s options say to append to RESULTS.md."""
    return bool(args.record if args.record is not None else not args.quick)


def push_images(server: Dockyard) -> list[str]:
    """Push the images every server of a run serves; the manifest paths to HEAD."""
    with Connection("127.0.0.1", server.port) as conn:
        for i in range(IMAGES):
            oci.push_image(conn, REPO, f"t{i}", image(f"rps-{i}", [blob(f"rps-{i}/layer", 1024)]))
    return [f"/v2/{REPO}/manifests/t{i}" for i in range(IMAGES)]


def alternated(modes: Sequence[str], repeat: int) -> Sequence[str]:
    """The modes in order on even repeats, reversed on odd ones (no mode always first)."""
    return modes if repeat % 2 == 0 else tuple(reversed(modes))


def head_load(
    server: Dockyard,
    targets: list[str],
    headers: list[tuple[str, str]],
    connections: int,
    duration: float,
    settle: float = 0.0,
) -> dict[str, float]:
    """HEADs of ``targets`` for ``duration`` seconds: the rate, the failures and the server
    CPU per request (``settle`` seconds after the load count too: work the server finishes
    after answering, as writing its log)."""
    pids = process_tree([server.pid])
    requests = build_requests("127.0.0.1", server.port, "HEAD", targets, headers)
    before = cpu_seconds(pids)
    res = run_py(
        "127.0.0.1", server.port, requests, head=True, connections=connections,
        duration=duration, max_requests=1_000_000, procs=2,
    )  # fmt: skip
    if settle:
        time.sleep(settle)
    cpu = cpu_seconds(pids) - before
    done = res.ok + res.failed
    return {
        "req_s": res.ok / res.elapsed,
        "failed": res.failed,
        "server_cpu_us_per_req": 1e6 * cpu / max(done, 1),
        "done": done,
    }


def report(repeat: int, mode: str, figures: dict[str, float]) -> None:
    print(f"  r{repeat} {mode}: " + " ".join(f"{k}={v:.0f}" for k, v in figures.items()))


def ratio_table(
    label: str, modes: Sequence[str], base: str, results: Results, extra: Sequence[Column] = ()
) -> str:
    """Medians over the repeats, the rate ratio to ``base`` per repeat, the extra columns
    and the failed requests."""
    heads = [h for h, _ in extra]
    rows = [
        f"| {label} | req/s median [min-max] | server CPU-us/req median "
        f"| req/s ratio to {base} (median [per repeat]) | "
        + "".join(f"{h} | " for h in heads)
        + "failed |",
        "|---" * (5 + len(heads)) + "|",
    ]
    base_rates = [r["req_s"] for r in results[base]]
    for mode in modes:
        rates = [r["req_s"] for r in results[mode]]
        cpus = [r["server_cpu_us_per_req"] for r in results[mode]]
        ratios = [a / b for a, b in zip(rates, base_rates, strict=True)]
        failed = sum(int(r["failed"]) for r in results[mode])
        cells = "".join(f"{cell(results[mode], results[base])} | " for _, cell in extra)
        rows.append(
            f"| {mode} | {statistics.median(rates):.0f} [{min(rates):.0f}-{max(rates):.0f}] "
            f"| {statistics.median(cpus):.0f} | {statistics.median(ratios):.3f} "
            f"[{', '.join(f'{x:.2f}' for x in ratios)}] | {cells}{failed} |"
        )
    return "\n".join(rows)


def record(module: str, started: dt.datetime, m: dict[str, Any], setup: str, text: str) -> None:
    """Append the run to RESULTS.md: command, machine, what was measured, the table."""
    command = " ".join([f"python -m {module}", *sys.argv[1:]])
    section = (
        f"\n## {started.strftime('%Y-%m-%d %H:%M UTC')}: `{command}`\n\n"
        f"- Machine: nproc {m['nproc']}, {m['cpu_model']}, {m['memory_gib']} GiB memory, "
        f"Linux {m['kernel']}, Python {m['python']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg'])}.\n"
        f"- {setup}\n\n" + text + "\n"
    )
    with open(HERE / "RESULTS.md", "a") as f:
        f.write(section)


__all__ = [
    "HEAD_HEADERS",
    "REPO",
    "Results",
    "alternated",
    "common_args",
    "head_load",
    "machine",
    "push_images",
    "quick_and_record",
    "ratio_table",
    "record",
    "recording",
    "report",
]
