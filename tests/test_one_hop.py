"""A small request does its lock, load, write and unlock in one worker-thread hop.

Counted in-process, on both backends: every blocking call of a :class:`~anytus.FileStore` goes
through its ``_run``, and a :class:`~anytus.FileLocker` that has to wait makes hops of its own
(``acquire``); a free lock makes none.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.abc
import pytest

from anytus import FileLocker, FileStore, UploadInfo
from anytus.asgi import SMALL_BODY, TusApp

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

T = TypeVar("T")
TUS = [(b"tus-resumable", b"1.0.0")]


class CountingStore(FileStore):
    """A FileStore that counts its worker-thread hops."""

    hops = 0

    async def _run(self, fn: Callable[..., T], *args: object, **options: Any) -> T:
        self.hops += 1
        return await super()._run(fn, *args, **options)


class CountingLocker(FileLocker):
    """A FileLocker that counts the locks taken by waiting (``acquire``)."""

    acquires = 0

    async def acquire(self, upload_id: str, **options: Any) -> None:
        self.acquires += 1
        await super().acquire(upload_id, **options)


async def request(
    app: TusApp, method: str, path: str, headers: list[tuple[bytes, bytes]], body: bytes = b""
) -> tuple[int, dict[str, str]]:
    """One request through the ASGI interface; return the status and the headers."""
    sent: list[dict[str, Any]] = []
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await anyio.sleep_forever()
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"tus.test"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("tus.test", 80),
    }
    await app(scope, receive, send)
    start = sent[0]
    return start["status"], {k.decode().lower(): v.decode() for k, v in start["headers"]}


@pytest.fixture
def served(tmp_path: Path) -> tuple[TusApp, CountingStore, CountingLocker]:
    locker = CountingLocker(tmp_path)
    store = CountingStore(tmp_path, locker=locker)
    return TusApp(store), store, locker


async def test_small_requests_take_one_hop(
    served: tuple[TusApp, CountingStore, CountingLocker],
) -> None:
    app, store, locker = served
    status, headers = await request(app, "POST", "/files/", [*TUS, (b"upload-length", b"5")])
    assert status == 201
    path = headers["location"].removeprefix("http://tus.test")
    assert store.hops == 1

    patch = [*TUS, (b"content-type", b"application/offset+octet-stream")]
    status, headers = await request(
        app, "PATCH", path, [*patch, (b"upload-offset", b"0"), (b"content-length", b"3")], b"abc"
    )
    assert (status, headers["upload-offset"]) == (204, "3")
    assert store.hops == 2

    status, headers = await request(app, "HEAD", path, TUS)
    assert (status, headers["upload-offset"]) == (200, "3")
    assert store.hops == 3

    # the last bytes complete the upload: write and fsync in the same hop
    status, headers = await request(
        app, "PATCH", path, [*patch, (b"upload-offset", b"3"), (b"content-length", b"2")], b"de"
    )
    assert (status, headers["upload-offset"]) == (204, "5")
    assert store.hops == 4

    status, _ = await request(app, "DELETE", path, TUS)
    assert status == 204
    assert store.hops == 5
    # no lock was ever waited for, and none is left
    assert locker.acquires == 0
    assert not list(store.path.glob("*.lock"))


async def test_a_held_lock_takes_the_waiting_path(
    served: tuple[TusApp, CountingStore, CountingLocker],
) -> None:
    app, store, locker = served
    info = await store.new_upload(UploadInfo(size=10))
    released = anyio.Event()
    async with anyio.create_task_group() as tg:

        async def hold(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            # another request holds the lock; asked to let go, it does
            await locker.acquire(info.id, on_release=released.set)
            task_status.started()
            await released.wait()
            await locker.release(info.id)

        await tg.start(hold)
        status, headers = await request(app, "HEAD", f"/files/{info.id}", TUS)
    assert (status, headers["upload-offset"]) == (200, "0")
    assert released.is_set()
    assert locker.acquires == 2  # the holder's, and the HEAD's after its one hop found it held


async def test_a_large_body_streams(
    served: tuple[TusApp, CountingStore, CountingLocker],
) -> None:
    app, store, locker = served
    size = SMALL_BODY + 1
    info = await store.new_upload(UploadInfo(size=size))
    headers = [
        *TUS,
        (b"content-type", b"application/offset+octet-stream"),
        (b"upload-offset", b"0"),
        (b"content-length", str(size).encode()),
    ]
    status, response = await request(app, "PATCH", f"/files/{info.id}", headers, b"x" * size)
    assert (status, response["upload-offset"]) == (204, str(size))
    assert locker.acquires == 1
