"""podman and buildah log in to dockyard through basic auth and through the built-in token
service, push and pull, and meet the ``[[access]]`` rules of ``write_auth_config``: every
test runs once against a ``mode = "basic"`` server and once against a ``mode = "token"``
one (each started once for the module).

Images are built FROM scratch with buildah in a module-wide store; every pull goes into a
fresh store, so it downloads the whole image through the registry's checks."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import Skopeo, server_events, serving
from tests.e2e.containers_tools import INSECURE, ContainerStore
from tests.e2e.logread import access_log, field
from tests.e2e.test_auth_e2e import PASSWORDS, write_auth_config
from tests.serverproc import DockyardServer
from tests.tools import require_tool

pytestmark = pytest.mark.e2e

TOOLS = ["podman", "buildah"]
LOCAL_IMAGE = "localhost/dockyard-e2e:v1"


@dataclass(frozen=True)
class AuthRegistry:
    server: DockyardServer
    mode: str  # "basic" or "token"

    def ref(self, repository_and_tag: str) -> str:
        return f"{self.server.host}/{repository_and_tag}"

    def token_requests(self) -> int:
        """How many requests the built-in token service has answered (the access log)."""
        return sum(1 for d in access_log(self.server) if field(d, "url.path") == "/auth/token")

    def fetched_tokens_since(self, before: int) -> bool:
        """Whether the token service answered more than ``before`` requests, once the
        server's log thread has written what it answered (it writes in batches)."""
        deadline = time.monotonic() + (5.0 if self.mode == "token" else 0.5)
        while time.monotonic() < deadline:
            if self.token_requests() > before:
                return True
            time.sleep(0.05)
        return False

    def tags(self, repository: str) -> list[str] | None:
        """The repository's tags as root sees them over HTTP; None if it does not exist."""
        headers = {}
        auth: tuple[str, str] | None = ("root", PASSWORDS["root"])
        if self.mode == "token":
            r = httpx.get(
                f"{self.server.url}/auth/token",
                params={"service": "dockyard", "scope": f"repository:{repository}:pull"},
                auth=auth,
                timeout=10,
            )
            assert r.status_code == 200, r.text
            headers["authorization"] = f"Bearer {r.json()['token']}"
            auth = None
        r = httpx.get(
            f"{self.server.url}/v2/{repository}/tags/list", headers=headers, auth=auth, timeout=10
        )
        if r.status_code == 404:
            return None
        assert r.status_code == 200, r.text
        return sorted(r.json()["tags"])


@pytest.fixture(scope="module", params=["basic", "token"])
def registry_auth(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthRegistry]:
    mode: str = request.param
    root = tmp_path_factory.mktemp(f"dockyard-{mode}")
    config = write_auth_config(root, mode)
    env = {"DOCKYARD_CONFIG": str(config), "DOCKYARD_LOG_ACCESS": "true"}
    server = DockyardServer(root / "data", env=env)
    for running in serving(server):
        yield AuthRegistry(running, mode)


@pytest.fixture(scope="module")
def builder(tmp_path_factory: pytest.TempPathFactory) -> ContainerStore:
    """The store that holds LOCAL_IMAGE, built FROM scratch with one random file."""
    store = ContainerStore(tmp_path_factory.mktemp("containers-builder"))
    try:
        store.build_scratch_image(LOCAL_IMAGE, {"payload.bin": os.urandom(4096)})
    except AssertionError as e:
        # Installed but unusable here (rootless without subordinate ids, say).
        message = f"buildah cannot build an image here (run the tests as root): {e}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return store


@pytest.fixture
def puller(tmp_path: Path) -> ContainerStore:
    """An empty store: a pull into it must fetch every blob from the registry."""
    return ContainerStore(tmp_path / "containers-puller")


@pytest.fixture
def authfile(tmp_path: Path) -> Path:
    """The credentials file of one test; ``login`` writes it, ``logout`` empties it."""
    path = tmp_path / "auth.json"
    path.write_text('{"auths": {}}\n')
    return path


def logged_in_hosts(authfile: Path) -> list[str]:
    return sorted(json.loads(authfile.read_text()).get("auths", {}))


def login(
    store: ContainerStore, tool: str, reg: AuthRegistry, authfile: Path, user: str, password: str
) -> int:
    """``TOOL login --password-stdin``; its exit status."""
    done = store.run(
        tool,
        "login",
        "--authfile",
        str(authfile),
        INSECURE,
        "--username",
        user,
        "--password-stdin",
        reg.server.host,
        stdin=password + "\n",
        check=False,
    )
    return done.returncode


def push(
    store: ContainerStore, tool: str, reg: AuthRegistry, authfile: Path, target: str, check: bool
) -> int:
    """``TOOL push LOCAL_IMAGE <registry>/target``; its exit status."""
    done = store.run(
        tool,
        "push",
        "--authfile",
        str(authfile),
        INSECURE,
        "--signature-policy",
        str(store.policy),
        LOCAL_IMAGE,
        reg.ref(target),
        check=check,
        server=reg.server,
    )
    return done.returncode


def pull(
    store: ContainerStore, tool: str, reg: AuthRegistry, authfile: Path, source: str, check: bool
) -> int:
    done = store.run(
        tool,
        "pull",
        "--authfile",
        str(authfile),
        INSECURE,
        "--signature-policy",
        str(store.policy),
        reg.ref(source),
        check=check,
        server=reg.server,
    )
    return done.returncode


def push_as_root(builder: ContainerStore, reg: AuthRegistry, tmp_path: Path, target: str) -> None:
    """Put LOCAL_IMAGE at ``target`` with root's rights (its own credentials file)."""
    root_auth = tmp_path / "root-auth.json"
    assert login(builder, "podman", reg, root_auth, "root", PASSWORDS["root"]) == 0
    push(builder, "podman", reg, root_auth, target, check=True)
    assert reg.tags(target.split(":")[0]) == [target.split(":")[1]]


@pytest.mark.parametrize("tool", TOOLS)
def test_login_push_pull_logout(
    tool: str,
    registry_auth: AuthRegistry,
    builder: ContainerStore,
    puller: ContainerStore,
    authfile: Path,
) -> None:
    reg = registry_auth
    repository = f"team/{tool}-app"
    assert login(builder, tool, reg, authfile, "alice", PASSWORDS["alice"]) == 0
    assert logged_in_hosts(authfile) == [reg.server.host]

    token_requests = reg.token_requests()
    push(builder, tool, reg, authfile, f"{repository}:v1", check=True)
    # Through token auth the client fetched tokens (dockyard would take Basic there too).
    assert reg.fetched_tokens_since(token_requests) == (reg.mode == "token")
    assert reg.tags(repository) == ["v1"]
    # The registry knew who pushed: the login reached it (as Basic, or inside a token).
    pushers = {
        event.body["actor"]["name"]
        for event in server_events(reg.server)
        if event.repository == repository and event.action == "push"
    }
    assert pushers == {"alice"}

    pull(puller, tool, reg, authfile, f"{repository}:v1", check=True)
    # The same image came back: its id is the digest of a config naming the layer's digest.
    assert puller.image_id(tool, reg.ref(f"{repository}:v1")) == builder.image_id(tool, LOCAL_IMAGE)

    logout = builder.run(tool, "logout", "--authfile", str(authfile), reg.server.host)
    assert logout.returncode == 0
    assert logged_in_hosts(authfile) == []
    # Logged out, the same pull is refused: no rule lets anonymous callers pull team/*.
    puller.run(tool, "rmi", reg.ref(f"{repository}:v1"))
    assert pull(puller, tool, reg, authfile, f"{repository}:v1", check=False) != 0


@pytest.mark.parametrize("tool", TOOLS)
def test_wrong_password_fails_login(
    tool: str, registry_auth: AuthRegistry, builder: ContainerStore, authfile: Path
) -> None:
    done = builder.run(
        tool,
        "login",
        "--authfile",
        str(authfile),
        INSECURE,
        "--username",
        "alice",
        "--password-stdin",
        registry_auth.server.host,
        stdin="not alice's password\n",
        check=False,
    )
    assert done.returncode != 0
    assert b"invalid username/password" in done.stderr
    assert logged_in_hosts(authfile) == []  # nothing was saved


@pytest.mark.parametrize("tool", TOOLS)
def test_pull_only_user_is_refused_push(
    tool: str,
    registry_auth: AuthRegistry,
    builder: ContainerStore,
    puller: ContainerStore,
    authfile: Path,
    tmp_path: Path,
) -> None:
    reg = registry_auth
    push_as_root(builder, reg, tmp_path, f"team/{tool}-shared:v1")
    # bob may pull team/*, not push there.
    assert login(builder, tool, reg, authfile, "bob", PASSWORDS["bob"]) == 0
    pull(puller, tool, reg, authfile, f"team/{tool}-shared:v1", check=True)
    assert push(builder, tool, reg, authfile, f"team/{tool}-bob:v1", check=False) != 0
    assert push(builder, tool, reg, authfile, f"team/{tool}-shared:v2", check=False) != 0
    assert reg.tags(f"team/{tool}-bob") is None
    assert reg.tags(f"team/{tool}-shared") == ["v1"]


@pytest.mark.parametrize("tool", TOOLS)
def test_anonymous_pull_where_a_rule_allows_it(
    tool: str,
    registry_auth: AuthRegistry,
    builder: ContainerStore,
    puller: ContainerStore,
    authfile: Path,
    tmp_path: Path,
) -> None:
    reg = registry_auth
    push_as_root(builder, reg, tmp_path, f"public/{tool}-tools:v1")
    push_as_root(builder, reg, tmp_path, f"team/{tool}-private:v1")
    # No login: authfile is empty. public/* may be pulled by anybody, team/* may not.
    pull(puller, tool, reg, authfile, f"public/{tool}-tools:v1", check=True)
    assert puller.image_id(tool, reg.ref(f"public/{tool}-tools:v1")) == builder.image_id(
        tool, LOCAL_IMAGE
    )
    assert pull(puller, tool, reg, authfile, f"team/{tool}-private:v1", check=False) != 0
    # Nor may anybody push there without logging in.
    assert push(builder, tool, reg, authfile, f"public/{tool}-tools:v2", check=False) != 0
    assert reg.tags(f"public/{tool}-tools") == ["v1"]


def test_delete_with_the_podman_login(
    registry_auth: AuthRegistry, builder: ContainerStore, authfile: Path, tmp_path: Path
) -> None:
    """podman and buildah cannot delete from a registry; skopeo, reading the credentials
    file ``podman login`` wrote, can: refused for alice (push, no delete), done for root."""
    reg = registry_auth
    push_as_root(builder, reg, tmp_path, "team/deleted:v1")
    skopeo = Skopeo(require_tool("skopeo"), reg.server)

    def delete() -> int:
        done = skopeo(
            "delete",
            INSECURE,
            "--authfile",
            str(authfile),
            skopeo.docker("team/deleted:v1"),
            check=False,
        )
        return done.returncode

    assert login(builder, "podman", reg, authfile, "alice", PASSWORDS["alice"]) == 0
    assert delete() != 0
    assert reg.tags("team/deleted") == ["v1"]
    assert login(builder, "podman", reg, authfile, "root", PASSWORDS["root"]) == 0
    assert delete() == 0
    assert reg.tags("team/deleted") in (None, [])
