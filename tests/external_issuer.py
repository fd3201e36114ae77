"""A small external token service on loopback, for the external-issuer end-to-end tests.

It implements the GET form of distribution's token spec (docs/spec/auth/token.md): it
reads ``service``, ``scope`` (repeated), ``account`` and Basic credentials (empty ones
are anonymous, as containers/image sends them), grants the intersection of the scopes
asked for and ``grants``, and answers ``{"token", "access_token", "expires_in",
"issued_at"}`` signed with the test's key. It runs in a thread (``http.server``) and
keeps every request's parameters in ``requests`` so tests can see what a client asked.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import time
import uuid
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.serverthread import ServerThread

# user -> repository -> actions; None is anonymous.
Grants = Mapping[str | None, Mapping[str, set[str]]]


class ExternalIssuer:
    """``url`` is http://127.0.0.1:<port>/token. Tokens carry ``headers`` (a ``kid`` or an
    ``x5c`` chain) and are signed by ``key`` with ES256."""

    def __init__(
        self,
        *,
        issuer: str,
        service: str,
        key: ec.EllipticCurvePrivateKey,
        headers: dict[str, Any],
        passwords: Mapping[str, str],
        grants: Grants,
        expiry: int = 300,
    ) -> None:
        self.issuer = issuer
        self.service = service
        self.key = key
        self.headers = headers
        self.passwords = dict(passwords)
        self.grants = grants
        self.expiry = expiry
        self.requests: list[dict[str, Any]] = []
        issuer_self = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                authorization = self.headers.get("authorization")
                status, doc, extra = issuer_self.answer(self.path, authorization)
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for name, value in extra:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ServerThread(Handler)
        self.url = f"http://127.0.0.1:{self._server.port}/token"

    def token(
        self,
        subject: str,
        access: list[dict[str, Any]],
        *,
        key: ec.EllipticCurvePrivateKey | None = None,
        headers: dict[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token as this issuer signs it; ``key``, ``headers`` and ``claims`` override
        (for the forged, expired and foreign tokens)."""
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.service,
            "exp": now + self.expiry,
            "nbf": now - 1,
            "iat": now,
            "jti": uuid.uuid4().hex,
            "access": access,
            **claims,
        }
        return jwt.encode(
            body, key or self.key, "ES256", headers=self.headers if headers is None else headers
        )

    def answer(
        self, target: str, authorization: str | None
    ) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        url = urlsplit(target)
        if url.path != "/token":
            return 404, {"error": "not_found"}, []
        query = parse_qs(url.query)
        user = _basic_user(authorization)
        self.requests.append({**{k: v for k, v in query.items()}, "user": user})
        if query.get("service", [self.service])[0] != self.service:
            return 400, {"error": "invalid_request", "error_description": "unknown service"}, []
        name: str | None = None
        if user is not None:
            name, password = user
            if self.passwords.get(name) != password:
                challenge = [("www-authenticate", 'Basic realm="external"')]
                return 401, {"details": "incorrect username or password"}, challenge
        account = query.get("account", [""])[0]
        if account and name is not None and account != name:
            return 400, {"error": "invalid_request", "error_description": "wrong account"}, []
        access = self._granted(name, query.get("scope", []))
        token = self.token(name or "", access)
        issued = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        doc = {"token": token, "access_token": token, "expires_in": self.expiry}
        return 200, {**doc, "issued_at": issued}, []

    def _granted(self, user: str | None, scopes: list[str]) -> list[dict[str, Any]]:
        allowed = self.grants.get(user, {})
        access = []
        for value in scopes:
            for scope in value.split(" "):
                kind, _, rest = scope.partition(":")
                name, _, actions = rest.rpartition(":")
                if kind != "repository" or not name:
                    continue
                granted = sorted(set(actions.split(",")) & allowed.get(name, set()))
                if granted:
                    access.append({"type": "repository", "name": name, "actions": granted})
        return access

    def __enter__(self) -> ExternalIssuer:
        self._server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.__exit__(None, None, None)


def _basic_user(header: str | None) -> tuple[str, str] | None:
    """The Basic credentials; None without them or with empty ones (anonymous)."""
    if header is None or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return (user, password) if user else None
