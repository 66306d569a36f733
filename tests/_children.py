"""Child processes of the multi-process tests: ``python tests/_children.py NAME ARG...``.

Each child runs the public API under ``anyio.run`` on the backend it is given and reports through
files in a work directory (the parent polls for them). A real module rather than ``python -c``
source, so that ruff and mypy check it like the rest of the tests. Not collected by pytest.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import anyio.to_thread

from anytus import FileLocker, FileStore

if TYPE_CHECKING:
    from collections.abc import Callable

#: this file, for the parent's command line
PATH = Path(__file__).resolve()
#: the writer's block size
BLOCK = 64 * 1024


def command(name: str, *args: object) -> list[str]:
    """The command line that runs child *name* with *args* (each turned into ``str``)."""
    return [sys.executable, str(PATH), name, *map(str, args)]


def block(i: int) -> bytes:
    """Block *i* of the writer's endless stream: its index, big-endian, repeated."""
    return (i % 2**32).to_bytes(4, "big") * (BLOCK // 4)


def touch(path: str, text: str = "") -> None:
    Path(path).write_text(text)


def append_line(path: str, line: str) -> None:
    """Append one line with a single ``O_APPEND`` write: lines of several children never mix."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


#: lines a competitor appends to the shared ``work`` file per hold, a worker-thread hop each
WORK_LINES = 8


def competitor(lock_dir: str, work_dir: str, name: str, rounds: str, backend: str) -> None:
    """Take the lock ``shared`` *rounds* times, once the parent says go on stdin; log each hold's
    start and end, and in between do the work the lock protects: append :data:`WORK_LINES` lines
    to a shared file, one worker-thread hop each, so that the others run meanwhile."""

    async def main() -> None:
        # a waiter asks again soon: the competitors contend for the lock all along
        locker = FileLocker(lock_dir, acquirer_poll_interval=0.01)
        # ready: say so on stdout; go: the parent writes a line to our stdin
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        await anyio.wait_readable(sys.stdin.fileno())
        log = os.path.join(work_dir, "log")
        work = os.path.join(work_dir, "work")
        for i in range(int(rounds)):
            async with locker.lock("shared", timeout=60):
                append_line(log, f"start {name} {i} {time.monotonic()}")
                for line in range(WORK_LINES):
                    await anyio.to_thread.run_sync(append_line, work, f"{name} {i} {line}")
                append_line(log, f"end {name} {i} {time.monotonic()}")
            await anyio.lowlevel.checkpoint()

    anyio.run(main, backend=backend)


def holder(lock_dir: str, work_dir: str, upload_id: str, backend: str) -> None:
    """Hold the lock until asked to release it; write ``released`` with what happened."""

    async def main() -> None:
        locker = FileLocker(lock_dir)
        calls: list[int] = []
        with anyio.CancelScope() as scope:

            def on_release() -> None:
                calls.append(1)
                scope.cancel()

            async with locker.lock(upload_id, timeout=10, on_release=on_release):
                touch(os.path.join(work_dir, "locked"))
                # until a release request cancels it (or the parent kills this process)
                await anyio.sleep_forever()
        touch(os.path.join(work_dir, "released"), f"{scope.cancelled_caught} {len(calls)}")

    anyio.run(main, backend=backend)


def requester(lock_dir: str, work_dir: str, upload_id: str, backend: str) -> None:
    """Take the lock (asking its holder to let go); write ``acquired`` with the time it took."""

    async def main() -> None:
        locker = FileLocker(lock_dir)
        start = time.monotonic()
        async with locker.lock(upload_id, timeout=20):
            elapsed = time.monotonic() - start
        touch(os.path.join(work_dir, "acquired"), str(elapsed))

    anyio.run(main, backend=backend)


#: blocks the writer's body hands out before it stalls: 4 MiB, more than the parent waits for
_BLOCKS_BEFORE_STALL = 64


class _Endless:
    """The writer's body: :func:`block` after block, then nothing more, as a client that stalls
    mid-upload (the parent kills the writer while it waits)."""

    def __init__(self) -> None:
        self.i = 0

    def __aiter__(self) -> _Endless:
        return self

    async def __anext__(self) -> bytes:
        if self.i == _BLOCKS_BEFORE_STALL:
            await anyio.sleep_forever()
        await anyio.lowlevel.checkpoint()  # as a socket's receive would
        chunk = block(self.i)
        self.i += 1
        return chunk


def writer(store_dir: str, work_dir: str, upload_id: str, backend: str) -> None:
    """Write a stream into the upload under its lock, which then stalls (until the parent kills
    us)."""

    async def main() -> None:
        store = await anyio.to_thread.run_sync(FileStore, store_dir)
        async with store.lock(upload_id, timeout=10):
            touch(os.path.join(work_dir, "writing"))
            await store.write_chunk(upload_id, 0, _Endless())

    anyio.run(main, backend=backend)


def _wait_to_be_killed() -> None:
    """In a forked child, whose copy of the event loop must not run: sleep until killed."""
    while True:
        signal.pause()


def forking_holder(lock_dir: str, work_dir: str, upload_id: str, backend: str) -> None:
    """Take the lock, then fork a child that sleeps (its PID in ``forked``), then write ``locked``
    and wait to be killed: the child must not keep the lock alive once we are gone."""

    async def main() -> None:
        locker = FileLocker(lock_dir)
        await locker.acquire(upload_id, timeout=10)
        child = os.fork()
        if child == 0:
            _wait_to_be_killed()
        touch(os.path.join(work_dir, "forked"), str(child))
        touch(os.path.join(work_dir, "locked"))
        await anyio.sleep_forever()

    anyio.run(main, backend=backend)


def exit_now() -> None:
    """Exit at once (a PID that is certainly dead afterwards)."""


CHILDREN: dict[str, Callable[..., None]] = {
    "competitor": competitor,
    "holder": holder,
    "forking_holder": forking_holder,
    "requester": requester,
    "writer": writer,
    "exit": exit_now,
}


if __name__ == "__main__":
    CHILDREN[sys.argv[1]](*sys.argv[2:])
