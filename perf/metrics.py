"""What Prometheus metrics cost per request: manifest HEAD rate with metrics on and off.

Two ``dockyard serve`` processes of the same build and worker count run at once, each on
its own temporary data directory: one with the default ``[metrics] enabled = true`` (every
request counted and timed, every database call and storage operation timed, the values
in prometheus_client's multiprocess files shared by the workers), one with
``DOCKYARD_METRICS_ENABLED=false``. While the "on" server is measured a scraper fetches
its ``/metrics`` from another process every ``--scrape-interval`` seconds (default 1: ten
to sixty times what a Prometheus usually asks). Runs alternate (on, off, then reversed),
and the figures are medians over the repeats with the ratio to "off" per
repeat::

    python -m perf.metrics --repeats 5               # prints, and appends to perf/RESULTS.md
    python -m perf.metrics --repeats 1 --no-record   # a smoke run

The issue's bar: the rate with metrics on is at least 0.95x the rate with them off.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import sys
from typing import Any

from perf.httpclient import Connection
from perf.modes import (
    HEAD_HEADERS,
    Results,
    alternated,
    common_args,
    head_load,
    machine,
    push_images,
    ratio_table,
    record,
    report,
)
from perf.servers import Dockyard

MODES = ("on", "off")
SETTINGS = {"on": {}, "off": {"DOCKYARD_METRICS_ENABLED": "false"}}


class Scraper:
    """GET /metrics every ``interval`` seconds from a process of its own, as Prometheus
    would: a thread of this process would take the GIL from the load generator and lower
    the "on" rate for a reason that is not dockyard's."""

    def __init__(self, port: int, interval: float) -> None:
        self.port = port
        self._count = multiprocessing.Value("i", 0)
        self._stop = multiprocessing.Event()
        self._process = multiprocessing.Process(
            target=_scrape, args=(port, interval, self._stop, self._count), daemon=True
        )

    @property
    def scrapes(self) -> int:
        return int(self._count.value)

    def __enter__(self) -> Scraper:
        self._process.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._process.join()
        if self._process.exitcode != 0:
            raise RuntimeError(f"the scraper failed (exit code {self._process.exitcode})")


def _scrape(port: int, interval: float, stop: Any, count: Any) -> None:
    with Connection("127.0.0.1", port) as conn:
        while not stop.wait(interval):
            r = conn.request("GET", "/metrics", [], keep_body=True)
            if r.status != 200:
                raise RuntimeError(f"/metrics answered {r.status}")
            count.value += 1


def run(
    repeats: int, duration: float, connections: int, workers: int, scrape_interval: float
) -> Results:
    servers: dict[str, Dockyard] = {}
    results: Results = {m: [] for m in MODES}
    try:
        for mode in MODES:
            server = Dockyard(workers=workers, settings=SETTINGS[mode])
            server.start()
            servers[mode] = server
            targets = push_images(server)
        for repeat in range(repeats):
            for mode in alternated(MODES, repeat):
                server = servers[mode]
                if mode == "on":
                    with Scraper(server.port, scrape_interval) as scraper:
                        figures = head_load(server, targets, HEAD_HEADERS, connections, duration)
                    figures["scrapes"] = scraper.scrapes
                else:
                    figures = head_load(server, targets, HEAD_HEADERS, connections, duration)
                    figures["scrapes"] = 0
                results[mode].append(figures)
                report(repeat, mode, figures)
    finally:
        for server in servers.values():
            server.stop()
    return results


def table(results: Results) -> str:
    return ratio_table("metrics", MODES, "off", results)


def main() -> int:
    ap = common_args(__doc__.splitlines()[0])
    ap.add_argument(
        "--scrape-interval", type=float, default=1.0, help="seconds between scrapes of 'on'"
    )
    args = ap.parse_args()
    started = dt.datetime.now(dt.UTC)
    m = machine()
    results = run(args.repeats, args.duration, args.connections, args.workers, args.scrape_interval)
    text = table(results)
    print(text)
    failed = sum(int(r["failed"]) for rs in results.values() for r in rs)
    if args.record:
        setup = (
            f"Manifest HEAD by tag, {args.connections} connections, {args.duration:g} s per "
            f"measurement, dockyard --workers {args.workers} per server, two servers "
            'alternated (metrics on, off, then reversed); /metrics of the "on" server '
            f"scraped every {args.scrape_interval:g} s (from another process) while it is "
            "measured."
        )
        record("perf.metrics", started, m, setup, text)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
