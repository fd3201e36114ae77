"""Chunked upload sessions on PostgreSQL, each held by one request at a time via a lease
(the rules of ``meta/sqlite/uploads.py``)."""

from __future__ import annotations

import json
from typing import Any

from dockyard.meta.leases import UPLOADS
from dockyard.meta.postgres import leases
from dockyard.meta.postgres.core import PostgresCore
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


class UploadStore(PostgresCore):
    def create_upload(
        self, upload_id: str, repository: str, algorithm: str, driver_state: dict[str, Any]
    ) -> None:
        now = self._clock()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO uploads (id, repository, algorithm, received, hash_state,"
                " driver_state, started, touched) VALUES (%s, %s, %s, 0, NULL, %s, %s, %s)",
                (upload_id, repository, algorithm, json.dumps(driver_state), now, now),
            )

    def get_upload(self, upload_id: str) -> UploadRecord | None:
        with self._read() as conn:
            row = conn.execute(f"{_UPLOAD_SELECT} WHERE id = %s", (upload_id,)).fetchone()
        return None if row is None else _upload_record(row)

    def claim_upload(self, upload_id: str, offset: int, lease: str, seconds: float) -> bool:
        """Take the upload for one request if it is at ``offset`` and nobody holds it."""
        now = self._clock()
        with self._write() as conn:
            cur = leases.take(
                conn,
                UPLOADS,
                upload_id,
                lease,
                seconds,
                now,
                where=" AND received = %s",
                args=(offset,),
            )
            return cur.rowcount == 1

    def renew_lease(self, upload_id: str, lease: str, seconds: float) -> bool:
        with self._write() as conn:
            return leases.renew(conn, UPLOADS, upload_id, lease, seconds, self._clock())

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
                "UPDATE uploads SET received = %s, hash_state = %s, driver_state = %s,"
                " lease = NULL, lease_expires = NULL, touched = %s WHERE id = %s AND lease = %s",
                (offset, hash_state, json.dumps(driver_state), self._clock(), upload_id, lease),
            )
            if cur.rowcount != 1:
                raise Conflict(upload_id)

    def release_upload(self, upload_id: str, lease: str) -> None:
        with self._write() as conn:
            leases.release(conn, UPLOADS, upload_id, lease)

    def release_leases_of(self, instance: str) -> int:
        """Free the upload leases an earlier run of ``instance`` held."""
        with self._write() as conn:
            return leases.release_of(conn, UPLOADS, instance)

    def delete_upload(self, upload_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM uploads WHERE id = %s", (upload_id,)).rowcount == 1

    def stale_uploads(self, touched_before: float) -> list[UploadRecord]:
        with self._read() as conn:
            rows = conn.execute(
                f"{_UPLOAD_SELECT} WHERE touched < %s AND (lease IS NULL OR lease_expires < %s)",
                (touched_before, self._clock()),
            ).fetchall()
        return [_upload_record(row) for row in rows]

    def upload_ids(self) -> set[str]:
        with self._read() as conn:
            return {r[0] for r in conn.execute("SELECT id FROM uploads").fetchall()}
