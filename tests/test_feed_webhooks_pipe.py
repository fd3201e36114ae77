"""``dockyard events webhooks failed | head -1`` stops quietly (issue 14: it ended with a
BrokenPipeError traceback). The CLI runs as a subprocess whose stdout is a pipe the
reader closes after one line, with more failed rows than the pipe holds."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dockyard.meta.open import open_meta
from dockyard.meta.records import Event
from tests.conftest import make_settings

ROWS = 2000  # about 400 KiB of output: several times a pipe's buffer


def failed_deliveries(root: Path) -> None:
    meta = open_meta(make_settings(root))
    try:
        meta.migrate()
        meta.append_events([Event("push", f"repo/{i}") for i in range(ROWS)])
        meta.webhook_init(["hook"])
        assert meta.webhook_acquire("hook", "i/a", 30) is not None
        for event_id in range(1, ROWS + 1):
            assert meta.webhook_failed("hook", "i/a", event_id, 3, "refused " * 20, False)
    finally:
        meta.close()


@pytest.mark.parametrize("json", [False, True])
def test_failed_into_a_closed_pipe_exits_quietly(tmp_path: Path, json: bool) -> None:
    root = tmp_path / "data"
    failed_deliveries(root)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_STORAGE_ROOT"] = str(root)
    args = ["events", "webhooks", "failed", *(["--json"] if json else [])]
    proc = subprocess.Popen(
        [sys.executable, "-m", "dockyard.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `head -1` does: the rest cannot be written
    stderr = proc.stderr.read().decode(errors="replace")
    proc.stderr.close()
    code = proc.wait(timeout=60)
    assert first.strip(), "the command printed something first"
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr, stderr
    assert code == 0, stderr
