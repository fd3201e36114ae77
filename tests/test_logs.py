"""The log pipeline in process: request ids, the ECS JSON and text formats, the writer
thread (nothing lost at stop, nothing blocking when it falls behind) and the log file's
reopening after a move. tests/e2e/test_request_log.py checks a real server's log."""

from __future__ import annotations

import atexit
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dockyard.config import ConfigError, load
from dockyard.observability import logs
from dockyard.observability.logformat import JsonFormatter, TextFormatter, detach
from dockyard.observability.logs import LogPipeline, configure_logging
from dockyard.observability.record import RequestRecord, request_id
from dockyard.services import Services


def test_request_id_kept_when_printable_ascii_and_short() -> None:
    assert request_id("trace-7f3a") == "trace-7f3a"
    assert request_id("a b=c;d") == "a b=c;d"  # printable ASCII is kept as sent
    assert request_id("x" * 64) == "x" * 64


@pytest.mark.parametrize(
    "hostile",
    ["", "x" * 65, "id\nFAKE log line", "id\r\n", "tab\there", "caf\u00e9", "nul\0", "\x1b[31m"],
)
def test_request_id_replaced_when_hostile(hostile: str) -> None:
    made = request_id(hostile)
    assert made != hostile and len(made) == 32 and made.isalnum()


def test_made_ids_differ_in_a_forked_child() -> None:
    # The generator's state is copied by fork: without a reseed the child would make the
    # parent's next id, and two processes would give the same ids.
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write_end, request_id("").encode())
        finally:
            os._exit(0)
    os.close(write_end)
    child = os.read(read_end, 64).decode()
    os.close(read_end)
    os.waitpid(pid, 0)
    mine = {request_id("") for _ in range(100)}
    assert len(child) == 32 and child not in mine and len(mine) == 100


async def test_response_carries_the_sanitised_id(
    services: Services, client: httpx.AsyncClient
) -> None:
    r = await client.get("/v2/", headers={"x-request-id": "mine-1"})
    assert r.headers["x-request-id"] == "mine-1"
    r = await client.get("/v2/", headers={"x-request-id": "x" * 100})
    assert r.headers["x-request-id"] != "x" * 100 and len(r.headers["x-request-id"]) == 32


def record(
    msg: str, *args: object, exc: bool = False, extra: dict[str, object] | None = None
) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            try:
                raise KeyError("inner")
            except KeyError as e:
                raise ValueError("outer") from e
        except ValueError:
            exc_info = sys.exc_info()
    r = logging.LogRecord("dockyard.test", logging.ERROR, __file__, 1, msg, args, exc_info)
    r.__dict__.update(extra or {})
    detach(r)
    return r


def test_json_line_has_ecs_fields_nested() -> None:
    line = JsonFormatter().format(
        record("pushed %s", "app", extra={"http.request.id": "r1", "dockyard.repository": "app"})
    )
    doc = json.loads(line)
    assert doc["message"] == "pushed app"
    assert doc["log.level"] == "error"
    assert doc["log"]["logger"] == "dockyard.test"
    assert doc["process"]["pid"] == os.getpid()
    assert doc["http"]["request"]["id"] == "r1"
    assert doc["dockyard"]["repository"] == "app"
    assert doc["@timestamp"].endswith("Z") and "T" in doc["@timestamp"]
    assert "error" not in doc


def test_json_error_fields_hold_the_whole_traceback() -> None:
    doc = json.loads(JsonFormatter().format(record("failed", exc=True)))
    error = doc["error"]
    assert (error["type"], error["message"]) == ("ValueError", "outer")
    trace = error["stack_trace"]
    assert trace.startswith("Traceback (most recent call last):")
    assert "KeyError: 'inner'" in trace and "ValueError: outer" in trace  # the cause too
    assert "\n" not in JsonFormatter().format(record("failed", exc=True))  # one line


def test_text_line_escapes_control_characters_and_appends_the_trace() -> None:
    text = TextFormatter()
    line = text.format(record('GET "%s"', "/v2/x\nFAKE 200"))
    assert "\n" not in line and "/v2/x\\x0aFAKE 200" in line
    assert " ERROR dockyard.test " in line
    with_trace = text.format(record("failed", exc=True)).splitlines()
    assert with_trace[0].endswith("failed")
    assert with_trace[1] == "Traceback (most recent call last):"
    assert with_trace[-1] == "ValueError: outer"


def test_log_format_and_file_settings(tmp_path: Path) -> None:
    s = load(None, environ={"DOCKYARD_LOG_FORMAT": "text", "DOCKYARD_LOG_FILE": "x.log"})
    assert (s.log.format, s.log.file) == ("text", "x.log")
    assert (load(None, environ={}).log.format, load(None, environ={}).log.access) == (
        "json",
        True,
    )
    with pytest.raises(ConfigError, match=r"log\.format"):
        load(None, environ={"DOCKYARD_LOG_FORMAT": "xml"})
    with pytest.raises(ConfigError, match=r"log\.file"):
        load(None, environ={"DOCKYARD_LOG_FILE": str(tmp_path) + "/"})


@pytest.fixture
def configured() -> Iterator[list[LogPipeline]]:
    """Lets a test call configure_logging; puts the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    hooks = threading.excepthook, sys.excepthook
    pipelines: list[LogPipeline] = []
    yield pipelines
    threading.excepthook, sys.excepthook = hooks
    for pipeline in pipelines:
        root.removeHandler(pipeline.enqueue)
        pipeline.stop()
        atexit.unregister(pipeline.stop)
    logs._current = None
    logging.getLogger("dockyard.access").setLevel(logging.NOTSET)
    logging.captureWarnings(False)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def request(**changes: object) -> RequestRecord:
    r = RequestRecord(
        "rid-1",
        "PUT",
        "/v2/team/app/manifests/v1",
        "10.0.0.7",
        "skopeo/1.9",
        route="manifests",
        repository="team/app",
        reference="v1",
        user="ci",
        status=201,
        bytes_in=512,
        started=1_700_000_000.25,
        duration=0.0125,
    )
    for name, value in changes.items():
        setattr(r, name, value)
    return r


def test_access_line_from_a_request_record_has_the_ecs_fields() -> None:
    doc = json.loads(JsonFormatter().format_request(request(), 4242))
    assert doc["@timestamp"] == "2023-11-14T22:13:20.262Z"  # when the answer ended
    assert (doc["log.level"], doc["log"]["logger"]) == ("info", "dockyard.access")
    assert doc["process"]["pid"] == 4242
    assert doc["message"] == '10.0.0.7 ci "PUT /v2/team/app/manifests/v1" 201 512 0 12.5ms id=rid-1'
    assert doc["http"] == {
        "request": {"id": "rid-1", "method": "PUT", "body": {"bytes": 512}},
        "response": {"status_code": 201, "body": {"bytes": 0}},
    }
    assert doc["url"] == {"path": "/v2/team/app/manifests/v1"}
    assert doc["event"]["duration"] == 12_500_000  # nanoseconds
    assert (doc["client"]["ip"], doc["user"]["name"]) == ("10.0.0.7", "ci")
    assert doc["user_agent"]["original"] == "skopeo/1.9"
    assert doc["dockyard"] == {"route": "manifests", "repository": "team/app", "reference": "v1"}
    anonymous = json.loads(
        JsonFormatter().format_request(
            request(user=None, repository=None, reference=None, error_code="UNAUTHORIZED"), 1
        )
    )
    assert "user" not in anonymous and " - " in anonymous["message"]
    assert anonymous["dockyard"] == {"route": "manifests", "error_code": "UNAUTHORIZED"}


def test_access_line_of_a_hostile_path_stays_one_short_line() -> None:
    hostile = request(path="/v2/x\nFAKE 200 " + "a" * 5000, user_agent='ua"}\\\nFAKE caf\u00e9')
    line = TextFormatter().format_request(hostile, 7)
    assert "\n" not in line and "/v2/x\\x0aFAKE 200" in line
    assert line.startswith("2023-11-14T22:13:20.262Z INFO dockyard.access [7] 10.0.0.7 ci")
    doc = json.loads(JsonFormatter().format_request(hostile, 7))
    assert len(doc["url"]["path"]) == 512 and doc["url"]["path"].startswith("/v2/x\nFAKE")
    assert "\n" not in JsonFormatter().format_request(hostile, 7)
    assert doc["user_agent"]["original"] == 'ua"}\\\nFAKE caf\u00e9'  # quotes, escapes, UTF-8


def test_queued_requests_are_written_by_the_writer_in_order(
    tmp_path: Path, configured: list[LogPipeline]
) -> None:
    path = tmp_path / "dockyard.log"
    configured.append(configure_logging(load(None, environ=env_for(path))))
    for i in range(300):
        logs.log_request(request(request_id=f"r{i}"))
    logging.getLogger("dockyard.x").warning("after the requests")
    configured[0].stop()
    docs = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["http"]["request"]["id"] for d in docs[:300]] == [f"r{i}" for i in range(300)]
    assert docs[300]["message"] == "after the requests" and len(docs) == 301


def test_no_access_line_when_the_access_log_is_off(
    tmp_path: Path, configured: list[LogPipeline]
) -> None:
    path = tmp_path / "dockyard.log"
    env = {**env_for(path), "DOCKYARD_LOG_ACCESS": "false"}
    configured.append(configure_logging(load(None, environ=env)))
    logs.log_request(request())
    logging.getLogger("dockyard.x").warning("only this")
    configured[0].stop()
    assert [json.loads(x)["message"] for x in path.read_text().splitlines()] == ["only this"]


def test_every_line_written_by_stop_and_access_log_despite_level(
    tmp_path: Path, configured: list[LogPipeline]
) -> None:
    path = tmp_path / "dockyard.log"
    configured.append(configure_logging(load(None, environ=env_for(path))))
    logging.getLogger("dockyard.x").info("below the level")  # log.level = warning
    for i in range(2000):
        logging.getLogger("dockyard.access").info("request %d", i)
    logging.getLogger("hypercorn.error").warning("from hypercorn")
    configured[0].stop()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [d["message"] for d in lines[:2000]] == [f"request {i}" for i in range(2000)]
    assert lines[2000]["log"]["logger"] == "hypercorn.error" and len(lines) == 2001


def env_for(path: Path, fmt: str = "json") -> dict[str, str]:
    return {
        "DOCKYARD_LOG_FILE": str(path),
        "DOCKYARD_LOG_FORMAT": fmt,
        "DOCKYARD_LOG_LEVEL": "warning",
    }


def test_moved_file_is_reopened(tmp_path: Path, configured: list[LogPipeline]) -> None:
    path = tmp_path / "dockyard.log"
    configured.append(configure_logging(load(None, environ=env_for(path, "text"))))
    log = logging.getLogger("dockyard.x")
    log.warning("before")
    wait_for(path, "before")
    path.rename(tmp_path / "dockyard.log.1")  # logrotate's move
    log.warning("after")
    wait_for(path, "after")
    assert "after" not in (tmp_path / "dockyard.log.1").read_text()
    assert "before" in (tmp_path / "dockyard.log.1").read_text()


def wait_for(path: Path, text: str) -> None:
    for _ in range(200):
        if path.exists() and text in path.read_text():
            return
        time.sleep(0.01)  # the writer thread writes it
    raise AssertionError(f"{text!r} never reached {path}")


def test_full_queue_drops_and_says_so(
    tmp_path: Path, configured: list[LogPipeline], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logs, "QUEUE_SIZE", 5)
    path = tmp_path / "dockyard.log"
    pipeline = configure_logging(load(None, environ=env_for(path)))
    configured.append(pipeline)
    pipeline.writer.stop()  # a writer stuck on a slow disk: nothing leaves the queue
    log = logging.getLogger("dockyard.x")
    for i in range(8):
        log.warning("line %d", i)  # returns at once although the queue is full
    assert pipeline.enqueue.dropped == 3
    pipeline.start()  # the disk is back
    for _ in range(200):
        if pipeline.writer.queue.empty():  # type: ignore[attr-defined]
            break
        time.sleep(0.01)
    log.warning("later")
    pipeline.stop()
    messages = [json.loads(line)["message"] for line in path.read_text().splitlines()]
    # The note comes with the first line written after the drop.
    assert messages == [
        "3 log records were dropped: the log output was too slow",
        *[f"line {i}" for i in range(5)],
        "later",
    ]


def test_an_error_nothing_caught_is_logged_too(
    tmp_path: Path, configured: list[LogPipeline]
) -> None:
    path = tmp_path / "dockyard.log"
    configured.append(configure_logging(load(None, environ=env_for(path))))

    def fail() -> None:
        raise RuntimeError("lost in a thread")

    thread = threading.Thread(target=fail, name="worker-thread")
    thread.start()
    thread.join()
    configured[0].stop()
    (line,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert line["message"] == "unhandled error in thread worker-thread"
    assert line["error"]["type"] == "RuntimeError"
    assert line["error"]["message"] == "lost in a thread"
    assert "Traceback (most recent call last)" in line["error"]["stack_trace"]
