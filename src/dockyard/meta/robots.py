"""Robot tokens' rows (table ``robot_tokens``, migration 7), written once for both dialects:
``RobotStore`` is a mixin both ``SQLiteMeta`` and ``PostgresMeta`` inherit, its SQL written
with ``?`` and bound to the store's parameter mark (``lease_sql.mark``).

A row is a robot's name (without the ``robot$`` prefix), the hash of its secret (never the
secret: ``auth/robots.py`` hashes), its scopes as JSON text, and times in seconds since the
epoch: created, expires (NULL: never), revoked (NULL: not), last_used. A name is taken
while its robot is live; a revoked or expired robot's name may be given to a new one (the
row is replaced, so the old secret stops working for good).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from dockyard.meta.leases import LeaseSQL

_COLUMNS = "name, secret_hash, scopes, created, expires, revoked, last_used, created_by"
# Replaces only a robot that can no longer log in (revoked or expired).
_CREATE = (
    f"INSERT INTO robot_tokens ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, NULL, NULL, ?)"
    " ON CONFLICT (name) DO UPDATE SET secret_hash = excluded.secret_hash,"
    " scopes = excluded.scopes, created = excluded.created, expires = excluded.expires,"
    " revoked = NULL, last_used = NULL, created_by = excluded.created_by"
    " WHERE robot_tokens.revoked IS NOT NULL"
    " OR (robot_tokens.expires IS NOT NULL AND robot_tokens.expires <= ?)"
)
# At most one write per robot per ``min_interval``: a busy pipeline does not write per
# request.
_TOUCH = (
    "UPDATE robot_tokens SET last_used = ? WHERE name = ? AND (last_used IS NULL OR last_used <= ?)"
)


@dataclass(frozen=True)
class RobotToken:
    name: str
    secret_hash: str
    scopes: str  # JSON text: a list of scope strings
    created: float
    expires: float | None = None
    revoked: float | None = None
    last_used: float | None = None
    created_by: str | None = None


class RobotRecords(Protocol):
    """Robot tokens' rows (``auth/robots.py`` is the one user)."""

    def robot_create(self, token: RobotToken) -> bool:
        """Store ``token``; False (nothing changed) when a live robot has its name."""

    def robot_get(self, name: str) -> RobotToken | None: ...

    def robot_list(self) -> list[RobotToken]:
        """Every robot, revoked and expired ones too, by name."""

    def robot_revoke(self, name: str) -> bool:
        """Mark the robot revoked now; False when there is no such robot (a robot
        already revoked keeps its first revocation time and answers True)."""

    def robot_touch(self, name: str, min_interval: float) -> None:
        """Set ``last_used`` to now unless it was set less than ``min_interval`` ago."""

    def robot_delete_expired(self, prefix: str) -> int:
        """Delete the robots whose name starts with ``prefix`` (letters, digits, ``-``)
        and that have expired; how many."""


class RobotStore:
    """The ``RobotRecords`` methods over a store's dialect, transactions and clock."""

    lease_sql: LeaseSQL
    _clock: Callable[[], float]

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.lease_sql.mark)

    def robot_create(self, token: RobotToken) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                self._sql(_CREATE),
                (
                    token.name,
                    token.secret_hash,
                    token.scopes,
                    token.created,
                    token.expires,
                    token.created_by,
                    self._clock(),
                ),
            )
            return bool(cur.rowcount == 1)

    def robot_get(self, name: str) -> RobotToken | None:
        with self._read() as conn:
            row = conn.execute(
                self._sql(f"SELECT {_COLUMNS} FROM robot_tokens WHERE name = ?"), (name,)
            ).fetchone()
        return None if row is None else RobotToken(*row)

    def robot_list(self) -> list[RobotToken]:
        with self._read() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM robot_tokens ORDER BY name").fetchall()
        return [RobotToken(*row) for row in rows]

    def robot_revoke(self, name: str) -> bool:
        with self._write() as conn:
            cur = conn.execute(
                self._sql("UPDATE robot_tokens SET revoked = COALESCE(revoked, ?) WHERE name = ?"),
                (self._clock(), name),
            )
            return bool(cur.rowcount == 1)

    def robot_touch(self, name: str, min_interval: float) -> None:
        now = self._clock()
        with self._write() as conn:
            conn.execute(self._sql(_TOUCH), (now, name, now - min_interval))

    def robot_delete_expired(self, prefix: str) -> int:
        if not prefix or not all(c.isalnum() or c == "-" for c in prefix):
            raise ValueError(f"robot name prefix {prefix!r}: letters, digits and - only")
        with self._write() as conn:
            cur = conn.execute(
                self._sql(
                    "DELETE FROM robot_tokens WHERE name LIKE ? AND expires IS NOT NULL"
                    " AND expires <= ?"
                ),
                (prefix + "%", self._clock()),
            )
            return int(cur.rowcount)
