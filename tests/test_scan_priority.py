"""[scanning] priority: the scanner's processes start at the asked CPU priority, inherited
by every thread they make (a real child process reports its own policy and niceness)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from dockyard.scanning.trivy import priority_prefix

REPORT = "import os; print(os.sched_getscheduler(0), os.nice(0))"


def started_at(priority: str) -> tuple[int, int]:
    out = subprocess.run(
        [*priority_prefix(priority), sys.executable, "-c", REPORT],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[0]), int(out[1])


@pytest.mark.skipif(not hasattr(os, "SCHED_IDLE"), reason="SCHED_IDLE is Linux's")
def test_idle_is_sched_idle() -> None:
    assert started_at("idle")[0] == os.SCHED_IDLE


def test_low_is_nice_19() -> None:
    policy, niceness = started_at("low")
    assert policy == os.SCHED_OTHER and niceness == 19


def test_normal_is_as_dockyard_runs() -> None:
    assert started_at("normal") == (os.sched_getscheduler(0), os.nice(0))
