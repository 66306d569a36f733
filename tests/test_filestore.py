"""FileStore against a real file system: tusd's filestore tests, adapted to flat IDs, and more.

Stores are built in worker threads (or sync fixtures) because the constructor creates the directory,
which is a legitimate blocking call that must not run on an event loop.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import threading
import time
import tracemalloc
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream

from _helpers import TUSD_KEYS, bin_path, file_sha256, info_path, make_store, pattern, read_all
from anytus import (
    ConcatenatableStore,
    CorruptUploadInfo,
    DataStore,
    ExpiringStore,
    FileLocker,
    FileStore,
    InvalidUploadId,
    LengthAlreadyDeclared,
    LengthDeferrableStore,
    MemoryLocker,
    OffsetMismatch,
    SizeExceeded,
    StoreComposer,
    TerminatableStore,
    TruncatableStore,
    UploadInfo,
    UploadIsFinal,
    UploadNotFinished,
    UploadNotFound,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

KIB = 1 << 10
MIB = 1 << 20


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
        pause: float | None = None,
        digest: bool = False,
    ) -> None:
        self._chunks = iter(chunks)
        self._hang = hang
        self._error = error
        self._pause = pause
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
        if self._pause is not None:
            await anyio.sleep(self._pause)

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


def names(directory: Path) -> list[str]:
    """The sorted names in *directory*; none if it does not exist."""
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under *root*, with file contents (None for directories)."""
    result: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        result[relative] = path.read_bytes() if path.is_file() else None
    return result


async def upload(store: FileStore, data: bytes, **fields: Any) -> UploadInfo:
    """Create an upload of ``size=len(data)`` (unless given) and write *data* into it."""
    fields.setdefault("size", len(data))
    info = await store.new_upload(UploadInfo(**fields))
    if data:
        assert await store.write_chunk(info.id, 0, Source([data])) == len(data)
    return info


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def store(store_dir: Path) -> FileStore:
    return FileStore(store_dir)


# --------------------------------------------------------------------------------------------------
# construction and composition


class TestConstruction:
    async def test_creates_missing_directory_with_parents_on_first_use(
        self, tmp_path: Path
    ) -> None:
        path = tmp_path / "a" / "b" / "c"
        # construction touches no disk, so it may happen on the event loop
        store = FileStore(path)
        assert not path.exists()
        assert isinstance(store.path, Path)
        assert store.path.resolve() == path.resolve()
        with pytest.raises(UploadNotFound):
            await store.get_info("0" * 32)
        info = await store.new_upload(UploadInfo(size=1))
        assert path.is_dir()
        assert (path / f"{info.id}.bin").is_file()

    async def test_first_use_may_be_a_lock(self, tmp_path: Path) -> None:
        path = tmp_path / "x" / "y"
        store = FileStore(path)
        async with store.lock("0" * 32, timeout=5):
            assert path.is_dir()
        assert list(path.iterdir()) == []

    def test_accepts_str_path(self, tmp_path: Path) -> None:
        store = FileStore(str(tmp_path / "s"))
        assert isinstance(store.path, Path)
        assert store.path.resolve() == (tmp_path / "s").resolve()

    def test_existing_directory_is_kept(self, tmp_path: Path) -> None:
        (tmp_path / "keep.txt").write_bytes(b"x")
        FileStore(tmp_path)
        assert (tmp_path / "keep.txt").read_bytes() == b"x"

    def test_default_locker_is_a_file_locker(self, store: FileStore) -> None:
        assert isinstance(store.locker, FileLocker)

    def test_custom_locker_is_used(self, tmp_path: Path) -> None:
        locker = MemoryLocker()
        store = FileStore(tmp_path, locker=locker)
        assert store.locker is locker

    def test_implements_every_interface(self, store: FileStore) -> None:
        for interface in (
            DataStore,
            TerminatableStore,
            ConcatenatableStore,
            LengthDeferrableStore,
            TruncatableStore,
            ExpiringStore,
        ):
            assert isinstance(store, interface), interface

    def test_use_in_registers_every_capability(self, store: FileStore) -> None:
        composer = StoreComposer()
        store.use_in(composer)
        assert composer.core is store
        assert composer.terminater is store
        assert composer.concater is store
        assert composer.length_deferrer is store
        assert composer.truncater is store
        assert composer.expirer is store
        assert composer.locker is store.locker


# --------------------------------------------------------------------------------------------------
# tusd's round trip


class TestRoundTrip:
    async def test_tusd_round_trip(self, store: FileStore) -> None:
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
        assert not bin_path(store, info.id).exists()
        assert not info_path(store, info.id).exists()

    async def test_storage_has_exactly_type_path_infopath(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=42))
        expected = {
            "Type": "filestore",
            "Path": os.path.abspath(bin_path(store, info.id)),
            "InfoPath": os.path.abspath(info_path(store, info.id)),
        }
        assert dict(info.storage) == expected
        assert dict((await store.get_info(info.id)).storage) == expected

    async def test_storage_paths_are_absolute_for_a_relative_store(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.chdir(tmp_path)
        store = await make_store(Path("rel") / "store")
        info = await store.new_upload(UploadInfo(size=1))
        path = info.storage["Path"]
        assert os.path.isabs(path)
        assert path == str(tmp_path / "rel" / "store" / f"{info.id}.bin")
        assert info.storage["InfoPath"] == str(tmp_path / "rel" / "store" / f"{info.id}.info")

    async def test_new_upload_lays_out_exactly_two_files(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=5, metadata={"a": "b"}))
        # no temporary file left behind by the atomic .info write
        assert sorted(p.name for p in store.path.iterdir()) == sorted(
            [f"{info.id}.bin", f"{info.id}.info"]
        )
        assert bin_path(store, info.id).read_bytes() == b""

    async def test_files_are_not_executable(self, store: FileStore) -> None:
        # tus/tusd#56: uploads were created 0775
        info = await store.new_upload(UploadInfo(size=5))
        for path in (bin_path(store, info.id), info_path(store, info.id)):
            assert stat.S_IMODE(path.stat().st_mode) & 0o111 == 0, path

    async def test_info_file_is_tusd_json(self, store: FileStore) -> None:
        info = await store.new_upload(
            UploadInfo(size=42, metadata={"filename": "naïve.txt"}, is_partial=True)
        )
        document = json.loads(info_path(store, info.id).read_bytes())
        assert set(document) == TUSD_KEYS
        assert document["ID"] == info.id
        assert document["Size"] == 42
        assert document["SizeIsDeferred"] is False
        assert document["MetaData"] == {"filename": "naïve.txt"}
        assert document["IsPartial"] is True
        assert document["IsFinal"] is False
        assert document["Storage"] == dict(info.storage)

    async def test_new_upload_ignores_or_validates_a_preset_id(self, store: FileStore) -> None:
        try:
            info = await store.new_upload(UploadInfo(id="../escape", size=1))
        except InvalidUploadId:
            pass
        else:
            assert re.fullmatch(r"[A-Za-z0-9_-]{1,128}", info.id)
        assert not (store.path.parent / "escape.bin").exists()
        assert not (store.path.parent / "escape.info").exists()

    async def test_new_upload_ids_are_distinct(self, store: FileStore) -> None:
        ids = {(await store.new_upload(UploadInfo(size=1))).id for _ in range(20)}
        assert len(ids) == 20

    async def test_modified_at_is_the_data_mtime(self, store: FileStore) -> None:
        info = await upload(store, b"abc", size=10)
        fetched = await store.get_info(info.id)
        assert fetched.modified_at is not None
        assert fetched.modified_at == pytest.approx(
            bin_path(store, info.id).stat().st_mtime, abs=0.01
        )

    async def test_zero_length_upload_is_complete_at_once(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=0))
        fetched = await store.get_info(info.id)
        assert fetched.is_complete
        assert await read_all(store, info.id) == b""


# --------------------------------------------------------------------------------------------------
# not found, hostile IDs, corrupt info


class TestNotFound:
    async def test_get_info_of_missing_id(self, store: FileStore) -> None:
        with pytest.raises(UploadNotFound):
            await store.get_info("0123456789abcdef0123456789abcdef")

    async def test_get_info_in_a_directory_that_no_longer_exists(
        self, store: FileStore, store_dir: Path
    ) -> None:
        shutil.rmtree(store_dir, ignore_errors=True)
        with pytest.raises(UploadNotFound):
            await store.get_info("0123456789abcdef0123456789abcdef")

    async def test_every_method_of_a_missing_upload(self, store: FileStore) -> None:
        missing = "0123456789abcdef0123456789abcdef"
        with pytest.raises(UploadNotFound):
            await store.write_chunk(missing, 0, Source([b"x"]))
        with pytest.raises(UploadNotFound):
            async with store.get_reader(missing):
                pass
        with pytest.raises(UploadNotFound):
            await store.terminate(missing)
        with pytest.raises(UploadNotFound):
            await store.declare_length(missing, 5)
        with pytest.raises(UploadNotFound):
            await store.truncate(missing, 0)
        # nothing was created for it
        assert names(store.path) == []

    async def test_data_file_missing(self, store: FileStore) -> None:
        info = await upload(store, b"abc")
        bin_path(store, info.id).unlink()
        with pytest.raises(UploadNotFound):
            await store.get_info(info.id)


HOSTILE_IDS = [
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


class TestHostileIds:
    @pytest.fixture
    def planted(self, tmp_path: Path, store: FileStore) -> Path:
        """Files a traversal would reach: next to the store, and in a subdirectory of it."""
        info = UploadInfo(id="x", size=3, offset=0).to_json()
        for name in ("x", "x.bin", "x.info", "x.lock", "x.stop", "..bin", "..info"):
            (tmp_path / name).write_bytes(info if name.endswith(".info") else b"sentinel")
        (store.path / "a").mkdir(parents=True)
        (store.path / "a" / "b.bin").write_bytes(b"abc")
        (store.path / "a" / "b.info").write_bytes(UploadInfo(id="a/b", size=3).to_json())
        (store.path / "a" / "b.lock").write_bytes(b"1\n")
        return tmp_path

    @pytest.mark.parametrize("bad", HOSTILE_IDS)
    async def test_every_method_refuses(self, store: FileStore, planted: Path, bad: str) -> None:
        before = snapshot(planted)

        with pytest.raises(InvalidUploadId):
            await store.get_info(bad)
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

    @pytest.mark.parametrize("bad", HOSTILE_IDS)
    async def test_concat_refuses_hostile_partials(
        self, store: FileStore, planted: Path, bad: str
    ) -> None:
        final = await store.new_upload(UploadInfo(size=3, is_final=True))
        before = snapshot(planted)
        with pytest.raises(InvalidUploadId):
            await store.concat_uploads(final.id, [bad])
        assert snapshot(planted) == before
        assert (await store.get_info(final.id)).offset == 0

    async def test_locker_path_traversal_does_not_release_foreign_locks(
        self, tmp_path: Path, store: FileStore
    ) -> None:
        (tmp_path / "x.lock").write_bytes(b"1\n")
        try:
            await store.locker.release("../x")
        except InvalidUploadId:
            pass
        assert (tmp_path / "x.lock").read_bytes() == b"1\n"


CORRUPT_INFOS = [
    pytest.param(b"", id="empty"),
    pytest.param(b'{"ID":"abc","Size":42,"SizeIsDef', id="torn"),
    pytest.param(b"\x00\x01\x02garbage\xff", id="garbage"),
    pytest.param(b"[]", id="array"),
    pytest.param(b'{"ID":"abc","Size":"lots"}', id="wrong-type"),
    pytest.param(b"\x00" * 4096, id="zero-filled"),
]


class TestCorruptInfo:
    @pytest.mark.parametrize("content", CORRUPT_INFOS)
    async def test_corrupt_info_is_reported_and_isolated(
        self, store: FileStore, content: bytes
    ) -> None:
        victim = await upload(store, b"abcd", size=10)
        healthy = await upload(store, b"hello", size=10)
        info_path(store, victim.id).write_bytes(content)

        with pytest.raises(CorruptUploadInfo) as exc_info:
            await store.get_info(victim.id)
        assert exc_info.value.status_code == 500
        # a clear message: which upload is broken
        assert victim.id in str(exc_info.value)

        with pytest.raises(CorruptUploadInfo):
            await store.write_chunk(victim.id, 4, Source([b"efgh"]))
        assert bin_path(store, victim.id).read_bytes() == b"abcd"

        # the others work as before
        fetched = await store.get_info(healthy.id)
        assert fetched.offset == 5
        assert await read_all(store, healthy.id) == b"hello"
        assert await store.write_chunk(healthy.id, 5, Source([b"world"])) == 5
        assert (await store.get_info(healthy.id)).is_complete
        assert healthy.id in await store.list_uploads()

    async def test_cleanup_goes_on_past_a_corrupt_upload(self, store: FileStore) -> None:
        victim = await upload(store, b"ab", size=10)
        stale = await upload(store, b"cd", size=10)
        info_path(store, victim.id).write_bytes(b"{torn")
        old = time.time() - 7200
        await anyio.to_thread.run_sync(os.utime, bin_path(store, stale.id), (old, old))

        removed = await store.cleanup(3600)

        assert stale.id in removed
        assert not bin_path(store, stale.id).exists()


# --------------------------------------------------------------------------------------------------
# writing


class TestWrite:
    async def test_writes_append_across_calls(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=9))
        assert await store.write_chunk(info.id, 0, Source([b"abc"])) == 3
        assert await store.write_chunk(info.id, 3, Source([b"de", b"f"])) == 3
        assert await store.write_chunk(info.id, 6, Source([b"ghi"])) == 3
        fetched = await store.get_info(info.id)
        assert fetched.offset == 9
        assert fetched.is_complete
        assert bin_path(store, info.id).read_bytes() == b"abcdefghi"

    async def test_empty_source(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=9))
        assert await store.write_chunk(info.id, 0, Source([])) == 0
        assert await store.write_chunk(info.id, 0, Source([b"", b""])) == 0
        assert (await store.get_info(info.id)).offset == 0

    async def test_write_past_size_stores_what_fits(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=10))
        source = Source([b"01234", b"56789AB", b"CDEF"])
        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 0, source)
        assert bin_path(store, info.id).read_bytes() == b"0123456789"
        fetched = await store.get_info(info.id)
        assert fetched.offset == 10
        assert fetched.is_complete

    async def test_write_past_size_in_one_chunk(self, store: FileStore) -> None:
        info = await upload(store, b"abc", size=5)
        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 3, Source([b"defgh"]))
        assert bin_path(store, info.id).read_bytes() == b"abcde"

    async def test_write_to_complete_upload(self, store: FileStore) -> None:
        info = await upload(store, b"abc")
        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 3, Source([b"d"]))
        assert bin_path(store, info.id).read_bytes() == b"abc"

    async def test_write_exactly_size_is_fine(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=10))
        assert await store.write_chunk(info.id, 0, Source([b"01234", b"56789"])) == 10
        assert (await store.get_info(info.id)).is_complete

    @pytest.mark.parametrize("offset", [0, 2, 100, -1])
    async def test_offset_mismatch_writes_nothing(self, store: FileStore, offset: int) -> None:
        info = await upload(store, b"a", size=10)
        with pytest.raises(OffsetMismatch) as exc_info:
            await store.write_chunk(info.id, offset, Source([b"evil"]))
        assert exc_info.value.status_code == 409
        assert bin_path(store, info.id).read_bytes() == b"a"
        assert (await store.get_info(info.id)).offset == 1

    async def test_offset_mismatch_after_offset_moved(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=10))
        await store.write_chunk(info.id, 0, Source([b"abc"]))
        with pytest.raises(OffsetMismatch):
            await store.write_chunk(info.id, 0, Source([b"xyz"]))
        assert bin_path(store, info.id).read_bytes() == b"abc"

    async def test_write_to_final_upload(self, store: FileStore) -> None:
        part = await upload(store, b"abc", is_partial=True)
        final = await store.new_upload(
            UploadInfo(size=3, is_final=True, partial_uploads=(part.id,))
        )
        with pytest.raises(UploadIsFinal) as exc_info:
            await store.write_chunk(final.id, 0, Source([b"evil"]))
        assert exc_info.value.status_code == 403
        assert bin_path(store, final.id).read_bytes() == b""

    @pytest.mark.parametrize("buffer_size", [1 << 20, 4096, 99])
    async def test_many_tiny_chunks_are_stored_in_order(
        self, store_dir: Path, buffer_size: int
    ) -> None:
        store = await make_store(store_dir, buffer_size=buffer_size)
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
        assert bin_path(store, info.id).read_bytes() == data
        assert (await store.get_info(info.id)).offset == len(data)
        assert await read_all(store, info.id) == data

    async def test_64_mib_chunks(self, store_dir: Path) -> None:
        store = await make_store(store_dir, durability="none")
        big = pattern(64 * MIB, seed=2)
        tail = b"tail"
        info = await store.new_upload(UploadInfo(size=len(big) * 2 + len(tail)))
        source = Source([big, big, tail], digest=True)
        assert await store.write_chunk(info.id, 0, source) == 2 * len(big) + len(tail)
        assert source.sha256 is not None
        assert (await store.get_info(info.id)).is_complete
        digest = await anyio.to_thread.run_sync(file_sha256, bin_path(store, info.id))
        assert digest == source.sha256.hexdigest()

    async def test_64_mib_chunk_capped_by_size(self, store: FileStore) -> None:
        big = pattern(64 * MIB, seed=3)
        info = await store.new_upload(UploadInfo(size=MIB + 1))
        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 0, Source([big]))
        assert bin_path(store, info.id).stat().st_size == MIB + 1
        assert bin_path(store, info.id).read_bytes() == big[: MIB + 1]

    async def test_memory_is_bounded(self, store_dir: Path) -> None:
        store = await make_store(store_dir, durability="none")
        total = 256 * MIB
        block = 64 * KIB
        # fresh objects each time, as a network stream delivers them
        chunks = ((i % 251).to_bytes(1, "big") * block for i in range(total // block))
        info = await store.new_upload(UploadInfo(size=total))
        source = Source(chunks, digest=True)

        tracemalloc.start()
        try:
            tracemalloc.reset_peak()
            written = await store.write_chunk(info.id, 0, source)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

        assert written == total
        assert peak < 32 * MIB, f"peak traced memory {peak / MIB:.1f} MiB"
        assert source.sha256 is not None
        digest = await anyio.to_thread.run_sync(file_sha256, bin_path(store, info.id))
        assert digest == source.sha256.hexdigest()

    async def test_concurrent_writes_to_different_uploads(self, store_dir: Path) -> None:
        store = await make_store(store_dir, max_threads=2, buffer_size=4096)
        datas = [pattern(50_000 + i, seed=10 + i) for i in range(8)]
        infos = [await store.new_upload(UploadInfo(size=len(d))) for d in datas]

        async with anyio.create_task_group() as tg:
            for info, data in zip(infos, datas, strict=True):
                tg.start_soon(
                    store.write_chunk, info.id, 0, Source(split(data, [1000, 3]), pause=0)
                )

        for info, data in zip(infos, datas, strict=True):
            assert bin_path(store, info.id).read_bytes() == data
            assert (await store.get_info(info.id)).is_complete


class TestInterruptedWrite:
    async def test_no_fd_leak_on_failed_writes(self, store: FileStore) -> None:
        final = await store.new_upload(UploadInfo(size=3, is_final=True))
        info = await upload(store, b"abc", size=10)
        await store.get_info(info.id)  # warm up
        before = fd_count()
        for _ in range(5):
            with pytest.raises(OffsetMismatch):
                await store.write_chunk(info.id, 0, Source([b"x"]))
            with pytest.raises(UploadIsFinal):
                await store.write_chunk(final.id, 0, Source([b"x"]))
            with pytest.raises(RuntimeError):
                await store.write_chunk(
                    info.id,
                    (await store.get_info(info.id)).offset,
                    Source([b"x"], error=RuntimeError()),
                )
            with anyio.move_on_after(0.05):
                await store.write_chunk(
                    info.id, (await store.get_info(info.id)).offset, Source([], hang=True)
                )
        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 8, Source([b"yyyyy"]))
        assert fd_count() == before

    async def test_cancel_while_source_waits_keeps_received_bytes(self, store: FileStore) -> None:
        data = pattern(1000 + 70_000 + 5, seed=4)
        info = await store.new_upload(UploadInfo(size=10 * MIB))
        source = Source([data[:1000], data[1000:71_000], data[71_000:]], hang=True)

        with anyio.move_on_after(0.5) as scope:
            await store.write_chunk(info.id, 0, source)

        assert scope.cancelled_caught
        assert source.drained.is_set()
        assert source.yielded == len(data)
        assert bin_path(store, info.id).stat().st_size == len(data)
        assert (await store.get_info(info.id)).offset == len(data)
        assert bin_path(store, info.id).read_bytes() == data

    async def test_cancel_while_streaming_keeps_every_yielded_byte(self, store_dir: Path) -> None:
        store = await make_store(store_dir, buffer_size=256 * KIB)
        info = await store.new_upload(UploadInfo(size=1 << 40))
        block = pattern(64 * KIB, seed=5)
        source = Source(iter(lambda: block, None), pause=0)

        with anyio.move_on_after(0.3) as scope:
            await store.write_chunk(info.id, 0, source)

        assert scope.cancelled_caught
        assert source.yielded > 0
        size = bin_path(store, info.id).stat().st_size
        assert size == source.yielded
        assert (await store.get_info(info.id)).offset == source.yielded
        data = bin_path(store, info.id).read_bytes()
        assert data == block * (size // len(block))

    async def test_cancel_then_resume(self, store: FileStore) -> None:
        data = pattern(300_000, seed=6)
        info = await store.new_upload(UploadInfo(size=len(data)))
        source = Source(split(data[:123_457], [10_000]), hang=True)
        with anyio.move_on_after(0.5):
            await store.write_chunk(info.id, 0, source)

        offset = (await store.get_info(info.id)).offset
        assert offset == 123_457
        assert (
            await store.write_chunk(info.id, offset, Source([data[offset:]])) == len(data) - offset
        )
        assert bin_path(store, info.id).read_bytes() == data

    async def test_source_error_propagates_and_bytes_are_kept(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=100))
        source = Source([b"a" * 10, b"b" * 15], error=ConnectionResetError("client went away"))
        with pytest.raises(ConnectionResetError, match="client went away"):
            await store.write_chunk(info.id, 0, source)
        assert bin_path(store, info.id).read_bytes() == b"a" * 10 + b"b" * 15
        assert (await store.get_info(info.id)).offset == 25

    async def test_source_error_with_large_buffer_pending(self, store_dir: Path) -> None:
        store = await make_store(store_dir, buffer_size=8 * MIB)
        info = await store.new_upload(UploadInfo(size=100 * MIB))
        data = pattern(3 * MIB + 5, seed=7)
        source = Source(split(data, [64 * KIB]), error=ValueError("bad body"))
        with pytest.raises(ValueError, match="bad body"):
            await store.write_chunk(info.id, 0, source)
        assert bin_path(store, info.id).read_bytes() == data
        assert (await store.get_info(info.id)).offset == len(data)


# --------------------------------------------------------------------------------------------------
# deferred length, truncation


class TestDeferredLength:
    async def test_deferred_size_then_declare(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        assert info.size_is_deferred
        document = json.loads(info_path(store, info.id).read_bytes())
        assert document["SizeIsDeferred"] is True

        await store.write_chunk(info.id, 0, Source([b"x" * 100]))
        fetched = await store.get_info(info.id)
        assert fetched.size is None
        assert fetched.offset == 100
        assert not fetched.is_complete

        inode = info_path(store, info.id).stat().st_ino
        declared = await store.declare_length(info.id, 150)
        assert declared.size == 150
        assert not declared.size_is_deferred
        assert declared.offset == 100

        fetched = await store.get_info(info.id)
        assert fetched.size == 150
        assert not fetched.size_is_deferred
        document = json.loads(info_path(store, info.id).read_bytes())
        assert document["Size"] == 150
        assert document["SizeIsDeferred"] is False
        # rewritten by temp + rename, never in place
        assert info_path(store, info.id).stat().st_ino != inode
        assert sorted(p.name for p in store.path.iterdir()) == sorted(
            [f"{info.id}.bin", f"{info.id}.info"]
        )

        with pytest.raises(SizeExceeded):
            await store.write_chunk(info.id, 100, Source([b"y" * 60]))
        assert bin_path(store, info.id).read_bytes() == b"x" * 100 + b"y" * 50

    async def test_declare_twice(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        await store.declare_length(info.id, 10)
        with pytest.raises(LengthAlreadyDeclared) as exc_info:
            await store.declare_length(info.id, 10)
        assert exc_info.value.status_code == 400
        assert (await store.get_info(info.id)).size == 10

    async def test_declare_on_sized_upload(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=5))
        with pytest.raises(LengthAlreadyDeclared):
            await store.declare_length(info.id, 5)
        assert (await store.get_info(info.id)).size == 5

    async def test_declare_below_offset(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        await store.write_chunk(info.id, 0, Source([b"abcdef"]))
        with pytest.raises(LengthAlreadyDeclared):
            await store.declare_length(info.id, 5)
        assert (await store.get_info(info.id)).size_is_deferred

    async def test_declare_equal_to_offset_completes(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        await store.write_chunk(info.id, 0, Source([b"abcdef"]))
        declared = await store.declare_length(info.id, 6)
        assert declared.is_complete
        assert (await store.get_info(info.id)).is_complete

    async def test_tusd_declare_100(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        await store.declare_length(info.id, 100)
        fetched = await store.get_info(info.id)
        assert fetched.size == 100
        assert not fetched.size_is_deferred


class TestTruncate:
    async def test_truncate_rolls_back(self, store: FileStore) -> None:
        data = pattern(100, seed=8)
        info = await upload(store, data[:70], size=100)
        await store.truncate(info.id, 40)
        assert (await store.get_info(info.id)).offset == 40
        assert bin_path(store, info.id).read_bytes() == data[:40]
        assert await store.write_chunk(info.id, 40, Source([data[40:]])) == 60
        assert bin_path(store, info.id).read_bytes() == data

    async def test_truncate_to_zero_and_to_offset(self, store: FileStore) -> None:
        info = await upload(store, b"abc", size=10)
        await store.truncate(info.id, 3)
        assert bin_path(store, info.id).read_bytes() == b"abc"
        await store.truncate(info.id, 0)
        assert (await store.get_info(info.id)).offset == 0

    async def test_truncate_beyond_offset(self, store: FileStore) -> None:
        info = await upload(store, b"abc", size=10)
        with pytest.raises(ValueError, match=r"."):
            await store.truncate(info.id, 5)
        assert bin_path(store, info.id).read_bytes() == b"abc"


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
    async def test_ranges(self, store: FileStore, start: int, end: int | None) -> None:
        data = pattern(1000, seed=9)
        info = await upload(store, data)
        assert await read_all(store, info.id, start, end) == data[start:end]

    @pytest.mark.parametrize("buffer_size", [1, 100, 1 << 20])
    async def test_chunks_are_bounded_and_complete(self, store_dir: Path, buffer_size: int) -> None:
        store = await make_store(store_dir, buffer_size=buffer_size)
        data = pattern(3000, seed=11)
        info = await upload(store, data)
        assert await read_all(store, info.id) == data

    async def test_receive_respects_max_bytes(self, store: FileStore) -> None:
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

    async def test_receive_after_close(self, store: FileStore) -> None:
        info = await upload(store, b"abc")
        async with store.get_reader(info.id) as stream:
            await stream.aclose()
            with pytest.raises(anyio.ClosedResourceError):
                await stream.receive()

    async def test_end_defaults_to_offset_at_open(self, store: FileStore) -> None:
        info = await upload(store, b"hello", size=11)
        async with store.get_reader(info.id) as stream:
            await store.write_chunk(info.id, 5, Source([b" world"]))
            received = bytearray()
            async for chunk in stream:
                received += chunk
        assert received == b"hello"
        assert await read_all(store, info.id) == b"hello world"

    async def test_reads_an_unfinished_upload(self, store: FileStore) -> None:
        info = await upload(store, b"abcde", size=10)
        assert await read_all(store, info.id) == b"abcde"

    async def test_missing_upload(self, store: FileStore) -> None:
        with pytest.raises(UploadNotFound):
            async with store.get_reader("deadbeef"):
                pass

    async def test_closes_file_on_exit(self, store: FileStore) -> None:
        info = await upload(store, pattern(10_000, seed=13))
        await read_all(store, info.id)  # warm up threads and anything lazy
        before = fd_count()
        for _ in range(20):
            async with store.get_reader(info.id) as stream:
                await stream.receive(10)
        assert fd_count() == before
        for _ in range(20):
            await read_all(store, info.id)
        assert fd_count() == before

    async def test_closes_file_on_cancellation(self, store: FileStore) -> None:
        info = await upload(store, pattern(10_000, seed=14))
        await read_all(store, info.id)
        before = fd_count()
        for _ in range(10):
            with anyio.move_on_after(0.05) as scope:
                async with store.get_reader(info.id) as stream:
                    await stream.receive(10)
                    await anyio.sleep_forever()
            assert scope.cancelled_caught
        assert fd_count() == before

    async def test_closes_file_on_error_in_block(self, store: FileStore) -> None:
        info = await upload(store, b"abc")
        await read_all(store, info.id)
        before = fd_count()
        with pytest.raises(KeyError):  # noqa: PT012 - the error must come from inside the block
            async with store.get_reader(info.id) as stream:
                await stream.receive()
                raise KeyError("boom")
        assert fd_count() == before


# --------------------------------------------------------------------------------------------------
# terminate, concat


class TestTerminate:
    async def test_terminate_removes_both_files(self, store: FileStore) -> None:
        info = await upload(store, b"abc")
        other = await upload(store, b"def")
        await store.terminate(info.id)
        assert sorted(p.name for p in store.path.iterdir()) == sorted(
            [f"{other.id}.bin", f"{other.id}.info"]
        )
        with pytest.raises(UploadNotFound):
            await store.terminate(info.id)

    async def test_terminate_tolerates_missing_data(self, store: FileStore) -> None:
        info = await upload(store, b"abc")
        bin_path(store, info.id).unlink()
        await store.terminate(info.id)
        assert not info_path(store, info.id).exists()
        with pytest.raises(UploadNotFound):
            await store.get_info(info.id)

    async def test_terminate_of_missing_upload(self, store: FileStore) -> None:
        with pytest.raises(UploadNotFound):
            await store.terminate("cafebabe")


class TestConcat:
    async def _partials(self, store: FileStore, parts: list[bytes]) -> list[str]:
        return [(await upload(store, part, is_partial=True)).id for part in parts]

    async def test_tusd_concat(self, store: FileStore) -> None:
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
            assert bin_path(store, part_id).read_bytes() == part

    async def test_concat_into_deferred_final_sets_size(self, store: FileStore) -> None:
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

    @pytest.mark.parametrize("durability", ["none", "finish", "always"])
    async def test_concat_big_partials(self, store_dir: Path, durability: str) -> None:
        store = await make_store(store_dir, buffer_size=64 * KIB, durability=durability)
        parts = [pattern(300_000 + i, seed=20 + i) for i in range(3)]
        ids = await self._partials(store, parts)
        total = sum(len(p) for p in parts)
        final = await store.new_upload(
            UploadInfo(size=total, is_final=True, partial_uploads=tuple(ids))
        )
        await store.concat_uploads(final.id, ids)
        assert bin_path(store, final.id).read_bytes() == b"".join(parts)

    async def test_unfinished_partial(self, store: FileStore) -> None:
        done = await upload(store, b"abc", is_partial=True)
        unfinished = await upload(store, b"de", size=3, is_partial=True)
        final = await store.new_upload(
            UploadInfo(size=6, is_final=True, partial_uploads=(done.id, unfinished.id))
        )
        with pytest.raises(UploadNotFinished) as exc_info:
            await store.concat_uploads(final.id, [done.id, unfinished.id])
        assert exc_info.value.status_code == 400
        assert (await store.get_info(final.id)).offset == 0

    async def test_deferred_partial_is_unfinished(self, store: FileStore) -> None:
        deferred = await upload(store, b"abc", size=None, is_partial=True)
        final = await store.new_upload(
            UploadInfo(size=None, is_final=True, partial_uploads=(deferred.id,))
        )
        with pytest.raises(UploadNotFinished):
            await store.concat_uploads(final.id, [deferred.id])
        assert (await store.get_info(final.id)).offset == 0

    async def test_missing_partial(self, store: FileStore) -> None:
        done = await upload(store, b"abc", is_partial=True)
        final = await store.new_upload(UploadInfo(size=6, is_final=True))
        with pytest.raises(UploadNotFound):
            await store.concat_uploads(final.id, [done.id, "0123456789abcdef0123456789abcdef"])
        assert (await store.get_info(final.id)).offset == 0

    async def test_missing_final(self, store: FileStore) -> None:
        done = await upload(store, b"abc", is_partial=True)
        with pytest.raises(UploadNotFound):
            await store.concat_uploads("0123456789abcdef0123456789abcdef", [done.id])
        assert sorted(p.name for p in store.path.iterdir()) == sorted(
            [f"{done.id}.bin", f"{done.id}.info"]
        )

    async def test_no_fd_leak(self, store: FileStore) -> None:
        ids = await self._partials(store, [b"abc", b"def", b"ghi"])
        # warm up
        final = await store.new_upload(
            UploadInfo(size=9, is_final=True, partial_uploads=tuple(ids))
        )
        await store.concat_uploads(final.id, ids)

        before = fd_count()
        for _ in range(10):
            final = await store.new_upload(
                UploadInfo(size=9, is_final=True, partial_uploads=tuple(ids))
            )
            await store.concat_uploads(final.id, ids)
        assert fd_count() == before

        # and when it fails halfway
        unfinished = await upload(store, b"x", size=2, is_partial=True)
        final = await store.new_upload(UploadInfo(size=11, is_final=True))
        before = fd_count()
        with pytest.raises(UploadNotFinished):
            await store.concat_uploads(final.id, [*ids, unfinished.id])
        assert fd_count() == before


# --------------------------------------------------------------------------------------------------
# durability


class TestDurability:
    @pytest.mark.parametrize("durability", ["none", "finish", "always"])
    async def test_every_mode_stores_correct_data(self, store_dir: Path, durability: str) -> None:
        store = await make_store(store_dir, durability=durability, buffer_size=64 * KIB)
        data = pattern(500_000, seed=30)
        info = await store.new_upload(UploadInfo(size=len(data), metadata={"m": durability}))
        assert (
            await store.write_chunk(info.id, 0, Source(split(data[:200_000], [30_000]))) == 200_000
        )
        assert (
            await store.write_chunk(info.id, 200_000, Source(split(data[200_000:], [70_001])))
            == 300_000
        )
        fetched = await store.get_info(info.id)
        assert fetched.is_complete
        assert dict(fetched.metadata) == {"m": durability}
        assert await read_all(store, info.id) == data

        deferred = await store.new_upload(UploadInfo(size=None))
        await store.write_chunk(deferred.id, 0, Source([b"abc"]))
        await store.declare_length(deferred.id, 3)
        assert (await store.get_info(deferred.id)).is_complete
        await store.terminate(deferred.id)
        with pytest.raises(UploadNotFound):
            await store.get_info(deferred.id)


# --------------------------------------------------------------------------------------------------
# listing and cleanup


class TestListAndCleanup:
    async def test_list_uploads(self, store: FileStore) -> None:
        assert await store.list_uploads() == []
        ids = [(await store.new_upload(UploadInfo(size=i))).id for i in range(3)]
        # things in the directory that are not uploads
        (store.path / "notes.txt").write_bytes(b"x")
        (store.path / "orphan.bin").write_bytes(b"x")
        (store.path / "sub").mkdir()
        (store.path / "sub" / "nested.info").write_bytes(UploadInfo(id="nested", size=1).to_json())

        listed = await store.list_uploads()
        assert sorted(listed) == sorted(ids)
        assert all(isinstance(upload_id, str) for upload_id in listed)

        await store.terminate(ids[0])
        assert sorted(await store.list_uploads()) == sorted(ids[1:])

    async def test_list_of_vanished_directory(self, store: FileStore, store_dir: Path) -> None:
        shutil.rmtree(store_dir, ignore_errors=True)
        assert await store.list_uploads() == []

    async def test_cleanup_removes_only_idle_incomplete_unlocked(self, store: FileStore) -> None:
        idle = await upload(store, b"abc", size=10)
        fresh = await upload(store, b"abc", size=10)
        complete = await upload(store, b"abc")
        locked = await upload(store, b"abc", size=10)
        deferred = await upload(store, b"abc", size=None)
        empty = await upload(store, b"", size=0)
        old = time.time() - 7200
        for info in (idle, complete, locked, deferred, empty):
            await anyio.to_thread.run_sync(os.utime, bin_path(store, info.id), (old, old))

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
            assert not bin_path(store, gone.id).exists()
            assert not info_path(store, gone.id).exists()
            with pytest.raises(UploadNotFound):
                await store.get_info(gone.id)

        # unlocked, it goes too
        assert await store.cleanup(3600) == [locked.id]
        assert sorted(await store.list_uploads()) == sorted([complete.id, empty.id])
        assert not any(p.name.endswith((".lock", ".stop")) for p in store.path.iterdir())

    async def test_cleanup_with_nothing_to_do(self, store: FileStore) -> None:
        await upload(store, b"abc", size=10)
        assert await store.cleanup(3600) == []
        assert len(await store.list_uploads()) == 1

    async def test_cleanup_skips_upload_locked_by_another_locker(self, store: FileStore) -> None:
        idle = await upload(store, b"abc", size=10)
        old = time.time() - 7200
        await anyio.to_thread.run_sync(os.utime, bin_path(store, idle.id), (old, old))
        other = await anyio.to_thread.run_sync(FileLocker, store.path)
        called = threading.Event()
        async with other.lock(idle.id, on_release=called.set):
            with anyio.fail_after(5):
                assert await store.cleanup(3600) == []
        assert not called.is_set()
        assert (await store.get_info(idle.id)).offset == 3
