"""``[[upstreams]]`` validation (config/validate_upstreams.py) and the namespace and
prefix mapping (cache/upstreams.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockyard.cache.upstreams import UpstreamMap, namespace_of
from dockyard.config import ConfigError, UpstreamSettings, load


def load_toml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "dockyard.toml"
    path.write_text(text)
    load(path, environ={"DOCKYARD_STORAGE_ROOT": str(tmp_path / "data")})


def upstream(name: str = "hub", url: str = "https://registry-1.docker.io", **kw: str) -> str:
    lines = ["[[upstreams]]", f'name = "{name}"', f'url = "{url}"']
    lines += [f'{k} = "{v}"' for k, v in kw.items()]
    return "\n".join(lines) + "\n"


def test_valid_upstreams_load(tmp_path: Path) -> None:
    load_toml(
        tmp_path,
        upstream(prefix="hub") + upstream("quay", "https://quay.io", prefix="mirror/quay"),
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (upstream(name="", prefix="hub"), "needs a name"),
        (upstream(url="", prefix="hub"), "needs a url"),
        (upstream(url="ftp://example", prefix="hub"), "http:// or https://"),
        (upstream(url="https://", prefix="hub"), "http:// or https://"),
        (upstream(), "needs a prefix"),
        (upstream(prefix="hub/"), "not a repository name path"),
        (upstream(prefix="Hub"), "not a repository name path"),
        (upstream(prefix="/hub"), "not a repository name path"),
        (upstream(prefix="hub") + upstream(prefix="other"), "duplicate upstream name"),
        (upstream(prefix="hub") + upstream("b", prefix="hub"), "duplicate prefix"),
        (upstream(prefix="hub") + upstream("b", prefix="hub/quay"), "inside one another"),
        (upstream(prefix="a/b") + upstream("b", prefix="a"), "inside one another"),
        (upstream(prefix="hub") + "tag_ttl = -1\n", "tag_ttl"),
        (upstream(prefix="hub", username="u"), "username and password"),
    ],
)
def test_invalid_upstreams_fail(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_toml(tmp_path, text)


def test_prefixes_that_share_a_start_are_not_nested(tmp_path: Path) -> None:
    load_toml(tmp_path, upstream(prefix="hub") + upstream("b", prefix="hubble"))


def test_namespaces() -> None:
    hub = UpstreamSettings(name="hub", url="https://registry-1.docker.io", prefix="hub")
    assert namespace_of(hub) == "docker.io"
    ghcr = UpstreamSettings(name="g", url="https://ghcr.io/", prefix="ghcr")
    assert namespace_of(ghcr) == "ghcr.io"
    local = UpstreamSettings(name="l", url="http://127.0.0.1:5000", prefix="local")
    assert namespace_of(local) == "127.0.0.1:5000"
    named = UpstreamSettings(name="n", url="http://127.0.0.1:5000", prefix="n", namespace="x.io")
    assert namespace_of(named) == "x.io"


def test_routes() -> None:
    from dockyard.cache.upstreams import Upstream
    from dockyard.upstream.client import RegistryClient

    settings = [
        UpstreamSettings(name="hub", url="https://registry-1.docker.io", prefix="hub"),
        UpstreamSettings(name="q", url="https://quay.io", prefix="mirror/quay"),
    ]
    clients = [RegistryClient(s.url) for s in settings]
    upstreams = UpstreamMap([Upstream(s, c) for s, c in zip(settings, clients, strict=True)])
    route = upstreams.route("hub/library/alpine")
    assert route is not None and (route.upstream.name, route.remote) == ("hub", "library/alpine")
    route = upstreams.route("mirror/quay/org/app")
    assert route is not None and (route.upstream.name, route.remote) == ("q", "org/app")
    assert upstreams.route("hub") is None
    assert upstreams.route("hubble/app") is None
    assert upstreams.route("mirror/other") is None
    assert upstreams.with_namespace("docker.io", "library/alpine") == "hub/library/alpine"
    assert upstreams.with_namespace("quay.io", "org/app") == "mirror/quay/org/app"
    assert upstreams.with_namespace("ghcr.io", "org/app") == "org/app"


def test_shipped_config_documents_every_upstream_key(tmp_path: Path) -> None:
    import dataclasses
    import tomllib

    from tests.test_conf_file import commented_example

    text = commented_example("# [[upstreams]]")
    (example,) = tomllib.loads(text)["upstreams"]
    assert set(example) == {f.name for f in dataclasses.fields(UpstreamSettings)}
    path = tmp_path / "upstreams.toml"
    path.write_text(text)
    (loaded,) = load(path, environ={"DOCKYARD_STORAGE_ROOT": str(tmp_path)}).upstreams
    # Beyond the required keys it shows the defaults.
    assert dataclasses.replace(loaded, name="", url="", prefix="") == UpstreamSettings()
