"""A registry-shaped HTTP server that stores nothing: the client's own ceiling.

It answers the requests the scenarios make with the statuses a registry would, reads and
discards upload bodies without hashing them, remembers only each blob's size (so blob
HEAD and GET can answer with the right length, zeros as content) and each manifest's
bytes, and serves downloads from one zero buffer with flow control. Running a scenario
against it measures the client (and this trivial server) on the same machine: when that
ceiling is far above a registry's figure, the client was not what limited it.

It also serves an event feed shaped like dockyard's (``/v2/_dockyard/events``, a
websocket): a welcome message on connect, then, after each manifest PUT has been
answered, one ``event`` message to every subscriber (no filters, no log, no replay), so
the events scenario's subscribers have a ceiling too.

Run alone: ``python -m perf.discard --port 5999`` (loopback only). One process, asyncio.
With ``--cert`` and ``--key`` it speaks HTTPS (HTTP/1.1 only: ALPN offers http/1.1).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime as dt
import hashlib
import json
import re
import signal
import ssl
import uuid
from urllib.parse import parse_qs, urlsplit

ZEROS = memoryview(bytes(1 << 20))
BLOB = re.compile(r"/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)")
UPLOADS = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/?")
UPLOAD = re.compile(r"/v2/(?P<name>.+)/blobs/uploads/(?P<id>[^/?]+)")
MANIFEST = re.compile(r"/v2/(?P<name>.+)/manifests/(?P<ref>[^/]+)")
TAGS = re.compile(r"/v2/(?P<name>.+)/tags/list")
FEED_PATH = "/v2/_dockyard/events"
WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def ws_frame(text: bytes) -> bytes:
    """An unmasked final text frame (server to client)."""
    n = len(text)
    if n < 126:
        head = bytes([0x81, n])
    elif n < 1 << 16:
        head = bytes([0x81, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 127]) + n.to_bytes(8, "big")
    return head + text


class State:
    def __init__(self) -> None:
        self.blobs: dict[str, int] = {}
        self.uploads: dict[str, int] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}  # digest -> (type, bytes)
        self.tags: dict[tuple[str, str], str] = {}  # (repo, tag) -> digest
        self.repos: set[str] = set()
        self.subscribers: set[Discard] = set()  # event feed websockets
        self.events = 0


class Discard(asyncio.BufferedProtocol):
    def __init__(self, state: State) -> None:
        self.state = state
        self.buffer = bytearray(256 * 1024)
        self.view = memoryview(self.buffer)
        self.head = bytearray()
        self.remaining = -1  # body bytes still to discard; -1 while reading a head
        self.request: tuple[str, str, dict[str, str]] | None = None
        self.body = bytearray()  # kept for manifests only
        self.transport: asyncio.Transport | None = None
        self.paused: asyncio.Event | None = None
        self.sending = False
        self.queue: list[tuple[bytes, int]] = []  # (head, body length) waiting to go
        self.websocket = False  # upgraded to the event feed: input is ignored

    # -- asyncio protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.paused = asyncio.Event()
        self.paused.set()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def pause_writing(self) -> None:
        assert self.paused is not None
        self.paused.clear()

    def resume_writing(self) -> None:
        assert self.paused is not None
        self.paused.set()

    def buffer_updated(self, nbytes: int) -> None:
        if self.websocket:
            return  # a subscriber's close frame or pong: nothing to answer
        data = self.view[:nbytes]
        while len(data):
            if self.remaining < 0:
                self.head += data
                end = self.head.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.head) > 1 << 20:
                        self._close()
                    return
                rest = len(self.head) - end - 4
                data = data[len(data) - rest :]
                self.head = self.head[:end]
                self._start_request(bytes(self.head))
                self.head = bytearray()
                if self.websocket:
                    return
                if self.remaining < 0:
                    if self.transport is None or self.transport.is_closing():
                        return
                    continue  # no body: already answered
            take = min(self.remaining, len(data))
            if self._keeps_body():
                self.body += data[:take]
            self.remaining -= take
            data = data[take:]
            if self.remaining == 0:
                self._finish_request()
                self.remaining = -1

    # -- requests

    def _start_request(self, raw: bytes) -> None:
        lines = raw.decode("latin-1").split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        self.request = (method, target, headers)
        self.body = bytearray()
        if "chunked" in headers.get("transfer-encoding", ""):
            self.request = None
            self._respond(411, b"", close=True)
            return
        self.remaining = int(headers.get("content-length", "0") or 0)
        if self.remaining == 0:
            self._finish_request()
            self.remaining = -1

    def _keeps_body(self) -> bool:
        return self.request is not None and "/manifests/" in self.request[1]

    def _finish_request(self) -> None:
        assert self.request is not None
        method, target, headers = self.request
        self.request = None
        parts = urlsplit(target)
        path, query = parts.path, parse_qs(parts.query)
        s = self.state
        if path in ("/v2/", "/v2"):
            return self._respond(200, b"{}")
        if path == FEED_PATH and headers.get("upgrade", "").lower() == "websocket":
            return self._upgrade(headers)
        if path == "/v2/_catalog":
            body = json.dumps({"repositories": sorted(s.repos)}).encode()
            return self._respond(200, body)
        m = TAGS.fullmatch(path)
        if m:
            tags = sorted(t for (r, t) in s.tags if r == m["name"])
            return self._respond(200, json.dumps({"name": m["name"], "tags": tags}).encode())
        m = UPLOADS.fullmatch(path)
        if m and method == "POST":
            s.repos.add(m["name"])
            if "mount" in query and query["mount"][0] in s.blobs:
                d = query["mount"][0]
                return self._respond(201, b"", [("location", f"/v2/{m['name']}/blobs/{d}")])
            upload = uuid.uuid4().hex
            s.uploads[upload] = 0
            loc = f"/v2/{m['name']}/blobs/uploads/{upload}"
            return self._respond(202, b"", [("location", loc), ("range", "0-0")])
        m = UPLOAD.fullmatch(path)
        if m:
            received = s.uploads.get(m["id"])
            if received is None:
                return self._respond(404, b'{"errors":[{"code":"BLOB_UPLOAD_UNKNOWN"}]}')
            received += int(headers.get("content-length", "0") or 0)
            if method == "PATCH":
                s.uploads[m["id"]] = received
                loc = f"/v2/{m['name']}/blobs/uploads/{m['id']}"
                return self._respond(202, b"", [("location", loc), ("range", f"0-{received - 1}")])
            if method == "PUT":
                del s.uploads[m["id"]]
                digest = query.get("digest", [""])[0]
                s.blobs[digest] = received
                return self._respond(201, b"", [("docker-content-digest", digest)])
            s.uploads.pop(m["id"], None)
            return self._respond(204, b"")
        m = BLOB.fullmatch(path)
        if m:
            size = s.blobs.get(m["digest"])
            if size is None:
                return self._respond(404, b"", head=method == "HEAD")
            start, length, status = 0, size, 200
            extra = [("docker-content-digest", m["digest"])]
            rng = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("range", ""))
            if rng:
                start = int(rng[1])
                end = min(int(rng[2]) if rng[2] else size - 1, size - 1)
                length, status = end - start + 1, 206
                extra.append(("content-range", f"bytes {start}-{end}/{size}"))
            return self._respond(status, None, extra, length=length, head=method == "HEAD")
        m = MANIFEST.fullmatch(path)
        if m:
            name, ref = m["name"], m["ref"]
            if method == "PUT":
                payload = bytes(self.body)
                digest = "sha256:" + hashlib.sha256(payload).hexdigest()
                media = headers.get("content-type", "application/json")
                s.manifests[digest] = (media, payload)
                s.repos.add(name)
                if not ref.startswith("sha256:"):
                    s.tags[(name, ref)] = digest
                self._respond(201, b"", [("docker-content-digest", digest)])
                return self._publish(name, ref, digest, media, len(payload))
            digest = ref if ref.startswith("sha256:") else s.tags.get((name, ref), "")
            found = s.manifests.get(digest)
            if found is None:
                return self._respond(404, b"", head=method == "HEAD")
            hdrs = [("content-type", found[0]), ("docker-content-digest", digest)]
            return self._respond(200, found[1], hdrs, head=method == "HEAD")
        return self._respond(404, b"")

    # -- the event feed

    def _upgrade(self, headers: dict[str, str]) -> None:
        key = headers.get("sec-websocket-key", "").encode("latin-1")
        accept = base64.b64encode(hashlib.sha1(key + WS_GUID).digest()).decode()
        head = (
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n"
            f"connection: Upgrade\r\nsec-websocket-accept: {accept}\r\n\r\n"
        ).encode("latin-1")
        n = self.state.events
        welcome = {"type": "welcome", "last_id": n, "since": n, "filter": {}, "heartbeat": 0}
        assert self.transport is not None
        self.transport.write(head + ws_frame(json.dumps(welcome).encode()))
        self.websocket = True
        self.state.subscribers.add(self)

    def _publish(self, name: str, ref: str, digest: str, media: str, size: int) -> None:
        s = self.state
        if not s.subscribers:
            return
        s.events += 1
        target: dict[str, object] = {"kind": "manifest", "repository": name, "digest": digest}
        target.update(mediaType=media, size=size, tag=ref)
        # A timestamp as dockyard's: the events scenario measures delay from it.
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        event = {"id": s.events, "timestamp": now, "action": "push", "target": target}
        doc = {"type": "event", "event": event}
        frame = ws_frame(json.dumps(doc, separators=(",", ":")).encode())
        for sub in list(s.subscribers):
            if sub.transport is not None and not sub.transport.is_closing():
                sub.transport.write(frame)

    # -- responses

    def _respond(
        self,
        status: int,
        body: bytes | None,
        headers: list[tuple[str, str]] | None = None,
        *,
        length: int | None = None,
        head: bool = False,
        close: bool = False,
    ) -> None:
        n = len(body) if body is not None else (length or 0)
        lines = [f"HTTP/1.1 {status} X", f"content-length: {n}"]
        lines += [f"{k}: {v}" for k, v in headers or []]
        if close:
            lines.append("connection: close")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        assert self.transport is not None
        if head:
            self._send(raw, 0)
        elif body is not None:
            self._send(raw + body, 0)
        else:
            self._send(raw, n)
        if close:
            self.transport.close()

    def _send(self, head: bytes, zeros: int) -> None:
        assert self.transport is not None
        if zeros == 0 and not self.sending:
            self.transport.write(head)
            return
        self.queue.append((head, zeros))
        if not self.sending:
            self.sending = True
            asyncio.get_running_loop().create_task(self._drain_queue())

    async def _drain_queue(self) -> None:
        assert self.transport is not None and self.paused is not None
        try:
            while self.queue:
                head, zeros = self.queue.pop(0)
                self.transport.write(head)
                while zeros > 0 and not self.transport.is_closing():
                    await self.paused.wait()
                    n = min(zeros, len(ZEROS))
                    self.transport.write(ZEROS[:n])
                    zeros -= n
        finally:
            self.sending = False

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.subscribers.discard(self)
        self.queue.clear()
        if self.paused is not None:
            self.paused.set()


async def serve(
    host: str,
    port: int,
    ready: asyncio.Event | None = None,
    context: ssl.SSLContext | None = None,
) -> None:
    if host not in ("127.0.0.1", "::1", "localhost"):
        raise ValueError("the discard server listens on loopback only")
    loop = asyncio.get_running_loop()
    state = State()
    server = await loop.create_server(lambda: Discard(state), host, port, backlog=1024, ssl=context)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    async with server:
        scheme = "https" if context else "http"
        print(f"discard server on {scheme}://{host}:{port}", flush=True)
        if ready is not None:
            ready.set()
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", help="PEM certificate chain: serve HTTPS (with --key)")
    parser.add_argument("--key", help="PEM private key")
    args = parser.parse_args(argv)
    context = None
    if args.cert or args.key:
        if not (args.cert and args.key):
            parser.error("--cert and --key go together")
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        context.set_alpn_protocols(["http/1.1"])
    asyncio.run(serve(args.host, args.port, context=context))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
