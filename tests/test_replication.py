"""Replication's pure parts: validation of ``[[replication]]``, which push events a rule
copies, consumer names, remote repository names and the mount memory. (The copying itself
is tested against real registries: tests/e2e/test_replication_e2e.py.)"""

from __future__ import annotations

import dataclasses
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import pytest

from dockyard.config import ConfigError, ReplicationEndpoint, ReplicationRule, Settings, load
from dockyard.config.validate import validate
from dockyard.config.validate_replication import validate_replication
from dockyard.meta.records import Event, StoredEvent
from dockyard.meta.replication import ReplicationRun
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.replication.copy import MountMemory, remote_repository
from dockyard.replication.rules import RuleMatcher, consumer_name
from dockyard.replication.status import status_rows

DIGEST = "sha256:" + "a" * 64
SUBJECT = "sha256:" + "b" * 64


def load_toml(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "dockyard.toml"
    path.write_text(textwrap.dedent(text))
    settings = load(path, {})
    validate(settings)
    return settings


PUSH = """
    [[replication]]
    name = "to-b"
    repositories = ["apps/*"]
    tags = ["v[0-9]+"]

    [[replication.targets]]
    url = "https://b.example.test"
    username = "replicator"
    password = "secret"
    prefix = "mirror"
"""


def test_a_push_and_a_pull_rule_load(tmp_path: Path) -> None:
    settings = load_toml(
        tmp_path,
        PUSH
        + """
    [[replication]]
    name = "from-c"
    mode = "pull"
    interval = 30

    [replication.source]
    url = "http://127.0.0.1:5000"
    """,
    )
    push, pull = settings.replication
    assert push.targets[0].prefix == "mirror" and push.mode == "push"
    assert pull.source.url == "http://127.0.0.1:5000" and pull.interval == 30


def good_rule(**change: Any) -> ReplicationRule:
    target = ReplicationEndpoint(url="https://b.example.test")
    return dataclasses.replace(ReplicationRule(name="to-b", targets=[target]), **change)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": ""}, "needs a name"),
        ({"name": "a:b"}, "not a valid name"),
        ({"mode": "sync"}, "mode: choose one of push, pull"),
        ({"tags": ["v[0-9"]}, "not a regular expression"),
        ({"repositories": ["apps/[x"]}, "unbalanced"),
        ({"repositories": [""]}, "empty glob"),
        ({"max_attempts": 0}, "max_attempts: must be at least 1"),
        ({"backoff_initial": 5.0, "backoff_max": 1.0}, "backoff_initial <= backoff_max"),
    ],
)
def test_bad_rules_are_refused(change: dict[str, Any], message: str) -> None:
    validate_replication([good_rule()])
    with pytest.raises(ConfigError, match=message):
        validate_replication([good_rule(**change)])


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ('url = "ftp://b.example.test"', "not an http:// or https:// URL"),
        ('url = "https://b.example.test/v2/x"', "without a path"),
        ('url = "https://b.example.test"\nprefix = "Bad Prefix"', "not a repository name"),
        ('url = "https://b.example.test"\ntimeout = 0', "timeout: must be positive"),
    ],
)
def test_bad_targets_are_refused(tmp_path: Path, target: str, message: str) -> None:
    text = f"""
    [[replication]]
    name = "r"
    [[replication.targets]]
    {target.replace(chr(10), chr(10) + "    ")}
    """
    with pytest.raises(ConfigError, match=message):
        load_toml(tmp_path, text)


def test_rules_need_their_remotes_and_unique_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="at least one"):
        load_toml(tmp_path, '[[replication]]\nname = "r"\n')
    with pytest.raises(ConfigError, match=r"needs a \[replication.source\] url"):
        load_toml(tmp_path, '[[replication]]\nname = "r"\nmode = "pull"\n')
    with pytest.raises(ConfigError, match="interval: must be positive"):
        load_toml(
            tmp_path,
            '[[replication]]\nname = "r"\nmode = "pull"\ninterval = 0\n'
            '[replication.source]\nurl = "http://127.0.0.1:1"\n',
        )
    with pytest.raises(ConfigError, match="duplicate rule name"):
        load_toml(tmp_path, PUSH + PUSH)


def test_webhook_names_cannot_take_replications(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="webhooks"):
        load_toml(tmp_path, '[[webhooks]]\nname = "replication:x"\nurl = "http://127.0.0.1:1"\n')


def event(action: str = "push", kind: str = "manifest", **target: Any) -> StoredEvent:
    tag = (target.get("tags") or [None])[0]
    body = {"target": {"kind": kind, **target}}
    return StoredEvent(1, 0.0, action, "apps/web", DIGEST, "m", 1, tag, body)


def test_which_events_a_rule_copies() -> None:
    rule = ReplicationRule(name="r", repositories=["apps/*"], tags=["v[0-9]+", "latest"])
    m = RuleMatcher(rule)
    wanted = m.wanted(event(tags=["v1", "dev", "latest"]))
    assert wanted is not None and wanted.tags == ("v1", "latest") and wanted.digest == DIGEST
    assert m.wanted(event(tags=["v1x"])) is None  # regexes match the whole tag
    referrer = m.wanted(event(subject=SUBJECT))  # a referrer, copied by digest
    assert referrer is not None and referrer.tags == () and referrer.subject == SUBJECT
    assert m.wanted(event()) is None  # an index child: copied with its index
    assert m.wanted(event(action="delete", tags=["v1"])) is None  # deletes are not copied
    assert m.wanted(event(kind="blob")) is None
    other = StoredEvent(1, 0.0, "push", "libs/x", DIGEST, "m", 1, "v1", event(tags=["v1"]).body)
    assert m.wanted(other) is None
    no_referrers = RuleMatcher(ReplicationRule(name="r", referrers=False))
    assert no_referrers.wanted(event(subject=SUBJECT)) is None
    assert no_referrers.wanted(event(tags=["anything"])) is not None  # no regexes: every tag


def test_wildcard_free_globs_are_repository_names() -> None:
    assert RuleMatcher(ReplicationRule(repositories=["a/b", "c"])).wildcard_free() == ["a/b", "c"]
    assert RuleMatcher(ReplicationRule(repositories=["a/*", "c"])).wildcard_free() is None
    assert RuleMatcher(ReplicationRule()).wildcard_free() is None


def test_names() -> None:
    rule = ReplicationRule(name="r")
    assert consumer_name(rule, ReplicationEndpoint(url="http://h:1/")) == "replication:r:http://h:1"
    assert (
        consumer_name(rule, ReplicationEndpoint(url="http://h:1", prefix="m"))
        == "replication:r:http://h:1/m"
    )
    assert remote_repository("", "apps/web") == "apps/web"
    assert remote_repository("mirror/", "apps/web") == "mirror/apps/web"


def test_mount_memory_is_a_bounded_lru() -> None:
    mem = MountMemory(size=2)
    mem.received("sha256:1", "a")
    mem.received("sha256:2", "b")
    assert mem.source_for("sha256:1", "c") == "a"  # used: now the most recent
    assert mem.source_for("sha256:1", "a") is None  # already there
    mem.received("sha256:3", "c")  # evicts sha256:2
    assert mem.source_for("sha256:2", "x") is None
    assert mem.source_for("sha256:1", "x") == "a"
    mem.refused = 100  # a target that never mounts is not asked again
    assert mem.source_for("sha256:1", "x") is None


CONF = Path(__file__).parent.parent / "conf" / "dockyard.toml"


def test_the_shipped_example_names_every_key_with_its_default(tmp_path: Path) -> None:
    """conf/dockyard.toml's commented [[replication]] example: every key of a rule and of
    a target, the defaults shown but for the examples, valid once its pull-only source
    table is left out (it shows both modes' tables)."""
    lines = CONF.read_text().splitlines()
    example: list[str] = []
    for line in lines[lines.index("# [[replication]]") :]:
        if not line.startswith("#"):
            break
        example.append(line[2:])
    doc = tomllib.loads("\n".join(example))
    (rule,) = doc["replication"]
    fields = {f.name for f in dataclasses.fields(ReplicationRule)}
    assert set(rule) == fields
    target_keys = {f.name for f in dataclasses.fields(ReplicationEndpoint)}
    assert set(rule["targets"][0]) == target_keys
    path = tmp_path / "example.toml"
    path.write_text("\n".join(example).split("[replication.source]")[0])
    (loaded,) = load_toml(tmp_path, path.read_text()).replication
    shown = dataclasses.replace(loaded, name="", repositories=[], tags=[], targets=[])
    assert shown == ReplicationRule()
    target = dataclasses.replace(loaded.targets[0], url="", username="", password="")
    assert target == ReplicationEndpoint()


def test_status_rows(tmp_path: Path) -> None:
    """What `dockyard replication status` reads: a push target's cursor and backlog, a
    pull rule's last run, and a consumer whose rule was removed."""
    target = ReplicationEndpoint(url="http://127.0.0.1:1")
    push = ReplicationRule(name="to-b", targets=[target])
    pull = ReplicationRule(name="from-c", mode="pull", source=target)
    settings = Settings(replication=[push, pull])
    meta = SQLiteMeta(tmp_path / "meta.sqlite3")
    try:
        meta.migrate()
        meta.webhook_init([consumer_name(push, target), "replication:gone:http://x"])
        meta.append_events([Event("push", "apps/web"), Event("push", "apps/web")])
        meta.replication_record_run(ReplicationRun("from-c", 100.0, 101.0, 2, 1, "boom"))
        doc = status_rows(settings, meta)
    finally:
        meta.close()
    assert doc["log_end"] == 2
    to_b, from_c = doc["rules"]
    (row,) = to_b["targets"]
    assert row["consumer"] == "replication:to-b:http://127.0.0.1:1"
    assert (row["cursor"], row["backlog_events"], row["failed"], row["lease"]) == (0, 2, 0, None)
    run = from_c["last_run"]
    assert (run["copied"], run["failed"], run["last_error"]) == (2, 1, "boom")
    assert from_c["lease"] is None and from_c["job"] == "replication:from-c"
    assert doc["unconfigured"] == [
        {"consumer": "replication:gone:http://x", "cursor": 0, "failed": 0}
    ]
