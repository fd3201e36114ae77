"""Webhooks: configuration, the three body formats, signatures, filters, retries, failure
records and redelivery, cursors and leases.

The registry runs in process (``open_services``: the real deliverer in the services'
nursery); every endpoint is a real HTTP server on loopback (``tests.webhook_receiver``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from anyio.abc import TaskStatus

from dockyard import cli
from dockyard.config import ConfigError, Settings, load
from dockyard.events.schema import native
from dockyard.events.webhooks import sign
from dockyard.meta.sqlite import SQLiteMeta
from dockyard.services import Services
from tests.conftest import (
    OCI_MANIFEST,
    events,
    make_client,
    open_services,
    push_blob,
    push_image,
    random_blob,
    wait_for_events,
)
from tests.webhook_receiver import Delivery, Receiver, hook, webhooks_toml

PUBLIC = "https://registry.example.com"

# -- settings


def write_config(root: Path, hooks: list[dict[str, Any]], instance: str = "test") -> Path:
    lines = [
        "[server]",
        f'instance = "{instance}"',
        f'public_url = "{PUBLIC}"',
        "[storage]",
        f"root = {json.dumps(str(root / 'data'))}",
    ]
    path = root / f"dockyard-{instance}.toml"
    path.write_text("\n".join(lines) + "\n" + webhooks_toml(hooks))
    return path


def settings_for(root: Path, hooks: list[dict[str, Any]], instance: str = "test") -> Settings:
    env = {"DOCKYARD_EVENTS_PULL_FLUSH_INTERVAL": "0.02", "DOCKYARD_UPLOADS_PURGE_INTERVAL": "3600"}
    return load(write_config(root, hooks, instance), environ=env)


@asynccontextmanager
async def registry(
    root: Path, hooks: list[dict[str, Any]], instance: str = "test"
) -> AsyncIterator[tuple[Services, httpx.AsyncClient]]:
    async with (
        open_services(settings_for(root, hooks, instance)) as svc,
        make_client(svc) as client,
    ):
        yield svc, client


async def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while True:
            if check():
                return
            await anyio.sleep(0.01)  # the condition is in another process or thread


def cursor_of(svc: Services, name: str) -> int:
    (c,) = [c for c in svc.meta.webhook_cursors() if c.name == name]
    return c.cursor


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], conf: Path, *args: str
) -> tuple[int, str, str]:
    monkeypatch.setenv("DOCKYARD_CONFIG", str(conf))  # the CLI sets it; restored after
    code = cli.main(["events", "webhooks", *args, "--config", str(conf)])
    out, err = capsys.readouterr()
    return code, out, err


# -- configuration


def test_endpoint_settings_from_the_file(tmp_path: Path) -> None:
    s = settings_for(
        tmp_path,
        [
            hook(
                "ci",
                "https://ci.example.com/hook",
                headers={"Authorization": "Bearer x"},
                format="cloudevents",
                secret="k",
                repositories=["team/*"],
                actions=["push", "delete"],
                media_types=["application/vnd.oci.image.manifest.v1+json"],
                max_attempts=3,
            ),
            {"name": "audit", "url": "http://127.0.0.1:9/"},
        ],
    )
    ci, audit = s.webhooks
    assert (ci.name, ci.url, ci.format, ci.secret) == (
        "ci",
        "https://ci.example.com/hook",
        "cloudevents",
        "k",
    )
    assert ci.headers == {"Authorization": "Bearer x"}
    assert (ci.repositories, ci.actions) == (["team/*"], ["push", "delete"])
    assert (ci.max_attempts, ci.timeout, ci.backoff_initial) == (3, 2.0, 0.05)
    # Defaults: the Distribution envelope, no signature, no filter, 10 attempts.
    assert (audit.format, audit.secret, audit.repositories, audit.max_attempts) == (
        "distribution",
        "",
        [],
        10,
    )
    assert (audit.timeout, audit.backoff_initial, audit.backoff_max) == (5.0, 1.0, 60.0)


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ({"name": "a", "url": "http://x/", "urll": "http://y/"}, r"webhooks\[0\]\.urll"),
        ({"name": "a", "url": "ftp://x/"}, r"webhooks\[0\] \(a\)\.url"),
        ({"name": "a", "url": "example.com/hook"}, r"webhooks\[0\] \(a\)\.url"),
        ({"name": "a", "url": "http:///nohost"}, r"webhooks\[0\] \(a\)\.url"),
        ({"name": "a", "url": "http://x:99999/"}, r"webhooks\[0\] \(a\)\.url"),
        ({"url": "http://x/"}, r"webhooks\[0\]\.name"),
        ({"name": "a b", "url": "http://x/"}, r"webhooks\[0\]\.name"),
        ({"name": "a"}, r"webhooks\[0\] \(a\)\.url"),
        ({"name": "a", "url": "http://x/", "format": "json"}, r"\(a\)\.format.*distribution"),
        ({"name": "a", "url": "http://x/", "actions": ["pushed"]}, r"\(a\)\.actions.*pushed"),
        ({"name": "a", "url": "http://x/", "actions": "push"}, r"webhooks\[0\]\.actions"),
        ({"name": "a", "url": "http://x/", "headers": {"Content-Type": "x"}}, r"\.headers"),
        ({"name": "a", "url": "http://x/", "headers": {"X-Dockyard-Signature": "x"}}, "headers"),
        ({"name": "a", "url": "http://x/", "headers": {"A": 1}}, r"webhooks\[0\]\.headers"),
        ({"name": "a", "url": "http://x/", "media_types": ["a/b*"]}, r"\(a\)\.media_types"),
        ({"name": "a", "url": "http://x/", "timeout": 0}, r"\(a\)\.timeout"),
        ({"name": "a", "url": "http://x/", "timeout": "5"}, r"webhooks\[0\]\.timeout"),
        ({"name": "a", "url": "http://x/", "max_attempts": 0}, r"\(a\)\.max_attempts"),
        ({"name": "a", "url": "http://x/", "backoff_max": 0.5}, r"\(a\)\.backoff_initial"),
    ],
)
def test_bad_endpoint_stops_start_up_naming_the_key(
    tmp_path: Path, endpoint: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write_config(tmp_path, [endpoint]), environ={})


def test_duplicate_endpoint_names(tmp_path: Path) -> None:
    hooks = [{"name": "ci", "url": "http://a/"}, {"name": "ci", "url": "http://b/"}]
    with pytest.raises(ConfigError, match=r"webhooks\[1\]\.name: duplicate.*'ci'"):
        load(write_config(tmp_path, hooks), environ={})


def test_webhooks_must_be_an_array_of_tables(tmp_path: Path) -> None:
    path = tmp_path / "d.toml"
    path.write_text('[webhooks]\nname = "a"\nurl = "http://x/"\n')
    with pytest.raises(ConfigError, match=r"\[\[webhooks\]\]"):
        load(path, environ={})


def test_environment_still_overrides_scalar_sections(tmp_path: Path) -> None:
    conf = write_config(tmp_path, [{"name": "a", "url": "http://x/"}])
    s = load(conf, environ={"DOCKYARD_SERVER_PORT": "5009", "DOCKYARD_STORAGE_ROOT": "/r"})
    assert (s.server.port, s.storage.root, s.webhooks[0].name) == (5009, "/r", "a")
    # Webhooks have no variables: a DOCKYARD_WEBHOOKS_* variable is a mistake.
    with pytest.raises(ConfigError, match=r"DOCKYARD_WEBHOOKS_URL.*config file"):
        load(conf, environ={"DOCKYARD_WEBHOOKS_URL": "http://y/"})


def test_config_check_hides_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = write_config(
        tmp_path,
        [{"name": "a", "url": "http://x/", "secret": "hunter2", "headers": {"Auth": "tok3n"}}],
    )
    assert cli.main(["config", "check", "--config", str(conf)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "tok3n" not in out
    assert json.loads(out)["webhooks"][0]["headers"] == {"Auth": "<redacted>"}


# -- bodies, formats and signatures


def check_timestamp(value: Any) -> datetime:
    assert isinstance(value, str) and value.endswith("Z"), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def distribution_consumer(d: Delivery) -> list[dict[str, Any]]:
    """What a consumer of CNCF Distribution's notifications reads, checked as its Go
    structs (notifications.Envelope / Event) would decode it."""
    assert d.headers["content-type"] == "application/vnd.docker.distribution.events.v2+json"
    envelope = d.json()
    assert set(envelope) == {"events"}
    for e in envelope["events"]:
        assert isinstance(e["id"], str) and e["id"]
        check_timestamp(e["timestamp"])
        assert e["action"] in ("push", "pull", "mount", "delete")
        t = e["target"]
        for key in ("mediaType", "digest", "repository", "url"):
            assert isinstance(t[key], str), key
        assert isinstance(t["size"], int) and t["length"] == t["size"]
        assert isinstance(t.get("tag", ""), str)
        for key in ("id", "addr", "host", "method", "useragent"):
            assert isinstance(e["request"][key], str), key
        assert isinstance(e["actor"]["name"], str)
        assert isinstance(e["source"]["addr"], str) and isinstance(e["source"]["instanceID"], str)
    events: list[dict[str, Any]] = envelope["events"]
    return events


async def test_three_formats(tmp_path: Path) -> None:
    with Receiver() as rx:
        hooks = [
            hook("dist", rx.url + "/dist"),
            hook("ce", rx.url + "/ce", format="cloudevents"),
            hook("native", rx.url + "/native", format="dockyard"),
        ]
        async with registry(tmp_path, hooks) as (svc, client):
            image = await push_image(client, "fmt/app", "v1")
            logged = {e.id: e for e in events(svc)}
            for path in ("/dist", "/ce", "/native"):
                # Every event once, in log order, one event per request.
                assert await rx.wait_for_ids(set(logged), path) == sorted(logged)
    manifest_event = next(e for e in logged.values() if e.digest == image.digest)

    for d in rx.accepted("/dist"):
        (e,) = distribution_consumer(d)
        assert e["id"] == d.headers["x-dockyard-event-id"]
    (d,) = [d for d in rx.accepted("/dist") if d.event_id == manifest_event.id]
    (e,) = distribution_consumer(d)
    assert e["action"] == "push"
    assert e["target"] == {
        "mediaType": OCI_MANIFEST,
        "digest": image.digest,
        "size": len(image.payload),
        "length": len(image.payload),
        "repository": "fmt/app",
        "url": f"{PUBLIC}/v2/fmt/app/manifests/{image.digest}",
        "tag": "v1",
    }
    request = manifest_event.body["request"]
    assert e["request"] == {
        "id": request["id"],
        "addr": "127.0.0.1",
        "host": "registry.example.com",
        "method": "PUT",
        "useragent": request["useragent"],
    }
    assert e["request"]["id"] and e["request"]["useragent"].startswith("python-httpx/")
    assert e["actor"] == {"name": ""}
    assert e["source"] == {"addr": "registry.example.com", "instanceID": "test"}
    blob_event = next(e for e in logged.values() if e.digest != image.digest)
    (d,) = [d for d in rx.accepted("/dist") if d.event_id == blob_event.id]
    (e,) = distribution_consumer(d)
    assert e["target"]["url"] == f"{PUBLIC}/v2/fmt/app/blobs/{blob_event.digest}"

    (d,) = [d for d in rx.accepted("/ce") if d.event_id == manifest_event.id]
    assert d.headers["content-type"] == "application/cloudevents+json"
    ce = d.json()
    assert ce["specversion"] == "1.0"
    assert ce["id"] == str(manifest_event.id)
    assert ce["source"] == "dockyard/test"
    assert ce["type"] == "io.dockyard.push"
    assert ce["subject"] == f"fmt/app@{image.digest}"
    assert ce["datacontenttype"] == "application/json"
    check_timestamp(ce["time"])
    assert ce["data"] == native(manifest_event)

    for d in rx.accepted("/native"):
        assert d.headers["content-type"] == "application/json"
        assert d.json() == native(logged[d.event_id])
        assert d.headers["x-dockyard-webhook"] == "native"
        assert d.headers["user-agent"].startswith("dockyard/")


async def test_request_id_reaches_every_format(tmp_path: Path) -> None:
    """The client's X-Request-Id is in each delivery the request caused: in the body of
    every format and as the delivery's own X-Request-Id header."""
    with Receiver() as rx:
        hooks = [
            hook("dist", rx.url + "/dist"),
            hook("ce", rx.url + "/ce", format="cloudevents"),
            hook("native", rx.url + "/native", format="dockyard"),
        ]
        async with registry(tmp_path, hooks) as (svc, client):
            client.headers["X-Request-Id"] = "trace-7f3a"
            image = await push_image(client, "rid/app", "v1")
            logged = events(svc)
            for path in ("/dist", "/ce", "/native"):
                await rx.wait_for_ids({e.id for e in logged}, path)
    (event,) = [e for e in logged if e.digest == image.digest]
    assert event.body["request"]["id"] == "trace-7f3a"
    for path in ("/dist", "/ce", "/native"):
        (d,) = [d for d in rx.accepted(path) if d.event_id == event.id]
        if path == "/dist":
            request = distribution_consumer(d)[0]["request"]
        else:
            request = (d.json()["data"] if path == "/ce" else d.json())["request"]
        assert request["id"] == "trace-7f3a", path
        assert d.headers["x-request-id"] == "trace-7f3a", path


def verify(secret: bytes, body: bytes, header: str) -> bool:
    """How a receiver checks the signature (docs/webhooks.md shows the same)."""
    expected = "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, header)


async def test_signature_and_headers(tmp_path: Path) -> None:
    with Receiver() as rx:
        hooks = [
            hook("signed", rx.url + "/signed", secret="s3cret", headers={"Authorization": "T"}),
            hook("plain", rx.url + "/plain", format="cloudevents"),
        ]
        async with registry(tmp_path, hooks) as (svc, client):
            await push_blob(client, "sig/app", random_blob(100))
            ids = {e.id for e in events(svc)}
            await rx.wait_for_ids(ids, "/signed")
            await rx.wait_for_ids(ids, "/plain")
    (signed,) = rx.accepted("/signed")
    header = signed.headers["x-dockyard-signature"]
    assert verify(b"s3cret", signed.body, header)
    assert header == sign("s3cret", signed.body)
    assert not verify(b"other", signed.body, header)
    assert not verify(b"s3cret", signed.body.replace(b"sig/app", b"sig/apq"), header)
    assert signed.headers["authorization"] == "T"
    (plain,) = rx.accepted("/plain")
    assert "x-dockyard-signature" not in plain.headers and "authorization" not in plain.headers


async def test_filters(tmp_path: Path) -> None:
    with Receiver() as rx:
        hooks = [
            hook(
                "filtered",
                rx.url + "/filtered",
                repositories=["team/*", "*/base"],
                actions=["push"],
                media_types=[OCI_MANIFEST, "text/*"],
            ),
            hook("pulls", rx.url + "/pulls", actions=["pull"], format="dockyard"),
        ]
        async with registry(tmp_path, hooks) as (svc, client):
            team = await push_image(client, "team/app", "v1")
            base = await push_image(client, "lib/base", "v1")
            await push_image(client, "other/app", "v1")
            assert (await client.get(f"/v2/team/app/manifests/{team.digest}")).status_code == 200
            end = (await wait_for_events(svc, 0, 13))[-1].id
            # Unmatched events move the cursor too.
            await wait_until(lambda: cursor_of(svc, "filtered") == end)
            await wait_until(lambda: cursor_of(svc, "pulls") == end)
            logged = {e.id: e for e in events(svc)}
    got = [logged[i] for i in rx.accepted_ids("/filtered")]
    # Image manifests of team/* and */base only: no layers, configs, pulls, other/app.
    assert [(e.repository, e.digest) for e in got] == [
        ("team/app", team.digest),
        ("lib/base", base.digest),
    ]
    pulls = [logged[i] for i in rx.accepted_ids("/pulls")]
    assert [(e.action, e.digest) for e in pulls] == [("pull", team.digest)]


# -- retries, failures, redelivery


async def test_retries_after_timeout_and_500_until_accepted(tmp_path: Path) -> None:
    answers = iter(["hang", 500, 503])

    def respond(d: Delivery) -> int:
        answer = next(answers, 200)
        if answer == "hang":
            threading.Event().wait(1.0)  # longer than the endpoint's timeout
            return 504
        assert isinstance(answer, int)
        return answer

    with Receiver() as rx:
        rx.respond = respond
        hooks = [hook("flaky", rx.url + "/", timeout=0.3, max_attempts=5)]
        async with registry(tmp_path, hooks) as (svc, client):
            await push_blob(client, "retry/a", random_blob(10))
            await push_blob(client, "retry/b", random_blob(10))
            ids = [e.id for e in events(svc)]
            assert await rx.wait_for_ids(set(ids)) == ids  # in order, each accepted once
            assert svc.webhooks is not None
            assert svc.webhooks.statistics()["flaky"].failed_attempts == 3
            assert svc.meta.webhook_failures() == []
    # The first event was tried four times: the hang (answered after the timeout, too
    # late to count), 500, 503, 200.
    assert [d.event_id for d in rx.deliveries()] == [ids[0]] * 4 + [ids[1]]


async def test_refused_connections_then_recovery(tmp_path: Path) -> None:
    rx = Receiver()  # not listening yet: connections are refused
    hooks = [hook("down", rx.url + "/", max_attempts=1000)]
    async with registry(tmp_path, hooks) as (svc, client):
        await push_blob(client, "refused/a", random_blob(10))
        assert svc.webhooks is not None
        stats = svc.webhooks.statistics
        await wait_until(lambda: stats()["down"].failed_attempts >= 3)
        with rx:
            await rx.wait_for_ids({e.id for e in events(svc)})


async def test_failing_endpoint_does_not_delay_others_then_redelivery_by_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    gate = threading.Event()

    def hold(d: Delivery) -> int:
        gate.wait(30)
        return 500

    with Receiver() as bad, Receiver() as good:
        bad.respond = hold  # holds the first request until the gate opens
        hooks = [
            hook("bad", bad.url + "/", timeout=30.0, max_attempts=2),
            hook("good", good.url + "/"),
        ]
        conf = write_config(tmp_path, hooks)
        try:
            async with registry(tmp_path, hooks) as (svc, client):
                for i in range(3):
                    await push_blob(client, f"iso/r{i}", random_blob(10))
                ids = [e.id for e in events(svc)]
                # The healthy endpoint has everything while the other is stuck on one.
                assert await good.wait_for_ids(set(ids)) == ids
                assert [d.event_id for d in bad.deliveries()] == [ids[0]]

                # Now the bad one answers 500: each event fails twice and is recorded.
                bad.respond = lambda d: 500
                gate.set()
                await wait_until(lambda: len(svc.meta.webhook_failures("bad")) == 3)
                assert cursor_of(svc, "bad") == ids[-1]  # it moved on

                code, out, _ = run_cli(monkeypatch, capsys, conf, "failed", "--json")
                assert code == 0
                failed = json.loads(out)["failed"]
                assert [(f["endpoint"], f["event_id"]) for f in failed] == [("bad", i) for i in ids]
                assert {f["attempts"] for f in failed} == {2}
                assert failed[1]["last_error"] == "HTTP 500: receiver says no"
                assert failed[1]["repository"] == "iso/r1" and failed[1]["action"] == "push"
                code, out, _ = run_cli(monkeypatch, capsys, conf, "list", "--json")
                endpoints = {e["name"]: e for e in json.loads(out)["endpoints"]}
                assert endpoints["bad"]["failed"] == 3 and endpoints["good"]["failed"] == 0
                assert endpoints["bad"]["lease"].startswith("test/")
                assert endpoints["good"]["cursor"] == ids[-1]

                # The endpoint recovers; the operator redelivers one event, then the rest.
                bad.respond = lambda d: 200
                code, out, _ = run_cli(
                    monkeypatch, capsys, conf, "redeliver", "--endpoint", "bad", "--event",
                    str(ids[1]),
                )  # fmt: skip
                assert code == 0 and "marked 1 failed event" in out
                await bad.wait_for_ids({ids[1]})
                await wait_until(lambda: len(svc.meta.webhook_failures("bad")) == 2)
                assert bad.accepted_ids() == [ids[1]]
                code, out, _ = run_cli(
                    monkeypatch, capsys, conf, "redeliver", "--endpoint", "bad", "--all"
                )
                assert code == 0 and "marked 2 failed events" in out
                await bad.wait_for_ids(set(ids))
                await wait_until(lambda: svc.meta.webhook_failures() == [])
                code, out, _ = run_cli(monkeypatch, capsys, conf, "failed")
                assert out.strip() == "no failed deliveries"
                # Redelivering what did not fail, or to an unknown endpoint, is an error.
                code, _, err = run_cli(
                    monkeypatch, capsys, conf, "redeliver", "--endpoint", "bad", "--event", "1"
                )
                assert code == 1 and "not a failed delivery" in err
                code, _, err = run_cli(
                    monkeypatch, capsys, conf, "redeliver", "--endpoint", "nope", "--all"
                )
                assert code == 1 and "'nope'" in err
        finally:
            gate.set()
    assert good.accepted_ids() == ids  # nothing twice to the healthy endpoint


# -- cursors and leases


async def test_new_endpoint_starts_at_the_end_and_cursor_survives_restart(
    tmp_path: Path,
) -> None:
    with Receiver() as rx:
        async with registry(tmp_path, []) as (svc, client):
            await push_blob(client, "cur/before", random_blob(10))
        hooks = [hook("late", rx.url + "/")]
        async with registry(tmp_path, hooks) as (svc, client):
            await push_blob(client, "cur/first", random_blob(10))
            first = events(svc)[-1].id
            await rx.wait_for_ids({first})
            await wait_until(lambda: cursor_of(svc, "late") == first)
        async with registry(tmp_path, hooks) as (svc, client):
            await push_blob(client, "cur/second", random_blob(10))
            second = events(svc)[-1].id
            await rx.wait_for_ids({second})
            await wait_until(lambda: cursor_of(svc, "late") == second)
    # Not the event from before the endpoint existed; nothing twice across the restart.
    assert rx.accepted_ids() == [first, second]


async def test_one_deliverer_per_endpoint_and_handover(tmp_path: Path) -> None:
    """Two registries (instances a and b) on one database: each event reaches the
    endpoint once; when the lease holder stops, the other takes over at once."""
    with Receiver() as rx:
        hooks = [hook("shared", rx.url + "/")]
        running: dict[str, tuple[Services, httpx.AsyncClient]] = {}
        stops = {"a": anyio.Event(), "b": anyio.Event()}

        async def serve(instance: str, task_status: TaskStatus[None]) -> None:
            async with registry(tmp_path, hooks, instance) as (svc, client):
                running[instance] = (svc, client)
                task_status.started()
                await stops[instance].wait()
            del running[instance]

        async with anyio.create_task_group() as nursery:
            await nursery.start(serve, "a")
            await nursery.start(serve, "b")
            for i in range(6):
                await push_blob(running["ab"[i % 2]][1], f"lease/r{i}", random_blob(10))
            svc = running["a"][0]
            ids = [e.id for e in events(svc)]
            await rx.wait_for_ids(set(ids))
            (holder,) = [c.lease for c in svc.meta.webhook_cursors()]
            assert holder is not None
            stopping, survivor = ("a", "b") if holder.startswith("a/") else ("b", "a")
            assert holder.startswith(f"{stopping}/")
            stops[stopping].set()
            await wait_until(lambda: stopping not in running)
            svc, client = running[survivor]
            await push_blob(client, "lease/after", random_blob(10))
            after = events(svc)[-1].id
            # IDLE_CHECK and a little: the stopped holder released its lease (30 s).
            await rx.wait_for_ids({after}, timeout=3)
            lease = svc.meta.webhook_cursors()[0].lease
            assert lease is not None and lease.startswith(f"{survivor}/")
            stops[survivor].set()
    assert sorted(rx.accepted_ids()) == [*ids, after]  # each exactly once


async def test_expired_lease_is_taken_over(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, [hook("x", "http://127.0.0.1:9/")])
    meta = SQLiteMeta(settings.database_path)
    meta.migrate()
    meta.webhook_init(["x"])
    # A process that died holding the lease, with 1.5 s left on it.
    started = anyio.current_time()
    assert meta.webhook_acquire("x", "gone/1", 1.5) is not None
    meta.close()
    with Receiver() as rx:
        hooks = [hook("x", rx.url + "/")]
        async with registry(tmp_path, hooks) as (svc, client):
            await push_blob(client, "expired/a", random_blob(10))
            ids = {e.id for e in events(svc)}
            await rx.wait_for_ids(ids, timeout=5)
            # Not before the lease expired, and soon after (IDLE_CHECK).
            assert 1.4 <= anyio.current_time() - started < 4
            assert [d.event_id for d in rx.deliveries()] == sorted(ids)
            lease = svc.meta.webhook_cursors()[0].lease
            assert lease is not None and lease.startswith("test/")
