"""The GC consistency checker (tests/gc_consistency.py) and the data generator's reference
model (perf/gcdata.py) checked on their own: a generated store is consistent, each kind of
damage is reported, and a store reduced by hand to the model's survivors passes the
completed-run checks that the untouched store fails."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from perf.gcdata import Dataset, Shape, expected, generate

from tests.gc_consistency import Completed, blob_path, check, gc_delete_events

GRACE = 3600.0


@pytest.fixture
def data(tmp_path: Path) -> Dataset:
    return generate(tmp_path / "data", Shape.quick())


def sql(data: Dataset, statement: str, *args: object) -> None:
    conn = sqlite3.connect(data.database)
    try:
        with conn:
            conn.execute(statement, args)
    finally:
        conn.close()


def test_generated_store_is_consistent(data: Dataset) -> None:
    report = check(data.database, data.root)
    report.assert_ok()
    assert report.blobs == len(data.blobs) == report.hashed
    assert report.manifests == len(data.manifests)
    assert report.tags == len(data.tags)
    sampled = check(data.database, data.root, sample=10, seed=3)
    assert sampled.ok and sampled.hashed == 10


def test_each_kind_of_damage_is_reported(data: Dataset) -> None:
    digests = sorted(data.blobs)
    blob_path(data.root, digests[0]).unlink()
    blob_path(data.root, digests[1]).write_bytes(b"short")
    path = blob_path(data.root, digests[2])
    flipped = bytearray(path.read_bytes())
    flipped[-1] ^= 0xFF
    path.write_bytes(bytes(flipped))
    tagged = next(m for m in data.manifests.values() if m.tags)
    linked = next(
        d for _, d in sorted(data.links) if d not in digests[:3] and d not in tagged.blobs
    )
    conn = sqlite3.connect(data.database)
    with conn:
        conn.execute("PRAGMA foreign_keys = OFF")
        conn.execute("DELETE FROM blobs WHERE digest = ?", (linked,))
        conn.execute(
            "DELETE FROM repository_blobs WHERE digest = ? AND repository_id = "
            "(SELECT id FROM repositories WHERE name = ?)",
            (tagged.blobs[-1], tagged.repository),
        )
        conn.execute("DELETE FROM manifests WHERE digest = ?", (tagged.digest,))
        conn.execute("INSERT INTO blob_deletions (digest, marked) VALUES ('sha256:00', 0)")
    conn.close()

    report = check(data.database, data.root)
    text = "\n".join(report.violations)
    assert f"blob {digests[0]}: row without bytes" in text
    assert f"blob {digests[1]}: row says" in text
    assert f"blob {digests[2]}: stored bytes hash differently" in text
    assert f"link {linked} in repository id" in text
    assert f"{tagged.repository}@{tagged.digest} references blob {tagged.blobs[-1]}" in text
    assert f"tag {tagged.repository}:{tagged.tags[0]} -> {tagged.digest}: no such" in text
    assert report.orphan_files == 1  # the bytes of the deleted row
    # blob_deletions rows count only once a run has completed.
    assert "blob_deletions" not in text
    completed = check(data.database, data.root, completed=Completed(data.now, GRACE))
    assert "blob_deletions row sha256:00 left by a completed run" in completed.violations


def test_unlinked_reference_is_reported(data: Dataset) -> None:
    image = next(m for m in data.manifests.values() if m.tags and m.blobs)
    sql(
        data,
        "DELETE FROM repository_blobs WHERE digest = ? AND repository_id = "
        "(SELECT id FROM repositories WHERE name = ?)",
        image.blobs[0],
        image.repository,
    )
    report = check(data.database, data.root)
    assert report.violations == [
        f"{image.repository}@{image.digest} references blob {image.blobs[0]}, not linked"
    ]


def reference_collection(data: Dataset, started: float) -> int:
    """Delete by hand what the model says a collection removes; bytes after rows."""
    keep = expected(data, started, GRACE)
    conn = sqlite3.connect(data.database)
    with conn:
        ids = dict(conn.execute("SELECT name, id FROM repositories").fetchall())
        for repo, digest in set(data.manifests) - keep.manifests:
            for table, column in (
                ("manifests", "digest"),
                ("manifest_references", "manifest_digest"),
            ):
                conn.execute(
                    f"DELETE FROM {table} WHERE repository_id = ? AND {column} = ?",
                    (ids[repo], digest),
                )
        for repo, digest in set(data.links) - keep.links:
            conn.execute(
                "DELETE FROM repository_blobs WHERE repository_id = ? AND digest = ?",
                (ids[repo], digest),
            )
        gone = set(data.blobs) - keep.blobs
        conn.executemany("DELETE FROM blobs WHERE digest = ?", [(d,) for d in gone])
    conn.close()
    for digest in gone:
        blob_path(data.root, digest).unlink()
    return len(gone)


def test_model_collection_passes_the_completed_checks(data: Dataset) -> None:
    done = Completed(data.now + 1, GRACE, orphan_bytes=True)
    before = check(data.database, data.root, completed=done)
    old_unlinked = [v for v in before.violations if ": unlinked, last used" in v]
    needless = [v for v in before.violations if ": nothing needs it" in v]
    assert old_unlinked, "the generated store has old unlinked blobs to collect"
    assert needless, "and old links no manifest uses"
    assert len(old_unlinked) + len(needless) == len(before.violations)

    removed = reference_collection(data, done.started)
    assert removed > len(old_unlinked)  # blobs of collected manifests and links too
    after = check(data.database, data.root, completed=done)
    after.assert_ok("after the model's collection")
    # Recent unlinked blobs are inside the grace period: still there.
    assert after.unlinked_blobs > 0
    # An unlinked blob older than the grace period, left behind, is reported.
    keep = expected(data, done.started, GRACE)
    survivor = next(d for d in sorted(keep.blobs) if data.blobs[d][1] < done.cutoff)
    sql(data, "DELETE FROM repository_blobs WHERE digest = ?", survivor)
    late = check(data.database, data.root, completed=done)
    assert any(v.startswith(f"blob {survivor}: unlinked") for v in late.violations)


def test_gc_delete_events_are_counted_by_kind(data: Dataset) -> None:
    def body(actor: str, kind: str, by: str) -> str:
        return json.dumps({"target": {"kind": kind, "by": by}, "actor": {"name": actor}})

    rows = [
        ("delete", body("gc", "blob", "gc")),
        ("delete", body("gc", "blob", "gc")),
        ("delete", body("gc", "link", "gc")),
        ("delete", body("alice", "manifest", "")),  # a client's DELETE
        ("push", body("gc", "blob", "gc")),
    ]
    conn = sqlite3.connect(data.database)
    with conn:
        conn.executemany("INSERT INTO events (ts, action, body) VALUES (0, ?, ?)", rows)
    conn.close()
    assert gc_delete_events(data.database) == Counter(blob=2, link=1)
