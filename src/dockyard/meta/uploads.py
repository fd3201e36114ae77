"""Chunked upload sessions, each held by one request at a time via a lease; written once
for both dialects (``UploadStore``, a mixin both stores inherit: SQL written with ``?``,
bound to the store's parameter mark, and ``meta/leases.py``'s statements in its dialect).

A session is claimed only at the offset it has recorded and only while no live lease
holds it; every later write by the request is conditional on still holding the lease, so
a request that lost it changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from dockyard.meta.leases import UPLOADS, LeaseSQL
from dockyard.meta.records import Conflict, UploadRecord

_UPLOAD_SELECT = (
    "SELECT id, repository, algorithm, received, hash_state, driver_state, lease,"
    " lease_expires, started, touched FROM uploads"
)


def _upload_record(row: tuple[Any, ...]) -> UploadRecord:
    return UploadRecord(
        row[0],
        row[1],
        row[2],
        int(row[3]),
        None if row[4] is None else bytes(row[4]),
        json.loads(row[5]),
        row[6],
        row[7],
        row[8],
        row[9],
    )


class UploadStore:
    """The ``Uploads`` methods over a store's dialect, transactions and clock."""

    lease_sql: LeaseSQL
    _clock: Callable[[], float]

    def _write(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _read(self) -> AbstractContextManager[Any]:
        raise NotImplementedError

    def _sql(self, statement: str) -> str:
        return statement.replace("?", self.lease_sql.mark)

    def create_upload(
        self, upload_id: str, repository: str, algorithm: str, driver_state: dict[str, Any]
    ) -> None:
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                self._sql(
                    "INSERT INTO uploads (id, repository, algorithm, received, hash_state,"
                    " driver_state, started, touched) VALUES (?, ?, ?, 0, NULL, ?, ?, ?)"
                ),
                (upload_id, repository, algorithm, json.dumps(driver_state), now, now),
            )

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        with self._read() as conn:
            row = conn.execute(self._sql(f"{_UPLOAD_SELECT} WHERE id = ?"), (upload_id,)).fetchone()
        return None if row is None else _upload_record(row)

    def claim_upload(self, upload_id: str, offset: int, lease: str, seconds: float) -> bool:
        """Take the upload for one request if it is at ``offset`` and nobody holds it."""
        now = self._clock()
        with self._write() as conn:
            cur = self.lease_sql.take(
                conn,
                UPLOADS,
                upload_id,
                lease,
                seconds,
                now,
                where=self._sql(" AND received = ?"),
                args=(offset,),
            )
            return cur.rowcount == 1

    def renew_lease(self, upload_id: str, lease: str, seconds: float) -> bool:
        with self._write() as conn:
            return self.lease_sql.renew(conn, UPLOADS, upload_id, lease, seconds, self._clock())

    def save_upload(
        self,
        upload_id: str,
        lease: str,
        offset: int,
        hash_state: bytes | None,
        driver_state: dict[str, Any],
    ) -> None:
        """Record progress and release the lease."""
        with self._write() as conn:
            cur = conn.execute(
                self._sql(
                    "UPDATE uploads SET received = ?, hash_state = ?, driver_state = ?,"
                    " lease = NULL, lease_expires = NULL, touched = ? WHERE id = ? AND lease = ?"
                ),
                (offset, hash_state, json.dumps(driver_state), self._clock(), upload_id, lease),
            )
            if cur.rowcount != 1:
                raise Conflict(upload_id)

    def release_upload(self, upload_id: str, lease: str) -> None:
        with self._write() as conn:
            self.lease_sql.release(conn, UPLOADS, upload_id, lease)

    def release_leases_of(self, instance: str) -> int:
        """Free the upload leases an earlier run of ``instance`` held (it cannot still be
        writing): exactly that instance's, see ``leases.release_of``."""
        with self._write() as conn:
            return self.lease_sql.release_of(conn, UPLOADS, instance)

    def delete_upload(self, upload_id: str) -> bool:
        with self._write() as conn:
            cur = conn.execute(self._sql("DELETE FROM uploads WHERE id = ?"), (upload_id,))
            return int(cur.rowcount) == 1

    def stale_uploads(self, touched_before: float) -> list[UploadRecord]:
        with self._read() as conn:
            rows = conn.execute(
                self._sql(
                    f"{_UPLOAD_SELECT} WHERE touched < ? AND (lease IS NULL OR lease_expires < ?)"
                ),
                (touched_before, self._clock()),
            ).fetchall()
        return [_upload_record(row) for row in rows]

    def upload_ids(self) -> set[str]:
        with self._read() as conn:
            return {r[0] for r in conn.execute("SELECT id FROM uploads").fetchall()}
