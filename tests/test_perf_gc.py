"""perf.gc --quick against a real dockyard: the benchmark runs end to end, the collector
deletes what the data's reference model says (a mismatch is one of the problems ``run``
returns), pushes go on while it runs, and the table carries every figure."""

from __future__ import annotations

from perf.gc import LABELS, run, table
from perf.gcdata import Shape


def test_gc_benchmark_quick() -> None:
    results, problems, made = run(
        Shape.quick(), repeats=1, workers=1, threads=2, window=0.5, sample=500
    )
    assert problems == []
    (figures,) = results
    assert figures["deleted_blobs"] > 100 and figures["deleted_links"] > 0
    assert figures["freed_mib"] > 0
    assert figures["pushes_during_gc"] > 0 and figures["pushes_s_without_gc"] > 0
    assert figures["failed_pushes"] == 0
    # The interpreter and dockyard alone take tens of MiB; CPU and wall time are real.
    assert figures["gc_peak_rss_mib"] > 20 and figures["scan_peak_rss_mib"] > 20
    assert figures["gc_cpu_s"] > 0 and figures["gc_collect_s"] < figures["gc_wall_s"]
    assert made > 0
    text = table(results)
    for label in LABELS.values():
        assert f"| {label} |" in text
