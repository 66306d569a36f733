"""`RedisLocker`: upload locks shared by every host that reaches one Redis server.

A lock is a Redis key ``{prefix}lock:{id}`` set with ``NX`` and a lease (``PX``); its value is a
fencing token (a number from ``INCR {prefix}fence``) and a random part that tells the holders apart.
The holder's watcher thread renews the lease while the holder lives, so a host that dies leaves its
locks behind for at most one lease (10 s by default). A holder whose renewal fails for a whole lease
(Redis unreachable), or finds its key gone or taken (Redis restarted, the lease lapsed while it was
paused), has *lost* the lock: its ``on_release`` is called so the request stops, :meth:`locked`
turns false, and :meth:`RedisLocker.check_held` raises :exc:`LockUnavailable`. Stores call
:meth:`~RedisLocker.check_held` before each write to the storage (:class:`~anytus.S3Store` does), so
a holder whose lease lapsed cannot write after another host took the lock, except for the one
storage request it may have in flight at that moment (see the README).

Release requests cross hosts through a key too: a waiter sets ``{prefix}stop:{id}`` (with a short
expiry, refreshed while it waits); the holder's watcher sees it on its next renewal (every
``poll_interval``, 0.2 s) and calls ``on_release`` in the holder's event loop. Taking a lock clears
the request, atomically, so a new holder is only asked by waiters that ask again.

redis-py's synchronous client runs in worker threads (its asyncio client does not run on trio).
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ._datastore import DEFAULT_LOCK_TIMEOUT, Locker
from ._exceptions import LockTimeout, ServiceUnavailable
from ._ids import validate_upload_id
from ._locks import _call_release_callback

if TYPE_CHECKING:
    from collections.abc import Callable

    import redis

__all__ = ("LockUnavailable", "RedisLocker")

logger = logging.getLogger(__name__)

#: the lease of a lock by default: how long a dead host's locks stay taken
DEFAULT_LEASE = 10.0

# Take the lock if it is free: a new fencing token, the lease, and the release request cleared;
# otherwise, if asked to (ARGV[3]), ask the holder to let go. KEYS: lock, stop, fence counter.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  if ARGV[3] ~= '0' then redis.call('SET', KEYS[2], '1', 'PX', ARGV[3]) end
  return 0
end
local fence = redis.call('INCR', KEYS[3])
redis.call('SET', KEYS[1], fence .. ':' .. ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return fence
"""

# Renew the lease if the lock is still ours: 0 lost, 1 renewed, 2 renewed and asked to let go.
# KEYS: lock, stop. ARGV: our value, the lease in ms.
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[2]) == 1 then return 2 end
return 1
"""

# Delete the lock if it is still ours. KEYS: lock. ARGV: our value.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockUnavailable(ServiceUnavailable):
    """Raised when the lock service cannot be reached, or when a lock was lost (its lease lapsed,
    or the lock service forgot it) while a request held it: nothing more was written. A 503 with
    ``Retry-After``: the request works again once the lock service is back."""

    status_code = 503
    error_code = "ERR_LOCK_UNAVAILABLE"
    default_message = "the lock service is unavailable"


def _import_redis() -> Any:
    try:
        import redis
    except ImportError:
        raise ImportError(
            "RedisLocker needs redis-py: install the extra, pip install 'anytus[redis]'"
        ) from None
    return redis


@dataclass(eq=False)
class _Holder:
    upload_id: str
    #: what the lock key holds while it is ours: ``fence:random``
    value: str
    fence: int
    on_release: Callable[[], object] | None
    token: anyio.lowlevel.EventLoopToken
    #: monotonic time until which the lease is known to run (renewals push it)
    valid_until: float
    lost: bool = False
    #: the watcher's renewals of its lease so far (see :meth:`RedisLocker._wait_for_renewals`)
    renewals: int = 0
    released: anyio.Event = field(default_factory=anyio.Event)
    _asks: itertools.count[int] = field(default_factory=itertools.count)

    def claim_release(self) -> bool:
        """True for exactly one caller: the one that gets to run the callback."""
        return next(self._asks) == 0


class RedisLocker(Locker):
    """Exclusive upload locks across hosts, on a Redis server, with leases and release requests.

    Every host that serves the same uploads (the same :class:`~anytus.S3Store` bucket and prefix,
    or one shared directory) uses a ``RedisLocker`` on the same Redis server and *prefix*.

    :param url: the Redis server, as ``redis://[:password@]host[:port][/db]`` (or ``rediss://``,
        ``unix://``); or pass *client*
    :param client: a ready :class:`redis.Redis` client (synchronous) instead of *url*
    :param prefix: what every key of this locker starts with
    :param lease: how long a lock outlives its holder, in seconds: the holder renews it every
        *poll_interval* while it lives; a dead host's locks are free again after at most this long
    :param poll_interval: how often a holder renews its leases and looks for release requests,
        and how often a waiter tries again (so a release request is answered in about twice this)
    :param timeout: how long one Redis command may take before it fails (seconds)
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        client: redis.Redis | None = None,
        prefix: str = "anytus:",
        lease: float = DEFAULT_LEASE,
        poll_interval: float = 0.2,
        timeout: float = 2.0,
    ) -> None:
        if (url is None) == (client is None):
            raise TypeError("RedisLocker takes either a url or a client")
        if lease <= 0 or poll_interval <= 0:
            raise ValueError("lease and poll_interval must be positive")
        if poll_interval * 3 > lease:
            raise ValueError("poll_interval must be at most a third of the lease")
        redis_module = _import_redis()
        if client is None:
            # creating the client connects nothing: the first command does, in a worker thread
            client = redis_module.Redis.from_url(
                url, socket_timeout=timeout, socket_connect_timeout=timeout
            )
        self._redis_errors: tuple[type[BaseException], ...] = (redis_module.RedisError, OSError)
        self.client: redis.Redis = client
        self.prefix = prefix
        self.lease = lease
        self.poll_interval = poll_interval
        self._url = url or repr(client)
        self._lease_ms = str(max(1, round(lease * 1000)))
        # a release request outlives its waiter by a few polls at most
        self._ask_ms = str(max(1, round(max(poll_interval * 5, 1.0) * 1000)))
        self._acquire_script = client.register_script(_ACQUIRE)
        self._renew_script = client.register_script(_RENEW)
        self._release_script = client.register_script(_RELEASE)
        self._held: dict[str, _Holder] = {}
        self._watcher: threading.Thread | None = None
        self._watcher_lock = threading.Lock()
        #: set by close(): the watcher stops, then closes the client (see close)
        self._stop_watcher = threading.Event()
        #: notified after each renewal (see :meth:`_wait_for_renewals`)
        self._renewed = threading.Condition()
        self._random = secrets.token_hex(8)
        self._limiter = anyio.CapacityLimiter(16)

    def __repr__(self) -> str:
        return f"<RedisLocker {self._url} prefix={self.prefix!r} lease={self.lease:g}s>"

    def _lock_key(self, upload_id: str) -> str:
        return f"{self.prefix}lock:{upload_id}"

    def _stop_key(self, upload_id: str) -> str:
        return f"{self.prefix}stop:{upload_id}"

    def _unavailable(self, exc: BaseException) -> LockUnavailable:
        return LockUnavailable(f"the lock service (Redis at {self._url}) is unavailable: {exc}")

    # -- Locker ------------------------------------------------------------------------------

    def locked(self, upload_id: str) -> bool:
        holder = self._held.get(validate_upload_id(upload_id))
        return holder is not None and not holder.lost and time.monotonic() < holder.valid_until

    async def acquire(
        self,
        upload_id: str,
        *,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
        on_release: Callable[[], object] | None = None,
    ) -> None:
        """Take the upload's lock, waiting at most *timeout* seconds; a holder elsewhere is asked
        to let go (its ``on_release`` runs), and a dead holder's lock is free after its lease.

        :raises ~anytus.LockTimeout: if the lock could not be taken in time
        :raises LockUnavailable: if Redis cannot be reached
        """
        validate_upload_id(upload_id)
        token = anyio.lowlevel.current_token()
        try:
            with anyio.fail_after(timeout):
                while True:
                    holder = self._held.get(upload_id)
                    if holder is not None and holder.token == token:
                        # the holder runs in our event loop: ask it directly, wake on its release
                        if holder.claim_release():
                            _call_release_callback(holder.on_release, upload_id)
                        await holder.released.wait()
                        continue
                    started = time.monotonic()
                    taken = await self._run(self._try_acquire, upload_id, True)
                    if taken is not None:
                        break
                    await anyio.sleep(self.poll_interval)
        except TimeoutError:
            raise LockTimeout(
                f"timed out after {timeout:g} s waiting for upload {upload_id}"
            ) from None
        self._register(upload_id, taken, on_release, token, started)

    async def acquire_nowait(self, upload_id: str) -> None:
        """Take the upload's lock if it is free now; never ask a holder to let go.

        :raises ~anyio.WouldBlock: if the lock is held
        :raises LockUnavailable: if Redis cannot be reached
        """
        validate_upload_id(upload_id)
        if upload_id in self._held:
            await anyio.lowlevel.checkpoint()
            raise anyio.WouldBlock
        started = time.monotonic()
        taken = await self._run(self._try_acquire, upload_id, False)
        if taken is None:
            raise anyio.WouldBlock
        self._register(upload_id, taken, None, anyio.lowlevel.current_token(), started)

    async def release(self, upload_id: str) -> None:
        """Let go of a lock this locker holds (a lost one too); nothing if it holds none.

        If Redis cannot be reached, the lock is left to its lease, with a warning.
        """
        holder = self._held.pop(validate_upload_id(upload_id), None)
        if holder is None:
            await anyio.lowlevel.checkpoint()
            return
        try:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(self._unlock, holder, limiter=self._limiter)
        except LockUnavailable as exc:
            logger.warning("could not release upload %s (its lease will): %s", upload_id, exc)
        finally:
            holder.released.set()

    # -- the guard for stores ----------------------------------------------------------------

    def fencing_token(self, upload_id: str) -> int | None:
        """The fencing token of the lock this locker holds on the upload (it grows with every
        acquisition of any lock in this Redis), or ``None`` if it holds none."""
        holder = self._held.get(upload_id)
        return None if holder is None else holder.fence

    def check_held(self, upload_id: str) -> None:
        """Make sure the lock is still ours, and renew its lease; call it before each write to
        the storage. Blocks: call it in a worker thread.

        :raises LockUnavailable: if the lock was lost or Redis cannot be reached (then nothing
            must be written)
        """
        holder = self._held.get(upload_id)
        if holder is None or holder.lost:
            raise LockUnavailable(f"the lock on upload {upload_id} was lost")
        started = time.monotonic()
        try:
            status = self._renew_script(
                keys=[self._lock_key(upload_id), self._stop_key(upload_id)],
                args=[holder.value, self._lease_ms],
            )
        except self._redis_errors as exc:
            raise self._unavailable(exc) from exc
        if status == 0:
            self._lose(holder)
            raise LockUnavailable(f"the lock on upload {upload_id} was lost (its lease lapsed)")
        holder.valid_until = max(holder.valid_until, started + self.lease)

    # -- internals ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[..., Any], *args: object) -> Any:
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)

    def _try_acquire(self, upload_id: str, ask: bool) -> tuple[int, str] | None:
        """Take the lock (its fence and value) or return None, after asking the holder to let go
        when *ask*. Worker thread."""
        value = f"{self._random}:{secrets.token_hex(4)}"
        try:
            fence = int(
                self._acquire_script(
                    keys=[
                        self._lock_key(upload_id),
                        self._stop_key(upload_id),
                        f"{self.prefix}fence",
                    ],
                    args=[value, self._lease_ms, self._ask_ms if ask else "0"],
                )
            )
        except self._redis_errors as exc:
            raise self._unavailable(exc) from exc
        return None if fence == 0 else (fence, f"{fence}:{value}")

    def _register(
        self,
        upload_id: str,
        taken: tuple[int, str],
        on_release: Callable[[], object] | None,
        token: anyio.lowlevel.EventLoopToken,
        started: float,
    ) -> None:
        fence, value = taken
        self._held[upload_id] = _Holder(
            upload_id=upload_id,
            value=value,
            fence=fence,
            on_release=on_release,
            token=token,
            valid_until=started + self.lease,
        )
        with self._watcher_lock:
            # a close() whose watcher has not stopped yet is overtaken: the locker is in use again
            self._stop_watcher.clear()
            if self._watcher is None or not self._watcher.is_alive():
                self._watcher = threading.Thread(
                    target=self._watch, name="anytus-redis-lock-watcher", daemon=True
                )
                self._watcher.start()

    def _unlock(self, holder: _Holder) -> None:
        try:
            self._release_script(keys=[self._lock_key(holder.upload_id)], args=[holder.value])
        except self._redis_errors as exc:
            raise self._unavailable(exc) from exc

    def _lose(self, holder: _Holder) -> None:
        if not holder.lost:
            holder.lost = True
            logger.warning("lost the lock on upload %s", holder.upload_id)
            self._deliver_release(holder)

    def _deliver_release(self, holder: _Holder) -> None:
        if holder.claim_release() and holder.on_release is not None:
            # a thread of its own: a busy event loop must not stall the renewals
            threading.Thread(target=self._call_in_loop, args=(holder,), daemon=True).start()

    @staticmethod
    def _call_in_loop(holder: _Holder) -> None:
        try:
            anyio.from_thread.run_sync(
                _call_release_callback, holder.on_release, holder.upload_id, token=holder.token
            )
        except Exception:  # the holder's event loop is gone: nobody is left to tell
            logger.debug(
                "could not deliver release request for %s", holder.upload_id, exc_info=True
            )

    def _watch(self) -> None:
        """Renew the held leases and look for release requests, every poll interval."""
        idle_since: float | None = None
        stopping = False
        while True:
            holders = [holder for holder in list(self._held.values()) if not holder.lost]
            now = time.monotonic()
            stopping = self._stop_watcher.is_set()
            if stopping or not holders:
                idle_since = idle_since or now
                if stopping or now - idle_since > 2.0:
                    with self._watcher_lock:
                        stopping = self._stop_watcher.is_set()
                        if stopping or not self._held:
                            self._watcher = None
                            break
                self._stop_watcher.wait(self.poll_interval)
                continue
            idle_since = None
            try:
                pipe = self.client.pipeline(transaction=False)
                for holder in holders:
                    self._renew_script(
                        keys=[self._lock_key(holder.upload_id), self._stop_key(holder.upload_id)],
                        args=[holder.value, self._lease_ms],
                        client=pipe,
                    )
                results: list[Any] = pipe.execute(raise_on_error=False)
            except Exception as exc:  # noqa: BLE001 - a dead watcher would lose every lease
                results = [exc] * len(holders)
            for holder, result in zip(holders, results, strict=True):
                if isinstance(result, BaseException):
                    if (
                        time.monotonic() >= holder.valid_until
                        and self._held.get(holder.upload_id) is holder
                    ):
                        logger.warning(
                            "could not renew the lock on upload %s: %s", holder.upload_id, result
                        )
                        self._lose(holder)
                elif result == 0:
                    # not ours any more; unless it was let go meanwhile (then nothing was lost)
                    if self._held.get(holder.upload_id) is holder:
                        self._lose(holder)
                else:
                    holder.valid_until = max(holder.valid_until, now + self.lease)
                    with self._renewed:
                        holder.renewals += 1
                        self._renewed.notify_all()
                    if result == 2:
                        self._deliver_release(holder)
            self._stop_watcher.wait(max(0.0, self.poll_interval - (time.monotonic() - now)))
        if stopping:
            # close() found this thread running, perhaps in the middle of a renewal on one of the
            # client's connections: it is closed here, once nothing uses it
            self.client.close()

    def _wait_for_renewals(self, upload_id: str, count: int, timeout: float) -> bool:
        """Block until the watcher has renewed the lease of the lock held on *upload_id* *count*
        times (a test's way to know a renewal happened, without sleeping); False on timeout."""

        def renewed() -> bool:
            holder = self._held.get(upload_id)
            return holder is not None and holder.renewals >= count

        with self._renewed:
            return self._renewed.wait_for(renewed, timeout)

    def close(self) -> None:
        """Close the client's connections (locks still held are left to their leases).

        Does not block: while the lease-renewing thread runs, it is told to stop, and closes
        them as it does, within one poll interval (or the end of a renewal under way). A later
        :meth:`acquire` opens connections again."""
        with self._watcher_lock:
            if self._watcher is not None and self._watcher.is_alive():
                # closing a connection under a renewal would fail that renewal's read
                self._stop_watcher.set()
                return
        self.client.close()
