"""What a garbage collection costs: one ``dockyard gc`` run over 100,000 blobs and 10,000
manifests (wall time, CPU, peak memory, what it deleted), and how much it slows pushes
to the registry while it runs::

    python -m perf.gc                  # 3 repeats, appended to perf/RESULTS.md
    python -m perf.gc --quick          # 2,000 blobs, 1 repeat, not recorded

The data (``perf/gcdata.py``) is written straight into SQLite and the filesystem storage
once, then copied (blob files hard-linked) for each repeat. A repeat serves the copy with
``dockyard serve --workers N`` and, alternately (so neither phase always comes first):

1. pushes without a collection for ``--window`` seconds (threads, each a loop of one
   small image: layer and config uploaded monolithically, manifest PUT by tag);
2. ``dockyard gc --json`` as a subprocess with the same pushes running: its wall time,
   CPU (user + system, ``wait4``) and peak RSS (VmHWM); the push rate while it ran;
3. pushes without a collection again; the rate without is the mean of 1 and 3;
4. a second ``dockyard gc`` with nothing left to collect, alone: the cost of a scan;
5. the consistency checker (tests/gc_consistency.py) over the store, a sample of blobs
   hashed, and the counts deleted against the data's reference model.

Exit status 1 when a push failed, a collection failed, or the store or the counts are
wrong.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perf import oci
from perf.data import blob, image
from perf.gcdata import Dataset, Shape, copy_data, expected, gc_config, generate
from perf.httpclient import Connection
from perf.modes import quick_and_record, record, recording
from perf.procstat import cpu_seconds, peak_kib, process_tree
from perf.report import machine
from perf.servers import Dockyard

GRACE = 3600.0  # the data's recent part is inside it, its old part (30 days) is not
LAYER = 4096


@dataclass
class Pushes:
    """Pushes of one phase: how many, how long each took, what failed."""

    done: int = 0
    failed: int = 0
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0

    def percentile(self, q: float) -> float:
        if not self.latencies:
            return 0.0
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class PushLoad:
    """``threads`` loops pushing small unique images until ``stop()``."""

    def __init__(self, port: int, threads: int, label: str) -> None:
        self.port, self.threads, self.label = port, threads, label
        self.result = Pushes()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _loop(self, lane: int) -> None:
        n = 0
        with Connection("127.0.0.1", self.port) as conn:
            while not self._stop.is_set():
                n += 1
                name = f"{self.label}-{lane}-{n}"
                img = image(name, [blob(name, LAYER)])
                started = time.monotonic()
                try:
                    oci.push_image(conn, f"perf/gc-push-{lane}", f"p{n % 50}", img)
                except Exception as e:  # counted, reported, and it fails the run
                    with self._lock:
                        self.result.failed += 1
                        self.result.errors.append(f"{name}: {e}"[:300])
                    conn.close()
                    continue
                with self._lock:
                    self.result.done += 1
                    self.result.latencies.append(time.monotonic() - started)

    def __enter__(self) -> PushLoad:
        self._started = time.monotonic()
        for lane in range(self.threads):
            worker = threading.Thread(target=self._loop, args=(lane,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)
        self.result.elapsed = time.monotonic() - self._started


def pushes_for(port: int, threads: int, seconds: float, label: str) -> Pushes:
    with PushLoad(port, threads, label) as load:
        time.sleep(seconds)
    return load.result


@dataclass
class GcRun:
    wall: float
    cpu: float
    peak_rss_mib: float
    report: dict[str, Any]
    status: int
    stderr: str


def _exec_peak_kib(pid: int) -> int | None:
    """VmHWM of ``pid`` once it runs dockyard: before its exec the forked child still has
    this process's memory (and ``wait4``'s ru_maxrss keeps that high-water mark)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"dockyard.cli" not in f.read():
                return None
    except OSError:
        return None
    return peak_kib(pid)


def run_gc(config: Path) -> GcRun:
    """One ``dockyard gc --json`` subprocess, timed; CPU from ``wait4``, peak RSS from
    VmHWM read every 10 ms while it runs (growth in its last 10 ms may be missed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "dockyard.cli", "gc", "--config", str(config), "--json"],
            env=env,
            stdout=out,
            stderr=err,
        )
        peak = 0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            peak = max(peak, _exec_peak_kib(proc.pid) or 0)
            time.sleep(0.01)
        wall = time.monotonic() - started
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
        out.seek(0)
        err.seek(0)
        text, errors = out.read(), err.read().decode(errors="replace")
    report: dict[str, Any] = json.loads(text) if proc.returncode == 0 else {}
    return GcRun(
        wall,
        usage.ru_utime + usage.ru_stime,
        peak / 1024,
        report,
        proc.returncode,
        errors[-2000:],
    )


def one_repeat(
    data: Dataset, repeat: int, workers: int, threads: int, window: float, sample: int
) -> tuple[dict[str, float], list[str]]:
    """Serve a fresh copy of ``data``, measure, check; the figures and what went wrong."""
    from tests.gc_consistency import Completed, check

    problems: list[str] = []
    server = Dockyard(workers=workers, keep=True)  # its data is checked after it stops
    root = server.tmp / "data"
    copy_data(data.root, root)
    config = server.tmp / "gc.toml"
    gc_config(config, root, GRACE)
    server.start()
    try:
        label = f"r{repeat}"
        started = time.time()
        server_cpu = cpu_seconds(process_tree([server.pid]))
        if repeat % 2 == 0:
            before = pushes_for(server.port, threads, window, f"{label}-before")
        with PushLoad(server.port, threads, f"{label}-during") as load:
            gc = run_gc(config)
        during = load.result
        server_cpu = cpu_seconds(process_tree([server.pid])) - server_cpu
        after = pushes_for(server.port, threads, window, f"{label}-after")
        if repeat % 2 == 1:
            before = pushes_for(server.port, threads, window, f"{label}-before")
        scan = run_gc(config)
    finally:
        server.stop()
    try:
        for name, run in (("gc", gc), ("second gc", scan)):
            if run.status != 0:
                problems.append(f"{name} exited {run.status}: {run.stderr}")
        for phase in (before, during, after):
            problems += phase.errors[:5]
        keep = expected(data, started, GRACE)
        want = {
            "deleted_blobs": len(data.blobs) - len(keep.blobs),
            "deleted_manifests": len(data.manifests) - len(keep.manifests),
            "deleted_links": len(data.links) - len(keep.links),
        }
        got = {k: int(gc.report.get(k, -1)) for k in want}
        if got != want:
            problems.append(f"deleted {got}, the reference model says {want}")
        completed = Completed(started, GRACE) if gc.report else None
        report = check(root / "dockyard.sqlite3", root, sample=sample, completed=completed)
        if not report.ok:
            problems.append(report.summary())
    finally:
        shutil.rmtree(server.tmp, ignore_errors=True)
    without = (before.rate + after.rate) / 2
    figures = {
        "gc_wall_s": gc.wall,
        "gc_cpu_s": gc.cpu,
        "gc_peak_rss_mib": gc.peak_rss_mib,
        "gc_collect_s": float(gc.report.get("duration_seconds", 0.0)),
        "deleted_blobs": float(gc.report.get("deleted_blobs", 0)),
        "deleted_manifests": float(gc.report.get("deleted_manifests", 0)),
        "deleted_links": float(gc.report.get("deleted_links", 0)),
        "freed_mib": float(gc.report.get("freed_bytes", 0)) / (1 << 20),
        "scan_wall_s": scan.wall,
        "scan_cpu_s": scan.cpu,
        "scan_peak_rss_mib": scan.peak_rss_mib,
        "server_cpu_during_gc_s": server_cpu,
        "pushes_s_without_gc": without,
        "pushes_s_during_gc": during.rate,
        "push_rate_ratio": during.rate / without if without else 0.0,
        "push_p50_ms_without_gc": 500 * (before.percentile(0.5) + after.percentile(0.5)),
        "push_p50_ms_during_gc": 1000 * during.percentile(0.5),
        "push_p99_ms_without_gc": 1000 * max(before.percentile(0.99), after.percentile(0.99)),
        "push_p99_ms_during_gc": 1000 * during.percentile(0.99),
        "pushes_during_gc": float(during.done),
        "failed_pushes": float(before.failed + during.failed + after.failed),
    }
    return figures, problems


# Figures in the order of the table, with how they read.
LABELS = {
    "gc_wall_s": "gc run: wall s (process start to exit)",
    "gc_collect_s": "gc run: collecting s (its own duration_seconds)",
    "gc_cpu_s": "gc run: CPU s (user + system)",
    "gc_peak_rss_mib": "gc run: peak RSS MiB",
    "deleted_blobs": "deleted blobs",
    "deleted_manifests": "deleted manifests",
    "deleted_links": "deleted links",
    "freed_mib": "freed MiB",
    "server_cpu_during_gc_s": "server CPU s while the gc ran (pushes too)",
    "scan_wall_s": "second gc, nothing to collect: wall s",
    "scan_cpu_s": "second gc, nothing to collect: CPU s",
    "scan_peak_rss_mib": "second gc, nothing to collect: peak RSS MiB",
    "pushes_s_without_gc": "pushes/s without gc",
    "pushes_s_during_gc": "pushes/s during gc",
    "push_rate_ratio": "push rate ratio, during / without",
    "push_p50_ms_without_gc": "push p50 ms without gc",
    "push_p50_ms_during_gc": "push p50 ms during gc",
    "push_p99_ms_without_gc": "push p99 ms without gc",
    "push_p99_ms_during_gc": "push p99 ms during gc",
    "pushes_during_gc": "pushes completed during gc",
    "failed_pushes": "failed pushes",
}


def fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def table(results: list[dict[str, float]]) -> str:
    rows = ["| figure | median [min-max] | per repeat |", "|---|---|---|"]
    for key, label in LABELS.items():
        values = [r[key] for r in results]
        rows.append(
            f"| {label} | {fmt(statistics.median(values))} [{fmt(min(values))}-"
            f"{fmt(max(values))}] | {', '.join(fmt(v) for v in values)} |"
        )
    return "\n".join(rows)


def run(
    shape: Shape, repeats: int, workers: int, threads: int, window: float, sample: int
) -> tuple[list[dict[str, float]], list[str], float]:
    """Generate once, measure ``repeats`` times; (figures per repeat, problems, seconds
    the data took to generate)."""
    base = Path(tempfile.mkdtemp(prefix="perf-gc-"))
    try:
        started = time.monotonic()
        data = generate(base / "data", shape)
        made = time.monotonic() - started
        print(f"generated {len(data.blobs)} blobs, {len(data.manifests)} manifests in {made:.1f} s")
        results: list[dict[str, float]] = []
        problems: list[str] = []
        for repeat in range(repeats):
            figures, wrong = one_repeat(data, repeat, workers, threads, window, sample)
            results.append(figures)
            problems += [f"repeat {repeat}: {p}" for p in wrong]
            f = figures
            print(
                f"  r{repeat}: gc {f['gc_wall_s']:.2f} s wall, {f['gc_cpu_s']:.2f} s CPU, "
                f"{f['gc_peak_rss_mib']:.0f} MiB; deleted {f['deleted_blobs']:.0f} blobs; "
                f"pushes/s {f['pushes_s_without_gc']:.1f} without, "
                f"{f['pushes_s_during_gc']:.1f} during"
            )
        return results, problems, made
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m perf.gc",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    quick_and_record(ap, "2,000 blobs, 1 repeat, short windows")
    ap.add_argument("--repeats", type=int, default=None, help="default 3 (--quick: 1)")
    ap.add_argument("--workers", type=int, default=2, help="dockyard serve --workers")
    ap.add_argument("--threads", type=int, default=4, help="push loops at once")
    ap.add_argument("--window", type=float, default=None, help="s of pushes without gc")
    ap.add_argument("--sample", type=int, default=2000, help="blobs the checker hashes")
    args = ap.parse_args(argv)
    shape = Shape.quick() if args.quick else Shape()
    repeats = args.repeats or (1 if args.quick else 3)
    window = args.window or (1.0 if args.quick else 5.0)
    started = dt.datetime.now(dt.UTC)
    m = machine()
    results, problems, made = run(shape, repeats, args.workers, args.threads, window, args.sample)
    text = table(results)
    print(text)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if recording(args):
        setup = (
            f"{len(results)} repeats. Data: {shape.blobs} blobs ({shape.min_size}-"
            f"{shape.max_size} bytes), {shape.manifests} manifests in {shape.repositories} "
            f"repositories (perf/gcdata.py; generated in {made:.0f} s), grace period "
            f"{GRACE:g} s; dockyard serve --workers {args.workers} on SQLite and the "
            f"filesystem driver; {args.threads} push loops (one {LAYER}-byte layer, config, "
            f"manifest PUT per push), {window:g} s without gc before and after each gc run. "
            + ("Problems: " + "; ".join(problems) if problems else "Store consistent and "
               "counts equal to the reference model in every repeat.")
        )  # fmt: skip
        record("perf.gc", started, m, setup, text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
