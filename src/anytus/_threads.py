"""Worker threads for a store's blocking calls: :meth:`ThreadPool.run_sync`, the semantics of
:func:`anyio.to_thread.run_sync` for less of the event loop's time.

Why not anyio's: a store makes one short call per request (lock, load, write, unlock), and the
hop itself is a good part of a small request's CPU. ``benchmarks/bench_hop.py`` (no-op calls,
3 rounds, medians, CPU per call) measured anyio's at 94 µs on uvloop, 131 µs on asyncio's own
loop and 178 µs on trio, and this pool's at 0.63x, 0.65x and 0.57x of that (0.45x, 0.52x and
0.56x for calls that may be abandoned, which need no shielding cancel scope). The saving comes
from what it does not need: a capacity limiter and its cancel scope per call (a pool counts its
calls at once under a thread lock, and queues the rest, first in, first out), a
lock-and-condition queue per worker (one :class:`queue.SimpleQueue`, in C, feeds all of them),
and threads per event loop (one set of threads, :class:`WorkerThreads`, serves every pool, loop
and backend: each call carries how to wake its caller).

What it keeps from anyio, for every call:

- it is a checkpoint: a caller already cancelled does not run the call;
- the call runs in a copy of the caller's context (context variables);
- its return value, or its exception, comes back to the caller;
- ``abandon_on_cancel=False`` (the default): a cancelled caller still waits for the call to end,
  and the cancellation is delivered at its next checkpoint; ``True``: the caller stops waiting
  at once and the call's outcome is dropped when it comes.

Threads start when a call finds none idle, and end after :data:`IDLE_TIMEOUT` idle. They are
daemon threads, as trio's are: a process never waits at exit for one (a caller that must not
lose a call's effect waits for it, as above).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import os
import queue
import threading
import weakref
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.lowlevel

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("IDLE_TIMEOUT", "ThreadPool", "WorkerThreads")

T = TypeVar("T")

#: how long a worker thread waits for work before it ends
IDLE_TIMEOUT = 10.0


class _Call(Generic[T]):
    """One call: what to run, and how to hand its outcome back to the caller's event loop."""

    __slots__ = ("abandoned", "args", "context", "deliver", "fn", "pool")

    def __init__(
        self,
        pool: ThreadPool,
        fn: Callable[..., T],
        args: tuple[Any, ...],
        deliver: Callable[[_Call[T], bool, Any], None],
    ) -> None:
        self.pool = pool
        self.fn = fn
        self.args = args
        self.context = contextvars.copy_context()
        #: called in the worker thread with (call, succeeded, value or exception)
        self.deliver = deliver
        #: the caller stopped waiting (``abandon_on_cancel``): the outcome is dropped
        self.abandoned = False

    def run(self) -> tuple[bool, Any]:
        """Run the call: (True, its result) or (False, its exception)."""
        try:
            return True, self.context.run(self.fn, *self.args)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller, raised there
            return False, exc


class WorkerThreads:
    """The threads that run every :class:`ThreadPool`'s calls: started when a call finds none
    idle, ended after *idle_timeout* without one. Shared, so that an application that makes a
    store per request does not make threads per request."""

    def __init__(self, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.idle_timeout = idle_timeout
        self._reset()
        _reset_at_fork.add(self)

    def _reset(self) -> None:
        #: the threads alive
        self.threads: set[threading.Thread] = set()
        self._queue: queue.SimpleQueue[_Call[Any]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: threads waiting for a call
        self._idle = 0
        #: calls queued and not yet taken by a thread
        self._pending = 0

    def submit(self, call: _Call[Any]) -> None:
        """Run *call* in a thread, now (a pool has already bounded how many of its own run)."""
        with self._lock:
            self._pending += 1
            # a thread more if the idle ones cannot take every call that waits
            start = self._pending > self._idle
            if start:
                thread = threading.Thread(target=self._work, name="anytus worker", daemon=True)
                self.threads.add(thread)
        self._queue.put(call)
        if start:
            thread.start()

    def _work(self) -> None:
        lock = self._lock
        with lock:
            self._idle += 1
        while True:
            try:
                call: _Call[Any] | None = self._queue.get(timeout=self.idle_timeout)
            except queue.Empty:
                with lock:
                    if self._idle > self._pending:
                        # more threads wait than calls do: this one may end
                        self._idle -= 1
                        self.threads.discard(threading.current_thread())
                        return
                continue  # a call came just now: take it
            with lock:
                self._idle -= 1
                self._pending -= 1
            while call is not None:
                succeeded, value = call.run()
                # the pool's next waiting call, if any, runs in this thread too
                next_call = call.pool._done()
                if next_call is None:
                    # idle before the caller hears back: a call it makes next finds this thread
                    with lock:
                        self._idle += 1
                call.deliver(call, succeeded, value)
                call = next_call
            del value  # not kept alive while waiting


#: what a forked child starts afresh: it has none of its parent's threads (and a lock a parent's
#: thread held stays held), so counts that say a thread is idle, or a pool's call running, would
#: leave its calls waiting forever (a server that forks workers from a process that has used a
#: store, as gunicorn's --preload does)
_reset_at_fork: weakref.WeakSet[WorkerThreads | ThreadPool] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for item in list(_reset_at_fork):
        item._reset()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_after_fork_in_child)

#: the worker threads of every pool that is not given its own
_shared_workers = WorkerThreads()


class ThreadPool:
    """Runs blocking calls for tasks on any event loop (asyncio or trio) in worker threads, at
    most *max_threads* of them at once; calls beyond that wait their turn, first in, first out.
    The threads are *workers*' (by default, shared by every pool in the process)."""

    def __init__(self, max_threads: int, *, workers: WorkerThreads | None = None) -> None:
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self.max_threads = max_threads
        self.workers = workers if workers is not None else _shared_workers
        self._reset()
        _reset_at_fork.add(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        #: this pool's calls in a thread now
        self._running = 0
        #: this pool's calls waiting for their turn
        self._waiting: collections.deque[_Call[Any]] = collections.deque()

    async def run_sync(
        self, fn: Callable[..., T], *args: object, abandon_on_cancel: bool = False
    ) -> T:
        """Run ``fn(*args)`` in a worker thread; return its result or raise its exception."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not asyncio: anyio's other backend
            return await _run_on_trio(self, fn, args, abandon_on_cancel)
        await anyio.lowlevel.checkpoint_if_cancelled()
        return await _run_on_asyncio(loop, self, fn, args, abandon_on_cancel)

    @property
    def waiting(self) -> int:
        """Calls waiting for their turn."""
        return len(self._waiting)

    def _submit(self, call: _Call[Any]) -> None:
        with self._lock:
            now = self._running < self.max_threads
            if now:
                self._running += 1
            else:
                self._waiting.append(call)
        if now:
            self.workers.submit(call)

    def _done(self) -> _Call[Any] | None:
        """A call of this pool ended (in its worker thread): the next one waiting, which that
        thread runs, if any."""
        with self._lock:
            if self._waiting:
                return self._waiting.popleft()
            self._running -= 1
            return None


async def _run_on_asyncio(
    loop: asyncio.AbstractEventLoop,
    pool: ThreadPool,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    abandon_on_cancel: bool,
) -> T:
    future: asyncio.Future[T] = loop.create_future()

    def settle(succeeded: bool, value: Any) -> None:
        if future.done():  # the caller stopped waiting
            return
        if succeeded:
            future.set_result(value)
        else:
            future.set_exception(value)

    def deliver(call: _Call[T], succeeded: bool, value: Any) -> None:
        try:
            loop.call_soon_threadsafe(settle, succeeded, value)
        except RuntimeError:  # the loop is closed: nobody is left to tell
            pass

    pool._submit(_Call(pool, fn, args, deliver))
    if abandon_on_cancel:
        # cancelled, the await cancels the future, and settle() drops the outcome
        return await future
    with anyio.CancelScope(shield=True):
        result = await future
    return result


async def _run_on_trio(
    pool: ThreadPool, fn: Callable[..., T], args: tuple[Any, ...], abandon_on_cancel: bool
) -> T:
    import outcome  # trio's own dependency
    import trio

    await trio.lowlevel.checkpoint_if_cancelled()
    task = trio.lowlevel.current_task()
    token = trio.lowlevel.current_trio_token()

    def wake(call: _Call[T], result: outcome.Outcome[T]) -> None:
        if not call.abandoned:
            trio.lowlevel.reschedule(task, result)

    def deliver(call: _Call[T], succeeded: bool, value: Any) -> None:
        result = outcome.Value(value) if succeeded else outcome.Error(value)
        try:
            token.run_sync_soon(wake, call, result)
        except trio.RunFinishedError:  # nobody is left to tell
            pass

    call = _Call(pool, fn, args, deliver)

    def abort(_: Any) -> trio.lowlevel.Abort:
        if not abandon_on_cancel:
            return trio.lowlevel.Abort.FAILED  # wait for the call to end
        call.abandoned = True
        return trio.lowlevel.Abort.SUCCEEDED

    pool._submit(call)
    result: T = await trio.lowlevel.wait_task_rescheduled(abort)
    return result
