"""FileStore against a real file system: tusd's filestore tests, adapted to flat IDs, and more.

What every store does (offsets, errors, reads, locks, one-hop requests) is checked on FileStore and
MemoryStore alike in ``test_store_contract.py``; this module keeps what only a FileStore has: its files
and tusd's layout, corrupt ``.info`` files, durability, buffers, threads and file descriptors.

Stores are built in worker threads (or sync fixtures) because the constructor creates the directory,
which is a legitimate blocking call that must not run on an event loop.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import threading
import time
import tracemalloc
from functools import partial
from pathlib import Path

import anyio
import pytest

from _helpers import (
    TUSD_KEYS,
    bin_path,
    file_sha256,
    info_path,
    make_store,
    pattern,
    read_all,
    stored_names,
)
from anytus import (
    CorruptUploadInfo,
    FileLocker,
    FileStore,
    InvalidUploadId,
    OffsetMismatch,
    SizeExceeded,
    UploadInfo,
    UploadIsFinal,
    UploadNotFinished,
    UploadNotFound,
)
from test_store_contract import Source, split, upload

KIB = 1 << 10
MIB = 1 << 20


# --------------------------------------------------------------------------------------------------
# helpers


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


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
        assert stored_names(path) == []

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


# --------------------------------------------------------------------------------------------------
# tusd's round trip


class TestRoundTrip:
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
        assert stored_names(store.path) == sorted([f"{info.id}.bin", f"{info.id}.info"])
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

    async def test_modified_at_is_the_data_mtime(self, store: FileStore) -> None:
        info = await upload(store, b"abc", size=10)
        fetched = await store.get_info(info.id)
        assert fetched.modified_at is not None
        assert fetched.modified_at == pytest.approx(
            bin_path(store, info.id).stat().st_mtime, abs=0.01
        )


# --------------------------------------------------------------------------------------------------
# not found, hostile IDs, corrupt info


class TestNotFound:
    async def test_get_info_in_a_directory_that_no_longer_exists(
        self, store: FileStore, store_dir: Path
    ) -> None:
        shutil.rmtree(store_dir, ignore_errors=True)
        with pytest.raises(UploadNotFound):
            await store.get_info("0123456789abcdef0123456789abcdef")

    async def test_data_file_missing(self, store: FileStore) -> None:
        info = await upload(store, b"abc")
        bin_path(store, info.id).unlink()
        with pytest.raises(UploadNotFound):
            await store.get_info(info.id)


class TestHostileIds:
    # that no method follows a malformed ID out of the directory is in test_store_contract.py
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
    # with the default buffer size in test_store_contract.py
    @pytest.mark.parametrize("buffer_size", [4096, 99])
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
                    store.write_chunk, info.id, 0, Source(split(data, [1000, 3]), checkpoints=True)
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
    # the behaviour is in test_store_contract.py; here, what the .info file records
    async def test_declared_length_rewrites_info_atomically(self, store: FileStore) -> None:
        info = await store.new_upload(UploadInfo(size=None))
        document = json.loads(info_path(store, info.id).read_bytes())
        assert document["SizeIsDeferred"] is True
        await store.write_chunk(info.id, 0, Source([b"x" * 100]))

        inode = info_path(store, info.id).stat().st_ino
        await store.declare_length(info.id, 150)
        document = json.loads(info_path(store, info.id).read_bytes())
        assert document["Size"] == 150
        assert document["SizeIsDeferred"] is False
        # rewritten by temp + rename, never in place
        assert info_path(store, info.id).stat().st_ino != inode
        assert stored_names(store.path) == sorted([f"{info.id}.bin", f"{info.id}.info"])
        assert bin_path(store, info.id).read_bytes() == b"x" * 100


# --------------------------------------------------------------------------------------------------
# reading


class TestRead:
    @pytest.mark.parametrize("buffer_size", [1, 100, 1 << 20])
    async def test_chunks_are_bounded_and_complete(self, store_dir: Path, buffer_size: int) -> None:
        store = await make_store(store_dir, buffer_size=buffer_size)
        data = pattern(3000, seed=11)
        info = await upload(store, data)
        assert await read_all(store, info.id) == data

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
        assert stored_names(store.path) == sorted([f"{other.id}.bin", f"{other.id}.info"])

    async def test_terminate_tolerates_missing_data(self, store: FileStore) -> None:
        info = await upload(store, b"abc")
        bin_path(store, info.id).unlink()
        await store.terminate(info.id)
        assert not info_path(store, info.id).exists()
        with pytest.raises(UploadNotFound):
            await store.get_info(info.id)


class TestConcat:
    async def _partials(self, store: FileStore, parts: list[bytes]) -> list[str]:
        return [(await upload(store, part, is_partial=True)).id for part in parts]

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

    @pytest.mark.parametrize("durability", ["finish", "always"])
    async def test_fsyncs_of_concurrent_steps_run_side_by_side(
        self, store_dir: Path, durability: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Steps that fsync get a worker thread each, not one shared hop in turn: fsyncs side
        by side share the file system's journal commits. Four creations, then four one-hop writes
        that complete their uploads, all fsync at once (each meets the other three)."""
        store = await make_store(store_dir, durability=durability)
        uploads = [await store.new_upload(UploadInfo(size=1)) for _ in range(4)]
        meeting = threading.Barrier(4, timeout=10)
        fsync = os.fsync

        def meet_then_fsync(fd: int) -> None:
            meeting.wait()
            fsync(fd)

        monkeypatch.setattr(os, "fsync", meet_then_fsync)
        async with anyio.create_task_group() as tg:
            for _ in range(4):
                tg.start_soon(store.new_upload, UploadInfo(size=1))
        async with anyio.create_task_group() as tg:
            for info in uploads:
                tg.start_soon(partial(store.run_nowait, info.id, lambda upload: upload.write(b"x")))
        monkeypatch.undo()
        for info in uploads:
            assert (await store.get_info(info.id)).is_complete

    async def test_loading_never_waits_for_a_thread_behind_fsyncs(
        self, store_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Steps that fsync take at most a quarter of the store's threads: with every fsync stuck
        on a slow disk, loading an upload (a HEAD) still gets a thread at once."""
        store = FileStore(store_dir, durability="finish", max_threads=8)
        existing = await store.new_upload(UploadInfo(size=1))
        release = threading.Event()
        stuck = threading.Semaphore(0)
        unstuck = threading.Event()
        fsync = os.fsync

        def stuck_fsync(fd: int) -> None:
            stuck.release()
            release.wait(10)
            unstuck.set()
            fsync(fd)

        monkeypatch.setattr(os, "fsync", stuck_fsync)
        try:
            async with anyio.create_task_group() as tg:
                for _ in range(10):
                    tg.start_soon(store.new_upload, UploadInfo(size=1))
                # two creations are stuck in fsync (a quarter of the eight threads), eight wait
                for _ in range(2):
                    await anyio.to_thread.run_sync(stuck.acquire)
                assert (await store.get_info(existing.id)).id == existing.id
                # (a wait for a thread is shielded: a timeout here could not end it)
                assert not unstuck.is_set(), "loading waited for an fsync to end"
                release.set()
        finally:
            release.set()
        assert len(await store.list_uploads()) == 11


# --------------------------------------------------------------------------------------------------
# listing and cleanup


class TestListAndCleanup:
    async def test_list_ignores_what_is_not_an_upload(self, store: FileStore) -> None:
        ids = [(await store.new_upload(UploadInfo(size=i))).id for i in range(3)]
        # things in the directory that are not uploads
        (store.path / "notes.txt").write_bytes(b"x")
        (store.path / "orphan.bin").write_bytes(b"x")
        (store.path / "sub").mkdir()
        (store.path / "sub" / "nested.info").write_bytes(UploadInfo(id="nested", size=1).to_json())
        (store.path / "bad.id.info").write_bytes(UploadInfo(id="bad.id", size=1).to_json())
        assert sorted(await store.list_uploads()) == sorted(ids)

    async def test_list_of_vanished_directory(self, store: FileStore, store_dir: Path) -> None:
        shutil.rmtree(store_dir, ignore_errors=True)
        assert await store.list_uploads() == []

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
