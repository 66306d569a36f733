"""Directories shared with tusd: tusd's layouts read and resumed by anytus, and anytus's read as tusd would.

The tusd directories are built by hand from the documented formats (TUSD_NOTES.md §1, §2.1, §2.2):

- tusd 0.9-0.14: ``[id].bin`` and ``[id].info`` without ``Storage`` (0.9/0.10: no ``SizeIsDeferred``);
- tusd v1: ``[id]`` (no suffix) and ``[id].info`` with ``Storage = {Path, Type}``;
- tusd v2: the same with ``Storage.InfoPath``; ``Path`` is absolute, so after the directory was moved
  it points nowhere.
"""

from __future__ import annotations

import errno
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from _helpers import Chunks, bin_path, info_path, make_store, pattern, stored_names
from _helpers import read_all as _read_all
from anytus import LockTimeout, UploadInfo, UploadNotFound

UPLOAD_ID = "093b5f2c4a1e48b7a9d2c3e4f5a6b7c8"

#: the reader's chunks are test_filestore's business: here only the bytes are compared
read_all = functools.partial(_read_all, check_chunks=False)


def go_json(document: dict[str, Any]) -> bytes:
    """Like Go's encoding/json: compact, keys in struct order."""
    return json.dumps(document, separators=(",", ":")).encode()


def tusd_0_9_info(upload_id: str, size: int, metadata: dict[str, str]) -> bytes:
    # FileInfo of 0.9/0.10: ID, Size, Offset, MetaData, IsPartial, IsFinal, PartialUploads
    return go_json(
        {
            "ID": upload_id,
            "Size": size,
            "Offset": 0,
            "MetaData": metadata,
            "IsPartial": False,
            "IsFinal": False,
            "PartialUploads": None,
        }
    )


def tusd_0_11_info(upload_id: str, size: int, deferred: bool) -> bytes:
    return go_json(
        {
            "ID": upload_id,
            "Size": size,
            "SizeIsDeferred": deferred,
            "Offset": 0,
            "MetaData": None,
            "IsPartial": False,
            "IsFinal": False,
            "PartialUploads": None,
        }
    )


def tusd_v2_info(
    upload_id: str,
    size: int,
    storage: dict[str, str],
    *,
    deferred: bool = False,
    partial: bool = False,
    metadata: dict[str, str] | None = None,
) -> bytes:
    return go_json(
        {
            "ID": upload_id,
            "Size": size,
            "SizeIsDeferred": deferred,
            "Offset": 0,
            "MetaData": metadata if metadata is not None else {"filename": "hello.txt"},
            "IsPartial": partial,
            "IsFinal": False,
            "PartialUploads": None,
            "Storage": storage,
        }
    )


def make_moved_tusd_dir(
    tmp_path: Path, uploads: dict[str, tuple[int, bytes]], *, info_path: bool, **fields: Any
) -> Path:
    """Write tusd v1/v2 uploads into ``old``, then move ``old`` to ``new``; return ``new``."""
    old = tmp_path / "old"
    old.mkdir()
    for upload_id, (size, data) in uploads.items():
        storage = {"Type": "filestore", "Path": str(old / upload_id)}
        if info_path:
            storage["InfoPath"] = str(old / f"{upload_id}.info")
        (old / upload_id).write_bytes(data)
        (old / f"{upload_id}.info").write_bytes(tusd_v2_info(upload_id, size, storage, **fields))
    new = tmp_path / "new"
    old.rename(new)
    assert not old.exists()
    return new


# --------------------------------------------------------------------------------------------------
# tusd 0.9 - 0.14


class TestTusd0x:
    @pytest.fixture
    def tusd_dir(self, tmp_path: Path) -> Path:
        path = tmp_path / "tusd0"
        path.mkdir()
        (path / f"{UPLOAD_ID}.bin").write_bytes(b"hello")
        (path / f"{UPLOAD_ID}.info").write_bytes(
            tusd_0_9_info(UPLOAD_ID, 11, {"filename": "hello.txt"})
        )
        return path

    async def test_info_and_bytes(self, tusd_dir: Path) -> None:
        store = await make_store(tusd_dir)
        info = await store.get_info(UPLOAD_ID)
        assert info.id == UPLOAD_ID
        assert info.size == 11
        assert not info.size_is_deferred
        assert info.offset == 5
        assert dict(info.metadata) == {"filename": "hello.txt"}
        assert not info.is_complete
        assert await read_all(store, UPLOAD_ID) == b"hello"
        assert await read_all(store, UPLOAD_ID, 1, 4) == b"ell"
        assert await store.list_uploads() == [UPLOAD_ID]

    async def test_resume_to_completion(self, tusd_dir: Path) -> None:
        store = await make_store(tusd_dir)
        assert await store.write_chunk(UPLOAD_ID, 5, Chunks([b" ", b"world"])) == 6
        info = await store.get_info(UPLOAD_ID)
        assert info.offset == 11
        assert info.is_complete
        assert (tusd_dir / f"{UPLOAD_ID}.bin").read_bytes() == b"hello world"
        # tusd 0.x reads the offset from the .bin size: what anytus wrote must be there
        assert stored_names(tusd_dir) == [f"{UPLOAD_ID}.bin", f"{UPLOAD_ID}.info"]

    async def test_lock_and_terminate(self, tusd_dir: Path) -> None:
        store = await make_store(tusd_dir)
        async with store.lock(UPLOAD_ID, timeout=1):
            pass
        await store.terminate(UPLOAD_ID)
        assert stored_names(tusd_dir) == []
        with pytest.raises(UploadNotFound):
            await store.get_info(UPLOAD_ID)

    async def test_deferred_length_0_11(self, tmp_path: Path) -> None:
        path = tmp_path / "tusd011"
        path.mkdir()
        (path / f"{UPLOAD_ID}.bin").write_bytes(b"abc")
        (path / f"{UPLOAD_ID}.info").write_bytes(tusd_0_11_info(UPLOAD_ID, 0, deferred=True))
        store = await make_store(path)
        info = await store.get_info(UPLOAD_ID)
        assert info.size is None
        assert info.offset == 3
        assert dict(info.metadata) == {}
        declared = await store.declare_length(UPLOAD_ID, 6)
        assert declared.size == 6
        await store.write_chunk(UPLOAD_ID, 3, Chunks([b"def"]))
        assert (await store.get_info(UPLOAD_ID)).is_complete
        assert (path / f"{UPLOAD_ID}.bin").read_bytes() == b"abcdef"

    async def test_stale_stored_offset_is_ignored(self, tmp_path: Path) -> None:
        # the stored Offset is whatever the handler passed at creation; only the .bin size counts
        path = tmp_path / "tusd0"
        path.mkdir()
        document = json.loads(tusd_0_9_info(UPLOAD_ID, 10, {}))
        document["Offset"] = 7
        (path / f"{UPLOAD_ID}.info").write_bytes(go_json(document))
        (path / f"{UPLOAD_ID}.bin").write_bytes(b"ab")
        store = await make_store(path)
        assert (await store.get_info(UPLOAD_ID)).offset == 2


# --------------------------------------------------------------------------------------------------
# tusd v1 / v2


class TestTusdV1V2:
    @pytest.mark.parametrize("info_path", [False, True], ids=["v1", "v2"])
    async def test_moved_directory_info_and_bytes(self, tmp_path: Path, info_path: bool) -> None:
        data = pattern(1000, seed=1)
        new = make_moved_tusd_dir(tmp_path, {UPLOAD_ID: (2000, data)}, info_path=info_path)
        store = await make_store(new)

        info = await store.get_info(UPLOAD_ID)
        assert info.id == UPLOAD_ID
        assert info.size == 2000
        assert info.offset == 1000
        assert dict(info.metadata) == {"filename": "hello.txt"}
        assert info.modified_at == pytest.approx((new / UPLOAD_ID).stat().st_mtime, abs=0.01)
        assert await read_all(store, UPLOAD_ID) == data
        assert await read_all(store, UPLOAD_ID, 100, 200) == data[100:200]
        assert await store.list_uploads() == [UPLOAD_ID]

    @pytest.mark.parametrize("info_path", [False, True], ids=["v1", "v2"])
    async def test_moved_directory_resume(self, tmp_path: Path, info_path: bool) -> None:
        data = pattern(2000, seed=2)
        new = make_moved_tusd_dir(tmp_path, {UPLOAD_ID: (2000, data[:700])}, info_path=info_path)
        store = await make_store(new)

        async with store.lock(UPLOAD_ID, timeout=2):
            offset = (await store.get_info(UPLOAD_ID)).offset
            assert offset == 700
            assert await store.write_chunk(UPLOAD_ID, offset, Chunks([data[700:1500]])) == 800
            assert (await store.get_info(UPLOAD_ID)).offset == 1500
            assert await store.write_chunk(UPLOAD_ID, 1500, Chunks([data[1500:]])) == 500

        info = await store.get_info(UPLOAD_ID)
        assert info.offset == 2000
        assert info.is_complete
        assert await read_all(store, UPLOAD_ID) == data
        # the bytes went into tusd's own data file, so tusd v1/v2 sees them too
        assert (new / UPLOAD_ID).read_bytes() == data
        assert not (new / f"{UPLOAD_ID}.bin").exists()
        assert not (tmp_path / "old").exists()

    async def test_v2_deferred_then_declared(self, tmp_path: Path) -> None:
        new = make_moved_tusd_dir(tmp_path, {UPLOAD_ID: (0, b"abc")}, info_path=True, deferred=True)
        store = await make_store(new)
        assert (await store.get_info(UPLOAD_ID)).size is None
        await store.declare_length(UPLOAD_ID, 5)
        await store.write_chunk(UPLOAD_ID, 3, Chunks([b"de"]))
        info = await store.get_info(UPLOAD_ID)
        assert info.size == 5
        assert info.is_complete
        assert await read_all(store, UPLOAD_ID) == b"abcde"

    async def test_v2_terminate_removes_data_file(self, tmp_path: Path) -> None:
        new = make_moved_tusd_dir(tmp_path, {UPLOAD_ID: (10, b"abc")}, info_path=True)
        store = await make_store(new)
        await store.terminate(UPLOAD_ID)
        assert stored_names(new) == []

    async def test_v2_partials_concatenate(self, tmp_path: Path) -> None:
        ids = ["aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"]
        new = make_moved_tusd_dir(
            tmp_path,
            {ids[0]: (3, b"abc"), ids[1]: (4, b"defg")},
            info_path=True,
            partial=True,
        )
        store = await make_store(new)
        final = await store.new_upload(
            UploadInfo(size=7, is_final=True, partial_uploads=tuple(ids))
        )
        await store.concat_uploads(final.id, ids)
        assert await read_all(store, final.id) == b"abcdefg"
        assert (await store.get_info(final.id)).is_complete

    async def test_v2_cleanup_removes_data_file(self, tmp_path: Path) -> None:
        new = make_moved_tusd_dir(tmp_path, {UPLOAD_ID: (10, b"abc")}, info_path=True)
        old = time.time() - 7200
        os.utime(new / UPLOAD_ID, (old, old))
        store = await make_store(new)
        assert await store.cleanup(3600) == [UPLOAD_ID]
        assert stored_names(new) == []

    async def test_v2_custom_absolute_path_outside_store(self, tmp_path: Path) -> None:
        # tusd's test 12: a pre-create hook put the data elsewhere; the info stays in the store
        store_dir = tmp_path / "store"
        store_dir.mkdir()
        elsewhere = tmp_path / "elsewhere" / "custom.data"
        elsewhere.parent.mkdir()
        elsewhere.write_bytes(b"custom")
        storage = {
            "Type": "filestore",
            "Path": str(elsewhere),
            "InfoPath": str(store_dir / f"{UPLOAD_ID}.info"),
        }
        (store_dir / f"{UPLOAD_ID}.info").write_bytes(tusd_v2_info(UPLOAD_ID, 6, storage))
        store = await make_store(store_dir)
        info = await store.get_info(UPLOAD_ID)
        assert info.offset == 6
        assert info.is_complete
        assert await read_all(store, UPLOAD_ID) == b"custom"

    async def test_v2_custom_relative_path(self, tmp_path: Path) -> None:
        # tusd's test 11: a relative Storage.Path is relative to the store directory
        store_dir = tmp_path / "store"
        (store_dir / "folder2").mkdir(parents=True)
        (store_dir / "folder2" / "bin").write_bytes(b"rel")
        storage = {"Type": "filestore", "Path": "./folder2/bin"}
        (store_dir / f"{UPLOAD_ID}.info").write_bytes(tusd_v2_info(UPLOAD_ID, 10, storage))
        store = await make_store(store_dir)
        assert (await store.get_info(UPLOAD_ID)).offset == 3
        assert await read_all(store, UPLOAD_ID) == b"rel"

    async def test_bin_wins_over_suffixless(self, tmp_path: Path) -> None:
        # documented lookup order: [id].bin, then [id], then Storage.Path
        store_dir = tmp_path / "store"
        store_dir.mkdir()
        (store_dir / f"{UPLOAD_ID}.bin").write_bytes(b"bin")
        (store_dir / UPLOAD_ID).write_bytes(b"suffixless")
        storage = {"Type": "filestore", "Path": str(store_dir / UPLOAD_ID)}
        (store_dir / f"{UPLOAD_ID}.info").write_bytes(tusd_v2_info(UPLOAD_ID, 20, storage))
        store = await make_store(store_dir)
        assert (await store.get_info(UPLOAD_ID)).offset == 3
        assert await read_all(store, UPLOAD_ID) == b"bin"

    async def test_info_without_any_data_file(self, tmp_path: Path) -> None:
        new = make_moved_tusd_dir(tmp_path, {UPLOAD_ID: (10, b"abc")}, info_path=True)
        (new / UPLOAD_ID).unlink()
        store = await make_store(new)
        with pytest.raises(UploadNotFound):
            await store.get_info(UPLOAD_ID)


# --------------------------------------------------------------------------------------------------
# anytus's directory, read the way tusd reads it


def go_read_info(path: Path) -> dict[str, Any]:
    """Decode ``.info`` with the expectations of Go's ``json.Unmarshal`` into ``FileInfo``."""
    document = json.loads(path.read_bytes())
    assert isinstance(document, dict)
    types: dict[str, tuple[type, ...]] = {
        "ID": (str,),
        "Size": (int,),
        "SizeIsDeferred": (bool,),
        "Offset": (int,),
        "MetaData": (dict, type(None)),
        "IsPartial": (bool,),
        "IsFinal": (bool,),
        "PartialUploads": (list, type(None)),
        "Storage": (dict, type(None)),
    }
    assert set(document) == set(types)
    for key, allowed in types.items():
        value = document[key]
        assert isinstance(value, allowed), (key, value)
        if isinstance(value, int):
            # a JSON true would not unmarshal into int64, nor would a number out of range
            assert allowed == (bool,) or not isinstance(value, bool), (key, value)
            assert 0 <= value < 1 << 63
    for key, value in (document["MetaData"] or {}).items():
        assert isinstance(key, str)
        assert isinstance(value, str)
    for value in document["PartialUploads"] or []:
        assert isinstance(value, str)
    for key, value in (document["Storage"] or {}).items():
        assert isinstance(key, str)
        assert isinstance(value, str)
    return document


class TestReadByTusd:
    async def test_plain_upload(self, tmp_path: Path) -> None:
        store = await make_store(tmp_path / "store")
        info = await store.new_upload(UploadInfo(size=11, metadata={"filename": "hello.txt"}))
        await store.write_chunk(info.id, 0, Chunks([b"hello"]))

        info_file = info_path(store, info.id)
        document = go_read_info(info_file)
        assert document["ID"] == info.id
        assert document["Size"] == 11
        assert document["SizeIsDeferred"] is False
        assert document["MetaData"] == {"filename": "hello.txt"}
        assert document["IsPartial"] is False
        assert document["IsFinal"] is False

        # tusd 0.x: the offset is the size of [id].bin
        assert bin_path(store, info.id).stat().st_size == 5
        # tusd v1/v2: Storage.Path is the data file, InfoPath this very file
        storage = document["Storage"]
        assert storage["Type"] == "filestore"
        assert os.path.isabs(storage["Path"])
        assert Path(storage["Path"]).read_bytes() == b"hello"
        assert os.path.samefile(storage["Path"], bin_path(store, info.id))
        assert os.path.samefile(storage["InfoPath"], info_file)

    async def test_deferred_upload(self, tmp_path: Path) -> None:
        store = await make_store(tmp_path / "store")
        info = await store.new_upload(UploadInfo(size=None))
        document = go_read_info(info_path(store, info.id))
        assert document["SizeIsDeferred"] is True
        assert document["Size"] == 0

        await store.declare_length(info.id, 42)
        document = go_read_info(info_path(store, info.id))
        assert document["SizeIsDeferred"] is False
        assert document["Size"] == 42
        assert Path(document["Storage"]["Path"]).exists()

    async def test_final_upload(self, tmp_path: Path) -> None:
        store = await make_store(tmp_path / "store")
        parts = []
        for chunk in (b"abc", b"def"):
            part = await store.new_upload(UploadInfo(size=3, is_partial=True))
            await store.write_chunk(part.id, 0, Chunks([chunk]))
            parts.append(part.id)
        final = await store.new_upload(
            UploadInfo(size=6, is_final=True, partial_uploads=tuple(parts))
        )
        await store.concat_uploads(final.id, parts)

        document = go_read_info(info_path(store, final.id))
        assert document["IsFinal"] is True
        assert document["PartialUploads"] == parts
        assert Path(document["Storage"]["Path"]).read_bytes() == b"abcdef"
        for part_id in parts:
            assert go_read_info(info_path(store, part_id))["IsPartial"] is True

    async def test_tusd_cannot_take_a_held_lock(self, tmp_path: Path) -> None:
        """tusd's lockfile algorithm (temp file + hard link) fails while anytus holds the lock."""
        store = await make_store(tmp_path / "store")
        info = await store.new_upload(UploadInfo(size=3))
        lock = store.path / f"{info.id}.lock"
        async with store.lock(info.id):
            temp = store.path / "4242424242"
            temp.write_bytes(b"99999\n")
            with pytest.raises(FileExistsError) as exc_info:
                os.link(temp, lock)
            assert exc_info.value.errno == errno.EEXIST
            temp.unlink()
            # tusd's GetOwner: Sscanln of the first line yields a live PID that is not tusd's
            pid = int(lock.read_text().splitlines()[0])
            assert pid == os.getpid()
            os.kill(pid, 0)
        assert not lock.exists()

    async def test_anytus_honours_a_lock_tusd_took(self, tmp_path: Path) -> None:
        """A lock created by tusd's algorithm, for a live tusd (here: our parent), is respected."""
        store = await make_store(tmp_path / "store")
        info = await store.new_upload(UploadInfo(size=3))
        temp = store.path / "1234567890"
        temp.write_bytes(f"{os.getppid()}\n".encode())
        os.link(temp, store.path / f"{info.id}.lock")
        temp.unlink()
        with pytest.raises(LockTimeout):
            await store.lock_upload(info.id, timeout=0.5)
        assert (store.path / f"{info.id}.lock").read_bytes() == f"{os.getppid()}\n".encode()
