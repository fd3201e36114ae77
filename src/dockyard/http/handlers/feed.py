"""The live event feed's server side: the websocket at ``/v2/_dockyard/events``.

The protocol (subscription, messages, close codes) is ``events/feed.py``; the fan-out is
the worker's ``EventHub``. A subscriber that falls ``buffer`` events behind is cut off
(4008); when the worker begins a graceful stop every feed is closed with 1001.

Two ways to send, one protocol. On a plain-TCP HTTP/1.1 connection served by dockyard's
hooked hypercorn (its trio or asyncio worker, ``http/websocket.py``), live events are
delivered in the hub's task: each event is encoded and framed once per worker, and the
same bytes are written to every matching subscriber's socket (``FrameWriter``); per
connection a writer task writes what a socket could not take at once, one sends
heartbeats, one reads until the client leaves. Otherwise (TLS, HTTP/2, another ASGI
server) every message goes through ASGI ``websocket.send`` from a per-connection task fed
by the hub's channel.

The feed needs ``admin`` and sends only events of repositories the caller may pull. A
caller proves who it is with an ``Authorization`` header or, from a browser, which cannot
set one, a ``ticket`` query parameter from ``GET /v2/_dockyard/ticket`` (``auth/tickets``).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from contextlib import aclosing

import anyio

from dockyard.auth import ADMIN, Authorizer, Caller, Identity
from dockyard.auth.tickets import FeedTickets
from dockyard.core import errors as err
from dockyard.events.feed import (
    CLOSE_BAD_REQUEST,
    CLOSE_DENIED,
    CLOSE_LAGGED,
    SUBSCRIBE_WAIT,
    BadSubscription,
    Subscription,
    event_message,
    heartbeat_message,
    lagged_message,
    lagged_reason,
    parse_query,
    parse_subscribe_message,
    welcome_message,
)
from dockyard.events.hub import EventHub, SubscriberLagged
from dockyard.events.hub import Subscription as Subscription_
from dockyard.events.schema import EventFilter
from dockyard.http.guard import Guard, action_class, open_guard
from dockyard.http.handlers.resource import check, pull_filter
from dockyard.http.request import (
    Receive,
    Scope_,
    Send,
    certificate_user,
    peer_address,
    scope_headers,
)
from dockyard.http.websocket import (
    CLOSE_GOING_AWAY,
    Disconnected,
    FrameWriter,
    Stopping,
    WebSocket,
    stopping,
    text_frame,
)
from dockyard.meta.records import StoredEvent

MESSAGE_CACHE = 4096  # encoded event messages kept per worker


def _take_ticket(query: str) -> tuple[str, str | None]:
    """The query without its ``ticket`` parameter, and the ticket."""
    ticket = None
    kept = []
    for part in query.split("&"):
        if part.startswith("ticket="):
            ticket = part[len("ticket=") :]
        elif part:
            kept.append(part)
    return "&".join(kept), ticket


class EventFeed:
    # The scope the feed needs (the route-enumeration test reads it).
    scope = ADMIN

    def __init__(
        self,
        hub: EventHub,
        authorizer: Authorizer,
        buffer: int = 1000,
        heartbeat: float = 15.0,
        tickets: FeedTickets | None = None,
        guard: Guard | None = None,
        client_user: str | None = None,
    ) -> None:
        self.hub = hub
        self.authorizer = authorizer
        self.tickets = tickets
        self.guard = guard or open_guard()
        # As RegistryApp's: the subject attribute naming a client certificate's user.
        self.client_user = client_user
        self.buffer = buffer
        self.heartbeat = heartbeat
        # The event message text by event id: a live event goes to every subscriber of
        # this worker, and encoding it once instead of once per subscriber saves about
        # a seventh of the fan-out's CPU (profiled with 500 subscribers).
        self._messages: OrderedDict[int, str] = OrderedDict()
        # The same as websocket frames, for the subscribers written to directly.
        self._frames: OrderedDict[int, bytes] = OrderedDict()
        self._last_frame: tuple[int, bytes] = (-1, b"")

    def _event_message(self, event: StoredEvent) -> str:
        text = self._messages.get(event.id)
        if text is None:
            text = event_message(event)
            self._messages[event.id] = text
            if len(self._messages) > MESSAGE_CACHE:
                self._messages.popitem(last=False)
        return text

    def _event_frame(self, event: StoredEvent) -> bytes:
        frame = self._frames.get(event.id)
        if frame is None:
            frame = text_frame(self._event_message(event))
            self._frames[event.id] = frame
            if len(self._frames) > MESSAGE_CACHE:
                self._frames.popitem(last=False)
        self._last_frame = (event.id, frame)
        return frame

    async def __call__(self, scope: Scope_, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "websocket.connect":
            return
        query, ticket = _take_ticket(scope.get("query_string", b"").decode("latin-1"))
        headers = scope_headers(scope)
        client = self.guard.proxies.client_address(peer_address(scope), headers)
        caller = Caller(headers, client)
        ws = WebSocket(receive, send)
        # Without a query string the subscription may come in a message up to
        # SUBSCRIBE_WAIT seconds later: what is committed from now on is the subscriber's
        # (read before the handshake completes, so nothing the client causes after it
        # sees the connection open is missed).
        connected = None if query else await self.hub.position()
        await ws.accept()
        identity: Identity | None = None
        user = certificate_user(scope, self.client_user) if self.client_user else None
        if user is not None:
            identity = Identity(user, "certificate")
        elif ticket is not None:
            identity = self.tickets.redeem(ticket) if self.tickets is not None else None
            if identity is None:
                await ws.close(CLOSE_DENIED, "invalid or expired ticket")
                return
        try:
            identity = await check(self.authorizer, caller, identity, self.scope)
            self.guard.check(client, identity, action_class(self.scope))
        except (err.Unauthorized, err.Denied, err.TooManyRequests) as e:
            await ws.close(CLOSE_DENIED, e.message[:120])
            return
        try:
            subscription = await self._subscription(ws, query, connected)
        except Disconnected:
            return
        except BadSubscription as e:
            await ws.close(CLOSE_BAD_REQUEST, str(e)[:120])
            return
        visible = pull_filter(self.authorizer, identity)
        writer = FrameWriter.of(scope, self.buffer)
        if writer is not None:
            await self._serve_direct(ws, writer, *subscription, visible, stopping(scope))
        else:
            await self._serve(ws, *subscription, visible, stopping(scope))

    async def _subscription(self, ws: WebSocket, query: str, connected: int | None) -> Subscription:
        if query or connected is None:
            return parse_query(query)
        # No query string: the subscription may come as a first message; events from the
        # connection on are replayed from the log once it is known (or the wait is over).
        text = await ws.first_text(SUBSCRIBE_WAIT)
        event_filter, since = parse_query("") if text is None else parse_subscribe_message(text)
        return event_filter, connected if since is None else since

    async def _serve(
        self,
        ws: WebSocket,
        event_filter: EventFilter,
        since: int | None,
        visible: Callable[[str], bool] | None = None,
        stop: Stopping | None = None,
    ) -> None:
        """Send the events; with ``visible``, only those of repositories it accepts. When
        ``stop`` is set (a graceful stop began) close with 1001 at once."""
        async with self.hub.subscribe(event_filter, since, self.buffer) as sub:
            await ws.send_text(
                welcome_message(self.hub.cursor, sub.last_id, event_filter, self.heartbeat)
            )

            async def pump() -> None:
                try:
                    async with aclosing(sub.events()) as events:
                        async for event in events:
                            if visible is not None and not visible(event.repository or ""):
                                continue
                            await ws.send_text(self._event_message(event))
                except SubscriberLagged as e:
                    await ws.send_text(lagged_message(e.last_id))
                    await ws.close(CLOSE_LAGGED, lagged_reason(e.last_id))
                nursery.cancel_scope.cancel()

            async def beat() -> None:
                while True:
                    await anyio.sleep_until(ws.last_sent + self.heartbeat)
                    if anyio.current_time() >= ws.last_sent + self.heartbeat:
                        await ws.send_text(heartbeat_message(sub.last_id))

            async def read() -> None:
                await ws.wait_disconnect()
                nursery.cancel_scope.cancel()

            async def go_away(stop: Stopping) -> None:
                # The server stops: the client reconnects elsewhere (or after the restart)
                # with since=<its last id>, rather than holding the stop for the whole
                # graceful_timeout.
                await stop.wait()
                await ws.close(CLOSE_GOING_AWAY, "server stopping")
                nursery.cancel_scope.cancel()

            async with anyio.create_task_group() as nursery:
                nursery.start_soon(pump)
                nursery.start_soon(beat)
                nursery.start_soon(read)
                if stop is not None:
                    nursery.start_soon(go_away, stop)

    async def _serve_direct(
        self,
        ws: WebSocket,
        writer: FrameWriter,
        event_filter: EventFilter,
        since: int | None,
        visible: Callable[[str], bool] | None = None,
        stop: Stopping | None = None,
    ) -> None:
        """``_serve`` with the frames written by ``writer`` (see the module docstring)."""
        holder: list[Subscription_] = []

        def deliver(event: StoredEvent) -> bool:
            # In the hub's task, once per subscriber and event: keep it short.
            if visible is not None and not visible(event.repository or ""):
                return True
            last = self._last_frame  # every subscriber of this worker gets it in turn
            frame = last[1] if last[0] == event.id else self._event_frame(event)
            if writer.offer(frame, event.id):
                return True
            holder[0].dropped += writer.dropped - 1  # the queue's; the hub counts this one
            return False

        async with self.hub.subscribe(event_filter, since, self.buffer, deliver) as sub:
            holder.append(sub)
            writer.written_id = sub.last_id
            welcome = welcome_message(self.hub.cursor, sub.last_id, event_filter, self.heartbeat)
            writer.offer(text_frame(welcome))

            async def replay() -> None:
                # The replayed events (with since); the live ones then go to ``deliver``.
                async with aclosing(sub.events()) as events:
                    async for event in events:
                        if visible is not None and not visible(event.repository or ""):
                            continue
                        writer.offer(self._event_frame(event), event.id)
                        if writer.queued() >= self.buffer // 2:
                            await writer.wait_drained()

            async def lagged() -> None:
                await writer.overflowed.wait()
                await writer.wait_drained()  # the frame the socket has part of
                last_id = writer.written_id
                await ws.send_text(lagged_message(last_id))
                await ws.close(CLOSE_LAGGED, lagged_reason(last_id))
                nursery.cancel_scope.cancel()

            async def beat() -> None:
                while True:
                    await anyio.sleep_until(writer.last_sent + self.heartbeat)
                    if anyio.current_time() >= writer.last_sent + self.heartbeat:
                        writer.offer(text_frame(heartbeat_message(sub.last_id)))

            async def read() -> None:
                await ws.wait_disconnect()
                nursery.cancel_scope.cancel()

            async def go_away(stop: Stopping) -> None:
                await stop.wait()  # as in ``_serve``
                await writer.wait_drained()
                await ws.close(CLOSE_GOING_AWAY, "server stopping")
                nursery.cancel_scope.cancel()

            async with anyio.create_task_group() as nursery:
                nursery.start_soon(writer.run)
                nursery.start_soon(replay)
                nursery.start_soon(lagged)
                nursery.start_soon(beat)
                nursery.start_soon(read)
                if stop is not None:
                    nursery.start_soon(go_away, stop)
