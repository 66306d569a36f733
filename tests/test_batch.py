"""HopBatcher: short blocking calls, several to a worker-thread hop when they queue up, with
:func:`anyio.to_thread.run_sync`'s semantics for each call."""

from __future__ import annotations

import contextvars
import threading
from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from anytus._batch import HopBatcher

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

pytestmark = pytest.mark.anyio

#: long enough never to run out in a test: calls wait for the running hop
FOREVER = 60.0

request_id: contextvars.ContextVar[int] = contextvars.ContextVar("request_id", default=-1)


def batcher(stall: float = FOREVER) -> HopBatcher:
    return HopBatcher(anyio.CapacityLimiter(4), stall=stall)


def blocked_until(release: threading.Event, started: threading.Event | None = None) -> str:
    """A call that holds its hop until *release* is set (from another thread, or the loop)."""
    if started is not None:
        started.set()
    if not release.wait(10):
        raise TimeoutError("never released")
    return "released"


async def wait_started(started: threading.Event) -> None:
    """Until a call has started in its worker thread (without blocking the event loop)."""
    assert await anyio.to_thread.run_sync(started.wait, 10)


async def queued_behind_a_hop(
    hops: HopBatcher,
    calls: list[Callable[[], Coroutine[Any, Any, object]]],
    while_held: Callable[[], None] = lambda: None,
) -> None:
    """Start *calls*, each in a task of its own, while a hop is held, so that they queue up (in
    the order the tasks run); call *while_held* once they wait; then let the hop end, and wait
    for them."""
    release, started = threading.Event(), threading.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hops.run, blocked_until, release, started)
            await wait_started(started)
            for call in calls:
                tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            while_held()
            release.set()


async def test_calls_that_queue_up_share_one_hop_in_order() -> None:
    hops = batcher()
    ran: list[tuple[int, int]] = []
    results: dict[int, int] = {}
    arrived: list[int] = []

    def record(i: int) -> int:
        ran.append((i, threading.get_ident()))
        return i * i

    async def call(i: int) -> None:
        arrived.append(i)
        results[i] = await hops.run(record, i)

    def none_ran_yet() -> None:
        assert ran == []  # queued behind the running hop

    await queued_behind_a_hop(hops, [partial(call, i) for i in range(5)], none_ran_yet)
    assert results == {i: i * i for i in range(5)}
    assert [i for i, _ in ran] == arrived
    assert len({thread for _, thread in ran}) == 1
    assert hops.hops_started == 2


async def test_each_call_gets_its_own_outcome() -> None:
    hops = batcher()
    outcomes: dict[int, object] = {}

    def maybe_fail(i: int) -> int:
        if i % 2:
            raise ValueError(f"odd {i}")
        return i

    async def call(i: int) -> None:
        try:
            outcomes[i] = await hops.run(maybe_fail, i)
        except ValueError as exc:
            outcomes[i] = str(exc)

    await queued_behind_a_hop(hops, [partial(call, i) for i in range(4)])
    assert outcomes == {0: 0, 1: "odd 1", 2: 2, 3: "odd 3"}


async def test_each_call_runs_in_its_callers_context() -> None:
    hops = batcher()
    seen: dict[int, int] = {}

    async def call(i: int) -> None:
        request_id.set(i)
        seen[i] = await hops.run(request_id.get)

    await queued_behind_a_hop(hops, [partial(call, i) for i in range(3)])
    assert seen == {0: 0, 1: 1, 2: 2}


async def test_a_slow_hop_does_not_hold_up_the_calls_behind_it() -> None:
    """The first call in line waits *stall* seconds for a slow hop (an fsync on a busy disk),
    then runs in a hop of its own: here the slow hop ends only once that call has run."""
    hops = batcher(stall=0.01)
    release, started = threading.Event(), threading.Event()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hops.run, blocked_until, release, started)
            await wait_started(started)
            assert await hops.run(lambda: "beside") == "beside"
            release.set()
    assert hops.hops_started == 2


async def test_a_cancelled_call_in_line_never_runs() -> None:
    hops = batcher()
    release, started = threading.Event(), threading.Event()
    ran: list[str] = []

    async def call(name: str, scope: anyio.CancelScope) -> None:
        with scope:
            await hops.run(ran.append, name)

    cancelled = anyio.CancelScope()
    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hops.run, blocked_until, release, started)
            await wait_started(started)
            tg.start_soon(call, "cancelled", cancelled)
            tg.start_soon(call, "kept", anyio.CancelScope())
            await anyio.wait_all_tasks_blocked()
            cancelled.cancel()
            await anyio.wait_all_tasks_blocked()
            release.set()
    assert ran == ["kept"]
    assert cancelled.cancelled_caught


async def test_when_the_first_in_line_is_cancelled_the_next_still_escapes_a_slow_hop() -> None:
    hops = batcher(stall=0.01)
    release, started = threading.Event(), threading.Event()
    first = anyio.CancelScope()
    outcome: list[str] = []

    async def first_in_line() -> None:
        with first:
            await hops.run(outcome.append, "first")

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hops.run, blocked_until, release, started)
            await wait_started(started)
            # a long stall for the first in line, which is cancelled; the call behind it must
            # then wait no longer than its own stall
            hops.stall = FOREVER
            tg.start_soon(first_in_line)
            await anyio.wait_all_tasks_blocked()
            hops.stall = 0.01

            async def second() -> None:
                outcome.append(await hops.run(lambda: "second"))
                release.set()

            tg.start_soon(second)
            await anyio.wait_all_tasks_blocked()
            first.cancel()
    assert outcome == ["second"]


@pytest.mark.parametrize("abandon", [False, True])
async def test_a_cancelled_call_that_runs_is_waited_for_unless_abandoned(abandon: bool) -> None:
    """A call cancelled while its hop runs it: its caller waits for it, or, with
    ``abandon_on_cancel``, returns at once and the call finishes alone."""
    hops = batcher()
    first_release, first_started = threading.Event(), threading.Event()
    release, started = threading.Event(), threading.Event()
    finished = threading.Event()
    returned = anyio.Event()
    scope = anyio.CancelScope()

    def slow() -> None:
        blocked_until(release, started)
        finished.set()

    async def call() -> None:
        with scope:
            await hops.run(slow, abandon_on_cancel=abandon)
        returned.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hops.run, blocked_until, first_release, first_started)
            await wait_started(first_started)
            # the next hop: a quick call leads it, ours runs in it
            tg.start_soon(hops.run, lambda: None)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(call)
            await anyio.wait_all_tasks_blocked()
            first_release.set()
            await wait_started(started)
            scope.cancel()
            if abandon:
                await returned.wait()
                assert not finished.is_set()
                release.set()
            else:
                await anyio.wait_all_tasks_blocked()
                assert not returned.is_set()
                release.set()
                await returned.wait()
                assert finished.is_set()
        assert scope.cancelled_caught
        # the batcher goes on: the next call takes a hop at once
        assert await hops.run(lambda: 7) == 7


async def test_a_call_handed_the_next_hop_and_cancelled_hands_it_on() -> None:
    """A hop ends and hands the next one to the first call in line, which is cancelled before it
    runs: the calls behind it still run, and the batcher is idle afterwards."""
    hops = batcher()
    release, started = threading.Event(), threading.Event()
    handed = anyio.CancelScope()
    ran: list[str] = []

    async def in_line() -> None:
        with handed:
            await hops.run(ran.append, "handed")

    async def first() -> None:
        await hops.run(blocked_until, release, started)
        # the hop just ended and handed the next one on; cancel its new leader before it runs
        handed.cancel()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(first)
            await wait_started(started)
            tg.start_soon(in_line)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(hops.run, ran.append, "behind")
            await anyio.wait_all_tasks_blocked()
            release.set()
        # on asyncio the cancellation reaches the call first; on trio its wait has ended
        assert ran in (["behind"], ["handed", "behind"])
        # idle: a call runs at once, in a hop of its own
        before = hops.hops_started
        assert await hops.run(lambda: 1) == 1
        assert hops.hops_started == before + 1


async def test_calls_of_two_kinds_never_share_a_hop() -> None:
    """Reads and writes queued together go in separate hops, each kind in the order it came."""
    hops = batcher()
    ran: list[tuple[str, int]] = []
    arrived: list[str] = []

    def record(name: str) -> None:
        ran.append((name, hops.hops_started))

    async def call(name: str) -> None:
        arrived.append(name)
        await hops.run(record, name, kind=name[0])

    await queued_behind_a_hop(
        hops, [partial(call, name) for name in ("w1", "r1", "w2", "r2", "w3")]
    )
    hop_of = dict(ran)
    assert hop_of["w1"] == hop_of["w2"] == hop_of["w3"]
    assert hop_of["r1"] == hop_of["r2"] != hop_of["w1"]
    assert [name for name, _ in ran if name[0] == "w"] == [n for n in arrived if n[0] == "w"]
    assert hops.hops_started == 3


async def test_a_read_behind_a_slow_write_in_line_does_not_wait_for_it() -> None:
    """A hop ends and hands the next one to the write first in line, which is slow; the read that
    was behind it is first now, and after *stall* it gets a hop of its own: here the write ends
    only once the read has run."""
    hops = batcher()
    first_release, first_started = threading.Event(), threading.Event()
    release = threading.Event()
    read: list[str] = []

    async def reader() -> None:
        read.append(await hops.run(lambda: "read", kind="read"))
        release.set()

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(hops.run, blocked_until, first_release, first_started)
            await wait_started(first_started)
            tg.start_soon(hops.run, blocked_until, release)  # a write, first in line
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(reader)
            await anyio.wait_all_tasks_blocked()
            hops.stall = 0.01  # for the waits that start from now on
            first_release.set()
    assert read == ["read"]
