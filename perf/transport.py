"""What TLS and HTTP/2 cost dockyard itself: one build, alternated in one run.

::

    python -m perf.transport [--repeats 3] [--workers 2] [--quick]

Two dockyard servers of the same build (``--workers``, fresh data each), one plain and
one serving HTTPS with a certificate made for the run, and three clients: plain HTTP/1.1,
TLS HTTP/1.1 and TLS HTTP/2 (the last two against the same HTTPS server), through the
manifest-rps (16 connections) and blob-push scenarios, alternated (plain, tls, h2, then
h2, tls, plain, ...). Prints the median of each headline figure per transport and its
ratio to plain: the share of ``perf.run --tls``/``--http2`` figures that is the transport.

First it counts how many bytes trio's ``SSLStream.receive_some`` returns per call when
asked for 1 MiB while 64 MiB stream in over loopback TLS, alone (one TLS record) and
wrapped in ``dockyard.tls.WholeReads`` as hypercorn's trio worker reads every TLS
connection (every record already received): the size of the body messages dockyard's
upload path gets over TLS (``dockyard serve`` asks hypercorn for 1 MiB reads).

Prints only; nothing is appended to ``perf/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import ssl
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio

from dockyard.tls import WholeReads
from perf.run import run_scenarios
from perf.scenarios import Params, Record, Target
from perf.servers import Dockyard
from perf.tls import ClientTLS, ServerTLS, make_certificates

KEYS = {
    "manifest-rps": ("req_s", "server_cpu_us_per_req", "client_cpu_us_per_req"),
    "blob-push": ("mib_s", "server_cpu_s_per_gib", "client_cpu_s"),
}


def sslstream_reads(
    files: ServerTLS, total: int = 64 << 20, ask: int = 1 << 20, whole: bool = False
) -> list[int]:
    """The sizes trio's SSLStream.receive_some(``ask``) returned while ``total`` bytes
    arrived over loopback TLS (through ``WholeReads`` if ``whole``)."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(files.cert, files.key)
    client_context = ssl.create_default_context(cafile=str(files.ca))
    sizes: list[int] = []

    async def main() -> None:
        done = trio.Event()

        async def serve(stream: trio.SocketStream) -> None:
            tls: Any = trio.SSLStream(stream, server_context, server_side=True)
            if whole:
                tls = WholeReads.wrap(tls)
            while sum(sizes) < total:
                sizes.append(len(await tls.receive_some(ask)))
            done.set()

        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, serve, listeners)
            client = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", port, ssl_context=client_context
            )
            block = bytes(ask)
            for _ in range(total // ask):
                await client.send_all(block)
            with trio.fail_after(60):
                await done.wait()
            await client.aclose()
            nursery.cancel_scope.cancel()

    trio.run(main)
    return sizes


def medians(records: list[Record], targets: list[Target]) -> list[str]:
    lines = []
    for scenario, case in sorted({(r.scenario, r.case) for r in records}):
        for key in KEYS[scenario]:
            values = []
            for t in targets:
                got = [
                    r.figures[key]
                    for r in records
                    if (r.scenario, r.case, r.label) == (scenario, case, t.label)
                ]
                values.append(statistics.median(got) if got else float("nan"))
            cells = [f"{t.name} {v:.4g}" for t, v in zip(targets, values, strict=True)]
            ratios = [f"{v / values[0]:.2f}x" if values[0] else "-" for v in values[1:]]
            lines.append(
                f"{scenario}/{case} {key}: {' | '.join(cells)}  (to plain: {', '.join(ratios)})"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m perf.transport", description=__doc__)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, 1 repeat")
    args = ap.parse_args(argv)
    params = Params.quick() if args.quick else Params().with_overrides(rps_connections=(16,))
    repeats = 1 if args.quick else args.repeats
    with tempfile.TemporaryDirectory(prefix="perf-tls-") as directory:
        certs = make_certificates(Path(directory))
        for whole in (False, True):
            sizes = sslstream_reads(certs, whole=whole)
            print(
                f"trio SSLStream.receive_some(1 MiB){' in WholeReads' if whole else ''}: "
                f"{len(sizes)} reads for {sum(sizes) >> 20} MiB, largest {max(sizes)} B, "
                f"median {statistics.median(sizes):.0f} B",
                flush=True,
            )
        with (
            Dockyard(workers=args.workers) as plain,
            Dockyard(workers=args.workers, tls=certs) as tls,
        ):
            targets = [
                Target("plain", "plain", plain.url, [plain.pid]),
                Target("tls", "tls-http1.1", tls.url, [tls.pid], tls=ClientTLS(certs.ca)),
                Target("h2", "tls-http2", tls.url, [tls.pid], tls=ClientTLS(certs.ca, True)),
            ]
            records = run_scenarios(["manifest-rps", "blob-push"], params, targets, repeats)
    print()
    print("\n".join(medians(records, targets)))
    failures = sum(r.failures for r in records)
    if failures:
        print(f"{failures} failed operations")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
