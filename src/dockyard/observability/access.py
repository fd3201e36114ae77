"""The access log: one line per request on the ``dockyard.access`` logger.

The fields carry ECS names (docs/monitoring.md, "Logs"), so a log stack files them
without a mapping; dockyard's own are under ``dockyard.*``. The message is the same
request in one readable line, for the text format. No header value is logged (the
Authorization header, cookies), nor the query string (it may carry anything).
"""

from __future__ import annotations

import logging
import os
import time

from dockyard.observability.record import RequestRecord

access_log = logging.getLogger("dockyard.access")

PATH_LIMIT = 512


def log_access(r: RequestRecord) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    path = r.path[:PATH_LIMIT]
    fields = {
        "http.request.id": r.request_id,
        "http.request.method": r.method,
        "url.path": path,
        "http.response.status_code": r.status,
        "http.request.body.bytes": r.bytes_in,
        "http.response.body.bytes": r.bytes_out,
        "event.duration": int(r.duration * 1e9),  # ECS: nanoseconds
        "client.ip": r.client,
        "user.name": r.user,
        "user_agent.original": r.user_agent,
        "dockyard.route": r.route,
        "dockyard.repository": r.repository,
        "dockyard.reference": r.reference,
        "dockyard.error_code": r.error_code,
    }
    access_log.handle(
        AccessRecord(
            '%s %s "%s %s" %d %d %d %.1fms id=%s',
            (
                r.client,
                r.user or "-",
                r.method,
                path,
                r.status,
                r.bytes_in,
                r.bytes_out,
                r.duration * 1000,
                r.request_id,
            ),
            fields,
        )
    )


class AccessRecord(logging.LogRecord):
    """A request's record, made with only what the formatters read. LogRecord's own
    constructor (source file, module name, thread, relative time, 14 extra fields checked
    one by one) was most of the access log's cost on the request's task."""

    def __init__(self, msg: str, args: tuple[object, ...], fields: dict[str, object]) -> None:
        # Deliberately not LogRecord.__init__: every attribute it sets is set here.
        self.__dict__.update(fields)
        now = time.time()
        self.name = access_log.name
        self.msg, self.args = msg, args
        self.levelname, self.levelno = "INFO", logging.INFO
        self.pathname, self.filename, self.module = __file__, "access.py", "access"
        self.lineno, self.funcName = 0, ""  # no log.origin: always this module
        self.exc_info, self.exc_text, self.stack_info = None, None, None
        self.created, self.msecs = now, (now - int(now)) * 1000
        self.relativeCreated = 0.0
        self.thread, self.threadName, self.processName = None, None, None
        self.process = os.getpid()
        self.taskName = None
