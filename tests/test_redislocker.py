"""RedisLocker across "hosts": leases, lost locks, fencing tokens, release requests between lockers
and processes, and a Redis server that goes away. The behaviours every locker shares are in
test_locks.py (its ``locker`` fixture includes RedisLocker).

Two RedisLocker instances on one Redis stand for two hosts: they share nothing but the server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid
from typing import TYPE_CHECKING

import anyio
import pytest

from _server import wait_for
from _services import RedisServer, start_redis
from anytus import LockTimeout, LockUnavailable, RedisLocker

if TYPE_CHECKING:
    from collections.abc import Iterator

UPLOAD_ID = "0123456789abcdef0123456789abcdef"


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def hosts(redis_server: RedisServer, prefix: str) -> Iterator[tuple[RedisLocker, RedisLocker]]:
    """Two lockers with a short lease, as two hosts would have."""
    one = RedisLocker(redis_server.url, prefix=prefix, lease=1.0, poll_interval=0.1)
    two = RedisLocker(redis_server.url, prefix=prefix, lease=1.0, poll_interval=0.1)
    yield one, two
    one.close()
    two.close()


def test_construction_checks_its_arguments(redis_server: RedisServer) -> None:
    with pytest.raises(TypeError):
        RedisLocker()
    with pytest.raises(ValueError, match="third"):
        RedisLocker(redis_server.url, lease=1.0, poll_interval=0.5)
    assert RedisLocker(redis_server.url).lease <= 10


async def test_exclusive_between_hosts(hosts: tuple[RedisLocker, RedisLocker]) -> None:
    one, two = hosts
    await one.acquire(UPLOAD_ID)
    with pytest.raises(anyio.WouldBlock):
        await two.acquire_nowait(UPLOAD_ID)
    with pytest.raises(LockTimeout):
        await two.acquire(UPLOAD_ID, timeout=0.3)
    assert one.locked(UPLOAD_ID)
    assert not two.locked(UPLOAD_ID)
    await one.release(UPLOAD_ID)
    await two.acquire_nowait(UPLOAD_ID)
    await two.release(UPLOAD_ID)


async def test_release_request_across_hosts(hosts: tuple[RedisLocker, RedisLocker]) -> None:
    one, two = hosts
    asked = anyio.Event()
    interrupted = False

    async def holder(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        nonlocal interrupted
        with anyio.CancelScope() as scope:

            def on_release() -> None:
                asked.set()
                scope.cancel()

            async with one.lock(UPLOAD_ID, on_release=on_release):
                task_status.started()
                await anyio.sleep_forever()
        interrupted = scope.cancelled_caught

    async with anyio.create_task_group() as tg:
        await tg.start(holder)
        start = time.monotonic()
        await two.acquire(UPLOAD_ID, timeout=10)
        elapsed = time.monotonic() - start
    assert asked.is_set()
    assert interrupted
    assert elapsed < 3.0
    await two.release(UPLOAD_ID)


async def test_the_lease_is_renewed_while_the_holder_lives(
    hosts: tuple[RedisLocker, RedisLocker],
) -> None:
    one, two = hosts
    key = one._lock_key(UPLOAD_ID)
    async with one.lock(UPLOAD_ID):
        for _ in range(3):
            # the lease all but run out (0.6 s of its 1 s left): only a renewal keeps the lock
            assert await anyio.to_thread.run_sync(one.client.pexpire, key, 600)
            done = one._held[UPLOAD_ID].renewals
            # the second renewal from now surely started after the shortening
            assert await anyio.to_thread.run_sync(one._wait_for_renewals, UPLOAD_ID, done + 2, 10)
            remaining = await anyio.to_thread.run_sync(one.client.pttl, key)
            assert remaining > 600, remaining  # a whole lease again
            with pytest.raises(anyio.WouldBlock):
                await two.acquire_nowait(UPLOAD_ID)
        assert one.locked(UPLOAD_ID)
        await anyio.to_thread.run_sync(one.check_held, UPLOAD_ID)


async def test_fencing_tokens_grow(hosts: tuple[RedisLocker, RedisLocker]) -> None:
    one, two = hosts
    tokens = []
    for locker in (one, two, one):
        await locker.acquire(UPLOAD_ID)
        token = locker.fencing_token(UPLOAD_ID)
        assert token is not None
        tokens.append(token)
        await locker.release(UPLOAD_ID)
    assert tokens == sorted(tokens)
    assert len(set(tokens)) == 3
    assert one.fencing_token(UPLOAD_ID) is None


async def test_a_lapsed_lease_is_lost_and_guarded(
    hosts: tuple[RedisLocker, RedisLocker], redis_server: RedisServer, prefix: str
) -> None:
    """A holder whose key went away (its lease lapsed while it was paused, say) is told, stops,
    and its guard refuses every later write, while the other host holds the lock."""
    one, two = hosts
    told = anyio.Event()
    await one.acquire(UPLOAD_ID, on_release=told.set)
    fence = one.fencing_token(UPLOAD_ID)
    # what a lapsed lease looks like from Redis: the key is gone, and another host takes it
    await anyio.to_thread.run_sync(one.client.delete, f"{prefix}lock:{UPLOAD_ID}")
    await two.acquire(UPLOAD_ID, timeout=2)
    with anyio.fail_after(2):
        await told.wait()
    assert not one.locked(UPLOAD_ID)
    with pytest.raises(LockUnavailable) as exc_info:
        await anyio.to_thread.run_sync(one.check_held, UPLOAD_ID)
    assert exc_info.value.status_code == 503
    # the new holder is unaffected, with a later token; the old one letting go changes nothing
    await one.release(UPLOAD_ID)
    assert two.locked(UPLOAD_ID)
    token = two.fencing_token(UPLOAD_ID)
    assert token is not None
    assert fence is not None
    assert token > fence
    await anyio.to_thread.run_sync(two.check_held, UPLOAD_ID)
    await two.release(UPLOAD_ID)


_HOLDER = """
import sys, anyio
from anytus import RedisLocker

async def main():
    locker = RedisLocker(sys.argv[1], prefix=sys.argv[2], lease=1.0, poll_interval=0.1)
    await locker.acquire(sys.argv[3])
    print("held", flush=True)
    await anyio.sleep_forever()

anyio.run(main)
"""


@pytest.mark.slow
async def test_a_killed_holder_frees_its_lock_within_the_lease(
    redis_server: RedisServer, prefix: str
) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    async with await anyio.open_process(
        [sys.executable, "-c", _HOLDER, redis_server.url, prefix, UPLOAD_ID],
        stdout=subprocess.PIPE,
        env=env,
    ) as process:
        assert process.stdout is not None
        with anyio.fail_after(20):
            assert (await process.stdout.receive()).startswith(b"held")
        locker = RedisLocker(redis_server.url, prefix=prefix, lease=1.0, poll_interval=0.1)
        # alive, it keeps the lock past its lease
        with pytest.raises(LockTimeout):
            await locker.acquire(UPLOAD_ID, timeout=1.5)
        process.kill()
        killed = time.monotonic()
        await locker.acquire(UPLOAD_ID, timeout=5)
        assert time.monotonic() - killed < 1.0 + 0.5
        await locker.release(UPLOAD_ID)
        locker.close()


async def test_redis_unreachable_then_back(prefix: str) -> None:
    """Requests get a clear error while Redis is away; a held lock is given up after its lease;
    everything works again once Redis is back (on the same port, its data gone)."""
    with start_redis() as server:
        locker = RedisLocker(server.url, prefix=prefix, lease=0.6, poll_interval=0.1, timeout=0.5)
        told = anyio.Event()
        await locker.acquire(UPLOAD_ID, on_release=told.set)
        await anyio.to_thread.run_sync(server.stop)
        with pytest.raises(LockUnavailable, match=re.escape(f"Redis at {server.url}")):
            await locker.acquire("another", timeout=2)
        with pytest.raises(LockUnavailable):
            await anyio.to_thread.run_sync(locker.check_held, UPLOAD_ID)
        with anyio.fail_after(5):
            await told.wait()  # the lease ran out without a renewal: the holder is told
        assert not locker.locked(UPLOAD_ID)
        await locker.release(UPLOAD_ID)  # a warning, no error

        await anyio.to_thread.run_sync(server.start)
        with anyio.fail_after(5):
            await locker.acquire(UPLOAD_ID, timeout=3)
        await anyio.to_thread.run_sync(locker.check_held, UPLOAD_ID)
        await locker.release(UPLOAD_ID)
        locker.close()


async def test_close_during_a_renewal_lets_it_finish(
    redis_server: RedisServer, prefix: str
) -> None:
    """close() while the watcher thread waits for Redis to answer a renewal: the renewal ends
    normally (closing its connection under it failed its read, in the thread), then the watcher
    stops and closes the client's connections, and renews nothing more."""
    import redis

    name = f"anytus-test-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_server.url, client_name=name)
    admin = redis.Redis.from_url(redis_server.url)
    locker = RedisLocker(client=client, prefix=prefix, lease=3.0, poll_interval=0.1)

    def connected() -> bool:
        return any(entry.get("name") == name for entry in admin.client_list())

    def renewal_waiting() -> bool:
        return any(
            entry.get("name") == name and entry.get("cmd") == "evalsha" and "b" in entry["flags"]
            for entry in admin.client_list()
        )

    await locker.acquire(UPLOAD_ID)
    assert await anyio.to_thread.run_sync(locker._wait_for_renewals, UPLOAD_ID, 1, 10)
    # Redis holds back every script from here on (CLIENT PAUSE WRITE): the next renewal waits
    await anyio.to_thread.run_sync(lambda: admin.client_pause(30_000, all=False))
    try:
        assert await wait_for(lambda: anyio.to_thread.run_sync(renewal_waiting), timeout=10)
        locker.close()
    finally:
        await anyio.to_thread.run_sync(admin.client_unpause)
    # the renewal that waited completes, the watcher stops and closes the connection
    assert await anyio.to_thread.run_sync(locker._wait_for_renewals, UPLOAD_ID, 2, 10)
    assert await wait_for(lambda: anyio.to_thread.run_sync(lambda: not connected()), timeout=10)
    assert locker._held[UPLOAD_ID].renewals == 2
    # the lock is left to its lease; taking another opens a connection again and renews anew
    assert locker.locked(UPLOAD_ID)
    await locker.acquire("another")
    assert await anyio.to_thread.run_sync(locker._wait_for_renewals, "another", 1, 10)
    await locker.release("another")
    await locker.release(UPLOAD_ID)
    locker.close()
    await anyio.to_thread.run_sync(admin.close)
