"""The suite's guard against blocking calls on the event loop works, on every backend.

On asyncio blockbuster raises, on trio our guard (``tests/_blocking.py``); both raise
:exc:`blockbuster.BlockingError`, and only for a call made from anytus's code in a task on the
loop's thread: not in a worker thread, not from test code, not outside the loop.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import pytest
from blockbuster import BlockingError

import anytus
from anytus._filestore import _fsync_path, _unlink_quietly

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

# A frame "in anytus" without changing anytus: a one-line caller compiled under a file name inside
# the package's directory (never written to disk), so a call made through it is one anytus makes.
_namespace: dict[str, Any] = {}
exec(  # noqa: S102 - a constant source, to get a frame with an anytus file name
    compile(
        "def call(function, *args, **kwargs):\n    return function(*args, **kwargs)\n",
        str(Path(anytus.__file__).parent / "_blocking_probe.py"),
        "exec",
    ),
    _namespace,
)
_from_anytus: Callable[..., Any] = _namespace["call"]


async def test_a_blocking_call_in_anytus_on_the_loop_fails_the_test(tmp_path: Path) -> None:
    with pytest.raises(BlockingError, match=r"os\.unlink"):
        _unlink_quietly(str(tmp_path / "missing"))


async def test_calls_blockbuster_does_not_list_fail_the_test_too(tmp_path: Path) -> None:
    # os.open and os.fsync: tests/_blocking.py's EXTRA_BLOCKING, on both backends
    (tmp_path / "data").write_bytes(b"x")
    with pytest.raises(BlockingError, match=r"os\.open"):
        _fsync_path(str(tmp_path / "data"))


async def test_the_same_calls_in_a_worker_thread_are_fine(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"x")
    await anyio.to_thread.run_sync(_fsync_path, str(tmp_path / "data"))
    await anyio.to_thread.run_sync(_unlink_quietly, str(tmp_path / "data"))
    await anyio.to_thread.run_sync(_from_anytus, time.sleep, 0)


async def test_test_code_may_block_on_the_loop(tmp_path: Path) -> None:
    (tmp_path / "data").write_bytes(b"x")  # open, write: no anytus frame on the stack
    os.unlink(tmp_path / "data")
    time.sleep(0)  # noqa: ASYNC251 - test code is not checked


def test_outside_an_event_loop_blocking_is_fine(tmp_path: Path) -> None:
    _unlink_quietly(str(tmp_path / "missing"))
    _from_anytus(time.sleep, 0)


@pytest.fixture
async def a_loop_is_set_up() -> None:
    return None


@pytest.fixture
def blocks_in_a_sync_fixture(a_loop_is_set_up: None, tmp_path: Path) -> None:
    # on trio, anyio runs the loop in guest mode on this thread: trio's run is on while pytest
    # sets up this fixture, but no trio task is, just as no asyncio loop runs here on asyncio
    _unlink_quietly(str(tmp_path / "missing"))


async def test_a_sync_fixture_between_loop_steps_may_block(blocks_in_a_sync_fixture: None) -> None:
    pass


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    read_end, write_end = os.pipe()
    os.write(write_end, b"data")  # a read never waits, even if the guard lets it through
    yield read_end, write_end
    os.close(read_end)
    os.close(write_end)


@pytest.fixture
def sockets() -> Iterator[tuple[socket.socket, socket.socket]]:
    left, right = socket.socketpair()
    # a recv that the guard lets through times out instead of hanging the test
    left.settimeout(0.01)
    with left, right:
        yield left, right


async def test_each_kind_of_blocking_call_from_anytus_fails(
    tmp_path: Path, pipe: tuple[int, int], sockets: tuple[socket.socket, socket.socket]
) -> None:
    (tmp_path / "data").write_bytes(b"data")
    with open(tmp_path / "data", "rb") as file:  # noqa: ASYNC230 - the file to read from anytus
        held = threading.Lock()
        held.acquire()
        calls: list[tuple[str, Callable[..., object], tuple[object, ...]]] = [
            (r"time\.sleep", time.sleep, (0,)),
            (r"os\.stat", os.stat, (tmp_path,)),
            (r"builtins\.open", open, (tmp_path / "data",)),
            (r"os\.read", os.read, (pipe[0], 1)),
            (r"os\.pwrite", os.pwrite, (pipe[1], b"", 0)),
            (r"BufferedReader\.read", file.read, (1,)),
            (r"socket\.recv", sockets[0].recv, (1,)),
            (r"socket\.getaddrinfo", socket.getaddrinfo, ("localhost", 80)),
            ("acquire", held.acquire, (True, 0.01)),
        ]
        for name, function, args in calls:
            with pytest.raises(BlockingError, match=name):
                _from_anytus(function, *args)

        held.release()


async def test_non_blocking_calls_from_anytus_are_fine(
    pipe: tuple[int, int], sockets: tuple[socket.socket, socket.socket]
) -> None:
    # the predicates blockbuster uses, on both backends
    os.set_blocking(pipe[0], False)
    assert _from_anytus(os.read, pipe[0], 4) == b"data"
    sockets[0].setblocking(False)
    with pytest.raises(BlockingIOError):
        _from_anytus(sockets[0].recv, 1)

    assert _from_anytus(socket.getaddrinfo, "127.0.0.1", 80, flags=socket.AI_NUMERICHOST)

    lock = threading.Lock()
    assert _from_anytus(lock.acquire)  # free: it does not wait
    assert not _from_anytus(lock.acquire, False)
    lock.release()
