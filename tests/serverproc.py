"""Run a real ``dockyard serve`` process on loopback for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx


def server_backend() -> str:
    """The ``[server] backend`` test servers run on: ``DOCKYARD_TEST_SERVER_BACKEND``
    (trio, asyncio or uvloop; default trio), so the whole e2e suite can run on each."""
    return os.environ.get("DOCKYARD_TEST_SERVER_BACKEND") or "trio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class DockyardServer:
    """``dockyard serve`` in a child process; ``url`` is http://127.0.0.1:<port>.

    ``kill()`` sends SIGKILL (a crash); ``stop()`` a graceful SIGTERM; ``start()`` again
    restarts on the same data directory and port. It runs on ``server_backend()`` unless
    ``env`` names DOCKYARD_SERVER_BACKEND. With ``ssl_context`` (the client side:
    the CA to trust, a client certificate) the server is expected to speak HTTPS (set
    DOCKYARD_TLS_* in ``env``) and ``url`` is https://.
    """

    def __init__(
        self,
        data_dir: Path,
        workers: int = 1,
        env: dict[str, str] | None = None,
        port: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.workers = workers
        self.port = port or free_port()
        self.env = env or {}
        self.ssl_context = ssl_context
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"dockyard-{self.port}.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://{self.host}"

    def start(self, timeout: float = 20.0) -> DockyardServer:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
        env["DOCKYARD_SERVER_BACKEND"] = server_backend()
        env.update(self.env)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dockyard.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                "--data-dir",
                str(self.data_dir),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockyard exited with {self.proc.returncode}:\n{self.log()}")
            try:
                verify = self.ssl_context or True
                if httpx.get(f"{self.url}/readyz", timeout=1, verify=verify).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"dockyard did not become ready:\n{self.log()}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL the whole process group (every worker), like a crash."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> DockyardServer:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
