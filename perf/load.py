"""Run tasks on C keep-alive connections between a start barrier and a deadline.

A task is a callable that uses one :class:`Connection` (a whole blob push, an image
pull...). ``concurrency`` lanes each own a connection and take the next task until none
is left or the deadline passed, so every loop is bounded in count (the task list) and in
time (``time_limit``; a request in flight is bounded by the socket timeout). Every lane
connects before the clock starts.

Lanes are threads; with ``procs > 1`` they are spread over forked processes (data made
before the fork is shared copy-on-write, so nothing is pickled but the results), which
keeps a client doing many small requests off a single core's GIL.

With ``tls`` every lane's connection is TLS (and HTTP/2 with ``tls.http2``:
``httpclient.open_connection``).
"""

from __future__ import annotations

import multiprocessing
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from perf.forked import run_forked
from perf.httpclient import Connection, open_connection
from perf.procstat import own_cpu_seconds
from perf.tls import ClientTLS

Task = Callable[[Connection], object]


@dataclass
class LoadResult:
    started: float = 0.0  # time.monotonic() at the start barrier
    ended: float = 0.0  # when the last lane finished
    latencies: list[float] = field(default_factory=list)  # seconds, successful tasks
    ok: int = 0
    failed: int = 0
    not_run: int = 0  # left when the deadline passed
    requests: int = 0
    sent: int = 0
    received: int = 0
    reconnects: int = 0
    client_cpu_s: float = 0.0
    errors: list[str] = field(default_factory=list)  # the first few failures

    @property
    def elapsed(self) -> float:
        return max(self.ended - self.started, 1e-9)

    def merge(self, other: LoadResult) -> None:
        self.ended = max(self.ended, other.ended)
        self.latencies += other.latencies
        self.ok += other.ok
        self.failed += other.failed
        self.not_run += other.not_run
        self.requests += other.requests
        self.sent += other.sent
        self.received += other.received
        self.reconnects += other.reconnects
        self.client_cpu_s += other.client_cpu_s
        self.errors += other.errors[: max(0, 5 - len(self.errors))]


class _Queue:
    """Hands out task indexes; shared by lanes (and processes, through a shared int)."""

    def __init__(self, count: int, shared: Any = None) -> None:
        self.count = count
        self._shared = shared
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        if self._shared is not None:
            with self._shared.get_lock():
                i: int = self._shared.value
                self._shared.value = i + 1
        else:
            with self._lock:
                i = self._next
                self._next += 1
        return i if i < self.count else None


def _lane(
    host: str,
    port: int,
    tasks: Sequence[Task],
    queue: _Queue,
    ready: threading.Barrier,
    go: threading.Event,
    deadline: list[float],
    result: LoadResult,
    lock: threading.Lock,
    timeout: float,
    tls: ClientTLS | None,
) -> None:
    conn = open_connection(host, port, timeout, tls)
    local = LoadResult()
    try:
        try:
            conn.connect()
        except OSError as e:
            local.errors.append(f"connect: {type(e).__name__}: {e}")
        ready.wait()
        go.wait()
        while True:
            i = queue.take()
            if i is None:
                break
            if time.monotonic() > deadline[0]:
                local.not_run += 1
                continue
            t0 = time.perf_counter()
            try:
                tasks[i](conn)
            except Exception as e:
                local.failed += 1
                if len(local.errors) < 5:
                    local.errors.append(f"{type(e).__name__}: {e}")
                conn.close()
            else:
                local.latencies.append(time.perf_counter() - t0)
                local.ok += 1
    finally:
        conn.close()
        local.ended = time.monotonic()
        local.requests = conn.counters.requests
        local.sent = conn.counters.sent
        local.received = conn.counters.received
        local.reconnects = conn.counters.reconnects
        with lock:
            result.merge(local)


def _run_threads(
    host: str,
    port: int,
    tasks: Sequence[Task],
    lanes: int,
    queue: _Queue,
    time_limit: float,
    timeout: float,
    before_start: Callable[[], Any] | None,
    tls: ClientTLS | None = None,
) -> LoadResult:
    result = LoadResult()
    lock = threading.Lock()
    ready = threading.Barrier(lanes + 1)
    go = threading.Event()
    deadline = [float("inf")]
    threads = [
        threading.Thread(
            target=_lane,
            args=(host, port, tasks, queue, ready, go, deadline, result, lock, timeout, tls),
            name=f"lane-{i}",
            daemon=True,
        )
        for i in range(lanes)
    ]
    for t in threads:
        t.start()
    ready.wait()  # every lane connected
    if before_start is not None:
        before_start()
    cpu0 = own_cpu_seconds()
    result.started = time.monotonic()
    deadline[0] = result.started + time_limit
    go.set()
    for t in threads:
        t.join()
    result.client_cpu_s = own_cpu_seconds() - cpu0
    return result


def run_tasks(
    host: str,
    port: int,
    tasks: Sequence[Task],
    concurrency: int,
    *,
    procs: int = 1,
    time_limit: float = 600.0,
    timeout: float = 120.0,
    tls: ClientTLS | None = None,
) -> LoadResult:
    """Run ``tasks`` on ``concurrency`` connections; returns counts, bytes and latencies.

    With ``procs > 1`` the lanes are spread over that many forked processes (falls back
    to threads in this process when other threads are running, where fork is unsafe).
    """
    concurrency = max(1, min(concurrency, len(tasks) or 1))
    procs = max(1, min(procs, concurrency))
    if procs == 1 or threading.active_count() > 1:
        return _run_threads(
            host, port, tasks, concurrency, _Queue(len(tasks)), time_limit, timeout, None, tls
        )
    shared = multiprocessing.get_context("fork").Value("q", 0)
    queue = _Queue(len(tasks), shared)
    split = [concurrency // procs + (1 if i < concurrency % procs else 0) for i in range(procs)]

    def work(index: int, wait_for_start: Callable[[], Any]) -> LoadResult:
        return _run_threads(
            host, port, tasks, split[index], queue, time_limit, timeout, wait_for_start, tls
        )

    def failed(e: BaseException) -> LoadResult:
        result = LoadResult(failed=1, errors=[traceback.format_exc(limit=3)])
        result.ended = time.monotonic()
        return result

    return run_forked(procs, work, failed, LoadResult(), join_timeout=timeout)
