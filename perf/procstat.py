"""Server cost from ``/proc``: CPU seconds and resident memory of a process tree.

CPU time is read from ``/proc/<pid>/stat`` (utime + stime, fields 14 and 15, in clock
ticks) and summed over the given processes and all their descendants, so hypercorn's
worker processes are counted with the ``dockyard serve`` parent that started them. Over a
timed phase the difference of two readings is the work the server did, which is steadier
than wall time on a shared machine (other processes steal wall time, not CPU time).

Memory is read from ``/proc/<pid>/status``: VmRSS now, VmHWM the peak since the process
started or since ``reset_peak`` wrote ``5`` to ``/proc/<pid>/clear_refs``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User + system CPU of this process so far (the client's own cost)."""
    t = os.times()
    return t.user + t.system


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode("latin-1")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) is in parentheses and may contain spaces.
    return raw[raw.rindex(")") + 2 :].split()


def children_map() -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process on the machine."""
    out: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        out.setdefault(int(fields[1]), []).append(int(entry))
    return out


def process_tree(pids: Iterable[int]) -> list[int]:
    """The given pids and all their living descendants, each once."""
    kids = children_map()
    seen: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen or not os.path.exists(f"/proc/{pid}"):
            continue
        seen.append(pid)
        todo.extend(kids.get(pid, []))
    return sorted(seen)


def cpu_seconds(pids: Sequence[int]) -> float:
    """user + system CPU seconds of ``pids`` (each process, all its threads)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])
    return total / TICKS


def _status_kib(pid: int, key: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def rss_kib(pid: int) -> int | None:
    return _status_kib(pid, "VmRSS")


def peak_kib(pid: int) -> int | None:
    return _status_kib(pid, "VmHWM")


def reset_peak(pid: int) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False when not permitted."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


@dataclass
class MemoryGrowth:
    """Peak resident memory growth of each process over a phase, in KiB."""

    baseline_kib: dict[int, int]
    peak_kib: dict[int, int]
    peak_reset: bool
    samples: int

    @property
    def growth_kib(self) -> dict[int, int]:
        return {
            pid: max(0, self.peak_kib.get(pid, base) - base)
            for pid, base in self.baseline_kib.items()
        }

    @property
    def max_growth_mib(self) -> float:
        return max(self.growth_kib.values(), default=0) / 1024

    @property
    def total_growth_mib(self) -> float:
        return sum(self.growth_kib.values()) / 1024


class MemorySampler:
    """Samples VmRSS of ``pids`` every ``interval`` seconds in a thread, for a phase.

    The peak of each process is the larger of the sampled maximum and VmHWM read at the
    end (VmHWM is reset at the start when the kernel lets us, so it covers the phase
    exactly and catches peaks between samples).
    """

    def __init__(self, pids: Sequence[int], interval: float = 0.02) -> None:
        self.pids = list(pids)
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._peak: dict[int, int] = {}
        self._baseline: dict[int, int] = {}
        self._reset = False
        self._samples = 0

    def __enter__(self) -> MemorySampler:
        self._reset = all(reset_peak(pid) for pid in self.pids)
        for pid in self.pids:
            rss = rss_kib(pid)
            if rss is not None:
                self._baseline[pid] = rss
                self._peak[pid] = rss
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        for pid in self.pids:
            rss = rss_kib(pid)
            if rss is not None and rss > self._peak.get(pid, 0):
                self._peak[pid] = rss
        self._samples += 1

    def _run(self) -> None:
        deadline = time.monotonic() + 24 * 3600  # bounded even if never stopped
        while not self._stop.wait(self.interval) and time.monotonic() < deadline:
            self._sample()

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        if self._reset:
            for pid in self.pids:
                hwm = peak_kib(pid)
                if hwm is not None and hwm > self._peak.get(pid, 0):
                    self._peak[pid] = hwm

    def result(self) -> MemoryGrowth:
        return MemoryGrowth(dict(self._baseline), dict(self._peak), self._reset, self._samples)
