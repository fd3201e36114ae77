"""The users file (htpasswd with bcrypt entries) and the verified-credential cache.

The file is what ``htpasswd -B`` and ``dockyard users`` write: one ``name:hash`` per line,
the hash a bcrypt ``$2y$``, ``$2b$`` or ``$2a$`` string. Blank lines and ``#`` comments are
skipped. Any other scheme (MD5 ``$apr1$``, SHA ``{SHA}``, crypt, plain text) or a malformed
line is an ``HtpasswdError`` naming the file and line: weak hashes are refused, not guessed.

``Users.verify`` re-reads the file when its mtime, size or inode changed (one ``stat`` per
call), so edits apply without a restart. A file that becomes unreadable or malformed
refuses every login until it is fixed (fail closed) and logs why.

bcrypt is slow on purpose (~0.25 s at cost 12), too slow for every request of a client
that sends Basic credentials each time. A verified (user, password) pair is cached for
``cache_seconds`` under an HMAC of the pair with a per-process random key, so the cache
holds no password and nothing that can be tested offline. A cache entry is bound to the
user's hash in the file: a changed or removed entry invalidates it. Wrong passwords are
never cached. Concurrent checks of the same pair share one bcrypt run.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import bcrypt

log = logging.getLogger("dockyard.auth")

BCRYPT_PREFIXES = (b"$2y$", b"$2b$", b"$2a$")
# bcrypt looks at the first 72 bytes only; longer passwords are refused, not truncated.
MAX_PASSWORD_BYTES = 72
CACHE_ENTRIES = 10_000


@functools.cache
def _dummy_hash() -> bytes:
    """A hash no password matches: unknown users cost one bcrypt too, so timing does not
    tell which names exist. Made on first use (a quarter second), not at import."""
    return bcrypt.hashpw(secrets.token_bytes(16), bcrypt.gensalt(12))


CheckPassword = Callable[[bytes, bytes], bool]


class HtpasswdError(ValueError):
    """The users file cannot be used; the message names the file and line."""


def _bcrypt_ok(hashed: bytes) -> bool:
    # $2y$NN$ + 53 characters of salt and hash in bcrypt's base64 alphabet.
    if len(hashed) != 60 or not hashed.startswith(BCRYPT_PREFIXES) or hashed[6:7] != b"$":
        return False
    if not hashed[4:6].isdigit() or not 4 <= int(hashed[4:6]) <= 31:
        return False
    alphabet = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    return all(c in alphabet for c in hashed[7:])


def _scheme(hashed: str) -> str:
    if hashed.startswith("$apr1$"):
        return "MD5 ($apr1$)"
    if hashed.startswith("{SHA}"):
        return "SHA-1 ({SHA})"
    if hashed.startswith(("$1$", "$5$", "$6$")):
        return f"crypt ({hashed[:3]})"
    if hashed.startswith("$2"):
        return "a malformed bcrypt hash"
    return "plain text or crypt"


def parse_htpasswd(text: str, source: str) -> dict[str, bytes]:
    """``name -> bcrypt hash`` from the text of a users file called ``source``."""
    users: dict[str, bytes] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{source}, line {number}"
        name, colon, hashed = line.partition(":")
        if not colon or not name or not hashed:
            raise HtpasswdError(f"{where}: expected NAME:HASH")
        if not valid_user_name(name):
            raise HtpasswdError(f"{where}: {name[:40]!r} is not a valid user name")
        encoded = hashed.encode("ascii", "replace")
        if not _bcrypt_ok(encoded):
            raise HtpasswdError(
                f"{where}: user {name!r} has {_scheme(hashed)}; only bcrypt entries are "
                "accepted (htpasswd -B, or dockyard users passwd)"
            )
        if name in users:
            raise HtpasswdError(f"{where}: user {name!r} appears twice")
        users[name] = encoded
    return users


def valid_user_name(name: str) -> bool:
    """Printable, no colon (the separator) and no space; "anonymous" is the rules' word
    for callers without credentials, so no user may be called that."""
    return (
        0 < len(name) <= 256
        and name.isprintable()
        and ":" not in name
        and " " not in name
        and name != "anonymous"
    )


@dataclass
class _Loaded:
    key: tuple[int, int, int] | None  # (mtime_ns, size, inode) of the file read
    users: dict[str, bytes]
    error: str | None = None


class Users:
    """The users of one htpasswd file, with the verified-credential cache."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        cache_seconds: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        check_password: CheckPassword = bcrypt.checkpw,
        max_concurrent_checks: int = 0,
    ) -> None:
        self.path = Path(path)
        self.cache_seconds = cache_seconds
        self._clock = clock
        self._check_password = check_password
        self._key = secrets.token_bytes(32)
        # HMAC(user, password) -> (expiry, the user's hash when it was verified)
        self._cache: OrderedDict[bytes, tuple[float, bytes]] = OrderedDict()
        self._inflight: dict[bytes, anyio.Event] = {}
        self._limiter = anyio.CapacityLimiter(max_concurrent_checks or (os.cpu_count() or 2))
        self._loaded = _Loaded(None, {})
        self.load()

    def load(self) -> None:
        """Read the file now; raises ``HtpasswdError`` (for start-up) if it is unusable."""
        try:
            st = self.path.stat()
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
            raise HtpasswdError(f"users file {self.path}: {reason}") from None
        self._loaded = _Loaded(
            (st.st_mtime_ns, st.st_size, st.st_ino), parse_htpasswd(text, str(self.path))
        )

    def _current(self) -> dict[str, bytes]:
        """The users, re-read if the file changed; none while the file is unusable."""
        try:
            st = self.path.stat()
            key: tuple[int, int, int] | None = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            key = None
        if key != self._loaded.key:
            try:
                self.load()
                log.info("users file %s reloaded (%d users)", self.path, len(self.names()))
            except HtpasswdError as e:
                self._loaded = _Loaded(key, {}, str(e))
                log.error("%s; every login is refused until it is fixed", e)
        return self._loaded.users

    def names(self) -> list[str]:
        return sorted(self._loaded.users)

    def exists(self, user: str) -> bool:
        return user in self._current()

    def _cache_key(self, user: str, password: str) -> bytes:
        message = user.encode() + b"\0" + password.encode("utf-8", "surrogatepass")
        # The one-shot form: hmac.new() builds a Python object per request.
        return hmac.digest(self._key, message, "sha256")

    async def verify(self, user: str, password: str) -> bool:
        """Whether ``password`` is ``user``'s (bcrypt runs in a worker thread)."""
        secret = password.encode("utf-8", "surrogatepass")
        if len(secret) > MAX_PASSWORD_BYTES or b"\0" in secret:
            return False
        hashed = self._current().get(user)
        key = self._cache_key(user, password)
        while True:
            now = self._clock()
            cached = self._cache.get(key)
            if cached is not None:
                expires, verified_hash = cached
                if hashed is not None and expires > now and verified_hash == hashed:
                    return True
                del self._cache[key]
            pending = self._inflight.get(key)
            if pending is None:
                break
            # The same pair is being checked right now: use that answer.
            await pending.wait()
            if key not in self._cache:
                return False
        done = self._inflight[key] = anyio.Event()
        try:
            ok = await anyio.to_thread.run_sync(
                self._check_password,
                secret,
                hashed if hashed is not None else _dummy_hash(),
                limiter=self._limiter,
            )
            if ok and hashed is not None:
                self._cache[key] = (self._clock() + self.cache_seconds, hashed)
                if len(self._cache) > CACHE_ENTRIES:
                    self._cache.popitem(last=False)
                return True
            return False
        finally:
            del self._inflight[key]
            done.set()
