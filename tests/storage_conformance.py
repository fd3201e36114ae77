"""The storage-driver conformance suite: the ``BlobStore`` contract, written once.

A driver is done when this suite passes against it and leaves nothing behind (after
CNCF distribution's ``registry/storage/driver/testsuites``). To run it against a
driver, subclass ``StorageConformance`` in a ``test_*.py`` module and provide a ``store``
fixture that yields a fresh, empty driver and closes it afterwards::

    class TestS3Store(StorageConformance):
        @pytest.fixture
        async def store(self, s3_bucket: str) -> AsyncIterator[BlobStore]:
            s = S3Store(bucket=s3_bucket)
            yield s
            await s.aclose()

Driver-specific hooks a subclass may extend:

- ``assert_empty(store)``: the driver holds nothing. The default checks ``list_blobs`` and
  ``list_uploads``; a driver with a backing medium also looks there (the filesystem
  driver walks its root for leftover files, an object store lists its bucket).
- ``assert_contained(store)``: nothing was written outside the driver's own space (the
  filesystem driver checks the directory around its root). The default checks nothing.
- ``max_read_chunk``: the largest chunk ``read`` may yield (reads are bounded: see
  ``docs/architecture.md``, Requests).
- ``reopen(store)``: another driver object on the same backing store (another process or
  instance continuing an upload from its saved state). The default returns ``store``
  itself (the memory driver has nothing to share); a reopened store other than ``store``
  is closed by the test.
- ``part_boundary``: where a driver splits a large blob (an object store's part size);
  the ranged-read tests read across it.

The suite treats the driver as a black box: it never checks digests itself (storage does
not verify content), so tests may commit arbitrary bytes under a digest to tell copies
apart.
"""

from __future__ import annotations

import contextlib
import hashlib
import time

import anyio
import pytest

from dockyard.storage.base import (
    READ_CHUNK,
    BlobNotFound,
    BlobStore,
    DriverState,
    StorageError,
    UploadNotFound,
)

MiB = 1024 * 1024

# Names an attacker might send (the HTTP layer validates, but storage must not trust it).
HOSTILE_UPLOAD_IDS = (
    "../../etc/passwd",
    "../../escaped-upload",
    "..",
    ".",
    "",
    ".hidden",
    "a/b",
    "bad\x00id",
    "x" * 300,
    "\u00e9" * 200,  # 200 characters, 400 bytes
    "\ud800",  # a lone surrogate: not encodable as a file name
)
HOSTILE_DIGESTS = (
    "sha256:../x",
    "sha256:../../../../escaped-blob",
    "../../etc/passwd",
    "",
    ".hidden",
    "sha256:",
    ":abcdef",
    "sha256:.hidden",
    "sha256:ab\x00cd",
    "sha256:" + "a" * 300,
    "sha256:" + "\u00e9" * 200,
    "sha256:\ud800",
)


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking bytes (a repeated pattern hides offset bugs)."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


async def read_all(
    store: BlobStore, digest: str, offset: int = 0, length: int | None = None
) -> bytes:
    return b"".join([chunk async for chunk in store.read(digest, offset, length)])


async def read_upload_all(
    store: BlobStore, upload_id: str, state: DriverState, length: int
) -> bytes:
    return b"".join([chunk async for chunk in store.read_upload(upload_id, state, length)])


async def all_blobs(store: BlobStore) -> set[str]:
    return {digest async for digest in store.list_blobs()}


async def all_uploads(store: BlobStore) -> dict[str, float]:
    return {upload_id: touched async for upload_id, touched in store.list_uploads()}


async def write_upload(
    store: BlobStore, upload_id: str, data: bytes, chunk: int = 64 * 1024
) -> DriverState:
    """Create ``upload_id`` and write ``data`` in ``chunk``-sized writes; the saved state."""
    state = await store.create_upload(upload_id)
    writer = await store.open_writer(upload_id, 0, state)
    for start in range(0, len(data), chunk):
        await writer.write(data[start : start + chunk])
    return await writer.close()


async def push(
    store: BlobStore,
    data: bytes,
    upload_id: str = "upload-1",
    digest: str | None = None,
    chunk: int = 64 * 1024,
) -> str:
    """Upload and commit ``data``; its digest (``digest`` overrides the computed one)."""
    digest = sha256(data) if digest is None else digest
    state = await write_upload(store, upload_id, data, chunk)
    await store.commit_upload(upload_id, state, len(data), digest)
    return digest


class StorageConformance:
    """Every ``BlobStore`` must pass these. Subclasses provide the ``store`` fixture."""

    max_read_chunk = READ_CHUNK
    part_boundary = 5 * MiB

    async def reopen(self, store: BlobStore) -> BlobStore:
        """A second driver object on the same backing store (default: ``store``)."""
        return store

    async def assert_empty(self, store: BlobStore) -> None:
        assert await all_blobs(store) == set()
        assert await all_uploads(store) == {}

    def assert_contained(self, store: BlobStore) -> None:
        """Nothing was written outside the driver's own space (override per driver)."""

    async def delete_everything(
        self, store: BlobStore, states: dict[str, DriverState] | None = None
    ) -> None:
        """Delete every listed blob and upload (with its saved state when known)."""
        states = states or {}
        for digest in await all_blobs(store):
            assert await store.delete(digest) is True
        for upload_id in await all_uploads(store):
            await store.delete_upload(upload_id, states.get(upload_id, {}))

    # -- the upload -> commit -> read path ------------------------------------------------

    async def test_check_passes_on_a_working_store(self, store: BlobStore) -> None:
        await store.check()
        await self.assert_empty(store)  # a check writes nothing

    async def test_starts_empty(self, store: BlobStore) -> None:
        await self.assert_empty(store)
        assert isinstance(store.name, str) and store.name

    async def test_commit_then_stat_and_read(self, store: BlobStore) -> None:
        data = b"hello, registry"
        state = await store.create_upload("u1")
        writer = await store.open_writer("u1", 0, state)
        await writer.write(data[:5])
        await writer.write(data[5:])
        state = await writer.close()
        digest = sha256(data)
        await store.commit_upload("u1", state, len(data), digest)

        assert await store.stat(digest) == len(data)
        assert await read_all(store, digest) == data
        assert await all_blobs(store) == {digest}
        # A committed upload is gone: its id no longer names anything.
        assert "u1" not in await all_uploads(store)
        with pytest.raises(UploadNotFound):
            await store.open_writer("u1", 0, state)

    async def test_resume_in_a_new_writer(self, store: BlobStore) -> None:
        data = payload(200_000, seed=1)
        state = await store.create_upload("u1")
        writer = await store.open_writer("u1", 0, state)
        await writer.write(data[:70_001])
        state = await writer.close()
        writer = await store.open_writer("u1", 70_001, state)
        await writer.write(data[70_001:])
        state = await writer.close()
        assert await read_upload_all(store, "u1", state, len(data)) == data
        digest = sha256(data)
        await store.commit_upload("u1", state, len(data), digest)
        assert await read_all(store, digest) == data

    @pytest.mark.parametrize(
        ("offset", "length"),
        [
            (0, None),  # whole blob
            (0, 1000),  # explicit whole blob
            (0, 1),  # first byte
            (999, 1),  # last byte
            (999, None),  # last byte, open-ended
            (123, 456),  # middle range
            (500, None),  # tail
            (0, 0),  # zero-length
            (500, 0),  # zero-length in the middle
        ],
    )
    async def test_read_ranges(self, store: BlobStore, offset: int, length: int | None) -> None:
        data = payload(1000, seed=2)
        digest = await push(store, data)
        end = len(data) if length is None else offset + length
        assert await read_all(store, digest, offset, length) == data[offset:end]

    async def test_multi_mib_blob_streams_in_bounded_chunks(self, store: BlobStore) -> None:
        data = payload(5 * MiB + 12345, seed=3)
        # Odd write size: chunk boundaries fall nowhere near read or block boundaries.
        digest = await push(store, data, chunk=65_537)
        assert await store.stat(digest) == len(data)
        chunks = [chunk async for chunk in store.read(digest)]
        assert len(chunks) > 1, "a multi-MiB blob must be streamed, not read in one piece"
        assert max(len(c) for c in chunks) <= self.max_read_chunk
        assert b"".join(chunks) == data
        # A range that spans several read chunks.
        start, length = MiB - 7, 2 * MiB + 11
        assert await read_all(store, digest, start, length) == data[start : start + length]

    async def test_zero_byte_blob(self, store: BlobStore) -> None:
        state = await store.create_upload("empty")
        writer = await store.open_writer("empty", 0, state)
        state = await writer.close()
        digest = sha256(b"")
        await store.commit_upload("empty", state, 0, digest)
        assert await store.stat(digest) == 0
        assert await read_all(store, digest) == b""
        assert await all_blobs(store) == {digest}

    async def test_not_visible_before_commit(self, store: BlobStore) -> None:
        data = payload(10_000, seed=4)
        digest = sha256(data)
        state = await write_upload(store, "u1", data)
        assert await store.stat(digest) is None
        with pytest.raises(BlobNotFound):
            await read_all(store, digest)
        assert digest not in await all_blobs(store)
        await store.commit_upload("u1", state, len(data), digest)
        assert await store.stat(digest) == len(data)

    # -- dedupe and failed commits --------------------------------------------------------

    async def test_commit_of_stored_digest_keeps_first_copy(self, store: BlobStore) -> None:
        first = payload(4096, seed=5)
        digest = await push(store, first, upload_id="first")
        # Same digest and size, other bytes: storage does not verify, so this tells which
        # copy survived.
        second = payload(4096, seed=6)
        state = await write_upload(store, "second", second)
        await store.commit_upload("second", state, len(second), digest)

        assert await read_all(store, digest) == first
        assert await all_blobs(store) == {digest}
        uploads = await all_uploads(store)
        assert "second" not in uploads and "first" not in uploads
        with pytest.raises(UploadNotFound):
            await read_upload_all(store, "second", state, 1)

    @pytest.mark.parametrize("claimed", [99, 101, 0])
    async def test_commit_with_wrong_size_makes_nothing_visible(
        self, store: BlobStore, claimed: int
    ) -> None:
        data = payload(100, seed=7)
        digest = sha256(data)
        state = await write_upload(store, "u1", data)
        with pytest.raises(StorageError):
            await store.commit_upload("u1", state, claimed, digest)
        assert await store.stat(digest) is None
        with pytest.raises(BlobNotFound):
            await read_all(store, digest)
        assert await all_blobs(store) == set()

    async def test_concurrent_commits_of_one_digest(self, store: BlobStore) -> None:
        data = payload(300_000, seed=8)
        digest = sha256(data)
        ids = [f"racer-{i}" for i in range(4)]
        states = {upload_id: await write_upload(store, upload_id, data) for upload_id in ids}

        async def commit(upload_id: str) -> None:
            await store.commit_upload(upload_id, states[upload_id], len(data), digest)

        async with anyio.create_task_group() as tasks:
            for upload_id in ids:
                tasks.start_soon(commit, upload_id)

        assert await all_blobs(store) == {digest}
        assert await read_all(store, digest) == data
        assert await all_uploads(store) == {}
        # One copy: deleting it once leaves nothing behind.
        assert await store.delete(digest) is True
        await self.assert_empty(store)

    # -- writers --------------------------------------------------------------------------

    async def test_open_writer_discards_what_a_crashed_writer_left(self, store: BlobStore) -> None:
        state = await write_upload(store, "u1", b"good")
        # A request that wrote past offset 4 and then failed: its bytes reached storage,
        # but the upload session still says 4.
        crashed = await store.open_writer("u1", 4, state)
        await crashed.write(b"JUNK" * 1000)
        await crashed.close()

        writer = await store.open_writer("u1", 4, state)
        await writer.write(b"tail")
        state = await writer.close()
        assert await read_upload_all(store, "u1", state, 8) == b"goodtail"
        digest = sha256(b"goodtail")
        await store.commit_upload("u1", state, 8, digest)
        assert await read_all(store, digest) == b"goodtail"

    async def test_open_writer_at_offset_zero_restarts(self, store: BlobStore) -> None:
        state = await write_upload(store, "u1", b"old contents")
        writer = await store.open_writer("u1", 0, state)
        await writer.write(b"new")
        state = await writer.close()
        digest = sha256(b"new")
        await store.commit_upload("u1", state, 3, digest)
        assert await read_all(store, digest) == b"new"

    async def test_abort_forgets_what_the_writer_wrote(self, store: BlobStore) -> None:
        state = await write_upload(store, "u1", b"kept")
        writer = await store.open_writer("u1", 4, state)
        await writer.write(b"forgotten" * 100)
        await writer.abort()
        assert await read_upload_all(store, "u1", state, 4) == b"kept"
        # The upload holds exactly what it held before: a commit of 4 bytes succeeds.
        digest = sha256(b"kept")
        await store.commit_upload("u1", state, 4, digest)
        assert await read_all(store, digest) == b"kept"

    async def test_abort_then_continue(self, store: BlobStore) -> None:
        state = await write_upload(store, "u1", b"abc")
        writer = await store.open_writer("u1", 3, state)
        await writer.write(b"xyz")
        await writer.abort()
        writer = await store.open_writer("u1", 3, state)
        await writer.write(b"def")
        state = await writer.close()
        digest = sha256(b"abcdef")
        await store.commit_upload("u1", state, 6, digest)
        assert await read_all(store, digest) == b"abcdef"

    async def test_read_upload_returns_first_n_bytes(self, store: BlobStore) -> None:
        data = payload(3 * MiB + 5, seed=9)
        state = await write_upload(store, "u1", data, chunk=100_003)
        for n in (0, 1, 64, 65_536, MiB + 1, len(data)):
            assert await read_upload_all(store, "u1", state, n) == data[:n]

    async def test_asking_for_bytes_that_are_not_there(self, store: BlobStore) -> None:
        data = payload(1000, seed=11)
        digest = await push(store, data)
        with pytest.raises(StorageError):
            await read_all(store, digest, 990, 20)
        state = await write_upload(store, "u2", data[:100])
        with pytest.raises(StorageError):
            await read_upload_all(store, "u2", state, 101)
        with pytest.raises(StorageError):
            await store.open_writer("u2", 101, state)
        with pytest.raises(StorageError):
            await store.create_upload("u2")
        # None of that changed the upload.
        assert await read_upload_all(store, "u2", state, 100) == data[:100]
        await store.delete_upload("u2", state)
        assert await store.delete(digest)

    # -- deletes and listings -------------------------------------------------------------

    async def test_delete_upload_is_idempotent(self, store: BlobStore) -> None:
        state = await write_upload(store, "u1", b"some bytes")
        await store.delete_upload("u1", state)
        await store.delete_upload("u1", state)
        await store.delete_upload("never-created", {})
        assert await all_uploads(store) == {}
        with pytest.raises(UploadNotFound):
            await store.open_writer("u1", 0, state)
        with pytest.raises(UploadNotFound):
            await read_upload_all(store, "u1", state, 1)
        await self.assert_empty(store)

    async def test_delete_blob(self, store: BlobStore) -> None:
        data = b"to be deleted"
        digest = await push(store, data)
        other = await push(store, b"to be kept", upload_id="u2")
        assert await store.delete(digest) is True
        assert await store.delete(digest) is False
        assert await store.stat(digest) is None
        with pytest.raises(BlobNotFound):
            await read_all(store, digest)
        assert await all_blobs(store) == {other}
        assert await read_all(store, other) == b"to be kept"
        assert await store.delete(sha256(b"never stored")) is False

    async def test_deleted_digest_can_be_pushed_again(self, store: BlobStore) -> None:
        digest = await push(store, b"round trip")
        assert await store.delete(digest) is True
        assert await push(store, b"round trip", upload_id="again") == digest
        assert await read_all(store, digest) == b"round trip"

    async def test_list_blobs(self, store: BlobStore) -> None:
        expected = set()
        for i in range(5):
            expected.add(await push(store, payload(100 + i, seed=10 + i), upload_id=f"u{i}"))
        sha512_data = b"other algorithm"
        sha512 = "sha512:" + hashlib.sha512(sha512_data).hexdigest()
        expected.add(await push(store, sha512_data, upload_id="u512", digest=sha512))
        assert await all_blobs(store) == expected
        assert await read_all(store, sha512) == sha512_data

    async def test_list_blob_details(self, store: BlobStore) -> None:
        """Sizes and write times from the listing: garbage collection's storage walk."""
        before = time.time()
        small = await push(store, b"tiny", upload_id="small")
        large = await push(store, payload(70_000, seed=3), upload_id="large")
        found = {b.digest: b async for b in store.list_blob_details()}
        assert set(found) == {small, large} == await all_blobs(store)
        assert (found[small].size, found[large].size) == (4, 70_000)
        for blob in found.values():
            # Clocks of a remote backend may differ a little from ours.
            assert before - 300 <= blob.modified <= time.time() + 300
        await store.delete(small)
        assert [b.digest async for b in store.list_blob_details()] == [large]

    async def test_list_uploads(self, store: BlobStore) -> None:
        before = time.time()
        await write_upload(store, "alpha", b"a")
        beta = await write_upload(store, "beta", b"bb")
        gamma = await store.create_upload("gamma")
        uploads = await all_uploads(store)
        assert set(uploads) == {"alpha", "beta", "gamma"}
        for touched in uploads.values():
            # Clocks of a remote backend may differ a little from ours.
            assert before - 60 <= touched <= time.time() + 60

        await store.commit_upload("beta", beta, 2, sha256(b"bb"))
        await store.delete_upload("gamma", gamma)
        assert set(await all_uploads(store)) == {"alpha"}

    async def test_unknown_upload_id(self, store: BlobStore) -> None:
        with pytest.raises(UploadNotFound):
            await store.open_writer("no-such-upload", 0, {})
        with pytest.raises(UploadNotFound):
            await read_upload_all(store, "no-such-upload", {}, 10)
        with pytest.raises(UploadNotFound):
            await store.commit_upload("no-such-upload", {}, 0, sha256(b""))
        assert await store.stat(sha256(b"")) is None
        await self.assert_empty(store)

    async def test_unknown_digest(self, store: BlobStore) -> None:
        digest = sha256(b"never stored")
        assert await store.stat(digest) is None
        with pytest.raises(BlobNotFound):
            await read_all(store, digest)
        assert await store.delete(digest) is False

    # -- hostile names --------------------------------------------------------------------

    @pytest.mark.parametrize("upload_id", HOSTILE_UPLOAD_IDS)
    async def test_hostile_upload_ids(self, store: BlobStore, upload_id: str) -> None:
        # Each call either works (the id is just a key) or raises the documented error;
        # nothing lands outside the driver's space and nothing is left behind.
        data = b"hostile upload"
        digest = sha256(data)
        state: DriverState = {}
        created = False
        try:
            state = await store.create_upload(upload_id)
            created = True
        except StorageError:
            pass
        try:
            writer = await store.open_writer(upload_id, 0, state)
        except StorageError:
            assert not created, "an upload that was created must be writable"
        else:
            await writer.write(data)
            state = await writer.close()
        try:
            assert await read_upload_all(store, upload_id, state, len(data)) == data
        except StorageError:
            assert not created, "an upload that was created must be readable"
        try:
            await store.commit_upload(upload_id, state, len(data), digest)
        except StorageError:
            assert not created, "an upload that was created must be committable"
        else:
            assert await read_all(store, digest) == data
        with contextlib.suppress(StorageError):
            await store.delete_upload(upload_id, state)
        self.assert_contained(store)
        await self.delete_everything(store, {upload_id: state})
        await self.assert_empty(store)

    @pytest.mark.parametrize("digest", HOSTILE_DIGESTS)
    async def test_hostile_digests(self, store: BlobStore, digest: str) -> None:
        bystander = await push(store, b"bystander", upload_id="bystander")
        data = b"hostile blob"
        assert await store.stat(digest) is None
        with pytest.raises(BlobNotFound):
            await read_all(store, digest)
        assert await store.delete(digest) is False

        state = await write_upload(store, "u1", data)
        committed = False
        try:
            await store.commit_upload("u1", state, len(data), digest)
            committed = True
        except StorageError:
            pass
        if committed:
            # Then it is an ordinary key: stored, listed, readable, deletable.
            assert await store.stat(digest) == len(data)
            assert await read_all(store, digest) == data
            assert await all_blobs(store) == {bystander, digest}
            assert await store.delete(digest) is True
        else:
            assert await store.stat(digest) is None
        # The listing still works and the bystander is untouched.
        assert bystander in await all_blobs(store)
        assert await read_all(store, bystander) == b"bystander"
        self.assert_contained(store)
        await self.delete_everything(store)
        await self.assert_empty(store)

    # -- capabilities and cleanup ---------------------------------------------------------

    async def test_presigned_url_is_none_or_str(self, store: BlobStore) -> None:
        digest = await push(store, b"presign me")
        for method in ("GET", "HEAD"):
            url = await store.presigned_url(digest, method)
            assert url is None or (isinstance(url, str) and url)

    async def test_nothing_left_after_deleting_everything(self, store: BlobStore) -> None:
        # Every path that creates something: committed blobs (two algorithms), a dedupe,
        # a failed commit, an aborted writer, an upload left open, an empty upload.
        await push(store, payload(2 * MiB + 3, seed=20), upload_id="big")
        await push(store, b"dup", upload_id="dup-1")
        await push(store, b"dup", upload_id="dup-2")
        await push(store, b"512", upload_id="u512", digest="sha512:" + "0" * 128)
        await push(store, b"", upload_id="empty")
        states: dict[str, DriverState] = {}
        states["bad-size"] = await write_upload(store, "bad-size", b"12345")
        with pytest.raises(StorageError):
            await store.commit_upload("bad-size", states["bad-size"], 4, sha256(b"1234"))
        states["aborted"] = await write_upload(store, "aborted", b"abc")
        writer = await store.open_writer("aborted", 3, states["aborted"])
        await writer.write(b"def")
        await writer.abort()
        states["left-open"] = await write_upload(store, "left-open", payload(1000, seed=21))
        states["never-written"] = await store.create_upload("never-written")

        assert len(await all_blobs(store)) == 4
        assert set(await all_uploads(store)) == {
            "bad-size",
            "aborted",
            "left-open",
            "never-written",
        }
        await self.delete_everything(store, states)
        self.assert_contained(store)
        await self.assert_empty(store)

    # -- concurrency, scale, other instances ----------------------------------------------

    async def test_concurrent_writers_on_different_uploads(self, store: BlobStore) -> None:
        blobs = {f"writer-{i}": payload(200_000 + 7919 * i, seed=30 + i) for i in range(6)}
        states: dict[str, DriverState] = {}

        async def upload(upload_id: str) -> None:
            data = blobs[upload_id]
            state = await store.create_upload(upload_id)
            # Two chunks each, interleaved with the other writers' chunks.
            for start, end in ((0, 70_000), (70_000, len(data))):
                writer = await store.open_writer(upload_id, start, state)
                await writer.write(data[start:end])
                state = await writer.close()
                await anyio.lowlevel.checkpoint()
            states[upload_id] = state

        async with anyio.create_task_group() as tasks:
            for upload_id in blobs:
                tasks.start_soon(upload, upload_id)
        for upload_id, data in blobs.items():
            assert await read_upload_all(store, upload_id, states[upload_id], len(data)) == data

        async def commit(upload_id: str) -> None:
            data = blobs[upload_id]
            await store.commit_upload(upload_id, states[upload_id], len(data), sha256(data))

        async with anyio.create_task_group() as tasks:
            for upload_id in blobs:
                tasks.start_soon(commit, upload_id)
        assert await all_blobs(store) == {sha256(data) for data in blobs.values()}
        for data in blobs.values():
            assert await read_all(store, sha256(data)) == data
        assert await all_uploads(store) == {}
        await self.delete_everything(store)
        await self.assert_empty(store)

    async def test_concurrent_commits_of_one_large_digest(self, store: BlobStore) -> None:
        # Large enough that an object store commits it as several parts.
        data = payload(2 * self.part_boundary + 12_345, seed=40)
        digest = sha256(data)
        ids = ["big-racer-0", "big-racer-1", "big-racer-2"]
        states = {i: await write_upload(store, i, data, chunk=MiB + 1) for i in ids}

        async def commit(upload_id: str) -> None:
            await store.commit_upload(upload_id, states[upload_id], len(data), digest)

        async with anyio.create_task_group() as tasks:
            for upload_id in ids:
                tasks.start_soon(commit, upload_id)
        assert await all_blobs(store) == {digest}
        assert await read_all(store, digest) == data
        assert await all_uploads(store) == {}
        assert await store.delete(digest) is True
        await self.assert_empty(store)

    async def test_ranged_reads_at_boundaries(self, store: BlobStore) -> None:
        boundary = self.part_boundary
        data = payload(2 * boundary + 54_321, seed=41)
        digest = await push(store, data, chunk=999_983)
        size = len(data)
        ranges = [
            (0, 1),  # the first byte
            (0, boundary),  # exactly the first part
            (boundary - 1, 2),  # the last byte of a part and the first of the next
            (boundary, 1),  # the first byte of the second part
            (boundary - 100, READ_CHUNK + 200),  # across the boundary, over a read chunk
            (2 * boundary - 7, 14),  # across the second boundary
            (size - 1, 1),  # the last byte
            (size - READ_CHUNK - 3, READ_CHUNK + 3),  # the end, more than one read chunk
            (size, 0),  # nothing, at the very end
        ]
        for offset, length in ranges:
            got = await read_all(store, digest, offset, length)
            assert got == data[offset : offset + length], (offset, length)
        assert await read_all(store, digest, boundary + 3) == data[boundary + 3 :]
        with pytest.raises(StorageError):
            await read_all(store, digest, size - 1, 2)

    async def test_large_blob_in_uneven_chunks(self, store: BlobStore) -> None:
        data = payload(24 * MiB + 1, seed=42)
        state = await store.create_upload("large")
        offset = 0
        # PATCH-like pieces of uneven sizes, each with its own writer, and writes inside
        # each piece of uneven sizes too.
        for piece in (1, 3 * MiB - 1, 7 * MiB + 333, 64 * 1024, 9 * MiB, 5 * MiB - 333):
            writer = await store.open_writer("large", offset, state)
            end = min(offset + piece, len(data))
            for start in range(offset, end, 262_147):
                await writer.write(data[start : min(start + 262_147, end)])
            state = await writer.close()
            offset = end
        assert offset == len(data)
        digest = sha256(data)
        await store.commit_upload("large", state, len(data), digest)
        assert await store.stat(digest) == len(data)
        assert hashlib.sha256(await read_all(store, digest)).hexdigest() == digest[7:]
        assert await store.delete(digest) is True
        await self.assert_empty(store)

    async def test_listings_past_a_page(self, store: BlobStore) -> None:
        # Object stores list 1000 keys a page: more than that must all be listed.
        count = 1003
        blobs = [b"blob %d" % i for i in range(count)]
        limiter = anyio.CapacityLimiter(16)

        async def push_one(i: int) -> None:
            async with limiter:
                await push(store, blobs[i], upload_id=f"page-{i}")

        async def create_one(i: int) -> None:
            async with limiter:
                await store.create_upload(f"open-{i}")

        async with anyio.create_task_group() as tasks:
            for i in range(count):
                tasks.start_soon(push_one, i)
                tasks.start_soon(create_one, i)
        assert await all_blobs(store) == {sha256(b) for b in blobs}
        assert set(await all_uploads(store)) == {f"open-{i}" for i in range(count)}

        async def delete_one(i: int) -> None:
            async with limiter:
                assert await store.delete(sha256(blobs[i])) is True
                await store.delete_upload(f"open-{i}", {})

        async with anyio.create_task_group() as tasks:
            for i in range(count):
                tasks.start_soon(delete_one, i)
        await self.assert_empty(store)

    async def test_upload_continued_on_another_store(self, store: BlobStore) -> None:
        data = payload(3 * MiB + 77, seed=43)
        cut = MiB + 5
        state = await store.create_upload("moving")
        writer = await store.open_writer("moving", 0, state)
        await writer.write(data[:cut])
        state = await writer.close()
        other = await self.reopen(store)
        try:
            # Only the saved state travels: the other store continues, reads and commits.
            writer = await other.open_writer("moving", cut, state)
            await writer.write(data[cut:])
            state = await writer.close()
            assert await read_upload_all(other, "moving", state, len(data)) == data
            assert set(await all_uploads(other)) == {"moving"}
            await other.commit_upload("moving", state, len(data), sha256(data))
            assert await read_all(store, sha256(data)) == data
        finally:
            if other is not store:
                await other.aclose()
        assert await store.delete(sha256(data)) is True
        await self.assert_empty(store)

    async def test_writers_continue_below_a_large_saved_state(self, store: BlobStore) -> None:
        # Crashed writers, each reopening below what the upload holds: inside a part,
        # exactly at a part boundary, inside the first part.
        boundary = self.part_boundary
        data = payload(2 * boundary + 2 * MiB + 5, seed=44)
        state = await write_upload(store, "u", data, chunk=MiB + 3)
        expected = data
        for offset, seed in ((2 * boundary - 3, 45), (boundary, 46), (MiB + 7, 47)):
            assert await read_upload_all(store, "u", state, offset) == expected[:offset]
            more = payload(boundary - MiB + 11, seed=seed)
            writer = await store.open_writer("u", offset, state)
            for start in range(0, len(more), 700_001):
                await writer.write(more[start : start + 700_001])
            state = await writer.close()
            expected = expected[:offset] + more
            for n in (offset - 1, offset, offset + 1, len(expected)):
                assert await read_upload_all(store, "u", state, n) == expected[:n]
        await store.commit_upload("u", state, len(expected), sha256(expected))
        assert await read_all(store, sha256(expected)) == expected
        assert await store.delete(sha256(expected)) is True
        await self.assert_empty(store)
