"""Short blocking calls, run in worker threads several to a hop when they queue up.

A worker-thread hop is the dearest part of a small tus request: anyio's plumbing on the event
loop, waking a worker thread and then the loop, and the GIL handed back and forth at every system
call the worker makes while the loop thread runs Python. On one ``anytus serve`` worker (small
uploads, tmpfs, no fsync), batching the calls that queue up while a hop runs took about a third
off a request's CPU.

:class:`HopBatcher` runs one hop at a time in the common case: a call made while a hop is running
waits for it, and the calls of one kind that gathered meanwhile go together in the next hop, in
the order they came (reads and writes go in separate hops, so that a read never waits in a hop
for a write's fsync). A slow hop (an fsync on a busy disk, a large directory) does not hold the
queue up: once the first waiting call has waited :attr:`~HopBatcher.stall` seconds, it starts a
hop of its own beside the slow one, and takes the calls of its kind in line with it.

Like the store's :class:`anyio.CapacityLimiter`, a batcher serves one event loop at a time.

Each call keeps the semantics of :func:`anyio.to_thread.run_sync`: it runs in a copy of its
caller's context; a call cancelled before its hop starts does not run; once it runs, its caller
waits for it (shielded), unless it was made with ``abandon_on_cancel`` and another call leads its
hop (the call that leads a hop waits for the whole hop: it carries other callers' calls); its
exception is raised in its caller.
"""

from __future__ import annotations

import contextvars
from collections import deque
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = ("HopBatcher",)

T = TypeVar("T")

_QUEUED, _RUNNING, _DONE = 0, 1, 2
_UNSET: Any = object()


class _Call(Generic[T]):
    __slots__ = ("args", "context", "error", "fn", "kind", "lead", "state", "value", "wake")

    def __init__(self, fn: Callable[..., T], args: tuple[Any, ...], kind: object) -> None:
        self.fn = fn
        self.args = args
        self.kind = kind
        self.context = contextvars.copy_context()
        self.state = _QUEUED
        self.value: T = _UNSET
        self.error: BaseException | None = None
        #: set when the call is done, or when it is to run the next hop (:attr:`lead`)
        self.wake: anyio.Event | None = None
        #: handed the next hop by the hop before it
        self.lead = False

    def result(self) -> T:
        error = self.error
        if error is not None:
            self.error = None  # no cycle through the traceback
            raise error
        if self.value is _UNSET:
            raise RuntimeError("the call did not run")
        return self.value


def _run_calls(calls: list[_Call[Any]]) -> None:
    """One hop: each call in turn, in its caller's context; every outcome kept."""
    for call in calls:
        try:
            call.value = call.context.run(call.fn, *call.args)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller
            call.error = exc


class HopBatcher:
    """Runs short blocking calls in worker threads, batching those that queue up (see the
    module's docstring).

    :param limiter: the threads' limiter: each hop takes one token
    :param stall: how long a waiting call waits for the running hops before it starts a hop of
        its own (with every call then waiting)
    """

    def __init__(self, limiter: anyio.CapacityLimiter, *, stall: float = 0.002) -> None:
        self._limiter = limiter
        self.stall = stall
        self._queue: deque[_Call[Any]] = deque()
        #: hops running, or handed on to a waiting call that is about to start one
        self._hops = 0
        #: hops started so far (for tests and diagnostics)
        self.hops_started = 0

    async def run(
        self,
        fn: Callable[..., T],
        *args: object,
        abandon_on_cancel: bool = False,
        kind: object = None,
    ) -> T:
        """Run ``fn(*args)`` in a worker thread and return its result (or raise its exception).

        :param abandon_on_cancel: on cancellation once it runs, return at once and let the call
            finish alone (for calls that change nothing); otherwise it is waited for
        :param kind: calls of one kind share hops, never calls of two (so that a read never
            waits in a hop for a write's fsync)
        """
        await anyio.lowlevel.checkpoint_if_cancelled()
        call: _Call[T] = _Call(fn, args, kind)
        if self._hops == 0:
            self._hops = 1
            await self._hop([call])
            return call.result()
        queue = self._queue
        queue.append(call)
        wake = call.wake = anyio.Event()
        try:
            while True:
                if call.state == _QUEUED and not call.lead and queue[0] is call:
                    # first in line: wait for the running hops, but not for a slow one (the
                    # calls behind it wait for it)
                    with anyio.move_on_after(self.stall):
                        await wake.wait()
                else:
                    await wake.wait()
                if call.state == _DONE:
                    return call.result()
                if call.lead:
                    break
                if wake.is_set():
                    # told it is first in line (the call before it was cancelled, or went in a
                    # hop of another kind): from here it waits no longer than stall; or, if a
                    # hop took it meanwhile, until that hop's end
                    wake = call.wake = anyio.Event()
                    continue
                if call.state == _RUNNING:
                    continue  # taken into a hop as the wait ended: its end wakes us
                # the running hops are slow (an fsync on a busy disk): one more beside them
                queue.remove(call)
                self._hops += 1
                break
        except BaseException:
            if call.state == _QUEUED:
                if call.lead:
                    self._hand_on()  # it was to run the next hop: the next in line does
                else:
                    first = queue[0] is call
                    queue.remove(call)  # it never runs
                    if first:
                        self._nudge_first()
            elif call.state == _RUNNING and not abandon_on_cancel:
                with anyio.CancelScope(shield=True):
                    while call.state != _DONE:
                        if wake.is_set():  # told it was first in line: not the hop's end
                            wake = call.wake = anyio.Event()
                        await wake.wait()
            raise
        calls: list[_Call[Any]] = [call]
        others: list[_Call[Any]] = []
        for waiting in queue:
            (calls if waiting.kind == call.kind else others).append(waiting)
        queue.clear()
        if others:
            queue.extend(others)
            self._nudge_first()
        await self._hop(calls)
        return call.result()

    def _nudge_first(self) -> None:
        """Tell the call that is now first in line that it is: it waits *stall* at most."""
        if self._queue:
            wake = self._queue[0].wake
            assert wake is not None
            wake.set()

    async def _hop(self, calls: list[_Call[Any]]) -> None:
        """Run *calls* in one hop, wake their callers, and hand the hop on to the next call in
        line."""
        for call in calls:
            call.state = _RUNNING
        self.hops_started += 1
        try:
            # shielded: the hop runs other callers' calls, and they are waited for
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(_run_calls, calls, limiter=self._limiter)
        finally:
            for call in calls:
                call.state = _DONE
                if call.wake is not None:
                    call.wake.set()
            self._hand_on()

    def _hand_on(self) -> None:
        """A hop ends: the first call in line runs the next one, if any is waiting."""
        if self._queue:
            following = self._queue.popleft()
            following.lead = True
            assert following.wake is not None
            following.wake.set()
        else:
            self._hops -= 1
