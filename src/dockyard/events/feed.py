"""The event feed's protocol: its path, close codes, messages and subscription parsing.

Shared by the server (``http/handlers/feed.py``) and the client (``events/tail.py``);
documented for users in ``docs/events.md``.

- Subscribe with query parameters ``since=<id>``, ``repository=<glob>``, ``action=<a>``,
  ``mediaType=<type>`` (the last three repeatable or comma-separated). With no query
  string the server waits up to ``SUBSCRIBE_WAIT`` seconds for a first text message
  ``{"type": "subscribe", "since": 17, "repository": ["team/*"], "action": ["push"]}``
  (without one it subscribes to everything). Either way the subscriber gets the events
  committed from the moment it connected (replayed from the log after the wait), unless
  the message gives a ``since``.
- The server sends ``{"type": "welcome", "last_id": N, "since": S, "filter": {...},
  "heartbeat": H}``, then one ``{"type": "event", "event": {...}}`` per matching event
  (replayed ones first when ``since`` is given, then live ones, with no gap and no
  duplicate at the seam), and ``{"type": "heartbeat", "last_id": N}`` after ``heartbeat``
  idle seconds. There are no websocket pings: a client that hears nothing for about two
  heartbeats takes the connection for dead.
- A subscriber that falls ``buffer`` events behind gets ``{"type": "lagged", "last_id":
  N}`` and close code 4008; it resumes with ``since=N``. A bad subscription (unknown
  parameter or key, unknown action, ``since`` that is not an event id) gets close code
  4400 with the reason; a caller without the catalog scope gets 4403.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from dockyard.events.schema import EventFilter, FilterError, native
from dockyard.meta.records import StoredEvent
from dockyard.oci import strictjson

FEED_PATH = "/v2/_dockyard/events"
SUBSCRIBE_WAIT = 1.0
CLOSE_LAGGED = 4008
CLOSE_BAD_REQUEST = 4400
CLOSE_DENIED = 4403
# Event ids are SQLite integers: a larger ``since`` is not an id (and would overflow).
MAX_EVENT_ID = 2**63 - 1
SUBSCRIPTION_KEYS = ("since", "repository", "action", "mediaType")

Subscription = tuple[EventFilter, int | None]


class BadSubscription(ValueError):
    """The subscription cannot be served (the reason goes out with close code 4400)."""


def parse_subscription(params: dict[str, list[str]]) -> Subscription:
    """The filter and ``since`` of query-style parameters."""
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


def parse_query(query: str) -> Subscription:
    """The subscription in a websocket URL's query string."""
    return parse_subscription(parse_qs(query, keep_blank_values=True))


def parse_subscribe_message(text: str) -> Subscription:
    """The subscription in a first ``subscribe`` message."""
    try:
        doc = strictjson.loads(text)
    except strictjson.StrictJSONError as e:
        raise BadSubscription(f"the first message must be a JSON subscribe message: {e}") from None
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
    return parse_subscription(params)


def _encode(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def subscribe_message(event_filter: EventFilter, since: int | None) -> str:
    doc: dict[str, Any] = {"type": "subscribe", **event_filter.to_json()}
    if since is not None:
        doc["since"] = since
    return json.dumps(doc)


def welcome_message(last_id: int, since: int, event_filter: EventFilter, heartbeat: float) -> str:
    return _encode(
        {
            "type": "welcome",
            "last_id": last_id,
            "since": since,
            "filter": event_filter.to_json(),
            "heartbeat": heartbeat,
        }
    )


def event_message(event: StoredEvent) -> str:
    return _encode({"type": "event", "event": native(event)})


def heartbeat_message(last_id: int) -> str:
    return _encode({"type": "heartbeat", "last_id": last_id})


def lagged_message(last_id: int) -> str:
    return _encode({"type": "lagged", "last_id": last_id})


def lagged_reason(last_id: int) -> str:
    """The close reason sent with ``CLOSE_LAGGED``."""
    return f"lagged; resume with since={last_id}"
