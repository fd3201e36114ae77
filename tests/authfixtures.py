"""Users files and auth settings for tests: real bcrypt entries (cost 4, to be quick)."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import AsyncIterator, Generator
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


def auth_settings(
    root: Path, rules: list[dict[str, list[str]]], mode: str = "basic", **environ: str
) -> Settings:
    """Settings with ``auth.mode = mode`` ("basic" or "token"), the test users and ``rules``
    (in a TOML file, the only place [[access]] rules can be given)."""
    root.mkdir(parents=True, exist_ok=True)
    htpasswd = write_htpasswd(root.parent / "htpasswd")
    lines = ["[auth]", f"mode = {json.dumps(mode)}", f"htpasswd = {json.dumps(str(htpasswd))}", ""]
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


class TokenFlow(httpx.Auth):
    """What a registry client does in token mode, as "root": it asks the token service for
    the scope a request's path needs before sending it (so streamed bodies are sent once),
    keeps the tokens by scope, and follows a challenge naming another scope (bodiless
    requests only: httpx cannot send a stream twice)."""

    requires_response_body = True  # the token service's answer is read

    def __init__(self) -> None:
        self.tokens: dict[tuple[str, ...], str] = {}

    @staticmethod
    def scopes_for(url: httpx.URL) -> tuple[str, ...]:
        if url.path.startswith("/v2/_catalog"):
            return ("registry:catalog:*",)
        match = re.match(r"/v2/(.+?)/(manifests|blobs|tags|referrers)/", url.path)
        if match is None:
            return ()
        source = url.params.get("from")  # a mount reads its source too
        return (f"repository:{match.group(1)}:*",) + (
            (f"repository:{source}:pull",) if source else ()
        )

    def token_request(self, request: httpx.Request, scopes: tuple[str, ...]) -> httpx.Request:
        params = [("service", "dockyard"), *(("scope", s) for s in scopes)]
        url = request.url.copy_with(path="/auth/token", params=params)
        return httpx.Request("GET", url, headers=basic("root"))

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        scopes = self.scopes_for(request.url)
        if scopes not in self.tokens:
            answer = yield self.token_request(request, scopes)
            assert answer.status_code == 200, answer.text
            self.tokens[scopes] = answer.json()["token"]
        request.headers["authorization"] = f"Bearer {self.tokens[scopes]}"
        response = yield request
        asked = re.search(r'scope="([^"]*)"', response.headers.get("www-authenticate", ""))
        if response.status_code == 401 and asked and (asked.group(1),) != scopes:
            answer = yield self.token_request(request, (asked.group(1),))
            request.headers["authorization"] = f"Bearer {answer.json()['token']}"
            yield request


# Import both into a test module (as they are named) to run its tests three times: without
# auth, and as "root", who may do everything, with basic auth and with bearer tokens.


@pytest.fixture(name="settings", params=["auth-none", "auth-basic", "auth-token"])
def settings_with_and_without_auth(
    request: pytest.FixtureRequest, tmp_path: Path, database_url: str
) -> Settings:
    env = {"DOCKYARD_DATABASE_URL": database_url} if database_url else {}
    if request.param == "auth-none":
        return make_settings(tmp_path / "data", **env)
    mode = request.param.removeprefix("auth-")
    return auth_settings(tmp_path / "data", [ROOT_RULE], mode=mode, **env)


def root_client(services: Services) -> httpx.AsyncClient:
    """A client of ``services`` logged in as "root" the way its auth mode asks."""
    mode = services.settings.auth.mode
    client = make_client(services, basic("root") if mode == "basic" else None)
    if mode == "token":
        client.auth = TokenFlow()
    return client


def with_tokens(client: httpx.AsyncClient) -> bool:
    return isinstance(client.auth, TokenFlow)


@pytest.fixture(name="client")
async def client_logged_in(services: Services) -> AsyncIterator[httpx.AsyncClient]:
    async with root_client(services) as c:
        yield c
