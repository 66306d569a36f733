"""TusApp driven in-process: the edge cases that are hard to produce over a real socket.

A tiny driver plays the server: it hands the app a scope, feeds ``receive`` from a queue the test
controls (body pieces, stalls, ``http.disconnect``) and records what the app sends. The store is a
real :class:`~anytus.FileStore` on ``tmp_path``. Real-HTTP behaviour is in ``tests/test_http*.py``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import os
import time
from typing import TYPE_CHECKING, Any, cast

import anyio
import anyio.abc
import pytest
import sniffio
import trio
from trio.testing import MockClock

from anytus import FileStore, HookRejected, MemoryLocker, UploadInfo
from anytus._asgi_types import ASGIReceiveEvent, ASGISendEvent, HTTPScope, Scope
from anytus.asgi import HookRequest, TusApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

TUS = {"Tus-Resumable": "1.0.0"}
PATCH = {**TUS, "Content-Type": "application/offset+octet-stream"}


class Reply:
    """What the app sent for one request."""

    def __init__(self) -> None:
        self.status: int | None = None
        self.headers: dict[str, str] = {}
        self.body = bytearray()
        self.complete = False
        self.messages: list[ASGISendEvent] = []

    def __repr__(self) -> str:
        return f"Reply({self.status}, {self.headers}, {bytes(self.body)[:80]!r})"

    @property
    def text(self) -> str:
        return self.body.decode()


class Exchange:
    """One request in flight. The test pushes body messages; the app's replies are recorded."""

    def __init__(
        self,
        app: TusApp,
        method: str,
        path: str,
        headers: dict[str, str],
        *,
        block_send_after: int | None = None,
    ) -> None:
        self.app = app
        self.reply = Reply()
        self.finished = anyio.Event()
        self.error: BaseException | None = None
        self._to_app, self._from_test = anyio.create_memory_object_stream[ASGIReceiveEvent](
            math.inf
        )
        self._receiving = anyio.Event()
        self._sent = anyio.Event()
        self._block_send_after = block_send_after
        self.scope: HTTPScope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode("latin-1"),
            "query_string": b"",
            "root_path": "",
            "headers": [
                (name.lower().encode("latin-1"), value.encode("latin-1"))
                for name, value in {"Host": "tus.test", **headers}.items()
            ],
            "client": ("127.0.0.1", 40000),
            "server": ("127.0.0.1", 80),
        }

    def push(self, data: bytes, *, more: bool = True) -> None:
        self._to_app.send_nowait({"type": "http.request", "body": data, "more_body": more})

    def disconnect(self) -> None:
        self._to_app.send_nowait({"type": "http.disconnect"})

    async def wait_receiving(self) -> None:
        """Wait until the app asks for more body and there is none queued (it has taken it all)."""
        while True:
            self._receiving = anyio.Event()
            await self._receiving.wait()
            if self._from_test.statistics().current_buffer_used == 0:
                return

    async def wait_sent(self, count: int) -> None:
        """Wait until the app has sent *count* messages."""
        while len(self.reply.messages) < count:
            self._sent = anyio.Event()
            await self._sent.wait()

    async def _receive(self) -> ASGIReceiveEvent:
        self._receiving.set()
        return await self._from_test.receive()

    async def _send(self, message: ASGISendEvent) -> None:
        reply = self.reply
        reply.messages.append(message)
        self._sent.set()
        if message["type"] == "http.response.start":
            assert reply.status is None, "response started twice"
            reply.status = message["status"]
            for name, value in message["headers"]:
                key = name.decode("latin-1").lower()
                text = value.decode("latin-1")
                reply.headers[key] = (
                    f"{reply.headers[key]}, {text}" if key in reply.headers else text
                )
        elif message["type"] == "http.response.body":
            assert reply.status is not None, "body before start"
            assert not reply.complete, "body after the end"
            reply.body += message["body"]
            reply.complete = not message["more_body"]
            if self._block_send_after is not None and len(reply.messages) > self._block_send_after:
                # a client that stopped reading: send blocks (until the app is cancelled)
                await anyio.sleep_forever()

    async def run(self) -> None:
        try:
            await self.app(cast("Scope", self.scope), self._receive, self._send)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._to_app.close()
            self._from_test.close()
            self.finished.set()


async def call(
    app: TusApp, method: str, path: str, headers: dict[str, str] | None = None, body: bytes = b""
) -> Reply:
    """One whole request: the body in one message, then wait for the app to finish."""
    exchange = Exchange(app, method, path, headers or {})
    exchange.push(body, more=False)
    await exchange.run()
    return exchange.reply


async def create(app: TusApp, length: int | None, **headers: str) -> str:
    length_header = (
        {"Upload-Length": str(length)} if length is not None else {"Upload-Defer-Length": "1"}
    )
    reply = await call(app, "POST", "/files/", {**TUS, **length_header, **headers})
    assert reply.status == 201, reply
    location = reply.headers["location"]
    assert location.startswith("http://tus.test/files/")
    return location.removeprefix("http://tus.test")


async def offset_of(app: TusApp, path: str) -> int:
    reply = await call(app, "HEAD", path, TUS)
    assert reply.status == 200, reply
    return int(reply.headers["upload-offset"])


def virtual_time(autojump_threshold: float = 0.01) -> pytest.MarkDecorator:
    """Run a test on asyncio (real time: the timeouts involved are short) and on trio with a
    :class:`~trio.testing.MockClock` that jumps to the next deadline whenever every task waits,
    so that a timeout passes without anyone waiting for it. Time is measured with
    ``anyio.current_time()``, which is the mock clock's on trio.

    The clock also jumps while a task waits for a worker thread, to whatever deadline is
    pending: such a test uses :func:`memory_store` (its locks take no thread) and
    :func:`guard` (no deadline of its own on trio). A test whose pending deadline must not pass
    while the store works in a thread gives the clock a longer *autojump_threshold* of real time.
    The default is not 0: with no deadline pending, a threshold of 0 makes trio's run loop poll
    without sleeping while the store works in a thread, which starves that thread of the GIL.
    """
    return pytest.mark.parametrize(
        "anyio_backend",
        [
            pytest.param(("asyncio", {"debug": True}), id="asyncio"),
            pytest.param(
                ("trio", {"clock": MockClock(autojump_threshold=autojump_threshold)}), id="trio"
            ),
        ],
    )


def guard(seconds: float) -> contextlib.AbstractContextManager[object]:
    """``fail_after(seconds)`` in real time; nothing under a mock clock, which would jump to
    that deadline while the store works in a thread."""
    if sniffio.current_async_library() == "trio" and isinstance(
        trio.lowlevel.current_clock(), MockClock
    ):
        return contextlib.nullcontext()
    return anyio.fail_after(seconds)


def memory_store(tmp_path: Path) -> FileStore:
    """A FileStore whose locks live in memory: taking a free lock takes no worker thread."""
    return FileStore(tmp_path / "uploads", locker=MemoryLocker())


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "uploads")


@pytest.fixture
def finished() -> list[UploadInfo]:
    return []


@pytest.fixture
def app(store: FileStore, finished: list[UploadInfo]) -> TusApp:
    async def on_finish(info: UploadInfo) -> None:
        finished.append(info)

    return TusApp(store, on_finish=on_finish, lock_timeout=5.0, idle_timeout=10.0)


@pytest.fixture
async def task_group() -> AsyncIterator[anyio.abc.TaskGroup]:
    async with anyio.create_task_group() as tg:
        yield tg
        tg.cancel_scope.cancel()


# -- request bodies -------------------------------------------------------------------------------


async def test_disconnect_mid_body_keeps_the_bytes_and_answers(app: TusApp) -> None:
    path = await create(app, 100)
    exchange = Exchange(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"})
    exchange.push(b"a" * 20)
    exchange.push(b"b" * 10)
    exchange.disconnect()
    with anyio.fail_after(5):
        await exchange.run()
    # answered all the same: the client may only have half-closed, and reads on (a server with
    # nobody to send to drops the answer; granian answers 500 itself if the app gives none)
    assert exchange.reply.status == 204
    assert exchange.reply.complete
    assert exchange.reply.headers["upload-offset"] == "30"
    assert await offset_of(app, path) == 30


async def test_an_answer_to_a_client_that_is_gone_may_raise_oserror(app: TusApp) -> None:
    """ASGI 2.4: ``send`` on a closed connection may raise OSError; the app ends quietly."""

    class GoneExchange(Exchange):
        async def _send(self, message: ASGISendEvent) -> None:
            raise ConnectionResetError("the client is gone")

    path = await create(app, 100)
    exchange = GoneExchange(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"})
    exchange.push(b"a" * 20)
    exchange.disconnect()
    with anyio.fail_after(5):
        await exchange.run()
    assert await offset_of(app, path) == 20


async def test_body_past_the_length_stores_exactly_what_fits(
    app: TusApp, store: FileStore, finished: list[UploadInfo]
) -> None:
    path = await create(app, 15)
    exchange = Exchange(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"})
    # no Content-Length: the excess is only seen while streaming (tusd's OverflowWithoutLength)
    exchange.push(b"x" * 10)
    exchange.push(b"y" * 16, more=False)
    await exchange.run()
    assert exchange.reply.status == 413
    assert exchange.reply.text.startswith("ERR_UPLOAD_SIZE_EXCEEDED: ")
    info = await store.get_info(path.rsplit("/", 1)[1])
    assert info.offset == 15
    async with store.get_reader(info.id) as stream:
        assert b"".join([chunk async for chunk in stream]) == b"x" * 10 + b"y" * 5
    # the upload is complete: on_finish ran, once
    assert [i.id for i in finished] == [info.id]


async def test_deferred_length_is_capped_at_max_size(store: FileStore) -> None:
    app = TusApp(store, max_size=8)
    path = await create(app, None)
    reply = await call(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"}, b"0123456789")
    assert reply.status == 413
    assert reply.text.startswith("ERR_MAX_SIZE_EXCEEDED: ")
    assert await offset_of(app, path) == 8


# The idle watchdog runs beside the store's first thread hop (opening the file): a clock that
# jumped the moment the loop waits for that thread would time the request out before it took
# the body. 50 ms of real idleness first is still 6 times quicker than real time.
@virtual_time(autojump_threshold=0.05)
async def test_idle_timeout_ends_the_request_and_keeps_the_bytes(tmp_path: Path) -> None:
    app = TusApp(memory_store(tmp_path), idle_timeout=0.3)
    path = await create(app, 100)
    exchange = Exchange(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"})
    exchange.push(b"hello")
    started = anyio.current_time()
    with guard(5):
        await exchange.run()
    assert 0.3 <= anyio.current_time() - started < 3
    # 500, as tusd: tus clients retry on 5xx
    assert exchange.reply.status == 500
    assert exchange.reply.text.startswith("ERR_READ_TIMEOUT: ")
    assert "upload-offset" not in exchange.reply.headers
    assert await offset_of(app, path) == 5


async def test_release_request_interrupts_a_stalled_patch(
    app: TusApp, task_group: anyio.abc.TaskGroup
) -> None:
    path = await create(app, 1000)
    patch = Exchange(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"})
    task_group.start_soon(patch.run)
    patch.push(b"z" * 300)
    # the PATCH holds the lock and waits for more body that never comes
    with anyio.fail_after(5):
        await patch.wait_receiving()

    started = time.monotonic()
    with anyio.fail_after(5):
        offset = await offset_of(app, path)
        await patch.finished.wait()
    # the HEAD got the lock quickly (not after lock_timeout or idle_timeout), and saw the bytes
    assert time.monotonic() - started < 2
    assert offset == 300
    assert patch.reply.status == 400
    assert patch.reply.text.startswith("ERR_UPLOAD_INTERRUPTED: ")
    # the upload goes on from there
    reply = await call(app, "PATCH", path, {**PATCH, "Upload-Offset": "300"}, b"more")
    assert (reply.status, reply.headers["upload-offset"]) == (204, "304")


async def test_interrupted_patch_with_checksum_is_rolled_back(
    app: TusApp, task_group: anyio.abc.TaskGroup
) -> None:
    path = await create(app, 1000)
    reply = await call(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"}, b"keep")
    assert reply.status == 204
    digest = base64.b64encode(hashlib.sha1(b"x" * 100).digest()).decode()
    headers = {**PATCH, "Upload-Offset": "4", "Upload-Checksum": f"sha1 {digest}"}
    patch = Exchange(app, "PATCH", path, headers)
    task_group.start_soon(patch.run)
    patch.push(b"x" * 50)
    with anyio.fail_after(5):
        await patch.wait_receiving()
        # half a chunk cannot be verified: it must not count
        assert await offset_of(app, path) == 4
        await patch.finished.wait()
    assert patch.reply.status == 400


@virtual_time()
async def test_lock_timeout_is_423(tmp_path: Path) -> None:
    store = memory_store(tmp_path)
    app = TusApp(store, lock_timeout=0.3)
    path = await create(app, 10)
    upload_id = path.rsplit("/", 1)[1]
    # a holder that ignores release requests
    async with store.lock(upload_id):
        started = anyio.current_time()
        reply = await call(app, "HEAD", path, TUS)
    assert reply.status == 423
    assert 0.3 <= anyio.current_time() - started < 3
    assert reply.body == b""  # HEAD: no body


async def test_get_ends_when_the_client_disconnects(tmp_path: Path) -> None:
    # the download is many chunks (reads are 64 KiB or more), and the client stops reading
    store = FileStore(tmp_path / "uploads", buffer_size=64 * 1024)
    app = TusApp(store)
    size = 16 * 64 * 1024
    path = await create(app, size)
    assert (
        await call(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"}, b"d" * size)
    ).status == 204
    exchange = Exchange(app, "GET", path, {}, block_send_after=2)
    exchange.push(b"", more=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(exchange.run)
        with anyio.fail_after(5):
            await exchange.wait_sent(3)
        exchange.disconnect()
        with anyio.fail_after(5):
            await exchange.finished.wait()
    assert exchange.reply.status == 200
    assert not exchange.reply.complete


async def test_get_does_not_hold_the_lock_while_sending(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "uploads", buffer_size=64 * 1024)
    app = TusApp(store, lock_timeout=1.0)
    half = 8 * 64 * 1024
    path = await create(app, 2 * half)
    assert (
        await call(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"}, b"g" * half)
    ).status == 204
    # a download whose client reads slowly (stalled after the first chunk)...
    download = Exchange(app, "GET", path, {}, block_send_after=2)
    download.push(b"", more=False)
    async with anyio.create_task_group() as tg:
        tg.start_soon(download.run)
        with anyio.fail_after(5):
            await download.wait_sent(3)
        # ...neither delays nor is interrupted by an upload to the same resource
        reply = await call(app, "PATCH", path, {**PATCH, "Upload-Offset": str(half)}, b"h" * half)
        assert reply.status == 204
        assert download.finished.is_set() is False
        tg.cancel_scope.cancel()


# -- on_finish ------------------------------------------------------------------------------------


async def test_on_finish_exactly_once_per_completed_upload(
    app: TusApp, finished: list[UploadInfo]
) -> None:
    # an empty upload is complete when created
    empty = await create(app, 0)
    # two PATCHes, then a third on the complete upload
    two = await create(app, 6)
    for offset, data in ((0, b"abc"), (3, b"def")):
        reply = await call(app, "PATCH", two, {**PATCH, "Upload-Offset": str(offset)}, data)
        assert reply.status == 204
    reply = await call(app, "PATCH", two, {**PATCH, "Upload-Offset": "6"}, b"")
    assert (reply.status, reply.headers["upload-offset"]) == (204, "6")
    # creation-with-upload completing at once
    reply = await call(
        app, "POST", "/files/", {**PATCH, "Upload-Length": "3", "Upload-Metadata": "k"}, b"xyz"
    )
    assert (reply.status, reply.headers["upload-offset"]) == (201, "3")
    with_upload = reply.headers["location"].removeprefix("http://tus.test")
    # a deferred length declared on the last PATCH
    deferred = await create(app, None)
    reply = await call(app, "PATCH", deferred, {**PATCH, "Upload-Offset": "0"}, b"12")
    assert reply.status == 204
    reply = await call(
        app, "PATCH", deferred, {**PATCH, "Upload-Offset": "2", "Upload-Length": "4"}, b"34"
    )
    assert reply.status == 204
    # declaring it again (a retried last PATCH) is harmless and finishes nothing twice
    reply = await call(
        app, "PATCH", deferred, {**PATCH, "Upload-Offset": "4", "Upload-Length": "4"}, b""
    )
    assert reply.status == 204
    # a concatenation: both partials finish, then the final
    parts = []
    for data in (b"left-", b"right"):
        reply = await call(
            app,
            "POST",
            "/files/",
            {**PATCH, "Upload-Length": str(len(data)), "Upload-Concat": "partial"},
            data,
        )
        parts.append(reply.headers["location"])
    reply = await call(app, "POST", "/files/", {**TUS, "Upload-Concat": "final;" + " ".join(parts)})
    assert reply.status == 201
    final = reply.headers["location"].removeprefix("http://tus.test")

    ids = [info.id for info in finished]
    expected = [
        empty,
        two,
        with_upload,
        deferred,
        *[p.removeprefix("http://tus.test") for p in parts],
        final,
    ]
    assert ids == [path.rsplit("/", 1)[1] for path in expected]
    assert all(info.is_complete for info in finished)
    assert finished[-1].is_final
    assert finished[-1].offset == 10


async def test_on_finish_failure_is_a_500_without_traceback(
    store: FileStore, caplog: pytest.LogCaptureFixture
) -> None:
    async def on_finish(info: UploadInfo) -> None:
        raise RuntimeError("secret detail /etc/shadow")

    app = TusApp(store, on_finish=on_finish)
    with caplog.at_level(logging.ERROR, logger="anytus"):
        reply = await call(app, "POST", "/files/", {**TUS, "Upload-Length": "0"})
    assert reply.status == 500
    assert reply.text == "ERR_INTERNAL_SERVER_ERROR: internal server error\n"
    assert any("secret detail" in (record.exc_text or "") for record in caplog.records)


async def test_on_create_can_refuse(store: FileStore) -> None:
    seen: list[tuple[UploadInfo, HookRequest]] = []

    async def on_create(info: UploadInfo, request: HookRequest) -> None:
        seen.append((info, request))
        if info.metadata.get("filename") == "bad":
            raise HookRejected(422, "no bad files")

    app = TusApp(store, on_create=on_create)
    bad = base64.b64encode(b"bad").decode()
    reply = await call(
        app, "POST", "/files/", {**TUS, "Upload-Length": "1", "Upload-Metadata": f"filename {bad}"}
    )
    assert (reply.status, reply.text) == (422, "ERR_REJECTED_BY_HOOK: no bad files\n")
    assert await store.list_uploads() == []
    info, request = seen[0]
    assert (info.size, info.id) == (1, "")
    assert (request.method, request.path, request.client) == (
        "POST",
        "/files/",
        ("127.0.0.1", 40000),
    )
    assert request.headers["upload-length"] == "1"


# -- expiration and lifespan ----------------------------------------------------------------------


async def age(store: FileStore, path: str, seconds: float) -> None:
    """Make an upload look idle for *seconds* (its data file's mtime is its last activity)."""
    bin_path = store.path / (path.rsplit("/", 1)[1] + ".bin")
    then = time.time() - seconds
    await anyio.to_thread.run_sync(os.utime, bin_path, (then, then))


async def test_expired_upload_is_gone(store: FileStore) -> None:
    app = TusApp(store, expire_after=60)
    path = await create(app, 10)
    reply = await call(app, "HEAD", path, TUS)
    assert "upload-expires" in reply.headers
    await age(store, path, 61)
    reply = await call(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"}, b"late")
    assert reply.status == 410
    assert (await call(app, "HEAD", path, TUS)).status == 404


class _WatchedStore(FileStore):
    """A FileStore that says when a cleanup pass removed something."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.removed = anyio.Event()

    async def cleanup(self, expire_after: float, *, now: float | None = None) -> list[str]:
        removed = await super().cleanup(expire_after, now=now)
        if removed:
            self.removed.set()
        return removed


async def test_lifespan_runs_the_periodic_cleanup(tmp_path: Path) -> None:
    store = _WatchedStore(tmp_path / "uploads")
    app = TusApp(store, expire_after=60, cleanup_interval=0.05)
    stale = await create(app, 10)
    fresh = await create(app, 10)
    await age(store, stale, 120)

    to_app, from_test = anyio.create_memory_object_stream[ASGIReceiveEvent](10)
    sent: list[ASGISendEvent] = []

    async def send(message: ASGISendEvent) -> None:
        sent.append(message)

    async with to_app, from_test, anyio.create_task_group() as tg:
        tg.start_soon(
            app,
            cast("Scope", {"type": "lifespan", "asgi": {"version": "3.0"}}),
            from_test.receive,
            send,
        )
        await to_app.send({"type": "lifespan.startup"})
        with anyio.fail_after(5):
            await store.removed.wait()
        assert sent == [{"type": "lifespan.startup.complete"}]
        await to_app.send({"type": "lifespan.shutdown"})
    assert sent[-1] == {"type": "lifespan.shutdown.complete"}
    assert await store.list_uploads() == [fresh.rsplit("/", 1)[1]]


async def test_without_lifespan_requests_drive_the_cleanup(store: FileStore) -> None:
    # due at every request: the interval has always passed by the next one
    app = TusApp(store, expire_after=60, cleanup_interval=1e-9)
    stale = await create(app, 10)
    await age(store, stale, 120)
    await call(app, "OPTIONS", "/files/")
    assert await store.list_uploads() == []


async def test_cleanup_method(store: FileStore) -> None:
    assert await TusApp(store).cleanup() == []
    app = TusApp(store, expire_after=60)
    stale = await create(app, 10)
    await create(app, 0)  # complete uploads never expire
    await age(store, stale, 120)
    assert await app.cleanup() == [stale.rsplit("/", 1)[1]]


# -- routing corners ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/files/..%2F..%2Fetc%2Fpasswd", "/files/a%2Fb", "/files/%00", "/files/x.info", "/elsewhere"],
)
async def test_hostile_paths_are_404(app: TusApp, path: str) -> None:
    reply = await call(app, "HEAD", path, TUS)
    assert reply.status == 404


async def test_method_override(app: TusApp) -> None:
    path = await create(app, 4)
    reply = await call(
        app,
        "POST",
        path,
        {**PATCH, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"},
        b"abcd",
    )
    assert (reply.status, reply.headers["upload-offset"]) == (204, "4")
    reply = await call(app, "POST", path, {**TUS, "X-HTTP-Method-Override": "DELETE"})
    assert reply.status == 204
    assert (await call(app, "HEAD", path, TUS)).status == 404


async def test_websocket_scope_is_refused(app: TusApp) -> None:
    async def receive() -> ASGIReceiveEvent:
        raise AssertionError("not called")

    async def send(message: ASGISendEvent) -> None:
        raise AssertionError("not called")

    await app(cast("Scope", {"type": "websocket"}), receive, send)


FILESTORE_EXTENSIONS = (
    "creation,creation-with-upload,creation-defer-length,termination,concatenation,checksum"
)


@pytest.mark.parametrize(
    ("options", "extensions", "max_size"),
    [
        ({}, FILESTORE_EXTENSIONS, None),
        ({"max_size": 1000, "expire_after": 60}, FILESTORE_EXTENSIONS + ",expiration", "1000"),
    ],
)
async def test_options_advertises_what_the_app_and_store_do(
    store: FileStore, options: dict[str, Any], extensions: str, max_size: str | None
) -> None:
    reply = await call(TusApp(store, **options), "OPTIONS", "/files/")
    assert reply.status == 200
    assert reply.headers["tus-extension"] == extensions
    assert reply.headers.get("tus-max-size") == max_size


async def test_options_outside_the_base_path_is_404(app: TusApp) -> None:
    assert (await call(app, "OPTIONS", "/files/")).status == 200
    assert (await call(app, "OPTIONS", "/elsewhere")).status == 404


async def test_head_override_on_a_post_keeps_the_framing_right(app: TusApp) -> None:
    path = await create(app, 10)
    await call(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"}, b"12345")
    reply = await call(app, "POST", path, {**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert reply.status == 200
    assert reply.headers["upload-offset"] == "5"
    # the real method is POST: the response has a body, and its Content-Length says so
    assert reply.headers["content-length"] == str(len(reply.body)) == "0"


async def test_short_unread_body_is_drained_after_the_answer(app: TusApp) -> None:
    path = await create(app, 4)
    exchange = Exchange(app, "PATCH", path, {**PATCH, "Upload-Offset": "3", "Content-Length": "9"})
    exchange.push(b"12345", more=True)
    exchange.push(b"6789", more=False)
    await exchange.run()
    # 409 without using the body; the rest is read (and dropped) after the answer, so that the
    # connection stays usable and a client that writes everything first gets the answer
    assert exchange.reply.status == 409
    assert "connection" not in exchange.reply.headers
    assert exchange._from_test.statistics().current_buffer_used == 0
    assert await offset_of(app, path) == 0


async def test_short_chunked_body_is_drained_too(app: TusApp) -> None:
    path = await create(app, 4)
    headers = {**PATCH, "Upload-Offset": "3", "Transfer-Encoding": "chunked"}
    exchange = Exchange(app, "PATCH", path, headers)
    for _ in range(20):
        exchange.push(b"x" * 1000)
    exchange.push(b"", more=False)
    await exchange.run()
    assert exchange.reply.status == 409
    assert "connection" not in exchange.reply.headers
    assert exchange._from_test.statistics().current_buffer_used == 0


@virtual_time()
async def test_an_early_answer_waits_a_bounded_time_for_the_unread_body(tmp_path: Path) -> None:
    # the rest of the body is read and dropped for at most min(idle_timeout, 5 s), then the
    # response ends with the body unread, and the server closes the connection
    app = TusApp(memory_store(tmp_path), idle_timeout=0.5)
    path = await create(app, 4)
    headers = {**PATCH, "Upload-Offset": "3", "Content-Length": str(64 << 20)}
    exchange = Exchange(app, "PATCH", path, headers)
    exchange.push(b"x" * 1000)
    started = anyio.current_time()
    with guard(5):
        await exchange.run()
    assert 0.5 <= anyio.current_time() - started < 3
    assert exchange.reply.status == 409
    assert exchange.reply.text.startswith("ERR_MISMATCHED_OFFSET: ")


@virtual_time()
async def test_stalled_body_closes_the_connection(tmp_path: Path) -> None:
    app = TusApp(memory_store(tmp_path), idle_timeout=0.2)
    path = await create(app, 100)
    exchange = Exchange(app, "PATCH", path, {**PATCH, "Upload-Offset": "0", "Content-Length": "50"})
    exchange.push(b"x" * 10)
    with guard(5):
        await exchange.run()
    assert exchange.reply.status == 500
    assert exchange.reply.headers["connection"] == "close"


async def test_read_body_leaves_the_connection_alone(app: TusApp) -> None:
    path = await create(app, 4)
    reply = await call(
        app, "PATCH", path, {**PATCH, "Upload-Offset": "0", "Content-Length": "2"}, b"12"
    )
    assert reply.status == 204
    assert "connection" not in reply.headers


async def test_checksum_mismatch_discards_the_chunk(app: TusApp) -> None:
    path = await create(app, 10)
    good = base64.b64encode(hashlib.sha1(b"abc").digest()).decode()
    reply = await call(
        app,
        "PATCH",
        path,
        {**PATCH, "Upload-Offset": "0", "Upload-Checksum": f"sha1 {good}"},
        b"abc",
    )
    assert (reply.status, reply.headers["upload-offset"]) == (204, "3")
    reply = await call(
        app,
        "PATCH",
        path,
        {**PATCH, "Upload-Offset": "3", "Upload-Checksum": f"sha1 {good}"},
        b"xyz",
    )
    assert reply.status == 460
    assert reply.text.startswith("ERR_CHECKSUM_MISMATCH: ")
    assert await offset_of(app, path) == 3


async def test_get_checks_tus_resumable_only_when_it_is_sent(app: TusApp) -> None:
    path = await create(app, 3)
    reply = await call(app, "PATCH", path, {**PATCH, "Upload-Offset": "0"}, b"abc")
    assert reply.status == 204
    # a plain browser link sends no Tus-Resumable: the download works
    reply = await call(app, "GET", path, {})
    assert reply.status == 200
    assert bytes(reply.body) == b"abc"
    # a version we do not speak is refused, as on every other tus request
    reply = await call(app, "GET", path, {"Tus-Resumable": "0.2.2"})
    assert reply.status == 412
    assert reply.headers["tus-version"] == "1.0.0"
