"""What the pull-through cache costs: an image pulled through dockyard's cache against the
same image pulled straight from its upstream, and once cached against a normal push::

    python -m perf.proxy               # 5 repeats of 4 x 16 MiB layers, appended to RESULTS.md
    python -m perf.proxy --quick       # 2 x 1 MiB layers, 1 repeat, not recorded

One Distribution 2.8 (Debian's docker-registry, ``perf/servers.py``) holds the image (a
small config and ``--layers`` layers of ``--layer-mib`` MiB, unique bytes, pushed once).
Each repeat starts a dockyard with fresh data whose ``[[upstreams]]`` table maps the
prefix ``up`` to that Distribution, and pulls the image (manifest by tag, config and
layers in order, on one keep-alive connection, bodies drained, sizes checked):

(a) cold: through the cache, ``/v2/up/perf/proxy``: every blob streamed from the upstream
    while dockyard stores and verifies it;
(b) direct: from the Distribution itself;
(c) warm: through the cache again, everything now cached (the tag within its TTL);
(d) local: the same image pushed to dockyard normally (``perf/local``), pulled.

(a) and (b) alternate which goes first per repeat, as do (c) and (d); the push for (d)
happens after (a), so the cold pull finds nothing stored. Per pull: wall seconds, MiB/s,
dockyard's CPU seconds (its process tree, ``/proc``), the Distribution's CPU seconds
(both servers work in the cold case); ratios a/b and c/d per repeat. dockyard's data is
fresh and the local push comes after the cold pull, so a cold pull that completes got
every byte from the upstream. Exit status 1 when a pull failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from perf import oci
from perf.data import MiB, blob, image
from perf.httpclient import Connection
from perf.modes import quick_and_record, record, recording
from perf.procstat import cpu_seconds, process_tree
from perf.report import machine
from perf.servers import Distribution, Dockyard

PREFIX = "up"
UPSTREAM_REPO = "perf/proxy"
LOCAL_REPO = "perf/local"
TAG = "v1"
MODES = ("cold", "direct", "warm", "local")
LABELS = {
    "cold": "(a) cold, through the cache",
    "direct": "(b) direct from Distribution",
    "warm": "(c) warm, through the cache",
    "local": "(d) local, pushed to dockyard",
}


@dataclass(frozen=True)
class Shape:
    layers: int = 4
    layer_mib: int = 16

    @classmethod
    def quick(cls) -> Shape:
        return cls(layers=2, layer_mib=1)


def upstream_config(url: str) -> str:
    return f'[[upstreams]]\nname = "perf"\nurl = "{url}"\nprefix = "{PREFIX}"\n'


def timed_pull(port: int, repo: str, servers: dict[str, list[int]]) -> tuple[dict[str, float], int]:
    """One pull of ``repo:TAG`` from 127.0.0.1:``port``: wall seconds and each server's
    CPU seconds (``servers``: name -> pids); the bytes received."""
    trees = {name: process_tree(pids) for name, pids in servers.items()}
    before = {name: cpu_seconds(pids) for name, pids in trees.items()}
    started = time.monotonic()
    with Connection("127.0.0.1", port) as conn:
        received = oci.pull_image(conn, repo, TAG)
    wall = time.monotonic() - started
    figures = {"wall_s": wall, "mib_s": received / MiB / wall}
    for name, pids in trees.items():
        figures[f"{name}_cpu_s"] = cpu_seconds(pids) - before[name]
    return figures, received


def one_repeat(
    upstream: Distribution, pushed: Callable[[Connection, str], None], repeat: int, workers: int
) -> tuple[dict[str, dict[str, float]], list[str]]:
    """A fresh dockyard caching ``upstream``; the four pulls, in this repeat's order."""
    problems: list[str] = []
    figures: dict[str, dict[str, float]] = {}
    server = Dockyard(workers=workers)
    config = server.tmp / "proxy.toml"
    config.write_text(upstream_config(upstream.url))
    server.settings["DOCKYARD_CONFIG"] = str(config)
    server.start()
    try:
        both = {"dockyard": [server.pid], "distribution": [upstream.pid]}
        cached = f"{PREFIX}/{UPSTREAM_REPO}"
        pulls: dict[str, Callable[[], tuple[dict[str, float], int]]] = {
            "cold": lambda: timed_pull(server.port, cached, both),
            "direct": lambda: timed_pull(upstream.port, UPSTREAM_REPO, both),
            "warm": lambda: timed_pull(server.port, cached, both),
            "local": lambda: timed_pull(server.port, LOCAL_REPO, both),
        }
        first = ("cold", "direct") if repeat % 2 == 0 else ("direct", "cold")
        second = ("warm", "local") if repeat % 2 == 0 else ("local", "warm")
        for mode in first:
            figures[mode], _ = pulls[mode]()
        with Connection("127.0.0.1", server.port) as conn:
            pushed(conn, LOCAL_REPO)
        for mode in second:
            figures[mode], _ = pulls[mode]()
    except Exception as e:  # a failed pull is reported, and fails the run
        problems.append(f"repeat {repeat}: {e}"[:500])
        problems.append(server.log()[-1500:])
    finally:
        server.stop()
    return figures, problems


def run(
    shape: Shape, repeats: int, workers: int
) -> tuple[list[dict[str, dict[str, float]]], list[str], str]:
    """Push the image to a Distribution once, then ``repeats`` repeats; (figures per
    repeat and mode, problems, the Distribution's version)."""
    layers = [blob(f"proxy/layer-{i}", shape.layer_mib * MiB) for i in range(shape.layers)]
    img = image("proxy", layers)

    def push(conn: Connection, repo: str) -> None:
        oci.push_image(conn, repo, TAG, img)

    results: list[dict[str, dict[str, float]]] = []
    problems: list[str] = []
    with Distribution() as upstream:
        assert isinstance(upstream, Distribution)
        with Connection("127.0.0.1", upstream.port) as conn:
            push(conn, UPSTREAM_REPO)
        for repeat in range(repeats):
            figures, wrong = one_repeat(upstream, push, repeat, workers)
            problems += wrong
            if wrong:
                continue
            results.append(figures)
            print(
                f"  r{repeat}: "
                + ", ".join(
                    f"{mode} {figures[mode]['wall_s']:.3f} s {figures[mode]['mib_s']:.0f} MiB/s"
                    for mode in MODES
                )
            )
        # "/usr/bin/docker-registry github.com/... 2.8.2": the program's name, not its path.
        program, _, version = upstream.description.partition(" ")
        return results, problems, f"{program.rsplit('/', 1)[-1]} {version}".strip()


def fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else f"{value:.3g}"


def spread(values: list[float]) -> str:
    return f"{fmt(statistics.median(values))} [{fmt(min(values))}-{fmt(max(values))}]"


def table(results: list[dict[str, dict[str, float]]]) -> str:
    """Medians [min-max] per mode, and the ratios a/b and c/d per repeat."""
    rows = [
        "| pull | wall s | MiB/s | dockyard CPU s | Distribution CPU s | wall ratio |",
        "|---|---|---|---|---|---|",
    ]
    base = {"cold": "direct", "warm": "local"}
    for mode in MODES:
        values = [r[mode] for r in results]
        ratio = ""
        if mode in base:
            ratios = [r[mode]["wall_s"] / r[base[mode]]["wall_s"] for r in results]
            ratio = (
                f"{statistics.median(ratios):.2f}x {base[mode]} "
                f"[{', '.join(f'{x:.2f}' for x in ratios)}]"
            )
        rows.append(
            f"| {LABELS[mode]} | {spread([v['wall_s'] for v in values])} "
            f"| {spread([v['mib_s'] for v in values])} "
            f"| {spread([v['dockyard_cpu_s'] for v in values])} "
            f"| {spread([v['distribution_cpu_s'] for v in values])} | {ratio} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m perf.proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    quick_and_record(ap, "2 x 1 MiB layers, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="default 5 (--quick: 1)")
    ap.add_argument("--workers", type=int, default=2, help="dockyard serve --workers")
    ap.add_argument("--layers", type=int, default=None, help="default 4 (--quick: 2)")
    ap.add_argument("--layer-mib", type=int, default=None, help="default 16 (--quick: 1)")
    args = ap.parse_args(argv)
    shape = Shape.quick() if args.quick else Shape()
    shape = Shape(args.layers or shape.layers, args.layer_mib or shape.layer_mib)
    repeats = args.repeats or (1 if args.quick else 5)
    started = dt.datetime.now(dt.UTC)
    m = machine()
    results, problems, upstream = run(shape, repeats, args.workers)
    text = table(results) if results else "(no repeat completed)"
    print(text)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    if recording(args) and results:
        setup = (
            f"{len(results)} repeats. Image: {shape.layers} x {shape.layer_mib} MiB layers "
            f"and a small config, in {upstream} (filesystem, loopback); dockyard serve "
            f"--workers {args.workers} (SQLite, filesystem) with fresh data per repeat and "
            f"`[[upstreams]]` prefix `{PREFIX}` on it. Each pull: manifest by tag, config, "
            "layers in order on one keep-alive connection, bodies drained. (a)/(b) and "
            "(c)/(d) alternate which runs first; ratios per repeat."
            + (" Problems: " + "; ".join(problems) if problems else "")
        )
        record("perf.proxy", started, m, setup, text)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
