"""Leases on PostgreSQL rows: ``meta/leases.py``'s SQL in PostgreSQL's dialect.

The invariants are those of ``meta/leases.py`` (its docstring is the contract). Each
statement is one conditional ``UPDATE``: PostgreSQL re-checks the condition on the newest
version of the row after waiting for a concurrent writer, so two takers never both win.
"""

from __future__ import annotations

from typing import Any

import psycopg

from dockyard.meta.leases import SEPARATOR, LeasedTable

Conn = psycopg.Connection[tuple[Any, ...]]
Cursor = psycopg.Cursor[tuple[Any, ...]]

# Who may take a row; binds (lease, now).
_TAKEABLE = "(lease IS NULL OR lease = %s OR lease_expires < %s)"


def take(
    conn: Conn,
    t: LeasedTable,
    key: str,
    lease: str,
    seconds: float,
    now: float,
    *,
    where: str = "",
    args: tuple[Any, ...] = (),
    returning: str | None = None,
) -> Cursor:
    """Give row ``key`` to ``lease`` for ``seconds`` (see ``meta.leases.take``)."""
    touch = f", {t.touched} = %s" if t.touched else ""
    touch_args: tuple[Any, ...] = (now,) if t.touched else ()
    sql = (
        f"UPDATE {t.table} SET lease = %s, lease_expires = %s{touch}"
        f" WHERE {t.key} = %s AND {_TAKEABLE}{where}"
    )
    if returning is not None:
        sql += f" RETURNING {returning}"
    return conn.execute(sql, (lease, now + seconds, *touch_args, key, lease, now, *args))


def takeable(conn: Conn, t: LeasedTable, key: str, lease: str, now: float) -> bool:
    """Whether ``take`` would succeed now (a read: cheap to ask often)."""
    row = conn.execute(
        f"SELECT 1 FROM {t.table} WHERE {t.key} = %s AND {_TAKEABLE}", (key, lease, now)
    ).fetchone()
    return row is not None


def renew(conn: Conn, t: LeasedTable, key: str, lease: str, seconds: float, now: float) -> bool:
    """Extend the holder's lease to ``now + seconds``; False if ``lease`` is not the holder."""
    touch = f", {t.touched} = %s" if t.touched else ""
    touch_args: tuple[Any, ...] = (now,) if t.touched else ()
    cur = conn.execute(
        f"UPDATE {t.table} SET lease_expires = %s{touch} WHERE {t.key} = %s AND lease = %s",
        (now + seconds, *touch_args, key, lease),
    )
    return cur.rowcount == 1


def release(conn: Conn, t: LeasedTable, key: str, lease: str) -> None:
    """Free the row if ``lease`` holds it (otherwise do nothing)."""
    conn.execute(
        f"UPDATE {t.table} SET lease = NULL, lease_expires = NULL"
        f" WHERE {t.key} = %s AND lease = %s",
        (key, lease),
    )


def release_of(conn: Conn, t: LeasedTable, instance: str) -> int:
    """Free every lease of exactly ``instance`` (see ``meta.leases.release_of``): compared
    as text, never ``LIKE``."""
    prefix = instance + SEPARATOR
    cur = conn.execute(
        f"UPDATE {t.table} SET lease = NULL, lease_expires = NULL"
        " WHERE left(lease, %s::int) = %s AND strpos(substr(lease, %s::int), %s) = 0",
        (len(prefix), prefix, len(prefix) + 1, SEPARATOR),
    )
    return cur.rowcount
