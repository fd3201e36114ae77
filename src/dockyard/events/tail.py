"""``dockyard events tail``: print the live event feed, resuming by itself.

A client of the websocket feed (``/v2/_dockyard/events``, protocol in
``events/feed.py``, user guide in ``docs/events.md``) built on trio-websocket. It
subscribes with a first ``subscribe`` message carrying the filters and ``since``, prints
one line per event, and keeps the id of the last event it printed (its cursor). Whenever
the connection ends (the server restarted, the network failed, nothing arrived for a
while, or the server cut it off as lagged with close code 4008) it connects again, after
a growing pause unless the close was a lag, and subscribes with ``since=<cursor>``: the
server replays what the log holds after that id, so nothing is lost and nothing is
printed twice.

Started without ``--since``, it takes the id the server announces in its first welcome as
the cursor, so events made while it reconnects are still printed.

Failure modes: a subscription the server rejects (close code 4400 or 4403, or an HTTP
400/401/403/404 answer to the websocket handshake) is not retried: ``FeedRejected``, exit
status 2. A closed stdout (``| head``) ends it with status 0 (it is not a lost
connection). SIGINT or SIGTERM end it quietly with status 128 + the signal number.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import trio
import trio_websocket

from dockyard.events.feed import (
    CLOSE_BAD_REQUEST,
    CLOSE_DENIED,
    CLOSE_LAGGED,
    FEED_PATH,
    subscribe_message,
)
from dockyard.events.schema import EventFilter

# Codes after which reconnecting cannot help: the subscription itself is refused, or the
# server has no feed at this path.
FATAL_CLOSE_CODES = (CLOSE_BAD_REQUEST, CLOSE_DENIED, 1008)
# Upgrade answers that retrying cannot change (others, such as a proxy's 502 while the
# registry restarts, are retried).
FATAL_HTTP_STATUSES = (400, 401, 403, 404)
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 5.0
CONNECT_TIMEOUT = 10.0
# Without word from the server (events or heartbeats) for this many heartbeat intervals
# plus a margin, the connection is taken for dead.
IDLE_HEARTBEATS = 2.0
IDLE_MARGIN = 5.0
DEFAULT_HEARTBEAT = 15.0


class FeedRejected(Exception):
    """The server refused the subscription (bad filter, not allowed, no such feed)."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"the server refused the subscription ({code}): {reason}")
        self.code = code
        self.reason = reason


class _ConnectionLost(Exception):
    """This connection ended; reconnect (after a pause unless ``at_once``)."""

    def __init__(self, why: str, at_once: bool = False) -> None:
        super().__init__(why)
        self.at_once = at_once


@dataclass(frozen=True)
class TailOptions:
    url: str
    since: int | None = None
    event_filter: EventFilter = field(default_factory=EventFilter)
    json_output: bool = False
    # The Authorization header value (Basic credentials) for a registry with auth on.
    authorization: str | None = None


def feed_url(url: str) -> str:
    """The websocket URL of the feed from what a user gives: ``http(s)://host:port`` or
    ``ws(s)://...``; without a path (or with ``/``) the feed's path is added."""
    parts = urlsplit(url if "://" in url else f"http://{url}")
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a registry URL: {url!r} (give http://host:port)")
    path = parts.path if parts.path not in ("", "/") else FEED_PATH
    return urlunsplit((scheme, parts.netloc, path, parts.query, ""))


def default_url(host: str, port: int) -> str:
    """The feed of a registry listening on ``host:port`` (the config's server section)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"ws://{host}:{port}{FEED_PATH}"


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_event(event: dict[str, Any]) -> str:
    """One readable line: time, id, action, what (repository:tag@digest), details."""
    target = event.get("target", {})
    ref = str(target.get("repository", "?"))
    if target.get("tag"):
        ref += f":{target['tag']}"
    if target.get("digest"):
        ref += f"@{target['digest']}"
    parts = [
        str(event.get("timestamp", "")),
        f"#{event.get('id')}",
        f"{event.get('action', '?'):<6}",
        f"{target.get('kind', '-'):<8}",
        ref,
    ]
    if target.get("mediaType"):
        parts.append(str(target["mediaType"]))
    if isinstance(target.get("size"), int):
        parts.append(_size(target["size"]))
    tags = target.get("tags") or []
    if len(tags) > 1:
        parts.append("tags " + ",".join(map(str, tags)))
    if target.get("from"):
        parts.append(f"from {target['from']}")
    who = (event.get("actor") or {}).get("name") or (event.get("request") or {}).get("addr")
    if who:
        parts.append(f"by {who}")
    return "  ".join(parts)


def _leaf(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first exception in ``group`` that is not a cancellation (else the group)."""
    for e in group.exceptions:
        found = _leaf(e) if isinstance(e, BaseExceptionGroup) else e
        if not isinstance(found, trio.Cancelled | BaseExceptionGroup):
            return found
    return group


class Tail:
    """The reconnecting subscriber; ``cursor`` is the id of the last event printed."""

    def __init__(
        self,
        options: TailOptions,
        out: Callable[[str], None],
        err: Callable[[str], None],
        max_backoff: float = MAX_BACKOFF,
    ) -> None:
        self.options = options
        self.url = feed_url(options.url)
        self.cursor = options.since
        self._out = out
        self._err = err
        self._max_backoff = max_backoff

    async def run(self) -> None:
        """Print events until cancelled; raises ``FeedRejected`` if refused."""
        backoff = FIRST_BACKOFF
        while True:
            try:
                await self._connection()
            except _ConnectionLost as e:
                if e.at_once:
                    self._err(f"{e}; resuming after event {self.cursor}")
                    backoff = FIRST_BACKOFF
                    continue
                self._err(f"{e}; reconnecting in {backoff:g}s")
            await trio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff)

    async def _connection(self) -> None:
        try:
            try:
                await self._session()
            except BaseExceptionGroup as group:
                # The websocket's reader task runs in a nursery: take out what went wrong.
                raise _leaf(group) from None
        except trio_websocket.ConnectionClosed as e:
            code = e.reason.code if e.reason is not None else 1006
            reason = (e.reason.reason if e.reason is not None else None) or ""
            if code in FATAL_CLOSE_CODES:
                raise FeedRejected(code, reason) from None
            why = f"connection closed ({code}{': ' + reason if reason else ''})"
            raise _ConnectionLost(why, at_once=code == CLOSE_LAGGED) from None
        except trio_websocket.ConnectionRejected as e:
            if e.status_code in FATAL_HTTP_STATUSES:
                raise FeedRejected(e.status_code, "the server refused the websocket") from None
            raise _ConnectionLost(f"the server answered {e.status_code}") from None
        except BrokenPipeError:
            raise  # our stdout, not the connection: stop (see ``run``)
        except (trio_websocket.HandshakeError, OSError, trio.BrokenResourceError) as e:
            why = str(e) or type(e).__name__
            raise _ConnectionLost(f"cannot connect to {self.url}: {why}") from None
        except trio.TooSlowError:
            raise _ConnectionLost("timed out waiting for the server") from None

    async def _session(self) -> None:
        """One connection: subscribe, then print until it ends.

        The TCP (or TLS) stream is opened and closed here rather than by trio-websocket's
        ``open_websocket_url``, which leaves the socket open when the server closes first
        (as it does for 4008)."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        secure = parts.scheme == "wss"
        port = parts.port or (443 if secure else 80)
        resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        with trio.fail_after(CONNECT_TIMEOUT):
            stream: trio.abc.Stream
            if secure:
                stream = await trio.open_ssl_over_tcp_stream(
                    host, port, ssl_context=ssl.create_default_context(), https_compatible=True
                )
            else:
                stream = await trio.open_tcp_stream(host, port)
        try:
            async with trio.open_nursery() as nursery:
                with trio.fail_after(CONNECT_TIMEOUT):
                    auth = self.options.authorization
                    ws = await trio_websocket.wrap_client_stream(
                        nursery,
                        stream,
                        parts.netloc,
                        resource,
                        extra_headers=[(b"authorization", auth.encode())] if auth else None,
                    )
                try:
                    await ws.send_message(subscribe_message(self.options.event_filter, self.cursor))
                    await self._read(ws)
                finally:
                    with trio.move_on_after(2) as cleanup:
                        cleanup.shield = True
                        await ws.aclose()
                    nursery.cancel_scope.cancel()
        finally:
            await trio.aclose_forcefully(stream)

    async def _read(self, ws: trio_websocket.WebSocketConnection) -> None:
        idle = IDLE_HEARTBEATS * DEFAULT_HEARTBEAT + IDLE_MARGIN
        while True:
            with trio.fail_after(idle):
                text = await ws.get_message()
            doc = json.loads(text)
            kind = doc.get("type")
            if kind == "welcome":
                if self.cursor is None:
                    self.cursor = int(doc["since"])
                heartbeat = doc.get("heartbeat")
                if isinstance(heartbeat, int | float) and heartbeat > 0:
                    idle = IDLE_HEARTBEATS * heartbeat + IDLE_MARGIN
            elif kind == "event":
                event = doc["event"]
                event_id = int(event["id"])
                if self.cursor is not None and event_id <= self.cursor:
                    continue  # already printed (cannot happen with a correct server)
                self._out(
                    json.dumps(event, separators=(",", ":"))
                    if self.options.json_output
                    else format_event(event)
                )
                self.cursor = event_id
            elif kind in ("heartbeat", "lagged"):
                # Everything matching up to last_id has been sent: a cheaper resume point.
                last = doc.get("last_id")
                if isinstance(last, int) and self.cursor is not None and last > self.cursor:
                    self.cursor = last
            # "lagged" is followed by close code 4008, handled as the connection ends.


async def _until_signalled(tail: Tail) -> int:
    """Run ``tail``; return 128 + the signal number once SIGINT or SIGTERM arrives.

    The tail's own errors (``FeedRejected``, ``BrokenPipeError``) come out unwrapped."""
    got: list[int] = []
    failed: list[Exception] = []
    async with trio.open_nursery() as nursery:

        async def watch() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    got.append(signum)
                    nursery.cancel_scope.cancel()
                    return

        async def follow() -> None:
            try:
                await tail.run()
            except (FeedRejected, BrokenPipeError) as e:
                failed.append(e)
                nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        nursery.start_soon(follow)
    if failed:
        raise failed[0]
    return 128 + got[0] if got else 0


def run(options: TailOptions) -> int:
    """The command: print events to stdout, connection news to stderr; exit status."""

    def out(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    def err(line: str) -> None:
        print(f"dockyard events tail: {line}", file=sys.stderr, flush=True)

    try:
        tail = Tail(options, out, err)
    except ValueError as e:
        err(str(e))
        return 2
    try:
        return trio.run(_until_signalled, tail)
    except FeedRejected as e:
        err(str(e))
        return 2
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as other filters do, and keep
        # the interpreter's final flush of stdout from failing on the dead pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
