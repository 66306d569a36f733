"""anytus._threads.ThreadPool: anyio.to_thread.run_sync's semantics (checkpoint, context,
outcome, cancellation with and without abandoning), a bounded number of threads in first-in,
first-out order, and idle threads that end. On asyncio and on trio."""

from __future__ import annotations

import contextvars
import os
import subprocess
import sys
import threading

import anyio
import anyio.to_thread
import pytest

from anytus._threads import ThreadPool, WorkerThreads

pytestmark = pytest.mark.anyio

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


async def test_the_result_comes_back_from_a_worker_thread() -> None:
    pool = ThreadPool(2)
    loop_thread = threading.current_thread()
    result = await pool.run_sync(lambda a, b: (a + b, threading.current_thread()), 2, 3)
    assert result[0] == 5
    assert result[1] is not loop_thread
    assert result[1].name == "anytus worker"


async def test_the_exception_comes_back_as_raised() -> None:
    pool = ThreadPool(1)
    error = OSError(28, "No space left on device")

    def fail() -> None:
        raise error

    with pytest.raises(OSError, match="No space left") as info:
        await pool.run_sync(fail)
    assert info.value is error


async def test_the_call_sees_the_callers_context() -> None:
    pool = ThreadPool(1)
    request_id.set("abc")
    assert await pool.run_sync(request_id.get) == "abc"


async def test_a_cancelled_caller_does_not_run_the_call() -> None:
    pool = ThreadPool(1)
    ran = threading.Event()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await pool.run_sync(ran.set)
    assert scope.cancelled_caught
    # the pool is still fine, and the call never ran
    assert await pool.run_sync(ran.is_set) is False


@pytest.mark.parametrize("abandon", [False, True])
async def test_cancellation_while_the_call_runs(abandon: bool) -> None:
    pool = ThreadPool(1)
    started = threading.Event()
    go_on = threading.Event()
    finished = threading.Event()
    left = anyio.Event()
    outcome: list[str] = []
    #: whether the call had finished when the caller left
    finished_when_left: list[bool] = []

    def call() -> str:
        started.set()
        go_on.wait(10)
        finished.set()
        return "done"

    async def caller(scope: anyio.CancelScope) -> None:
        try:
            with scope:
                outcome.append(await pool.run_sync(call, abandon_on_cancel=abandon))
                # not abandoned: the result comes, and the cancellation at the next checkpoint
                await anyio.lowlevel.checkpoint()
                outcome.append("not cancelled")
        finally:
            finished_when_left.append(finished.is_set())
            left.set()

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, scope)
        await anyio.to_thread.run_sync(started.wait, 10)
        scope.cancel()
        if abandon:
            await left.wait()  # the caller leaves while the call still runs
        go_on.set()
    assert scope.cancelled_caught
    assert finished_when_left == [not abandon]
    assert outcome == ([] if abandon else ["done"])
    # the abandoned call's outcome, when it comes, is dropped; the next call gets its own
    assert await pool.run_sync(lambda: "next") == "next"
    assert finished.is_set()


async def test_calls_past_max_threads_wait_their_turn() -> None:
    workers = WorkerThreads()
    pool = ThreadPool(2, workers=workers)
    release = threading.Event()
    order: list[int] = []
    both_running = threading.Barrier(3)

    def blocker(n: int) -> None:
        both_running.wait(10)
        release.wait(10)
        order.append(n)

    def quick(n: int) -> None:
        order.append(n)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run_sync, blocker, 1)
        tg.start_soon(pool.run_sync, blocker, 2)
        # both turns are taken: a third call waits, and no third thread starts
        await anyio.to_thread.run_sync(both_running.wait, 10)
        tg.start_soon(pool.run_sync, quick, 3)
        await wait_for_waiting(pool, 1)
        tg.start_soon(pool.run_sync, quick, 4)
        await wait_for_waiting(pool, 2)
        assert len(workers.threads) == 2
        assert order == []
        release.set()
    assert sorted(order) == [1, 2, 3, 4]
    assert len(workers.threads) == 2


async def test_calls_go_first_in_first_out() -> None:
    pool = ThreadPool(1)
    release = threading.Event()
    started = threading.Event()
    order: list[int] = []

    def first() -> None:
        started.set()
        release.wait(10)
        order.append(1)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pool.run_sync, first)
        await anyio.to_thread.run_sync(started.wait, 10)
        for n in (2, 3, 4):
            tg.start_soon(pool.run_sync, order.append, n)
            await wait_for_waiting(pool, n - 1)
        release.set()
    assert order == [1, 2, 3, 4]


async def wait_for_waiting(pool: ThreadPool, count: int) -> None:
    """Until *count* calls wait for their turn in *pool* (each caller submits at its first
    step)."""
    while pool.waiting < count:
        await anyio.lowlevel.checkpoint()


async def test_pools_share_their_threads() -> None:
    # a store made per request (as some applications do) makes no threads of its own
    workers = WorkerThreads()
    for _ in range(20):
        pool = ThreadPool(4, workers=workers)
        assert await pool.run_sync(threading.current_thread) in workers.threads
    assert len(workers.threads) == 1


async def test_idle_threads_end() -> None:
    workers = WorkerThreads(idle_timeout=0.05)
    pool = ThreadPool(4, workers=workers)
    async with anyio.create_task_group() as tg:
        gate = threading.Barrier(4)
        for _ in range(4):
            tg.start_soon(pool.run_sync, gate.wait, 10)
    threads = set(workers.threads)
    assert len(threads) == 4
    for thread in threads:
        await anyio.to_thread.run_sync(thread.join, 10)
        assert not thread.is_alive()
    assert workers.threads == set()
    # and new ones start when work comes again
    assert await pool.run_sync(lambda: 42) == 42
    assert len(workers.threads) == 1


def test_max_threads_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ThreadPool(0)


_FORK_SCRIPT = """
import os, sys, threading
import anyio
from anytus._threads import ThreadPool

backend = sys.argv[1]
pool = ThreadPool(1)
started, release = threading.Event(), threading.Event()

def held():
    started.set()
    release.wait(10)

async def call(fn, abandon=False):
    with anyio.fail_after(10):
        return await pool.run_sync(fn, abandon_on_cancel=abandon)

# one call done (its thread idles), and one running, from a loop in another thread (it takes
# the pool's only turn) when the process forks
anyio.run(call, lambda: None, backend=backend)
holder = threading.Thread(target=anyio.run, args=(call, held), kwargs={"backend": backend})
holder.start()
started.wait(10)
pid = os.fork()
if pid == 0:
    # the child has neither thread: its calls must still run (abandoned after 10 s if not)
    try:
        name = anyio.run(call, lambda: threading.current_thread().name, True, backend=backend)
    except BaseException as exc:
        print("child failed:", repr(exc), flush=True)
        os._exit(1)
    print("child ran its call in", name, flush=True)
    os._exit(0)
release.set()
holder.join()
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork() here")
def test_a_forked_child_starts_its_own_threads(anyio_backend_name: str) -> None:
    """A server that forks its workers from a process that used a store (gunicorn --preload):
    the child has none of the parent's threads, and its calls still run."""
    result = subprocess.run(
        [sys.executable, "-c", _FORK_SCRIPT, anyio_backend_name],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "child ran its call in anytus worker" in result.stdout
