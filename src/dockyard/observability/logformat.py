"""How a log record becomes a line: ECS JSON (``[log] format = "json"``) or text.

Records reach the formatters in the writer thread (observability/logs.py), after
``detach`` ran on the thread that logged: the message is rendered and an exception is
turned into ECS's ``error.*`` fields there, so nothing the formatter reads can change
while the record waits in the queue.
"""

from __future__ import annotations

import logging
import time
import traceback
from typing import Any

from ecs_logging import StdlibFormatter

# The ECS fields an exception becomes (set by detach, read by both formatters).
ERROR_TYPE = "error.type"
ERROR_MESSAGE = "error.message"
STACK_TRACE = "error.stack_trace"


def detach(record: logging.LogRecord) -> None:
    """Make ``record`` safe to format later on another thread: render its message now (its
    arguments may change) and its exception as text (with the "Traceback" header and
    chained causes, which ``error.stack_trace`` of ecs-logging leaves out)."""
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


class JsonFormatter(StdlibFormatter):
    """One ECS JSON object per line (ecs-logging: Elastic's own formatter, so the field
    names and the timestamp format are the ones Filebeat, Elastic Agent and Logstash's
    ECS codecs expect). Extra fields given as ``extra={"http.request.method": ...}``
    come out nested, as ECS documents them."""

    def __init__(self) -> None:
        # log.original repeats message; the thread fields say nothing about a trio server.
        super().__init__(
            exclude_fields=["log.original", "process.thread", "process.name"],
            ensure_ascii=False,
        )


# Control characters (a newline in a hostile path or header) would start a fake line.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


class TextFormatter(logging.Formatter):
    """``2026-01-02T03:04:05.678Z INFO dockyard.access [pid] message``, then the stack
    trace of an error on the lines below; for reading on a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + (
            f".{int(record.msecs):03d}Z"
        )

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = record.message.translate(_ESCAPES)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields: dict[str, Any] = record.__dict__
        stack = fields.get(STACK_TRACE)
        return f"{line}\n{stack.rstrip()}" if stack else line


def formatter(name: str) -> logging.Formatter:
    """The formatter of ``[log] format``."""
    return JsonFormatter() if name == "json" else TextFormatter()
