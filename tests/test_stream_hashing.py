"""core.stream.receive hashes big chunks in a worker thread (the event loop meanwhile reads
the next chunk), small ones inline, and always in order."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from dockyard.core.stream import THREAD_HASH_MIN, Progress, receive
from dockyard.oci.digest import Digest, Hasher, new_hasher
from dockyard.storage.filesystem import FilesystemStore


class ThreadRecordingHasher:
    """A real SHA-256 hasher that notes which thread fed it each chunk."""

    algorithm = "sha256"

    def __init__(self) -> None:
        self.inner: Hasher = new_hasher("sha256")
        self.calls: list[tuple[int, int]] = []

    def update(self, data: bytes) -> None:
        self.calls.append((len(data), threading.get_ident()))
        self.inner.update(data)

    def digest(self) -> Digest:
        return self.inner.digest()

    def state(self) -> bytes | None:
        return self.inner.state()


async def test_big_chunks_are_hashed_off_the_event_loop(tmp_path: Path) -> None:
    store = FilesystemStore(tmp_path)
    await store.create_upload("u")
    small, big = b"s" * 100, bytes(range(256)) * (THREAD_HASH_MIN // 256)
    parts = [small, big, small, big + b"!"]

    async def body() -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    hasher = ThreadRecordingHasher()
    progress = Progress(hasher)
    await receive(body(), progress, None, lambda: store.open_writer("u", 0, {}))
    loop_thread = threading.get_ident()
    assert [(n, t == loop_thread) for n, t in hasher.calls] == [
        (len(small), True),
        (len(big), False),
        (len(small), True),
        (len(big) + 1, False),
    ]
    whole = b"".join(parts)
    assert str(hasher.digest()) == "sha256:" + hashlib.sha256(whole).hexdigest()
    assert (tmp_path / "uploads" / "u").read_bytes() == whole
