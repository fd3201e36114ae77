"""``dockyard serve | config check | events | users | retention run | usage | --version``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import ssl
import sys

from dockyard import (
    __version__,
    cli_adapter,
    cli_gc,
    cli_housekeeping,
    cli_replication,
    cli_retention,
    cli_scan,
    cli_tokens,
    cli_users,
    cli_webhooks,
)
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


def _users_file_ok(settings: Settings) -> bool:
    """With basic auth, whether the users file can be used (else say why on stderr)."""
    if settings.auth.mode != "basic":
        return True
    from dockyard.auth.htpasswd import HtpasswdError, Users

    try:
        Users(settings.auth.htpasswd)
    except HtpasswdError as e:
        print(f"dockyard: {e}", file=sys.stderr)
        return False
    return True


def _serve(args: argparse.Namespace) -> int:
    from hypercorn.run import run

    from dockyard.http import h2edge, keepalive, websocket, worker
    from dockyard.meta.open import open_meta
    from dockyard.meta.records import StoreUnavailable
    from dockyard.observability.logs import configure_logging
    from dockyard.services import app_queue_size, check_read_size_hook, instance_name

    settings = _settings(args)
    backend = settings.server.backend
    try:
        worker.check_available(backend)  # uvloop installed, for "uvloop"
        # Before any worker starts (each would fail the same way): the hooks of the
        # worker that will serve.
        check_read_size_hook(backend)
        h2edge.check_hooks(backend)
        websocket.check_stop_notice_hook(backend)
        keepalive.check_idle_timer_hook(backend)
    except RuntimeError as e:
        print(f"dockyard: {e}", file=sys.stderr)
        return 2
    if settings.tls.cert:
        from dockyard.tls import check_tls_hook, server_context

        try:
            server_context(settings)  # a bad certificate or key stops start-up here, once
            if settings.tls.client_auth != "none":
                check_tls_hook(backend)
        except (OSError, ssl.SSLError, RuntimeError) as e:
            print(f"dockyard: TLS: {e}", file=sys.stderr)
            return 2
    # Make relative paths absolute once, so every worker sees the same directory.
    os.environ["DOCKYARD_STORAGE_ROOT"] = os.path.abspath(settings.storage.root)
    settings = load(os.environ.get("DOCKYARD_CONFIG") or None)
    if not _users_file_ok(settings):  # every worker would refuse it the same way
        return 2
    try:
        configure_logging(settings)
    except OSError as e:  # every worker would fail to open it the same way
        print(f"dockyard: log.file: {e}", file=sys.stderr)
        return 2
    log = logging.getLogger("dockyard")
    meta = open_meta(settings)
    try:
        meta.migrate()
    except StoreUnavailable as e:
        meta.close()
        print(f"dockyard: database: {e}", file=sys.stderr)
        return 2
    # Upload leases held by an earlier run of this instance can no longer be in use.
    released = meta.release_leases_of(instance_name(settings))
    # So are its webhook leases and scans: the new workers take them over at once.
    meta.webhook_release_leases_of(instance_name(settings))
    meta.scans_release_leases_of(instance_name(settings))
    meta.close()
    if released:
        log.info("released %d upload leases of a previous run", released)

    config = worker.ServerConfig()
    if settings.tls.cert:
        from dockyard.tls import TLSConfig

        config = TLSConfig()
        config.dockyard_settings = settings
        # hypercorn serves the bind addresses with TLS when both are set.
        config.certfile, config.keyfile = settings.tls.cert, settings.tls.key
    config.bind = [f"{settings.server.host}:{settings.server.port}"]
    if settings.metrics.enabled:
        # Before any worker imports prometheus_client: they share their values there.
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = _fresh_metrics_dir(settings)
        if settings.metrics.listen:
            config.bind.append(settings.metrics.listen)  # serves only metrics.path
    config.application_path = "dockyard.services:create_app()"
    # hypercorn's worker: "trio", "asyncio" or "uvloop" (server.backend).
    config.worker_class = backend
    # One process per worker, even for one: hypercorn's supervising process turns SIGTERM
    # into a graceful stop (in-process, workers=0, SIGTERM killed requests in flight).
    config.workers = settings.server.workers
    config.graceful_timeout = settings.server.graceful_timeout
    # The HTTP edge: a stalled body is cut off after read_timeout (0: off, see docs);
    # http/edge.py bounds the whole request head (header_timeout), which hypercorn does not.
    config.read_timeout = settings.server.read_timeout or None
    config.h11_max_incomplete_size = settings.server.max_header_bytes
    # HTTP/2: h2 refuses a larger decoded header block (a connection error).
    config.h2_max_header_list_size = settings.server.max_header_bytes
    # Body chunks queued per request: as many as make 1 MiB, at least 2, so memory per
    # upload is bounded by max(1 MiB, 2 x server.read_size).
    config.max_app_queue_size = app_queue_size(settings.server.read_size)
    # No hypercorn websocket pings: its ping loop never checks for pongs, and it keeps each
    # closed websocket's task alive until its next ping (a graceful stop then waits the
    # whole graceful_timeout). The event feed's own heartbeat messages keep connections
    # busy instead, and a client notices a silent server by their absence.
    config.websocket_ping_interval = None
    # Clients send the event feed one small subscribe message; a larger websocket message
    # is closed with 1009 rather than buffered (hypercorn's default allows 16 MiB).
    config.websocket_max_message_size = 64 * 1024
    config.accesslog = None
    # hypercorn logs through the logger configure_logging set up (a handler of its own,
    # errorlog = "-", printed every line twice, once in each format).
    config.errorlog = logging.getLogger("hypercorn.error")
    log.info(
        "dockyard %s serving on %s://%s:%d (data: %s, workers: %d, backend: %s)",
        __version__,
        "https" if settings.tls.cert else "http",
        settings.server.host,
        settings.server.port,
        settings.storage.root,
        settings.server.workers,
        backend,
    )
    # Workers inherit this and stop when the supervisor tells them to, so a SIGTERM sent to
    # the whole process group (systemd, kill -- -pgid) is graceful too.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Likewise SIGHUP, which hypercorn's supervisor answers by restarting the workers
    # gracefully (they read the TLS certificate again): a worker must not die of it.
    # (This process's own log file is a LogFile: it reopens a moved file by itself.)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    code = run(config)
    log.info("dockyard stopped (exit code %d)", code)
    return code


def _fresh_metrics_dir(settings: Settings) -> str:
    """An empty directory for this instance's workers' metric files (docs/monitoring.md):
    values of an earlier run would be counted again, and instances sharing the data
    directory must not add up each other's."""
    import re
    import shutil

    from dockyard.services import instance_name

    name = re.sub(r"[^A-Za-z0-9._-]", "_", instance_name(settings))
    path = os.path.join(os.path.abspath(settings.storage.root), "metrics", name)
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def _config_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    print(json.dumps(as_dict(settings, redact=True), indent=2))
    if not _users_file_ok(settings):
        return 2
    print("configuration OK", file=sys.stderr)
    return 0


def _events_tail(args: argparse.Namespace) -> int:
    from dockyard.events.schema import EventFilter, FilterError
    from dockyard.events.tail import TailOptions, default_url, run

    try:
        event_filter = EventFilter.parse(
            {"repository": args.repo, "action": args.action, "mediaType": args.media_type}
        )
    except FilterError as e:
        print(f"dockyard events tail: {e}", file=sys.stderr)
        return 2
    if args.since is not None and args.since < 0:
        print("dockyard events tail: --since must be an event id (0 or more)", file=sys.stderr)
        return 2
    url = args.url
    if url is None:
        settings = _settings(args)
        url = default_url(settings.server.host, settings.server.port)
    authorization = None
    if args.user is not None:
        import base64
        import getpass

        password = sys.stdin.readline().rstrip("\r\n") if args.password_stdin else None
        if password is None:
            password = getpass.getpass(f"Password for {args.user}: ")
        token = base64.b64encode(f"{args.user}:{password}".encode()).decode()
        authorization = f"Basic {token}"
    return run(TailOptions(url, args.since, event_filter, args.json, authorization))


def _add_tail_parser(events_sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tail = events_sub.add_parser(
        "tail",
        help="print the live event feed; reconnects and resumes by itself",
        description="Print events from the registry's websocket feed as they happen, one"
        " line each. Reconnects after a restart or a lost connection and resumes after the"
        " last event printed, so nothing is missed or printed twice. See docs/events.md.",
    )
    tail.add_argument("--config", "-c", help="TOML config file (the default URL is its server)")
    tail.add_argument(
        "--url", help="registry URL (http://host:port or ws://...); default: server.host/port"
    )
    tail.add_argument(
        "--since", type=int, metavar="ID", help="first replay the events after this id"
    )
    tail.add_argument(
        "--repo", action="append", default=[], metavar="GLOB", help="repository glob (repeatable)"
    )
    tail.add_argument(
        "--action",
        action="append",
        default=[],
        metavar="A",
        help="push, pull, mount, delete or untag (repeatable)",
    )
    tail.add_argument(
        "--media-type",
        action="append",
        default=[],
        metavar="T",
        help="media type, or type/* (repeatable)",
    )
    tail.add_argument("--json", action="store_true", help="print each event as its JSON")
    tail.add_argument("--user", help="log in as this user (a registry with auth.mode basic)")
    tail.add_argument(
        "--password-stdin", action="store_true", help="with --user: read the password from stdin"
    )
    tail.set_defaults(func=_events_tail)


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

    # `dockyard events ...`: the event log's tools. One group shared by several commands
    # (`events webhooks ...` here; `events tail` belongs in it too): add subcommands to
    # events_sub rather than creating a second "events" parser.
    events = sub.add_parser("events", help="event log tools: tail, webhooks")
    events_sub = events.add_subparsers(dest="events_command", required=True)
    cli_webhooks.add_parsers(events_sub, _settings)
    _add_tail_parser(events_sub)
    cli_housekeeping.add_prune_parser(events_sub, _settings)
    cli_users.add_parsers(sub, _settings)
    cli_tokens.add_parsers(sub, _settings)
    cli_retention.add_parsers(sub, _settings)
    cli_housekeeping.add_usage_parser(sub, _settings)
    cli_gc.add_parser(sub, _settings)
    cli_replication.add_parsers(sub, _settings)
    cli_adapter.add_parser(sub, _settings)
    cli_scan.add_parsers(sub, _settings)

    args = parser.parse_args(argv)
    try:
        result: int = args.func(args)
        return result
    except ConfigError as e:
        print(f"dockyard: configuration error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
