"""The built-in token service's endpoint (distribution's token and OAuth2 specs) and JWKS.

``GET <path>?service=&scope=&account=&offline_token=&client_id=`` with Basic credentials
or none (anonymous) answers ``{"token", "access_token", "expires_in", "issued_at"}`` and,
for ``offline_token=true``, a ``refresh_token``. ``POST <path>`` with a form body is the
OAuth2 flavour: ``grant_type=password`` (username, password) or ``refresh_token``,
with ``service``, ``client_id``, ``scope`` (space-separated) and ``access_type=offline``
for a refresh token. The JWKS of the signing key is served at ``<jwks path>`` for
registries that verify these tokens.

Errors are OAuth2's (RFC 6749 section 5.2), not the OCI error codes of ``/v2/``: a JSON
``{"error", "error_description"}``. The POST form answers ``invalid_request``,
``unsupported_grant_type``, ``invalid_grant`` (wrong password, bad refresh token) with 400
and ``invalid_client`` with 401. The GET form answers its bad requests the same way; wrong
Basic credentials there keep distribution's 401 ``UNAUTHORIZED`` with a Basic challenge,
which docker and containers/image clients turn into "invalid username or password".

Robot tokens (``auth/robots.py``) log in here as user ``robot$<name>``: the token grants
what was asked ∩ the robot's scopes, never with a refresh token. A wrong, revoked or
expired robot gets the wrong-password answer and counts as a failed login; while the
failed-login limiter says wait, 429 ``{"error": "too_many_requests"}`` with Retry-After.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from dockyard.auth import ANONYMOUS, Identity
from dockyard.auth.issuer import IssuedToken, RefreshTokenInvalid, TokenIssuer
from dockyard.auth.limits import LoginLimiter
from dockyard.auth.robots import ROBOT_PREFIX, RobotIdentity, RobotTokens
from dockyard.auth.scopes import ResourceScope, TooManyScopes, parse_scopes
from dockyard.core import errors as err
from dockyard.http.errors import Code, error_body
from dockyard.http.request import Request, Response, json_response

VerifyPassword = Callable[[str, str], Awaitable[bool]]

_FORM = "application/x-www-form-urlencoded"
# RFC 6749 section 5.2 error codes.
INVALID_REQUEST = "invalid_request"
INVALID_CLIENT = "invalid_client"
INVALID_GRANT = "invalid_grant"
UNSUPPORTED_GRANT_TYPE = "unsupported_grant_type"
_MAX_FORM_BYTES = 64 * 1024
# RFC 6749 5.1: token answers must not be cached.
_NO_STORE = [("cache-control", "no-store"), ("pragma", "no-cache")]


def _issued_at(token: IssuedToken) -> str:
    moment = datetime.datetime.fromtimestamp(token.issued_at, datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


class OAuthError(Exception):
    """A refused token request: an RFC 6749 error code and its description."""

    def __init__(self, error: str, description: str) -> None:
        super().__init__(description)
        self.error = error
        self.description = description


def basic_credentials(header: str | None) -> tuple[str, str] | None:
    """User and password of an ``Authorization: Basic`` header; None without one (or with
    empty ones). Raises OAuthError for a malformed one."""
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        raise OAuthError(INVALID_REQUEST, "the token endpoint takes Basic credentials or none")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise OAuthError(INVALID_REQUEST, "malformed Basic credentials") from None
    user, sep, password = decoded.partition(":")
    if sep and not user and not password:
        # Empty credentials: what containers/image (skopeo, podman) sends when it has
        # none. They mean anonymous.
        return None
    if not sep or not user:
        raise OAuthError(INVALID_REQUEST, "malformed Basic credentials")
    return user, password


class TooManyLogins(Exception):
    """The failed-login limiter says wait (robot logins): 429 with Retry-After."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many failed logins; retry later")
        self.retry_after = retry_after


class TokenEndpoint:
    def __init__(
        self,
        issuer: TokenIssuer,
        verify_password: VerifyPassword,
        jwks: Callable[[], dict[str, Any]],
        robots: RobotTokens | None = None,
        logins: LoginLimiter | None = None,
    ) -> None:
        self.issuer = issuer
        self._verify_password = verify_password
        self._jwks = jwks
        # Robot tokens log in as "robot$<name>"; their scopes bound what is granted.
        self.robots = robots
        self.logins = logins

    async def _robot_login(self, req: Request, user: str, password: str) -> Identity | None:
        """The robot ``user`` if ``password`` is its live secret; failures count towards
        the failed-login limiter (raises TooManyLogins while it says wait)."""
        assert self.robots is not None
        if self.logins is not None:
            wait = self.logins.check(req.client, user)
            if wait is not None:
                raise TooManyLogins(wait)
        robot = await self.robots.authenticate(user, password)
        if robot is None and self.logins is not None:
            self.logins.failed(req.client, user)
        return robot

    def _too_many(self, e: TooManyLogins) -> Response:
        doc = {"error": "too_many_requests", "error_description": str(e)}
        retry = [("retry-after", str(max(1, round(e.retry_after))))]
        return json_response(429, doc, [*retry, *_NO_STORE])

    def _is_robot(self, user: str) -> bool:
        return self.robots is not None and user.startswith(ROBOT_PREFIX)

    def _basic_challenge(self) -> tuple[str, str]:
        realm = self.issuer.service.replace("\\", "").replace('"', "")
        return ("www-authenticate", f'Basic realm="{realm}"')

    def _unauthorized(self, message: str) -> Response:
        body = error_body(Code.UNAUTHORIZED, message)
        headers = [("content-type", "application/json"), self._basic_challenge(), *_NO_STORE]
        return Response(401, headers, body)

    def _oauth_error(self, error: OAuthError) -> Response:
        """The RFC 6749 section 5.2 answer: 400, but 401 with a challenge of the scheme the
        client tried for invalid_client (as section 5.2 asks)."""
        doc = {"error": error.error, "error_description": error.description}
        if error.error == INVALID_CLIENT:
            return json_response(401, doc, [self._basic_challenge(), *_NO_STORE])
        return json_response(400, doc, _NO_STORE)

    def _check_service(self, service: str | None) -> None:
        if service and service != self.issuer.service:
            raise OAuthError(INVALID_REQUEST, f"unknown service {service[:100]!r}")

    def _scopes(self, values: list[str]) -> list[ResourceScope]:
        try:
            return parse_scopes(values)
        except TooManyScopes as e:
            raise OAuthError(INVALID_REQUEST, str(e)) from None

    async def get(self, req: Request, p: dict[str, str]) -> Response:
        try:
            return await self._get(req)
        except OAuthError as e:
            return self._oauth_error(e)
        except TooManyLogins as e:
            return self._too_many(e)

    async def post(self, req: Request, p: dict[str, str]) -> Response:
        try:
            return await self._post(req)
        except OAuthError as e:
            return self._oauth_error(e)
        except TooManyLogins as e:
            return self._too_many(e)

    async def _get(self, req: Request) -> Response:
        self._check_service(req.arg("service"))
        credentials = basic_credentials(req.headers.get("authorization"))
        identity: Identity = ANONYMOUS
        if credentials is not None:
            user, password = credentials
            if self._is_robot(user):
                robot = await self._robot_login(req, user, password)
                if robot is None:
                    return self._unauthorized("invalid username or password")
                identity = robot
            elif not await self._verify_password(user, password):
                return self._unauthorized("invalid username or password")
            else:
                identity = Identity(user)
        account = req.arg("account")
        if account and identity.name is not None and account != identity.name:
            raise OAuthError(INVALID_REQUEST, "account does not match the credentials")
        offline = (req.arg("offline_token") or "").lower() == "true"
        # No refresh token for a robot: it logs in with its secret each time, so
        # revocation and expiry apply (docker then keeps the secret as its login).
        offline = offline and not isinstance(identity, RobotIdentity)
        token = self.issuer.issue(identity, self._scopes(req.query.get("scope", [])), offline)
        doc: dict[str, object] = {
            "token": token.token,
            "access_token": token.token,
            "expires_in": token.expires_in,
            "issued_at": _issued_at(token),
        }
        if token.refresh_token is not None:
            doc["refresh_token"] = token.refresh_token
        return json_response(200, doc, _NO_STORE)

    async def _post(self, req: Request) -> Response:
        if req.headers.get("authorization") is not None:
            # dockyard registers no OAuth2 clients: client_id names one, nothing
            # authenticates it, so an attempt to (RFC 6749 2.3) cannot succeed.
            raise OAuthError(
                INVALID_CLIENT,
                "no client authentication here: send client_id, and the user's credentials"
                " as username and password in the form",
            )
        form = await self._form(req)

        def field(name: str, required: bool = False) -> str:
            values = form.get(name)
            if not values or not values[0]:
                if required:
                    raise OAuthError(INVALID_REQUEST, f"{name} is required")
                return ""
            return values[0]

        self._check_service(field("service"))
        field("client_id", required=True)
        grant_type = field("grant_type", required=True)
        if grant_type == "password":
            user, password = field("username", required=True), field("password")
            robot = await self._robot_login(req, user, password) if self._is_robot(user) else None
            if robot is not None:
                identity = robot
            elif self._is_robot(user) or not await self._verify_password(user, password):
                raise OAuthError(INVALID_GRANT, "invalid username or password")
            else:
                identity = Identity(user)
        elif grant_type == "refresh_token":
            try:
                identity = await self.issuer.redeem(field("refresh_token", required=True))
            except RefreshTokenInvalid as e:
                raise OAuthError(INVALID_GRANT, str(e)) from None
        else:
            raise OAuthError(
                UNSUPPORTED_GRANT_TYPE,
                f"unsupported grant_type {grant_type[:40]!r} (password, refresh_token)",
            )
        offline = field("access_type") == "offline" and not isinstance(identity, RobotIdentity)
        token = self.issuer.issue(identity, self._scopes(form.get("scope", [])), offline)
        doc: dict[str, object] = {
            "access_token": token.token,
            "token_type": "Bearer",
            "expires_in": token.expires_in,
            "issued_at": _issued_at(token),
            "scope": " ".join(str(s) for s in token.access),
        }
        if token.refresh_token is not None:
            doc["refresh_token"] = token.refresh_token
        return json_response(200, doc, _NO_STORE)

    async def _form(self, req: Request) -> dict[str, list[str]]:
        media_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if media_type != _FORM:
            raise OAuthError(INVALID_REQUEST, f"the token endpoint takes {_FORM} bodies")
        too_big = OAuthError(INVALID_REQUEST, f"form body over {_MAX_FORM_BYTES} bytes")
        try:
            length = req.content_length()
        except err.SizeInvalid:
            raise OAuthError(INVALID_REQUEST, "malformed Content-Length") from None
        if length is not None and length > _MAX_FORM_BYTES:
            raise too_big
        body = bytearray()
        async for chunk in req.body():
            body += chunk
            if len(body) > _MAX_FORM_BYTES:
                raise too_big
        try:
            text = body.decode("utf-8")
            return parse_qs(
                text, keep_blank_values=True, strict_parsing=bool(text), max_num_fields=200
            )
        except (UnicodeDecodeError, ValueError):
            raise OAuthError(INVALID_REQUEST, "malformed form body") from None

    async def jwks(self, req: Request, p: dict[str, str]) -> Response:
        return json_response(200, self._jwks(), [("cache-control", "max-age=300")])
