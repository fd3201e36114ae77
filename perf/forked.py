"""Run one client workload in several forked processes and merge what they measured.

A Python client saturates one core long before a registry does, so the load engines
(``load.run_tasks``, ``rate.run_py``) spread their connections over forked processes.
Every child connects first and waits at a barrier; the clock starts when all are ready;
each child sends back its result, and the parent merges them.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, Self, TypeVar


class Measured(Protocol):
    started: float

    def merge(self, other: Self) -> None: ...


R = TypeVar("R", bound=Measured)


def run_forked(
    procs: int,
    work: Callable[[int, Callable[[], Any]], R],
    failed: Callable[[BaseException], R],
    total: R,
    join_timeout: float,
) -> R:
    """Run ``work(index, wait_for_start)`` in ``procs`` forked processes.

    ``work`` calls ``wait_for_start()`` once connected and returns its result;
    ``failed(exc)`` (called in the child's ``except`` block) stands for a child that
    raised. The results are merged into ``total``, whose ``started`` is when every child
    was ready.
    """
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(procs + 1)
    out = ctx.SimpleQueue()

    def child(index: int) -> None:
        try:
            out.put(work(index, barrier.wait))
        except BaseException as e:
            out.put(failed(e))
            with contextlib.suppress(Exception):
                barrier.abort()  # do not leave the parent waiting for this process

    children = [ctx.Process(target=child, args=(i,), daemon=True) for i in range(procs)]
    for c in children:
        c.start()
    try:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=60)
        total.started = time.monotonic()
        for _ in children:
            total.merge(out.get())
    finally:
        for c in children:
            c.join(timeout=join_timeout)
            if c.is_alive():
                c.kill()
                c.join()
    return total
