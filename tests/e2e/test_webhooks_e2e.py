"""Webhooks from real ``dockyard serve`` processes to a real HTTP receiver on loopback.

- A crash (SIGKILL of the whole server) while the receiver is down loses nothing: after
  the restart every event of the log reaches the receiver once it is back (at least once:
  duplicates are allowed, gaps are not).
- With ``--workers 2`` both processes run a deliverer, and the endpoint's lease makes
  exactly one of them deliver: every event arrives once per endpoint.
- Failed events are listed and redelivered with the ``dockyard events webhooks`` CLI
  while the server runs.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from tests.conftest import push_blob, random_blob
from tests.e2e.conftest import server_events
from tests.serverproc import DockyardServer
from tests.webhook_receiver import Receiver, hook, webhooks_toml

pytestmark = pytest.mark.e2e


def write_config(tmp_path: Path, hooks: list[dict[str, Any]]) -> Path:
    conf = tmp_path / "dockyard.toml"
    root = json.dumps(str(tmp_path / "data"))
    conf.write_text(
        f'[server]\ninstance = "e2e"\n[storage]\nroot = {root}\n' + webhooks_toml(hooks)
    )
    return conf


def no_tracebacks(server: DockyardServer) -> None:
    text = server.log_path.read_text(errors="replace")
    assert "Traceback" not in text, text[-8000:]


@pytest.fixture
def servers() -> Iterator[list[DockyardServer]]:
    """Servers a test started; stopped (and their logs checked) at the end."""
    started: list[DockyardServer] = []
    yield started
    for server in started:
        server.stop()
    for server in started:
        no_tracebacks(server)


async def webhooks_cli(conf: Path, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DOCKYARD_")}
    done = await trio.run_process(
        [sys.executable, "-m", "dockyard.cli", "events", "webhooks", *args, "--config", str(conf)],
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def wait_for_log(server: DockyardServer, text: str, timeout: float = 10.0) -> None:
    with trio.fail_after(timeout):
        while True:
            if text in server.log():
                return
            await trio.sleep(0.02)  # the log is written by another process


async def test_kill_while_receiver_is_down_loses_nothing(
    tmp_path: Path, servers: list[DockyardServer]
) -> None:
    rx = Receiver()  # down: connections are refused
    conf = write_config(tmp_path, [hook("rx", rx.url + "/", max_attempts=100000, backoff_max=0.2)])
    server = DockyardServer(tmp_path / "data", env={"DOCKYARD_CONFIG": str(conf)})
    servers.append(server)
    server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for i in range(5):
            await push_blob(client, f"crash/before{i}", random_blob(200))
    await wait_for_log(server, "webhook rx: event")  # it is retrying the first event
    server.kill()
    server.start()  # the receiver is still down
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        for i in range(3):
            await push_blob(client, f"crash/after{i}", random_blob(200))
    with rx:
        logged = [e.id for e in server_events(server)]
        assert len(logged) == 8
        delivered = await rx.wait_for_ids(set(logged), timeout=15)
        # In log order; an event may come twice (the one in flight at the crash).
        assert sorted(set(delivered)) == logged
        assert [i for n, i in enumerate(delivered) if i not in delivered[:n]] == logged
        code, out, err = await webhooks_cli(conf, "list", "--json")
        assert code == 0, err
        (endpoint,) = json.loads(out)["endpoints"]
        with trio.fail_after(5):
            while endpoint["cursor"] != logged[-1]:  # the last answer is being recorded
                await trio.sleep(0.05)
                (endpoint,) = json.loads((await webhooks_cli(conf, "list", "--json"))[1])[
                    "endpoints"
                ]
        assert endpoint["failed"] == 0 and endpoint["lease"].startswith("e2e/")


async def test_two_workers_deliver_each_event_once_per_endpoint(
    tmp_path: Path, servers: list[DockyardServer]
) -> None:
    with Receiver() as rx:
        conf = write_config(
            tmp_path,
            [hook("one", rx.url + "/one"), hook("two", rx.url + "/two", format="cloudevents")],
        )
        server = DockyardServer(tmp_path / "data", workers=2, env={"DOCKYARD_CONFIG": str(conf)})
        servers.append(server)
        server.start()

        async def push(i: int) -> None:
            # A client per push: new connections spread over both worker processes.
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                await push_blob(client, f"workers/r{i % 4}", random_blob(300 + i))

        async with trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(push, i)
        logged = [e.id for e in server_events(server)]
        assert len(logged) == 12
        for path in ("/one", "/two"):
            assert await rx.wait_for_ids(set(logged), path) == logged
        await trio.sleep(0.5)  # time enough for a second deliverer to send duplicates
        for path in ("/one", "/two"):
            assert [d.event_id for d in rx.deliveries(path)] == logged
        code, out, err = await webhooks_cli(conf, "list", "--json")
        assert code == 0, err
        endpoints = json.loads(out)["endpoints"]
        assert [e["name"] for e in endpoints] == ["one", "two"]
        for e in endpoints:
            assert (e["cursor"], e["log_end"], e["failed"]) == (logged[-1], logged[-1], 0)
            assert e["lease"].startswith("e2e/")


async def test_failed_events_listed_and_redelivered_by_the_cli(
    tmp_path: Path, servers: list[DockyardServer]
) -> None:
    rx = Receiver()  # down
    conf = write_config(tmp_path, [hook("hook", rx.url + "/", max_attempts=2)])
    server = DockyardServer(tmp_path / "data", env={"DOCKYARD_CONFIG": str(conf)})
    servers.append(server)
    server.start()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        await push_blob(client, "cli/a", random_blob(100))
        await push_blob(client, "cli/b", random_blob(100))
    logged = [e.id for e in server_events(server)]
    with trio.fail_after(10):
        while True:
            code, out, err = await webhooks_cli(conf, "failed", "--json")
            assert code == 0, err
            failed = json.loads(out)["failed"]
            if len(failed) == len(logged):
                break
            await trio.sleep(0.1)
    assert [f["event_id"] for f in failed] == logged
    assert all(f["attempts"] == 2 and "ConnectError" in f["last_error"] for f in failed)
    code, out, err = await webhooks_cli(conf, "list")
    assert code == 0 and "failed events:  2" in out, out + err
    code, out, err = await webhooks_cli(conf, "failed")
    assert f"hook event {logged[0]}: push cli/a" in out

    with rx:
        code, out, err = await webhooks_cli(conf, "redeliver", "--endpoint", "hook", "--all")
        assert code == 0 and "marked 2 failed events" in out, err
        assert await rx.wait_for_ids(set(logged)) == logged
        with trio.fail_after(5):
            while True:
                code, out, err = await webhooks_cli(conf, "failed", "--json")
                if json.loads(out)["failed"] == []:
                    break
                await trio.sleep(0.1)
