"""The live event feed: a websocket at ``/v2/_dockyard/events``.

Protocol (documented for users in ``docs/events.md``):

- Subscribe with query parameters ``since=<id>``, ``repository=<glob>``, ``action=<a>``,
  ``mediaType=<type>`` (the last three repeatable or comma-separated). With no query
  string the server waits up to ``SUBSCRIBE_WAIT`` seconds for a first text message
  ``{"type": "subscribe", "since": 17, "repository": ["team/*"], "action": ["push"]}``
  (without one it subscribes to everything from now on).
- The server sends ``{"type": "welcome", "last_id": N, "since": S, "filter": {...},
  "heartbeat": H}``, then one ``{"type": "event", "event": {...}}`` per matching event
  (replayed ones first when ``since`` is given, then live ones, with no gap and no
  duplicate at the seam), and ``{"type": "heartbeat", "last_id": N}`` after ``heartbeat``
  idle seconds. There are no websocket pings: a client that hears nothing for about two
  heartbeats takes the connection for dead.
- A subscriber that falls ``buffer`` events behind gets ``{"type": "lagged", "last_id":
  N}`` and close code 4008; it resumes with ``since=N``. A bad subscription (unknown
  parameter or key, unknown action, ``since`` that is not an event id) gets close code
  4400 with the reason.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable, MutableMapping
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qs

import trio

from dockyard.auth import Authorizer, Scope
from dockyard.events.hub import EventHub, SubscriberLagged
from dockyard.events.schema import EventFilter, FilterError, native
from dockyard.http.asgi import scope_headers
from dockyard.meta.records import StoredEvent

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

FEED_PATH = "/v2/_dockyard/events"
SUBSCRIBE_WAIT = 1.0
CLOSE_LAGGED = 4008
MESSAGE_CACHE = 4096  # encoded event messages kept per worker
CLOSE_BAD_REQUEST = 4400
CLOSE_DENIED = 4403
# Event ids are SQLite integers: a larger ``since`` is not an id (and would overflow).
MAX_EVENT_ID = 2**63 - 1
SUBSCRIPTION_KEYS = ("since", "repository", "action", "mediaType")


class BadSubscription(ValueError):
    pass


def parse_subscription(params: dict[str, list[str]]) -> tuple[EventFilter, int | None]:
    # A misspelt key (``repo=``) would otherwise subscribe to everything, silently.
    unknown = sorted(set(params) - set(SUBSCRIPTION_KEYS))
    if unknown:
        raise BadSubscription(
            f"unknown parameter {unknown[0][:40]!r} (known: {', '.join(SUBSCRIPTION_KEYS)})"
        )
    try:
        event_filter = EventFilter.parse(params)
    except FilterError as e:
        raise BadSubscription(str(e)) from None
    since: int | None = None
    raw = params.get("since")
    if raw:
        if len(raw) > 1:
            raise BadSubscription("since given more than once")
        # str.isdigit() accepts digits int() refuses ("²"): only ASCII digits are ids.
        if not (raw[0].isascii() and raw[0].isdigit()) or int(raw[0]) > MAX_EVENT_ID:
            raise BadSubscription(f"since must be an event id, not {raw[0][:20]!r}")
        since = int(raw[0])
    return event_filter, since


def _message_params(text: str) -> dict[str, list[str]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        raise BadSubscription("the first message must be a JSON subscribe message") from None
    if not isinstance(doc, dict) or doc.get("type") != "subscribe":
        raise BadSubscription('the first message must have "type": "subscribe"')
    unknown = sorted(set(doc) - {"type", *SUBSCRIPTION_KEYS})
    if unknown:
        raise BadSubscription(f"unknown key {unknown[0][:40]!r} in the subscribe message")
    params: dict[str, list[str]] = {}
    for key in ("repository", "action", "mediaType"):
        value = doc.get(key, [])
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise BadSubscription(f"{key} must be a string or a list of strings")
        params[key] = value
    since = doc.get("since")
    if since is not None:
        if not isinstance(since, int) or isinstance(since, bool) or not 0 <= since <= MAX_EVENT_ID:
            raise BadSubscription("since must be an event id (a non-negative integer)")
        params["since"] = [str(since)]
    return params


class EventFeed:
    def __init__(
        self, hub: EventHub, authorizer: Authorizer, buffer: int = 1000, heartbeat: float = 15.0
    ) -> None:
        self.hub = hub
        self.authorizer = authorizer
        self.buffer = buffer
        self.heartbeat = heartbeat
        # The event message text by event id: a live event goes to every subscriber of
        # this worker, and encoding it once instead of once per subscriber saves about
        # a seventh of the fan-out's CPU (profiled with 500 subscribers).
        self._messages: OrderedDict[int, str] = OrderedDict()

    def _event_message(self, event: StoredEvent) -> str:
        text = self._messages.get(event.id)
        if text is None:
            text = json.dumps({"type": "event", "event": native(event)}, separators=(",", ":"))
            self._messages[event.id] = text
            if len(self._messages) > MESSAGE_CACHE:
                self._messages.popitem(last=False)
        return text

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        identity = await self.authorizer.authenticate(scope_headers(scope))
        await send({"type": "websocket.accept"})
        if not await self.authorizer.allowed(identity, Scope("catalog")):
            await send({"type": "websocket.close", "code": CLOSE_DENIED, "reason": "denied"})
            return
        query = scope.get("query_string", b"").decode("latin-1")
        params = parse_qs(query, keep_blank_values=True)
        try:
            if not query:
                with trio.move_on_after(SUBSCRIBE_WAIT):
                    first = await receive()
                    if first["type"] == "websocket.disconnect":
                        return
                    params = _message_params(first.get("text") or "")
            event_filter, since = parse_subscription(params)
        except BadSubscription as e:
            reason = str(e)[:120]
            await send({"type": "websocket.close", "code": CLOSE_BAD_REQUEST, "reason": reason})
            return
        lock = trio.Lock()
        last_sent = trio.current_time()

        async def send_text(text: str) -> None:
            nonlocal last_sent
            async with lock:
                await send({"type": "websocket.send", "text": text})
                last_sent = trio.current_time()

        async def send_json(doc: dict[str, Any]) -> None:
            await send_text(json.dumps(doc, separators=(",", ":")))

        async with self.hub.subscribe(event_filter, since, self.buffer) as sub:
            await send_json(
                {
                    "type": "welcome",
                    "last_id": self.hub.cursor,
                    "since": sub.last_id,
                    "filter": event_filter.to_json(),
                    "heartbeat": self.heartbeat,
                }
            )

            async def pump() -> None:
                try:
                    async with aclosing(sub.events()) as events:
                        async for event in events:
                            await send_text(self._event_message(event))
                except SubscriberLagged as e:
                    await send_json({"type": "lagged", "last_id": e.last_id})
                    async with lock:
                        await send(
                            {
                                "type": "websocket.close",
                                "code": CLOSE_LAGGED,
                                "reason": f"lagged; resume with since={e.last_id}",
                            }
                        )
                nursery.cancel_scope.cancel()

            async def beat() -> None:
                while True:
                    await trio.sleep_until(last_sent + self.heartbeat)
                    if trio.current_time() >= last_sent + self.heartbeat:
                        await send_json({"type": "heartbeat", "last_id": sub.last_id})

            async def read() -> None:
                while True:
                    incoming = await receive()
                    if incoming["type"] == "websocket.disconnect":
                        nursery.cancel_scope.cancel()
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(pump)
                nursery.start_soon(beat)
                nursery.start_soon(read)
