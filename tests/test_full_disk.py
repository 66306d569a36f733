"""A full disk degrades gracefully, on a real full file system (a 4 MiB tmpfs).

Writes that run out of space answer 507 and keep (and count) the bytes that fitted; reading,
locking and deleting need no new blocks, so at 0 bytes free HEAD, GET, OPTIONS and DELETE still
work, and once a DELETE has freed space the upload resumes byte-exact.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import os
import subprocess
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import httpx
import pytest

from _children import command
from _helpers import stored_names
from _mounts import fill, tmpfs
from _server import (
    CLIENT_TLS,
    TUS,
    TusClient,
    run_server_process,
    serve_app,
    subprocess_env,
    wait_for_files,
)
from anytus import FileLocker, FileStore, StorageFull, SyncUpload, UploadInfo
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

UPLOAD_ID = "0123456789abcdef0123456789abcdef"
MiB = 1 << 20


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """An empty 4 MiB file system."""
    with tmpfs(tmp_path / "disk", "4m") as path:
        yield path


def free_bytes(path: Path) -> int:
    stats = os.statvfs(path)
    return stats.f_bavail * stats.f_frsize


def flocked(path: Path) -> bool:
    """Whether someone holds an flock() on *path* (a new open file description conflicts)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        return False
    finally:
        os.close(fd)


async def chunks(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def fill_up(disk: Path) -> None:
    await anyio.to_thread.run_sync(fill, disk / "filler")
    assert free_bytes(disk) == 0


class TestLocksAtFullDisk:
    """A lock whose record cannot be written is held by its flock() alone: as exclusive as ever
    on this host, within a process and across processes."""

    async def test_lock_is_held_by_flock_alone(self, disk: Path) -> None:
        await fill_up(disk)
        first = FileLocker(disk)
        second = FileLocker(disk)
        lock_path = disk / f"{UPLOAD_ID}.lock"
        async with first.lock(UPLOAD_ID, timeout=5):
            assert lock_path.read_bytes() == b""  # no room for the record
            assert flocked(lock_path)
            with pytest.raises(anyio.WouldBlock):
                await second.acquire_nowait(UPLOAD_ID)
        assert not lock_path.exists()
        await second.acquire_nowait(UPLOAD_ID)
        await second.release(UPLOAD_ID)
        assert sorted(os.listdir(disk)) == ["filler"]

    async def test_a_record_made_before_keeps_the_pid_line(self, disk: Path) -> None:
        # a lock is a link to the process's lock record, which needs no data block: only a
        # process without a record yet is left with the flock() alone
        locker = FileLocker(disk)
        async with locker.lock("fedcba9876543210fedcba9876543210", timeout=5):
            pass
        await fill_up(disk)
        lock_path = disk / f"{UPLOAD_ID}.lock"
        async with locker.lock(UPLOAD_ID, timeout=5):
            assert lock_path.read_text().splitlines()[0] == str(os.getpid())
            assert flocked(lock_path)
        assert stored_names(disk) == ["filler"]

    async def test_holder_in_another_process_is_honoured(
        self, disk: Path, tmp_path: Path, anyio_backend_name: str
    ) -> None:
        await fill_up(disk)
        work = tmp_path / "work"
        work.mkdir()
        child = await anyio.open_process(
            command("holder", disk, work, UPLOAD_ID, anyio_backend_name),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=None,
            env=subprocess_env(),
        )
        try:
            assert await wait_for_files(work, (work / "locked").exists, timeout=20)
            assert (disk / f"{UPLOAD_ID}.lock").read_bytes() == b""
            locker = FileLocker(disk, acquirer_poll_interval=0.05)
            with pytest.raises(anyio.WouldBlock):
                await locker.acquire_nowait(UPLOAD_ID)
            for shared in (True, False):  # a one-hop HEAD or DELETE sees it held too
                hold = locker.hold_inline(UPLOAD_ID, shared=shared)
                try:
                    assert not await anyio.to_thread.run_sync(hold.enter)
                finally:
                    hold.close()
            # the release request is an empty file, which a full disk still takes
            async with locker.lock(UPLOAD_ID, timeout=15):
                assert (work / "released").read_text() == "True 1"
            with anyio.fail_after(10):
                assert await child.wait() == 0
        finally:
            if child.returncode is None:
                child.kill()
                await child.wait()
            await child.aclose()
        assert sorted(os.listdir(disk)) == ["filler"]


class TestStoreAtFullDisk:
    async def test_write_keeps_and_counts_the_bytes_that_fit(self, disk: Path) -> None:
        store = FileStore(disk, buffer_size=256 * 1024)
        data = os.urandom(6 * MiB)
        info = await store.new_upload(UploadInfo(size=len(data)))
        upload = await store.get_upload(info.id)
        with pytest.raises(StorageFull) as caught:
            await upload.write_chunk(chunks(data))
        assert caught.value.status_code == 507
        assert caught.value.error_code == "ERR_STORAGE_FULL"
        stored = (disk / f"{info.id}.bin").read_bytes()
        assert 0 < len(stored) < len(data)
        assert stored == data[: len(stored)]
        # counted exactly, by the upload object as by a fresh load
        assert upload.info.offset == len(stored)
        assert (await store.get_info(info.id)).offset == len(stored)

    async def test_one_hop_write_counts_the_bytes_that_fit(self, disk: Path) -> None:
        store = FileStore(disk)
        info = await store.new_upload(UploadInfo(size=6 * MiB))
        data = os.urandom(6 * MiB)

        def write(upload: SyncUpload) -> int:
            try:
                upload.write(data)
            except OSError:
                return upload.info.offset
            raise AssertionError("the write did not fail")

        offset = await store.run_nowait(info.id, write)
        assert offset == (disk / f"{info.id}.bin").stat().st_size > 0

    async def test_new_upload_leaves_no_torn_upload(self, disk: Path) -> None:
        store = FileStore(disk)
        await fill_up(disk)
        with pytest.raises(StorageFull):
            await store.new_upload(UploadInfo(size=10, metadata={"filename": "a.txt"}))
        assert sorted(os.listdir(disk)) == ["filler"]


class TestAppAtFullDisk:
    async def test_unverified_chunk_is_discarded(self, disk: Path) -> None:
        """A streamed chunk with a checksum that the disk cut short was never verified: it is
        not kept (as for a body cut short), and the answer is still 507."""
        data = os.urandom(6 * MiB)
        checksum = base64.b64encode(hashlib.sha1(data).digest()).decode()
        async with (
            serve_app(TusApp(FileStore(disk))) as url,
            httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http,
        ):
            tus = TusClient(http, url)
            upload_id = await tus.new(len(data))
            response = await tus.patch(
                upload_id, 0, data, headers={"Upload-Checksum": f"sha1 {checksum}"}
            )
            assert response.status_code == 507, response.text
            assert response.text.startswith("ERR_STORAGE_FULL:")
            assert await tus.offset(upload_id) == 0
        assert (disk / f"{upload_id}.bin").stat().st_size == 0


SERVERS = {"asyncio": "anytus", "trio": "anytus"}


class TestServedAtFullDisk:
    @pytest.fixture
    def anyio_backend(self) -> str:
        """The client runs on asyncio: the backend under test is the server's."""
        return "asyncio"

    @pytest.mark.slow
    @pytest.mark.parametrize(
        "backend", [pytest.param(b, id=f"{b}-{s}") for b, s in SERVERS.items()]
    )
    async def test_full_disk_degrades_gracefully(self, disk: Path, backend: str) -> None:
        other_data = os.urandom(2 * MiB)
        data = os.urandom(3 * MiB)
        with run_server_process(disk, "--backend", backend) as server:
            async with httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http:
                tus = TusClient(http, server.url)
                other = await tus.upload(other_data, chunk=MiB)
                upload_id = await tus.new(len(data), metadata={"filename": b"big.bin"})

                # the disk fills up during the PATCH: 507, and the bytes that fitted count
                response = await tus.patch(upload_id, 0, data)
                assert response.status_code == 507, response.text
                assert response.text.startswith("ERR_STORAGE_FULL: no space left in the storage")
                stored = await tus.offset(upload_id)
                assert 0 < stored < len(data)
                bin_path = disk / f"{upload_id}.bin"
                assert bin_path.read_bytes() == data[:stored]

                await fill_up(disk)

                # at 0 bytes free: reading and locking need no new blocks
                assert await tus.offset(upload_id) == stored
                download = await http.get(tus.upload_url(upload_id))
                assert download.status_code == 200
                assert download.content == data[:stored]
                options = await http.options(server.url)
                assert options.status_code == 200
                assert "creation" in options.headers["Tus-Extension"]

                # writing still answers 507, and stores nothing it cannot keep
                response = await tus.patch(upload_id, stored, data[stored:])
                assert response.status_code == 507, response.text
                assert "no space left" in response.text
                assert await tus.offset(upload_id) == stored
                before = sorted(os.listdir(disk))
                response = await tus.create(100)
                assert response.status_code == 507, response.text
                response = await tus.create(5, body=b"hello")
                assert response.status_code == 507, response.text
                assert sorted(os.listdir(disk)) == before  # no torn upload left behind

                # deleting another upload frees space, through the API
                deleted = await http.delete(tus.upload_url(other), headers=TUS)
                assert deleted.status_code == 204, deleted.text
                assert not (disk / f"{other}.bin").exists()
                assert free_bytes(disk) > len(data) - stored

                # and the upload resumes where it stopped, byte-exact
                response = await tus.patch(upload_id, stored, data[stored:])
                assert response.status_code == 204, response.text
                assert int(response.headers["Upload-Offset"]) == len(data)
                download = await http.get(tus.upload_url(upload_id))
                assert download.content == data

        assert sorted(os.listdir(disk)) == sorted(
            ["filler", f"{upload_id}.bin", f"{upload_id}.info"]
        )
        log = "\n".join(server.stderr_lines)
        assert "Traceback" not in log
        assert " 500 " not in log
        # one line for the full disk, however many requests ran into it
        logged = [
            line for line in server.stderr_lines if "ERR_STORAGE_FULL" in line and "path:" in line
        ]
        assert len(logged) == 1, log
        assert f"path: {disk}" in logged[0]
