"""One prepared statement on an inline connection, driven through libpq directly.

The manifest and blob HEAD/GET reads run on the event loop thread, once per request. Through
``conn.execute`` a read cost 20-25 client CPU-us more than the same statement through
libpq (cursor, adapters, row maker and psycopg's wait loop, per call); here the statement
is prepared once per connection, its text parameters go in as bytes and its one row
comes back in binary as a list of column bytes, which the caller decodes.

The wait for the answer is bounded on this side too: a server that stops answering (a hung
host, a dropped network) would otherwise stall the event loop until TCP gives up, as
``statement_timeout`` only works while the server runs. The connection is then closed
(its statement may still be in flight) and the caller retries in a worker thread.
"""

from __future__ import annotations

import select
import time
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg
from psycopg import pq

Row = list[bytes | None]


@dataclass(frozen=True, slots=True)
class Statement:
    name: bytes  # the prepared statement's name on each connection
    sql: bytes  # with $1, $2 ... placeholders


def read_row(
    conn: psycopg.Connection[tuple[object, ...]],
    prepared: set[bytes],
    statement: Statement,
    params: Sequence[str],
    timeout: float,
) -> Row | None:
    """The statement's first row (None if none); ``prepared`` holds the names prepared on
    ``conn`` so far. Any failure is ``psycopg.OperationalError``."""
    if any("\x00" in p for p in params):
        # libpq would cut a text parameter at the NUL (and match "v1" for "v1\0x");
        # PostgreSQL text cannot hold one, so no row can match.
        return None
    pgconn = conn.pgconn
    deadline = time.monotonic() + timeout
    try:
        if statement.name not in prepared:
            pgconn.send_prepare(statement.name, statement.sql)
            _check(_result(conn, deadline), pq.ExecStatus.COMMAND_OK)
            prepared.add(statement.name)
        pgconn.send_query_prepared(
            statement.name, [p.encode() for p in params], result_format=pq.Format.BINARY
        )
        result = _check(_result(conn, deadline), pq.ExecStatus.TUPLES_OK)
    except TimeoutError:
        conn.close()
        raise psycopg.OperationalError(f"no answer within {timeout} s") from None
    if result.ntuples == 0:
        return None
    return [result.get_value(0, i) for i in range(result.nfields)]


def _check(result: pq.abc.PGresult, expected: pq.ExecStatus) -> pq.abc.PGresult:
    if result.status != expected:
        message = result.error_message.decode(errors="replace").strip()
        raise psycopg.OperationalError(message or f"unexpected status {result.status}")
    return result


def _result(conn: psycopg.Connection[tuple[object, ...]], deadline: float) -> pq.abc.PGresult:
    """Send what is buffered, then collect the statement's result (libpq's async API)."""
    pgconn = conn.pgconn
    while pgconn.flush():
        _wait(pgconn.socket, select.POLLOUT, deadline)
    first: pq.abc.PGresult | None = None
    while True:
        while pgconn.is_busy():
            _wait(pgconn.socket, select.POLLIN, deadline)
            pgconn.consume_input()
        result = pgconn.get_result()
        if result is None:
            break
        if first is None:
            first = result
    if first is None:
        raise psycopg.OperationalError("no result")
    return first


def _wait(fd: int, event: int, deadline: float) -> None:
    poller = select.poll()
    poller.register(fd, event)
    left = deadline - time.monotonic()
    if left <= 0 or not poller.poll(max(1, int(left * 1000))):
        raise TimeoutError
