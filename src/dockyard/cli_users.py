"""``dockyard users add | passwd | remove | list``: the users file of basic auth.

The file is ``--htpasswd PATH``, else ``auth.htpasswd`` of the configuration. Passwords
come from a prompt (asked twice) or, with ``--password-stdin``, from the first line of
standard input. Entries are bcrypt (``$2y$``, as ``htpasswd -B`` writes). Every edit
writes a temporary file in the same directory, fsyncs it and renames it over the old one,
so a running server (which re-reads the file when it changes) never sees half a file; the
file keeps its mode (new files are 0600).
"""

from __future__ import annotations

import argparse
import getpass
import os
import secrets
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import bcrypt

from dockyard.auth.htpasswd import (
    MAX_PASSWORD_BYTES,
    HtpasswdError,
    parse_htpasswd,
    valid_user_name,
)
from dockyard.config import Settings

SettingsLoader = Callable[[argparse.Namespace], Settings]
BCRYPT_COST = 12


class UsersError(Exception):
    pass


def add_parsers(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], settings: SettingsLoader
) -> None:
    users = sub.add_parser("users", help="the users file of basic auth (auth.htpasswd)")
    users_sub = users.add_subparsers(dest="users_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--htpasswd", metavar="PATH", help="users file (default: auth.htpasswd)")
        p.add_argument("--config", "-c", help="TOML config file (for auth.htpasswd)")

    for command, text in (("add", "add a user"), ("passwd", "change a user's password")):
        p = users_sub.add_parser(command, help=text)
        p.add_argument("name", help="user name")
        p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
        common(p)
        p.set_defaults(func=lambda args, c=command: _run(args, settings, c))
    remove = users_sub.add_parser("remove", help="remove a user")
    remove.add_argument("name", help="user name")
    common(remove)
    remove.set_defaults(func=lambda args: _run(args, settings, "remove"))
    ls = users_sub.add_parser("list", help="list the user names")
    common(ls)
    ls.set_defaults(func=lambda args: _run(args, settings, "list"))


def _path(args: argparse.Namespace, settings: SettingsLoader) -> Path:
    if args.htpasswd:
        return Path(args.htpasswd)
    configured = settings(args).auth.htpasswd
    if not configured:
        raise UsersError("no users file: give --htpasswd PATH or set auth.htpasswd")
    return Path(configured)


def _read(path: Path) -> tuple[list[str], dict[str, bytes]]:
    """The file's lines (kept as they are) and its users; a missing file is empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return [], {}
    except (OSError, UnicodeDecodeError) as e:
        raise UsersError(f"{path}: {getattr(e, 'strerror', None) or e}") from None
    try:
        users = parse_htpasswd(text, str(path))
    except HtpasswdError as e:
        raise UsersError(str(e)) from None
    return text.splitlines(), users


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Password (again): ") != password:
            raise UsersError("the passwords do not match")
    if not password:
        raise UsersError("the password is empty")
    encoded = password.encode()
    if len(encoded) > MAX_PASSWORD_BYTES or b"\0" in encoded:
        raise UsersError(f"passwords are at most {MAX_PASSWORD_BYTES} bytes, without NUL")
    return password


def hash_password(password: str, cost: int = BCRYPT_COST) -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost))
    # $2b$ and $2y$ are the same algorithm; $2y$ is what htpasswd -B writes.
    return "$2y$" + hashed.decode()[4:]


def write_atomically(path: Path, lines: list[str]) -> None:
    """Replace ``path`` with ``lines``: temp file in the same directory, fsync, rename."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        mode = 0o600
    directory = path.parent if str(path.parent) else Path(".")
    temp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write("".join(line + "\n" for line in lines))
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)


def _entry_name(line: str) -> str | None:
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    return text.partition(":")[0]


def _run(args: argparse.Namespace, settings: SettingsLoader, command: str) -> int:
    try:
        path = _path(args, settings)
        lines, users = _read(path)
        if command == "list":
            for name in users:
                print(name)
            return 0
        name = args.name
        if not valid_user_name(name):
            raise UsersError(
                f"{name!r} is not a valid user name (no ':', spaces or control characters;"
                " 'anonymous' is reserved)"
            )
        if command == "add" and name in users:
            raise UsersError(f"user {name!r} exists in {path} (use `dockyard users passwd`)")
        if command in ("passwd", "remove") and name not in users:
            raise UsersError(f"no user {name!r} in {path}")
        if command == "remove":
            kept = [line for line in lines if _entry_name(line) != name]
        else:
            entry = f"{name}:{hash_password(_password(args))}"
            # A changed password stays on its line; a new user goes last.
            kept = [entry if _entry_name(line) == name else line for line in lines]
            if command == "add":
                kept.append(entry)
        write_atomically(path, kept)
    except UsersError as e:
        print(f"dockyard users: {e}", file=sys.stderr)
        return 1
    done = {"add": "added", "passwd": "password changed for", "remove": "removed"}[command]
    print(f"{done} {name} ({path})", file=sys.stderr)
    return 0
