"""A real HTTP server on loopback that records webhook deliveries, for the webhook tests.

It runs in a thread (``http.server``), so it serves the same whether the registry is
in-process or a ``dockyard serve`` child. ``stop()`` closes the listening socket: the
port then refuses connections, as a crashed receiver's would, and ``start()`` listens on
the same port again. Each connection carries one request (HTTP/1.0), so a stopped
receiver has no kept-alive connection left that could still answer.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import anyio

from tests.serverproc import free_port


@dataclass(frozen=True)
class Delivery:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> int:
        return int(self.headers["x-dockyard-event-id"])


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (timeout) leaves a broken pipe: expected here


class Receiver:
    """Records every POST; answers ``status`` (or what ``respond`` returns)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.status = 200
        self.respond: Callable[[Delivery], int] | None = None
        self._lock = threading.Lock()
        self._deliveries: list[Delivery] = []
        self._answers: list[int | None] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                delivery = Delivery(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body
                )
                status = receiver._record(delivery)
                answer = b"ok" if status < 300 else b"receiver says no"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def _record(self, delivery: Delivery) -> int:
        with self._lock:  # recorded on arrival, answered when respond() has decided
            index = len(self._deliveries)
            self._deliveries.append(delivery)
            self._answers.append(None)
        status = self.respond(delivery) if self.respond is not None else self.status
        with self._lock:
            self._answers[index] = status
        return status

    def start(self) -> Receiver:
        server = _Server(("127.0.0.1", self.port), self._handler())
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- what arrived

    def deliveries(self, path: str | None = None) -> list[Delivery]:
        with self._lock:
            found = list(self._deliveries)
        return [d for d in found if path is None or d.path == path]

    def accepted(self, path: str | None = None) -> list[Delivery]:
        """Deliveries answered 2xx."""
        with self._lock:
            pairs = list(zip(self._deliveries, self._answers, strict=True))
        return [
            d for d, s in pairs if s is not None and s < 300 and (path is None or d.path == path)
        ]

    def accepted_ids(self, path: str | None = None) -> list[int]:
        return [d.event_id for d in self.accepted(path)]

    async def wait_for_ids(
        self, ids: set[int], path: str | None = None, timeout: float = 10.0
    ) -> list[int]:
        """Wait until every event id in ``ids`` was accepted at ``path``."""
        with anyio.move_on_after(timeout):
            while True:
                if ids <= set(self.accepted_ids(path)):
                    break
                await anyio.sleep(0.01)  # deliveries arrive on the server's threads
        got = self.accepted_ids(path)
        missing = ids - set(got)
        assert not missing, f"not delivered to {path or 'the receiver'}: {sorted(missing)}"
        return got


# -- configuration of endpoints


def toml_value(v: Any) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items()) + " }"


def hook(name: str, url: str, **keys: Any) -> dict[str, Any]:
    """An endpoint that retries fast (tests wait for retries in real time)."""
    return {
        "name": name,
        "url": url,
        "timeout": 2.0,
        "backoff_initial": 0.05,
        "backoff_max": 0.1,
        **keys,
    }


def webhooks_toml(hooks: list[dict[str, Any]]) -> str:
    """``[[webhooks]]`` tables for ``hooks``."""
    lines: list[str] = []
    for h in hooks:
        lines.append("[[webhooks]]")
        lines += [f"{k} = {toml_value(v)}" for k, v in h.items()]
    return "\n".join(lines) + "\n"
