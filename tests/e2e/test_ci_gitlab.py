"""examples/ci/.gitlab-ci.yml run for real by gitlab-ci-local (its shell executor: every
job on this machine, no container images) against a dockyard started here: token auth,
a robot token for the pipeline, scanning on push with the real trivy and the made-up
database of tests/trivydb.py served by the same dockyard, a pull policy, and the deploy
hook of examples/ci/deploy-hook behind a [[webhooks]] endpoint.

- A clean image (every package at its fixed version): build, scan and release pass; the
  release tag is the tested digest, no blob was uploaded twice (the access log), and the
  deploy hook deployed that digest.
- An image with HIGH and CRITICAL findings: the scan job fails (BLOCK_SEVERITY=HIGH), the
  release job never runs, no release tag.
- The same image with the pipeline's threshold off in a repository whose pull policy
  blocks CRITICAL: the scan job fails on the registry's 403.

pipeline.sh is also run directly, building with podman, against a dockyard with basic
auth that does not scan on push and has no vulnerability database at first: its Basic
path, the scan it asks for when none came, and its wait through failed attempts.

The images are built FROM scratch by buildah (nothing can be downloaded here) from the
files of tests/scanimages.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.e2e.containers_tools import ContainerStore
from tests.e2e.logread import access_log, field, logged_request
from tests.scanimages import PACKAGES, PATCHED, apk_installed
from tests.serverproc import DockyardServer, free_port
from tests.tools import require_tool, trivy_binary
from tests.trivydb import ALPINE_RELEASE, push_trivy_db

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "ci"
DB_REPOSITORY = "trivy/db"
ADMIN_PASSWORD = "admin-password"
HOOK_SECRET = "deploy hook secret"
PIPELINE_TIMEOUT = 240.0


@dataclass
class Registry:
    server: DockyardServer
    robot_user: str
    robot_secret: str
    deployed: Path
    store: ContainerStore
    work: Path

    def get(self, repository: str, path: str, accept: str = "*/*") -> httpx.Response:
        """GET as the admin, with a token from the built-in token service."""
        token = admin_token(self.server, f"repository:{repository}:pull")
        headers = {"authorization": f"Bearer {token}", "accept": accept}
        return httpx.get(self.server.url + path, headers=headers, timeout=30)


def admin_token(server: DockyardServer, scope: str) -> str:
    answer = httpx.get(
        f"{server.url}/auth/token",
        params={"service": "dockyard", "scope": scope},
        auth=("admin", ADMIN_PASSWORD),
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def dockyard_cli(*args: str, env: dict[str, str], stdin: str | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "dockyard.cli", *args],
        input=stdin,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def start_dockyard(
    work: Path,
    mode: str,
    on_push: bool,
    more: str = "",
    port: int | None = None,
    with_database: bool = True,
) -> tuple[DockyardServer, dict[str, str], str, str]:
    """dockyard with ``auth.mode`` ``mode``, an admin, trivy scanning (on push or not) on
    the made-up database pushed into itself (no anonymous access: trivy pulls the image and
    the database with dockyard's short-lived scanner robots); (server, its env, robot
    user, robot secret) with the robot made by ``dockyard tokens create``."""
    trivy = trivy_binary()
    port = port or free_port()
    htpasswd = work / "htpasswd"
    config = work / "dockyard.toml"
    config.write_text(
        f"""
[auth]
mode = "{mode}"
htpasswd = {json.dumps(str(htpasswd))}

[[access]]
users = ["admin"]
repositories = ["*"]
actions = ["*"]

[scanning]
scanner = "trivy"
trivy = {json.dumps(trivy)}
db_repository = "127.0.0.1:{port}/{DB_REPOSITORY}"
on_push = {json.dumps(on_push)}
repositories = ["team/*"]
backoff_initial = 1.0
backoff_max = 2.0
{more}"""
    )
    env = {
        "DOCKYARD_CONFIG": str(config),
        "DOCKYARD_STORAGE_ROOT": str(work / "data"),
        "DOCKYARD_LOG_ACCESS": "true",
    }
    dockyard_cli(
        "users", "add", "admin", "--password-stdin", "--htpasswd", str(htpasswd),
        env={}, stdin=ADMIN_PASSWORD + "\n",
    )  # fmt: skip
    server = DockyardServer(work / "data", workers=1, env=env, port=port)
    try:
        server.start()
        # The pipeline's credentials, as an operator makes them (docs/ci.md).
        robot = ["tokens", "create", "--name", "ci", "--scope", "repository:team/*:push,pull"]
        created = json.loads(dockyard_cli(*robot, "--expires", "1d", "--json", env=env))
        if with_database:
            push_database(server, mode)
    except BaseException:
        server.stop()
        raise
    return server, env, created["username"], created["secret"]


def push_database(server: DockyardServer, mode: str) -> None:
    """The made-up trivy database, pushed by the admin into ``server``."""
    if mode == "token":
        token = admin_token(server, f"repository:{DB_REPOSITORY}:pull,push")
        headers = {"authorization": f"Bearer {token}"}
        auth = None
    else:
        headers, auth = {}, ("admin", ADMIN_PASSWORD)

    async def push_db() -> None:
        async with httpx.AsyncClient(headers=headers, auth=auth, timeout=60) as client:
            await push_trivy_db(client, server.url, DB_REPOSITORY)

    trio.run(push_db)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    for tool in ("gitlab-ci-local", "buildah", "git", "rsync", "jq", "curl"):
        require_tool(tool)
    work = tmp_path_factory.mktemp("ci-gitlab")
    port = free_port()
    hook_port = free_port()
    deployed = work / "deployed.txt"
    more = f"""
[[scanning.policies]]
repositories = ["team/prod-*"]
block_severity = "CRITICAL"

[[webhooks]]
name = "deploy"
url = "http://127.0.0.1:{hook_port}/hooks/dockyard"
format = "dockyard"
secret = {json.dumps(HOOK_SECRET)}
repositories = ["team/*"]
actions = ["push"]
backoff_initial = 0.2
"""
    hook_log = open(work / "deploy-hook.log", "wb")  # noqa: SIM115 - handed to the child
    hook = subprocess.Popen(
        [
            sys.executable, str(EXAMPLES / "deploy-hook" / "receiver.py"),
            "--port", str(hook_port), "--registry", f"127.0.0.1:{port}", "--tag", "release",
            "--command", f'echo "$DEPLOY_IMAGE" >> {deployed}',
        ],
        env={**os.environ, "DEPLOY_HOOK_SECRET": HOOK_SECRET},
        stdout=hook_log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    hook_log.close()
    try:
        server, _, user, secret = start_dockyard(work, "token", True, more, port)
    except BaseException:
        hook.terminate()
        hook.wait(10)
        raise
    try:
        store = ContainerStore(work / "containers")
        yield Registry(server, user, secret, deployed, store, work / "projects")
    finally:
        server.stop()
        hook.terminate()
        hook.wait(10)
    no_traceback(server)


def no_traceback(server: DockyardServer) -> None:
    """An unhandled error on the server is a bug even when the pipeline got through."""
    text = server.log_path.read_text(errors="replace")
    if "Traceback" in text:
        pytest.fail(f"dockyard logged an unhandled error:\n{text[-8000:]}", pytrace=False)


def project(registry: Registry, name: str, packages: dict[str, str]) -> Path:
    """A git repository like a user's: the example pipeline, pipeline.sh in ci/, and a
    Containerfile FROM scratch copying an Alpine-like root with ``packages`` installed."""
    root = registry.work / name
    rootfs = root / "rootfs"
    files = {
        "etc/alpine-release": f"{ALPINE_RELEASE}.0\n",
        "etc/os-release": (
            f'NAME="Alpine Linux"\nID=alpine\nVERSION_ID={ALPINE_RELEASE}.0\n'
            f'PRETTY_NAME="Alpine Linux v{ALPINE_RELEASE}"\n'
        ),
        "lib/apk/db/installed": apk_installed(packages).decode(),
        "opt/app/hello.txt": f"hello from {name}\n",
    }
    for path, text in files.items():
        (rootfs / path).parent.mkdir(parents=True, exist_ok=True)
        (rootfs / path).write_text(text)
    (root / "Containerfile").write_text("FROM scratch\nCOPY rootfs/ /\n")
    (root / "ci").mkdir()
    shutil.copy(EXAMPLES / "pipeline.sh", root / "ci" / "pipeline.sh")
    shutil.copy(EXAMPLES / ".gitlab-ci.yml", root / ".gitlab-ci.yml")
    # The masked project variable of the real thing (Settings > CI/CD > Variables).
    (root / ".gitlab-ci-local-variables.yml").write_text(
        f"DOCKYARD_PASSWORD: {json.dumps(registry.robot_secret)}\n"
    )
    (root / ".gitignore").write_text(".gitlab-ci-local*\n")
    git = ["git", "-c", "user.name=ci", "-c", "user.email=ci@example.invalid"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-q", "-m", name], cwd=root, check=True)
    return root


@dataclass
class Run:
    code: int
    output: str
    jobs: dict[str, str]  # job -> PASS / FAIL

    def digest(self, root: Path) -> str:
        text = (root / "dockyard.env").read_text()
        return text.strip().removeprefix("IMAGE_DIGEST=")


def run_pipeline(registry: Registry, root: Path, **variables: str) -> Run:
    args = ["--force-shell-executor", "--no-color"]
    variables = {"DOCKYARD_URL": registry.server.url, "SCAN_TIMEOUT": "150", **variables}
    for key, value in variables.items():
        args += ["--variable", f"{key}={value}"]
    done = subprocess.run(
        [require_tool("gitlab-ci-local"), *args],
        cwd=root,
        env={**registry.store.env, "CI": ""},  # the jobs' CI variables are gitlab-ci-local's
        capture_output=True,
        text=True,
        timeout=PIPELINE_TIMEOUT,
        check=False,
    )
    output = done.stdout + done.stderr
    jobs = {}
    for line in output.splitlines():
        words = line.split()
        if len(words) == 2 and words[0] in ("PASS", "FAIL"):
            jobs[words[1]] = words[0]
    return Run(done.returncode, output, jobs)


def explain(run: Run, registry: Registry) -> str:
    return f"--- gitlab-ci-local\n{run.output[-6000:]}\n--- dockyard\n{registry.server.log()}"


def settled_access_log(registry: Registry) -> list[dict[str, Any]]:
    """The access log once every request made so far is in it: the server writes access
    lines from a log thread after the response, so the pipeline's last PUT may still be
    on its way; a marker request's line comes after it (one worker, one ordered queue)."""
    marker = f"settle-{uuid.uuid4().hex}"
    httpx.get(registry.server.url + "/v2/", headers={"x-request-id": marker}, timeout=30)
    logged_request(registry.server, marker)
    return access_log(registry.server)


def uploads(registry: Registry, repository: str) -> list[tuple[str, str]]:
    """(method, path) of the access log's blob upload requests in ``repository``."""
    return [
        (str(field(d, "http.request.method")), str(field(d, "url.path")))
        for d in settled_access_log(registry)
        if str(field(d, "url.path")).startswith(f"/v2/{repository}/blobs/uploads/")
    ]


def manifest_puts(registry: Registry, repository: str) -> list[str]:
    """Paths of the manifest PUTs in ``repository``; each by the robot, with a token."""
    lines = [
        d
        for d in settled_access_log(registry)
        if field(d, "http.request.method") == "PUT"
        and str(field(d, "url.path")).startswith(f"/v2/{repository}/manifests/")
    ]
    assert {field(d, "user.name") for d in lines} == {registry.robot_user}
    return [str(field(d, "url.path")) for d in lines]


def test_clean_image_is_scanned_and_released(registry: Registry) -> None:
    root = project(registry, "clean", PATCHED)
    run = run_pipeline(registry, root, IMAGE_REPOSITORY="team/app")
    assert run.code == 0, explain(run, registry)
    assert run.jobs == {"build": "PASS", "scan": "PASS", "release": "PASS"}, explain(run, registry)
    digest = run.digest(root)
    assert "scan passed: no finding at or above HIGH" in run.output

    # The release tag is the tested digest ...
    accept = "application/vnd.oci.image.manifest.v1+json"
    release = registry.get("team/app", "/v2/team/app/manifests/release", accept)
    assert release.status_code == 200, release.text
    assert release.headers["docker-content-digest"] == digest
    manifest = release.json()
    blobs = [manifest["config"], *manifest["layers"]]
    # ... and nothing was uploaded again: one finished upload (a PUT) per blob, by the
    # build; the release was one manifest PUT by tag, the same bytes.
    finished = [path for method, path in uploads(registry, "team/app") if method == "PUT"]
    assert len(finished) == len(blobs), uploads(registry, "team/app")
    puts = manifest_puts(registry, "team/app")
    assert sorted(puts) == sorted(
        ["/v2/team/app/manifests/release", f"/v2/team/app/manifests/{_tag(run)}"]
    ), puts

    scan = registry.get("team/app", f"/v2/_dockyard/repositories/team/app/scans/{digest}")
    assert scan.json()["status"] == "done" and scan.json()["findings"] == []

    # The deploy hook got the release push (signed) and deployed the digest.
    expected = f"127.0.0.1:{registry.server.port}/team/app@{digest}"
    for _ in range(200):
        if registry.deployed.exists() and registry.deployed.read_text().strip():
            break
        time.sleep(0.05)
    assert registry.deployed.read_text().splitlines() == [expected]


def _tag(run: Run) -> str:
    """The IMAGE_TAG the build pushed: gitlab-ci-local's CI_COMMIT_SHORT_SHA."""
    for line in run.output.splitlines():
        if "==> pushing " in line:
            return line.rsplit(":", 1)[1].strip()
    raise AssertionError("the build did not say what it pushed")


def test_image_with_high_findings_fails_the_scan_job(registry: Registry) -> None:
    root = project(registry, "vulnerable", PACKAGES)
    run = run_pipeline(registry, root, IMAGE_REPOSITORY="team/vulnerable")
    assert run.code != 0, explain(run, registry)
    assert run.jobs == {"build": "PASS", "scan": "FAIL"}, explain(run, registry)
    assert "finding(s) at or above HIGH in team/vulnerable@" in run.output
    # The findings are printed for whoever reads the job log.
    for cve in ("CVE-2099-10001", "CVE-2099-10002", "CVE-2099-10003"):
        assert cve in run.output
    assert (
        registry.get("team/vulnerable", "/v2/team/vulnerable/manifests/release").status_code == 404
    )


def test_pull_policy_refusal_fails_the_scan_job(registry: Registry) -> None:
    root = project(registry, "blocked", PACKAGES)
    # The pipeline's own threshold off: the registry's policy (CRITICAL in team/prod-*)
    # still stops it.
    run = run_pipeline(registry, root, IMAGE_REPOSITORY="team/prod-app", BLOCK_SEVERITY="")
    assert run.code != 0, explain(run, registry)
    assert run.jobs == {"build": "PASS", "scan": "FAIL"}, explain(run, registry)
    assert "the registry's pull policy refuses" in run.output
    assert registry.get("team/prod-app", "/v2/team/prod-app/manifests/release").status_code == 404


def test_pipeline_script_with_basic_auth_and_a_scan_on_demand(tmp_path: Path) -> None:
    """pipeline.sh's other paths, run directly: Basic credentials (auth.mode "basic"), a
    registry that does not scan on push, so ``scan`` asks for one (POST), and whose
    scanner has no database yet: the attempts fail and are retried, the script waits and
    says why, and the scan passes once the database is pushed."""
    for tool in ("podman", "jq", "curl"):
        require_tool(tool)
    server, _, user, secret = start_dockyard(tmp_path, "basic", on_push=False, with_database=False)
    try:
        root = tmp_path / "project"
        root.mkdir()
        (root / "Containerfile").write_text("FROM scratch\nCOPY hello.txt /\n")
        (root / "hello.txt").write_text("hello\n")
        store = ContainerStore(tmp_path / "containers")
        env = {
            **store.env,
            "DOCKYARD_URL": server.url,
            "DOCKYARD_USER": user,
            "DOCKYARD_PASSWORD": secret,
            "IMAGE_REPOSITORY": "team/basic",
            "IMAGE_TAG": "b1",
            "BUILDER": "podman",  # the GitLab run uses buildah
            "NONE_GRACE": "1",
            "SCAN_TIMEOUT": "120",
        }

        def step(name: str) -> subprocess.Popen[str]:
            return subprocess.Popen(
                ["bash", str(EXAMPLES / "pipeline.sh"), name],
                cwd=root,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )

        def finish(name: str, proc: subprocess.Popen[str]) -> str:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"{name}:\n{out}{err}\n{server.log()}"
            return err

        finish("build", step("build"))
        digest = (root / "dockyard.env").read_text().strip().removeprefix("IMAGE_DIGEST=")
        scanning = step("scan")
        # The scan asked for fails for want of a database (and is retried) ...
        scans_url = f"{server.url}/v2/_dockyard/repositories/team/basic/scans/{digest}"
        for _ in range(300):
            scan = httpx.get(scans_url, auth=("admin", ADMIN_PASSWORD), timeout=30).json()
            if scan["lastError"]:
                break
            time.sleep(0.1)
        assert scan["lastError"] and scan["status"] in ("queued", "running"), scan
        time.sleep(2.5)  # the script polls every 2 s: let it see the error
        # ... until the database arrives.
        push_database(server, "basic")
        scan_log = finish("scan", scanning)
        assert "not scanned on push: asking for a scan" in scan_log
        assert "waiting: the last attempt failed" in scan_log
        finish("promote", step("promote"))
        answer = httpx.get(
            f"{server.url}/v2/team/basic/manifests/release",
            auth=("admin", ADMIN_PASSWORD),
            headers={"accept": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert answer.status_code == 200
        assert answer.headers["docker-content-digest"] == digest
        # Basic mode: the pipeline's calls carried the robot's own credentials.
        users = {
            field(d, "user.name")
            for d in access_log(server)
            if "team/basic" in str(field(d, "url.path"))
        }
        # Only the pipeline's robot touched the repository (and the test's admin GETs);
        # trivy read the stored files in place (a filesystem store), or, where it pulls,
        # did so as a short-lived robot of its own (robot$scan-...).
        scanners = {u for u in users if str(u).startswith("robot$scan-")}
        assert users - scanners - {"admin"} == {user}
    finally:
        server.stop()
    no_traceback(server)
