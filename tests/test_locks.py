"""FileLocker and MemoryLocker: exclusion, timeouts, release requests, and stale lock files.

Lock files are built by hand in the documented formats: tusd's (``"<pid>\\n"``) and anytus's
(``"<pid>\\n" + "anytus <hostname> <boot_id> <start-ticks> <token>\\n"``).
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from _children import command
from _helpers import stored_names
from _server import wait_for_files
from anytus import (
    FileLocker,
    FileStore,
    InvalidUploadId,
    Locker,
    LockTimeout,
    MemoryLocker,
    RedisLocker,
    _locks,
)
from anytus._locks import _MAX_RECORDS, RECORD_PREFIX, _wait_for_polls

if TYPE_CHECKING:
    from collections.abc import Iterator

    from _services import RedisServer

UPLOAD_ID = "0123456789abcdef0123456789abcdef"


def boot_id() -> str:
    return Path("/proc/sys/kernel/random/boot_id").read_text().strip()


def start_ticks(pid: int) -> int:
    # field 22 of /proc/<pid>/stat, counted after the parenthesised command name
    text = Path(f"/proc/{pid}/stat").read_text()
    return int(text.rsplit(")", 1)[1].split()[19])


def anytus_lock(pid: int, host: str | None = None, ticks: int | None = None) -> bytes:
    host = host if host is not None else socket.gethostname()
    ticks = ticks if ticks is not None else 12345
    return f"{pid}\nanytus {host} {boot_id()} {ticks} deadbeefdeadbeefdeadbeefdeadbeef\n".encode()


def dead_pid() -> int:
    process = subprocess.Popen(command("exit"))
    process.wait()
    return process.pid


def is_flocked(path: Path) -> bool:
    """Whether someone holds an flock() on *path* (a new open file description conflicts)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def names(directory: Path) -> list[str]:
    return stored_names(directory)


@pytest.fixture
def lock_dir(tmp_path: Path) -> Path:
    path = tmp_path / "locks"
    path.mkdir()
    return path


@pytest.fixture(params=["file", "memory", "redis"])
def locker(request: pytest.FixtureRequest, lock_dir: Path) -> Iterator[Locker]:
    if request.param == "file":
        yield FileLocker(lock_dir)
    elif request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        redis_locker = RedisLocker(server.url, prefix=f"{lock_dir.parent.name}:")
        yield redis_locker
        redis_locker.close()
    else:
        yield MemoryLocker()


@pytest.fixture
def file_locker(lock_dir: Path) -> FileLocker:
    return FileLocker(lock_dir)


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process that is not us."""
    process = subprocess.Popen(["sleep", "30"])
    try:
        yield process
    finally:
        process.kill()
        process.wait()


async def acquire_timed(locker: Locker, upload_id: str, timeout: float) -> float:
    start = time.monotonic()
    await locker.acquire(upload_id, timeout=timeout)
    return time.monotonic() - start


# --------------------------------------------------------------------------------------------------
# both lockers


class TestBothLockers:
    async def test_lock_unlock_leaves_nothing(self, locker: Locker, lock_dir: Path) -> None:
        async with locker.lock(UPLOAD_ID):
            assert locker.locked(UPLOAD_ID)
        assert not locker.locked(UPLOAD_ID)
        assert names(lock_dir) == []

    async def test_explicit_pair(self, locker: Locker, lock_dir: Path) -> None:
        await locker.acquire(UPLOAD_ID)
        assert locker.locked(UPLOAD_ID)
        await locker.release(UPLOAD_ID)
        assert not locker.locked(UPLOAD_ID)
        # and again, at once: free without waiting for anything (no wall-clock bound, which a
        # loaded machine's scheduling can exceed)
        await locker.acquire_nowait(UPLOAD_ID)
        assert locker.locked(UPLOAD_ID)
        await locker.release(UPLOAD_ID)
        assert names(lock_dir) == []

    async def test_release_of_unheld_lock_is_a_no_op(self, locker: Locker, lock_dir: Path) -> None:
        await locker.release(UPLOAD_ID)
        await locker.release("never-locked")
        assert names(lock_dir) == []

    async def test_locks_are_per_upload(self, locker: Locker) -> None:
        async with locker.lock("a"):
            await locker.acquire_nowait("b")  # not held up by "a"
            assert locker.locked("a")
            assert locker.locked("b")
            await locker.release("b")

    async def test_exclusive_between_tasks(self, locker: Locker, lock_dir: Path) -> None:
        active = 0
        most = 0
        finished = 0

        async def worker() -> None:
            nonlocal active, most, finished
            async with locker.lock(UPLOAD_ID, timeout=20):
                active += 1
                most = max(most, active)
                # let every other task run (and try the lock) while this one holds it
                for _ in range(10):
                    await anyio.lowlevel.checkpoint()
                assert active == 1
                active -= 1
            finished += 1

        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                for _ in range(5):
                    tg.start_soon(worker)

        assert finished == 5
        assert most == 1
        assert names(lock_dir) == []

    async def test_second_lock_times_out(self, locker: Locker, lock_dir: Path) -> None:
        async with locker.lock(UPLOAD_ID):
            start = time.monotonic()
            with pytest.raises(LockTimeout) as exc_info:
                await locker.acquire(UPLOAD_ID, timeout=0.2)
            elapsed = time.monotonic() - start
            assert exc_info.value.status_code == 423
            assert 0.15 <= elapsed < 1.5
            # the holder still holds it
            assert locker.locked(UPLOAD_ID)
            with pytest.raises(LockTimeout):
                await locker.acquire(UPLOAD_ID, timeout=0)
        # no request file is left behind by the timed-out waiter (tus/tusd#1372)
        assert names(lock_dir) == []
        await locker.acquire_nowait(UPLOAD_ID)  # free at once
        await locker.release(UPLOAD_ID)

    async def test_release_request_handover(self, locker: Locker, lock_dir: Path) -> None:
        calls: list[int] = []
        loop_thread = threading.get_ident()
        asked = anyio.Event()
        let_go = anyio.Event()
        holder_exited = anyio.Event()
        acquired = anyio.Event()

        def on_release() -> None:
            calls.append(threading.get_ident())
            asked.set()

        async def holder(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            async with locker.lock(UPLOAD_ID, on_release=on_release):
                task_status.started()
                await let_go.wait()  # asked to let go, it takes its time: the waiter must wait
            holder_exited.set()

        async def waiter() -> None:
            await locker.acquire(UPLOAD_ID, timeout=10)
            acquired.set()

        async with anyio.create_task_group() as tg:
            await tg.start(holder)
            tg.start_soon(waiter)
            await asked.wait()
            # everything that can run has run: the waiter still waits, and asked just once
            await anyio.wait_all_tasks_blocked()
            assert not acquired.is_set()
            assert locker.locked(UPLOAD_ID)
            let_go.set()
            await acquired.wait()
            assert holder_exited.is_set()

        assert calls == [loop_thread]  # exactly once, in the holder's event loop
        await locker.release(UPLOAD_ID)
        assert names(lock_dir) == []

    async def test_release_request_cancels_holder(self, locker: Locker, lock_dir: Path) -> None:
        """The protocol handler's use: on_release cancels the holder's request."""
        held = anyio.Event()
        interrupted = False

        async def holder() -> None:
            nonlocal interrupted
            with anyio.CancelScope() as scope:
                async with locker.lock(UPLOAD_ID, on_release=scope.cancel):
                    held.set()
                    await anyio.sleep_forever()
            interrupted = scope.cancelled_caught

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await held.wait()
            elapsed = await acquire_timed(locker, UPLOAD_ID, timeout=10)

        assert interrupted
        assert elapsed < 1.0
        assert locker.locked(UPLOAD_ID)
        await locker.release(UPLOAD_ID)
        assert names(lock_dir) == []

    async def test_cancelled_waiter_leaves_nothing(self, locker: Locker, lock_dir: Path) -> None:
        async with locker.lock(UPLOAD_ID):
            with anyio.move_on_after(0.3) as scope:
                await locker.acquire(UPLOAD_ID, timeout=10)
            assert scope.cancelled_caught
            assert locker.locked(UPLOAD_ID)
        assert not locker.locked(UPLOAD_ID)
        assert names(lock_dir) == []
        await locker.acquire_nowait(UPLOAD_ID)  # free at once
        await locker.release(UPLOAD_ID)
        assert names(lock_dir) == []

    async def test_cancelled_while_holding_releases(self, locker: Locker, lock_dir: Path) -> None:
        with anyio.move_on_after(0.1):
            async with locker.lock(UPLOAD_ID):
                await anyio.sleep_forever()
        assert not locker.locked(UPLOAD_ID)
        assert names(lock_dir) == []
        await locker.acquire_nowait(UPLOAD_ID)  # free at once
        await locker.release(UPLOAD_ID)

    async def test_timed_out_waiter_then_holder_hands_over(self, locker: Locker) -> None:
        # a waiter that gave up must not leave the next waiter or the holder in a bad state
        async with locker.lock(UPLOAD_ID):
            with pytest.raises(LockTimeout):
                await locker.acquire(UPLOAD_ID, timeout=0.1)
        async with locker.lock(UPLOAD_ID, timeout=1):
            pass

    @pytest.mark.parametrize("bad", ["../x", "a/b", "", "x" * 200, "a\x00", "ü", "..", "a.b"])
    async def test_invalid_ids(self, locker: Locker, tmp_path: Path, bad: str) -> None:
        with pytest.raises(InvalidUploadId):
            await locker.acquire(bad, timeout=0.1)
        with pytest.raises(InvalidUploadId):
            async with locker.lock(bad, timeout=0.1):
                pass
        assert sorted(p.name for p in tmp_path.rglob("*")) == ["locks"]

    async def test_release_in_a_cancelled_scope_still_releases(
        self, locker: Locker, lock_dir: Path
    ) -> None:
        # `try: ... finally: await locker.release(id)` in a task that is being cancelled
        await locker.acquire(UPLOAD_ID)
        with anyio.CancelScope() as scope:
            scope.cancel()
            try:
                await locker.release(UPLOAD_ID)
            finally:
                assert not locker.locked(UPLOAD_ID)
        assert names(lock_dir) == []
        await locker.acquire_nowait(UPLOAD_ID)  # free at once
        await locker.release(UPLOAD_ID)


class TestMemoryLocker:
    async def test_timeout_still_asks_holder(self) -> None:
        locker = MemoryLocker()
        calls = 0

        def on_release() -> None:
            nonlocal calls
            calls += 1

        async with locker.lock(UPLOAD_ID, on_release=on_release):
            with pytest.raises(LockTimeout):
                await locker.acquire(UPLOAD_ID, timeout=0.1)
            assert calls == 1

    async def test_instances_are_independent(self) -> None:
        first, second = MemoryLocker(), MemoryLocker()
        async with first.lock(UPLOAD_ID), second.lock(UPLOAD_ID, timeout=0.1):
            assert first.locked(UPLOAD_ID)
            assert second.locked(UPLOAD_ID)


# --------------------------------------------------------------------------------------------------
# FileLocker: the lock file


class TestFileLockerFile:
    async def test_lock_file_format(self, file_locker: FileLocker, lock_dir: Path) -> None:
        async with file_locker.lock(UPLOAD_ID):
            assert names(lock_dir) == [f"{UPLOAD_ID}.lock"]
            lines = (lock_dir / f"{UPLOAD_ID}.lock").read_text().splitlines()
            # line 1 is the PID, as tusd writes it, so tusd reads us correctly
            assert lines[0] == str(os.getpid())
            fields = lines[1].split()
            assert len(fields) == 5, fields
            assert fields[0] == "anytus"
            assert fields[1] == socket.gethostname()
            assert fields[2] == boot_id()
            assert fields[3] == str(start_ticks(os.getpid()))
            assert len(fields[4]) >= 16
            assert is_flocked(lock_dir / f"{UPLOAD_ID}.lock")
        assert names(lock_dir) == []

    async def test_two_instances_exclude_each_other(self, lock_dir: Path) -> None:
        first = await anyio.to_thread.run_sync(FileLocker, lock_dir)
        second = await anyio.to_thread.run_sync(FileLocker, lock_dir)
        async with first.lock(UPLOAD_ID):
            with pytest.raises(LockTimeout):
                await second.acquire(UPLOAD_ID, timeout=0.3)
            assert (lock_dir / f"{UPLOAD_ID}.lock").exists()
        await second.acquire_nowait(UPLOAD_ID)  # free at once
        with pytest.raises(LockTimeout):
            await first.acquire(UPLOAD_ID, timeout=0.3)
        await second.release(UPLOAD_ID)
        assert names(lock_dir) == []

    async def test_locked_is_per_instance(self, lock_dir: Path) -> None:
        # "whether this locker currently holds the upload's lock"
        first = await anyio.to_thread.run_sync(FileLocker, lock_dir)
        second = await anyio.to_thread.run_sync(FileLocker, lock_dir)
        async with first.lock(UPLOAD_ID):
            assert first.locked(UPLOAD_ID)
            assert not second.locked(UPLOAD_ID)

    async def test_release_by_another_instance_does_nothing(self, lock_dir: Path) -> None:
        # "releasing a lock that is not held does nothing": another locker's lock is not held
        first = await anyio.to_thread.run_sync(FileLocker, lock_dir)
        second = await anyio.to_thread.run_sync(FileLocker, lock_dir)
        async with first.lock(UPLOAD_ID):
            record = (lock_dir / f"{UPLOAD_ID}.lock").read_bytes()
            await second.release(UPLOAD_ID)
            assert (lock_dir / f"{UPLOAD_ID}.lock").read_bytes() == record
            assert is_flocked(lock_dir / f"{UPLOAD_ID}.lock")
            assert first.locked(UPLOAD_ID)
            with pytest.raises(LockTimeout):
                await second.acquire(UPLOAD_ID, timeout=0.3)
        assert names(lock_dir) == []

    async def test_two_instances_release_request(self, lock_dir: Path) -> None:
        first = await anyio.to_thread.run_sync(FileLocker, lock_dir)
        second = await anyio.to_thread.run_sync(FileLocker, lock_dir)
        held = anyio.Event()
        calls = 0

        async def holder() -> None:
            nonlocal calls
            with anyio.CancelScope() as scope:

                def on_release() -> None:
                    nonlocal calls
                    calls += 1
                    scope.cancel()

                async with first.lock(UPLOAD_ID, on_release=on_release):
                    held.set()
                    await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await held.wait()
            elapsed = await acquire_timed(second, UPLOAD_ID, timeout=10)

        assert calls == 1
        assert elapsed < 1.5
        await second.release(UPLOAD_ID)
        assert names(lock_dir) == []

    async def test_release_request_from_another_event_loop(
        self, file_locker: FileLocker, lock_dir: Path, anyio_backend_name: str
    ) -> None:
        """Another event loop in this process (a thread running anyio.run, with a locker of its
        own) asks for the lock."""
        loop_thread = threading.get_ident()
        calls: list[int] = []
        held = anyio.Event()
        other = "trio" if anyio_backend_name == "asyncio" else "asyncio"

        async def waiter() -> float:
            other_locker = FileLocker(lock_dir)
            start = time.monotonic()
            await other_locker.acquire(UPLOAD_ID, timeout=10)
            elapsed = time.monotonic() - start
            await other_locker.release(UPLOAD_ID)
            return elapsed

        def in_thread() -> float:
            return anyio.run(waiter, backend=other)

        async def holder() -> None:
            with anyio.CancelScope() as scope:

                def on_release() -> None:
                    calls.append(threading.get_ident())
                    scope.cancel()

                async with file_locker.lock(UPLOAD_ID, on_release=on_release):
                    held.set()
                    await anyio.sleep_forever()  # until on_release cancels it

        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await held.wait()
            elapsed = await anyio.to_thread.run_sync(in_thread)

        assert calls == [loop_thread]
        assert elapsed < 1.5
        assert names(lock_dir) == []

    async def test_heartbeat_touches_the_lock_file(self, lock_dir: Path) -> None:
        locker = await anyio.to_thread.run_sync(
            lambda: FileLocker(lock_dir, heartbeat_interval=0.2)
        )
        path = lock_dir / f"{UPLOAD_ID}.lock"
        async with locker.lock(UPLOAD_ID):
            old = time.time() - 3600
            await anyio.to_thread.run_sync(os.utime, path, (old, old))
            # the next heartbeat (0.2 s) makes it fresh; the file has no event to wait on
            assert await wait_for_files(
                path.parent, lambda: time.time() - path.stat().st_mtime < 5, timeout=5
            )

    async def test_stale_stop_file_does_not_interrupt_new_holder(
        self, file_locker: FileLocker, lock_dir: Path
    ) -> None:
        # a waiter that died (or tusd) left a release request behind: tus/tusd#1372
        (lock_dir / f"{UPLOAD_ID}.stop").write_bytes(b"")
        calls = 0

        def on_release() -> None:
            nonlocal calls
            calls += 1

        lock_path = str(lock_dir / f"{UPLOAD_ID}.lock")
        async with file_locker.lock(UPLOAD_ID, timeout=2, on_release=on_release):
            # two polls of the lock watcher, which would have seen a stop file left in place
            assert await anyio.to_thread.run_sync(_wait_for_polls, lock_path, 2, 10)
        assert calls == 0
        assert names(lock_dir) == []

    async def test_missing_directory(self, tmp_path: Path) -> None:
        directory = tmp_path / "nope"
        locker = await anyio.to_thread.run_sync(FileLocker, directory)
        # the directory is made on the first lock, not before; nothing stays after the release
        assert not directory.exists()
        async with locker.lock(UPLOAD_ID, timeout=5):
            assert locker.locked(UPLOAD_ID)
            assert (directory / f"{UPLOAD_ID}.lock").exists()
        assert names(directory) == []


# --------------------------------------------------------------------------------------------------
# FileLocker: lock files left by others


class TestFileLockerStale:
    @pytest.mark.parametrize("fmt", ["tusd", "anytus"])
    async def test_dead_pid_is_reclaimed(
        self, file_locker: FileLocker, lock_dir: Path, fmt: str
    ) -> None:
        pid = await anyio.to_thread.run_sync(dead_pid)
        path = lock_dir / f"{UPLOAD_ID}.lock"
        path.write_bytes(f"{pid}\n".encode() if fmt == "tusd" else anytus_lock(pid))
        with anyio.fail_after(5):
            await file_locker.acquire(UPLOAD_ID, timeout=3)
        assert path.read_text().splitlines()[0] == str(os.getpid())
        await file_locker.release(UPLOAD_ID)
        assert names(lock_dir) == []

    @pytest.mark.parametrize(
        "content",
        [
            pytest.param(lambda: f"{os.getpid()}\n".encode(), id="tusd"),
            pytest.param(lambda: anytus_lock(os.getpid()), id="anytus-other-start"),
            pytest.param(
                lambda: anytus_lock(os.getpid(), ticks=start_ticks(os.getpid())),
                id="anytus-same-start-other-token",
            ),
        ],
    )
    async def test_own_pid_from_previous_incarnation_is_reclaimed(
        self, file_locker: FileLocker, lock_dir: Path, content: object
    ) -> None:
        # a container restarts: the server is PID 1 again and finds its old lock (tus/tusd#437)
        assert callable(content)
        path = lock_dir / f"{UPLOAD_ID}.lock"
        path.write_bytes(content())
        with anyio.fail_after(5):
            await file_locker.acquire(UPLOAD_ID, timeout=3)
        await file_locker.release(UPLOAD_ID)
        assert names(lock_dir) == []

    @pytest.mark.parametrize("pid_kind", ["own", "dead", "init"])
    async def test_fresh_foreign_host_lock_is_honoured(
        self, file_locker: FileLocker, lock_dir: Path, pid_kind: str
    ) -> None:
        if pid_kind == "own":
            pid = os.getpid()
        elif pid_kind == "init":
            pid = 1
        else:
            pid = await anyio.to_thread.run_sync(dead_pid)
        path = lock_dir / f"{UPLOAD_ID}.lock"
        content = anytus_lock(pid, host="some-other-host.example")
        path.write_bytes(content)
        with pytest.raises(LockTimeout):
            await file_locker.acquire(UPLOAD_ID, timeout=0.6)
        assert path.read_bytes() == content
        assert not file_locker.locked(UPLOAD_ID)

    async def test_reused_pid_is_reclaimed(
        self, file_locker: FileLocker, lock_dir: Path, sleeper: subprocess.Popen[bytes]
    ) -> None:
        # the holder died and its PID now belongs to another process: start times differ
        path = lock_dir / f"{UPLOAD_ID}.lock"
        wrong_ticks = start_ticks(sleeper.pid) - 1
        path.write_bytes(anytus_lock(sleeper.pid, ticks=wrong_ticks))
        with anyio.fail_after(5):
            await file_locker.acquire(UPLOAD_ID, timeout=3)
        assert path.read_text().splitlines()[0] == str(os.getpid())
        await file_locker.release(UPLOAD_ID)

    async def test_lock_from_a_previous_boot_is_reclaimed(
        self, file_locker: FileLocker, lock_dir: Path, sleeper: subprocess.Popen[bytes]
    ) -> None:
        path = lock_dir / f"{UPLOAD_ID}.lock"
        record = (
            f"{sleeper.pid}\nanytus {socket.gethostname()} 00000000-0000-0000-0000-000000000000 "
            f"{start_ticks(sleeper.pid)} cafebabecafebabe\n"
        )
        path.write_text(record)
        with anyio.fail_after(5):
            await file_locker.acquire(UPLOAD_ID, timeout=3)
        await file_locker.release(UPLOAD_ID)
        assert names(lock_dir) == []

    async def test_old_foreign_host_lock_is_reclaimed(
        self, file_locker: FileLocker, lock_dir: Path
    ) -> None:
        path = lock_dir / f"{UPLOAD_ID}.lock"
        path.write_bytes(anytus_lock(4242, host="some-other-host.example"))
        old = time.time() - 3600
        await anyio.to_thread.run_sync(os.utime, path, (old, old))
        with anyio.fail_after(5):
            await file_locker.acquire(UPLOAD_ID, timeout=3)
        assert path.read_text().splitlines()[1].split()[1] == socket.gethostname()
        await file_locker.release(UPLOAD_ID)
        assert names(lock_dir) == []

    async def test_stale_after_is_honoured(self, lock_dir: Path) -> None:
        locker = await anyio.to_thread.run_sync(lambda: FileLocker(lock_dir, stale_after=2.0))
        path = lock_dir / f"{UPLOAD_ID}.lock"
        path.write_bytes(anytus_lock(4242, host="some-other-host.example"))
        five_seconds_ago = time.time() - 5
        await anyio.to_thread.run_sync(os.utime, path, (five_seconds_ago, five_seconds_ago))
        with anyio.fail_after(5):
            await locker.acquire(UPLOAD_ID, timeout=3)
        await locker.release(UPLOAD_ID)

    async def test_live_tusd_holder_is_honoured(
        self, file_locker: FileLocker, lock_dir: Path, sleeper: subprocess.Popen[bytes]
    ) -> None:
        path = lock_dir / f"{UPLOAD_ID}.lock"
        path.write_bytes(f"{sleeper.pid}\n".encode())
        with pytest.raises(LockTimeout):
            await file_locker.acquire(UPLOAD_ID, timeout=0.6)
        assert path.read_bytes() == f"{sleeper.pid}\n".encode()
        # a waiter that gave up withdraws its release request (tus/tusd#1372)
        assert names(lock_dir) == [f"{UPLOAD_ID}.lock"]
        with anyio.move_on_after(0.6) as scope:
            await file_locker.acquire(UPLOAD_ID, timeout=10)
        assert scope.cancelled_caught
        assert names(lock_dir) == [f"{UPLOAD_ID}.lock"]
        # even when the tusd lock looks old: tusd never refreshes its lock file
        old = time.time() - 3600
        await anyio.to_thread.run_sync(os.utime, path, (old, old))
        with pytest.raises(LockTimeout):
            await file_locker.acquire(UPLOAD_ID, timeout=0.6)
        assert path.read_bytes() == f"{sleeper.pid}\n".encode()

    async def test_live_tusd_holder_then_exit(
        self, file_locker: FileLocker, lock_dir: Path, sleeper: subprocess.Popen[bytes]
    ) -> None:
        path = lock_dir / f"{UPLOAD_ID}.lock"
        path.write_bytes(f"{sleeper.pid}\n".encode())
        with pytest.raises(LockTimeout):
            await file_locker.acquire(UPLOAD_ID, timeout=0.3)
        sleeper.kill()
        await anyio.to_thread.run_sync(sleeper.wait)
        with anyio.fail_after(5):
            await file_locker.acquire(UPLOAD_ID, timeout=3)
        await file_locker.release(UPLOAD_ID)

    @pytest.mark.parametrize("fmt", ["tusd", "anytus"])
    async def test_zombie_holder_is_dead(
        self, file_locker: FileLocker, lock_dir: Path, tmp_path: Path, fmt: str
    ) -> None:
        # a killed worker whose parent has not reaped it yet still has a /proc entry, with its
        # start time, and kill(pid, 0) succeeds: it must count as dead all the same
        work = tmp_path / "work"
        work.mkdir()
        path = lock_dir / f"{UPLOAD_ID}.lock"
        if fmt == "anytus":
            argv = command("holder", lock_dir, work, UPLOAD_ID, "asyncio")
            child = await anyio.to_thread.run_sync(subprocess.Popen, argv)
            assert await wait_for_files(
                work, (work / "locked").exists, timeout=20
            )  # another process
        else:
            child = await anyio.to_thread.run_sync(subprocess.Popen, ["sleep", "30"])
            path.write_bytes(f"{child.pid}\n".encode())
        try:
            record = path.read_bytes()
            child.kill()
            # wait for its exit without reaping it: it stays a zombie
            await anyio.to_thread.run_sync(
                lambda: os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)
            )
            assert Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
            assert path.read_bytes() == record
            await file_locker.acquire(UPLOAD_ID, timeout=5)
            await file_locker.release(UPLOAD_ID)
        finally:
            child.kill()
            await anyio.to_thread.run_sync(child.wait)

    async def test_release_does_not_remove_a_foreign_lock(
        self, file_locker: FileLocker, lock_dir: Path, sleeper: subprocess.Popen[bytes]
    ) -> None:
        path = lock_dir / f"{UPLOAD_ID}.lock"
        path.write_bytes(f"{sleeper.pid}\n".encode())
        await file_locker.release(UPLOAD_ID)
        assert path.read_bytes() == f"{sleeper.pid}\n".encode()


async def hold_inline(locker: FileLocker, *, shared: bool) -> bool:
    """Take the lock as a one-hop request does (reserve, enter in a thread, exit, close); return
    whether it was free."""
    hold = locker.hold_inline(UPLOAD_ID, shared=shared)
    try:
        entered = await anyio.to_thread.run_sync(hold.enter)
        if entered:
            await anyio.to_thread.run_sync(hold.exit)
        return entered
    finally:
        hold.close()


class TestLockRecord:
    """A process writes its record once and takes each lock by hard-linking ``[id].lock`` to it:
    no file is created or removed per lock (see :mod:`anytus._locks`)."""

    @staticmethod
    def record_of_this_process(lock_dir: Path) -> Path:
        ours = [
            p for p in lock_dir.iterdir() if p.name.startswith(f"{RECORD_PREFIX}{os.getpid()}-")
        ]
        assert len(ours) == 1
        return ours[0]

    async def test_locks_are_links_to_the_record(
        self, file_locker: FileLocker, lock_dir: Path
    ) -> None:
        other = "fedcba9876543210fedcba9876543210"
        for _ in range(3):
            async with file_locker.lock(UPLOAD_ID, timeout=2), file_locker.lock(other, timeout=2):
                record = self.record_of_this_process(lock_dir)
                first = (lock_dir / f"{UPLOAD_ID}.lock").stat()
                second = (lock_dir / f"{other}.lock").stat()
                assert first.st_ino == second.st_ino == record.stat().st_ino
                assert record.stat().st_nlink == 3
                assert record.read_text().splitlines()[0] == str(os.getpid())  # tusd's PID line
                # held for the process's life: other processes see every one of its locks held
                assert await anyio.to_thread.run_sync(is_flocked, record)
            assert record.stat().st_nlink == 1
            assert names(lock_dir) == []

    async def test_a_dead_process_record_stays_stale_for_its_other_locks(
        self, file_locker: FileLocker, lock_dir: Path
    ) -> None:
        # a process was killed holding two locks, both links to its record
        pid = await anyio.to_thread.run_sync(dead_pid)
        content = anytus_lock(pid)
        record = lock_dir / f"{RECORD_PREFIX}{pid}-deadbeef"
        record.write_bytes(content)
        other = "fedcba9876543210fedcba9876543210"
        os.link(record, lock_dir / f"{UPLOAD_ID}.lock")
        os.link(record, lock_dir / f"{other}.lock")
        async with file_locker.lock(UPLOAD_ID, timeout=2):
            taken = (lock_dir / f"{UPLOAD_ID}.lock").stat()
            assert taken.st_ino == self.record_of_this_process(lock_dir).stat().st_ino
            # taking one over did not write into the dead record: its other lock still reads as
            # the dead process's, not as held by us
            assert (lock_dir / f"{other}.lock").read_bytes() == content
            assert record.read_bytes() == content
            assert not await anyio.to_thread.run_sync(is_flocked, lock_dir / f"{other}.lock")
        async with file_locker.lock(other, timeout=2):
            pass
        # the dead record is removed by a cleanup pass; ours, alive, is not
        store = await anyio.to_thread.run_sync(FileStore, lock_dir)
        assert await store.cleanup(3600) == []
        assert sorted(os.listdir(lock_dir)) == [self.record_of_this_process(lock_dir).name]

    async def test_a_live_record_on_this_host_is_not_swept(
        self, lock_dir: Path, sleeper: subprocess.Popen[bytes]
    ) -> None:
        # flock() is not enforced everywhere: a record without one whose process still runs stays
        record = lock_dir / f"{RECORD_PREFIX}{sleeper.pid}-cafe"
        record.write_bytes(anytus_lock(sleeper.pid, ticks=start_ticks(sleeper.pid)))
        foreign = lock_dir / f"{RECORD_PREFIX}1-beef"
        foreign.write_bytes(anytus_lock(1, host="some-other-host.example"))
        store = await anyio.to_thread.run_sync(FileStore, lock_dir)
        await store.cleanup(3600)
        assert record.exists()
        assert foreign.exists()

    async def test_a_removed_record_is_made_again(
        self, file_locker: FileLocker, lock_dir: Path
    ) -> None:
        async with file_locker.lock(UPLOAD_ID, timeout=2):
            first = self.record_of_this_process(lock_dir)
        first.unlink()  # by hand, or by a tool that empties the directory
        async with file_locker.lock(UPLOAD_ID, timeout=2):
            record = self.record_of_this_process(lock_dir)
            assert (lock_dir / f"{UPLOAD_ID}.lock").stat().st_ino == record.stat().st_ino
        assert names(lock_dir) == []

    async def test_a_lock_linked_as_the_record_is_made_again_is_let_go(
        self, file_locker: FileLocker, lock_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The record's name is removed (a tool empties the directory) while two threads lock:
        one finds the name gone and makes a new record, the other had taken the old record just
        before and now links to its name. Were the new record made under the old name, that link
        would be to the new record, and releasing through the old one would leave the lock file
        behind, keeping the upload locked (every waiter 423) for as long as the process runs. A
        record is never made again under a name: the link fails, and the lock is taken through
        the new record."""
        async with file_locker.lock(UPLOAD_ID, timeout=2):
            pass
        directory, hostname = str(lock_dir.absolute()), socket.gethostname()

        def race() -> tuple[_locks._LockRecord, _locks._LockRecord]:
            stale = _locks._take_record(directory, hostname)  # the thread about to link
            assert stale is not None
            os.unlink(stale.path)
            finder = _locks._take_record(directory, hostname)
            assert finder is stale
            _locks._give_back_record(finder, gone=True)  # the other: its link found no name
            remade = _locks._take_record(directory, hostname)  # ... so it made a new record
            assert remade is not None
            _locks._give_back_record(remade)
            return stale, remade

        stale, remade = await anyio.to_thread.run_sync(race)
        assert remade is not stale
        assert remade.path != stale.path
        take_record = _locks._take_record
        handed = iter([stale])
        monkeypatch.setattr(
            _locks, "_take_record", lambda d, h: next(handed, None) or take_record(d, h)
        )

        async with file_locker.lock(UPLOAD_ID, timeout=2):
            lock_file = await anyio.Path(lock_dir / f"{UPLOAD_ID}.lock").stat()
            assert (lock_file.st_dev, lock_file.st_ino) == remade.identity
        assert names(lock_dir) == []
        with anyio.fail_after(5):
            await file_locker.acquire_nowait(UPLOAD_ID)  # free at once, not held by a leftover
        await file_locker.release(UPLOAD_ID)

    async def test_idle_records_are_bounded(self, tmp_path: Path) -> None:
        # one record per directory, each an open file: a process that locks in many directories
        # keeps a few, and closes (and removes) the least recently used ones it holds no lock in
        directories = [tmp_path / str(index) for index in range(_MAX_RECORDS + 4)]
        held = FileLocker(directories[0])
        async with held.lock(UPLOAD_ID, timeout=2):
            for directory in directories[1:]:
                async with FileLocker(directory).lock(UPLOAD_ID, timeout=2):
                    pass
            kept = [
                d for d in directories if any(p.name.startswith(RECORD_PREFIX) for p in d.iterdir())
            ]
            # the held one stays, whatever its age
            assert directories[0] in kept
            assert len(kept) == _MAX_RECORDS
            assert (directories[0] / f"{UPLOAD_ID}.lock").stat().st_nlink == 2
        for directory in directories:
            assert names(directory) == []

    async def test_without_hard_links_each_lock_has_a_file(
        self, file_locker: FileLocker, lock_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def no_links(*args: object, **kwargs: object) -> None:
            raise PermissionError(1, "Operation not permitted")  # as on a FAT or SMB mount

        monkeypatch.setattr(os, "link", no_links)
        async with file_locker.lock(UPLOAD_ID, timeout=2):
            path = lock_dir / f"{UPLOAD_ID}.lock"
            assert path.stat().st_nlink == 1
            assert path.read_text().splitlines()[0] == str(os.getpid())
            assert await anyio.to_thread.run_sync(is_flocked, path)
        assert names(lock_dir) == []


class TestInlineHolds:
    """The one-hop path judges lock files as ``acquire`` does, and a shared hold changes none."""

    @pytest.mark.parametrize("shared", [False, True])
    async def test_free(self, file_locker: FileLocker, lock_dir: Path, shared: bool) -> None:
        assert await hold_inline(file_locker, shared=shared)
        assert names(lock_dir) == []  # the exclusive hold removed its lock file
        assert not file_locker.locked(UPLOAD_ID)

    @pytest.mark.parametrize("shared", [False, True])
    async def test_live_tusd_holder_is_honoured(
        self,
        file_locker: FileLocker,
        lock_dir: Path,
        sleeper: subprocess.Popen[bytes],
        shared: bool,
    ) -> None:
        path = lock_dir / f"{UPLOAD_ID}.lock"
        path.write_bytes(f"{sleeper.pid}\n".encode())
        assert not await hold_inline(file_locker, shared=shared)
        assert path.read_bytes() == f"{sleeper.pid}\n".encode()
        assert names(lock_dir) == [f"{UPLOAD_ID}.lock"]

    @pytest.mark.parametrize("shared", [False, True])
    async def test_dead_tusd_holder_is_ignored(
        self, file_locker: FileLocker, lock_dir: Path, shared: bool
    ) -> None:
        path = lock_dir / f"{UPLOAD_ID}.lock"
        pid = await anyio.to_thread.run_sync(dead_pid)
        path.write_bytes(f"{pid}\n".encode())
        assert await hold_inline(file_locker, shared=shared)
        if shared:
            # a reader changes nothing on disk, not even a stale lock file
            assert path.read_bytes() == f"{pid}\n".encode()
        else:
            assert names(lock_dir) == []

    @pytest.mark.parametrize("shared", [False, True])
    async def test_holder_in_another_process_is_honoured(
        self, lock_dir: Path, shared: bool
    ) -> None:
        holder = FileLocker(lock_dir)
        path = lock_dir / f"{UPLOAD_ID}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            # another process's flock(): a new open file description conflicts like one
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, anytus_lock(os.getpid() + 1))
            assert not await hold_inline(holder, shared=shared)
        finally:
            os.close(fd)
        assert await hold_inline(holder, shared=shared)

    async def test_held_in_this_process_would_block(self, file_locker: FileLocker) -> None:
        await file_locker.acquire(UPLOAD_ID)
        try:
            for shared in (False, True):
                with pytest.raises(anyio.WouldBlock):
                    file_locker.hold_inline(UPLOAD_ID, shared=shared)
        finally:
            await file_locker.release(UPLOAD_ID)

    async def test_an_acquirer_waits_for_an_inline_hold(self, file_locker: FileLocker) -> None:
        hold = file_locker.hold_inline(UPLOAD_ID)
        assert await anyio.to_thread.run_sync(hold.enter)
        async with anyio.create_task_group() as tg:
            acquired = anyio.Event()

            async def acquire() -> None:
                await file_locker.acquire(UPLOAD_ID, timeout=5)
                acquired.set()

            tg.start_soon(acquire)
            await anyio.wait_all_tasks_blocked()
            assert not acquired.is_set()
            await anyio.to_thread.run_sync(hold.exit)
            hold.close()
            with anyio.fail_after(5):
                await acquired.wait()
        assert file_locker.locked(UPLOAD_ID)
        await file_locker.release(UPLOAD_ID)
