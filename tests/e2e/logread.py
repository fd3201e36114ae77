"""Reading a real server's JSON log (``[log] format = "json"``, the default): its lines,
its access lines, one ECS field by its dotted name."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.serverproc import DockyardServer


def log_lines(server: DockyardServer) -> list[dict[str, Any]]:
    """The JSON lines of the server's output (tools it runs may print other lines)."""
    text = server.log_path.read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def field(doc: dict[str, Any], name: str) -> Any:
    """``field(doc, "http.request.id")``: the nested ECS field, None when absent (ECS
    writes a few, such as ``log.level``, as one dotted key at the top)."""
    if name in doc:
        return doc[name]
    value: Any = doc
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def access_log(server: DockyardServer) -> list[dict[str, Any]]:
    return [d for d in log_lines(server) if field(d, "log.logger") == "dockyard.access"]


def logged_request(server: DockyardServer, request_id: str) -> dict[str, Any]:
    """The access line of ``request_id``, once the server has written it."""
    for _ in range(100):
        found = [e for e in access_log(server) if field(e, "http.request.id") == request_id]
        if found:
            return found[0]
        time.sleep(0.05)  # written by the server's log thread, in another process
    raise AssertionError(f"request {request_id} is not in the access log")
