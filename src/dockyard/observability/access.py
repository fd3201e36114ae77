"""The access log: one JSON line per request on the ``dockyard.access`` logger."""

from __future__ import annotations

import json
import logging

from dockyard.observability.record import RequestRecord

access_log = logging.getLogger("dockyard.access")


def log_access(r: RequestRecord) -> None:
    access_log.info(
        json.dumps(
            {
                "request": r.request_id,
                "method": r.method,
                "path": r.path[:512],
                "status": r.status,
                "ms": round(r.duration * 1000, 3),
                "client": r.client,
                "user": r.user,
            }
        )
    )
