"""Where a served request's CPU goes: the HTTP stack's floor, dockyard, and Distribution.

Four measurements (issue 14's "find where the time goes"; results in perf/RESULTS.md,
"Where the time goes (3.1.1 comparison)"):

``floor``: server CPU microseconds per request for the same small-request load (HEAD, 16
keep-alive connections, ``perf.rate``'s client) against, alternated in one run:

- a 10-line ASGI app (``perf.floor``'s) under hypercorn: the trio worker with hypercorn's
  defaults, with the settings ``dockyard serve`` gives hypercorn, with those plus
  ``keep_alive_max_requests`` unbounded and no Date/Server headers, with dockyard's
  patches to hypercorn installed (its HTTP/1 edge, connection guard and read size, as
  ``create_app()`` does), with the cyclic garbage collector run less often
  (``gc.freeze()``, generation 0 threshold 50,000), with an access log written to a
  file; the asyncio worker; the uvloop worker (if uvloop is installed);
- dockyard: ``dockyard serve --workers 1`` (access log off, as in ``perf.run``), manifest
  HEAD by tag (with pull events recorded, the default, and off; on trio, and on uvloop
  if it is installed), and ``/healthz``;
- Distribution (``DOCKYARD_PERF_DISTRIBUTION``'s binary, or Debian's), manifest HEAD by
  tag.

Each server is one process (hypercorn: one worker); CPU is read from ``/proc`` over the
server's process tree. Usage::

    python -m perf.profile_serve floor [--repeats 5] [--duration 4] [--only NAME ...]

``upload-floor``: server CPU seconds per GiB of request body for an app that only drains
it (no hashing, no file), under the trio worker (defaults with 64 KiB reads; dockyard's
settings with its 256 KiB reads; with 1 MiB reads), the asyncio worker and the uvloop
worker, alternated; ``--count`` POSTs
of ``--size-mib`` each, one at a time. The HTTP stack's share of a push::

    python -m perf.profile_serve upload-floor [--repeats 5] [--size-mib 64] [--count 8]

``sample``: ``py-spy record`` (sampling, all threads, idle stacks left out) on the one
worker of ``dockyard serve --workers 1`` while it answers manifest HEADs by tag
(``head``), GETs by tag (``get``) or monolithic blob pushes (``push``) (``head-uvloop``,
``get-uvloop``, ``push-uvloop``: the same with ``[server] backend = "uvloop"``), or of the
trivial app under hypercorn's trio or asyncio worker with dockyard's settings answering
HEADs (``trivial-trio``, ``trivial-asyncio``), then each sample is charged to the
innermost frame of a known part (hypercorn, h11, trio's socket I/O, to_thread hand-off and
scheduler, asyncio, dockyard's HTTP middleware/auth/logging, dockyard's registry logic,
dockyard's SQLite layer; other frames are charged to the part that called them) and the
functions with the most own and cumulative samples are listed. Needs ``pip install
py-spy`` (root, or ptrace allowed). Usage::

    python -m perf.profile_serve sample head [--duration 20] [--top 15]
    python -m perf.profile_serve sample push [--size-mib 256] [--count 4] [--top 15]
    python -m perf.profile_serve sample push-uvloop [--size-mib 256] [--count 4]
    python -m perf.profile_serve sample trivial-trio [--duration 20] [--raw FILE]

``cprofile``: cProfile of the main thread of one dockyard worker (built as
``create_app()`` builds it, served by hypercorn's trio ``serve()`` in process) while it
answers manifest HEADs by tag: functions by cumulative and own time (cProfile's own
overhead inflates the absolute figures; py-spy's ``sample`` is the unbiased split)::

    python -m perf.profile_serve cprofile [--duration 10] [--top 30]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import importlib.util
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from perf import oci
from perf.data import ACCEPT, blob, image
from perf.floor import APP_LIFESPAN, TRIVIAL_APP, _wait_ready
from perf.httpclient import Connection
from perf.procstat import cpu_seconds, process_tree
from perf.profile_upload import push as push_blob
from perf.rate import build_requests, run_py
from perf.servers import PULL_EVENTS_OFF, Distribution, distribution_binary, free_port

# What ``dockyard serve`` sets on hypercorn's Config (src/dockyard/cli.py) with the default
# settings, for the trivial app (read_timeout stays unset: server.read_timeout is 0, off).
DOCKYARD_HYPERCORN = """
h11_max_incomplete_size = 16384
h2_max_header_list_size = 16384
max_app_queue_size = 4
websocket_max_message_size = 65536
"""

TUNED = """
keep_alive_max_requests = 1000000000
include_date_header = false
include_server_header = false
"""


@dataclass
class Subject:
    name: str
    what: str
    start: Callable[[Path], tuple[subprocess.Popen[bytes], int]]
    path: str
    method: str = "HEAD"
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    port: int = 0


# The trivial app with what dockyard's create_app() does to hypercorn before serving:
# its HTTP/1 edge (a stricter h11 connection), the connection guard, the read size.
EDGE_APP = (
    TRIVIAL_APP
    + """
from dockyard.http import edge, h2edge
from dockyard.services import set_read_size
set_read_size(256 * 1024)
edge.install()
h2edge.install()
"""
)


# EDGE_APP's hooks on hypercorn's asyncio worker (uvloop), as create_app() installs them
# there, with the feeds' stop notice (its per-connection send lock).
EDGE_APP_UVLOOP = (
    TRIVIAL_APP
    + """
from dockyard.http import edge, h2edge, websocket
from dockyard.services import set_read_size
set_read_size(1024 * 1024, "uvloop")
edge.install()
h2edge.install("uvloop")
websocket.install_stop_notice("uvloop")
"""
)


# The trivial app with the cyclic garbage collector run less often: objects alive after
# start-up are frozen out of it and generation 0 collects every 50,000 allocations
# (default 700). Per-request garbage is mostly freed by reference counting anyway.
GC_APP = (
    TRIVIAL_APP
    + """
import gc
gc.freeze()
gc.set_threshold(50_000, 20, 100)
"""
)


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a started server's process group (it runs in a session of its own)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)


def _ready_or_stop(proc: subprocess.Popen[bytes], ready: Callable[[], object]) -> None:
    """Run ``ready``; if it fails, stop the server's process group before raising."""
    try:
        ready()
    except BaseException:
        _stop_group(proc)
        raise


def _hypercorn(
    worker: str, toml: str, app: str = TRIVIAL_APP
) -> Callable[[Path], tuple[subprocess.Popen[bytes], int]]:
    def start(work: Path) -> tuple[subprocess.Popen[bytes], int]:
        module = f"trivial_{abs(hash(app))}"
        (work / f"{module}.py").write_text(app)
        port = free_port()
        config = work / f"hypercorn-{worker}-{abs(hash(toml))}.toml"
        config.write_text(f'bind = ["127.0.0.1:{port}"]\nworker_class = "{worker}"\n{toml}')
        proc = subprocess.Popen(
            [sys.executable, "-m", "hypercorn", "--config", str(config), f"{module}:app"],
            cwd=work,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        _ready_or_stop(proc, lambda: _wait_ready(port, "/"))
        return proc, port

    return start


def _dockyard(
    work: Path, settings: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_LOG_ACCESS"] = "false"  # as perf.run's dockyard
    env.update(settings or {})
    data = Path(tempfile.mkdtemp(prefix="dockyard-", dir=work))
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockyard.cli", "serve", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--data-dir", str(data)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip

    def ready() -> None:
        _wait_ready(port, "/healthz")
        _push_manifest(port)

    _ready_or_stop(proc, ready)
    return proc, port


def _distribution(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    server = Distribution(install=False)
    server.start()
    _DISTRIBUTIONS.append(server)  # stopped by the caller's cleanup, even if the push fails
    _push_manifest(server.port)
    assert server.proc is not None
    return server.proc, server.port


_DISTRIBUTIONS: list[Distribution] = []


def _push_manifest(port: int) -> None:
    """floor:v1, a one-layer image, pushed the same way to every registry."""
    with Connection("127.0.0.1", port, timeout=30) as conn:
        oci.push_image(conn, "floor", "v1", image("floor", [blob("floor-layer", 4096)]))


def subjects() -> list[Subject]:
    found = [
        Subject(
            "trivial-trio", "hypercorn 0.18 trio worker, defaults", _hypercorn("trio", ""), "/"
        ),
        Subject(
            "trivial-trio-dockyardcfg",
            "trio worker, dockyard serve's hypercorn settings",
            _hypercorn("trio", DOCKYARD_HYPERCORN),
            "/",
        ),
        Subject(
            "trivial-trio-tuned",
            "trio worker, dockyard's settings + keep_alive_max_requests unbounded, "
            "no Date/Server header",
            _hypercorn("trio", DOCKYARD_HYPERCORN + TUNED),
            "/",
        ),
        Subject(
            "trivial-trio-dockyardedge",
            "trio worker, dockyard's settings + its HTTP/1 edge, connection guard, read size",
            _hypercorn("trio", DOCKYARD_HYPERCORN, EDGE_APP),
            "/",
        ),
        Subject(
            "trivial-trio-gc",
            "trio worker, dockyard's settings, gc.freeze() + gc threshold 50,000",
            _hypercorn("trio", DOCKYARD_HYPERCORN, GC_APP),
            "/",
        ),
        Subject(
            "trivial-trio-accesslog",
            "trio worker, dockyard's settings + hypercorn access log to a file",
            _hypercorn("trio", DOCKYARD_HYPERCORN + 'accesslog = "access.log"\n'),
            "/",
        ),
        Subject(
            "trivial-asyncio", "hypercorn asyncio worker, defaults", _hypercorn("asyncio", ""), "/"
        ),
    ]
    if importlib.util.find_spec("uvloop") is not None:
        found.append(
            Subject(
                "trivial-uvloop", "hypercorn uvloop worker, defaults", _hypercorn("uvloop", ""), "/"
            )
        )
    else:
        print("uvloop is not installed: no trivial-uvloop row", flush=True)
    if importlib.util.find_spec("uvloop") is not None:
        found.append(
            Subject(
                "trivial-uvloop-dockyardedge",
                "uvloop worker, dockyard's settings and hooks (edge, guard, read size, send lock)",
                _hypercorn("uvloop", DOCKYARD_HYPERCORN + TUNED, EDGE_APP_UVLOOP),
                "/",
            )
        )
        found.append(
            Subject(
                "dockyard-head-tag-uvloop",
                "dockyard serve --workers 1, [server] backend = uvloop, manifest HEAD by tag",
                lambda work: _dockyard(work, {"DOCKYARD_SERVER_BACKEND": "uvloop"}),
                "/v2/floor/manifests/v1",
            )
        )
        found.append(
            Subject(
                "dockyard-get-tag-uvloop",
                "the same, manifest GET by tag (records a pull event)",
                lambda work: _dockyard(work, {"DOCKYARD_SERVER_BACKEND": "uvloop"}),
                "/v2/floor/manifests/v1",
                "GET",
            )
        )
        found.append(
            Subject(
                "dockyard-get-tag-uvloop-nopulls",
                "the same with pull events off (DOCKYARD_EVENTS_RECORD_PULLS=false)",
                lambda work: _dockyard(
                    work, {"DOCKYARD_SERVER_BACKEND": "uvloop", **PULL_EVENTS_OFF}
                ),
                "/v2/floor/manifests/v1",
                "GET",
            )
        )
    found += [
        Subject("dockyard-healthz", "dockyard serve --workers 1, /healthz", _dockyard, "/healthz"),
        Subject(
            "dockyard-head-tag",
            "dockyard serve --workers 1, manifest HEAD by tag",
            _dockyard,
            "/v2/floor/manifests/v1",
        ),
        Subject(
            "dockyard-head-tag-nopulls",
            "the same with pull events off (DOCKYARD_EVENTS_RECORD_PULLS=false)",
            lambda work: _dockyard(work, PULL_EVENTS_OFF),
            "/v2/floor/manifests/v1",
        ),
    ]
    try:
        distribution_binary(install=False)
        found.append(
            Subject(
                "distribution-head-tag",
                "Distribution (perf/servers.py), manifest HEAD by tag",
                _distribution,
                "/v2/floor/manifests/v1",
            )
        )
        found.append(
            Subject(
                "distribution-get-tag",
                "Distribution (perf/servers.py), manifest GET by tag",
                _distribution,
                "/v2/floor/manifests/v1",
                "GET",
            )
        )
    except FileNotFoundError as e:
        print(f"no distribution-head-tag row: {e}", flush=True)
    return found


def floor(repeats: int, duration: float, only: list[str]) -> int:
    chosen = [s for s in subjects() if not only or s.name in only]
    results: dict[str, list[tuple[float, float]]] = {s.name: [] for s in chosen}
    with tempfile.TemporaryDirectory(prefix="perf-profile-serve-") as tmp:
        work = Path(tmp)
        started: list[subprocess.Popen[bytes]] = []
        try:
            for s in chosen:
                proc, s.port = s.start(work)
                started.append(proc)
                s.procs = [proc]
            if _DISTRIBUTIONS:
                print(f"Distribution: {_DISTRIBUTIONS[0].description}", flush=True)
            for repeat in range(repeats):
                for s in chosen if repeat % 2 == 0 else list(reversed(chosen)):
                    time.sleep(0.3)
                    pids = process_tree([p.pid for p in s.procs])
                    requests = build_requests(
                        "127.0.0.1", s.port, s.method, [s.path], [("Accept", ACCEPT)]
                    )
                    before = cpu_seconds(pids)
                    res = run_py(
                        "127.0.0.1", s.port, requests, head=s.method == "HEAD", connections=16,
                        duration=duration, max_requests=10**7,
                    )  # fmt: skip
                    cpu = cpu_seconds(process_tree([p.pid for p in s.procs])) - before
                    if res.failed or not res.ok:
                        raise RuntimeError(f"{s.name}: {res.failed} failed, {res.errors[:2]}")
                    results[s.name].append((res.ok / res.elapsed, cpu / res.ok * 1e6))
                    print(
                        f"  r{repeat} {s.name}: {res.ok / res.elapsed:.0f} req/s, "
                        f"{cpu / res.ok * 1e6:.0f} CPU-us/req",
                        flush=True,
                    )
        finally:
            for d in _DISTRIBUTIONS:
                d.stop()
            for proc in started:
                _stop_group(proc)
    _print_table(chosen, results, "req/s", "server CPU-us/req", 0)
    return 0


def _print_table(
    chosen: list[Subject],
    results: dict[str, list[tuple[float, float]]],
    rate: str,
    cost: str,
    digits: int,
) -> None:
    """The Markdown table of (rate, cost) per subject: median rate, cost median [min-max]."""
    print()
    print(f"| server | what | {rate} (median) | {cost} (median [min-max]) |")
    print("|---|---|---|---|")
    for s in chosen:
        costs = [c for _, c in results[s.name]]
        middle = statistics.median([r for r, _ in results[s.name]])
        print(
            f"| {s.name} | {s.what} | {middle:.0f} | {statistics.median(costs):.{digits}f} "
            f"[{min(costs):.{digits}f}-{max(costs):.{digits}f}] |"
        )


# An app that drains a request body and answers 201: the HTTP stack's cost per GiB
# received, with no hashing and no file.
SINK_APP = (
    APP_LIFESPAN
    + """\
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 201,
                "headers": [(b"content-length", b"0")]})
    await send({"type": "http.response.body", "body": b""})
"""
)

SINK_READ_SIZE = """
from dockyard.services import set_read_size
set_read_size(256 * 1024)
"""


def upload_subjects() -> list[Subject]:
    found = [
        Subject(
            "sink-trio",
            "trio worker, defaults (64 KiB reads)",
            _hypercorn("trio", "", SINK_APP),
            "/",
        ),
        Subject(
            "sink-trio-dockyardcfg",
            "trio worker, dockyard's settings and 256 KiB reads (server.read_size)",
            _hypercorn("trio", DOCKYARD_HYPERCORN, SINK_APP + SINK_READ_SIZE),
            "/",
        ),
        Subject(
            "sink-trio-1mib",
            "trio worker, dockyard's settings and 1 MiB reads",
            _hypercorn(
                "trio", DOCKYARD_HYPERCORN, SINK_APP + SINK_READ_SIZE.replace("256", "1024")
            ),
            "/",
        ),
        Subject(
            "sink-asyncio", "asyncio worker, defaults", _hypercorn("asyncio", "", SINK_APP), "/"
        ),
    ]
    if importlib.util.find_spec("uvloop") is not None:
        found.append(
            Subject(
                "sink-uvloop", "uvloop worker, defaults", _hypercorn("uvloop", "", SINK_APP), "/"
            )
        )
    else:
        print("uvloop is not installed: no sink-uvloop row", flush=True)
    return found


def _post(port: int, size: int, block: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest("POST", "/")
    conn.putheader("Content-Length", str(size))
    conn.endheaders()
    for _ in range(size // len(block)):
        conn.send(block)
    response = conn.getresponse()
    response.read()
    conn.close()
    if response.status != 201:
        raise RuntimeError(f"POST answered {response.status}")


def upload_floor(repeats: int, size_mib: int, count: int) -> int:
    """Server CPU-s per GiB of request body for the sink app under each worker."""
    chosen = upload_subjects()
    results: dict[str, list[tuple[float, float]]] = {s.name: [] for s in chosen}
    block = os.urandom(1 << 20)
    with tempfile.TemporaryDirectory(prefix="perf-profile-serve-") as tmp:
        started: list[subprocess.Popen[bytes]] = []
        try:
            for s in chosen:
                proc, s.port = s.start(Path(tmp))
                started.append(proc)
                s.procs = [proc]
            for repeat in range(repeats):
                for s in chosen if repeat % 2 == 0 else list(reversed(chosen)):
                    time.sleep(0.3)
                    pids = process_tree([p.pid for p in s.procs])
                    before = cpu_seconds(pids)
                    t0 = time.monotonic()
                    for _ in range(count):
                        _post(s.port, size_mib << 20, block)
                    wall = time.monotonic() - t0
                    cpu = cpu_seconds(process_tree([p.pid for p in s.procs])) - before
                    gib = count * size_mib / 1024
                    results[s.name].append((count * size_mib / wall, cpu / gib))
                    print(
                        f"  r{repeat} {s.name}: {count * size_mib / wall:.0f} MiB/s, "
                        f"{cpu / gib:.2f} CPU-s/GiB",
                        flush=True,
                    )
        finally:
            for proc in started:
                _stop_group(proc)
    _print_table(chosen, results, "MiB/s", "server CPU-s/GiB", 2)
    return 0


# Parts a sample is charged to: the innermost frame whose file matches, checked in order.
PARTS: list[tuple[str, re.Pattern[str]]] = [
    ("SQLite (dockyard/meta/sqlite, sqlite3)", re.compile(r"dockyard/meta/sqlite/|(^|/)sqlite3/")),
    (
        "dockyard HTTP middleware/auth/logging",
        re.compile(r"dockyard/http/[a-z0-9_]+\.py|dockyard/(auth|observability)/"),
    ),
    ("dockyard registry logic (handlers, core, meta, storage)", re.compile(r"dockyard/")),
    ("h11", re.compile(r"(^|/)h11/")),
    ("hypercorn", re.compile(r"(^|/)hypercorn/")),
    (
        "trio socket I/O (its wrappers and the send/recv system calls)",
        re.compile(r"(^|/)trio/(_socket|_highlevel_socket)\.py"),
    ),
    ("trio to_thread hand-off", re.compile(r"(^|/)trio/(_threads\.py|_core/_thread_cache\.py)")),
    ("trio scheduler and the rest of trio", re.compile(r"(^|/)(trio|outcome|sniffio)/")),
    ("asyncio event loop and transports", re.compile(r"(^|/)(asyncio|uvloop)/|selectors\.py")),
]
FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*):(?P<line>\d+)\)$")


# py-spy's own shortening names some of dockyard's modules by their file name alone
# ("stream.py"), so it is asked for full names and these prefixes are cut here.
_PREFIX = re.compile(r"^.*/site-packages/|^.*/src/|^.*/lib/python3\.\d+/")


def short_frame(frame: str) -> str:
    """``func (path:line)`` with the path from its package (``dockyard/core/stream.py``)."""
    m = FRAME.match(frame)
    if m is None:
        return frame
    path = _PREFIX.sub("", m["file"])
    if path.startswith("/"):  # outside any package (the trivial app's module)
        path = Path(path).name
    return f"{m['func']} ({path}:{m['line']})"


def part_of(stack: list[str]) -> str:
    for frame in reversed(stack):
        m = FRAME.match(frame)
        if m is None:
            continue
        for name, pattern in PARTS:
            if pattern.search(m["file"]):
                return name
    return "other (interpreter, stdlib not called from the above)"


def summarize(lines: Iterable[str], top: int) -> str:
    """Charged parts and top functions from py-spy's raw (collapsed) output."""
    parts: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    total = torn = 0
    for line in lines:
        line = line.rstrip("\n")
        if not line:
            continue
        stacktext, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():  # a stack torn by --nonblocking reads: left out
            torn += 1
            continue
        count = int(count_text)
        # py-spy puts the thread ("process 1:thread 2") first when asked; we do not ask.
        stack = [short_frame(f) for f in stacktext.split(";")]
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack]  # per function, not per line
        total += count
        parts[part_of(stack)] += count
        own[frames[-1]] += count
        for f in set(frames):
            cumulative[f] += count
    out = [
        f"{total} samples (non-idle; {torn} unreadable lines left out)",
        "",
        "| part | share of samples |",
        "|---|---|",
    ]
    out += [f"| {name} | {100 * n / total:.1f}% |" for name, n in parts.most_common()]
    # The worker's root chain (process start, trio.run, hypercorn's serve loop) is in
    # nearly every sample and says nothing: cumulative lists start below it.
    below = collections.Counter({f: n for f, n in cumulative.items() if n < 0.9 * total})
    for title, counter in (("own", own), ("cumulative (below 90%)", below)):
        out += ["", f"| top {top} by {title} samples | share |", "|---|---|"]
        out += [f"| `{f}` | {100 * n / total:.1f}% |" for f, n in counter.most_common(top)]
    return "\n".join(out)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def sample(
    kind: str, duration: float, size_mib: int, count: int, top: int, rate: int, raw: Path | None
) -> int:
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(pyspy).exists():
        print("needs py-spy: pip install py-spy", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="perf-profile-serve-") as tmp:
        work = Path(tmp)
        if kind.startswith("trivial-"):
            worker = kind.removeprefix("trivial-")
            proc, port = _hypercorn(worker, DOCKYARD_HYPERCORN)(work)
            path = "/"
        else:
            uvloop = kind.endswith("-uvloop")
            backend = {"DOCKYARD_SERVER_BACKEND": "uvloop"} if uvloop else {}
            kind = kind.removesuffix("-uvloop")
            proc, port = _dockyard(work, backend)
            path = "/v2/floor/manifests/v1"
        try:
            # hypercorn's one worker is a child process (dockyard's and the CLI's alike).
            workers = [
                p for p in process_tree([proc.pid]) if p != proc.pid and "spawn_main" in _cmdline(p)
            ] or [proc.pid]
            if len(workers) != 1:
                raise RuntimeError(f"expected one worker under {proc.pid}, found {workers}")
            out = raw or work / "pyspy.txt"
            spy_seconds = 600 if kind == "push" else duration
            # --nonblocking: without it py-spy stops the worker for every sample, and in a
            # trial it counted the to_thread workers' waits as busy (half the samples).
            spy = subprocess.Popen(
                [pyspy, "record", "--pid", str(workers[0]), "--format", "raw",
                 "--rate", str(rate), "--duration", str(int(spy_seconds)),
                 "--nonblocking", "--full-filenames", "--output", str(out)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )  # fmt: skip
            time.sleep(1.0)  # py-spy attaches
            cpu0 = cpu_seconds([workers[0]])
            t0 = time.monotonic()
            if kind != "push":
                method = "GET" if kind == "get" else "HEAD"
                requests = build_requests("127.0.0.1", port, method, [path], [("Accept", ACCEPT)])
                res = run_py(
                    "127.0.0.1", port, requests, head=method == "HEAD", connections=16,
                    duration=duration - 2, max_requests=10**7,
                )  # fmt: skip
                done, unit = res.ok, "requests"
            else:
                done, unit = 0, "MiB pushed"
                for i in range(count):
                    mib_s = push_blob(port, size_mib << 20, 1000 + i)
                    print(f"push {i + 1}: {mib_s:.0f} MiB/s", flush=True)
                    done += size_mib
            cpu = cpu_seconds([workers[0]]) - cpu0
            wall = time.monotonic() - t0
            spy.send_signal(signal.SIGINT)  # py-spy writes what it has on SIGINT
            _, err = spy.communicate(timeout=60)
            print(
                f"worker: {done} {unit} in {wall:.1f} s, {cpu:.2f} CPU-s "
                + (
                    f"({cpu / done * 1e6:.0f} CPU-us per request)"
                    if kind != "push"
                    else f"({cpu / done * 1024:.2f} CPU-s per GiB)"
                )
            )
            if not out.exists():
                print(err.decode(errors="replace"), file=sys.stderr)
                return 1
            print(summarize(out.read_text(errors="replace").split("\n"), top))
        finally:
            _stop_group(proc)
    return 0


# One dockyard worker as create_app() makes it (hypercorn patches included), served by
# hypercorn's trio serve() inside cProfile; stdin's end stops it and prints the profile.
CPROFILE_SERVER = """
import cProfile, pstats, sys, trio
from hypercorn.config import Config
from hypercorn.trio import serve
from dockyard.config import load
from dockyard.http import edge, h2edge
from dockyard.services import build, set_read_size

root, port, out, top = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
settings = load(environ={"DOCKYARD_STORAGE_ROOT": root, "DOCKYARD_LOG_ACCESS": "false"})
set_read_size(settings.server.read_size)
edge.install(settings.server.header_timeout, settings.server.max_header_bytes,
             settings.server.max_headers)
h2edge.install()
app = build(settings).app
config = Config()
config.bind = [f"127.0.0.1:{port}"]
config.accesslog = None
config.max_app_queue_size = 4
profile = cProfile.Profile()


async def main() -> None:
    stop = trio.Event()

    async def watch_stdin() -> None:
        await trio.to_thread.run_sync(sys.stdin.readline)
        profile.enable()  # the first line starts the profile, the end of stdin stops
        await trio.to_thread.run_sync(sys.stdin.read)
        profile.disable()
        stop.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_stdin)
        await serve(app, config, shutdown_trigger=stop.wait)
        nursery.cancel_scope.cancel()


trio.run(main)
profile.dump_stats(out)
for key in ("cumulative", "tottime"):
    print(f"== by {key}")
    pstats.Stats(out).sort_stats(key).print_stats(top)
print("== dockyard's own functions by cumulative")
pstats.Stats(out).sort_stats("cumulative").print_stats("/dockyard/", top)
"""


def cprofile_head(duration: float, top: int) -> int:
    """cProfile of one worker's main thread (trio, hypercorn, h11, dockyard; not the
    to_thread workers, where SQLite runs) while it answers manifest HEADs by tag."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="perf-profile-serve-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        server = subprocess.Popen(
            [sys.executable, "-c", CPROFILE_SERVER, f"{tmp}/data", str(port),
             f"{tmp}/profile.out", str(top)],
            stdin=subprocess.PIPE,
            env=env,
        )  # fmt: skip
        assert server.stdin is not None
        try:
            _wait_ready(port, "/v2/")
            _push_manifest(port)
            server.stdin.write(b"go\n")
            server.stdin.flush()
            requests = build_requests(
                "127.0.0.1", port, "HEAD", ["/v2/floor/manifests/v1"], [("Accept", ACCEPT)]
            )
            res = run_py(
                "127.0.0.1", port, requests, head=True, connections=16,
                duration=duration, max_requests=10**7,
            )  # fmt: skip
            print(f"{res.ok} HEADs profiled ({res.failed} failed)", flush=True)
        finally:
            server.stdin.close()
            server.wait(120)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.profile_serve",
        description=(__doc__ or "").split("\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    sub = parser.add_subparsers(dest="what", required=True)
    f = sub.add_parser("floor", help="server CPU-us per HEAD, alternated")
    f.add_argument("--repeats", type=int, default=5)
    f.add_argument("--duration", type=float, default=4.0)
    f.add_argument("--only", nargs="*", default=[], help="subject names")
    u = sub.add_parser("upload-floor", help="server CPU-s per GiB of body, sink app")
    u.add_argument("--repeats", type=int, default=5)
    u.add_argument("--size-mib", type=int, default=64)
    u.add_argument("--count", type=int, default=8)
    s = sub.add_parser("sample", help="py-spy on dockyard's worker")
    s.add_argument(
        "kind",
        choices=[
            "head",
            "head-uvloop",
            "get",
            "get-uvloop",
            "push",
            "push-uvloop",
            "trivial-trio",
            "trivial-asyncio",
        ],
    )
    s.add_argument("--duration", type=float, default=20.0, help="head: seconds sampled")
    s.add_argument("--size-mib", type=int, default=256, help="push: blob size")
    s.add_argument("--count", type=int, default=4, help="push: blobs")
    s.add_argument("--top", type=int, default=15)
    s.add_argument("--rate", type=int, default=500, help="py-spy samples per second")
    s.add_argument("--raw", type=Path, help="keep py-spy's raw (collapsed) stacks in this file")
    c = sub.add_parser("cprofile", help="cProfile of dockyard's worker answering HEADs")
    c.add_argument("--duration", type=float, default=10.0)
    c.add_argument("--top", type=int, default=30)
    args = parser.parse_args(argv)
    if args.what == "upload-floor":
        return upload_floor(args.repeats, args.size_mib, args.count)
    if args.what == "cprofile":
        return cprofile_head(args.duration, args.top)
    if args.what == "floor":
        return floor(args.repeats, args.duration, args.only)
    return sample(
        args.kind, args.duration, args.size_mib, args.count, args.top, args.rate, args.raw
    )


if __name__ == "__main__":
    sys.exit(main())
