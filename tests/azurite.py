"""Azurite (Microsoft's Azure Storage emulator, npm ``azurite``) for the azure driver tests.

``AzuriteServer`` runs ``azurite-blob`` on a free loopback port with a temporary
workspace and one storage account made for the run (name and key generated here: not
Azurite's well-known development account). The ``azurite`` fixture of tests/conftest.py
starts one for the whole session (``azurite_server``); each store gets a fresh container
(``new_container``).
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

from azure.storage.blob import BlobServiceClient, ContainerClient

from dockyard.storage.azure_client import AzureAccount
from tests.serverproc import free_port
from tests.tools import require_tool, wait_ready


class AzuriteServer:
    def __init__(self, workdir: Path, executable: str = "azurite-blob") -> None:
        self.workdir = workdir
        self.executable = executable
        self.port = free_port()
        self.account = "dy" + secrets.token_hex(5)
        self.key = base64.b64encode(os.urandom(64)).decode()
        self.log_path = workdir / "azurite.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._containers = 0

    @property
    def endpoint(self) -> str:
        """The blob service URL (path-style: the account is the first path segment)."""
        return f"http://127.0.0.1:{self.port}/{self.account}"

    def start(self, timeout: float = 30.0) -> AzuriteServer:
        location = self.workdir / "workspace"
        location.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "AZURITE_ACCOUNTS": f"{self.account}:{self.key}"}
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [
                self.executable,
                "--blobHost",
                "127.0.0.1",
                "--blobPort",
                str(self.port),
                "--location",
                str(location),
                "--skipApiVersionCheck",
                "--disableTelemetry",
                "--disableProductStyleUrl",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

        def listening() -> bool:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True

        try:
            wait_ready(self.proc, listening, name="azurite-blob", timeout=timeout, log=self.log)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except FileNotFoundError:
            return ""

    def service(self, key: str | None = None) -> BlobServiceClient:
        credential = {"account_name": self.account, "account_key": key or self.key}
        return BlobServiceClient(self.endpoint, credential=credential)

    def new_container(self) -> str:
        """Create an empty container with a name no other test uses; its name."""
        self._containers += 1
        name = f"t{self._containers}-{secrets.token_hex(4)}"
        with self.service() as service:
            service.create_container(name)
        return name

    def container(self, name: str) -> ContainerClient:
        return self.service().get_container_client(name)

    def account_for(self, container: str, **overrides: str) -> AzureAccount:
        """The driver's account settings for ``container`` (shared key unless overridden)."""
        fields = {
            "container": container,
            "account_name": self.account,
            "account_key": self.key,
            "endpoint": self.endpoint,
            **overrides,
        }
        return AzureAccount(**fields)


def azurite_server(workdir: Path) -> Iterator[AzuriteServer]:
    """For a fixture: a started server (skip or, in CI, fail when Azurite is missing)."""
    executable = require_tool("azurite-blob")
    server = AzuriteServer(workdir, executable).start()
    try:
        yield server
    finally:
        server.stop()
