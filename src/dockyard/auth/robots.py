"""Robot tokens: long-lived, scoped, revocable credentials for pipelines (docs/ci.md).

A robot logs in as user ``robot$<name>`` with the secret ``dockyard tokens create``
printed once, as Basic credentials (``auth.mode = "basic"``) or at the built-in token
endpoint (``"token"``). Its scopes are its only rules: ``[[access]]`` rules never apply to
it, and a token issued to it grants what was asked for within those scopes, nothing else.

    scope   = "repository:" GLOB ":" ACTION ("," ACTION)*
    GLOB    = a repository name in which "*" also matches "/" (globs.py)
    ACTION  = "pull" | "push" | "delete" | "*" (all three)
    name    = [a-z0-9._-]{1,64}

The secret (``secrets.token_urlsafe(32)``: 256 random bits) is stored only as its SHA-256
(``meta/robots.py``). A fast hash is enough here, unlike for passwords: slow hashing
protects guessable secrets, and nobody guesses 256 random bits, so a leaked hash reveals
nothing usable, and checking costs microseconds on every request.

Revocation and expiry are checked on every use. A worker remembers a robot's row for
``VERIFIED_SECONDS`` at most, so a revocation (by the CLI, in the shared database) is seen
by every worker within that time; ``last_used`` is written at most once a minute.

Errors: ``RobotError`` (bad input, nothing changed)
            ├── ``InvalidRobotName``
            ├── ``InvalidRobotScope``
            ├── ``InvalidDuration``
            └── ``RobotExists`` (a live robot has the name)
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from dockyard.auth import Identity
from dockyard.auth.scopes import ResourceScope
from dockyard.globs import glob_matches
from dockyard.meta.robots import RobotToken
from dockyard.meta.store import Database
from dockyard.oci.names import is_valid_name

ROBOT_PREFIX = "robot$"
# Ephemeral robots made by pull_credentials (for scanners).
EPHEMERAL_PREFIX = "scan-"
ROBOT_ACTIONS = ("pull", "push", "delete")
_NAME = re.compile(r"[a-z0-9._-]{1,64}")
_DURATION = re.compile(r"(\d+)([dhms])")
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
# How long a worker trusts a robot row it read: the most a revocation waits to apply.
VERIFIED_SECONDS = 5.0
# last_used is written at most this often per robot.
TOUCH_INTERVAL = 60.0
CACHE_ENTRIES = 10_000


class RobotError(ValueError):
    """Bad input for a robot token; nothing was changed."""


class InvalidRobotName(RobotError):
    pass


class InvalidRobotScope(RobotError):
    pass


class InvalidDuration(RobotError):
    pass


class RobotExists(RobotError):
    pass


def check_name(name: str) -> str:
    """``name`` (``robot$`` prefix allowed) without its prefix; raises InvalidRobotName."""
    bare = name.removeprefix(ROBOT_PREFIX)
    if not _NAME.fullmatch(bare):
        raise InvalidRobotName(f"robot name {name[:80]!r}: 1 to 64 of a-z, 0-9, '.', '_' and '-'")
    return bare


def parse_duration(text: str) -> float | None:
    """Seconds of ``30d``, ``12h``, ``90m``, ``45s``; None for ``0`` or ``never``."""
    value = text.strip().lower()
    if value in ("0", "never"):
        return None
    match = _DURATION.fullmatch(value)
    if match is None or int(match[1]) == 0:
        raise InvalidDuration(
            f"duration {text[:40]!r}: a number and a unit (30d, 12h, 90m, 45s), or 0/never"
        )
    return float(int(match[1]) * _UNITS[match[2]])


@dataclass(frozen=True, slots=True)
class RobotScope:
    """Actions on the repositories a glob matches."""

    repositories: str
    actions: frozenset[str]

    def __str__(self) -> str:
        ordered = [a for a in ROBOT_ACTIONS if a in self.actions]
        return f"repository:{self.repositories}:{','.join(ordered)}"


def parse_robot_scope(text: str) -> RobotScope:
    """One scope string; raises InvalidRobotScope."""
    kind, _, rest = text.strip().partition(":")
    glob, sep, actions_text = rest.rpartition(":")
    bad = f"scope {text[:200]!r}: expected repository:GLOB:ACTIONS (pull, push, delete, *)"
    # A glob is a repository name where "*" and "?" stand for characters.
    if kind != "repository" or not sep or not is_valid_name(re.sub(r"[*?]", "a", glob)):
        raise InvalidRobotScope(bad)
    actions = set(actions_text.split(","))
    if "*" in actions:
        actions = (actions - {"*"}) | set(ROBOT_ACTIONS)
    if not actions or not actions <= set(ROBOT_ACTIONS):
        raise InvalidRobotScope(bad)
    return RobotScope(glob, frozenset(actions))


def parse_robot_scopes(texts: Iterable[str]) -> tuple[RobotScope, ...]:
    """Scope strings, each possibly several separated by spaces; at least one."""
    scopes = tuple(parse_robot_scope(t) for text in texts for t in text.split())
    if not scopes:
        raise InvalidRobotScope("a robot needs at least one --scope")
    return scopes


def hash_secret(secret: str) -> str:
    # SHA-256 suffices for 256 random bits (module docstring): nothing to brute-force.
    return "sha256:" + hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True, slots=True)
class RobotIdentity(Identity):
    """A robot caller: may do what its ``scopes`` allow, and nothing else."""

    scopes: tuple[RobotScope, ...] = ()

    def allowed_actions(self, repository: str) -> frozenset[str]:
        actions: set[str] = set()
        for scope in self.scopes:
            if glob_matches(repository, scope.repositories):
                actions |= scope.actions
        return frozenset(actions)

    def may(self, repository: str | None, action: str) -> bool:
        """On ``repository``, or with None on some repository (as AccessRules.allows)."""
        if repository is None:
            return any(action in s.actions for s in self.scopes)
        return action in self.allowed_actions(repository)

    def grant(self, scope: ResourceScope) -> frozenset[str]:
        """The token issuer's grant: repositories within the scopes; no catalog."""
        if scope.type == "repository" and not scope.resource_class:
            return self.allowed_actions(scope.name)
        return frozenset()


def new_robot(
    name: str,
    scopes: Sequence[RobotScope],
    expires_in: float | None,
    now: float,
    created_by: str | None = None,
) -> tuple[RobotToken, str]:
    """The row of a new robot and its secret (to print once; the row holds its hash)."""
    secret = secrets.token_urlsafe(32)
    row = RobotToken(
        name=check_name(name),
        secret_hash=hash_secret(secret),
        scopes=json.dumps([str(s) for s in scopes]),
        created=now,
        expires=None if expires_in is None else now + expires_in,
        created_by=created_by,
    )
    return row, secret


def row_scopes(row: RobotToken) -> tuple[RobotScope, ...]:
    """A row's scopes; a row that cannot be read grants nothing."""
    try:
        texts = json.loads(row.scopes)
        return tuple(parse_robot_scope(t) for t in texts if isinstance(t, str))
    except (ValueError, TypeError):
        return ()


def robot_status(row: RobotToken, now: float) -> str:
    """ "active", "revoked" or "expired"."""
    if row.revoked is not None:
        return "revoked"
    if row.expires is not None and row.expires <= now:
        return "expired"
    return "active"


class RobotTokens:
    """Robots for a running registry: logging in, and scanners' pull credentials."""

    def __init__(
        self,
        db: Database,
        clock: Callable[[], float] = time.time,
        verified_seconds: float = VERIFIED_SECONDS,
    ) -> None:
        self._db = db
        self._clock = clock
        self._monotonic = time.monotonic
        self.verified_seconds = verified_seconds
        # name -> (monotonic time read, row)
        self._rows: OrderedDict[str, tuple[float, RobotToken]] = OrderedDict()
        self._touched: dict[str, float] = {}

    async def create(
        self,
        name: str,
        scopes: Sequence[RobotScope],
        expires_in: float | None,
        created_by: str | None = None,
    ) -> str:
        """Store a new robot; its secret. Raises RobotError (RobotExists)."""
        row, secret = new_robot(name, scopes, expires_in, self._clock(), created_by)
        if not await self._db.run(self._db.meta.robot_create, row):
            raise RobotExists(f"robot {ROBOT_PREFIX}{row.name} exists; revoke it first")
        self._rows.pop(row.name, None)
        return secret

    async def _row(self, name: str) -> RobotToken | None:
        now = self._monotonic()
        cached = self._rows.get(name)
        if cached is not None and now - cached[0] < self.verified_seconds:
            return cached[1]
        row = await self._db.run(self._db.meta.robot_get, name)
        if row is None:
            # Not remembered: a robot created a moment later works at once (guessing
            # names is slowed by the failed-login limiter, not by this cache).
            self._rows.pop(name, None)
            return None
        self._rows[name] = (now, row)
        self._rows.move_to_end(name)
        if len(self._rows) > CACHE_ENTRIES:
            self._rows.popitem(last=False)
        return row

    async def authenticate(self, user: str, secret: str) -> RobotIdentity | None:
        """The robot ``user`` (``robot$<name>``) if ``secret`` is its secret and it is
        neither revoked nor expired; None otherwise (one answer for every reason)."""
        name = user.removeprefix(ROBOT_PREFIX)
        if not user.startswith(ROBOT_PREFIX) or not _NAME.fullmatch(name):
            return None
        row = await self._row(name)
        if row is None or robot_status(row, self._clock()) != "active":
            return None
        if not hmac.compare_digest(row.secret_hash, hash_secret(secret)):
            return None
        await self._touch(name)
        return RobotIdentity(user, "robot", scopes=row_scopes(row))

    async def active(self, user: str) -> bool:
        """Whether robot ``user`` may still log in (a token issued to it stays good)."""
        name = user.removeprefix(ROBOT_PREFIX)
        if not _NAME.fullmatch(name):
            return False
        row = await self._row(name)
        return row is not None and robot_status(row, self._clock()) == "active"

    async def _touch(self, name: str) -> None:
        now = self._monotonic()
        if now - self._touched.get(name, -TOUCH_INTERVAL) < TOUCH_INTERVAL:
            return
        if len(self._touched) > CACHE_ENTRIES:
            self._touched.clear()
        self._touched[name] = now
        await self._db.run(self._db.meta.robot_touch, name, TOUCH_INTERVAL)

    async def pull_credentials(self, repository: str, seconds: float) -> tuple[str, str] | None:
        """(user, secret) of a new robot that may only pull ``repository``, for
        ``seconds``. Expired ones made before are deleted first (a cheap indexed delete)."""
        if not is_valid_name(repository):
            raise InvalidRobotScope(f"repository {repository[:200]!r} is not a valid name")
        await self._db.run(self._db.meta.robot_delete_expired, EPHEMERAL_PREFIX)
        name = EPHEMERAL_PREFIX + secrets.token_hex(8)
        scope = RobotScope(repository, frozenset({"pull"}))
        secret = await self.create(name, [scope], max(seconds, 1.0), created_by="scanner")
        return ROBOT_PREFIX + name, secret
