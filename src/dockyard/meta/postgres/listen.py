"""Event wake-ups across processes: LISTEN on the channel every event append NOTIFYs.

Each process's event hub calls ``wait_for_events`` in a thread of its own, over and over;
it returns as soon as any worker of any instance commits events, so feeds and webhooks
see them at once instead of at the next poll. It uses one dedicated connection (a
pooled one would be taken for good). A lost connection is reopened on the next call,
which returns True at once: notifications sent meanwhile are lost, so the hub reads the
log to catch up. The hub still polls, seldom, in case one was lost some other way.
"""

from __future__ import annotations

import time

import psycopg

from dockyard.meta.postgres.core import CONNECT_TIMEOUT, EVENTS_CHANNEL, Conn, PostgresCore


class EventListener(PostgresCore):
    def wait_for_events(self, timeout: float) -> bool:
        """Block until events may have been committed (True) or ``timeout`` seconds pass
        (False). Called by one thread at a time."""
        with self._listen_lock:
            try:
                return self._wait(timeout)
            finally:
                # close() found the listener in use and left it to the waiter.
                if self._closed and self._listener is not None:
                    self._listener.close()
                    self._listener = None

    def _wait(self, timeout: float) -> bool:
        if self._closed:
            return False
        conn = self._listener
        if conn is None or conn.closed:
            return self._listen(timeout)
        try:
            woke = False
            for _ in conn.notifies(timeout=timeout, stop_after=1):
                woke = True
            if woke:  # one read of the log covers every notification queued now
                for _ in conn.notifies(timeout=0):
                    pass
            return woke
        except psycopg.OperationalError:
            conn.close()
            self._listener = None
            return True

    def _listen(self, timeout: float) -> bool:
        try:
            conn: Conn = psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
            conn.execute(f"LISTEN {EVENTS_CHANNEL}")
        except psycopg.OperationalError:
            time.sleep(timeout)  # the database is away: the hub's polls fail and retry too
            return False
        self._listener = conn
        return True
