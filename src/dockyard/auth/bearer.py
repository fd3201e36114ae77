"""The ``WWW-Authenticate: Bearer`` challenge of token auth (RFC 6750, distribution's
token spec): where to get a token (``realm``), for which ``service``, with which
``scope``, and, when a token was sent, why it did not do (``error``)."""

from __future__ import annotations

from collections.abc import Sequence

from dockyard.auth import Scope
from dockyard.auth.scopes import scope_string

# RFC 6750 section 3.1. Distribution answers both with 401, so that clients fetch a new
# token for the scope named, rather than give up as they do on 403.
INVALID_TOKEN = "invalid_token"
INSUFFICIENT_SCOPE = "insufficient_scope"


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def bearer_challenge(
    realm: str, service: str, scopes: Sequence[Scope] = (), error: str | None = None
) -> str:
    """The header value, e.g. ``Bearer realm="https://r/auth/token",service="r",
    scope="repository:x:pull,push",error="insufficient_scope"``."""
    parts = [f"realm={_quoted(realm)}", f"service={_quoted(service)}"]
    named = [text for text in map(scope_string, scopes) if text is not None]
    if named:
        parts.append(f"scope={_quoted(' '.join(named))}")
    if error is not None:
        parts.append(f"error={_quoted(error)}")
    return "Bearer " + ",".join(parts)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for any other."""
    if authorization is None:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token
