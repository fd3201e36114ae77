"""conf/dockyard.toml documents every setting with its default value."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from dockyard.config import AccessSettings, Settings, WebhookSettings, as_dict, load
from dockyard.config.model import RetentionPolicy

CONF = Path(__file__).parent.parent / "conf" / "dockyard.toml"


def test_shipped_config_equals_the_defaults() -> None:
    assert as_dict(load(CONF, environ={})) == as_dict(Settings())


def test_shipped_config_names_every_key() -> None:
    doc = tomllib.loads(CONF.read_text())
    for section in dataclasses.fields(Settings):
        arrays_of_tables = ("webhooks", "access", "quotas", "upstreams", "replication")
        if section.name in arrays_of_tables:  # commented out
            continue
        keys = {f.name for f in dataclasses.fields(getattr(Settings(), section.name))}
        keys.discard("policies")  # [[retention.policies]]: an array of tables
        assert section.name in doc, f"[{section.name}] is missing from {CONF.name}"
        assert set(doc[section.name]) == keys, f"[{section.name}] keys differ"


def commented_example(first: str) -> str:
    """The commented-out example of conf/dockyard.toml that starts with line ``first``,
    uncommented."""
    lines = CONF.read_text().splitlines()
    example: list[str] = []
    for line in lines[lines.index(first) :]:
        if not line.startswith("# "):
            break
        example.append(line[2:])
    return "\n".join(example) + "\n"


def webhook_example() -> str:
    """The commented-out ``[[webhooks]]`` example of conf/dockyard.toml, uncommented."""
    return commented_example("# [[webhooks]]")


def test_shipped_config_documents_every_webhook_key(tmp_path: Path) -> None:
    example = webhook_example()
    (endpoint,) = tomllib.loads(example)["webhooks"]
    assert set(endpoint) == {f.name for f in dataclasses.fields(WebhookSettings)}
    # The example is valid, and shows the defaults of everything but the examples.
    path = tmp_path / "webhook.toml"
    path.write_text(example)
    (loaded,) = load(path, environ={}).webhooks
    shown = dataclasses.replace(loaded, name="", url="", headers={})
    assert shown == WebhookSettings()


def test_shipped_config_access_examples_are_valid(tmp_path: Path) -> None:
    lines = CONF.read_text().splitlines()
    example: list[str] = []
    for line in lines[lines.index("# [[access]]") :]:
        if not line.startswith("#"):
            break
        example.append(line[2:])
    path = tmp_path / "access.toml"
    path.write_text("\n".join(example) + '\n[auth]\nmode = "basic"\nhtpasswd = "users"\n')
    assert load(path, environ={}).access == [
        AccessSettings(["ci"], ["team/*"], ["pull", "push"]),
        AccessSettings(["anonymous"], ["public/*"], ["pull"]),
    ]


def test_shipped_config_documents_every_retention_policy_key(tmp_path: Path) -> None:
    text = commented_example("# [[retention.policies]]")
    (policy,) = tomllib.loads(text)["retention"]["policies"]
    assert set(policy) == {f.name for f in dataclasses.fields(RetentionPolicy)}
    path = tmp_path / "retention.toml"
    path.write_text(text)
    (loaded,) = load(path, environ={}).retention.policies
    assert loaded.repositories == ["ci/*"] and loaded.keep_last == 10
    assert loaded.immutable_tags == [r"v[0-9]+\.[0-9]+\.[0-9]+"]
