"""What perf.auth, perf.metrics and perf.logs share: several dockyard servers that differ
in one setting, measured alternately in one run; their common options, the table of
medians with the ratio to the base mode per repeat, and the dated entry in RESULTS.md."""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from perf.report import machine

HERE = Path(__file__).resolve().parent
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


__all__ = ["Results", "common_args", "machine", "ratio_table", "record"]
