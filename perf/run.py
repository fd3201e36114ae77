"""The perf suite's command line.

The documented full comparison (also ``nox -s perf``)::

    python -m perf.run all --compare

installs Debian's docker-registry if missing (or, with
``DOCKYARD_PERF_DISTRIBUTION=PATH``, uses that Distribution binary, e.g. 3.1.1 built from
source: ``perf/README.md``), starts dockyard (``--workers`` one per core) and the
Distribution on loopback with temporary data directories, runs every scenario once
against the discard server (the client's ceiling), then 5 alternated repeats against both
(A, B, B, A, ...), stops both by pid, and appends a dated section to ``perf/RESULTS.md``
(naming the Distribution version) with the raw JSON lines in ``perf/results/``. The
events scenario runs last and against dockyard only (Distribution has no event feed): for
it a second dockyard with pull events off is started, compared with the first (on, off,
off, on, ...) and stopped again.

Other uses::

    python -m perf.run all --compare --quick          # tiny sizes, 1 repeat, no record
    python -m perf.run blob-push catalog --compare --repeats 3 --big-size 256M
    python -m perf.run manifest-rps --url http://127.0.0.1:5000 --pid 1234
    python -m perf.run events --url http://127.0.0.1:5000 --pid 1234 \\
        --pulls-off-url http://127.0.0.1:5001 --pulls-off-pid 5678
    python -m perf.run all --compare --a http://127.0.0.1:5000 --a-pid 11 \\
                                     --b http://127.0.0.1:5001 --b-pid 22
    python -m perf.run all --ceiling                  # only the discard server
    python -m perf.run manifest-rps blob-push --compare --repeats 3 --tls      # over TLS
    python -m perf.run manifest-rps blob-push --compare --repeats 3 --http2    # HTTP/2

``--tls`` makes every server of a managed run (dockyard, the Distribution, the discard
server) speak HTTPS with a certificate made for the run (``perf/tls.py``) and the client
verify it, over HTTP/1.1 (ALPN http/1.1). ``--http2`` (implies ``--tls``) has the client
speak HTTP/2 (ALPN h2); the discard server speaks HTTP/1.1 only, so that run has no
ceiling. Every connection checks that the server chose the protocol asked for and fails
otherwise; the run also probes each server before the first scenario and records what it
negotiated. The events scenario is not run over TLS (its subscribers speak plain HTTP).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, TextIO

from perf import report
from perf.scenarios import SCENARIOS, Params, Record, Scenario, Target
from perf.servers import (
    DISTRIBUTION_ENV,
    PULL_EVENTS_OFF,
    DiscardServer,
    Distribution,
    Dockyard,
    Server,
)
from perf.tls import ClientTLS, ServerTLS, make_certificates

HERE = Path(__file__).resolve().parent
ORDER = list(SCENARIOS)


def parse_size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def summary(record: Record) -> str:
    if record.skipped:
        return (
            f"  {record.scenario}/{record.case} {record.label}={record.server} "
            f"r{record.repeat}: not run: {record.skipped}"
        )
    keys = report.HEADLINES.get(record.scenario, ())
    skip = report.SKIP.get((record.scenario, record.case), ())
    parts = [f"{k}={report.fmt(record.figures[k])}" for k in keys if k in record.figures]
    parts = [p for p in parts if p.split("=")[0] not in skip]
    fails = (
        f" FAILURES={record.failures} {record.info.get('errors', '')}" if record.failures else ""
    )
    return (
        f"  {record.scenario}/{record.case} {record.label}={record.server} "
        f"r{record.repeat}: {' '.join(parts)}{fails}"
    )


def run_scenarios(
    names: Sequence[str],
    params: Params,
    targets: Sequence[Target],
    repeats: int,
    ceiling: Target | None = None,
    sink: Callable[[Record], None] = lambda r: None,
    log: TextIO = sys.stdout,
    settle: float = 0.5,
) -> list[Record]:
    """Run scenarios: setup everywhere, one ceiling pass, then alternated repeats."""
    records: list[Record] = []

    def keep(recs: list[Record]) -> None:
        for r in recs:
            records.append(r)
            sink(r)
            print(summary(r), file=log, flush=True)

    for name in names:
        scenario: Scenario = SCENARIOS[name](params)
        print(f"== {name}", file=log, flush=True)
        everywhere = ([ceiling] if ceiling else []) + list(targets)
        for t in everywhere:
            t0 = time.monotonic()
            scenario.setup(t)
            print(f"  setup on {t.name}: {time.monotonic() - t0:.1f} s", file=log, flush=True)
        prepared = -1
        if ceiling is not None:
            scenario.prepare(0)
            prepared = 0
            keep(scenario.run(ceiling, 0))
        for r in range(repeats):
            if prepared != r:
                scenario.prepare(r)
                prepared = r
            order = list(targets) if r % 2 == 0 else list(reversed(targets))
            for t in order:
                time.sleep(settle)
                keep(scenario.run(t, r))
    return records


def results_section(
    command: str,
    started: dt.datetime,
    info: dict[str, Any],
    records: Sequence[Record],
    names: dict[str, str],
    jsonl: Path,
    notes: Sequence[str],
    transport: str = "",
) -> str:
    m = info["machine"]
    shown = jsonl.relative_to(HERE.parent) if jsonl.is_relative_to(HERE.parent) else jsonl
    over = f" ({transport})" if transport else ""
    lines = [
        f"## {started.strftime('%Y-%m-%d %H:%M UTC')}: `{command}`{over}",
        "",
        f"- Machine: nproc {m['nproc']}, {m['cpu_model']}, {m['memory_gib']} GiB memory, "
        f"Linux {m['kernel']}, Python {m['python']}; load average at start "
        f"{', '.join(f'{x:.2f}' for x in m['loadavg'])}, at end "
        f"{', '.join(f'{x:.2f}' for x in info.get('loadavg_end', ()))}.",
    ]
    for label in ("A", "A-off", "B"):
        if label in names or label in info["descriptions"]:
            lines.append(f"- {label}: {info['descriptions'].get(label, names.get(label))}")
    lines += [
        f"- Repeats: {info['repeats']} alternated (A, B, B, A, ...); figures are median "
        "[min-max] over the repeats, A/B ratios per repeat.",
        f"- Raw JSON lines: `{shown}`",
        *[f"- {n}" for n in notes],
        "",
        report.table(records, names, against=info["descriptions"].get("B", "")),
        "",
        *events_notes(records),
        "Server CPU per unit of work beside Distribution 3.1's (from the perf issue):",
        "",
        report.reference_table(records, names),
        "",
    ]
    return "\n".join(lines)


def distribution_note(distribution: Distribution) -> str:
    """Which Distribution B was and where it came from (RESULTS.md)."""
    version = ".".join(map(str, distribution.version)) or "unknown version"
    if os.environ.get(DISTRIBUTION_ENV):
        source = f"the binary `{DISTRIBUTION_ENV}` named"
    else:
        source = "Debian's docker-registry package"
    extra = ""
    exporter = distribution.env().get("OTEL_TRACES_EXPORTER")
    if distribution.version >= (3,) and exporter:
        extra = f", `OTEL_TRACES_EXPORTER={exporter}`"
    return (
        f"Distribution compared against: {version} ({source}; `{distribution.description}`){extra}."
    )


def events_notes(records: Sequence[Record]) -> list[str]:
    """How the events figures were measured, when the scenario ran (RESULTS.md)."""
    if not any(r.scenario == "events" and not r.skipped for r in records):
        return []
    return [
        "events: `delivery` latency is, per subscriber and push, the subscriber's arrival "
        "time of the event (CLOCK_MONOTONIC right after the `recv` that completed its "
        "websocket frame, in the subscriber processes) minus the event's `timestamp` "
        "(when the server made it, CLOCK_REALTIME of the same host, moved to "
        "CLOCK_MONOTONIC); `from_response_*` use the PUT's 201 response arrival instead "
        "(negative when the server fans out before it answers: no latency). "
        "`pulls-*` run the same workload against dockyard with pull events on and a twin "
        "with `DOCKYARD_EVENTS_RECORD_PULLS=false` (same workers), alternately; "
        "`pull_events_cost_pct` is 100 x (1 - on/off) of req/s per repeat, `cpu_cost_pct` "
        "the same for server CPU per request (read until the batched pull-event writes "
        "after the workload are done). No subscriber is connected during the pulls.",
        "",
    ]


def transport_name(tls: bool, http2: bool) -> str:
    """How the client speaks to every server of the run (RESULTS.md heading)."""
    if not (tls or http2):
        return ""
    return "over TLS, HTTP/2 (ALPN h2)" if http2 else "over TLS, HTTP/1.1"


def probe(target: Target) -> str:
    """Connect to ``target`` as the scenarios will and say what was negotiated; raises
    (``perf.tls.ProtocolMismatch``) if the server did not choose the protocol asked for."""
    with target.connection(timeout=10) as conn:
        what = conn.negotiated()
        status = conn.request("GET", "/v2/").status
    if status not in (200, 401):
        raise RuntimeError(f"{target.name} at {target.url}: GET /v2/ answered {status}")
    return what


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m perf.run",
        description="Load-test OCI registries; compare two alternately.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("scenarios", nargs="*", default=["all"], help=f"all or {', '.join(ORDER)}")
    parser.add_argument(
        "--compare", action="store_true", help="compare A and B (started here unless --a/--b)"
    )
    parser.add_argument("--url", help="a single registry to measure (label A)")
    parser.add_argument("--pid", type=int, action="append", default=[], help="its server pid(s)")
    parser.add_argument("--name", default="registry", help="its name in reports")
    parser.add_argument("--a", help="registry A's URL (compare with running registries)")
    parser.add_argument("--a-pid", type=int, action="append", default=[])
    parser.add_argument("--a-name", default="A")
    parser.add_argument("--b", help="registry B's URL")
    parser.add_argument("--b-pid", type=int, action="append", default=[])
    parser.add_argument("--b-name", default="B")
    parser.add_argument(
        "--pulls-off-url",
        help="events: A's twin with pull events off (started here in a managed --compare)",
    )
    parser.add_argument("--pulls-off-pid", type=int, action="append", default=[])
    parser.add_argument(
        "--subscribers", type=int, default=None, help="events: websocket subscribers (1000)"
    )
    parser.add_argument(
        "--subscriber-procs", type=int, default=None, help="events: subscriber processes (2)"
    )
    parser.add_argument("--event-rate", type=float, default=None, help="events: pushes/s (10)")
    parser.add_argument(
        "--workers", type=int, default=None, help="dockyard workers (default: one per core)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="alternated repeats (default 5; --quick 1)"
    )
    parser.add_argument("--quick", action="store_true", help="tiny sizes for a smoke run")
    parser.add_argument(
        "--big-size", type=parse_size, default=None, help="big-blob size, e.g. 4G or 256M"
    )
    parser.add_argument("--rps-engine", choices=["py", "wrk"], default=None)
    parser.add_argument(
        "--procs", type=int, default=None, help="client processes for request-heavy phases"
    )
    parser.add_argument(
        "--ceiling",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run once against the discard server (default: on with --compare)",
    )
    parser.add_argument(
        "--record",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="append to perf/RESULTS.md (default: on for a started, non-quick compare)",
    )
    parser.add_argument(
        "--out", type=Path, help="raw JSON lines file (default perf/results/<time>.jsonl)"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="never apt-get install docker-registry"
    )
    parser.add_argument(
        "--note", action="append", default=[], help="a line to add to the RESULTS.md section"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="every server speaks HTTPS (a certificate made for the run), client HTTP/1.1",
    )
    parser.add_argument(
        "--http2", action="store_true", help="the client speaks HTTP/2 by ALPN (implies --tls)"
    )
    parser.add_argument(
        "--backend",
        choices=["trio", "asyncio", "uvloop"],
        default=None,
        help="the dockyard it starts serves on this event loop ([server] backend; default trio)",
    )
    parser.add_argument(
        "--ca",
        type=Path,
        help="with --tls and running registries (--url, --a/--b): the CA to verify them with",
    )
    args = parser.parse_args(argv)  # fmt: skip

    names = ORDER if "all" in args.scenarios else args.scenarios
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {unknown}; known: {ORDER}")
    # events last: in a managed compare it starts (and then stops) a second dockyard.
    names = [n for n in names if n != "events"] + [n for n in names if n == "events"]
    params = Params.quick() if args.quick else Params()
    params = params.with_overrides(
        big_size=args.big_size,
        rps_engine=args.rps_engine,
        procs=args.procs,
        events_subscribers=args.subscribers,
        events_procs=args.subscriber_procs,
        events_rate=args.event_rate,
    )
    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    managed = args.compare and not (args.a or args.b)
    if args.compare and not managed and not (args.a and args.b):
        parser.error("--compare with running registries needs both --a and --b")
    ceiling_on = args.ceiling if args.ceiling is not None else args.compare
    if not args.compare and not args.url and not ceiling_on:
        parser.error("give --compare, --url URL or --ceiling")
    record = args.record if args.record is not None else (managed and not args.quick)
    workers = args.workers or len(os.sched_getaffinity(0))
    if args.pulls_off_url and managed:
        parser.error("--pulls-off-url is for registries already running (--url or --a)")
    tls_on = args.tls or args.http2
    transport = ""
    if tls_on:
        if "events" in args.scenarios:
            parser.error("events is not run over TLS (its subscribers speak plain HTTP)")
        if "events" in names:
            names = [n for n in names if n != "events"]
            print("events left out: its subscribers speak plain HTTP, not TLS", flush=True)
        if params.rps_engine == "wrk":
            parser.error("--rps-engine wrk does not verify certificates: not with --tls")
        if not managed and args.ca is None:
            parser.error("--tls with running registries needs --ca (the CA they use)")
        if args.http2 and args.ceiling:
            parser.error("the discard server speaks HTTP/1.1 only: no ceiling with --http2")
        if args.http2:
            ceiling_on = False
        transport = transport_name(args.tls, args.http2)

    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    out_path: Path = args.out or (
        HERE / "results" / f"{stamp}.jsonl"
        if record
        else Path("/tmp") / f"dockyard-perf-{stamp}.jsonl"
    )
    out_path.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m perf.run " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))

    servers: list[Server] = []
    targets: list[Target] = []
    descriptions: dict[str, str] = {}
    notes: list[str] = list(args.note)
    ceiling: Target | None = None
    certificates: Path | None = None
    server_tls: ServerTLS | None = None
    client_tls: ClientTLS | None = None
    if tls_on and managed:
        certificates = Path(tempfile.mkdtemp(prefix="perf-tls-"))
        server_tls = make_certificates(certificates)
        client_tls = ClientTLS(server_tls.ca, args.http2)
    elif tls_on:
        client_tls = ClientTLS(args.ca, args.http2)
    # The event loop the dockyard it starts runs on (its description names it).
    backend = {"DOCKYARD_SERVER_BACKEND": args.backend} if args.backend else {}
    try:
        if managed:
            dockyard = Dockyard(workers=workers, tls=server_tls, settings=backend)
            distribution = Distribution(install=not args.no_install, tls=server_tls)
            for server in (dockyard, distribution):
                servers.append(server)
                server.start()
            targets = [
                Target("A", "dockyard", dockyard.url, [dockyard.pid], tls=client_tls),
                Target("B", "distribution", distribution.url, [distribution.pid], tls=client_tls),
            ]
            descriptions = {"A": dockyard.description, "B": distribution.description}
            notes.append(
                f"dockyard runs {workers} hypercorn worker(s) (`--workers {workers}`, one per "
                "core); its CPU is summed over the serve process and all its workers."
            )
            notes.append(distribution_note(distribution))
        elif args.compare:
            targets = [
                Target("A", args.a_name, args.a, args.a_pid, tls=client_tls),
                Target("B", args.b_name, args.b, args.b_pid, tls=client_tls),
            ]
        elif args.url:
            targets = [Target("A", args.name, args.url, args.pid, tls=client_tls)]
        if args.pulls_off_url and targets:
            targets[0].pulls_off = Target(
                "A-off", f"{targets[0].name} (pull events off)", args.pulls_off_url,
                args.pulls_off_pid,
            )  # fmt: skip
        if ceiling_on:
            discard = DiscardServer(tls=server_tls)
            servers.append(discard)
            discard.start()
            ceiling = Target("ceiling", "discard", discard.url, [discard.pid], tls=client_tls)
        for t in targets:
            shown = descriptions.get(t.label, t.name)
            print(f"{t.label}: {shown} at {t.url} pids {t.pids}", flush=True)
            if not t.pids:
                print(f"  (no pid for {t.name}: server CPU figures will read 0)", flush=True)
        if client_tls is not None:
            for t in targets + ([ceiling] if ceiling else []):
                what = probe(t)
                print(f"{t.label}: negotiated {what}", flush=True)
                notes.append(
                    f"{t.label} ({t.name}) negotiated {what} (checked on every connection)."
                )
            if args.http2:
                notes.append("No ceiling: the discard server speaks HTTP/1.1 only.")
        if managed:
            print(f"dockyard runs with --workers {workers} (one per core)", flush=True)
        names_map = {t.label: t.name for t in targets}
        info: dict[str, Any] = {
            "type": "run",
            "command": command,
            "started": started.isoformat(),
            "machine": report.machine(),
            "repeats": repeats,
            "scenarios": list(names),
            "params": params.as_dict(),
            "targets": [asdict(t) for t in targets],
            "descriptions": descriptions or names_map,
            "transport": transport or "plain HTTP/1.1",
        }
        with open(out_path, "w") as out:
            out.write(json.dumps(info, default=str) + "\n")

            def sink(r: Record) -> None:
                out.write(report.record_json(r) + "\n")
                out.flush()

            first = [n for n in names if n != "events"]
            records = run_scenarios(first, params, targets, repeats, ceiling, sink)
            if "events" in names:
                twin: Dockyard | None = None
                if managed:
                    twin = Dockyard(workers=workers, settings={**PULL_EVENTS_OFF, **backend})
                    servers.append(twin)
                    twin.start()
                    targets[0].pulls_off = Target(
                        "A-off", "dockyard (pull events off)", twin.url, [twin.pid]
                    )
                    descriptions["A-off"] = twin.description
                    print(f"A-off: {twin.description} at {twin.url} pid {twin.pid}", flush=True)
                records += run_scenarios(["events"], params, targets, repeats, ceiling, sink)
                if twin is not None:
                    twin.stop()
                    servers.remove(twin)
    finally:
        for s in reversed(servers):
            s.stop()
        if certificates is not None:
            shutil.rmtree(certificates, ignore_errors=True)
    info["loadavg_end"] = os.getloadavg()
    print()
    print(report.table(records, names_map, against=descriptions.get("B", "")))
    reference = report.reference_table(records, names_map)
    if len(targets) == 2 and len(reference.splitlines()) > 2:
        print()
        print(reference)
    print(f"\nraw JSON lines: {out_path}")
    if record:
        section = results_section(
            command, started, info, records, names_map, out_path, notes, transport
        )
        with open(HERE / "RESULTS.md", "a") as f:
            f.write("\n" + section)
        print(f"appended a section to {HERE / 'RESULTS.md'}")
    failures = sum(r.failures for r in records)
    if failures:
        print(f"{failures} failed operations: see the FAILED rows and the raw JSON lines")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
