"""``dockyard tokens create | list | revoke``: robot tokens for pipelines (auth/robots.py).

These commands read the same configuration as ``dockyard serve`` (``--config``,
``DOCKYARD_*``) to find the database, and work while the server runs: a revocation is seen
by every worker within ``robots.VERIFIED_SECONDS``. The secret is printed once, by
``create``; nothing can show it again (the database holds its hash).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from dockyard.auth.robots import (
    EPHEMERAL_PREFIX,
    ROBOT_PREFIX,
    RobotError,
    check_name,
    new_robot,
    parse_duration,
    parse_robot_scopes,
    robot_status,
    row_scopes,
)
from dockyard.cli_webhooks import NoDatabase, open_store
from dockyard.config import Settings
from dockyard.events.schema import timestamp

SettingsLoader = Callable[[argparse.Namespace], Settings]


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    tokens = sub.add_parser("tokens", help="robot tokens: scoped credentials for pipelines")
    tsub = tokens.add_subparsers(dest="tokens_command", required=True)

    create = tsub.add_parser("create", help="make a robot token (its secret is printed once)")
    create.add_argument("--config", "-c", help="TOML config file")
    create.add_argument("--name", required=True, help="robot name: user robot$NAME")
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="repository:GLOB:ACTIONS, e.g. repository:team/*:push,pull (repeatable)",
    )
    create.add_argument("--expires", default="never", help="30d, 12h, 90m, or 0/never")
    create.add_argument("--json", action="store_true", help="one JSON document")
    create.set_defaults(func=lambda args: _create(args, settings(args)))

    ls = tsub.add_parser("list", help="robots, their scopes and state (never secrets)")
    ls.add_argument("--config", "-c", help="TOML config file")
    ls.add_argument("--json", action="store_true", help="one JSON document")
    ls.set_defaults(func=lambda args: _list(args, settings(args)))

    revoke = tsub.add_parser("revoke", help="stop a robot token from working")
    revoke.add_argument("--config", "-c", help="TOML config file")
    revoke.add_argument("name", help="robot name (with or without robot$)")
    revoke.set_defaults(func=lambda args: _revoke(args, settings(args)))


def _fail(message: str) -> int:
    print(f"dockyard: {message}", file=sys.stderr)
    return 1


def _time(ts: float | None) -> str | None:
    return None if ts is None else timestamp(ts)


def _creator() -> str:
    """Who ran the command (the operating system's user), for ``tokens list``."""
    try:
        return f"cli:{getpass.getuser()}"
    except (OSError, KeyError):  # no user name in this environment
        return "cli"


def _create(args: argparse.Namespace, settings: Settings) -> int:
    try:
        name = check_name(args.name)
        if name.startswith(EPHEMERAL_PREFIX):
            return _fail(f"names starting {EPHEMERAL_PREFIX!r} are the scanners' own")
        scopes = parse_robot_scopes(args.scope)
        expires_in = parse_duration(args.expires)
    except RobotError as e:
        return _fail(str(e))
    if settings.auth.mode == "none":
        print(
            'dockyard: warning: auth.mode is "none": anyone may push and pull, robot tokens '
            "are not needed (they work once auth.mode is basic or token)",
            file=sys.stderr,
        )
    row, secret = new_robot(name, scopes, expires_in, time.time(), created_by=_creator())
    try:
        with open_store(settings) as meta:
            created = meta.robot_create(row)
    except NoDatabase as e:
        return _fail(str(e))
    if not created:
        return _fail(f"robot {ROBOT_PREFIX}{name} exists; revoke it first or pick another name")
    user = ROBOT_PREFIX + name
    if args.json:
        doc = {
            "name": name,
            "username": user,
            "secret": secret,
            "scopes": [str(s) for s in scopes],
            "expires": _time(row.expires),
        }
        print(json.dumps(doc, indent=2))
        return 0
    print(f"robot token {user} created; its secret (shown only now):\n\n    {secret}\n")
    print(f"scopes: {' '.join(str(s) for s in scopes)}")
    print(f"expires: {_time(row.expires) or 'never'}")
    print(
        f"log in with user name '{user}' (single-quoted in shells: $ expands) and the secret, "
        "e.g.\n    printf '%s' \"$SECRET\" | "
        f"podman login --username '{user}' --password-stdin REGISTRY"
    )
    return 0


def _list(args: argparse.Namespace, settings: Settings) -> int:
    try:
        with open_store(settings) as meta:
            rows = meta.robot_list()
    except NoDatabase as e:
        return _fail(str(e))
    now = time.time()
    docs: list[dict[str, Any]] = [
        {
            "name": r.name,
            "username": ROBOT_PREFIX + r.name,
            "scopes": [str(s) for s in row_scopes(r)],
            "status": robot_status(r, now),
            "created": _time(r.created),
            "expires": _time(r.expires),
            "lastUsed": _time(r.last_used),
            "revoked": _time(r.revoked),
            "createdBy": r.created_by,
        }
        for r in rows
    ]
    if args.json:
        print(json.dumps({"robots": docs}, indent=2))
        return 0
    if not docs:
        print("no robot tokens")
        return 0
    print(f"{'NAME':24} {'STATUS':8} {'EXPIRES':21} {'LAST USED':21} SCOPES")
    for d in docs:
        print(
            f"{d['name']:24} {d['status']:8} {d['expires'] or 'never':21}"
            f" {d['lastUsed'] or '-':21} {' '.join(d['scopes'])}"
        )
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    try:
        name = check_name(args.name)
    except RobotError as e:
        return _fail(str(e))
    try:
        with open_store(settings) as meta:
            revoked = meta.robot_revoke(name)
    except NoDatabase as e:
        return _fail(str(e))
    if not revoked:
        return _fail(f"no robot token {ROBOT_PREFIX}{name}")
    print(f"robot token {ROBOT_PREFIX}{name} revoked")
    return 0
