"""A real server's JSON log (``[log] file``, 2 workers, token auth) read after a run of
requests: every line is ECS JSON, one access line per request with every field, the
request id goes round (response header, log line, event log), and no secret is in it.
Then the file is rotated under a running server (move, SIGHUP)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import Skopeo, server_events, serving
from tests.e2e.logread import field
from tests.e2e.test_auth_e2e import PASSWORDS, creds, write_auth_config
from tests.imagegen import OCILayout, build_image, make_layer, random_layers
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

# Every access line has these (user.name and the dockyard.* route details when they apply).
ACCESS_FIELDS = (
    "@timestamp",
    "log.level",
    "log.logger",
    "message",
    "process.pid",
    "http.request.id",
    "http.request.method",
    "url.path",
    "http.response.status_code",
    "http.request.body.bytes",
    "http.response.body.bytes",
    "event.duration",
    "client.ip",
    "user_agent.original",
    "dockyard.route",
)


def json_log(path: Path) -> list[dict[str, Any]]:
    """Every line of the file, each of which must be one JSON object."""
    lines = path.read_text().splitlines()
    docs = [json.loads(line) for line in lines]  # fails on any line that is not JSON
    assert all(isinstance(d, dict) for d in docs)
    return docs


def access_lines(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if field(d, "log.logger") == "dockyard.access"]


def wait_for_id(path: Path, request_id: str) -> None:
    for _ in range(200):
        if path.exists() and f'"{request_id}"' in path.read_text():
            return
        time.sleep(0.05)  # the workers' log threads write it
    raise AssertionError(f"{request_id} never reached {path}")


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DockyardServer, Path]]:
    """Token auth, 2 workers, JSON to a file at level warning: the access log must still be
    written (it is on whatever the level) and nothing else at info (which shows the level
    reached the workers: each says "worker N started" at info)."""
    root = tmp_path_factory.mktemp("dockyard-request-log")
    config = write_auth_config(root, "token")
    log_file = root / "dockyard.json.log"
    config.write_text(
        config.read_text()
        + f'\n[log]\nlevel = "warning"\nformat = "json"\nfile = {json.dumps(str(log_file))}\n'
    )
    server = DockyardServer(root / "data", workers=2, env={"DOCKYARD_CONFIG": str(config)})
    yield from ((s, log_file) for s in serving(server))


def token(server: DockyardServer, user: str, scope: str) -> str:
    r = httpx.get(
        f"{server.url}/auth/token",
        params={"service": "dockyard", "scope": scope},
        auth=(user, PASSWORDS[user]),
        headers={"x-request-id": f"e2e-token-{user}"},
    )
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def test_json_request_log_of_a_run(logged: tuple[DockyardServer, Path], tmp_path: Path) -> None:
    server, log_file = logged
    skopeo = Skopeo(require_tool("skopeo"), server)
    layout = OCILayout(tmp_path / "layout")
    layout.add_image("v1", build_image([make_layer(31), *random_layers(32, 2)]))
    target = skopeo.docker("team/logged:v1")
    skopeo.copy(layout.ref("v1"), target, "--dest-creds", creds("alice"), "--preserve-digests")
    skopeo.copy(target, f"oci:{tmp_path / 'pulled'}:v1", "--src-creds", creds("bob"))

    alice = token(server, "alice", "repository:team/logged:pull,push")
    bearer = {"authorization": f"Bearer {alice}"}
    sent: dict[str, httpx.Response] = {}
    with httpx.Client(base_url=server.url) as client:
        sent["e2e-404"] = client.get(
            "/v2/team/logged/manifests/missing", headers={**bearer, "x-request-id": "e2e-404"}
        )
        sent["e2e-head"] = client.head(
            "/v2/team/logged/manifests/v1", headers={**bearer, "x-request-id": "e2e-head"}
        )
        data = os.urandom(3000)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        sent["e2e-push"] = client.post(
            "/v2/team/logged/blobs/uploads/",
            params={"digest": digest},
            content=data,
            headers={**bearer, "x-request-id": "e2e-push"},
        )
        sent["e2e-basic"] = client.get(
            "/v2/team/logged/tags/list",
            auth=("bob", PASSWORDS["bob"]),
            headers={"x-request-id": "e2e-basic"},
        )
        hostile = client.get("/v2/", headers={"x-request-id": "h" * 100})
        unnamed = client.get("/v2/", headers=bearer)
    assert [sent[k].status_code for k in ("e2e-404", "e2e-head", "e2e-push")] == [404, 200, 201]
    for request_id, response in sent.items():
        assert response.headers["x-request-id"] == request_id
    made = unnamed.headers["x-request-id"]
    replaced = hostile.headers["x-request-id"]
    assert replaced != "h" * 100

    wait_for_id(log_file, made)
    docs = json_log(log_file)
    lines = access_lines(docs)
    # The level (warning) holds in the workers; only the access log writes at info.
    chatty = [d for d in docs if d["log.level"] in ("debug", "info") and d not in lines]
    assert not chatty, chatty[:3]
    assert len(lines) > 20  # skopeo's push and pull, the token requests, the requests above
    ids = [field(d, "http.request.id") for d in lines]
    assert len(ids) == len(set(ids)), "a request was logged twice"
    for d in lines:
        missing = [name for name in ACCESS_FIELDS if field(d, name) is None]
        assert not missing, (missing, d)
        assert field(d, "event.duration") > 0 and field(d, "log.level") == "info"
        assert field(d, "client.ip") == "127.0.0.1"
    by_id = {field(d, "http.request.id"): d for d in lines}
    for request_id in [*sent, made, replaced, "e2e-token-alice"]:
        assert request_id in by_id, request_id  # one line per request sent
    assert "h" * 100 not in log_file.read_text()

    not_found = by_id["e2e-404"]
    assert field(not_found, "http.response.status_code") == 404
    assert field(not_found, "dockyard.error_code") == "MANIFEST_UNKNOWN"
    assert field(not_found, "dockyard.repository") == "team/logged"
    assert field(not_found, "dockyard.reference") == "missing"
    assert field(not_found, "dockyard.route") == "manifests"
    assert field(not_found, "user.name") == "alice"
    assert field(not_found, "http.response.body.bytes") == len(sent["e2e-404"].content)
    assert field(by_id["e2e-head"], "http.request.method") == "HEAD"
    assert field(by_id["e2e-head"], "http.response.body.bytes") == 0
    push = by_id["e2e-push"]
    assert field(push, "http.request.body.bytes") == 3000
    assert field(push, "url.path") == "/v2/team/logged/blobs/uploads/"
    assert field(by_id["e2e-basic"], "user.name") == "bob"
    assert field(by_id[made], "user_agent.original").startswith("python-httpx/")
    skopeo_lines = [d for d in lines if "skopeo" in field(d, "user_agent.original")]
    assert {field(d, "user.name") for d in skopeo_lines} >= {"alice", "bob"}
    assert {field(d, "http.request.method") for d in skopeo_lines} >= {"PUT", "GET", "HEAD"}

    # The id goes round: the response header, the log line and the event the push caused.
    (event,) = [e for e in server_events(server) if e.digest == digest]
    assert event.body["request"]["id"] == "e2e-push"

    # No secret: no password, no token, no Authorization header value.
    text = log_file.read_text()
    basic_values = [base64.b64encode(creds(u).encode()).decode() for u in ("alice", "bob")]
    # (bob's password, "b0b", is too short to look for: hex ids contain it by chance.)
    passwords = [p for p in PASSWORDS.values() if len(p) >= 8]
    for secret in [*passwords, alice, alice.split(".")[2], *basic_values]:
        assert secret not in text, f"{secret[:6]}... leaked into the log"
    assert "Bearer" not in text and "Basic " not in text
    # Everything went to the file: the process's stderr holds no log line.
    assert not [line for line in server.log().splitlines() if line.startswith("{")]


def test_rotation_by_move_and_sighup(tmp_path: Path) -> None:
    """logrotate's way: move the file, SIGHUP the server (its workers restart and open the
    path afresh; the supervisor reopens a moved file by itself), new lines in the new
    file, nothing lost at the graceful stop."""
    log_file = tmp_path / "dockyard.log"
    env = {"DOCKYARD_LOG_FILE": str(log_file), "DOCKYARD_LOG_LEVEL": "info"}
    server = DockyardServer(tmp_path / "data", workers=2, env=env)
    rotated = tmp_path / "dockyard.log.1"
    for _ in serving(server):
        assert server.proc is not None
        wait_until(lambda: len(started(log_file)) == 2)  # a SIGHUP must not meet a start-up
        httpx.get(f"{server.url}/v2/", headers={"x-request-id": "before-move"})
        wait_for_id(log_file, "before-move")
        log_file.rename(rotated)
        os.kill(server.proc.pid, signal.SIGHUP)
        wait_until(lambda: log_file.exists() and len(started(log_file)) == 2)
        r = httpx.get(f"{server.url}/v2/", headers={"x-request-id": "after-move"})
        assert r.status_code == 200
        wait_for_id(log_file, "after-move")
    # Nothing lost at either stop: both generations of workers said so (the old ones in
    # whichever file the path named when they wrote; the supervisor does not wait for the
    # last worker to exit, so its line may come a moment later).
    wait_until(lambda: stopping(rotated) + stopping(log_file) == 4)
    old, new = json_log(rotated), json_log(log_file)
    old_ids = {field(d, "http.request.id") for d in access_lines(old)}
    new_ids = {field(d, "http.request.id") for d in access_lines(new)}
    assert "before-move" in old_ids and "after-move" not in old_ids
    assert "after-move" in new_ids and "before-move" not in new_ids
    assert any(d["message"].startswith("dockyard stopped") for d in new)
    assert not any(d["message"].startswith("dockyard stopped") for d in old)


def wait_until(check: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)  # the server's processes write the log


def stopping(path: Path) -> int:
    return sum("stopping" in d["message"] for d in messages_of(path))


def started(path: Path) -> list[dict[str, Any]]:
    return [
        d
        for d in messages_of(path)
        if d["message"].startswith("worker ") and "started" in d["message"]
    ]


def messages_of(path: Path) -> list[dict[str, Any]]:
    """The complete lines written so far (the last may be half written)."""
    text = path.read_text()
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]
