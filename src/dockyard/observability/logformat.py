"""How a log record becomes a line: ECS JSON (``[log] format = "json"``) or text.

Records reach the formatters in the writer thread (observability/logs.py), after
``detach`` ran on the thread that logged: the message is rendered and an exception is
turned into ECS's ``error.*`` fields there, so nothing the formatter reads can change
while the record waits in the queue. A request's access line is made in the writer thread
too, straight from its RequestRecord (``format_request``): no LogRecord at all.
"""

from __future__ import annotations

import functools
import json
import logging
import time
import traceback
from typing import Any

from dockyard.observability.record import RequestRecord

# The ECS fields an exception becomes (set by detach, read by both formatters).
ERROR_TYPE = "error.type"
ERROR_MESSAGE = "error.message"
STACK_TRACE = "error.stack_trace"


def detach(record: logging.LogRecord) -> None:
    """Make ``record`` safe to format later on another thread: render its message now (its
    arguments may change) and its exception as text (with the "Traceback" header and
    chained causes)."""
    record.msg = record.getMessage()
    record.args = None
    if record.exc_info:
        kind, error, tb = record.exc_info
        if kind is not None:
            record.__dict__[ERROR_TYPE] = kind.__name__
            record.__dict__[ERROR_MESSAGE] = str(error)
            record.__dict__[STACK_TRACE] = "".join(traceback.format_exception(kind, error, tb))
    record.exc_info = None
    record.exc_text = None


ECS_VERSION = "8.11.0"

ACCESS_LOGGER = "dockyard.access"
PATH_LIMIT = 512  # of a logged path: a hostile one must not grow the log without bound


def request_message(r: RequestRecord) -> str:
    """A request in one readable line: the access line's ``message``. No header value is
    logged (Authorization, cookies), nor the query string (it may carry anything)."""
    return (
        f'{r.client} {r.user or "-"} "{r.method} {r.path[:PATH_LIMIT]}" {r.status} '
        f"{r.bytes_in} {r.bytes_out} {r.duration * 1000:.1f}ms id={r.request_id}"
    )


_last_second: tuple[int, str] = (-1, "")  # replaced whole, so threads see a matching pair


def _utc(created: float, msecs: float) -> str:
    global _last_second
    second, text = _last_second
    if second != int(created):  # one strftime a second, not one a line
        second = int(created)
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _last_second = (second, text)
    return f"{text}.{int(msecs):03d}Z"


class JsonFormatter(logging.Formatter):
    """One ECS JSON object per line: ``@timestamp``, ``log.level`` and ``message`` first (as
    Elastic's ecs-logging writes them), then ``ecs.version``, ``log.logger``,
    ``log.origin``, ``process.pid`` and every extra field whose name is an ECS dotted name
    (``extra={"http.request.id": ...}``), nested as ECS documents them; None is left out.

    Written here rather than taken from Elastic's ecs-logging (tried first): it rebuilds
    its field table, flattens, de-dots and merges dictionaries and sorts the keys for every
    record, 2.5 times the time of this (110 against 45 us an access line, measured one
    after the other on the shared 2-core test machine): a fifth of a manifest HEAD's CPU.
    """

    def format(self, record: logging.LogRecord) -> str:
        log: dict[str, Any] = {"logger": record.name}
        if record.lineno:
            log["origin"] = {
                "file": {"name": record.filename, "line": record.lineno},
                "function": record.funcName,
            }
        doc: dict[str, Any] = {
            "@timestamp": _utc(record.created, record.msecs),
            "log.level": record.levelname.lower(),
            "message": record.getMessage(),
            "ecs.version": ECS_VERSION,
            "log": log,
            "process": {"pid": record.process},
        }
        for name, value in record.__dict__.items():
            if "." in name and value is not None:
                _nest(doc, name, value)
        if record.stack_info:
            _nest(doc, STACK_TRACE, record.stack_info)
        return _dumps(doc)

    def format_request(self, r: RequestRecord, pid: int) -> str:
        """The access line of ``r`` with the ECS field names (docs/monitoring.md, "Logs").

        Written out directly, each string escaped by the json module's C quoting: this runs
        once per request, and a nested dict through the encoder cost three times as much
        (tests/test_logs.py checks the line parses to the documented document)."""
        ended = r.started + r.duration
        stamp = _utc(ended, (ended - int(ended)) * 1000)
        user = "" if r.user is None else f',"user":{{"name":{_q(r.user)}}}'
        own = f'"route":{_q(r.route)}'
        if r.repository is not None:
            own += f',"repository":{_q(r.repository)}'
        if r.reference is not None:
            own += f',"reference":{_q(r.reference)}'
        if r.error_code is not None:
            own += f',"error_code":{_q(r.error_code)}'
        return (
            f'{{"@timestamp":"{stamp}","log.level":"info","message":{_q(request_message(r))},'
            f'"ecs.version":"{ECS_VERSION}","log":{{"logger":"{ACCESS_LOGGER}"}},'
            f'"process":{{"pid":{pid}}},"http":{{"request":{{"id":{_q(r.request_id)},'
            f'"method":{_q(r.method)},"body":{{"bytes":{int(r.bytes_in)}}}}},'
            f'"response":{{"status_code":{int(r.status)},"body":{{"bytes":{int(r.bytes_out)}}}}}}},'
            f'"url":{{"path":{_q(r.path[:PATH_LIMIT])}}},'
            f'"event":{{"duration":{int(r.duration * 1e9)}}},'  # ECS: nanoseconds
            f'"client":{{"ip":{_q(r.client)}}},"user_agent":{{"original":{_q(r.user_agent)}}}'
            f'{user},"dockyard":{{{own}}}}}'
        )


# ``text`` as a JSON string, quoted and escaped (control characters too), in C.
_q = json.encoder.encode_basestring


# Made once: json.dumps with any option builds a new encoder on every call (a third of an
# access line's cost).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def _dumps(doc: dict[str, Any]) -> str:
    return _ENCODER.encode(doc)


@functools.lru_cache(maxsize=1024)
def _path(name: str) -> tuple[tuple[str, ...], str]:
    *parents, leaf = name.split(".")
    return tuple(parents), leaf


def _nest(doc: dict[str, Any], name: str, value: object) -> None:
    parents, leaf = _path(name)
    for part in parents:
        child = doc.get(part)
        if not isinstance(child, dict):
            child = doc[part] = {}
        doc = child
    doc[leaf] = value


# Control characters (a newline in a hostile path or header) would start a fake line.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


class TextFormatter(logging.Formatter):
    """``2026-01-02T03:04:05.678Z INFO dockyard.access [pid] message``, then the stack
    trace of an error on the lines below; for reading on a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return _utc(record.created, record.msecs)

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, Any] = record.__dict__
        stack = fields.get(STACK_TRACE)
        return f"{line}\n{stack.rstrip()}" if stack else line

    def format_request(self, r: RequestRecord, pid: int) -> str:
        ended = r.started + r.duration
        when = _utc(ended, (ended - int(ended)) * 1000)
        message = request_message(r).translate(_ESCAPES)
        return f"{when} INFO {ACCESS_LOGGER} [{pid}] {message}"


RequestFormatter = JsonFormatter | TextFormatter


def formatter(name: str) -> RequestFormatter:
    """The formatter of ``[log] format``."""
    return JsonFormatter() if name == "json" else TextFormatter()
