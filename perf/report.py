"""Aggregation and presentation: medians, min-max, A/B ratios, goals, RESULTS.md.

A figure's median and range are taken over the repeats of one registry; the A/B ratio is
taken per repeat (A and B of one repeat ran back to back on the same prepared data, so
the ratio cancels slow drifts of a shared machine) and its median is what a goal is
judged on. Rates (names ending in ``mib_s``, ``req_s``, ``images_s``) are better higher;
times, latencies, CPU per unit, memory growth and the upload ratio are better lower;
counts (items, pages, MiB moved) are neither.

A case that did not run against a registry (the events scenario against one without the
websocket feed) has a record with no figures and ``info["skipped"]``: its cells say
"not run" and the reason follows the table, so no figure is made up for it.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from perf.scenarios import Record

HIGHER = ("mib_s", "req_s", "images_s", "blobs_s", "on_off_ratio")

# Headline figures per scenario (others stay in the raw JSON lines).
HEADLINES: dict[str, tuple[str, ...]] = {
    "blob-push": ("mib_s", "blob_p50_ms", "blob_p99_ms", "server_cpu_s_per_gib"),
    "blob-pull": (
        "mib_s",
        "req_s",
        "blob_p99_ms",
        "p50_ms",
        "p99_ms",
        "server_cpu_s_per_gib",
        "server_cpu_ms_per_req",
    ),
    "manifest-rps": (
        "req_s",
        "p50_ms",
        "p99_ms",
        "server_cpu_us_per_req",
        "client_cpu_us_per_req",
    ),
    "ci-storm": (
        "images_s",
        "image_p99_ms",
        "uploaded_mib",
        "logical_mib",
        "uploaded_ratio",
        "server_cpu_s_per_gib",
    ),
    "pull-storm": ("images_s", "mib_s", "image_p99_ms", "server_cpu_s_per_gib"),
    "catalog": ("seconds", "items", "pages", "server_cpu_s"),
    "big-blob": ("mib_s", "peak_rss_growth_mib", "server_cpu_s_per_gib"),
    "events": (
        # delivery
        "p50_ms",
        "p99_ms",
        "max_ms",
        "min_ms",
        "client_lag_p99_ms",  # how long events waited for the client: its own share
        "subscribers",
        "complete_subscribers",
        "lost_events",
        "lagged",
        "disconnected",
        "server_cpu_ms_per_push",
        # pulls-*: pull events on versus off
        "on_req_s",
        "off_req_s",
        "on_mib_s",
        "off_mib_s",
        "on_off_ratio",
        "pull_events_cost_pct",
        "on_server_cpu_us_per_req",
        "off_server_cpu_us_per_req",
        "cpu_cost_pct",
    ),
}
# Per case, figures that mean nothing there.
SKIP = {
    ("blob-pull", "full"): ("req_s", "p50_ms", "p99_ms", "server_cpu_ms_per_req"),
    ("blob-pull", "ranged"): ("blob_p99_ms", "server_cpu_s_per_gib"),
}
NEUTRAL = (
    "items",
    "pages",
    "uploaded_mib",
    "logical_mib",
    "client_cpu_us_per_req",
    "subscribers",
    "complete_subscribers",
    "min_ms",  # below zero when an event beat its push response: information, not a goal
)


@dataclass(frozen=True)
class Goal:
    """A goal from the perf issue: ``kind`` is ratio_min, ratio_max or abs_max (of A)."""

    scenario: str
    case: str | None  # None: every case of the scenario
    figure: str
    kind: str
    value: float

    def describe(self) -> str:
        if self.kind == "ratio_min":
            return f">= {self.value:g}x"
        if self.kind == "ratio_max":
            return f"<= {self.value:g}x"
        return f"< {self.value:g}"


GOALS = (
    Goal("blob-push", None, "mib_s", "ratio_min", 1.5),
    Goal("blob-pull", "full", "mib_s", "ratio_min", 1.0),
    Goal("blob-pull", "ranged", "req_s", "ratio_min", 2.0),
    Goal("manifest-rps", None, "req_s", "ratio_min", 1.5),
    Goal("manifest-rps", None, "p99_ms", "ratio_max", 1.0),
    Goal("ci-storm", None, "images_s", "ratio_min", 2.0),
    Goal("pull-storm", None, "images_s", "ratio_min", 1.0),
    Goal("catalog", None, "seconds", "abs_max", 0.2),
    Goal("big-blob", None, "peak_rss_growth_mib", "abs_max", 64.0),
    Goal("events", "delivery", "p99_ms", "abs_max", 100.0),
    Goal("events", None, "pull_events_cost_pct", "abs_max", 10.0),
)

# The goals against CNCF Distribution 3.x (the performance issue: per-request and per-GiB
# server CPU, throughput at least equal), used when B is a 3.x release.
GOALS_3 = (
    Goal("manifest-rps", None, "server_cpu_us_per_req", "ratio_max", 1.0),
    Goal("blob-push", None, "server_cpu_s_per_gib", "ratio_max", 1.2),
    Goal("blob-push", None, "mib_s", "ratio_min", 1.0),
    Goal("ci-storm", None, "server_cpu_s_per_gib", "ratio_max", 1.2),
    Goal("ci-storm", None, "images_s", "ratio_min", 1.0),
    Goal("blob-pull", "full", "mib_s", "ratio_min", 1.0),
    Goal("pull-storm", None, "images_s", "ratio_min", 1.0),
    Goal("catalog", None, "seconds", "abs_max", 0.2),
    Goal("big-blob", None, "peak_rss_growth_mib", "abs_max", 64.0),
    Goal("events", "delivery", "p99_ms", "abs_max", 100.0),
    Goal("events", None, "pull_events_cost_pct", "abs_max", 10.0),
)


def goals_against(b_description: str) -> tuple[Goal, ...]:
    """The goals for a comparison with B (its description names its version)."""
    major = re.search(r"\bv?(\d+)\.\d+\.\d+", b_description)
    return GOALS_3 if major and int(major.group(1)) >= 3 else GOALS


# Distribution 3.1's server CPU per unit of work, as measured for the issue (its medians).
REFERENCE_31 = {
    ("blob-push", "server_cpu_s_per_gib"): "2.1-2.3 CPU-s/GiB",
    ("blob-pull/full", "server_cpu_s_per_gib"): "0.61 CPU-s/GiB",
    ("blob-pull/ranged", "server_cpu_ms_per_req"): "2.85 CPU-ms/req",
    ("manifest-rps", "server_cpu_us_per_req"): "250-310 CPU-us/req",
    ("ci-storm", "server_cpu_s_per_gib"): "4.2 CPU-s/GiB uploaded",
    ("pull-storm", "server_cpu_s_per_gib"): "0.93 CPU-s/GiB",
}


def better_higher(figure: str) -> bool | None:
    if figure in NEUTRAL:
        return None
    return figure.endswith(HIGHER)


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if float(v).is_integer() and a < 1e15:
        return str(int(v))
    if a >= 100 or (float(v).is_integer() and a >= 10):
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


@dataclass
class Row:
    scenario: str
    case: str
    figure: str
    a: list[float]
    b: list[float]
    ratios: list[float]
    ceiling: float | None
    failures: int
    b_skipped: str | None = None  # why the case did not run against B
    goals: tuple[Goal, ...] = GOALS

    def b_cell(self) -> str:
        return "not run" if self.b_skipped and not self.b else self.cell(self.b)

    def cell(self, values: list[float]) -> str:
        if not values:
            return "-"
        m = median(values)
        if len(values) == 1:
            return fmt(m)
        return f"{fmt(m)} [{fmt(min(values))}-{fmt(max(values))}]"

    def target(self) -> Goal | None:
        for t in self.goals:
            if (
                t.scenario == self.scenario
                and t.figure == self.figure
                and (t.case is None or t.case == self.case)
            ):
                return t
        return None

    def verdict(self) -> str:
        if self.failures:
            return f"FAILED x{self.failures}"
        t = self.target()
        if t is None:
            return ""
        if t.kind == "abs_max":
            m = median(self.a)
            return "-" if math.isnan(m) else ("met" if m < t.value else "SHORT")
        r = median(self.ratios)
        if math.isnan(r):
            return "-"
        ok = r >= t.value if t.kind == "ratio_min" else r <= t.value
        return "met" if ok else "SHORT"


def build_rows(records: Iterable[Record], goals: tuple[Goal, ...] = GOALS) -> list[Row]:
    by_key: dict[tuple[str, str], dict[str, dict[int, Record]]] = {}
    order: list[tuple[str, str]] = []
    for r in records:
        key = (r.scenario, r.case)
        if key not in by_key:
            by_key[key] = {}
            order.append(key)
        by_key[key].setdefault(r.label, {})[r.repeat] = r
    rows = []
    for scenario, case in order:
        runs = by_key[(scenario, case)]
        a, b, ceiling = runs.get("A", {}), runs.get("B", {}), runs.get("ceiling", {})
        failures = sum(r.failures for r in [*a.values(), *b.values()])
        b_skipped = next((r.skipped for r in b.values() if r.skipped), None)
        skip = SKIP.get((scenario, case), ())
        for figure in HEADLINES.get(scenario, ()):
            if figure in skip:
                continue
            if not any(figure in r.figures for r in [*a.values(), *b.values(), *ceiling.values()]):
                continue
            av = [a[k].figures[figure] for k in sorted(a) if figure in a[k].figures]
            bv = [b[k].figures[figure] for k in sorted(b) if figure in b[k].figures]
            ratios = [
                a[k].figures[figure] / b[k].figures[figure]
                for k in sorted(set(a) & set(b))
                if figure in a[k].figures and b[k].figures.get(figure)
            ]
            ceil = next(iter(ceiling.values())).figures.get(figure) if ceiling else None
            rows.append(
                Row(scenario, case, figure, av, bv, ratios, ceil, failures, b_skipped, goals)
            )
            failures = 0  # report a case's failures once
    return rows


def skipped_notes(records: Sequence[Record], names: dict[str, str]) -> list[str]:
    """One line per scenario and registry that a case was not run against, and why."""
    seen: dict[tuple[str, str], tuple[list[str], str]] = {}
    for r in records:
        why = r.skipped
        if why is None:
            continue
        cases, _ = seen.setdefault((r.scenario, r.label), ([], why))
        if r.case not in cases:
            cases.append(r.case)
    return [
        f"- {scenario} ({', '.join(cases)}) not run against {label} "
        f"({names.get(label, label)}): {why}"
        for (scenario, label), (cases, why) in seen.items()
    ]


def table(
    records: Sequence[Record], names: dict[str, str], goals: bool = True, against: str = ""
) -> str:
    """A Markdown table of headline figures; ``names`` maps labels to server names.
    ``goals``: the target and verdict columns (the goals are against Distribution: 3.x's
    when ``against``, B's description, names a 3.x release, else those against 2.8)."""
    rows = build_rows(records, goals_against(against))
    compare = any(r.b or r.b_skipped for r in rows)
    has_ceiling = any(r.ceiling is not None for r in rows)
    has_a = any(r.a for r in rows)
    head = ["scenario", "case", "figure"]
    if has_a:
        head.append(f"A: {names.get('A', 'A')}")
    if compare:
        head += [f"B: {names.get('B', 'B')}", "A/B median [per repeat]"]
        head += ["target", "verdict"] if goals else []
    if has_ceiling:
        head.append("client ceiling (discard)")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        direction = better_higher(row.figure)
        arrow = "" if direction is None else (" ↑" if direction else " ↓")
        cells = [row.scenario, row.case, row.figure + arrow]
        if has_a:
            cells.append(row.cell(row.a))
        if compare:
            ratio = "-"
            if row.ratios:
                ratio = f"{fmt(median(row.ratios))} [{', '.join(fmt(x) for x in row.ratios)}]"
            t = row.target()
            cells += [row.b_cell(), ratio]
            cells += [t.describe() if t else "", row.verdict()] if goals else []
        elif row.failures:
            cells[-1] += f" FAILED x{row.failures}"
        if has_ceiling:
            cells.append(fmt(row.ceiling) if row.ceiling is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    notes = skipped_notes(records, names)
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


def reference_table(records: Sequence[Record], names: dict[str, str]) -> str:
    """dockyard's (A's) server CPU per unit of work beside Distribution 3.1's figures."""
    rows = build_rows(records)
    lines = [
        f"| scenario | figure | A: {names.get('A', 'A')} | B: {names.get('B', 'B')} "
        "| Distribution 3.1 (issue) |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        ref = REFERENCE_31.get((f"{row.scenario}/{row.case}", row.figure)) or REFERENCE_31.get(
            (row.scenario, row.figure)
        )
        if ref is None:
            continue
        lines.append(
            f"| {row.scenario}/{row.case} | {row.figure} | {fmt(median(row.a))} "
            f"| {fmt(median(row.b)) if row.b else '-'} | {ref} |"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "memory_gib": round(mem_kib / (1 << 20), 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg": os.getloadavg(),
    }


def records_from_jsonl(lines: Iterable[str]) -> list[Record]:
    out = []
    for line in lines:
        doc = json.loads(line)
        if doc.get("type") != "record":
            continue
        out.append(
            Record(
                doc["scenario"],
                doc["case"],
                doc["label"],
                doc["server"],
                doc["repeat"],
                doc["figures"],
                doc.get("info", {}),
            )
        )
    return out


def record_json(record: Record) -> str:
    doc = {"type": "record", **record.__dict__}
    return json.dumps(doc, separators=(",", ":"), default=str, allow_nan=True)
