"""The users file (auth/htpasswd.py), its credential cache and `dockyard users`."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import bcrypt
import pytest

from dockyard.auth.htpasswd import HtpasswdError, Users, parse_htpasswd
from dockyard.cli import main
from tests.authfixtures import bcrypt_entry, write_htpasswd
from tests.tools import require_tool


class CountingCheck:
    """bcrypt.checkpw, counting its calls (the real thing, only counted)."""

    def __init__(self) -> None:
        self.calls = 0
        self._lock = threading.Lock()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        with self._lock:
            self.calls += 1
        return bcrypt.checkpw(password, hashed)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- parsing


def test_parse_accepts_every_bcrypt_prefix_and_skips_comments() -> None:
    text = "\n".join(
        [
            "# users",
            "",
            bcrypt_entry("a", "pa", "$2y$"),
            bcrypt_entry("b", "pb", "$2b$"),
            bcrypt_entry("c", "pc", "$2a$"),
        ]
    )
    users = parse_htpasswd(text, "users")
    assert sorted(users) == ["a", "b", "c"]
    assert users["b"].startswith(b"$2b$04$")


@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("bob:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/", "MD5"),
        ("bob:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=", "SHA-1"),
        ("bob:$6$salt$hash", "crypt"),
        ("bob:rqXexS6ZhobKA", "plain text or crypt"),
        ("bob:password", "plain text or crypt"),
        ("bob:$2y$12$tooshort", "malformed bcrypt"),
        ("bob", "expected NAME:HASH"),
        (":$2y$04$" + "a" * 53, "expected NAME:HASH"),
        ("anonymous:$2y$04$" + "a" * 53, "not a valid user name"),
    ],
)
def test_refused_lines_name_file_and_line(line: str, says: str) -> None:
    text = bcrypt_entry("alice", "pw") + "\n# comment\n" + line + "\n"
    with pytest.raises(HtpasswdError) as e:
        parse_htpasswd(text, "/etc/dockyard/htpasswd")
    assert "/etc/dockyard/htpasswd, line 3" in str(e.value)
    assert says in str(e.value)


def test_duplicate_user_is_refused() -> None:
    text = bcrypt_entry("alice", "a") + "\n" + bcrypt_entry("alice", "b") + "\n"
    with pytest.raises(HtpasswdError, match="line 2: user 'alice' appears twice"):
        parse_htpasswd(text, "f")


def test_missing_file_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(HtpasswdError, match=r"users file .*nope"):
        Users(tmp_path / "nope")


# -- verification, reload and the cache


async def test_verify_right_and_wrong(tmp_path: Path) -> None:
    users = Users(write_htpasswd(tmp_path / "h", {"alice": "s3cret", "bob": "pw"}))
    assert await users.verify("alice", "s3cret")
    assert not await users.verify("alice", "s3cret ")
    assert not await users.verify("alice", "pw")
    assert not await users.verify("nobody", "s3cret")
    assert not await users.verify("alice", "x" * 73)  # over bcrypt's 72 bytes
    assert not await users.verify("alice", "s3\0cret")


async def test_one_bcrypt_per_credential_per_period(tmp_path: Path) -> None:
    counting, clock = CountingCheck(), Clock()
    path = write_htpasswd(tmp_path / "h", {"alice": "a-pw", "bob": "b-pw"})
    users = Users(path, cache_seconds=60, clock=clock, check_password=counting)
    for _ in range(5):
        assert await users.verify("alice", "a-pw")
    assert counting.calls == 1
    assert await users.verify("bob", "b-pw")
    assert counting.calls == 2
    clock.now += 61  # the period is over: checked again, once
    assert await users.verify("alice", "a-pw")
    assert await users.verify("alice", "a-pw")
    assert counting.calls == 3


async def test_concurrent_checks_of_one_credential_share_one_bcrypt(tmp_path: Path) -> None:
    counting = CountingCheck()
    users = Users(write_htpasswd(tmp_path / "h", {"alice": "a-pw"}), check_password=counting)
    results: list[bool] = []

    async def login(password: str) -> None:
        results.append(await users.verify("alice", password))

    async with anyio.create_task_group() as tasks:
        for _ in range(8):
            tasks.start_soon(login, "a-pw")
        for _ in range(3):
            tasks.start_soon(login, "wrong")
    assert sorted(results) == [False] * 3 + [True] * 8
    assert counting.calls == 2  # one for the right password, one for the wrong one


async def test_wrong_password_is_never_cached(tmp_path: Path) -> None:
    counting = CountingCheck()
    users = Users(write_htpasswd(tmp_path / "h", {"alice": "a-pw"}), check_password=counting)
    for _ in range(3):
        assert not await users.verify("alice", "guess")
    assert counting.calls == 3


def _rewrite(path: Path, text: str) -> None:
    before = path.stat().st_mtime_ns
    path.write_text(text)
    os.utime(path, ns=(before + 10**9, before + 10**9))  # a distinct mtime, however fast


async def test_changed_entry_invalidates_the_cache_and_file_reloads(tmp_path: Path) -> None:
    counting = CountingCheck()
    path = write_htpasswd(tmp_path / "h", {"alice": "old-pw"})
    users = Users(path, check_password=counting)
    assert await users.verify("alice", "old-pw")
    _rewrite(path, bcrypt_entry("alice", "new-pw") + "\n" + bcrypt_entry("dave", "d") + "\n")
    assert not await users.verify("alice", "old-pw")  # cached as good, but the entry changed
    assert await users.verify("alice", "new-pw")
    assert await users.verify("dave", "d")  # a user added while running
    _rewrite(path, bcrypt_entry("dave", "d") + "\n")
    assert not await users.verify("alice", "new-pw")  # removed: the cache does not keep it


async def test_broken_file_refuses_every_login_until_fixed(tmp_path: Path) -> None:
    path = write_htpasswd(tmp_path / "h", {"alice": "a-pw"})
    good = path.read_text()
    users = Users(path)
    assert await users.verify("alice", "a-pw")
    _rewrite(path, good + "mallory:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    assert not await users.verify("alice", "a-pw")
    _rewrite(path, good)
    assert await users.verify("alice", "a-pw")


# -- dockyard users


def _users(monkeypatch: pytest.MonkeyPatch, stdin: str, *args: str) -> int:
    monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    return main(["users", *args])


def _verify(path: Path, user: str, password: str) -> bool:
    return anyio.run(Users(path).verify, user, password)


def test_cli_add_passwd_remove_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "htpasswd"
    flags = ["--password-stdin", "--htpasswd", str(path)]
    assert _users(monkeypatch, "secret\n", "add", "alice", *flags) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().startswith("alice:$2y$12$")
    assert _verify(path, "alice", "secret")
    assert _users(monkeypatch, "other\n", "add", "alice", *flags) == 1
    assert "exists" in capsys.readouterr().err
    assert _users(monkeypatch, "pw-b\n", "add", "bob", *flags) == 0
    path.chmod(0o640)
    assert _users(monkeypatch, "changed\n", "passwd", "alice", *flags) == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o640  # kept
    assert _verify(path, "alice", "changed")
    assert not _verify(path, "alice", "secret")
    assert _verify(path, "bob", "pw-b")
    capsys.readouterr()
    assert main(["users", "list", "--htpasswd", str(path)]) == 0
    assert capsys.readouterr().out.split() == ["alice", "bob"]
    assert main(["users", "remove", "alice", "--htpasswd", str(path)]) == 0
    assert main(["users", "remove", "alice", "--htpasswd", str(path)]) == 1
    assert [line.split(":")[0] for line in path.read_text().splitlines()] == ["bob"]
    assert not list(tmp_path.glob(".htpasswd.*"))  # no temporary file left behind


def test_cli_refuses_bad_names_empty_passwords_and_foreign_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "htpasswd"
    flags = ["--password-stdin", "--htpasswd", str(path)]
    assert _users(monkeypatch, "pw\n", "add", "a:b", *flags) == 1
    assert _users(monkeypatch, "pw\n", "add", "anonymous", *flags) == 1
    assert _users(monkeypatch, "\n", "add", "alice", *flags) == 1
    assert _users(monkeypatch, "x" * 73 + "\n", "add", "alice", *flags) == 1
    assert not path.exists()
    path.write_text("bob:$apr1$r31.....$HqJZimcKQFAMYayBlzkrA/\n")
    assert _users(monkeypatch, "pw\n", "add", "alice", *flags) == 1
    assert "line 1" in capsys.readouterr().err
    assert path.read_text().startswith("bob:$apr1$")  # unchanged


def test_cli_prompts_twice(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    answers = iter(["one", "two"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    path = tmp_path / "htpasswd"
    assert main(["users", "add", "alice", "--htpasswd", str(path)]) == 1  # mismatch
    assert not path.exists()
    answers = iter(["same", "same"])
    assert main(["users", "add", "alice", "--htpasswd", str(path)]) == 0
    assert bcrypt.checkpw(b"same", path.read_text().split(":", 1)[1].strip().encode())


def test_config_check_and_serve_refuse_a_bad_users_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in [v for v in os.environ if v.startswith("DOCKYARD_")]:
        monkeypatch.delenv(var)
    # main() puts its settings in the environment (for hypercorn's workers): undo after.
    for var in ("DOCKYARD_CONFIG", "DOCKYARD_STORAGE_ROOT", "DOCKYARD_SERVER_PORT"):
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    users = tmp_path / "htpasswd"
    users.write_text("alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    config = tmp_path / "dockyard.toml"
    config.write_text(f'[auth]\nmode = "basic"\nhtpasswd = "{users}"\n')
    data = str(tmp_path / "data")
    assert main(["config", "check", "--config", str(config)]) == 2
    assert f"{users}, line 1" in capsys.readouterr().err
    assert main(["serve", "--config", str(config), "--data-dir", data, "--port", "0"]) == 2
    assert "only bcrypt entries are accepted" in capsys.readouterr().err
    write_htpasswd(users)
    assert main(["config", "check", "--config", str(config)]) == 0


def test_files_written_by_apache_htpasswd(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    htpasswd = require_tool("htpasswd")
    path = tmp_path / "htpasswd"
    for name, password in (("alice", "a-pw"), ("bob", "b pw")):
        flags = ["-c"] if not path.exists() else []
        subprocess.run(
            [htpasswd, "-B", "-C", "5", "-b", *flags, str(path), name, password], check=True
        )
    assert anyio.run(Users(path).verify, "alice", "a-pw")
    assert anyio.run(Users(path).verify, "bob", "b pw")
    assert not anyio.run(Users(path).verify, "bob", "a-pw")
    # dockyard users edits the same file and keeps the other entries as they are.
    bob_line = path.read_text().splitlines()[1]
    assert (
        _users(monkeypatch, "new\n", "passwd", "alice", "--password-stdin", "--htpasswd", str(path))
        == 0
    )
    assert path.read_text().splitlines()[1] == bob_line
    assert anyio.run(Users(path).verify, "alice", "new")
    # htpasswd's default (MD5) is refused, naming the line.
    subprocess.run([htpasswd, "-b", str(path), "carol", "c-pw"], check=True)
    with pytest.raises(HtpasswdError, match=r"line 3: user 'carol' has MD5"):
        Users(path)
