"""One served request as the observers see it: a leaf module, so the HTTP layer that
fills it in and the observers that read it (access log, metrics) share it without
importing one another."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

REQUEST_ID_LIMIT = 64

# Seeded from os.urandom, and again in a forked child (spawned workers import anew). Not
# os.urandom per request: it releases the GIL around getrandom(), and with a database or
# log thread waiting for the GIL the event loop then waited to get it back (a manifest
# GET's request id cost 19 CPU-us in a py-spy profile of a uvloop worker, against 0.5 in
# a loop; `python -m perf.profile_serve sample get-uvloop`). An id is a label, not a secret.
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def request_id(incoming: str) -> str:
    """The request's id: the client's ``X-Request-Id`` when it is printable ASCII of at most
    64 characters (it goes into logs, events and webhooks: a hostile one must not forge a
    log line or grow them), else a new one."""
    if 0 < len(incoming) <= REQUEST_ID_LIMIT and incoming.isascii() and incoming.isprintable():
        return incoming
    return f"{_ids.getrandbits(128):032x}"  # 128 random bits, as uuid4().hex


@dataclass(slots=True)
class RequestRecord:
    request_id: str
    method: str
    path: str
    client: str
    user_agent: str
    # The route's class ("manifests", "blobs", "uploads", ... see http/routing.py), "" when
    # no route matched; a bounded set, fit for a metric label.
    route: str = ""
    repository: str | None = None
    reference: str | None = None  # the tag or digest of a manifest, blob or referrers route
    user: str | None = None
    status: int = 0
    error_code: str | None = None  # the OCI error code of a 4xx/5xx JSON answer
    bytes_in: int = 0  # request body bytes read
    bytes_out: int = 0  # response body bytes sent (0 for HEAD)
    started: float = 0.0  # wall clock, epoch seconds
    duration: float = 0.0  # seconds, from the request's arrival to its last byte sent
    # The parsed query (?mount= tells a mount from an upload); read it, never change it.
    query: Mapping[str, list[str]] = field(default_factory=dict)


Observer = Callable[[RequestRecord], None]
"""Called once per request after its response is sent; must be quick and never raise
(it runs on the request's task)."""
