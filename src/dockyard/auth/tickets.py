"""Feed tickets: how a browser's websocket proves who opened it.

A browser cannot put an ``Authorization`` header on a websocket handshake. The dashboard
first asks ``GET /v2/_dockyard/ticket`` (an ordinary request, with the credentials the
browser holds), then opens the feed with ``?ticket=...``. A ticket names the identity it
was issued to, lives ``lifetime`` seconds and is signed with HMAC-SHA256 under a key every
worker and instance shares (kept in the metadata store, see ``shared_ticket_key``), so
any worker can check it. Each worker accepts a ticket once; the short lifetime bounds
what another worker could accept. Tickets hold no password and are useless after they expire.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dockyard.auth import Identity, SharedSecret

TICKET_SECONDS = 30.0
KEY_BYTES = 32
TICKET_KEY_NAME = "feed-ticket-key"  # its name among the store's shared secrets
LEGACY_KEY_FILE = "feed-ticket.key"  # where versions before the shared store kept it


def shared_ticket_key(shared_secret: SharedSecret, data_dir: Path) -> bytes:
    """The ticket key shared through the metadata store (instances share no disk).

    A key file an earlier version left in ``data_dir`` is offered first, so a registry
    keeps its key across the upgrade; else a new random key. The first process wins."""
    candidate = secrets.token_bytes(KEY_BYTES)
    try:
        old = (data_dir / LEGACY_KEY_FILE).read_bytes()
        if len(old) == KEY_BYTES:
            candidate = old
    except FileNotFoundError:
        pass
    return shared_secret(TICKET_KEY_NAME, candidate)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FeedTickets:
    def __init__(
        self,
        key: bytes,
        lifetime: float = TICKET_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self.lifetime = lifetime
        self._clock = clock
        self._used: dict[str, float] = {}  # ticket id -> expiry, this process

    def _sign(self, body: bytes) -> bytes:
        return hmac.new(self._key, body, hashlib.sha256).digest()

    def issue(self, identity: Identity) -> str:
        claims: dict[str, object] = {
            "sub": identity.name,
            "via": identity.method,
            "exp": self._clock() + self.lifetime,
            "id": secrets.token_hex(12),
        }
        if identity.granted is not None:
            claims["granted"] = [[name, sorted(actions)] for name, actions in identity.granted]
        body = json.dumps(claims, separators=(",", ":")).encode()
        return f"{_b64(body)}.{_b64(self._sign(body))}"

    def redeem(self, ticket: str) -> Identity | None:
        """The identity a valid, unexpired, unused ticket was issued to; else None."""
        if len(ticket) > 4096:
            return None
        body_text, _, signature_text = ticket.partition(".")
        try:
            body, signature = _unb64(body_text), _unb64(signature_text)
        except ValueError:
            return None
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        claims: dict[str, Any] = json.loads(body)
        now = self._clock()
        for used, expiry in list(self._used.items()):
            if expiry < now:
                del self._used[used]
        if claims["exp"] < now or claims["id"] in self._used:
            return None
        self._used[claims["id"]] = claims["exp"]
        granted = claims.get("granted")
        return Identity(
            claims["sub"],
            claims["via"],
            None if granted is None else tuple((n, frozenset(a)) for n, a in granted),
        )
