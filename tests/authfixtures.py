"""Users files and auth settings for tests: real bcrypt entries (cost 4, to be quick)."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import bcrypt
import httpx
import pytest

from dockyard.config import Settings, load
from dockyard.services import Services
from tests.conftest import make_client, make_settings

# Every test that logs in uses these users; "root" may do everything.
PASSWORDS = {"root": "root-pw", "alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


def bcrypt_entry(name: str, password: str, prefix: str = "$2y$") -> str:
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    return f"{name}:{prefix}{hashed[4:]}"


def write_htpasswd(path: Path, users: dict[str, str] | None = None) -> Path:
    lines = [bcrypt_entry(n, p) for n, p in (users or PASSWORDS).items()]
    path.write_text("".join(line + "\n" for line in lines))
    return path


def basic(name: str, password: str | None = None) -> dict[str, str]:
    """The Authorization header of ``name`` (with its test password by default)."""
    secret = PASSWORDS[name] if password is None else password
    token = base64.b64encode(f"{name}:{secret}".encode()).decode()
    return {"authorization": f"Basic {token}"}


ROOT_RULE: dict[str, list[str]] = {"users": ["root"], "repositories": ["*"], "actions": ["*"]}


def auth_settings(root: Path, rules: list[dict[str, list[str]]], **environ: str) -> Settings:
    """Settings with ``auth.mode = "basic"``, the test users and ``rules`` (in a TOML file,
    the only place [[access]] rules can be given)."""
    root.mkdir(parents=True, exist_ok=True)
    htpasswd = write_htpasswd(root.parent / "htpasswd")
    lines = ["[auth]", 'mode = "basic"', f"htpasswd = {json.dumps(str(htpasswd))}", ""]
    for rule in rules:
        lines.append("[[access]]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in rule.items()]
        lines.append("")
    config = root.parent / "dockyard-auth.toml"
    config.write_text("\n".join(lines))
    env = {
        "DOCKYARD_STORAGE_ROOT": str(root),
        "DOCKYARD_SERVER_INSTANCE": "test",
        "DOCKYARD_EVENTS_PULL_FLUSH_INTERVAL": "0.02",
        "DOCKYARD_UPLOADS_PURGE_INTERVAL": "3600",
        **environ,
    }
    return load(config, environ=env)


# Import both into a test module (as they are named) to run its tests twice: without auth,
# and with basic auth as "root", who may do everything.


@pytest.fixture(name="settings", params=["auth-none", "auth-basic"])
def settings_with_and_without_auth(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    if request.param == "auth-none":
        return make_settings(tmp_path / "data")
    return auth_settings(tmp_path / "data", [ROOT_RULE])


@pytest.fixture(name="client")
async def client_logged_in(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    headers = basic("root") if services.settings.auth.mode == "basic" else None
    async with make_client(services, headers) as c:
        yield c
