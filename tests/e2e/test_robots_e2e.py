"""Robot tokens end to end: ``dockyard tokens create/list/revoke`` against real ``dockyard
serve`` processes in basic mode (two workers) and token mode, skopeo logging in and pushing
and pulling with a robot's secret, httpx for the exact answers, and scanners' pull
credentials (``RobotTokens.pull_credentials``) used by a real ``skopeo inspect``."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dockyard.auth.robots import RobotTokens
from dockyard.meta.open import open_meta
from dockyard.meta.store import Database
from tests.conftest import make_settings
from tests.e2e.conftest import Skopeo, _serve
from tests.e2e.test_auth_e2e import PASSWORDS, write_auth_config
from tests.imagegen import OCILayout, build_image, make_layer
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

MISSING_BLOB = "blobs/sha256:" + "0" * 64


def tokens_cli(
    server: DockyardServer, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """``dockyard tokens COMMAND --config F ARGS`` with the server's configuration file and
    data directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_STORAGE_ROOT"] = str(server.data_dir)
    command, *rest = args
    config = ["--config", server.env["DOCKYARD_CONFIG"]]
    done = subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "tokens", command, *config, *rest],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


def create(server: DockyardServer, name: str, *scopes: str, expires: str = "30d") -> str:
    """A new robot's secret (``tokens create --json``)."""
    flags = [f"--scope={s}" for s in scopes]
    done = tokens_cli(server, "create", "--name", name, *flags, "--expires", expires, "--json")
    doc = json.loads(done.stdout)
    assert doc["username"] == f"robot${name}"
    return str(doc["secret"])


def robot_creds(name: str, secret: str) -> str:
    return f"robot${name}:{secret}"


@contextmanager
def robot_tokens(server: DockyardServer) -> Iterator[RobotTokens]:
    """The server's robots as a worker sees them, on its database (SQLite file)."""
    meta = open_meta(make_settings(server.data_dir))
    try:
        yield RobotTokens(Database(meta, 2))
    finally:
        meta.close()


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> OCILayout:
    layout = OCILayout(tmp_path_factory.mktemp("robot-images") / "layout")
    layout.add_image("v1", build_image([make_layer(41)]))
    return layout


@pytest.fixture(scope="module")
def basic(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("dockyard-robots-basic")
    config = write_auth_config(root, "basic")
    yield from _serve(root, workers=2, env={"DOCKYARD_CONFIG": str(config)})


@pytest.fixture(scope="module")
def token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DockyardServer]:
    root = tmp_path_factory.mktemp("dockyard-robots-token")
    config = write_auth_config(root, "token")
    yield from _serve(root, workers=1, env={"DOCKYARD_CONFIG": str(config)})


def get(server: DockyardServer, path: str, auth: tuple[str, str] | None) -> httpx.Response:
    # A new connection each time: with two workers, both get asked.
    return httpx.get(f"{server.url}{path}", auth=auth, timeout=10)


# -- basic mode


def test_cli_create_list_revoke(basic: DockyardServer) -> None:
    secret = create(basic, "lister", "repository:team/*:push,pull")
    listed = json.loads(tokens_cli(basic, "list", "--json").stdout)["robots"]
    entry = next(r for r in listed if r["name"] == "lister")
    assert entry["scopes"] == ["repository:team/*:pull,push"]
    assert entry["status"] == "active" and entry["expires"] and entry["lastUsed"] is None
    assert entry["createdBy"].startswith("cli")
    assert secret not in json.dumps(listed)
    text = tokens_cli(basic, "list").stdout
    assert "lister" in text and secret not in text
    # A live name is taken; bad input changes nothing.
    again = tokens_cli(basic, "create", "--name=lister", "--scope=repository:a:pull", check=False)
    assert again.returncode == 1 and "exists" in again.stderr
    for bad in (
        ["--name", "Bad Name", "--scope=repository:a:pull"],
        ["--name", "x", "--scope=repository:a:admin"],
        ["--name", "x", "--scope=repository:a:pull", "--expires", "soon"],
        ["--name", "scan-x", "--scope=repository:a:pull"],
    ):
        done = tokens_cli(basic, "create", *bad, check=False)
        assert done.returncode == 1 and done.stderr.startswith("dockyard: "), done.stderr
    listed = json.loads(tokens_cli(basic, "list", "--json").stdout)["robots"]
    assert "x" not in [r["name"] for r in listed]
    assert tokens_cli(basic, "revoke", "robot$lister").stdout.strip() == (
        "robot token robot$lister revoked"
    )
    listed = json.loads(tokens_cli(basic, "list", "--json").stdout)["robots"]
    assert next(r for r in listed if r["name"] == "lister")["status"] == "revoked"
    missing = tokens_cli(basic, "revoke", "nobody", check=False)
    assert missing.returncode == 1 and "no robot token" in missing.stderr


def test_skopeo_login_push_and_pull_within_scope(
    basic: DockyardServer, layout: OCILayout, tmp_path: Path
) -> None:
    secret = create(basic, "ci", "repository:team/*:push,pull")
    skopeo = Skopeo(require_tool("skopeo"), basic)
    authfile = tmp_path / "auth.json"
    # In a shell the user name is single-quoted ('robot$ci'): $ would expand.
    login_flags = ["--username", "robot$ci", "--password-stdin", basic.host]
    login = subprocess.run(
        [skopeo.path, "login", "--tls-verify=false", f"--authfile={authfile}", *login_flags],
        input=secret.encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert login.returncode == 0, login.stderr.decode()
    target = skopeo.docker("team/app:v1")
    skopeo.copy(layout.ref("v1"), target, "--dest-authfile", str(authfile))
    skopeo.copy(target, f"oci:{tmp_path / 'pulled'}:v1", "--src-authfile", str(authfile))
    outside = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-authfile",
        str(authfile),
        layout.ref("v1"),
        skopeo.docker("other/app:v1"),
        check=False,
    )
    assert outside.returncode != 0
    auth = ("robot$ci", secret)
    assert get(basic, "/v2/team/app/manifests/v1", auth).status_code == 200
    # A known caller outside its scopes: 403, as for users (docs/security.md).
    r = get(basic, f"/v2/other/app/{MISSING_BLOB}", auth)
    assert r.status_code == 403 and r.json()["errors"][0]["code"] == "DENIED"
    # [[access]] rules do not apply: anonymous may pull public/*, the robot may not.
    assert get(basic, f"/v2/public/app/{MISSING_BLOB}", None).status_code == 404
    assert get(basic, f"/v2/public/app/{MISSING_BLOB}", auth).status_code == 403
    r = httpx.delete(f"{basic.url}/v2/team/app/manifests/v1", auth=auth, timeout=10)
    assert r.status_code == 403
    # The catalog shows it only what it may pull.
    r = get(basic, "/v2/_catalog", auth)
    assert r.status_code == 200 and "team/app" in r.json()["repositories"]
    assert all(n.startswith("team/") for n in r.json()["repositories"]), r.text
    listed = json.loads(tokens_cli(basic, "list", "--json").stdout)["robots"]
    assert next(r for r in listed if r["name"] == "ci")["lastUsed"] is not None


def test_wrong_secret_is_a_wrong_password_and_counted(basic: DockyardServer) -> None:
    create(basic, "counted", "repository:team/*:pull")
    wrong = get(basic, "/v2/", ("robot$counted", "not-the-secret"))
    user = get(basic, "/v2/", ("alice", "not-the-password"))
    assert wrong.status_code == user.status_code == 401
    assert wrong.json() == user.json()
    unknown = get(basic, "/v2/", ("robot$nobody", "x"))
    assert unknown.status_code == 401 and unknown.json() == user.json()
    # The failed-login limiter counts robots too (5 per address and user, per worker).
    statuses = [get(basic, "/v2/", ("robot$counted", "guess")).status_code for _ in range(12)]
    assert 429 in statuses, statuses


def test_revocation_reaches_both_workers(basic: DockyardServer) -> None:
    secret = create(basic, "revoked", "repository:team/*:pull")
    auth = ("robot$revoked", secret)
    path = f"/v2/team/app/{MISSING_BLOB}"
    # Both workers now hold the robot's row in their cache.
    assert {get(basic, path, auth).status_code for _ in range(12)} == {404}
    tokens_cli(basic, "revoke", "revoked")
    time.sleep(5.5)  # VERIFIED_SECONDS (docs/security.md), and a little
    # Refused by every worker (429 once the failed-login limiter has counted enough).
    statuses = [get(basic, path, auth).status_code for _ in range(12)]
    assert statuses[0] == 401 and set(statuses) <= {401, 429}, statuses


def test_expired_token_refused(basic: DockyardServer) -> None:
    secret = create(basic, "brief", "repository:team/*:pull", expires="2s")
    auth = ("robot$brief", secret)
    assert get(basic, "/v2/", auth).status_code == 200
    time.sleep(2.2)
    assert get(basic, "/v2/", auth).status_code == 401
    listed = json.loads(tokens_cli(basic, "list", "--json").stdout)["robots"]
    assert next(r for r in listed if r["name"] == "brief")["status"] == "expired"


def test_pull_credentials_for_a_real_pull(basic: DockyardServer, layout: OCILayout) -> None:
    skopeo = Skopeo(require_tool("skopeo"), basic)
    root = f"root:{PASSWORDS['root']}"
    skopeo.copy(layout.ref("v1"), skopeo.docker("scan/app:v1"), "--dest-creds", root)
    with robot_tokens(basic) as robots:
        creds = trio.run(robots.pull_credentials, "scan/app", 3.0)
    assert creds is not None
    user, secret = creds
    flags = ("--tls-verify=false", "--creds", f"{user}:{secret}")
    inspected = json.loads(skopeo("inspect", *flags, skopeo.docker("scan/app:v1")).stdout)
    assert inspected["Digest"].startswith("sha256:")
    other = skopeo("inspect", *flags, skopeo.docker("team/app:v1"), check=False)
    assert other.returncode != 0
    r = httpx.post(f"{basic.url}/v2/scan/app/blobs/uploads/", auth=(user, secret), timeout=10)
    assert r.status_code == 403
    time.sleep(3.2)
    expired = skopeo("inspect", *flags, skopeo.docker("scan/app:v1"), check=False)
    assert expired.returncode != 0


def test_auth_none_warns(tmp_path: Path) -> None:
    data = tmp_path / "data"
    meta = open_meta(make_settings(data))
    meta.migrate()
    meta.close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    env["DOCKYARD_STORAGE_ROOT"] = str(data)
    scope = ["--scope", "repository:a:pull"]
    done = subprocess.run(
        [sys.executable, "-m", "dockyard.cli", "tokens", "create", "--name=ci", *scope],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert 'auth.mode is "none"' in done.stderr and "robot$ci" in done.stdout


# -- token mode


def claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    doc: dict[str, Any] = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return doc


def issue(
    server: DockyardServer, auth: tuple[str, str], *scopes: str, offline: bool = False
) -> httpx.Response:
    params: dict[str, str | list[str]] = {"service": "dockyard", "scope": list(scopes)}
    if offline:
        params["offline_token"] = "true"
    return httpx.get(f"{server.url}/auth/token", params=params, auth=auth, timeout=10)


def test_token_endpoint_grants_within_scopes(token: DockyardServer) -> None:
    secret = create(token, "ci", "repository:team/*:push,pull", "repository:private/*:pull")
    auth = ("robot$ci", secret)
    r = issue(
        token,
        auth,
        "repository:team/app:pull,push,delete",
        "repository:other/app:pull",
        "repository:public/app:pull",
        "repository:private/x:pull",
        "registry:catalog:*",
    )
    assert r.status_code == 200, r.text
    access = claims(r.json()["token"])
    assert access["sub"] == "robot$ci"
    # requested ∩ the robot's scopes: no rules (private/* is nobody's but root's there).
    assert access["access"] == [
        {"type": "repository", "name": "team/app", "actions": ["pull", "push"]},
        {"type": "repository", "name": "private/x", "actions": ["pull"]},
    ]
    wrong = issue(token, ("robot$ci", "nope"), "repository:team/app:pull")
    user = issue(token, ("alice", "nope"), "repository:team/app:pull")
    assert wrong.status_code == user.status_code == 401 and wrong.json() == user.json()
    # Wrong secrets count as failed logins at the token service too.
    statuses = [issue(token, ("robot$guessed", "x")).status_code for _ in range(8)]
    assert statuses[0] == 401 and statuses[-1] == 429, statuses
    form = {
        "grant_type": "password",
        "client_id": "ci",
        "service": "dockyard",
        "username": "robot$ci",
        "password": secret,
        "scope": "repository:team/app:pull",
    }
    r = httpx.post(f"{token.url}/auth/token", data={**form, "access_type": "offline"}, timeout=10)
    assert r.status_code == 200 and r.json()["scope"] == "repository:team/app:pull", r.text
    # No refresh token for a robot: revocation must reach its next login.
    assert "refresh_token" not in r.json()
    r = issue(token, auth, "repository:team/app:pull", offline=True)
    assert r.status_code == 200 and "refresh_token" not in r.json()


def test_skopeo_through_tokens_and_revocation(
    token: DockyardServer, layout: OCILayout, tmp_path: Path
) -> None:
    secret = create(token, "pipeline", "repository:team/*:push,pull")
    creds = robot_creds("pipeline", secret)
    skopeo = Skopeo(require_tool("skopeo"), token)
    target = skopeo.docker("team/app:v1")
    skopeo.copy(layout.ref("v1"), target, "--dest-creds", creds)
    skopeo.copy(target, f"oci:{tmp_path / 'pulled'}:v1", "--src-creds", creds)
    outside = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        creds,
        layout.ref("v1"),
        skopeo.docker("other/app:v1"),
        check=False,
    )
    assert outside.returncode != 0
    bearer = issue(token, ("robot$pipeline", secret), "repository:team/app:pull").json()["token"]
    headers = {"authorization": f"Bearer {bearer}"}
    url = f"{token.url}/v2/team/app/manifests/v1"
    accept = {"accept": "application/vnd.oci.image.manifest.v1+json"}
    assert httpx.get(url, headers={**headers, **accept}, timeout=10).status_code == 200
    tokens_cli(token, "revoke", "pipeline")
    time.sleep(5.5)
    assert issue(token, ("robot$pipeline", secret), "repository:team/app:pull").status_code == 401
    # The token issued before the revocation stops working as well.
    r = httpx.get(url, headers={**headers, **accept}, timeout=10)
    assert r.status_code == 401 and 'error="invalid_token"' in r.headers["www-authenticate"]
