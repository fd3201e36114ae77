"""Debian's ``docker-registry`` (CNCF Distribution 2.8) as a real remote registry for tests.

Started on loopback with a temporary data directory, its access log (Apache combined
format, on stderr) written to ``log_path`` so tests can count the requests it served;
optionally with htpasswd (Basic) auth. ``stop()`` and ``start()`` again keep the data and
port (an outage). Tests that need it use ``require_distribution()``: a failure in CI, a
skip naming the package elsewhere.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from types import TracebackType

import bcrypt
import httpx
import pytest

from tests.serverproc import free_port
from tests.tools import wait_ready

CONFIG = """\
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: {root}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: 127.0.0.1:{port}
  secret: dockyard-tests
health:
  storagedriver:
    enabled: false
{auth}"""

HTPASSWD_AUTH = """\
auth:
  htpasswd:
    realm: distribution
    path: {path}
"""

# The request line of a combined-format access log entry.
REQUEST_LINE = re.compile(r'"(GET|HEAD|PUT|POST|PATCH|DELETE) (\S+) HTTP/[\d.]+" (\d{3})')


def require_distribution() -> str:
    found = shutil.which("docker-registry")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("docker-registry is missing in CI (.ci/run installs it)")
        pytest.skip("needs Distribution: apt-get install docker-registry")
    return found


class Distribution:
    """``docker-registry serve`` on 127.0.0.1:<port>; ``url`` is http://127.0.0.1:<port>."""

    def __init__(self, tmp: Path, username: str = "", password: str = "") -> None:
        self.binary = require_distribution()
        self.tmp = tmp
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.root = tmp / "data"
        self.log_path = tmp / "distribution.log"
        self.username, self.password = username, password
        auth = ""
        if username:
            htpasswd = tmp / "htpasswd"
            hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
            htpasswd.write_text(f"{username}:{hashed}\n")
            auth = HTPASSWD_AUTH.format(path=htpasswd)
        self.config = tmp / "config.yml"
        self.config.write_text(CONFIG.format(root=self.root, port=self.port, auth=auth))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self, timeout: float = 20.0) -> Distribution:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "serve", str(self.config)],
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        wait_ready(
            self.proc,
            lambda: httpx.get(f"{self.url}/v2/", timeout=1.0).status_code in (200, 401),
            name="docker-registry",
            timeout=timeout,
            log=lambda: self.log_path.read_text(errors="replace")[-2000:],
            not_yet=(httpx.HTTPError,),
            interval=0.05,
        )
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def requests(self) -> list[tuple[str, str, int]]:
        """(method, path, status) of every request in the access log so far."""
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return [(m[1], m[2], int(m[3])) for m in REQUEST_LINE.finditer(text)]

    def count(self, method: str, path_contains: str) -> int:
        return sum(1 for m, p, _ in self.requests() if m == method and path_contains in p)

    def blob_path(self, digest: str) -> Path:
        """Where the blob's bytes are in its filesystem storage (to corrupt them)."""
        algorithm, _, encoded = digest.partition(":")
        return self.root / "docker/registry/v2/blobs" / algorithm / encoded[:2] / encoded / "data"

    def __enter__(self) -> Distribution:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
