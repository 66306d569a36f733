"""Upload locks: `FileLocker` (across tasks and processes) and `MemoryLocker` (one process).

`FileLocker` keeps tusd's lock file, ``[id].lock`` with the holder's PID on its first line, present
only while the upload is locked, so that tools which know tusd's layout keep working. What decides
who holds the lock is an ``flock()`` on that file, which the kernel drops when the holder dies: a
crashed server's locks are free again at once, whatever PID the restarted server gets (a container's
server is always PID 1, tus/tusd#437). The second line records the holder's host, boot and process
start time, which covers file systems where ``flock()`` does not reach across hosts: a lock from
another host counts as held while its holder keeps touching it.

Every lock file of one process says the same, so a process writes its record once, into a *lock
record* in the directory (``.anytus-locker-<pid>-<token>-<n>``, flocked while it is open), and
takes a lock by hard-linking ``[id].lock`` to it: one ``link()``, atomic, failing if the lock file
exists, and no new inode. Releasing removes the link. Creating and removing a file per lock was a
third of a small upload's CPU on an ext4 without a journal, which passes over recently freed inodes
whenever it picks one for a new file. Where a hard link cannot be made, a lock gets a file of its own,
as before.

Release requests work as in tusd v2: a waiter asks the holder to let go, directly when both are in
this process, or through an ``[id].stop`` file across processes, which a watcher thread polls for.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import itertools
import logging
import math
import os
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.from_thread
import anyio.lowlevel
import anyio.to_thread

from ._datastore import DEFAULT_LOCK_TIMEOUT, InlineHold, Locker
from ._exceptions import LockTimeout, storage_error
from ._ids import validate_upload_id

if TYPE_CHECKING:
    from collections.abc import Callable

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = (
    "RECORD_PREFIX",
    "FileLocker",
    "MemoryLocker",
    "remove_dead_record",
    "remove_dead_records",
)

logger = logging.getLogger("anytus.locks")

T = TypeVar("T")

#: identifies this process among all processes that ever had its PID
PROCESS_TOKEN = secrets.token_hex(8)


def _call_release_callback(callback: Callable[[], object] | None, upload_id: str) -> None:
    if callback is None:
        return
    try:
        callback()
    except Exception:
        logger.exception("on_release callback for upload %s failed", upload_id)


# ---------------------------------------------------------------------------------------------
# MemoryLocker


@dataclass(eq=False)
class _MemoryHolder:
    on_release: Callable[[], object] | None
    released: anyio.Event = field(default_factory=anyio.Event)
    # next() on a count is atomic, so the callback fires once however many waiters ask
    _asks: itertools.count[int] = field(default_factory=itertools.count)

    def request_release(self, upload_id: str) -> None:
        if next(self._asks) == 0:
            _call_release_callback(self.on_release, upload_id)


class MemoryLocker(Locker):
    """Locks that live in memory: exclusive between the tasks of one process (tusd's
    ``memorylocker``). Use :class:`FileLocker` when several processes share a store.

    Not FIFO: when a lock is released, whichever waiter runs first takes it.
    """

    def __init__(self) -> None:
        self._holders: dict[str, _MemoryHolder] = {}

    async def acquire(
        self,
        upload_id: str,
        *,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
        on_release: Callable[[], object] | None = None,
    ) -> None:
        validate_upload_id(upload_id)
        await anyio.lowlevel.checkpoint()
        try:
            with anyio.fail_after(timeout):
                while (holder := self._holders.get(upload_id)) is not None:
                    holder.request_release(upload_id)
                    await holder.released.wait()
        except TimeoutError:
            raise LockTimeout(
                f"timed out after {timeout:g} s waiting for upload {upload_id}"
            ) from None

        self._holders[upload_id] = _MemoryHolder(on_release)

    async def acquire_nowait(self, upload_id: str) -> None:
        validate_upload_id(upload_id)
        await anyio.lowlevel.checkpoint()
        if upload_id in self._holders:
            raise anyio.WouldBlock
        self._holders[upload_id] = _MemoryHolder(None)

    async def release(self, upload_id: str) -> None:
        # a schedule point that a cancelled task passes too: it must still let go
        await anyio.lowlevel.cancel_shielded_checkpoint()
        holder = self._holders.pop(upload_id, None)
        if holder is not None:
            holder.released.set()

    def locked(self, upload_id: str) -> bool:
        return upload_id in self._holders

    def hold_inline(self, upload_id: str, *, shared: bool = False) -> InlineHold:
        validate_upload_id(upload_id)
        if upload_id in self._holders:
            raise anyio.WouldBlock
        holder = self._holders[upload_id] = _MemoryHolder(None)

        def close() -> None:
            if self._holders.get(upload_id) is holder:
                del self._holders[upload_id]
            holder.released.set()

        # in memory, the reservation is the whole lock: nothing to do in the worker thread
        return InlineHold(enter=_always, exit=_nothing, close=close, blocking=False)


def _always() -> bool:
    return True


def _nothing() -> None:
    pass


# ---------------------------------------------------------------------------------------------
# FileLocker


@dataclass(eq=False)
class _FileHolder:
    owner: FileLocker
    upload_id: str
    fd: int
    lock_path: str
    stop_path: str
    on_release: Callable[[], object] | None
    token: anyio.lowlevel.EventLoopToken
    poll_interval: float
    heartbeat_interval: float
    released: anyio.Event = field(default_factory=anyio.Event)
    next_poll: float = 0.0
    next_heartbeat: float = 0.0
    #: how many times the watcher has looked for a release request for this lock
    polls: int = 0
    _asks: itertools.count[int] = field(default_factory=itertools.count)

    def claim_release(self) -> bool:
        """True for exactly one caller: the one that gets to run the callback."""
        return next(self._asks) == 0


#: every lock this process holds, by lock file path; read by the watcher thread. Single dict
#: operations are atomic, so neither side needs a threading lock (which would block the loop).
_held_locks: dict[str, _FileHolder] = {}
_watcher: threading.Thread | None = None
#: notified after each of the watcher's polls (see :func:`_wait_for_polls`)
_polled = threading.Condition()
_WATCH_TICK = 0.05
_WATCHER_IDLE_EXIT = 2.0


def _ensure_watcher() -> None:
    global _watcher
    if _watcher is None or not _watcher.is_alive():
        _watcher = threading.Thread(target=_watch, name="anytus-lock-watcher", daemon=True)
        _watcher.start()


def _watch() -> None:
    """Poll for release requests (``.stop`` files) and refresh the held locks' heartbeat."""
    global _watcher
    idle_since: float | None = None
    while True:
        holders = list(_held_locks.values())
        now = time.monotonic()
        if not holders:
            idle_since = idle_since or now
            if now - idle_since > _WATCHER_IDLE_EXIT:
                _watcher = None
                # a lock may have been registered while we decided to leave
                if not _held_locks or _watcher is not None:
                    return
                _watcher = threading.current_thread()
            time.sleep(_WATCH_TICK)
            continue

        idle_since = None
        for holder in holders:
            if now >= holder.next_poll:
                holder.next_poll = now + holder.poll_interval
                if os.path.exists(holder.stop_path) and holder.claim_release():
                    # don't let a busy event loop stall the watcher: hand over from a thread
                    threading.Thread(target=_deliver_release, args=(holder,), daemon=True).start()
                with _polled:
                    holder.polls += 1
                    _polled.notify_all()
            if holder.heartbeat_interval and now >= holder.next_heartbeat:
                holder.next_heartbeat = now + holder.heartbeat_interval
                with contextlib.suppress(OSError):
                    os.utime(holder.fd)
        time.sleep(_WATCH_TICK)


def _wait_for_polls(lock_path: str, count: int, timeout: float) -> bool:
    """Block until the watcher has looked *count* times for a release request for the lock
    held at *lock_path* (a test's way to know it has looked, without sleeping); False on
    timeout."""

    def polled() -> bool:
        holder = _held_locks.get(lock_path)
        return holder is not None and holder.polls >= count

    with _polled:
        return _polled.wait_for(polled, timeout)


def _deliver_release(holder: _FileHolder) -> None:
    try:
        anyio.from_thread.run_sync(
            _call_release_callback, holder.on_release, holder.upload_id, token=holder.token
        )
    except Exception:  # the holder's event loop is gone: nobody is left to tell
        logger.debug("could not deliver release request for %s", holder.upload_id, exc_info=True)


_boot_id: str | None = None


def _read_boot_id() -> str:
    global _boot_id
    if _boot_id is None:
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                _boot_id = f.read().strip() or "-"
        except OSError:
            _boot_id = "-"
    return _boot_id


def _process_start_ticks(pid: int) -> str | None:
    """A live process's start time since boot, which tells a PID's incarnations apart (Linux
    only); None if *pid* is not running, a zombie included (it has exited and holds no locks,
    only its parent has not reaped it yet)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # the command name may contain spaces and parentheses: fields resume after the last ")"
    fields = stat[stat.rfind(b")") + 2 :].split()
    if len(fields) <= 19 or fields[0] in _EXITED_STATES:
        return None
    return fields[19].decode()


#: process states in /proc/PID/stat of a process that has exited (zombie, dead)
_EXITED_STATES = (b"Z", b"X", b"x")


_own_records: dict[tuple[int, str], bytes] = {}


def _own_record(hostname: str) -> bytes:
    """What this process writes into its lock files (the same for the process's lifetime)."""
    key = (os.getpid(), hostname)
    record = _own_records.get(key)
    if record is None:
        record = _own_records[key] = (
            f"{os.getpid()}\n"
            f"anytus {hostname} {_read_boot_id()} "
            f"{_process_start_ticks(os.getpid()) or '-'} {PROCESS_TOKEN}\n"
        ).encode()
    return record


#: how old another host's lock may be before it counts as abandoned (``FileLocker(stale_after=)``)
DEFAULT_STALE_AFTER = 60.0

#: the name of a process's lock record starts so (then ``<pid>-<token>-<n>``)
RECORD_PREFIX = ".anytus-locker-"
#: how stale a lock record's mtime may get before a new lock touches it: a process on another host
#: judges a lock by its file's mtime (``stale_after``), and every lock file of ours is the record
_RECORD_TOUCH_AFTER = 1.0


#: a process keeps at most this many lock records (one per directory) open, each a file descriptor,
#: unless more of them have locks held
_MAX_RECORDS = 8


@dataclass(eq=False)
class _LockRecord:
    directory: str
    path: str
    #: open (read-only) while the record is in use, with an exclusive flock() on it
    fd: int
    #: time.monotonic() of the last touch
    touched: float
    #: the record file's device and inode, which every lock file linked to it has
    identity: tuple[int, int]
    #: links being made or held by this process: the record is closed only when there are none
    holds: int = 0
    #: time.monotonic() of the last lock taken through it
    used: float = 0.0
    #: in :data:`_records`, so that new locks link to it
    current: bool = True


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


#: numbers this process's lock records, so that no name is used twice
_record_serials = itertools.count()
#: this process's lock records, by directory
_records: dict[str, _LockRecord] = {}
#: every open lock record by its descriptor (a lock taken by a link holds the record's)
_records_by_fd: dict[int, _LockRecord] = {}
#: guards both dicts and the records' counts; held for a dict operation, or while a record is made
_records_lock = threading.Lock()
_records_owner = os.getpid()


def _take_record(directory: str, hostname: str) -> _LockRecord | None:
    """This process's lock record in *directory*, made on first use, with one more hold on it
    (given back by :func:`_give_back_record`); None when none can be made there (no space, no
    permission, no directory): the caller then makes a lock file of its own, which reports the
    problem if there is one. Runs in a worker thread."""
    with _records_lock:
        record = _records.get(directory)
        if record is None:
            record = _make_record(directory, hostname)
            if record is None:
                return None
            if not _records_by_fd:
                atexit.register(_remove_records)
            _records[directory] = record
            _records_by_fd[record.fd] = record
        record.holds += 1
        record.used = time.monotonic()
        if len(_records) > _MAX_RECORDS:
            _close_idle_records()
        return record


def _make_record(directory: str, hostname: str) -> _LockRecord | None:
    # a new name for each record: a thread that took the record before its name was removed
    # then fails to link to it, and never links to a newer record by the old name
    serial = next(_record_serials)
    path = os.path.join(directory, f"{RECORD_PREFIX}{os.getpid()}-{PROCESS_TOKEN}-{serial}")
    assert fcntl is not None
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    except OSError:
        return None
    try:
        try:
            record = _own_record(hostname)
            if os.write(fd, record) != len(record):
                raise OSError(errno.ENOSPC, "short write")
        finally:
            os.close(fd)
        # held open read-only: a file open for writing would keep the file system from being
        # remounted read-only
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        _unlink_quietly_any(path)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        identity = _identity(os.fstat(fd))
    except OSError:
        os.close(fd)
        return None
    return _LockRecord(directory, path, fd, time.monotonic(), identity)


def _give_back_record(record: _LockRecord, *, gone: bool = False) -> None:
    """A link to *record* was not made, or its lock is released. *gone*: its name was found
    removed: the next lock makes a new record."""
    with _records_lock:
        record.holds -= 1
        if gone and record.current:
            del _records[record.directory]
            record.current = False
        if not record.current and record.holds == 0:
            _close_record(record)


def _close_idle_records() -> None:
    """Close the least recently used records that hold nothing, down to :data:`_MAX_RECORDS`
    (with ``_records_lock`` held)."""
    idle = sorted((r for r in _records.values() if r.holds == 0), key=lambda r: r.used)
    for record in idle[: len(_records) - _MAX_RECORDS]:
        del _records[record.directory]
        record.current = False
        _unlink_quietly_any(record.path)
        _close_record(record)


def _close_record(record: _LockRecord) -> None:
    del _records_by_fd[record.fd]
    with contextlib.suppress(OSError):
        os.close(record.fd)  # drops the flock()


def _remove_records() -> None:
    """At exit: remove the names of this process's lock records (locks still linked to one stay,
    and count as stale once the process is gone)."""
    if os.getpid() != _records_owner:
        return
    for record in list(_records.values()):
        _unlink_quietly_any(record.path)


def _after_fork_in_child() -> None:
    # the parent's records are the parent's: a child that kept their descriptors would keep their
    # flock() after the parent died
    global _records_owner
    for fd in _records_by_fd:
        with contextlib.suppress(OSError):
            os.close(fd)
    _records.clear()
    _records_by_fd.clear()
    _records_owner = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _unlink_quietly_any(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def remove_dead_records(directory: str | os.PathLike[str], pid: int | None = None) -> None:
    """Remove the lock records in *directory* (of process *pid* only, if given) whose processes
    are gone: what ``anytus serve`` does as it starts, and for each worker it reaps."""
    prefix = RECORD_PREFIX if pid is None else f"{RECORD_PREFIX}{pid}-"
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith(prefix):
                remove_dead_record(entry.path)


def remove_dead_record(path: str) -> bool:
    """Remove the lock record at *path* if nobody holds it, judged as a lock file with its content
    would be (another host's counts as held while its mtime is fresh); True if removed. Locks
    still linked to it are untouched: they are as stale as it is."""
    try:
        if not _nobody_holds(path, socket.gethostname(), DEFAULT_STALE_AFTER):
            return False
        os.unlink(path)
    except OSError:
        return False
    return True


def _nobody_holds(path: str, hostname: str, stale_after: float) -> bool | None:
    """Whether nobody holds the lock file at *path*: no flock() on it, and its record is not
    another live holder's (:func:`_held_elsewhere`); None if there is no such file. Creates and
    changes no file."""
    assert fcntl is not None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        # a lock file without a holder's flock(): stale, tusd's, or another host's
        record = os.pread(fd, 4096, 0)
        return not _held_elsewhere(path, record, os.fstat(fd).st_mtime, hostname, stale_after)
    finally:
        os.close(fd)  # drops the shared flock()


def _held_elsewhere(
    lock_path: str, record: bytes, mtime: float, hostname: str, stale_after: float
) -> bool:
    """Judge the record of a lock file (or lock record) whose flock() we just got: whether a
    live holder has it all the same."""
    lines = record.decode(errors="replace").splitlines()
    try:
        pid = int(lines[0])
    except (IndexError, ValueError):
        return False  # empty or garbage: its writer died before finishing it
    if pid <= 0:
        return False

    if len(lines) > 1 and lines[1].startswith("anytus "):
        host, boot_id, start_ticks, token = ([*lines[1].split()[1:], "", "", "", ""])[:4]
        if host != hostname:
            # flock() may not reach across hosts on this file system: trust the heartbeat
            return time.time() - mtime < stale_after
        if boot_id != _read_boot_id() or start_ticks in ("", "-"):
            return False
        if pid == os.getpid():
            # only a lock this process has on record is held by it; any other lock file with
            # our PID was left by a previous incarnation (or leaked by a dead event loop)
            ours = _held_locks.get(lock_path)
            return token == PROCESS_TOKEN and ours is not None and ours.fd >= 0
        # the holder's flock() is gone, yet its very process is alive: flock() is not
        # enforced on this file system, so honour the lock file
        return _process_start_ticks(pid) == start_ticks

    # a tusd lock file: tusd takes no flock(), so judge by its PID, as tusd does; a lock
    # with our own PID cannot be tusd's live lock, since we are not tusd
    return pid != os.getpid() and _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user: tusd's lockfile wrongly calls it dead
        pass
    except OSError:
        return False
    # kill() reaches a zombie too; where /proc tells, a zombie is dead
    return _process_start_ticks(pid) is not None or not os.path.isdir("/proc/self")


class FileLocker(Locker):
    """Locks as ``[id].lock`` files in a directory: exclusive between tasks *and* processes.

    :param path: the directory, normally the store's
    :param holder_poll_interval: how often a holder looks for a release request from another
        process
    :param acquirer_poll_interval: how often a waiter retries a lock held by another process
    :param heartbeat_interval: how often a holder touches its lock file, so that processes on
        other hosts sharing the directory see it is alive (0 disables)
    :param stale_after: how old the heartbeat of another host's lock may be before that lock
        counts as abandoned
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        holder_poll_interval: float = 0.5,
        acquirer_poll_interval: float = 0.25,
        heartbeat_interval: float = 5.0,
        stale_after: float = DEFAULT_STALE_AFTER,
    ) -> None:
        if fcntl is None:  # pragma: no cover
            raise RuntimeError("FileLocker needs fcntl.flock(), which this platform lacks")
        self.path = Path(path).absolute()
        self.holder_poll_interval = holder_poll_interval
        self.acquirer_poll_interval = acquirer_poll_interval
        self.heartbeat_interval = heartbeat_interval
        self.stale_after = stale_after
        self._hostname = socket.gethostname()
        self._directory = str(self.path)
        self._prefix = os.path.join(self._directory, "")
        # lock files are small and quick: keep them off the store's data-transfer threads
        self._limiter = anyio.CapacityLimiter(8)

    def _lock_path(self, upload_id: str) -> str:
        return self._prefix + upload_id + ".lock"

    def locked(self, upload_id: str) -> bool:
        holder = _held_locks.get(self._lock_path(validate_upload_id(upload_id)))
        return holder is not None and holder.owner is self and holder.fd >= 0

    async def acquire(
        self,
        upload_id: str,
        *,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
        on_release: Callable[[], object] | None = None,
    ) -> None:
        validate_upload_id(upload_id)
        lock_path = self._lock_path(upload_id)
        stop_path = self._prefix + upload_id + ".stop"
        token = anyio.lowlevel.current_token()
        asked_by_file = False
        try:
            with anyio.fail_after(timeout):
                while True:
                    holder = _held_locks.get(lock_path)
                    if holder is not None and holder.token == token:
                        # the holder runs in our event loop: ask it directly, wake on its release
                        if holder.claim_release():
                            _call_release_callback(holder.on_release, upload_id)
                        await holder.released.wait()
                        continue

                    fd = await self._run(self._try_lock, lock_path, stop_path)
                    if fd is not None:
                        break
                    asked_by_file = True
                    await anyio.sleep(self.acquirer_poll_interval)
        except BaseException as exc:
            if asked_by_file:
                # don't leave a release request behind for a lock we no longer want (tusd#1372)
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(
                        _unlink_quietly, stop_path, limiter=self._limiter
                    )
            if isinstance(exc, TimeoutError):
                raise LockTimeout(
                    f"timed out after {timeout:g} s waiting for upload {upload_id}"
                ) from None
            raise

        self._register(upload_id, fd, on_release, token)

    async def acquire_nowait(self, upload_id: str) -> None:
        validate_upload_id(upload_id)
        lock_path = self._lock_path(upload_id)
        if lock_path in _held_locks:
            await anyio.lowlevel.checkpoint()
            raise anyio.WouldBlock
        fd = await self._run(self._try_lock, lock_path, None)
        if fd is None:
            raise anyio.WouldBlock
        self._register(upload_id, fd, None, anyio.lowlevel.current_token())

    def hold_inline(self, upload_id: str, *, shared: bool = False) -> InlineHold:
        validate_upload_id(upload_id)
        lock_path = self._lock_path(upload_id)
        if lock_path in _held_locks:
            raise anyio.WouldBlock
        # A reservation that other tasks of this process see (and wait for), taken without a
        # system call; the lock file itself is taken in the worker thread, by enter().
        holder = _held_locks[lock_path] = _FileHolder(
            owner=self,
            upload_id=upload_id,
            fd=-1,
            lock_path=lock_path,
            stop_path=self._prefix + upload_id + ".stop",
            on_release=None,
            token=anyio.lowlevel.current_token(),
            poll_interval=math.inf,
            heartbeat_interval=0.0,
            next_poll=math.inf,
        )

        def enter() -> bool:
            if shared:
                # a reader needs only to know that no writer holds the lock: no lock file is
                # created or removed, so a HEAD never writes file-system metadata (which would
                # queue behind other uploads' fsyncs)
                return self._is_free(lock_path)
            fd = self._try_lock(lock_path, None, clear_stop=False)
            if fd is None:
                return False
            holder.fd = fd
            return True

        def exit() -> None:
            if holder.fd >= 0:
                self._unlock(holder)
                holder.fd = -1

        def close() -> None:
            if _held_locks.get(lock_path) is holder:
                del _held_locks[lock_path]
            holder.released.set()

        return InlineHold(enter=enter, exit=exit, close=close)

    def _register(
        self,
        upload_id: str,
        fd: int,
        on_release: Callable[[], object] | None,
        token: anyio.lowlevel.EventLoopToken,
    ) -> None:
        now = time.monotonic()
        _held_locks[self._lock_path(upload_id)] = _FileHolder(
            owner=self,
            upload_id=upload_id,
            fd=fd,
            lock_path=self._lock_path(upload_id),
            stop_path=self._prefix + upload_id + ".stop",
            on_release=on_release,
            token=token,
            poll_interval=self.holder_poll_interval,
            heartbeat_interval=self.heartbeat_interval,
            next_poll=now + self.holder_poll_interval,
            next_heartbeat=now + self.heartbeat_interval,
        )
        _ensure_watcher()

    async def release(self, upload_id: str) -> None:
        lock_path = self._lock_path(validate_upload_id(upload_id))
        holder = _held_locks.get(lock_path)
        if holder is None or holder.owner is not self:
            # not ours to release, even if another locker in this process holds it
            await anyio.lowlevel.checkpoint()
            return
        del _held_locks[lock_path]
        try:
            with anyio.CancelScope(shield=True):
                await self._run(self._unlock, holder)
        finally:
            holder.released.set()

    async def _run(self, fn: Callable[..., T], *args: object) -> T:
        """Run a lock file operation in a worker thread; a failure of the file system becomes
        a :class:`~anytus.StorageError` that names its kind."""
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except OSError as exc:
            raise storage_error(exc, path=os.path.join(self._directory, "")) from exc

    # -- the blocking parts, run in worker threads -------------------------------------------

    def _try_lock(
        self, lock_path: str, stop_path: str | None, *, clear_stop: bool = True
    ) -> int | None:
        """Take the lock and return its file descriptor, or return None (after asking the
        holder to let go through *stop_path*, if given).

        :param clear_stop: remove a release request left for the previous holder (a holder that
            lets go within one worker-thread hop never looks for one)
        """
        assert fcntl is not None
        while True:
            record = _take_record(self._directory, self._hostname)
            if record is not None:
                try:
                    os.link(record.path, lock_path)
                except FileExistsError:
                    _give_back_record(record)  # held, or left behind: judged below
                except FileNotFoundError:
                    directory_exists = os.path.isdir(self._directory)
                    # else the record was removed from under us: a new one
                    _give_back_record(record, gone=directory_exists)
                    if not directory_exists:
                        os.makedirs(self.path, exist_ok=True)
                    continue
                except OSError:
                    # no hard links here (or no room for one): a lock file of its own
                    _give_back_record(record)
                except BaseException:
                    _give_back_record(record)
                    raise
                else:
                    now = time.monotonic()
                    if now - record.touched > _RECORD_TOUCH_AFTER:
                        record.touched = now
                        with contextlib.suppress(OSError):  # the heartbeat is best effort
                            os.utime(record.fd)
                    if clear_stop:
                        _unlink_quietly(lock_path[: -len(".lock")] + ".stop")
                    return record.fd
            created = True
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            except FileExistsError:
                created = False
                try:
                    fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue  # its holder just removed it: create it again
            except FileNotFoundError:
                # the store directory is created on first use, and this may be it
                os.makedirs(self.path, exist_ok=True)
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    self._request_release(stop_path)
                    os.close(fd)
                    return None

                ours = os.fstat(fd)
                if created:
                    # A file we created is new and empty; only a holder that took and let go
                    # of it between our open and our flock can have removed it since.
                    if ours.st_nlink == 0:
                        os.close(fd)
                        continue
                else:
                    # the previous holder may have removed it between our open and our flock
                    try:
                        current = os.stat(lock_path)
                    except FileNotFoundError:
                        os.close(fd)
                        continue
                    if _identity(current) != _identity(ours):
                        os.close(fd)
                        continue
                    record_bytes = os.pread(fd, 4096, 0)
                    if _held_elsewhere(
                        lock_path, record_bytes, ours.st_mtime, self._hostname, self.stale_after
                    ):
                        self._request_release(stop_path)
                        os.close(fd)
                        return None
                    if record is not None or ours.st_nlink > 1:
                        # stale: removed under its flock(), and taken afresh. A file linked
                        # elsewhere is a dead process's record: writing ours into it would make
                        # that process's other stale locks look held.
                        with contextlib.suppress(FileNotFoundError):  # tusd took it first
                            os.unlink(lock_path)
                        os.close(fd)
                        continue
                    if ours.st_size:
                        # Only a stale record is cut: truncating a file and writing it again
                        # makes ext4 flush it to disk on close (its auto_da_alloc rule), which
                        # made every lock cost a disk write.
                        os.ftruncate(fd, 0)
                self._write_record(fd, lock_path)
                if clear_stop:
                    # a release request left for the previous holder is not meant for us; a
                    # waiter that still wants the lock asks again on its next poll
                    _unlink_quietly(lock_path[: -len(".lock")] + ".stop")
                return fd
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise

    def _write_record(self, fd: int, lock_path: str) -> None:
        """Write our record into the lock file whose flock() we hold.

        On a full disk (or quota) the record cannot be written, and the lock is held by the
        flock() alone, on an empty file: flock() needs no data blocks, so reading and deleting
        uploads (which frees space) keep working. Other processes on this host see the flock()
        and wait, as usual. What is lost while the disk is full is only what the record is
        for: a tusd sharing the directory, or a host where flock() does not reach, takes an
        empty lock file for a stale one.
        """
        try:
            os.pwrite(fd, _own_record(self._hostname), 0)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # a short write may have left part of a record: none is better than a torn one
            os.ftruncate(fd, 0)
            logger.debug("no space for the record of %s: holding it by flock() alone", lock_path)

    def _is_free(self, lock_path: str) -> bool:
        """Whether nobody holds the lock, judged without creating or changing any file."""
        return _nobody_holds(lock_path, self._hostname, self.stale_after) is not False

    @staticmethod
    def _request_release(stop_path: str | None) -> None:
        if stop_path is None:
            return
        try:
            os.close(os.open(stop_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))
        except FileExistsError:
            pass
        except OSError as exc:
            # no room for even an empty file (no inodes left): the holder is not asked, and
            # the waiter waits for it as it would for a holder that ignores requests
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise

    @staticmethod
    def _unlock(holder: _FileHolder) -> None:
        record = _records_by_fd.get(holder.fd)
        try:
            # remove the file only while it is still ours: never a lock someone else took over
            with contextlib.suppress(FileNotFoundError):
                current = os.stat(holder.lock_path)
                ours = record.identity if record is not None else _identity(os.fstat(holder.fd))
                if _identity(current) == ours:
                    os.unlink(holder.lock_path)
            _unlink_quietly(holder.stop_path)
        finally:
            if record is None:
                os.close(holder.fd)  # drops the flock()
            else:
                _give_back_record(record)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise
