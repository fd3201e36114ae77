"""The access log: one line per request on the ``dockyard.access`` logger.

The fields carry ECS names (docs/monitoring.md, "Logs"), so a log stack files them
without a mapping; dockyard's own are under ``dockyard.*``. The message is the same
request in one readable line, for the text format. No header value is logged (the
Authorization header, cookies), nor the query string (it may carry anything).
"""

from __future__ import annotations

import logging

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
    # makeRecord and handle, not info(): info() would walk the stack for the caller's file
    # and line, always this function's, a tenth of the line's cost.
    record = access_log.makeRecord(
        access_log.name,
        logging.INFO,
        __file__,
        0,
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
        None,
        extra=fields,
    )
    access_log.handle(record)
