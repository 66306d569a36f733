"""Locks and writes across real processes: mutual exclusion, release requests, and a writer killed
with SIGKILL mid-upload.

Children are the functions of ``tests/_children.py``, run as ``python tests/_children.py NAME ARG...``:
the public API under ``anyio.run``; the temporary directory and everything else they need arrive
through ``argv``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING

import anyio
import pytest

import anytus
from _children import BLOCK, WORK_LINES, block, command
from _helpers import Chunks, file_sha256, stored_names
from _server import wait_for_files
from anytus import FileLocker, FileStore, UploadInfo
from anytus._locks import RECORD_PREFIX

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anyio.abc import Process

UPLOAD_ID = "0123456789abcdef0123456789abcdef"

# the children find anytus where this process found it, installed or not
_SRC = str(Path(anytus.__file__).resolve().parent.parent)
_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(filter(None, [_SRC, os.environ.get("PYTHONPATH")])),
}


def expected_stream(start: int, end: int) -> Iterator[bytes]:
    """The bytes the writer child produces, positions ``[start, end)``, in pieces."""
    first = start // BLOCK
    position = first * BLOCK
    index = first
    while position < end:
        piece = block(index)
        low = max(start - position, 0)
        high = min(end - position, BLOCK)
        yield piece[low:high]
        position += BLOCK
        index += 1


def open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


def names(directory: Path) -> list[str]:
    return stored_names(directory)


def records_of(directory: Path, pid: int) -> list[Path]:
    """The lock records of process *pid* in *directory*."""
    return sorted(directory.glob(f"{RECORD_PREFIX}{pid}-*"))


def other_backend(name: str) -> str:
    return "trio" if name == "asyncio" else "asyncio"


async def spawn(child: str, *args: object, stderr_path: Path) -> Process:
    stderr = await anyio.to_thread.run_sync(open_log, stderr_path)
    try:
        return await anyio.open_process(
            command(child, *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=_ENV,
        )
    finally:
        stderr.close()


async def spawn_holder(child: str, dirs: tuple[Path, Path], backend: str) -> Process:
    """Start a child that takes the lock on UPLOAD_ID (``holder`` or ``forking_holder``), and wait
    until it has."""
    lock_dir, work_dir = dirs
    process = await spawn(
        child, lock_dir, work_dir, UPLOAD_ID, backend, stderr_path=work_dir / "stderr"
    )
    try:
        assert await wait_for_files(
            work_dir,
            lambda: (work_dir / "locked").exists() or process.returncode is not None,
            timeout=20,
        ), "child to lock"
        assert (work_dir / "locked").exists(), (work_dir / "stderr").read_text()
    except BaseException:
        if process.returncode is None:
            process.kill()
        with anyio.CancelScope(shield=True):
            await process.aclose()
        raise
    return process


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    locks = tmp_path / "locks"
    work = tmp_path / "work"
    locks.mkdir()
    work.mkdir()
    return locks, work


@pytest.fixture
def locker(dirs: tuple[Path, Path]) -> FileLocker:
    """This process's locker on the lock directory of :func:`dirs`."""
    return FileLocker(dirs[0])


# --------------------------------------------------------------------------------------------------


def test_competing_processes_exclude_each_other(dirs: tuple[Path, Path]) -> None:
    lock_dir, work_dir = dirs
    rounds = 6
    backends = {"a": "asyncio", "b": "trio", "c": "asyncio"}
    children = {}
    logs = {}
    for name, backend in backends.items():
        logs[name] = (work_dir / f"stderr-{name}").open("wb")
        children[name] = subprocess.Popen(
            command("competitor", lock_dir, work_dir, name, rounds, backend),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=logs[name],
            env=_ENV,
        )
    try:
        # each child says "ready" once it can take locks; then all of them are told to go at once
        for name, child in children.items():
            assert child.stdout is not None
            ready = child.stdout.readline()
            assert ready == b"ready\n", (work_dir / f"stderr-{name}").read_text()
        for child in children.values():
            assert child.stdin is not None
            child.stdin.write(b"go\n")
            child.stdin.close()
        for name, child in children.items():
            code = child.wait(timeout=90)
            assert code == 0, (work_dir / f"stderr-{name}").read_text()
    finally:
        for name, child in children.items():
            if child.poll() is None:
                child.kill()
                child.wait()
            for stream in (child.stdin, child.stdout):
                if stream is not None:
                    stream.close()
            logs[name].close()

    lines = [line.split() for line in (work_dir / "log").read_text().splitlines()]
    assert len(lines) == 2 * rounds * len(backends)
    # every start is followed by the end of the same round of the same child: no interleaving
    for begin, end in zip(lines[::2], lines[1::2], strict=True):
        assert begin[0] == "start", lines
        assert end[0] == "end", lines
        assert begin[1:3] == end[1:3], lines
        assert float(begin[3]) <= float(end[3])
    # and the intervals, by the clock, do not overlap
    intervals = sorted(
        (float(b[3]), float(e[3])) for b, e in zip(lines[::2], lines[1::2], strict=True)
    )
    for (_, first_end), (second_start, _) in itertools.pairwise(intervals):
        assert first_end <= second_start
    for name in backends:
        done = sorted(int(b[2]) for b in lines[::2] if b[1] == name)
        assert done == list(range(rounds))
    # the work each hold did is whole, in order, and not mixed with another's
    work = (work_dir / "work").read_text().splitlines()
    holds = [work[at : at + WORK_LINES] for at in range(0, len(work), WORK_LINES)]
    assert len(holds) == rounds * len(backends)
    for hold in holds:
        owner, round_ = hold[0].split()[:2]
        assert hold == [f"{owner} {round_} {line}" for line in range(WORK_LINES)], work
    assert names(lock_dir) == []


async def test_release_request_reaches_another_process(
    dirs: tuple[Path, Path], locker: FileLocker, anyio_backend_name: str
) -> None:
    lock_dir, work_dir = dirs
    process = await spawn_holder("holder", dirs, other_backend(anyio_backend_name))
    async with process:
        # the child's lock file is a link to the child's lock record
        (record,) = records_of(lock_dir, process.pid)
        assert record.stat().st_ino == (lock_dir / f"{UPLOAD_ID}.lock").stat().st_ino

        start = time.monotonic()
        await locker.acquire(UPLOAD_ID, timeout=10)
        elapsed = time.monotonic() - start
        try:
            assert elapsed < 3
            with anyio.fail_after(10):
                code = await process.wait()
            assert code == 0, (work_dir / "stderr").read_text()
            # the child's on_release ran once and cancelled its work
            assert (work_dir / "released").read_text() == "True 1"
        finally:
            await locker.release(UPLOAD_ID)
    assert names(lock_dir) == []
    assert records_of(lock_dir, process.pid) == []  # removed as the child exited


async def test_a_forked_child_does_not_keep_its_parents_locks(
    dirs: tuple[Path, Path], locker: FileLocker, anyio_backend_name: str
) -> None:
    # the child of a fork inherits the lock record's open file, and with it the flock() that says
    # the parent's locks are held; it closes it, so the locks are free once the parent dies
    lock_dir, work_dir = dirs
    process = await spawn_holder("forking_holder", dirs, other_backend(anyio_backend_name))
    forked: int | None = None
    try:
        async with process:
            forked = int((work_dir / "forked").read_text())
            with pytest.raises(anyio.WouldBlock):
                await locker.acquire_nowait(UPLOAD_ID)
            process.send_signal(signal.SIGKILL)
            with anyio.fail_after(10):
                await process.wait()
        # the forked child still runs, yet the lock is free at once
        assert _alive(forked)
        await locker.acquire_nowait(UPLOAD_ID)
        await locker.release(UPLOAD_ID)
    finally:
        if forked is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(forked, signal.SIGKILL)
    assert names(lock_dir) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_release_request_from_another_process(
    dirs: tuple[Path, Path], locker: FileLocker, anyio_backend_name: str
) -> None:
    lock_dir, work_dir = dirs
    loop_thread = threading.get_ident()
    calls: list[int] = []
    with anyio.CancelScope() as scope:

        def on_release() -> None:
            calls.append(threading.get_ident())
            scope.cancel()

        async with locker.lock(UPLOAD_ID, on_release=on_release):
            process = await spawn(
                "requester",
                lock_dir,
                work_dir,
                UPLOAD_ID,
                other_backend(anyio_backend_name),
                stderr_path=work_dir / "stderr",
            )
            await anyio.sleep_forever()  # until the requester's release request cancels it

    assert scope.cancelled_caught, "the holder was not asked to let go"
    assert calls == [loop_thread]  # once, in the holder's event loop
    async with process:
        with anyio.fail_after(20):
            code = await process.wait()
    assert code == 0, (work_dir / "stderr").read_text()
    assert float((work_dir / "acquired").read_text()) < 3
    assert names(lock_dir) == []


async def test_writer_killed_mid_upload(tmp_path: Path, anyio_backend_name: str) -> None:
    store_dir = tmp_path / "store"
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    store = await anyio.to_thread.run_sync(FileStore, store_dir)
    size = 64 * 1024 * 1024
    info = await store.new_upload(UploadInfo(size=size))
    data_file = store_dir / f"{info.id}.bin"

    process = await spawn(
        "writer",
        store_dir,
        work_dir,
        info.id,
        other_backend(anyio_backend_name),
        stderr_path=work_dir / "stderr",
    )
    async with process:
        assert await wait_for_files(
            store_dir,
            lambda: data_file.stat().st_size >= 2 * 1024 * 1024 or process.returncode is not None,
            timeout=30,
        ), "the child to write 2 MiB"
        assert process.returncode is None, (work_dir / "stderr").read_text()
        process.send_signal(signal.SIGKILL)
        with anyio.fail_after(10):
            code = await process.wait()
    assert code == -signal.SIGKILL

    # the dead writer's lock is still on disk, a link to its lock record
    lock_lines = (store_dir / f"{info.id}.lock").read_text().splitlines()
    assert lock_lines[0] == str(process.pid)
    (record,) = records_of(store_dir, process.pid)
    assert record.stat().st_ino == (store_dir / f"{info.id}.lock").stat().st_ino

    fetched = await store.get_info(info.id)
    stored = data_file.stat().st_size
    assert fetched.offset == stored
    assert 2 * 1024 * 1024 <= stored < size
    expected = hashlib.sha256(b"".join(expected_stream(0, stored))).hexdigest()
    actual = hashlib.sha256()
    async with store.get_reader(info.id) as stream:
        async for chunk in stream:
            actual.update(chunk)
    assert actual.hexdigest() == expected, "the data is not a prefix of what the child wrote"

    start = time.monotonic()
    async with store.lock(info.id, timeout=10):
        assert time.monotonic() - start < 3
        offset = (await store.get_info(info.id)).offset
        assert offset == stored
        written = await store.write_chunk(info.id, offset, Chunks(expected_stream(offset, size)))
        assert written == size - offset

    final = await store.get_info(info.id)
    assert final.is_complete
    full = hashlib.sha256()
    for piece in expected_stream(0, size):
        full.update(piece)
    digest = await anyio.to_thread.run_sync(functools.partial(file_sha256, data_file))
    assert digest == full.hexdigest()
    assert names(store_dir) == sorted([f"{info.id}.bin", f"{info.id}.info"])
    # a cleanup removes the killed writer's record, and not the complete upload
    assert await store.cleanup(0) == []
    assert records_of(store_dir, process.pid) == []
