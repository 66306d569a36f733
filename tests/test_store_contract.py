"""The store contract: what every store does, checked on MemoryStore, FileStore and S3Store alike.

Each test runs once per store (the ``store`` fixture is parametrized) and once per backend. What only
one store does (FileStore's files, durability, thread limits; MemoryStore's clock) is tested in that
store's own module, or in the last class here. The only store-specific help the tests get is
:func:`upload_at`, which makes an upload look last written at a given time.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import re
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import pytest
from anyio.abc import ByteReceiveStream

from _helpers import pattern, stored_names
from anytus import (
    ConcatenatableStore,
    DataStore,
    ExpiringStore,
    FileLocker,
    FileStore,
    InvalidUploadId,
    LengthAlreadyDeclared,
    LengthDeferrableStore,
    Locker,
    LockTimeout,
    MemoryLocker,
    MemoryStore,
    OffsetMismatch,
    OneHopStore,
    S3Store,
    SizeExceeded,
    StoreComposer,
    SyncUpload,
    TerminatableStore,
    TruncatableStore,
    Upload,
    UploadExists,
    UploadInfo,
    UploadIsFinal,
    UploadNotFinished,
    UploadNotFound,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable, Iterable, Iterator, Sequence
    from contextlib import AbstractAsyncContextManager
    from pathlib import Path

    from _services import S3Service

KIB = 1 << 10
MIB = 1 << 20
MISSING = "0123456789abcdef0123456789abcdef"

# static conformance: a store that misses an abstract method is not a concrete class, and mypy
# refuses these assignments
_conforms_memory: type[DataStore] = MemoryStore
_conforms_memory_one_hop: type[OneHopStore] = MemoryStore
_conforms_memory_extensions: tuple[type[TerminatableStore], type[ConcatenatableStore]] = (
    MemoryStore,
    MemoryStore,
)
_conforms_memory_more: tuple[
    type[LengthDeferrableStore], type[TruncatableStore], type[ExpiringStore]
] = (
    MemoryStore,
    MemoryStore,
    MemoryStore,
)
_conforms_file: type[DataStore] = FileStore
_conforms_file_one_hop: type[OneHopStore] = FileStore
_conforms_file_extensions: tuple[type[TerminatableStore], type[ConcatenatableStore]] = (
    FileStore,
    FileStore,
)
_conforms_file_more: tuple[
    type[LengthDeferrableStore], type[TruncatableStore], type[ExpiringStore]
] = (
    FileStore,
    FileStore,
    FileStore,
)

Store = MemoryStore | FileStore | S3Store
#: the stores that do one-hop requests
OneHop = MemoryStore | FileStore

#: what S3Store does not do, and why (each such test still runs on the other stores)
_S3_CANNOT = {
    "one hop": "S3Store is no OneHopStore: every request is several S3 requests",
    "truncate": "S3 cannot shorten an uploaded part: no rollback, no checksum extension",
    "mtime": "an object's LastModified is the S3 server's clock, which tests cannot set",
    "unfinished": "S3 cannot read the parts of an unfinished multipart upload (test_s3store.py "
    "checks the same bytes once the upload is complete)",
}
S3_SKIPS = {
    "test_implements_every_interface": "one hop",
    "test_use_in_registers_every_capability": "truncate",
    "test_modified_at_is_the_time_of_the_last_write": "mtime",
    "test_get_upload_and_its_methods": "truncate",
    "test_cleanup_removes_only_idle_incomplete_unlocked": "mtime",
    "test_cancel_while_streaming_keeps_every_yielded_byte": "unfinished",
}
for _name in ("TestRunNowait", "TestTruncate"):
    S3_SKIPS[_name] = "one hop" if _name == "TestRunNowait" else "truncate"


# --------------------------------------------------------------------------------------------------
# helpers


class Source:
    """An async iterable of byte chunks that records what it handed out.

    After the chunks run out it stops, hangs forever (``hang=True``) or raises ``error``.
    """

    def __init__(
        self,
        chunks: Iterable[bytes],
        *,
        hang: bool = False,
        error: BaseException | None = None,
        checkpoints: bool = False,
        digest: bool = False,
    ) -> None:
        self._chunks = iter(chunks)
        self._hang = hang
        self._error = error
        #: a checkpoint before each chunk, as a network source waits for data
        self._checkpoints = checkpoints
        #: bytes handed out so far
        self.yielded = 0
        #: chunks handed out so far
        self.count = 0
        #: sha256 of the bytes handed out (when ``digest``)
        self.sha256 = hashlib.sha256() if digest else None
        #: set once every chunk has been handed out
        self.drained = anyio.Event()

    def __aiter__(self) -> Source:
        return self

    async def __anext__(self) -> bytes:
        if self._checkpoints:
            await anyio.lowlevel.checkpoint()

        try:
            chunk = next(self._chunks)
        except StopIteration:
            self.drained.set()
            if self._hang:
                await anyio.sleep_forever()
            if self._error is not None:
                raise self._error from None
            raise StopAsyncIteration from None

        self.yielded += len(chunk)
        self.count += 1
        if self.sha256 is not None:
            self.sha256.update(chunk)
        return chunk


def split(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    """Cut *data* into chunks of the given sizes (cycled), the last one whatever is left."""
    sizes = list(sizes)
    position = 0
    index = 0
    while position < len(data):
        size = sizes[index % len(sizes)]
        yield data[position : position + size]
        position += size
        index += 1


class Clock:
    """A wall clock that tests can stop at a given time (MemoryStore's ``clock``)."""

    def __init__(self) -> None:
        self.fixed: float | None = None

    def __call__(self) -> float:
        return time.time() if self.fixed is None else self.fixed


async def upload(store: Store, data: bytes, **fields: Any) -> UploadInfo:
    """Create an upload of ``size=len(data)`` (unless given) and write *data* into it."""
    fields.setdefault("size", len(data))
    info = await store.new_upload(UploadInfo(**fields))
    if data:
        assert await store.write_chunk(info.id, 0, Source([data])) == len(data)
    return info


async def upload_at(
    store: Store, clock: Clock, when: float, data: bytes, **fields: Any
) -> UploadInfo:
    """:func:`upload`, with the upload last written at *when* (the one store-specific helper:
    MemoryStore reads its clock, FileStore the data file's mtime)."""
    clock.fixed = when
    try:
        info = await upload(store, data, **fields)
    finally:
        clock.fixed = None
    if isinstance(store, FileStore):
        await anyio.to_thread.run_sync(os.utime, store.path / f"{info.id}.bin", (when, when))
    return info


async def read_all(
    store: Store | Upload, upload_id: str = "", *, start: int = 0, end: int | None = None
) -> bytes:
    """The bytes a reader hands out (every chunk non-empty), from a store or an Upload."""
    reader: AbstractAsyncContextManager[ByteReceiveStream]
    if isinstance(store, Upload):
        reader = store.get_reader(start=start, end=end)
    else:
        reader = store.get_reader(upload_id, start=start, end=end)
    received = bytearray()
    async with reader as stream:
        async for chunk in stream:
            assert isinstance(chunk, bytes | bytearray)
            assert len(chunk) > 0
            received += chunk
    return bytes(received)


async def leftovers(store: Store) -> list[str]:
    """What the store holds: its uploads, and for a FileStore every file in its directory (for
    an S3Store every object and multipart upload under its prefix)."""
    if isinstance(store, S3Store):

        def objects() -> list[str]:
            client = store.client
            listed = client.list_objects_v2(Bucket=store.bucket, Prefix=store.prefix)
            uploads = client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
            return sorted(
                [item["Key"] for item in listed.get("Contents", [])]
                + [f"multipart {item['Key']}" for item in uploads.get("Uploads", [])]
            )

        return await anyio.to_thread.run_sync(objects)
    if isinstance(store, FileStore):

        def listing() -> list[str]:
            try:
                return stored_names(store.path)
            except FileNotFoundError:
                return []

        return await anyio.to_thread.run_sync(listing)
    return await store.list_uploads()


def _file_store(path: Path, locker: Locker | None) -> Store:
    return FileStore(path / "store", locker=locker)


def _memory_store(clock: Clock, locker: Locker | None) -> Store:
    return MemoryStore(locker=locker, clock=clock)


def _s3_store(service: S3Service, prefix: str, locker: Locker | None) -> Store:
    return S3Store(service.bucket, prefix=prefix, client=service.client, locker=locker)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["MemoryStore", "FileStore", "S3Store"])
def make_store(
    request: pytest.FixtureRequest, tmp_path: Path, clock: Clock
) -> Callable[[Locker | None], Store]:
    """Builds the store under test (construction touches no disk, so tests may call it)."""
    if request.param == "FileStore":
        return functools.partial(_file_store, tmp_path)
    if request.param == "S3Store":
        reason = S3_SKIPS.get(request.node.originalname) or S3_SKIPS.get(
            getattr(request.cls, "__name__", "")
        )
        if reason is not None:
            pytest.skip(f"S3Store: {_S3_CANNOT[reason]}")
        service: S3Service = request.getfixturevalue("s3")
        return functools.partial(_s3_store, service, f"contract-{tmp_path.name}/")
    return functools.partial(_memory_store, clock)


@pytest.fixture
def store(make_store: Callable[[Locker | None], Store]) -> Store:
    return make_store(None)


# --------------------------------------------------------------------------------------------------
# interfaces and composition


class TestInterfaces:
    def test_implements_every_interface(self, store: Store) -> None:
        for interface in (
            DataStore,
            OneHopStore,
            TerminatableStore,
            ConcatenatableStore,
            LengthDeferrableStore,
            TruncatableStore,
            ExpiringStore,
        ):
            assert isinstance(store, interface), interface

    def test_use_in_registers_every_capability(self, store: Store) -> None:
        composer = StoreComposer()
        store.use_in(composer)
        assert composer.core is store
        assert composer.terminater is store
        assert composer.concater is store
        assert composer.length_deferrer is store
        assert composer.truncater is store
        assert composer.expirer is store
        assert composer.locker is store.locker

    def test_custom_locker_is_used(self, make_store: Callable[[Locker | None], Store]) -> None:
        locker = MemoryLocker()
        store = make_store(locker)
        assert store.locker is locker


# --------------------------------------------------------------------------------------------------
# creating and inspecting


class TestCreate:
    async def test_tusd_round_trip(self, store: Store) -> None:
        metadata = {"foo": "hello", "bar": "world"}
        info = await store.new_upload(UploadInfo(size=42, metadata=metadata))
        assert re.fullmatch(r"[0-9a-f]{32}", info.id)
        assert info.size == 42
        assert info.offset == 0
        assert dict(info.metadata) == metadata

        fetched = await store.get_info(info.id)
        assert fetched.id == info.id
        assert fetched.offset == 0
        assert fetched.size == 42
        assert dict(fetched.metadata) == metadata

        n = await store.write_chunk(info.id, 0, Source([b"hello world"]))
        assert n == 11

        fetched = await store.get_info(info.id)
        assert fetched.offset == 11
        assert fetched.size == 42
        assert not fetched.is_complete

        assert await read_all(store, info.id) == b"hello world"

        await store.terminate(info.id)
        with pytest.raises(UploadNotFound):
            await store.get_info(info.id)
        assert await leftovers(store) == []

    async def test_new_upload_ids_are_distinct(self, store: Store) -> None:
        ids = {(await store.new_upload(UploadInfo(size=1))).id for _ in range(20)}
        assert len(ids) == 20

    async def test_new_upload_keeps_the_fields_and_starts_at_zero(self, store: Store) -> None:
        info = await store.new_upload(
            UploadInfo(size=7, metadata={"a": "b"}, is_partial=True, offset=5)
        )
        assert info.offset == 0
        fetched = await store.get_info(info.id)
        assert (fetched.size, fetched.offset, fetched.is_partial) == (7, 0, True)
        assert dict(fetched.metadata) == {"a": "b"}
        assert fetched.storage["Type"] in ("filestore", "memorystore", "s3store")

    async def test_new_upload_uses_a_given_id(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(id="my-upload_1", size=3))
        assert info.id == "my-upload_1"
        assert (await store.get_info("my-upload_1")).size == 3
        assert await store.list_uploads() == ["my-upload_1"]

    async def test_new_upload_refuses_an_existing_id(self, store: Store) -> None:
        await upload(store, b"abc", id="taken")
        with pytest.raises(UploadExists) as exc_info:
            await store.new_upload(UploadInfo(id="taken", size=10))
        assert exc_info.value.status_code == 409
        # the existing upload is untouched
        fetched = await store.get_info("taken")
        assert (fetched.size, fetched.offset) == (3, 3)
        assert await read_all(store, "taken") == b"abc"

    @pytest.mark.parametrize("bad", ["../escape", "a/b", "x.bin", "ünï"])
    async def test_new_upload_refuses_a_malformed_id(self, store: Store, bad: str) -> None:
        with pytest.raises(InvalidUploadId):
            await store.new_upload(UploadInfo(id=bad, size=1))
        assert await leftovers(store) == []

    async def test_zero_length_upload_is_complete_at_once(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=0))
        fetched = await store.get_info(info.id)
        assert fetched.is_complete
        assert await read_all(store, info.id) == b""

    async def test_modified_at_is_the_time_of_the_last_write(
        self, store: Store, clock: Clock
    ) -> None:
        info = await upload_at(store, clock, 1_000_000.0, b"abc", size=10)
        assert (await store.get_info(info.id)).modified_at == pytest.approx(1_000_000.0, abs=0.01)
        before = time.time()
        await store.write_chunk(info.id, 3, Source([b"d"]))
        modified = (await store.get_info(info.id)).modified_at
        assert modified is not None
        # a file's mtime comes from the kernel's coarse clock, a few ms behind time.time()
        assert before - 0.1 <= modified <= time.time() + 0.1


# --------------------------------------------------------------------------------------------------
# missing uploads, malformed IDs


class TestNotFound:
    async def test_get_info_of_missing_id(self, store: Store) -> None:
        with pytest.raises(UploadNotFound):
            await store.get_info(MISSING)

    async def test_every_method_of_a_missing_upload(self, store: Store) -> None:
        with pytest.raises(UploadNotFound):
            await store.get_upload(MISSING)
        with pytest.raises(UploadNotFound):
            await store.write_chunk(MISSING, 0, Source([b"x"]))
        with pytest.raises(UploadNotFound):
            async with store.get_reader(MISSING):
                pass
        with pytest.raises(UploadNotFound):
            await store.terminate(MISSING)
        with pytest.raises(UploadNotFound):
            await store.declare_length(MISSING, 5)
        with pytest.raises(UploadNotFound):
            await store.truncate(MISSING, 0)
        if isinstance(store, OneHopStore):
            with pytest.raises(UploadNotFound):
                await store.run_nowait(MISSING, lambda upload: upload.info)
        # nothing was created for it
        assert await leftovers(store) == []


MALFORMED_IDS = [
    pytest.param("../x", id="parent-traversal"),
    pytest.param("a/b", id="slash"),
    pytest.param("", id="empty"),
    pytest.param("x" * 200, id="very-long"),
    pytest.param("x\x00", id="nul"),
    pytest.param("ünïcödé", id="unicode"),
    pytest.param("..", id="dotdot"),
    pytest.param(".", id="dot"),
    pytest.param("x.bin", id="suffix"),
]


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under *root*, with file contents (None for directories)."""
    result: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        result[relative] = path.read_bytes() if path.is_file() else None
    return result


class TestMalformedIds:
    @pytest.fixture
    def planted(self, tmp_path: Path) -> Path:
        """Files a path traversal would reach: next to a FileStore's directory (``tmp_path /
        "store"``), and in a subdirectory of it."""
        info = UploadInfo(id="x", size=3, offset=0).to_json()
        for name in ("x", "x.bin", "x.info", "x.lock", "x.stop", "..bin", "..info"):
            (tmp_path / name).write_bytes(info if name.endswith(".info") else b"sentinel")
        nested = tmp_path / "store" / "a"
        nested.mkdir(parents=True)
        (nested / "b.bin").write_bytes(b"abc")
        (nested / "b.info").write_bytes(UploadInfo(id="a/b", size=3).to_json())
        (nested / "b.lock").write_bytes(b"1\n")
        return tmp_path

    @pytest.mark.parametrize("bad", MALFORMED_IDS)
    async def test_every_method_refuses(self, store: Store, planted: Path, bad: str) -> None:
        before = snapshot(planted)

        with pytest.raises(InvalidUploadId):
            await store.get_info(bad)
        with pytest.raises(InvalidUploadId):
            await store.get_upload(bad)
        with pytest.raises(InvalidUploadId):
            await store.write_chunk(bad, 0, Source([b"evil"]))
        with pytest.raises(InvalidUploadId):
            async with store.get_reader(bad):
                pass
        with pytest.raises(InvalidUploadId):
            await store.terminate(bad)
        with pytest.raises(InvalidUploadId):
            await store.declare_length(bad, 10)
        with pytest.raises(InvalidUploadId):
            await store.truncate(bad, 0)
        with pytest.raises(InvalidUploadId):
            await store.concat_uploads(bad, [])
        if isinstance(store, OneHopStore):
            with pytest.raises(InvalidUploadId):
                await store.run_nowait(bad, lambda upload: upload.info)
        with pytest.raises(InvalidUploadId):
            async with store.lock(bad, timeout=0.1):
                pass
        with pytest.raises(InvalidUploadId):
            await store.lock_upload(bad, timeout=0.1)
        with pytest.raises(InvalidUploadId):
            await store.locker.acquire(bad, timeout=0.1)
        try:
            await store.unlock_upload(bad)
        except InvalidUploadId:
            pass  # refusing is as good as doing nothing; touching a file is not

        assert snapshot(planted) == before

    @pytest.mark.parametrize("bad", MALFORMED_IDS)
    async def test_concat_refuses_malformed_partials(
        self, store: Store, planted: Path, bad: str
    ) -> None:
        final = await store.new_upload(UploadInfo(size=3, is_final=True))
        before = snapshot(planted)
        with pytest.raises(InvalidUploadId):
            await store.concat_uploads(final.id, [bad])
        assert snapshot(planted) == before
        assert (await store.get_info(final.id)).offset == 0


# --------------------------------------------------------------------------------------------------
# writing


class TestWrite:
    async def test_writes_append_across_calls(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=9))
        assert await store.write_chunk(info.id, 0, Source([b"abc"])) == 3
        assert await store.write_chunk(info.id, 3, Source([b"de", b"f"])) == 3
        assert await store.write_chunk(info.id, 6, Source([b"ghi"])) == 3
        fetched = await store.get_info(info.id)
        assert fetched.offset == 9
        assert fetched.is_complete
        assert await read_all(store, info.id) == b"abcdefghi"

    async def test_empty_source(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=9))
        assert await store.write_chunk(info.id, 0, Source([])) == 0
        assert await store.write_chunk(info.id, 0, Source([b"", b""])) == 0
        assert (await store.get_info(info.id)).offset == 0

    async def test_write_past_size_stores_what_fits(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=10))
        source = Source([b"01234", b"56789AB", b"CDEF"])
        with pytest.raises(SizeExceeded) as exc_info:
            await store.write_chunk(info.id, 0, source)
        assert exc_info.value.status_code == 413
        assert await read_all(store, info.id) == b"0123456789"
        fetched = await store.get_info(info.id)
        assert fetched.offset == 10
        assert fetched.is_complete
        # the source was not read past the chunk that did not fit
        assert source.count == 2

    async def test_write_past_size_in_one_chunk(self, store: Store) -> None:
        info = await upload(store, b"abc", size=5)
        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 3, Source([b"defgh"]))
        assert await read_all(store, info.id) == b"abcde"

    async def test_write_to_complete_upload(self, store: Store) -> None:
        info = await upload(store, b"abc")
        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 3, Source([b"d"]))
        assert await read_all(store, info.id) == b"abc"

    async def test_write_exactly_size_is_fine(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=10))
        assert await store.write_chunk(info.id, 0, Source([b"01234", b"56789"])) == 10
        assert (await store.get_info(info.id)).is_complete

    @pytest.mark.parametrize("offset", [0, 2, 100, -1])
    async def test_offset_mismatch_writes_nothing(self, store: Store, offset: int) -> None:
        info = await upload(store, b"a", size=10)
        source = Source([b"evil"])
        with pytest.raises(OffsetMismatch) as exc_info:
            await store.write_chunk(info.id, offset, source)
        assert exc_info.value.status_code == 409
        assert source.count == 0
        assert await read_all(store, info.id) == b"a"
        assert (await store.get_info(info.id)).offset == 1

    async def test_offset_mismatch_after_offset_moved(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=10))
        await store.write_chunk(info.id, 0, Source([b"abc"]))
        with pytest.raises(OffsetMismatch):
            await store.write_chunk(info.id, 0, Source([b"xyz"]))
        assert await read_all(store, info.id) == b"abc"

    async def test_write_to_final_upload(self, store: Store) -> None:
        part = await upload(store, b"abc", is_partial=True)
        final = await store.new_upload(
            UploadInfo(size=3, is_final=True, partial_uploads=(part.id,))
        )
        with pytest.raises(UploadIsFinal) as exc_info:
            await store.write_chunk(final.id, 0, Source([b"evil"]))
        assert exc_info.value.status_code == 403
        assert (await store.get_info(final.id)).offset == 0

    async def test_many_tiny_chunks_are_stored_in_order(self, store: Store) -> None:
        data = pattern(5000 + 100 * 1000 + 3 * 65536 + 17, seed=1)
        # 5000 one-byte chunks, then 1000 of 100 bytes, empty chunks sprinkled in, then bigger ones
        chunks = [data[i : i + 1] for i in range(5000)]
        chunks += [b""]
        chunks += list(split(data[5000 : 5000 + 100_000], [100]))
        chunks += [b"", b""]
        chunks += list(split(data[105_000:], [65536, 1, 7]))
        assert b"".join(chunks) == data

        info = await store.new_upload(UploadInfo(size=len(data)))
        assert await store.write_chunk(info.id, 0, Source(chunks)) == len(data)
        assert (await store.get_info(info.id)).offset == len(data)
        assert await read_all(store, info.id) == data

    async def test_64_mib_chunk_capped_by_size(self, store: Store) -> None:
        big = pattern(64 * MIB, seed=3)
        info = await store.new_upload(UploadInfo(size=MIB + 1))
        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 0, Source([big]))
        assert (await store.get_info(info.id)).offset == MIB + 1
        assert await read_all(store, info.id) == big[: MIB + 1]

    async def test_writes_of_bytearray_and_memoryview(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=6))
        chunks: list[Any] = [bytearray(b"ab"), memoryview(b"cd"), b"ef"]
        assert await store.write_chunk(info.id, 0, Source(chunks)) == 6
        assert await read_all(store, info.id) == b"abcdef"


async def write_until_the_source_waits(
    store: Store, upload_id: str, offset: int, source: Source
) -> anyio.CancelScope:
    """Write *source* (``hang=True``) and cancel the write once the source has handed out its
    last chunk and waits for more, as a client that goes quiet; the write may still be storing
    that chunk."""
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:

            async def cancel_when_drained() -> None:
                await source.drained.wait()
                scope.cancel()

            tg.start_soon(cancel_when_drained)
            await store.write_chunk(upload_id, offset, source)
    return scope


class TestInterruptedWrite:
    async def test_cancel_while_source_waits_keeps_received_bytes(self, store: Store) -> None:
        data = pattern(1000 + 70_000 + 5, seed=4)
        info = await store.new_upload(UploadInfo(size=10 * MIB))
        source = Source([data[:1000], data[1000:71_000], data[71_000:]], hang=True)

        scope = await write_until_the_source_waits(store, info.id, 0, source)

        assert scope.cancelled_caught
        assert source.drained.is_set()
        assert source.yielded == len(data)
        assert (await store.get_info(info.id)).offset == len(data)
        assert await read_all(store, info.id) == data

    async def test_cancel_while_streaming_keeps_every_yielded_byte(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=1 << 40))
        block = pattern(64 * KIB, seed=5)
        scope = anyio.CancelScope()

        def blocks() -> Iterator[bytes]:
            for count in itertools.count():
                if count == 100:
                    # a few MiB in, with writes in progress; the source never stops on its own
                    scope.cancel()
                yield block

        source = Source(blocks(), checkpoints=True)
        with scope:
            await store.write_chunk(info.id, 0, source)

        assert scope.cancelled_caught
        assert source.yielded >= 100 * len(block)
        fetched = await store.get_info(info.id)
        assert fetched.offset == source.yielded
        assert await read_all(store, info.id) == block * source.count

    async def test_cancel_then_resume(self, store: Store) -> None:
        data = pattern(300_000, seed=6)
        info = await store.new_upload(UploadInfo(size=len(data)))
        source = Source(split(data[:123_457], [10_000]), hang=True)
        await write_until_the_source_waits(store, info.id, 0, source)

        offset = (await store.get_info(info.id)).offset
        assert offset == 123_457
        assert (
            await store.write_chunk(info.id, offset, Source([data[offset:]])) == len(data) - offset
        )
        assert await read_all(store, info.id) == data

    async def test_source_error_propagates_and_bytes_are_kept(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=100))
        source = Source([b"a" * 10, b"b" * 15], error=ConnectionResetError("client went away"))
        with pytest.raises(ConnectionResetError, match="client went away"):
            await store.write_chunk(info.id, 0, source)
        assert await read_all(store, info.id) == b"a" * 10 + b"b" * 15
        assert (await store.get_info(info.id)).offset == 25


# --------------------------------------------------------------------------------------------------
# deferred length, truncation


class TestDeferredLength:
    async def test_deferred_size_then_declare(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        assert info.size_is_deferred

        await store.write_chunk(info.id, 0, Source([b"x" * 100]))
        fetched = await store.get_info(info.id)
        assert fetched.size is None
        assert fetched.offset == 100
        assert not fetched.is_complete

        declared = await store.declare_length(info.id, 150)
        assert declared.size == 150
        assert not declared.size_is_deferred
        assert declared.offset == 100

        fetched = await store.get_info(info.id)
        assert fetched.size == 150
        assert not fetched.size_is_deferred

        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 100, Source([b"y" * 60]))
        assert await read_all(store, info.id) == b"x" * 100 + b"y" * 50

    async def test_declare_twice(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        await store.declare_length(info.id, 10)
        with pytest.raises(LengthAlreadyDeclared) as exc_info:
            await store.declare_length(info.id, 10)
        assert exc_info.value.status_code == 400
        assert (await store.get_info(info.id)).size == 10

    async def test_declare_on_sized_upload(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=5))
        with pytest.raises(LengthAlreadyDeclared):
            await store.declare_length(info.id, 5)
        assert (await store.get_info(info.id)).size == 5

    async def test_declare_below_offset(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        await store.write_chunk(info.id, 0, Source([b"abcdef"]))
        with pytest.raises(LengthAlreadyDeclared):
            await store.declare_length(info.id, 5)
        assert (await store.get_info(info.id)).size_is_deferred

    async def test_declare_equal_to_offset_completes(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        await store.write_chunk(info.id, 0, Source([b"abcdef"]))
        declared = await store.declare_length(info.id, 6)
        assert declared.is_complete
        assert (await store.get_info(info.id)).is_complete

    async def test_tusd_declare_100(self, store: Store) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        await store.declare_length(info.id, 100)
        fetched = await store.get_info(info.id)
        assert fetched.size == 100
        assert not fetched.size_is_deferred


class TestTruncate:
    async def test_truncate_rolls_back(self, store: Store) -> None:
        data = pattern(100, seed=8)
        info = await upload(store, data[:70], size=100)
        await store.truncate(info.id, 40)
        assert (await store.get_info(info.id)).offset == 40
        assert await read_all(store, info.id) == data[:40]
        assert await store.write_chunk(info.id, 40, Source([data[40:]])) == 60
        assert await read_all(store, info.id) == data

    async def test_truncate_to_zero_and_to_offset(self, store: Store) -> None:
        info = await upload(store, b"abc", size=10)
        await store.truncate(info.id, 3)
        assert await read_all(store, info.id) == b"abc"
        await store.truncate(info.id, 0)
        assert (await store.get_info(info.id)).offset == 0

    @pytest.mark.parametrize("offset", [5, -1])
    async def test_truncate_beyond_offset(self, store: Store, offset: int) -> None:
        info = await upload(store, b"abc", size=10)
        with pytest.raises(ValueError, match=r"."):
            await store.truncate(info.id, offset)
        assert await read_all(store, info.id) == b"abc"


# --------------------------------------------------------------------------------------------------
# reading


class TestRead:
    @pytest.mark.parametrize(
        ("start", "end"),
        [
            (0, None),
            (0, 1000),
            (10, 20),
            (0, 1),
            (999, None),
            (500, 1000),
            (0, 0),
            (1000, None),
            (3, 3),
        ],
    )
    async def test_ranges(self, store: Store, start: int, end: int | None) -> None:
        data = pattern(1000, seed=9)
        info = await upload(store, data)
        assert await read_all(store, info.id, start=start, end=end) == data[start:end]

    @pytest.mark.parametrize(
        ("start", "end"), [(0, 1001), (-1, None), (5, 4), (1001, None), (2000, 3000)]
    )
    async def test_ranges_outside_the_stored_bytes(
        self, store: Store, start: int, end: int | None
    ) -> None:
        info = await upload(store, pattern(1000, seed=10), size=2000)
        with pytest.raises(ValueError, match="range"):
            async with store.get_reader(info.id, start=start, end=end):
                pass

    async def test_receive_respects_max_bytes(self, store: Store) -> None:
        data = pattern(1000, seed=12)
        info = await upload(store, data)
        received = bytearray()
        async with store.get_reader(info.id) as stream:
            assert isinstance(stream, ByteReceiveStream)
            while True:
                try:
                    chunk = await stream.receive(7)
                except anyio.EndOfStream:
                    break
                assert 0 < len(chunk) <= 7
                received += chunk
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
        assert received == data

    async def test_receive_after_close(self, store: Store) -> None:
        info = await upload(store, b"abc")
        async with store.get_reader(info.id) as stream:
            await stream.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()

    async def test_end_defaults_to_offset_at_open(self, store: Store) -> None:
        info = await upload(store, b"hello", size=11)
        async with store.get_reader(info.id) as stream:
            await store.write_chunk(info.id, 5, Source([b" world"]))
            received = bytearray()
            async for chunk in stream:
                received += chunk
        assert received == b"hello"
        assert await read_all(store, info.id) == b"hello world"

    async def test_reads_an_unfinished_upload(self, store: Store) -> None:
        info = await upload(store, b"abcde", size=10)
        assert await read_all(store, info.id) == b"abcde"

    async def test_missing_upload(self, store: Store) -> None:
        with pytest.raises(UploadNotFound):
            async with store.get_reader("deadbeef"):
                pass

    async def test_cancelled_reader_exits_cleanly(self, store: Store) -> None:
        info = await upload(store, pattern(10_000, seed=14))
        with anyio.move_on_after(0.05) as scope:
            async with store.get_reader(info.id) as stream:
                await stream.receive(10)
                await anyio.sleep_forever()
        assert scope.cancelled_caught
        assert await read_all(store, info.id) == pattern(10_000, seed=14)


# --------------------------------------------------------------------------------------------------
# terminate, concat


class TestTerminate:
    async def test_terminate_removes_only_that_upload(self, store: Store) -> None:
        info = await upload(store, b"abc")
        other = await upload(store, b"def")
        await store.terminate(info.id)
        with pytest.raises(UploadNotFound):
            await store.get_info(info.id)
        with pytest.raises(UploadNotFound):
            await store.write_chunk(info.id, 3, Source([b"x"]))
        with pytest.raises(UploadNotFound):
            async with store.get_reader(info.id):
                pass
        with pytest.raises(UploadNotFound):
            await store.terminate(info.id)
        assert await store.list_uploads() == [other.id]
        assert await read_all(store, other.id) == b"def"

    async def test_terminate_of_missing_upload(self, store: Store) -> None:
        with pytest.raises(UploadNotFound):
            await store.terminate("cafebabe")


class TestConcat:
    async def _partials(self, store: Store, parts: list[bytes]) -> list[str]:
        return [(await upload(store, part, is_partial=True)).id for part in parts]

    async def test_tusd_concat(self, store: Store) -> None:
        ids = await self._partials(store, [b"abc", b"def", b"ghi"])
        final = await store.new_upload(
            UploadInfo(size=9, is_final=True, partial_uploads=tuple(ids))
        )
        await store.concat_uploads(final.id, ids)

        fetched = await store.get_info(final.id)
        assert fetched.size == 9
        assert fetched.offset == 9
        assert fetched.is_final
        assert fetched.partial_uploads == tuple(ids)
        assert fetched.is_complete
        assert await read_all(store, final.id) == b"abcdefghi"
        # the partials are untouched
        for part_id, part in zip(ids, [b"abc", b"def", b"ghi"], strict=True):
            assert await read_all(store, part_id) == part
            assert (await store.get_info(part_id)).offset == len(part)

    async def test_concat_into_deferred_final_sets_size(self, store: Store) -> None:
        ids = await self._partials(store, [b"ab", b"", b"cde"])
        final = await store.new_upload(
            UploadInfo(size=None, is_final=True, partial_uploads=tuple(ids))
        )
        await store.concat_uploads(final.id, ids)
        fetched = await store.get_info(final.id)
        assert fetched.offset == 5
        assert await read_all(store, final.id) == b"abcde"
        # a finished final upload has a known length
        assert fetched.size == 5
        assert fetched.is_complete

    async def test_the_same_partial_twice(self, store: Store) -> None:
        (part,) = await self._partials(store, [b"ab"])
        final = await store.new_upload(UploadInfo(size=4, is_final=True))
        await store.concat_uploads(final.id, [part, part])
        assert await read_all(store, final.id) == b"abab"

    async def test_unfinished_partial(self, store: Store) -> None:
        done = await upload(store, b"abc", is_partial=True)
        unfinished = await upload(store, b"de", size=3, is_partial=True)
        final = await store.new_upload(
            UploadInfo(size=6, is_final=True, partial_uploads=(done.id, unfinished.id))
        )
        with pytest.raises(UploadNotFinished) as exc_info:
            await store.concat_uploads(final.id, [done.id, unfinished.id])
        assert exc_info.value.status_code == 400
        assert (await store.get_info(final.id)).offset == 0

    async def test_deferred_partial_is_unfinished(self, store: Store) -> None:
        deferred = await upload(store, b"abc", size=None, is_partial=True)
        final = await store.new_upload(
            UploadInfo(size=None, is_final=True, partial_uploads=(deferred.id,))
        )
        with pytest.raises(UploadNotFinished):
            await store.concat_uploads(final.id, [deferred.id])
        assert (await store.get_info(final.id)).offset == 0

    async def test_missing_partial(self, store: Store) -> None:
        done = await upload(store, b"abc", is_partial=True)
        final = await store.new_upload(UploadInfo(size=6, is_final=True))
        with pytest.raises(UploadNotFound):
            await store.concat_uploads(final.id, [done.id, MISSING])
        assert (await store.get_info(final.id)).offset == 0

    async def test_missing_final(self, store: Store) -> None:
        done = await upload(store, b"abc", is_partial=True)
        before = await leftovers(store)
        with pytest.raises(UploadNotFound):
            await store.concat_uploads(MISSING, [done.id])
        assert await leftovers(store) == before
        assert await store.list_uploads() == [done.id]

    async def test_size_is_not_the_sum(self, store: Store) -> None:
        ids = await self._partials(store, [b"abc", b"de"])
        final = await store.new_upload(UploadInfo(size=9, is_final=True))
        with pytest.raises(ValueError, match="bytes"):
            await store.concat_uploads(final.id, ids)
        assert (await store.get_info(final.id)).offset == 0

    async def test_final_is_not_empty(self, store: Store) -> None:
        ids = await self._partials(store, [b"abc"])
        final = await upload(store, b"x", size=4)
        with pytest.raises(ValueError, match="not empty"):
            await store.concat_uploads(final.id, ids)
        assert await read_all(store, final.id) == b"x"


# --------------------------------------------------------------------------------------------------
# listing and cleanup


class TestListAndCleanup:
    async def test_list_uploads(self, store: Store) -> None:
        assert await store.list_uploads() == []
        ids = [(await store.new_upload(UploadInfo(size=i))).id for i in range(3)]
        listed = await store.list_uploads()
        assert sorted(listed) == sorted(ids)
        assert all(isinstance(upload_id, str) for upload_id in listed)

        await store.terminate(ids[0])
        assert sorted(await store.list_uploads()) == sorted(ids[1:])

    async def test_cleanup_removes_only_idle_incomplete_unlocked(
        self, store: Store, clock: Clock
    ) -> None:
        old = time.time() - 7200
        idle = await upload_at(store, clock, old, b"abc", size=10)
        fresh = await upload(store, b"abc", size=10)
        complete = await upload_at(store, clock, old, b"abc")
        locked = await upload_at(store, clock, old, b"abc", size=10)
        deferred = await upload_at(store, clock, old, b"abc", size=None)
        empty = await upload_at(store, clock, old, b"", size=0)

        release_requests: list[int] = []
        await store.lock_upload(locked.id, on_release=lambda: release_requests.append(1))
        try:
            with anyio.fail_after(5):
                removed = await store.cleanup(3600)
            assert sorted(removed) == sorted([idle.id, deferred.id])
            # skipping a locked upload must not interrupt its holder
            assert release_requests == []
            assert (await store.get_info(locked.id)).offset == 3

            # judged against `now`: in two hours, `fresh` is idle too
            with anyio.fail_after(5):
                removed = await store.cleanup(3600, now=time.time() + 7200)
            assert removed == [fresh.id]
            assert release_requests == []
        finally:
            await store.unlock_upload(locked.id)

        assert sorted(await store.list_uploads()) == sorted([complete.id, locked.id, empty.id])
        for gone in (idle, deferred, fresh):
            with pytest.raises(UploadNotFound):
                await store.get_info(gone.id)

        # unlocked, it goes too
        assert await store.cleanup(3600) == [locked.id]
        assert sorted(await store.list_uploads()) == sorted([complete.id, empty.id])
        assert sorted(await leftovers(store)) == sorted(
            name
            for upload_id in (complete.id, empty.id)
            for name in (
                [f"{upload_id}.bin", f"{upload_id}.info"]
                if isinstance(store, FileStore)
                else [upload_id]
            )
        )

    async def test_cleanup_with_nothing_to_do(self, store: Store) -> None:
        await upload(store, b"abc", size=10)
        assert await store.cleanup(3600) == []
        assert len(await store.list_uploads()) == 1

    async def test_cleanup_of_an_empty_store(self, store: Store) -> None:
        assert await store.cleanup(3600) == []


# --------------------------------------------------------------------------------------------------
# locks


class TestLocks:
    async def test_lock_excludes_others_until_released(self, store: Store) -> None:
        info = await upload(store, b"abc", size=10)
        async with store.lock(info.id, timeout=5):
            assert store.locker.locked(info.id)
            with pytest.raises(anyio.WouldBlock):
                await store.locker.acquire_nowait(info.id)
            with pytest.raises(LockTimeout):
                await store.lock_upload(info.id, timeout=0.05)
        assert not store.locker.locked(info.id)
        await store.locker.acquire_nowait(info.id)
        await store.unlock_upload(info.id)

    async def test_lock_upload_asks_the_holder_to_let_go(self, store: Store) -> None:
        info = await upload(store, b"abc", size=10)
        holding = anyio.Event()
        asked = anyio.Event()

        async def holder() -> None:
            async with store.lock(info.id, on_release=asked.set):
                holding.set()
                await asked.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await holding.wait()
            with anyio.fail_after(5):
                await store.lock_upload(info.id)
            assert asked.is_set()
            await store.unlock_upload(info.id)

    async def test_a_lock_is_per_upload(self, store: Store) -> None:
        one = await upload(store, b"a", size=2)
        two = await upload(store, b"b", size=2)
        async with store.lock(one.id), store.lock(two.id, timeout=0.5):
            assert await store.write_chunk(two.id, 1, Source([b"c"])) == 1


# --------------------------------------------------------------------------------------------------
# Upload objects and one-hop requests


class _ForeignUpload(Upload):
    @property
    def info(self) -> UploadInfo:
        return UploadInfo(id="foreign", size=1, offset=1)

    async def write_chunk(self, source: AsyncIterable[bytes]) -> int:
        raise NotImplementedError

    def get_reader(
        self, *, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[ByteReceiveStream]:
        raise NotImplementedError


class TestUpload:
    async def test_get_upload_and_its_methods(self, store: Store) -> None:
        created = await store.new_upload(UploadInfo(size=None, metadata={"k": "v"}))
        async with store.lock(created.id):
            upload_ = await store.get_upload(created.id)
            assert isinstance(upload_, Upload)
            assert upload_.info == await store.get_info(created.id)
            assert upload_.info.id == created.id
            assert dict(upload_.info.metadata) == {"k": "v"}

            assert await upload_.write_chunk(Source([b"hello", b" "])) == 6
            assert upload_.info.offset == 6
            assert await upload_.write_chunk(Source([b"world"])) == 5
            assert upload_.info.offset == 11

            declared = await upload_.declare_length(12)
            assert declared.size == 12
            assert upload_.info.size == 12
            with pytest.raises(LengthAlreadyDeclared):
                await upload_.declare_length(13)

            with pytest.raises(SizeExceeded):
                await upload_.write_chunk(Source([b"!?"]))
            assert upload_.info.offset == 12
            assert upload_.info.is_complete
            assert await read_all(upload_) == b"hello world!"
            assert await read_all(upload_, start=6, end=11) == b"world"

            await upload_.truncate(5)
            assert upload_.info.offset == 5
            with pytest.raises(ValueError, match=r"."):
                await upload_.truncate(6)
            assert (await store.get_info(created.id)).offset == 5

            await upload_.terminate()
        with pytest.raises(UploadNotFound):
            await store.get_info(created.id)

    async def test_write_chunk_keeps_bytes_on_source_error(self, store: Store) -> None:
        created = await store.new_upload(UploadInfo(size=100))
        upload_ = await store.get_upload(created.id)
        with pytest.raises(RuntimeError):
            await upload_.write_chunk(Source([b"abc", b"de"], error=RuntimeError()))
        assert upload_.info.offset == 5
        assert (await store.get_info(created.id)).offset == 5

    async def test_concat_of_upload_objects(self, store: Store) -> None:
        parts = [await upload(store, data, is_partial=True) for data in (b"ab", b"cd")]
        created = await store.new_upload(UploadInfo(size=None, is_final=True))
        final = await store.get_upload(created.id)
        partials = [await store.get_upload(part.id) for part in parts]
        await final.concat(partials)
        assert (final.info.size, final.info.offset) == (4, 4)
        assert await read_all(final) == b"abcd"
        assert (await store.get_info(created.id)).is_complete

    async def test_concat_refuses_another_kind_of_upload(self, store: Store) -> None:
        created = await store.new_upload(UploadInfo(size=1, is_final=True))
        final = await store.get_upload(created.id)
        with pytest.raises(TypeError):
            await final.concat([_ForeignUpload()])
        assert (await store.get_info(created.id)).offset == 0

    async def test_an_upload_terminated_meanwhile_is_gone(self, store: Store) -> None:
        created = await upload(store, b"abc", size=10)
        upload_ = await store.get_upload(created.id)
        await store.terminate(created.id)
        with pytest.raises(UploadNotFound):
            await upload_.write_chunk(Source([b"d"]))
        with pytest.raises(UploadNotFound):
            await upload_.terminate()


class TestRunNowait:
    async def test_runs_fn_under_the_lock(self, store: OneHop) -> None:
        info = await upload(store, b"abc", size=10)
        seen: list[tuple[bool, UploadInfo]] = []

        def fn(upload_: SyncUpload) -> str:
            seen.append((store.locker.locked(info.id), upload_.info))
            return "result"

        assert await store.run_nowait(info.id, fn) == "result"
        ((locked, loaded),) = seen
        assert locked
        assert loaded == await store.get_info(info.id)
        assert not store.locker.locked(info.id)
        # the lock was let go: it can be taken again at once
        await store.locker.acquire_nowait(info.id)
        await store.locker.release(info.id)

    @pytest.mark.parametrize("read_only", [False, True])
    async def test_would_block_while_another_task_holds_the_lock(
        self, store: OneHop, read_only: bool
    ) -> None:
        info = await upload(store, b"abc", size=10)
        holding = anyio.Event()
        done = anyio.Event()
        called: list[SyncUpload] = []
        release_requests: list[int] = []

        async def holder() -> None:
            async with store.lock(info.id, on_release=lambda: release_requests.append(1)):
                holding.set()
                await done.wait()

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await holding.wait()
            with pytest.raises(anyio.WouldBlock):
                await store.run_nowait(info.id, called.append, read_only=read_only)
            done.set()
        assert called == []
        # the holder was not asked to let go
        assert release_requests == []
        assert await store.run_nowait(info.id, lambda upload_: upload_.info.offset) == 3

    async def test_sync_upload_write_declare_truncate(self, store: OneHop) -> None:
        info = await store.new_upload(UploadInfo(size=None))

        def fn(upload_: SyncUpload) -> UploadInfo:
            assert upload_.write(b"hello") == 5
            assert upload_.info.offset == 5
            assert upload_.write(b"") == 0
            upload_.declare_length(8)
            assert upload_.info.size == 8
            with pytest.raises(LengthAlreadyDeclared):
                upload_.declare_length(9)
            with pytest.raises(SizeExceeded):
                upload_.write(b"abcd")
            assert upload_.write(b"abc") == 3
            upload_.truncate(6)
            with pytest.raises(ValueError, match=r"."):
                upload_.truncate(7)
            return upload_.info

        after = await store.run_nowait(info.id, fn)
        assert (after.size, after.offset) == (8, 6)
        fetched = await store.get_info(info.id)
        assert (fetched.size, fetched.offset) == (8, 6)
        assert await read_all(store, info.id) == b"helloa"

    async def test_sync_upload_terminate(self, store: OneHop) -> None:
        info = await upload(store, b"abc", size=10)
        await store.run_nowait(info.id, lambda upload_: upload_.terminate())
        with pytest.raises(UploadNotFound):
            await store.get_info(info.id)
        assert not store.locker.locked(info.id)
        assert await leftovers(store) == []

    async def test_read_only(self, store: OneHop) -> None:
        info = await upload(store, b"abc", size=10)
        loaded = await store.run_nowait(info.id, lambda upload_: upload_.info, read_only=True)
        assert loaded == await store.get_info(info.id)
        await store.locker.acquire_nowait(info.id)
        await store.locker.release(info.id)

    async def test_an_error_in_fn_propagates_and_lets_the_lock_go(self, store: OneHop) -> None:
        info = await upload(store, b"abc", size=10)

        def fn(upload_: SyncUpload) -> None:
            upload_.write(b"de")
            raise KeyError("boom")

        with pytest.raises(KeyError):
            await store.run_nowait(info.id, fn)
        assert (await store.get_info(info.id)).offset == 5
        assert not store.locker.locked(info.id)
        await store.locker.acquire_nowait(info.id)
        await store.locker.release(info.id)

    async def test_missing_upload_lets_the_lock_go(self, store: OneHop) -> None:
        with pytest.raises(UploadNotFound):
            await store.run_nowait(MISSING, lambda upload_: None)
        assert not store.locker.locked(MISSING)
        await store.locker.acquire_nowait(MISSING)
        await store.locker.release(MISSING)


class TestCheckpoints:
    """Every coroutine of a store is a checkpoint, as trio asks: a cancelled caller never goes on
    past it, even when there is nothing to wait for."""

    async def test_every_call_is_a_checkpoint(self, store: Store) -> None:
        info = await upload(store, b"abc", size=10)
        calls: Sequence[Callable[[], Any]] = [
            lambda: store.new_upload(UploadInfo(size=1)),
            lambda: store.get_info(info.id),
            lambda: store.get_upload(info.id),
            lambda: store.write_chunk(info.id, 3, Source([])),
            lambda: store.declare_length(info.id, 10),
            lambda: store.truncate(info.id, 3),
            lambda: store.list_uploads(),
            lambda: store.cleanup(3600),
            lambda: store.get_info(MISSING),
        ]
        if isinstance(store, OneHopStore):
            calls = [*calls, lambda: store.run_nowait(info.id, lambda upload_: None)]
        for call in calls:
            reached = False
            with anyio.CancelScope() as scope:
                scope.cancel()
                try:
                    await call()
                except (UploadNotFound, LengthAlreadyDeclared):
                    pass
                reached = True
            assert not reached, call
        assert await store.list_uploads() == [info.id]
        assert (await store.get_info(info.id)).offset == 3

    @pytest.mark.parametrize("given", [False, True], ids=["by-id", "loaded"])
    @pytest.mark.parametrize("start", [0, 1, 4], ids=["whole", "part", "out-of-range"])
    async def test_entering_a_reader_is_a_checkpoint(
        self, store: Store, given: bool, start: int
    ) -> None:
        # an upload loaded already has nothing to wait for, and a range outside its bytes is
        # refused without any I/O: entering is still a checkpoint
        info = await upload(store, b"abc", size=10)
        loaded = await store.get_upload(info.id)
        reached = False
        with anyio.CancelScope() as scope:
            scope.cancel()
            reader = (
                loaded.get_reader(start=start) if given else store.get_reader(info.id, start=start)
            )
            async with reader:
                pass
            reached = True
        assert not reached
        assert scope.cancelled_caught

    async def test_every_receive_is_a_checkpoint(self, store: Store) -> None:
        # a chunk, the end of the range, a closed stream: a cancelled reader takes nothing
        info = await upload(store, b"abc")

        async def cancelled_receive(stream: ByteReceiveStream) -> None:
            with anyio.CancelScope() as scope:
                scope.cancel()
                await stream.receive(1)
                pytest.fail("receive() went on in a cancelled scope")

        async with store.get_reader(info.id) as stream:
            await cancelled_receive(stream)
            assert await stream.receive(1) == b"a"
            assert await stream.receive() == b"bc"
            await cancelled_receive(stream)
            with pytest.raises(anyio.EndOfStream):
                await stream.receive()
            await stream.aclose()
            await cancelled_receive(stream)
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()


# --------------------------------------------------------------------------------------------------
# what only MemoryStore does


class TestMemoryStoreOnly:
    def test_default_locker_is_a_memory_locker(self) -> None:
        assert isinstance(MemoryStore().locker, MemoryLocker)

    async def test_the_clock_stamps_writes_and_is_cleanup_s_now(self) -> None:
        clock = Clock()
        clock.fixed = 1000.0
        store = MemoryStore(clock=clock)
        info = await upload(store, b"ab", size=10)
        assert info.modified_at == 1000.0
        clock.fixed = 1500.0
        await store.write_chunk(info.id, 2, Source([b"c"]))
        assert (await store.get_info(info.id)).modified_at == 1500.0
        clock.fixed = 1500.0 + 3599
        assert await store.cleanup(3600) == []
        clock.fixed = 1500.0 + 3600
        assert await store.cleanup(3600) == [info.id]

    async def test_stores_are_independent(self) -> None:
        one, two = MemoryStore(), MemoryStore()
        info = await upload(one, b"abc")
        assert await two.list_uploads() == []
        with pytest.raises(UploadNotFound):
            await two.get_info(info.id)

    async def test_run_nowait_with_a_file_locker(self, tmp_path: Path) -> None:
        # its locks take system calls: they are taken and let go in a worker thread
        store = MemoryStore(locker=FileLocker(tmp_path))
        info = await upload(store, b"abc", size=10)
        assert await store.run_nowait(info.id, lambda upload_: upload_.write(b"d")) == 1
        assert (await store.get_info(info.id)).offset == 4
        async with store.lock(info.id):
            with pytest.raises(anyio.WouldBlock):
                await store.run_nowait(info.id, lambda upload_: None)
        assert await anyio.to_thread.run_sync(stored_names, tmp_path) == []

    async def test_a_reader_breaks_when_its_bytes_are_truncated(self) -> None:
        store = MemoryStore()
        info = await upload(store, b"abcdef", size=10)
        async with store.get_reader(info.id) as stream:
            assert await stream.receive(2) == b"ab"
            await store.truncate(info.id, 3)
            assert await stream.receive(2) == b"c"
            with pytest.raises(anyio.BrokenResourceError):
                await stream.receive(2)
