"""The deployment files under deploy/ parse, agree with each other, and use only settings
dockyard has: every DOCKYARD_* variable and every key of the ConfigMap's dockyard.toml
goes through ``dockyard.config.load`` exactly as the server would read it, so a
misspelt or removed setting fails here (``ConfigError``) instead of at start-up.

The compose file is checked and resolved by a real compose (Debian's docker-compose:
``config`` validates against the compose schema and needs no daemon), haproxy's
configuration by the real haproxy (``haproxy -c``); the probe paths are requested from
the registry application itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dockyard.config import ConfigError, Settings, as_dict, load
from tests.tools import require_tool

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
# Compose interpolation: ${VAR}, ${VAR:-default}, ${VAR:?message}; $$ is a literal $.
# The variables compose.yaml requires (${NAME:?...}): no default password anywhere.
COMPOSE_SECRETS = ("POSTGRES_PASSWORD", "S3_ACCESS_KEY", "S3_SECRET_KEY")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?][^}]*)?\}")


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def interpolate(value: str) -> str:
    """A compose value with every variable replaced by a placeholder, as compose would
    with the variable set (``$$`` stays a literal ``$``)."""
    return INTERPOLATION.sub(lambda m: f"placeholder-{m.group(1).lower()}", value)


def dockyard_services(doc: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in doc["services"].items() if name.startswith("dockyard-")}


def image_environment() -> dict[str, str]:
    """The DOCKYARD_* variables the Containerfile's ENV sets (in every container)."""
    text = (REPO / "Containerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            for name, value in re.findall(r'(DOCKYARD_\w+)=("[^"]*"|\S*)', line):
                env[name] = value.strip('"')
    return env


def load_checked(environ: Mapping[str, str], toml_text: str | None, tmp_path: Path) -> Settings:
    """``load`` as the server calls it; a ConfigError fails the test naming the setting."""
    path = None
    if toml_text is not None:
        path = tmp_path / "dockyard.toml"
        path.write_text(toml_text)
    try:
        return load(path, environ=dict(environ))
    except ConfigError as e:
        pytest.fail(f"the deployment files use a setting dockyard refuses: {e}", pytrace=False)


def kubernetes_docs() -> dict[str, dict[str, Any]]:
    """Every manifest by kind (one object of each kind)."""
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in docs, f"two {doc['kind']} objects"
            docs[doc["kind"]] = doc
    return docs


def test_every_yaml_file_parses() -> None:
    paths = sorted(DEPLOY.rglob("*.yaml"))
    assert {p.name for p in paths} >= {"compose.yaml", "deployment.yaml", "pdb.yaml"}
    for path in paths:
        docs = list(yaml.safe_load_all(path.read_text()))
        assert docs and all(isinstance(d, dict) for d in docs), path


def test_compose_settings_exist(tmp_path: Path) -> None:
    services = dockyard_services(compose())
    assert len(services) >= 2
    for name, svc in services.items():
        env = {k: interpolate(str(v)) for k, v in svc["environment"].items()}
        settings = load_checked({**image_environment(), **env}, None, tmp_path)
        assert settings.server.instance == name
        assert settings.storage.driver == "s3"
        assert settings.storage.s3.bucket and settings.storage.s3.endpoint
        assert settings.storage.s3.access_key == "placeholder-s3_access_key"
        assert settings.storage.s3.path_style  # SeaweedFS needs path-style URLs
        assert settings.database.url.startswith("postgresql://dockyard:placeholder-")


def compose_config(environ: Mapping[str, str]) -> subprocess.CompletedProcess[bytes]:
    """``docker-compose config``: the file checked against the compose schema, its
    variables and merge keys resolved, as compose itself resolves them."""
    env = {k: v for k, v in os.environ.items() if k not in COMPOSE_SECRETS}
    return subprocess.run(
        [require_tool("docker-compose"), "--file", str(DEPLOY / "compose.yaml"), "config"],
        cwd=DEPLOY,
        env={**env, **environ},
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_compose_accepts_the_file_and_its_settings_exist(tmp_path: Path) -> None:
    secrets = {name: f"value-of-{name.lower()}" for name in COMPOSE_SECRETS}
    done = compose_config(secrets)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    resolved = yaml.safe_load(done.stdout)
    services = dockyard_services(resolved)
    assert sorted(services) == ["dockyard-1", "dockyard-2"]
    for name, svc in services.items():
        settings = load_checked({**image_environment(), **svc["environment"]}, None, tmp_path)
        assert settings.server.instance == name
        assert settings.storage.s3.secret_key == "value-of-s3_secret_key"
        assert settings.database.url == (
            "postgresql://dockyard:value-of-postgres_password@postgres:5432/dockyard"
        )


@pytest.mark.parametrize("missing", COMPOSE_SECRETS)
def test_compose_refuses_to_start_without_a_secret(missing: str) -> None:
    secrets = {name: "x" for name in COMPOSE_SECRETS if name != missing}
    done = compose_config(secrets)
    assert done.returncode != 0
    assert missing in done.stderr.decode(errors="replace")


def test_compose_instances_share_no_disk_and_are_all_balanced() -> None:
    doc = compose()
    services = dockyard_services(doc)
    names = [svc["environment"]["DOCKYARD_SERVER_INSTANCE"] for svc in services.values()]
    assert len(set(names)) == len(names), "every instance needs its own server.instance"
    for svc in services.values():
        assert not svc.get("volumes"), "instances must not share local disk"
    assert {"postgres", "seaweedfs", "haproxy"} <= set(doc["services"])
    (mount,) = doc["services"]["haproxy"]["volumes"]
    assert mount.startswith("./haproxy.cfg:")
    servers = re.findall(r"^\s*server\s+\S+\s+([\w.-]+):(\d+)", haproxy_cfg(), re.M)
    assert sorted(host for host, _ in servers) == sorted(services)
    assert {port for _, port in servers} == {
        services[name]["environment"]["DOCKYARD_SERVER_PORT"] for name in services
    }


def haproxy_cfg() -> str:
    return (DEPLOY / "haproxy.cfg").read_text()


def test_haproxy_balances_round_robin_on_readyz_without_stickiness() -> None:
    lines = [line.split("#")[0].strip() for line in haproxy_cfg().splitlines()]
    assert "balance roundrobin" in lines
    assert "http-check send meth GET uri /readyz" in lines
    assert not [line for line in lines if line.startswith(("cookie", "stick", "hash-type"))]
    default_server = next(line for line in lines if line.startswith("default-server"))
    assert " check" in default_server


def test_haproxy_accepts_the_config() -> None:
    haproxy = require_tool("haproxy")
    done = subprocess.run(
        [haproxy, "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        timeout=60,
        check=False,
    )
    output = (done.stdout + done.stderr).decode(errors="replace")
    assert done.returncode == 0, output
    assert "Configuration file is valid" in output


def pod_environment(docs: Mapping[str, dict[str, Any]]) -> dict[str, str]:
    """The DOCKYARD_* variables a pod gets: the image's, the container's env (values
    from the downward API as a pod name), and every key of the Secrets it reads."""
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    env = image_environment()
    for item in container.get("env", []):
        env[item["name"]] = item.get("value", "dockyard-7d9c8-x2x4q")
    for source in container.get("envFrom", []):
        secret = docs["Secret"]
        assert source["secretRef"]["name"] == secret["metadata"]["name"]
        env.update(secret["stringData"])
    return env


def test_kubernetes_settings_exist(tmp_path: Path) -> None:
    docs = kubernetes_docs()
    toml_text = docs["ConfigMap"]["data"]["dockyard.toml"]
    tomllib.loads(toml_text)
    settings = load_checked(pod_environment(docs), toml_text, tmp_path)
    assert settings.storage.driver == "s3" and settings.storage.s3.bucket
    assert settings.database.url.startswith("postgresql://")
    assert settings.server.instance == "dockyard-7d9c8-x2x4q"
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert container["env"][0]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # The file the pod reads is the ConfigMap's key, mounted where --config points.
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert container["args"][-1] == f"{mount['mountPath']}/dockyard.toml"
    (port,) = container["ports"]
    assert port["containerPort"] == settings.server.port


def test_kubernetes_secret_holds_only_placeholders() -> None:
    secret = kubernetes_docs()["Secret"]
    assert "data" not in secret
    for name, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, name


def test_kubernetes_objects_select_the_same_pods() -> None:
    docs = kubernetes_docs()
    deployment = docs["Deployment"]["spec"]
    labels = deployment["template"]["metadata"]["labels"]
    assert deployment["selector"]["matchLabels"].items() <= labels.items()
    assert deployment["replicas"] >= 2
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()
    assert docs["Service"]["spec"].get("sessionAffinity", "None") == "None"
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (container,) = deployment["template"]["spec"]["containers"]
    (port,) = container["ports"]
    assert docs["Service"]["spec"]["ports"][0]["targetPort"] in (
        port["name"],
        port["containerPort"],
    )
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    on_disk = {p.name for p in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == on_disk


async def test_kubernetes_probes_answer(client: httpx.AsyncClient) -> None:
    docs = kubernetes_docs()
    (container,) = docs["Deployment"]["spec"]["template"]["spec"]["containers"]
    paths = {
        probe: container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")
    }
    assert paths == {"readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for path in paths.values():
        assert (await client.get(path)).status_code == 200, path


# The settings the deployment files rely on, checked on their own.


def test_s3_driver_needs_a_bucket(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"storage\.s3\.bucket"):
        load(None, environ={"DOCKYARD_STORAGE_DRIVER": "s3"})
    path = tmp_path / "s3.toml"
    path.write_text('[storage]\ndriver = "s3"\n[storage.s3]\nbucket = "b"\nregion = "r"\n')
    s3 = load(path, environ={"DOCKYARD_STORAGE_S3_ENDPOINT": "http://127.0.0.1:8333"}).storage.s3
    assert (s3.bucket, s3.region, s3.endpoint) == ("b", "r", "http://127.0.0.1:8333")


@pytest.mark.parametrize("url", ["mysql://u@h/db", "sqlite:///x", "postgresql-ish"])
def test_database_url_must_be_postgresql(url: str) -> None:
    with pytest.raises(ConfigError, match=r"database\.url"):
        load(None, environ={"DOCKYARD_DATABASE_URL": url})


def test_credentials_are_redacted() -> None:
    settings = load(
        None,
        environ={
            "DOCKYARD_STORAGE_DRIVER": "s3",
            "DOCKYARD_STORAGE_S3_BUCKET": "b",
            "DOCKYARD_STORAGE_S3_ACCESS_KEY": "AKIDEXAMPLE",
            "DOCKYARD_STORAGE_S3_SECRET_KEY": "s3-secret-value",
            "DOCKYARD_DATABASE_URL": "postgresql://dockyard:db-secret-value@127.0.0.1/dockyard",
        },
    )
    shown = repr(as_dict(settings, redact=True))
    assert "s3-secret-value" not in shown and "db-secret-value" not in shown
    assert "postgresql://dockyard:<redacted>@127.0.0.1/dockyard" in shown
    assert "s3-secret-value" in repr(as_dict(settings))  # only the redacted view hides it
    assert "secret-value" not in repr(settings)
