"""``dockyard serve | config check | --version``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys

from dockyard import __version__
from dockyard.config import ConfigError, Settings, as_dict, load


def _settings(args: argparse.Namespace) -> Settings:
    if args.config:
        os.environ["DOCKYARD_CONFIG"] = os.path.abspath(args.config)
    overrides = {
        "DOCKYARD_SERVER_HOST": getattr(args, "host", None),
        "DOCKYARD_SERVER_PORT": getattr(args, "port", None),
        "DOCKYARD_SERVER_WORKERS": getattr(args, "workers", None),
        "DOCKYARD_STORAGE_ROOT": getattr(args, "data_dir", None),
    }
    for var, value in overrides.items():
        if value is not None:
            # The environment carries overrides to hypercorn's worker processes too.
            os.environ[var] = os.path.abspath(value) if var.endswith("ROOT") else str(value)
    return load(os.environ.get("DOCKYARD_CONFIG") or None)


def _serve(args: argparse.Namespace) -> int:
    from hypercorn.config import Config
    from hypercorn.run import run

    from dockyard.meta.sqlite import SQLiteMeta
    from dockyard.services import instance_name

    settings = _settings(args)
    # Make relative paths absolute once, so every worker sees the same directory.
    os.environ["DOCKYARD_STORAGE_ROOT"] = os.path.abspath(settings.storage.root)
    settings = load(os.environ.get("DOCKYARD_CONFIG") or None)
    logging.basicConfig(
        level=settings.log.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    meta = SQLiteMeta(settings.database_path, settings.database.busy_timeout)
    meta.migrate()
    # Upload leases held by an earlier run of this instance can no longer be in use.
    released = meta.release_leases_of(instance_name(settings) + "/")
    meta.close()
    if released:
        logging.getLogger("dockyard").info("released %d upload leases of a previous run", released)

    config = Config()
    config.bind = [f"{settings.server.host}:{settings.server.port}"]
    config.application_path = "dockyard.services:create_app()"
    config.worker_class = "trio"
    # One process per worker, even for one: hypercorn's supervising process turns SIGTERM
    # into a graceful stop (in-process, workers=0, SIGTERM killed requests in flight).
    config.workers = settings.server.workers
    config.graceful_timeout = settings.server.graceful_timeout
    config.websocket_ping_interval = settings.events.heartbeat
    config.accesslog = None
    config.errorlog = "-"
    print(
        f"dockyard {__version__} serving on http://{settings.server.host}:{settings.server.port}"
        f" (data: {settings.storage.root}, workers: {settings.server.workers})",
        file=sys.stderr,
        flush=True,
    )
    # Workers inherit this and stop when the supervisor tells them to, so a SIGTERM sent to
    # the whole process group (systemd, kill -- -pgid) is graceful too.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return run(config)


def _config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(as_dict(settings), indent=2))
    print("configuration OK", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dockyard", description="An OCI container registry.")
    parser.add_argument("--version", action="version", version=f"dockyard {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the registry")
    serve.add_argument("--config", "-c", help="TOML config file (see conf/dockyard.toml)")
    serve.add_argument("--host", help="address to listen on (server.host)")
    serve.add_argument("--port", type=int, help="port to listen on (server.port)")
    serve.add_argument("--workers", type=int, help="worker processes (server.workers)")
    serve.add_argument("--data-dir", help="data directory (storage.root)")
    serve.set_defaults(func=_serve)

    config = sub.add_parser("config", help="configuration tools")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser("check", help="validate and print the effective configuration")
    check.add_argument("--config", "-c", help="TOML config file")
    check.set_defaults(func=_config_check)

    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as e:
        print(f"dockyard: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
