"""``dockyard scanner-adapter --listen HOST:PORT [--config F]``: serve Harbor's Pluggable
Scanner API v1.2 over the built-in Trivy runner (scanning/adapter.py, docs/scanning.md).

It reads the same configuration as ``dockyard serve``: ``[scanning]`` for trivy (binary,
database repository, cache directory, concurrency, timeout; ``rescan_interval``: how often
it looks for a newer database) and ``[scanning.adapter]`` for the Authorization callers
must send, the reports' lifetime and the bound on pending scans. It needs no metadata
database or blob storage: the scanner pulls each image from the registry the scan request
names. Stops on SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import trio

from dockyard.config import Settings

SettingsLoader = Callable[[argparse.Namespace], Settings]
log = logging.getLogger("dockyard.scanning.adapter")


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    adapter = sub.add_parser(
        "scanner-adapter",
        help="serve Harbor's Pluggable Scanner API over the built-in Trivy runner",
        description="Serve Harbor's Pluggable Scanner API v1.2 (/api/v1/metadata, /scan,"
        " /scan/{id}/report) over dockyard's Trivy runner, for Harbor or a dockyard with"
        ' [scanning] scanner = "harbor". See docs/scanning.md.',
    )
    adapter.add_argument("--config", "-c", help="TOML config file ([scanning], [scanning.adapter])")
    adapter.add_argument(
        "--listen",
        required=True,
        metavar="HOST:PORT",
        help="address to serve on, e.g. 127.0.0.1:8080",
    )
    adapter.set_defaults(func=lambda args: _run(args, settings(args)))


async def _serve(settings: Settings, listen: str) -> None:
    from dockyard.scanning.adapter import ScannerAdapter, ScannerIdentity
    from dockyard.scanning.scanner import ScanFailed
    from dockyard.scanning.trivy import TrivyScanner

    scanning = settings.scanning
    cache_dir = Path(scanning.cache_dir or os.path.join(settings.storage.root, "trivy-cache"))
    scanner = TrivyScanner(scanning, cache_dir)
    try:
        version = await scanner.version()
    except ScanFailed as e:  # metadata says so; each scan then fails with the reason
        log.warning("trivy: %s", e)
        version = "unknown"
    database = scanner.current_database()
    adapter = ScannerAdapter(
        scanner,
        scanning.adapter,
        ScannerIdentity("Trivy", "Aqua Security", version),
        concurrency=scanning.concurrency,
        timeout=scanning.timeout,
        db_updated=database.updated if database else None,
        database_interval=scanning.rescan_interval,
    )

    async def stop_on_signal() -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                return

    try:
        async with trio.open_nursery() as nursery:
            bound = await nursery.start(
                lambda task_status: adapter.serve(
                    [listen], shutdown_trigger=stop_on_signal, task_status=task_status
                )
            )
            log.info("scanner adapter (trivy %s) serving on %s", version, ", ".join(bound))
    finally:
        with trio.CancelScope(shield=True):
            await scanner.aclose()


def _run(args: argparse.Namespace, settings: Settings) -> int:
    from dockyard.observability.logs import configure_logging

    host, colon, port = args.listen.rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        print(
            f"dockyard scanner-adapter: --listen {args.listen!r}: expected HOST:PORT",
            file=sys.stderr,
        )
        return 2
    if not settings.scanning.adapter.authorization:
        print(
            "dockyard scanner-adapter: no [scanning.adapter] authorization: every caller that"
            " can reach this address may scan",
            file=sys.stderr,
        )
    configure_logging(settings)
    trio.run(_serve, settings, args.listen)
    return 0
