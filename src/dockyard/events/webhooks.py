"""Webhook delivery: at-least-once, from the durable event log.

Deliveries read the ``events`` table, not an in-memory queue: every change commits its
event with the change, so what the log holds is exactly what happened, and a restart or
a crash loses no event that an endpoint has not yet received.

Every worker process runs one task per configured endpoint. The tasks of one endpoint, in
every worker and every instance sharing the database, compete for the endpoint's lease
(a row of ``webhook_cursors``); the holder delivers, renews the lease every third of
``lease_seconds``, and the others stand by, taking over when the lease is released (a
graceful stop) or expires (a crash; ``dockyard serve`` also frees its own instance's
leases when it starts). Endpoints never wait for one another.

The holder's loop::

    send the endpoint's events marked for redelivery (dockyard events webhooks redeliver)
    read the log after the cursor, a page at a time
    for each event the endpoint's filter matches:
        POST it (one event per request); on failure retry after backoff_initial seconds,
        doubling up to backoff_max, max_attempts times in all
        2xx:          cursor := event id
        gave up:      record (endpoint, event, attempts, last error, time) as failed and
                      cursor := event id, in one transaction
    nothing new: wait for the event hub (new events, at once) or IDLE_CHECK seconds

Every write is conditional on still holding the lease, so a process that lost it (it
stalled past its expiry and another process took over) changes nothing and stops. The
cursor moves only after the endpoint answered 2xx or the event was recorded as failed: a
crash repeats at most the event in flight, never skips one. Events reach an endpoint in
log order, except redelivered ones, which are sent when asked for.

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

import httpx
import trio

from dockyard import __version__
from dockyard.config import WebhookSettings
from dockyard.events.hub import PAGE, EventHub
from dockyard.events.outage import log_failure
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
# Seconds between looks at redelivery requests and at a lease held by another process.
IDLE_CHECK = 1.0
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

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        if not self.hooks:
            task_status.started()
            return
        # Before the server answers requests: events pushed from now on reach new endpoints.
        await self.db.run(self.db.meta.webhook_init, [h.name for h in self.hooks])
        async with trio.open_nursery() as nursery:
            for hook in self.hooks:
                nursery.start_soon(self._endpoint, hook, name=f"webhook {hook.name}")
            task_status.started()

    # -- one endpoint

    async def _endpoint(self, hook: WebhookSettings) -> None:
        meta = self.db.meta
        # trust_env: deliveries honour HTTP(S)_PROXY / NO_PROXY like other HTTP clients.
        client = httpx.AsyncClient(timeout=hook.timeout, follow_redirects=False)
        try:
            while True:
                try:
                    cursor = await self._acquire(hook.name)
                except Exception:
                    log_failure(log, "webhook %s: taking the lease failed; will retry", hook.name)
                    cursor = None
                if cursor is None:
                    await trio.sleep(IDLE_CHECK)
                    continue
                log.info("webhook %s: delivering from event %d", hook.name, cursor)
                self._stats[hook.name].holding_lease = True
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._keep_lease, hook.name, nursery.cancel_scope)
                        await self._deliver(hook, client, cursor)
                        nursery.cancel_scope.cancel()
                finally:
                    self._stats[hook.name].holding_lease = False
                log.warning("webhook %s: lost the lease; standing by", hook.name)
        finally:
            # A graceful stop hands the endpoint to another process at once.
            with trio.move_on_after(2) as scope:
                scope.shield = True
                await client.aclose()
                try:
                    await self.db.run(meta.webhook_release, hook.name, self.lease)
                except Exception:  # it expires by itself
                    log_failure(log, "webhook %s: releasing the lease failed", hook.name)

    async def _acquire(self, name: str) -> int | None:
        """Take the lease if it is free or expired (a read first: standing by is cheap)."""
        meta = self.db.meta
        if not await self.db.run(meta.webhook_lease_free, name, self.lease):
            return None
        return await self.db.run(meta.webhook_acquire, name, self.lease, self.lease_seconds)

    async def _keep_lease(self, name: str, scope: trio.CancelScope) -> None:
        while True:
            await trio.sleep(self.lease_seconds / 3)
            try:
                held = await self.db.run(
                    self.db.meta.webhook_renew, name, self.lease, self.lease_seconds
                )
            except Exception:  # e.g. the database is busy: the next renewal may succeed
                log_failure(log, "webhook %s: renewing the lease failed", name)
                continue
            if not held:
                scope.cancel()
                return

    async def _deliver(self, hook: WebhookSettings, client: httpx.AsyncClient, cursor: int) -> None:
        """Deliver while holding the lease; returns when a write finds the lease gone."""
        db, meta, name = self.db, self.db.meta, hook.name
        wanted = event_filter(hook)
        handled = saved = cursor  # handled in memory / recorded in the database
        while True:
            try:
                for event_id in await db.run(meta.webhook_to_redeliver, name, 100):
                    if not await self._redeliver(hook, client, event_id):
                        return
                rows = await db.run(meta.events_after, handled, PAGE)
                for row in rows:
                    if wanted.matches(row):
                        if not await self._deliver_one(hook, client, row):
                            return
                        saved = row.id
                    handled = row.id
                if handled != saved:  # events no filter matched: move past them too
                    if not await db.run(meta.webhook_advance, name, self.lease, handled, False):
                        return
                    saved = handled
            except Exception:  # a bug or a database error: log it, keep the endpoint going
                log_failure(log, "webhook %s: delivery loop failed; retrying", name)
                await trio.sleep(IDLE_CHECK)
                continue
            if rows:
                continue
            with trio.move_on_after(IDLE_CHECK):
                await self.hub.wait_past(handled)

    async def _deliver_one(
        self, hook: WebhookSettings, client: httpx.AsyncClient, event: StoredEvent
    ) -> bool:
        """Send ``event`` with retries; record the outcome. False: the lease is gone."""
        meta = self.db.meta
        attempts, error = await self._send(hook, client, event)
        if error is None:
            # Shielded: the endpoint has the event, so a graceful stop arriving now must
            # not keep the cursor from moving (the next holder would send it again).
            with trio.CancelScope(shield=True):
                advanced = await self.db.run(
                    meta.webhook_advance, hook.name, self.lease, event.id, True
                )
            return advanced
        log.error(
            "webhook %s: event %d failed %d times, giving up (last error: %s)",
            hook.name,
            event.id,
            attempts,
            error,
        )
        self._stats[hook.name].failed_events += 1
        return await self.db.run(
            meta.webhook_failed, hook.name, self.lease, event.id, attempts, error, True
        )

    async def _redeliver(
        self, hook: WebhookSettings, client: httpx.AsyncClient, event_id: int
    ) -> bool:
        meta = self.db.meta
        event = await self.db.run(meta.event, event_id)
        attempts: int
        error: str | None
        if event is None:
            attempts, error = 0, "the event is no longer in the event log"
        else:
            log.info("webhook %s: redelivering event %d", hook.name, event_id)
            attempts, error = await self._send(hook, client, event)
        if error is None:
            return await self.db.run(meta.webhook_redelivered, hook.name, self.lease, event_id)
        log.error("webhook %s: redelivery of event %d failed: %s", hook.name, event_id, error)
        return await self.db.run(
            meta.webhook_failed, hook.name, self.lease, event_id, attempts, error, False
        )

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
            await trio.sleep(delay)
            delay = min(delay * 2, hook.backoff_max)


async def _post(
    client: httpx.AsyncClient, hook: WebhookSettings, body: bytes, headers: dict[str, str]
) -> None:
    """One attempt; raises DeliveryFailed unless the endpoint answers 2xx in time."""
    with trio.move_on_after(hook.timeout):
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
