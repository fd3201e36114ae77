"""Leases on SQLite rows: one holder at a time, until it releases or its lease expires.

Upload sessions (``uploads``, keyed by ``id``) and webhook endpoints (``webhook_cursors``,
keyed by ``name``) both carry ``lease`` (the holder's token, or NULL) and
``lease_expires`` (seconds since the epoch). These functions are the only SQL that takes,
renews and frees those two columns; each runs inside the caller's write transaction.

Invariants:

- A row can be taken when nobody holds it, its lease has expired, or the taker already
  holds it (a holder may take it again to extend it).
- Renew and release only act for the current holder, so a holder that lost the lease
  (it stalled past ``lease_expires`` and another took over) changes nothing.
- A token is ``"<instance>/<suffix>"`` with no ``/`` in the suffix: ``core/uploads.py``
  and ``events/webhooks.py`` make them so. ``release_of(instance)`` frees exactly the
  tokens of that instance name: compared as text, case-sensitively, with no wildcard
  characters, and not the tokens of a longer name (``a/b`` is not ``a``).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import Any

SEPARATOR = "/"


@dataclass(frozen=True, slots=True)
class LeasedTable:
    table: str
    key: str
    # A column set to the time whenever the lease is taken or renewed (uploads use it to
    # find abandoned sessions), or None.
    touched: str | None = None


UPLOADS = LeasedTable("uploads", "id", touched="touched")
WEBHOOKS = LeasedTable("webhook_cursors", "name")

# Who may take a row; binds (lease, now).
_TAKEABLE = "(lease IS NULL OR lease = ? OR lease_expires < ?)"


def take(
    conn: sqlite3.Connection,
    t: LeasedTable,
    key: str,
    lease: str,
    seconds: float,
    now: float,
    *,
    where: str = "",
    args: tuple[Any, ...] = (),
    returning: str | None = None,
) -> sqlite3.Cursor:
    """Give row ``key`` to ``lease`` for ``seconds`` if it can be taken and ``where`` (an
    extra ``AND`` condition binding ``args``) holds. The cursor's ``rowcount`` is 1 on
    success, and with ``returning`` it yields that column of the taken row."""
    touch = f", {t.touched} = ?" if t.touched else ""
    touch_args: tuple[Any, ...] = (now,) if t.touched else ()
    sql = (
        f"UPDATE {t.table} SET lease = ?, lease_expires = ?{touch}"
        f" WHERE {t.key} = ? AND {_TAKEABLE}{where}"
    )
    if returning is not None:
        sql += f" RETURNING {returning}"
    return conn.execute(sql, (lease, now + seconds, *touch_args, key, lease, now, *args))


def takeable(conn: sqlite3.Connection, t: LeasedTable, key: str, lease: str, now: float) -> bool:
    """Whether ``take`` would succeed now (a read: cheap to ask often)."""
    row = conn.execute(
        f"SELECT 1 FROM {t.table} WHERE {t.key} = ? AND {_TAKEABLE}", (key, lease, now)
    ).fetchone()
    return row is not None


def renew(
    conn: sqlite3.Connection, t: LeasedTable, key: str, lease: str, seconds: float, now: float
) -> bool:
    """Extend the holder's lease to ``now + seconds``; False if ``lease`` is not the holder."""
    touch = f", {t.touched} = ?" if t.touched else ""
    touch_args: tuple[Any, ...] = (now,) if t.touched else ()
    cur = conn.execute(
        f"UPDATE {t.table} SET lease_expires = ?{touch} WHERE {t.key} = ? AND lease = ?",
        (now + seconds, *touch_args, key, lease),
    )
    return cur.rowcount == 1


def release(conn: sqlite3.Connection, t: LeasedTable, key: str, lease: str) -> None:
    """Free the row if ``lease`` holds it (otherwise do nothing)."""
    conn.execute(
        f"UPDATE {t.table} SET lease = NULL, lease_expires = NULL WHERE {t.key} = ? AND lease = ?",
        (key, lease),
    )


def release_of(conn: sqlite3.Connection, t: LeasedTable, instance: str) -> int:
    """Free every lease of ``instance`` (an earlier run of it cannot still be using them);
    the number freed. Exact, not ``LIKE``: there ``_`` and ``%`` are wildcards and ASCII
    letters match either case, which freed other instances' live leases."""
    prefix = instance + SEPARATOR
    cur = conn.execute(
        f"UPDATE {t.table} SET lease = NULL, lease_expires = NULL"
        " WHERE substr(lease, 1, ?) = ? AND instr(substr(lease, ?), ?) = 0",
        (len(prefix), prefix, len(prefix) + 1, SEPARATOR),
    )
    return cur.rowcount
