"""Webhook delivery: at-least-once, from the durable event log.

Each endpoint is one consumer of the log (``events/consumer.py``: its cursor and lease,
the holder's loop, redelivery, what a crash or a lost lease means); this module is what
delivering one event to an endpoint means. For each event the endpoint's filter matches:
POST it (one event per request); on failure retry after backoff_initial seconds, doubling
up to backoff_max, max_attempts times in all; 2xx moves the cursor, giving up records the
event as failed (``dockyard events webhooks failed``, ``redeliver``) and moves on.

A new endpoint starts at the end of the log as it is when a server first runs with it.

Errors (neither escapes this module)::

    DeliveryFailed     one attempt failed: a non-2xx status, a transport error, a timeout
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
from anyio.abc import TaskStatus

from dockyard import __version__
from dockyard.config import WebhookSettings
from dockyard.events.consumer import LogConsumer
from dockyard.events.hub import EventHub
from dockyard.events.schema import (
    CLOUDEVENTS_MEDIA_TYPE,
    DISTRIBUTION_MEDIA_TYPE,
    EventFilter,
    cloudevent,
    distribution_envelope,
    native,
)
from dockyard.meta.records import StoredEvent
from dockyard.meta.store import Database

log = logging.getLogger("dockyard.webhooks")

SIGNATURE_HEADER = "X-Dockyard-Signature"
# Bytes of a response read: enough for an error message, bounded whatever the endpoint sends.
RESPONSE_LIMIT = 64 * 1024


class DeliveryFailed(Exception):
    """One delivery attempt failed; the message says how (it is what operators see)."""


def sign(secret: str, body: bytes) -> str:
    """The ``X-Dockyard-Signature`` value: ``sha256=`` + HMAC-SHA256 of the exact body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def event_filter(hook: WebhookSettings) -> EventFilter:
    return EventFilter(tuple(hook.repositories), frozenset(hook.actions), tuple(hook.media_types))


def render(
    hook: WebhookSettings, event: StoredEvent, base_url: str
) -> tuple[bytes, dict[str, str]]:
    """The body and headers of the request that delivers ``event`` to ``hook``."""
    doc: dict[str, Any]
    if hook.format == "distribution":
        doc, content_type = distribution_envelope([event], base_url), DISTRIBUTION_MEDIA_TYPE
    elif hook.format == "cloudevents":
        doc, content_type = cloudevent(event), CLOUDEVENTS_MEDIA_TYPE
    else:
        doc, content_type = native(event), "application/json"
    body = json.dumps(doc, separators=(",", ":")).encode()
    headers = {
        "Content-Type": content_type,
        "User-Agent": f"dockyard/{__version__}",
        "X-Dockyard-Webhook": hook.name,
        "X-Dockyard-Event-Id": str(event.id),
        **hook.headers,
    }
    # The request that caused the event, as the registry logged it (also in every format's
    # body): a receiver can log it too and so follow a push from client to hook.
    request_id = (event.body.get("request") or {}).get("id")
    if request_id and not any(k.lower() == "x-request-id" for k in headers):
        headers["X-Request-Id"] = request_id
    if hook.secret:
        headers[SIGNATURE_HEADER] = sign(hook.secret, body)
    return body, headers


@dataclass(slots=True)
class EndpointStatistics:
    holding_lease: bool = False
    delivered: int = 0
    failed_attempts: int = 0
    failed_events: int = 0


class WebhookDeliverer:
    """Delivers the event log to every configured endpoint; ``run`` in a nursery."""

    def __init__(
        self,
        db: Database,
        hub: EventHub,
        hooks: Sequence[WebhookSettings],
        *,
        instance: str,
        base_url: str,
        lease_seconds: float,
    ) -> None:
        self.db = db
        self.hub = hub
        self.hooks = list(hooks)
        self.base_url = base_url
        self.lease_seconds = lease_seconds
        # The instance name first: `dockyard serve` frees leases that start with it.
        self.lease = f"{instance}/{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stats = {h.name: EndpointStatistics() for h in self.hooks}

    def statistics(self) -> dict[str, EndpointStatistics]:
        return {k: dataclasses.replace(v) for k, v in self._stats.items()}

    async def run(self, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        if not self.hooks:
            task_status.started()
            return
        # Before the server answers requests: events pushed from now on reach new endpoints.
        await self.db.run(self.db.meta.webhook_init, [h.name for h in self.hooks])
        async with anyio.create_task_group() as nursery:
            for hook in self.hooks:
                stats = self._stats[hook.name]

                def holding(held: bool, stats: EndpointStatistics = stats) -> None:
                    stats.holding_lease = held

                consumer = LogConsumer(
                    self.db,
                    self.hub,
                    _Endpoint(self, hook),
                    lease=self.lease,
                    lease_seconds=self.lease_seconds,
                    log=log,
                    holding=holding,
                )
                nursery.start_soon(consumer.run, name=f"webhook {hook.name}")
            task_status.started()

    async def _send(
        self, hook: WebhookSettings, client: httpx.AsyncClient, event: StoredEvent
    ) -> tuple[int, str | None]:
        """Up to ``max_attempts`` attempts with exponential backoff: (attempts, last error)."""
        body, headers = render(hook, event, self.base_url)
        delay = hook.backoff_initial
        attempt = 0
        while True:
            attempt += 1
            try:
                await _post(client, hook, body, headers)
            except DeliveryFailed as e:
                error = str(e)
            else:
                self._stats[hook.name].delivered += 1
                return attempt, None
            self._stats[hook.name].failed_attempts += 1
            if attempt >= hook.max_attempts:
                return attempt, error
            log.warning(
                "webhook %s: event %d attempt %d/%d failed (%s); retrying in %.3gs",
                hook.name,
                event.id,
                attempt,
                hook.max_attempts,
                error,
                delay,
            )
            await anyio.sleep(delay)
            delay = min(delay * 2, hook.backoff_max)


class _Endpoint:
    """One endpoint as a consumer of the log (events/consumer.py's Handler)."""

    def __init__(self, deliverer: WebhookDeliverer, hook: WebhookSettings) -> None:
        self.deliverer = deliverer
        self.hook = hook
        self.name = hook.name
        self.label = f"webhook {hook.name}"
        self.filter = event_filter(hook)
        # trust_env: deliveries honour HTTP(S)_PROXY / NO_PROXY like other HTTP clients.
        self.client = httpx.AsyncClient(timeout=hook.timeout, follow_redirects=False)

    def wants(self, event: StoredEvent) -> bool | None:
        return True if self.filter.matches(event) else None

    async def handle(self, event: StoredEvent, work: bool) -> tuple[int, str | None]:
        attempts, error = await self.deliverer._send(self.hook, self.client, event)
        if error is not None:
            self.deliverer._stats[self.hook.name].failed_events += 1
        return attempts, error

    async def aclose(self) -> None:
        await self.client.aclose()


async def _post(
    client: httpx.AsyncClient, hook: WebhookSettings, body: bytes, headers: dict[str, str]
) -> None:
    """One attempt; raises DeliveryFailed unless the endpoint answers 2xx in time."""
    with anyio.move_on_after(hook.timeout):
        try:
            async with client.stream("POST", hook.url, content=body, headers=headers) as r:
                text = await _read_some(r)
                if 200 <= r.status_code < 300:
                    return
                detail = text.decode(errors="replace").strip()[:200]
                raise DeliveryFailed(f"HTTP {r.status_code}" + (f": {detail}" if detail else ""))
        except httpx.HTTPError as e:
            raise DeliveryFailed(
                f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            ) from None
    raise DeliveryFailed(f"no answer within {hook.timeout:g} s")


async def _read_some(response: httpx.Response) -> bytes:
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) >= RESPONSE_LIMIT:
            break
    return data
