"""A real PostgreSQL server for the tests: Debian's binaries, a temporary cluster.

``PostgresServer`` runs ``initdb`` and ``postgres`` on a free loopback port with its data
and socket directory in a fresh temporary directory, password authentication with a
password made at start, and ``new_database()`` hands out an empty database per caller.
PostgreSQL refuses to run as root, so as root both run as the ``postgres`` user the
Debian package creates, and the directory is given to that user.

Start it once per test session (the ``postgres_server`` fixture in tests/conftest.py):
a cluster takes about a second to create.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import free_port
from tests.tools import wait_ready

INSTALL_HINT = "apt-get install -y postgresql"
SUPERUSER = "dockyard"


def postgres_bin_dir() -> Path | None:
    """Debian keeps the server binaries in /usr/lib/postgresql/<version>/bin (newest wins)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: int(Path(p).parent.parent.name.split(".")[0]),
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    return Path(on_path).parent if on_path else None


def require_postgres() -> Path:
    """The server's bin directory; skips (fails in CI) when PostgreSQL is not installed."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        message = f"PostgreSQL is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must install every tool the suite needs)")
        pytest.skip(message)
    return bin_dir


class PostgresServer:
    """One temporary PostgreSQL cluster; ``url`` reaches its ``postgres`` database."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.dir = Path(tempfile.mkdtemp(prefix="dockyard-pg-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self._databases = 0
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as_user = {"user": owner.pw_uid, "group": owner.pw_gid, "extra_groups": []}

    @property
    def data(self) -> Path:
        return self.dir / "data"

    def url_for(self, database: str) -> str:
        return f"postgresql://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    def _run(self, *args: str) -> None:
        subprocess.run(
            args, check=True, capture_output=True, cwd=self.dir, timeout=120, **self._as_user
        )

    def start(self, timeout: float = 30.0) -> PostgresServer:
        pwfile = self.dir / "pw"
        pwfile.write_text(self.password)
        if self._as_user:
            os.chown(pwfile, self._as_user["user"], self._as_user["group"])
        self._run(
            str(self.bin_dir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            f"--pwfile={pwfile}",
            "--auth=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )
        pwfile.unlink()
        log = open(self.dir / "postgres.log", "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                str(self.bin_dir / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                f"unix_socket_directories={self.dir}",
                "-c",
                "fsync=off",  # a throwaway cluster: durability costs time for nothing
                "-c",
                "max_connections=200",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.dir,
            start_new_session=True,
            **self._as_user,
        )
        log.close()
        import psycopg

        def accepting() -> bool:
            psycopg.connect(self.url, connect_timeout=1).close()
            return True

        wait_ready(
            self.proc,
            accepting,
            name="postgres",
            timeout=timeout,
            log=self.log,
            not_yet=(psycopg.OperationalError,),
        )
        return self

    def log(self) -> str:
        try:
            return (self.dir / "postgres.log").read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def new_database(self) -> str:
        """The URL of a new, empty database."""
        import psycopg

        self._databases += 1
        name = f"test_{self._databases}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url_for(name)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # SIGINT is the "fast" shutdown; SIGTERM's "smart" one waits for every client.
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
