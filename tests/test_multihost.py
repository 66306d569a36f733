"""Two hosts: two ``anytus serve`` processes on different ports that share one S3 bucket (moto's
server) and one Redis, and nothing else. A resume through the other host, competing PATCHes
through both, a host killed while it holds a lock, a half-open client, and Redis going away.

Host A runs on asyncio, host B on trio; the test client runs on asyncio
only. Leases are 2 s here (10 s by default) to keep the tests short.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import time
import uuid
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
import redis

from _helpers import pattern
from _server import (
    CLIENT_TLS,
    OFFSET_CONTENT_TYPE,
    TUS,
    AnytusProcess,
    ConnectionClosedError,
    TusClient,
    raw_request,
    read_raw_response,
    serve_process,
    wait_for,
)
from _services import (
    RedisServer,
    S3Service,
    start_redis,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator

MIB = 1 << 20
LEASE = 2.0

pytestmark = pytest.mark.slow


@pytest.fixture
def anyio_backend() -> str:
    """The client runs on asyncio only: the backends under test are the servers' (A asyncio,
    B trio), whatever the client runs on."""
    return "asyncio"


def meeting(parties: int) -> Callable[[], Awaitable[None]]:
    """An awaitable that returns once *parties* tasks have awaited it."""
    arrived = 0
    everyone = anyio.Event()

    async def meet() -> None:
        nonlocal arrived
        arrived += 1
        if arrived == parties:
            everyone.set()
        await everyone.wait()

    return meet


async def raw_patch(
    url: str,
    upload_id: str,
    offset: int,
    chunks: list[bytes],
    *,
    together: Callable[[], Awaitable[None]] | None = None,
    hang: bool = False,
    sent: anyio.Event | None = None,
) -> int:
    """PATCH over a raw connection, its body sent in *chunks*, then (with *hang*) silence; return
    the status, or 0 if the connection ended without one. *together* is awaited after the first
    chunk (or the failure to send it): the PATCHes that wait on it are all in flight at once."""
    host_port = url.split("//")[1].split("/")[0]
    host, port = host_port.rsplit(":", 1)
    length = sum(len(chunk) for chunk in chunks)
    head = raw_request(
        "PATCH",
        f"/files/{upload_id}",
        host_port,
        {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CONTENT_TYPE},
        # a hanging body announces a megabyte more: large enough that the lock is taken first
        content_length=length + (MIB if hang else 0),
    )
    async with await anyio.connect_tcp(host, int(port)) as stream:
        try:
            await stream.send(head)
            for i, chunk in enumerate(chunks):
                if i == 1 and together is not None:
                    waited, together = together, None
                    await waited()
                await stream.send(chunk)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass  # answered early (409, 423...) and closed: the answer is still there to read
        if together is not None:
            await together()
        if sent is not None:
            sent.set()
        if hang:
            await anyio.sleep_forever()
        try:
            return (await read_raw_response(stream)).status
        except (ConnectionClosedError, OSError):
            return 0


@contextlib.contextmanager
def host(s3: S3Service, prefix: str, redis_url: str, backend: str) -> Iterator[AnytusProcess]:
    """One ``anytus serve`` process: a host (killing it kills the host)."""
    with serve_process(
        "--backend",
        backend,
        "--workers",
        "1",
        "--s3-bucket",
        s3.bucket,
        "--s3-endpoint",
        s3.endpoint,
        "--s3-prefix",
        prefix,
        "--redis",
        redis_url,
        "--redis-lease",
        str(LEASE),
        env=s3.env,
    ) as server:
        yield server


@contextlib.contextmanager
def two_hosts(s3: S3Service, redis_url: str) -> Iterator[tuple[AnytusProcess, AnytusProcess, str]]:
    prefix = f"hosts-{uuid.uuid4().hex[:8]}/"
    with host(s3, prefix, redis_url, "asyncio") as a, host(s3, prefix, redis_url, "trio") as b:
        yield a, b, prefix


@pytest.fixture(scope="module")
def shared_hosts(
    s3: S3Service, redis_server: RedisServer
) -> Iterator[tuple[AnytusProcess, AnytusProcess, str]]:
    """Two hosts for the tests that leave them running."""
    with two_hosts(s3, redis_server.url) as hosts:
        yield hosts


@pytest.fixture
def fresh_hosts(
    s3: S3Service, redis_server: RedisServer
) -> Iterator[tuple[AnytusProcess, AnytusProcess, str]]:
    """Two hosts for a test that kills one."""
    with two_hosts(s3, redis_server.url) as hosts:
        yield hosts


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis server for a test that stops it."""
    with start_redis() as server:
        yield server


@pytest.fixture
def hosts_on_own_redis(
    s3: S3Service, own_redis: RedisServer
) -> Iterator[tuple[AnytusProcess, AnytusProcess, str]]:
    with two_hosts(s3, own_redis.url) as hosts:
        yield hosts


def stored(s3: S3Service, prefix: str, upload_id: str) -> bytes:
    """The bytes S3 holds for an upload that fits in its incomplete part (or is complete)."""
    for key in (prefix + upload_id, f"{prefix}{upload_id}.part"):
        try:
            body = s3.client.get_object(Bucket=s3.bucket, Key=key)["Body"]
        except s3.client.exceptions.NoSuchKey:
            continue
        data: bytes = body.read()
        return data
    return b""


def parts_stored(s3: S3Service, prefix: str, upload_id: str) -> int:
    uploads = s3.client.list_multipart_uploads(Bucket=s3.bucket, Prefix=prefix + upload_id)
    total = 0
    for item in uploads.get("Uploads", []):
        parts = s3.client.list_parts(Bucket=s3.bucket, Key=item["Key"], UploadId=item["UploadId"])
        total += sum(part["Size"] for part in parts.get("Parts", []))
    return total


async def test_an_upload_started_on_a_resumes_on_b(
    shared_hosts: tuple[AnytusProcess, AnytusProcess, str],
) -> None:
    a, b, _ = shared_hosts
    data = pattern(7 * MIB + 12345, seed=21)
    async with httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http:
        on_a, on_b = TusClient(http, a.url), TusClient(http, b.url)
        upload_id = await on_a.new(len(data), metadata={"filename": b"x.bin"})
        response = await on_a.patch(upload_id, 0, data[: 6 * MIB])
        assert response.status_code == 204
        assert await on_b.offset(upload_id) == 6 * MIB
        response = await on_b.patch(upload_id, 6 * MIB, data[6 * MIB :])
        assert response.status_code == 204, response.text
        assert await on_a.offset(upload_id) == len(data)
        for tus in (on_a, on_b):
            response = await http.get(tus.upload_url(upload_id))
            assert response.status_code == 200
            assert hashlib.sha256(response.content).digest() == hashlib.sha256(data).digest()


async def test_four_patches_over_two_hosts_never_interleave(
    shared_hosts: tuple[AnytusProcess, AnytusProcess, str], s3: S3Service
) -> None:
    """Four PATCHes at one offset, two through each host, all four in flight at once (each sends
    the rest of its body once every one has sent its first piece): at most one succeeds, and the
    bytes stored after the offset come from one of them alone."""
    a, b, prefix = shared_hosts
    size = 3 * MIB
    chunk = 256 * 1024
    async with httpx.AsyncClient(timeout=60, verify=CLIENT_TLS) as http:
        clients = [TusClient(http, a.url), TusClient(http, b.url)] * 2
        upload_id = await clients[0].new(size)
        offset = 0
        for _ in range(40):
            if offset == size:
                break
            length = min(MIB, size - offset)
            statuses: list[int] = [0] * 4
            together = meeting(4)

            async def one(
                i: int,
                start: int,
                length: int,
                statuses: list[int],
                together: Callable[[], Awaitable[None]],
            ) -> None:
                body = bytes([i + 1]) * length
                chunks = [body[position : position + chunk] for position in range(0, length, chunk)]
                statuses[i] = await raw_patch(
                    clients[i].url, upload_id, start, chunks, together=together
                )

            async with anyio.create_task_group() as tg:
                for i in range(4):
                    tg.start_soon(one, i, offset, length, statuses, together)
            assert set(statuses) <= {0, 204, 400, 409, 423}, statuses
            assert statuses.count(204) <= 1, statuses
            new_offset = await clients[0].offset(upload_id)
            assert await clients[1].offset(upload_id) == new_offset
            data = await anyio.to_thread.run_sync(stored, s3, prefix, upload_id)
            assert len(data) == new_offset
            written = data[offset:new_offset]
            if written:
                assert written == bytes([written[0]]) * len(written), "two writers interleaved"
            if 204 in statuses:
                assert len(written) == length
                assert written[0] == statuses.index(204) + 1
            offset = new_offset
        assert offset == size


async def test_a_host_killed_mid_patch_resumes_on_the_other_within_the_lease(
    fresh_hosts: tuple[AnytusProcess, AnytusProcess, str], s3: S3Service
) -> None:
    data = pattern(8 * MIB, seed=22)
    sent_part = anyio.Event()
    a, b, prefix = fresh_hosts
    async with httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http:
        on_a, on_b = TusClient(http, a.url), TusClient(http, b.url)
        upload_id = await on_a.new(len(data))

        # a part and a bit, then silence: A holds the lock with bytes in memory
        chunks = [data[position : position + MIB] for position in range(0, 6 * MIB, MIB)]

        async with anyio.create_task_group() as tg:

            async def patch() -> None:
                await raw_patch(a.url, upload_id, 0, chunks, hang=True, sent=sent_part)

            tg.start_soon(patch)
            await sent_part.wait()

            async def part_uploaded() -> bool:
                uploaded = await anyio.to_thread.run_sync(parts_stored, s3, prefix, upload_id)
                return uploaded == 5 * MIB

            assert await wait_for(part_uploaded, timeout=20)
            await anyio.to_thread.run_sync(a.kill)
            killed = time.monotonic()
            response = await on_b.head(upload_id)
            elapsed = time.monotonic() - killed
            tg.cancel_scope.cancel()
        assert response.status_code == 200
        assert elapsed < LEASE + 1.5
        offset = int(response.headers["Upload-Offset"])
        # the part A uploaded; the megabyte it held in memory died with it
        assert offset == 5 * MIB
        assert await anyio.to_thread.run_sync(parts_stored, s3, prefix, upload_id) == offset
        response = await on_b.patch(upload_id, offset, data[offset:])
        assert response.status_code == 204, response.text
        response = await http.get(on_b.upload_url(upload_id))
        assert response.content == data


async def test_a_half_open_client_on_a_does_not_block_b(
    shared_hosts: tuple[AnytusProcess, AnytusProcess, str], redis_server: RedisServer
) -> None:
    """A client sends part of a PATCH body to A and goes silent without closing: a request to
    B asks A to let go, and gets through within 3 s."""
    a, b, _ = shared_hosts

    keys = redis.Redis.from_url(redis_server.url)
    async with httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http:
        on_a, on_b = TusClient(http, a.url), TusClient(http, b.url)
        upload_id = await on_a.new(MIB)
        host, port = a.url.split("//")[1].split("/")[0].split(":")
        with socket.create_connection((host, int(port))) as half_open:
            half_open.sendall(
                (
                    f"PATCH /files/{upload_id} HTTP/1.1\r\nHost: {host}\r\n"
                    "Tus-Resumable: 1.0.0\r\nUpload-Offset: 0\r\n"
                    "Content-Type: application/offset+octet-stream\r\n"
                    f"Content-Length: {MIB}\r\n\r\n"
                ).encode()
                + b"h" * 1000
            )

            # A holds the lock: its key is in Redis
            async def locked() -> bool:
                return bool(await anyio.to_thread.run_sync(keys.exists, f"anytus:lock:{upload_id}"))

            assert await wait_for(locked, timeout=10)
            start = time.monotonic()
            response = await on_b.head(upload_id)
            elapsed = time.monotonic() - start
            assert response.status_code == 200
            assert elapsed < 3.0
            # A stored what its app had received of the body when it let go: all or nothing here
            offset = int(response.headers["Upload-Offset"])
            assert offset in (0, 1000)
            response = await on_b.patch(upload_id, offset, b"i" * 1000)
        assert response.status_code == 204, response.text
        assert int(response.headers["Upload-Offset"]) == offset + 1000
    keys.close()


async def test_redis_away_mid_upload(
    s3: S3Service,
    own_redis: RedisServer,
    hosts_on_own_redis: tuple[AnytusProcess, AnytusProcess, str],
) -> None:
    """Redis stops while A streams a PATCH: A's lease runs out and the request stops; requests
    get a clear 503 while Redis is away; once it is back the upload resumes, byte-exact."""
    data = pattern(3 * MIB, seed=23)
    halfway = anyio.Event()
    server = own_redis
    a, b, prefix = hosts_on_own_redis
    async with httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http:
        on_a, on_b = TusClient(http, a.url), TusClient(http, b.url)
        upload_id = await on_a.new(len(data))
        response = await on_a.patch(upload_id, 0, data[:MIB])
        assert response.status_code == 204

        async with anyio.create_task_group() as tg:

            async def patch() -> None:
                await raw_patch(
                    a.url, upload_id, MIB, [data[MIB : MIB + 1000]], hang=True, sent=halfway
                )

            tg.start_soon(patch)
            await halfway.wait()
            # A holds the lock (its key is in Redis) before Redis goes away
            keys = redis.Redis.from_url(server.url)

            async def locked() -> bool:
                key = f"anytus:lock:{upload_id}"
                return bool(await anyio.to_thread.run_sync(keys.exists, key))

            assert await wait_for(locked, timeout=10)
            keys.close()
            await anyio.to_thread.run_sync(server.stop)
            # through B: a clear refusal, no hang
            response = await on_b.head(upload_id)
            assert response.status_code == 503
            response = await on_b.patch(upload_id, MIB, b"x")
            assert response.status_code == 503
            assert "lock service" in response.text, response.text
            # A gives up its lock once the lease has run out without a renewal
            assert await a.logs(
                lambda: any("lost the lock" in line for line in a.stderr_lines), timeout=LEASE + 5
            ), "\n".join(a.stderr_lines)
            tg.cancel_scope.cancel()
        # nothing was written without the lock: S3 holds the first megabyte, unchanged
        assert await anyio.to_thread.run_sync(stored, s3, prefix, upload_id) == data[:MIB]

        await anyio.to_thread.run_sync(server.start)
        offset = await on_b.offset(upload_id)
        assert offset == MIB
        response = await on_a.patch(upload_id, offset, data[offset:])
        assert response.status_code == 204, response.text
        response = await http.get(on_b.upload_url(upload_id))
        assert response.content == data
        response = await http.delete(on_b.upload_url(upload_id), headers=TUS)
        assert response.status_code == 204
