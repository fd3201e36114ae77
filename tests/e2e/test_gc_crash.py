"""``kill -9`` of ``dockyard gc`` at random points never leaves an inconsistency.

A data directory with much to collect (perf/gcdata.py: hundreds of unlinked blobs and
links nothing needs, untagged manifests under a ``delete_untagged_days`` policy, referrers
whose subject is gone) is collected by real ``dockyard gc`` processes that are killed with
SIGKILL after a random delay, round after round (a seeded RNG; the seed is printed, and
``DOCKYARD_TEST_GC_CRASH_SEED`` replays one). After every round the store must be
consistent (``tests/gc_consistency.py``: no row points at missing bytes, ever) and
everything live must still be there (the reference model, ``perf.gcdata.expected``).
Finally one run to completion must leave exactly what the model keeps: every collectable
manifest, link, blob row and blob file gone, bytes orphaned by a kill included.

A dry run first must report what the model says is collectable and change nothing.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from perf.gcdata import (
    Dataset,
    Expected,
    Shape,
    copy_data,
    expected,
    gc_config,
    generate,
)

from tests.gc_consistency import Completed, check, gc_delete_events, stored_digests

pytestmark = pytest.mark.e2e

GRACE = 3600.0  # the "recent" data (used just now) is protected, the old (30 days) is not
LEASE = 5.0  # the shortest [gc] lease_seconds: a killed run's lease is free this soon
ROUNDS = 16
STEP = 0.4  # at most this much work between a run's start-up and its kill
# Enough to collect that a run's deleting lasts a while after its start-up.
SHAPE = Shape(blobs=20_000, manifests=2_000, repositories=10, untagged=0.3, referrers=0.08)


@dataclass(frozen=True)
class State:
    """What the store holds: manifests and links by repository name, blob rows, files."""

    manifests: frozenset[tuple[str, str]]
    links: frozenset[tuple[str, str]]
    blobs: frozenset[str]
    files: frozenset[str]


def state(data: Dataset) -> State:
    conn = sqlite3.connect(f"file:{data.database}?mode=ro", uri=True)
    try:
        manifests = conn.execute(
            "SELECT r.name, m.digest FROM manifests m JOIN repositories r ON r.id = m.repository_id"
        ).fetchall()
        links = conn.execute(
            "SELECT r.name, l.digest FROM repository_blobs l"
            " JOIN repositories r ON r.id = l.repository_id"
        ).fetchall()
        blobs = conn.execute("SELECT digest FROM blobs").fetchall()
    finally:
        conn.close()
    return State(
        frozenset(manifests),
        frozenset(links),
        frozenset(d for (d,) in blobs),
        frozenset(stored_digests(data.root)),
    )


def _differences(now: State, keep: Expected, missing: bool) -> list[str]:
    kinds: list[tuple[str, frozenset[Any], frozenset[Any]]] = [
        ("manifest", now.manifests, keep.manifests),
        ("link", now.links, keep.links),
        ("blob row", now.blobs, keep.blobs),
        ("blob bytes", now.files, keep.blobs),
    ]
    return [
        f"{kind} {item}"
        for kind, have, want in kinds
        for item in sorted(map(str, want - have if missing else have - want))
    ]


def lost(now: State, keep: Expected) -> list[str]:
    """What the model keeps that the store no longer has."""
    return _differences(now, keep, missing=True)


def left(now: State, keep: Expected) -> list[str]:
    """What the model collects that the store still has."""
    return _differences(now, keep, missing=False)


def expire_lease(data: Dataset) -> None:
    """Stand for waiting out a killed run's lease (the final run waits it out for real)."""
    conn = sqlite3.connect(data.database)
    try:
        with conn:
            conn.execute("UPDATE job_leases SET lease_expires = 0 WHERE name = 'gc'")
    finally:
        conn.close()


def gc(config: Path, *flags: str) -> subprocess.Popen[bytes]:
    """``dockyard gc --json`` in its own process group; its output goes to files next to
    the config (a pipe nobody reads would stall a big report, and the kill land after the
    work was done)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    with (
        open(config.with_suffix(".out"), "wb") as out,
        open(config.with_suffix(".err"), "wb") as err,
    ):
        return subprocess.Popen(
            [sys.executable, "-m", "dockyard.cli", "gc", "--config", str(config), "--json", *flags],
            env=env,
            stdout=out,
            stderr=err,
            start_new_session=True,
        )


def run_to_end(config: Path, *flags: str) -> dict[str, Any]:
    """One whole run (waiting out a killed run's lease: exit 3); its JSON report."""
    deadline = time.monotonic() + 10 * LEASE + 30
    while True:
        proc = gc(config, *flags)
        proc.wait(timeout=120)
        if proc.returncode == 0:
            report: dict[str, Any] = json.loads(config.with_suffix(".out").read_bytes())
            return report
        err = config.with_suffix(".err").read_text(errors="replace")
        assert proc.returncode == 3, f"dockyard gc exited {proc.returncode}: {err[-3000:]}"
        assert time.monotonic() < deadline, "the lease of a killed run was never freed"
        time.sleep(LEASE / 2)


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Dataset, Path]:
    data = generate(tmp_path / "data", SHAPE)
    config = tmp_path / "dockyard.toml"
    settings = f"batch_size = 1\nlease_seconds = {LEASE}"
    gc_config(config, data.root, GRACE, settings)
    return data, config


def test_gc_killed_at_random_points_leaves_the_store_consistent(
    prepared: tuple[Dataset, Path],
) -> None:
    data, config = prepared
    seed = int(os.environ.get("DOCKYARD_TEST_GC_CRASH_SEED") or random.randrange(1 << 32))
    print(f"gc crash test seed {seed} (DOCKYARD_TEST_GC_CRASH_SEED replays it)")
    rng = random.Random(seed)
    keep = expected(data, time.time(), GRACE)
    collectable = len(data.blobs) - len(keep.blobs)
    assert collectable > 300 and len(data.manifests) > len(keep.manifests)

    before = state(data)
    started = time.monotonic()
    preview = run_to_end(config, "--dry-run")
    # Kills aim at the work, not at the interpreter's start-up: deleting one item per
    # transaction takes several times as long as planning, less as less is left.
    startup = time.monotonic() - started - preview["duration_seconds"]
    work = 10 * preview["duration_seconds"]
    print(f"a dry run: start-up {startup:.2f} s, planning {preview['duration_seconds']:.2f} s")
    to_collect = len(left(before, keep))
    assert state(data) == before, "a dry run changed the store"
    assert preview["dry_run"] is True
    assert (preview["deleted_blobs"], preview["deleted_manifests"]) == (
        collectable,
        len(data.manifests) - len(keep.manifests),
    ), {k: v for k, v in preview.items() if k != "items"}

    pristine = data.root.with_name("pristine")
    copy_data(data.root, pristine)
    killed, episodes, rows = 0, 1, before
    for round_ in range(ROUNDS):
        if not left(rows, keep) and round_ < ROUNDS - 2:
            copy_data(pristine, data.root)  # all collected: again from the start
            episodes, rows = episodes + 1, before
        remaining = len(left(rows, keep)) / to_collect
        delay = startup * rng.uniform(0.8, 1.0) + rng.uniform(0.0, min(STEP, work * remaining))
        walk = rng.random() < 0.3
        proc = gc(config, *(["--walk-storage"] if walk else []))
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            killed += 1
        proc.wait()
        rows = state(data)
        print(
            f"round {round_}: {'killed' if proc.returncode == -signal.SIGKILL else 'exit'} "
            f"{proc.returncode} after {delay:.2f} s{' (walking storage)' if walk else ''}; "
            f"{len(rows.blobs)} blob rows, {len(rows.files)} files, "
            f"{len(rows.manifests)} manifests, {len(left(rows, keep))} collectable left"
        )
        # Sizes of every blob, the hash of a sample (all of them after the final run).
        report = check(data.database, data.root, sample=1000, seed=round_)
        report.assert_ok(f"after round {round_} (seed {seed})")
        missing = lost(rows, keep)
        assert not missing, f"round {round_} (seed {seed}) lost live data: {missing[:10]}"
        if proc.returncode != -signal.SIGKILL:
            err = config.with_suffix(".err").read_text(errors="replace")[-3000:]
            assert proc.returncode in (0, 3), f"round {round_}: exit {proc.returncode}: {err}"
        if proc.returncode == -signal.SIGKILL and round_ < ROUNDS - 1:
            expire_lease(data)
    assert killed, f"no run was killed (seed {seed}): the delays are too long"

    final_started = time.time()
    final = run_to_end(config)
    now = state(data)
    assert not lost(now, keep), lost(now, keep)[:10]
    assert not left(now, keep), f"collectable data left (seed {seed}): {left(now, keep)[:10]}"
    check(data.database, data.root, completed=Completed(final_started, GRACE)).assert_ok(
        f"after the final run (seed {seed})"
    )
    # Each deletion's event was committed with it, killed runs' included (this copy's
    # log started empty with the copy).
    assert gc_delete_events(data.database) == Counter(
        manifest=len(before.manifests - now.manifests),
        link=len(before.links - now.links),
        blob=len(before.blobs - now.blobs),
    )
    print(
        f"{killed} of {ROUNDS} runs killed over {episodes} copies of the data; the final run: "
        + json.dumps({k: v for k, v in final.items() if k != "items"})
    )
