"""What only S3Store does: tusd's s3store layout (parts, the incomplete part, the info object),
multipart completion, server-side concatenation, cleanup of abandoned multipart uploads, the
lock guard, and TusApp on top. The behaviours it shares with the other stores are in
test_store_contract.py. Runs against moto's S3 server (or ``ANYTUS_TEST_S3_ENDPOINT``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from _helpers import Chunks, pattern
from _server import CLIENT_TLS, TUS, TusClient, serve_app
from anytus import (
    LockUnavailable,
    RedisLocker,
    S3Store,
    UploadInfo,
    UploadNotFinished,
    UploadNotFound,
)
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from _services import (
        RedisServer,
        S3Service,
    )

MIB = 1 << 20
PART = 5 * MIB


@pytest.fixture
def store(s3: S3Service, s3_prefix: str) -> S3Store:
    return S3Store(s3.bucket, prefix=s3_prefix, client=s3.client)


async def keys(s3: S3Service, prefix: str) -> list[str]:
    found = await anyio.to_thread.run_sync(s3.keys, prefix)
    return [key[len(prefix) :] for key in found]


async def read(store: S3Store, upload_id: str, start: int = 0, end: int | None = None) -> bytes:
    async with store.get_reader(upload_id, start=start, end=end) as stream:
        return b"".join([chunk async for chunk in stream])


def pieces(data: bytes, size: int = 256 * 1024) -> Chunks:
    return Chunks(data[i : i + size] for i in range(0, len(data), size))


async def test_parts_tail_and_completion(store: S3Store, s3: S3Service, s3_prefix: str) -> None:
    data = pattern(2 * PART + 3 * MIB, seed=1)
    info = await store.new_upload(UploadInfo(size=len(data), metadata={"filetype": "text/plain"}))
    upload_id = info.id
    assert await keys(s3, s3_prefix) == [f"{upload_id}.info"]

    # less than a part: all in the incomplete part
    assert await store.write_chunk(upload_id, 0, pieces(data[: 3 * MIB])) == 3 * MIB
    assert await keys(s3, s3_prefix) == [f"{upload_id}.info", f"{upload_id}.part"]
    assert (await store.get_info(upload_id)).offset == 3 * MIB

    # the tail and the new bytes make a part, and a new tail
    assert await store.write_chunk(upload_id, 3 * MIB, pieces(data[3 * MIB : PART + MIB])) == (
        PART + MIB - 3 * MIB
    )
    state = await anyio.to_thread.run_sync(store._load, upload_id)
    assert [size for _, size, _ in state.parts] == [PART]
    assert state.tail == MIB
    assert state.info.offset == PART + MIB
    assert state.info.storage["Type"] == "s3store"
    assert await keys(s3, s3_prefix) == [f"{upload_id}.info", f"{upload_id}.part"]
    with pytest.raises(UploadNotFinished):
        await read(store, upload_id)

    # the rest: another full part, then the last (smaller) part, and the object is completed
    assert await store.write_chunk(upload_id, PART + MIB, pieces(data[PART + MIB :])) == (
        len(data) - PART - MIB
    )
    finished = await store.get_info(upload_id)
    assert finished.is_complete
    assert await keys(s3, s3_prefix) == [upload_id, f"{upload_id}.info"]
    assert await anyio.to_thread.run_sync(s3.multipart_uploads, s3_prefix) == []
    assert await read(store, upload_id) == data
    assert await read(store, upload_id, PART - 10, PART + 10) == data[PART - 10 : PART + 10]
    head = await anyio.to_thread.run_sync(
        lambda: s3.client.head_object(Bucket=s3.bucket, Key=s3_prefix + upload_id)
    )
    assert head["ContentLength"] == len(data)
    assert head["ContentType"] == "text/plain"
    # the info object is tusd's document
    body = await anyio.to_thread.run_sync(
        lambda: s3.client.get_object(Bucket=s3.bucket, Key=f"{s3_prefix}{upload_id}.info")[
            "Body"
        ].read()
    )
    assert json.loads(body)["Size"] == len(data)


async def test_cancelled_write_with_parts_keeps_every_byte(store: S3Store) -> None:
    block = pattern(MIB, seed=2)
    size = 9 * MIB
    info = await store.new_upload(UploadInfo(size=size))
    yielded = 0
    enough = anyio.Event()

    async def source() -> AsyncIterator[bytes]:
        nonlocal yielded
        for _ in range(7):
            yielded += len(block)
            yield block
        enough.set()
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:

        async def write() -> None:
            await store.write_chunk(info.id, 0, source())

        tg.start_soon(write)
        await enough.wait()
        tg.cancel_scope.cancel()
    assert (await store.get_info(info.id)).offset == yielded == 7 * MIB
    await store.write_chunk(info.id, yielded, Chunks([block, block]))
    assert await read(store, info.id) == block * 9


async def test_a_stale_incomplete_part_is_not_counted(
    store: S3Store, s3: S3Service, s3_prefix: str
) -> None:
    """A crash after a part was uploaded but before the incomplete part it holds was deleted:
    the offset counts those bytes once, and the next write clears the stale object."""
    data = pattern(PART + 100, seed=3)
    info = await store.new_upload(UploadInfo(size=PART + 200))
    await store.write_chunk(info.id, 0, pieces(data))
    # plant what the crash leaves: an incomplete part that names part 1 (uploaded already)
    await anyio.to_thread.run_sync(
        lambda: s3.client.put_object(
            Bucket=s3.bucket,
            Key=f"{s3_prefix}{info.id}.part",
            Body=b"x" * 1000,
            Metadata={"anytus-next-part": "1"},
        )
    )
    assert (await store.get_info(info.id)).offset == PART
    await store.write_chunk(info.id, PART, Chunks([data[PART:]]))
    assert (await store.get_info(info.id)).offset == PART + 100
    await store.write_chunk(info.id, PART + 100, Chunks([b"y" * 100]))
    assert await read(store, info.id) == data + b"y" * 100


async def test_terminate_aborts_and_removes_everything(
    store: S3Store, s3: S3Service, s3_prefix: str
) -> None:
    info = await store.new_upload(UploadInfo(size=PART + 10))
    await store.write_chunk(info.id, 0, pieces(pattern(PART + 5)))
    assert await anyio.to_thread.run_sync(s3.multipart_uploads, s3_prefix) != []
    await store.terminate(info.id)
    assert await keys(s3, s3_prefix) == []
    assert await anyio.to_thread.run_sync(s3.multipart_uploads, s3_prefix) == []
    with pytest.raises(UploadNotFound):
        await store.get_info(info.id)


async def test_concatenation_by_server_side_copy(store: S3Store, s3: S3Service) -> None:
    one, two = pattern(PART + 1, seed=4), pattern(1234, seed=5)
    partials = []
    for data in (one, two):
        created = await store.new_upload(UploadInfo(size=len(data), is_partial=True))
        await store.write_chunk(created.id, 0, pieces(data))
        partials.append(created.id)
    final = await store.new_upload(UploadInfo(size=None, is_final=True))
    await store.concat_uploads(final.id, partials)
    assert (await store.get_info(final.id)).is_complete
    assert await read(store, final.id) == one + two
    # copied as parts, not streamed: the final object has two parts
    head = await anyio.to_thread.run_sync(
        lambda: s3.client.head_object(Bucket=s3.bucket, Key=store.prefix + final.id, PartNumber=1)
    )
    assert head["PartsCount"] == 2
    # a small first partial cannot be a part: streamed through instead
    final2 = await store.new_upload(UploadInfo(size=None, is_final=True))
    await store.concat_uploads(final2.id, list(reversed(partials)))
    assert await read(store, final2.id) == two + one


async def test_declare_length_at_the_offset_completes(store: S3Store) -> None:
    info = await store.new_upload(UploadInfo(size=None))
    await store.write_chunk(info.id, 0, Chunks([b"abc"]))
    declared = await store.declare_length(info.id, 3)
    assert declared.is_complete
    assert await read(store, info.id) == b"abc"


async def test_cleanup_of_expired_and_abandoned_uploads(
    store: S3Store, s3: S3Service, s3_prefix: str
) -> None:
    idle = await store.new_upload(UploadInfo(size=100))
    await store.write_chunk(idle.id, 0, Chunks([b"abc"]))
    locked = await store.new_upload(UploadInfo(size=100))
    done = await store.new_upload(UploadInfo(size=3))
    await store.write_chunk(done.id, 0, Chunks([b"abc"]))
    # a multipart upload whose creation crashed before its info object was written
    orphan = "0123456789abcdef0123456789abcdef"
    await anyio.to_thread.run_sync(
        lambda: s3.client.create_multipart_upload(Bucket=s3.bucket, Key=s3_prefix + orphan)
    )
    # not expired yet: nothing goes (but the orphan, on moto, whose "Initiated" is always 2010)
    assert await store.cleanup(3600) == []
    assert len(await store.list_uploads()) == 3
    async with store.lock(locked.id):
        removed = await store.cleanup(3600, now=time.time() + 7200)
    assert removed == [idle.id]
    assert await store.list_uploads() == sorted([locked.id, done.id])
    assert await anyio.to_thread.run_sync(s3.multipart_uploads, s3_prefix) == [
        s3_prefix + locked.id
    ]


async def test_a_lost_lock_stops_writes(
    s3: S3Service, s3_prefix: str, redis_server: RedisServer
) -> None:
    """The store asks its RedisLocker before each write: once the lease is gone, nothing more is
    stored, and the request fails with LockUnavailable (503)."""
    locker = RedisLocker(redis_server.url, prefix=s3_prefix, lease=1.0, poll_interval=0.1)
    store = S3Store(s3.bucket, prefix=s3_prefix, client=s3.client, locker=locker)
    info = await store.new_upload(UploadInfo(size=100))
    async with store.lock(info.id):
        upload = await store.get_upload(info.id)
        await upload.write_chunk(Chunks([b"abc"]))
        # the lease lapsed (the host paused, say), and another host may hold the lock now
        await anyio.to_thread.run_sync(locker.client.delete, f"{s3_prefix}lock:{info.id}")
        with pytest.raises(LockUnavailable):
            await upload.write_chunk(Chunks([b"def"]))
    assert (await store.get_info(info.id)).offset == 3
    locker.close()


async def test_tus_app_on_s3(store: S3Store) -> None:
    data = pattern(PART + 300_000, seed=6)
    app = TusApp(store)
    assert "checksum" not in app.extensions
    assert "concatenation" in app.extensions
    async with serve_app(app) as url, httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http:
        tus = TusClient(http, url)
        upload_id = await tus.upload(data, chunk=2 * MIB)
        response = await http.get(tus.upload_url(upload_id))
        assert response.status_code == 200
        assert response.content == data
        response = await http.delete(tus.upload_url(upload_id), headers=TUS)
        assert response.status_code == 204
    assert await store.list_uploads() == []


@pytest.mark.parametrize(
    ("module", "construct", "extra"),
    [
        ("boto3", "anytus.S3Store('bucket')", "anytus[s3]"),
        ("redis", "anytus.RedisLocker('redis://127.0.0.1:1')", "anytus[redis]"),
    ],
)
def test_a_missing_extra_is_named(module: str, construct: str, extra: str) -> None:
    # a child in which the client library cannot be imported
    code = f"import sys; sys.modules[{module!r}] = None; import anytus; {construct}"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:")
    assert extra in last


async def test_a_part_past_a_gap_is_not_counted(
    store: S3Store, s3: S3Service, s3_prefix: str
) -> None:
    """A part that does not follow the others (a writer that lost its lock uploading late, say)
    counts for nothing and is left out of the object."""
    data = pattern(2 * PART + 10, seed=7)
    info = await store.new_upload(UploadInfo(size=len(data)))
    await store.write_chunk(info.id, 0, pieces(data[:PART]))
    multipart = (await store.get_info(info.id)).storage["MultipartUpload"]
    await anyio.to_thread.run_sync(
        lambda: s3.client.upload_part(
            Bucket=s3.bucket,
            Key=s3_prefix + info.id,
            UploadId=multipart,
            PartNumber=3,
            Body=b"z" * PART,
        )
    )
    assert (await store.get_info(info.id)).offset == PART
    await store.write_chunk(info.id, PART, pieces(data[PART:]))
    assert await read(store, info.id) == data
