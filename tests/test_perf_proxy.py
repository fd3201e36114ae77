"""perf.proxy --quick against a real Distribution and dockyard's cache: every pull of the
four (cold through the cache, direct, warm through the cache, local) completes with the
image's bytes, each server's CPU is read, and the table carries every row."""

from __future__ import annotations

from perf.proxy import LABELS, MODES, Shape, run, table

from tests.distribution import require_distribution


def test_proxy_benchmark_quick() -> None:
    require_distribution()
    results, problems, upstream = run(Shape.quick(), repeats=1, workers=1)
    assert problems == []
    assert "2.8" in upstream, upstream
    (figures,) = results
    for mode in MODES:
        assert figures[mode]["wall_s"] > 0 and figures[mode]["mib_s"] > 0
    text = table(results)
    for label in LABELS.values():
        assert f"| {label} |" in text
