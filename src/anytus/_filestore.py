"""`FileStore`: tusd's ``filestore`` on the local file system, on anyio.

Every blocking system call runs in a worker thread, limited by a :class:`anyio.CapacityLimiter`
that the store owns, and each logical step is one thread call (open, write and close a buffer; read
``.info`` and stat the data file). Short steps made while another is running share the next
worker-thread hop (:class:`~anytus._batch.HopBatcher`). The offset is never stored: it is the size
of the data file.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import functools
import itertools
import os
import secrets
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread

from ._batch import HopBatcher
from ._datastore import (
    Locker,
    SyncUpload,
    ThreadFedUpload,
    Upload,
)
from ._exceptions import (
    CorruptUploadInfo,
    LengthAlreadyDeclared,
    SizeExceeded,
    StorageError,
    UploadExists,
    UploadNotFound,
    storage_error,
)
from ._ids import new_upload_id, validate_upload_id
from ._info import UploadInfo
from ._locks import RECORD_PREFIX, FileLocker, remove_dead_record
from ._storebase import ReaderContext, StoreBase
from ._streams import UploadReadStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from ._asgi_types import BodySink
    from ._datastore import InlineHold

__all__ = ("Durability", "FileStore", "FileUpload", "check_directory", "storage_error")

T = TypeVar("T")

#: when data is flushed to stable storage (``fsync``): ``"none"`` leaves it to the OS,
#: ``"finish"`` syncs when an upload completes, ``"always"`` before every write returns
Durability = Literal["none", "finish", "always"]

_FILE_MODE = 0o664  # tusd's default (tus/tusd#56), before the umask
_TEMP_MARK = ".tmp-"
_STALE_TEMP_AGE = 3600.0
_temp_counter = itertools.count()
_TEMP_TOKEN = secrets.token_hex(4)
_MIN_READ_CHUNK = 64 * 1024
# chunks smaller than this are copied together, so that a source of tiny chunks costs neither a
# writev entry nor a Python object per few bytes
_SMALL_CHUNK = 16 * 1024
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024) if hasattr(os, "sysconf") else 16


class FileStore(StoreBase):
    """Uploads as files in one directory, in tusd's layout: ``[id].bin`` holds the bytes,
    ``[id].info`` the upload's JSON, ``[id].lock`` the lock while there is one.

    The directory (and its parents) is created on first use if it is missing.

    :param path: the directory
    :param locker: the locks; by default a :class:`~anytus.FileLocker` on the same directory,
        exclusive across processes
    :param buffer_size: the smallest batch a write sends to disk (the last one aside); up to eight
        times as much is queued while a write is in progress, and reads return chunks of four
        times this size
    :param durability: when data is fsynced (``.info`` files are always written atomically,
        and fsynced unless durability is ``"none"``)
    :param max_threads: how many worker threads the store uses at once; at most a quarter of them
        (at least one) wait on fsyncs, so that loading an upload always finds a thread
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        locker: Locker | None = None,
        buffer_size: int = 1 << 20,
        durability: Durability = "finish",
        max_threads: int = 16,
    ) -> None:
        if durability not in ("none", "finish", "always"):
            raise ValueError(f"durability must be 'none', 'finish' or 'always', not {durability!r}")
        if buffer_size <= 0:
            raise ValueError("buffer_size must be positive")
        self.path = Path(path).absolute()
        #: the directory with its trailing separator: a file's path is this and its name (a
        #: concatenation, not os.path.join, on the path of every request)
        self._prefix = os.path.join(self.path, "")
        self.locker: Locker = locker if locker is not None else FileLocker(self.path)
        self.buffer_size = buffer_size
        self.durability: Durability = durability
        self._limiter = anyio.CapacityLimiter(max_threads)
        #: a step that fsyncs takes one of these before its thread (see :meth:`_run`)
        self._sync_limiter = anyio.CapacityLimiter(max(1, max_threads // 4))
        self._hops = HopBatcher(self._limiter)

    def __repr__(self) -> str:
        return f"FileStore({str(self.path)!r}, durability={self.durability!r})"

    # -- paths ------------------------------------------------------------------------------

    def _info_path(self, upload_id: str) -> str:
        return self._prefix + validate_upload_id(upload_id) + ".info"

    def _bin_path(self, upload_id: str) -> str:
        return self._prefix + upload_id + ".bin"

    async def _run(
        self,
        fn: Callable[..., T],
        *args: object,
        read_only: bool = False,
        abandon: bool | None = None,
        alone: bool = False,
        syncs: bool = False,
    ) -> T:
        """Run a blocking step in a worker thread; storage failures become a StorageError.

        A short step shares a hop with the steps that queue up meanwhile
        (:class:`~anytus._batch.HopBatcher`), reads apart from writes, so that a read never waits
        for a write's fsync; a step whose time grows with the data (writing, copying, listing)
        goes *alone*, in a hop of its own, so that it never holds up the short ones.

        A step that *syncs* (may fsync, as the durability setting says) goes alone too: fsyncs
        one after another in a shared hop each wait for the disk in turn, while fsyncs in threads
        side by side overlap there (and share commits on a journaled file system): on the
        development VM's disk, 8 threads did 3.2 times the fsyncs per second of one. At most
        a quarter of the store's threads run such steps at once, so that loading an upload (a
        HEAD) never queues behind fsyncs for a thread: with 40 clients creating and completing
        small uploads, half the threads made HEADs twice as slow as a shared hop did, a quarter
        made them faster.

        Read-only steps are abandoned on cancellation (the thread finishes alone), unless
        *abandon* is False; anything that changes a file is waited for, so no change happens
        behind the caller's back.
        """
        abandon_on_cancel = read_only if abandon is None else abandon
        syncs = syncs and self.durability != "none"
        try:
            if alone or syncs:
                async with self._sync_limiter if syncs else contextlib.nullcontext():
                    return await anyio.to_thread.run_sync(
                        fn, *args, limiter=self._limiter, abandon_on_cancel=abandon_on_cancel
                    )
            return await self._hops.run(
                fn, *args, abandon_on_cancel=abandon_on_cancel, kind=read_only
            )
        except OSError as exc:
            # a failed write to an open file names no path: the store's directory stands in
            # (with its trailing separator, so that it is the directory logs group by)
            raise storage_error(exc, path=os.path.join(self.path, "")) from exc

    # -- core -------------------------------------------------------------------------------

    async def new_upload(self, info: UploadInfo) -> UploadInfo:
        """Create an empty upload described by *info*; return it with its ID and storage paths.

        *info* may carry an ID of its own (it is validated); otherwise a new one is made.

        :raises ~anytus.InvalidUploadId: if *info* carries a malformed ID
        :raises ~anytus.UploadExists: if *info* carries the ID of an existing upload
        :raises ~anytus.StorageError: if the storage cannot be written
        """
        # a new ID is made in the worker thread: it reads the system's random source
        upload_id = validate_upload_id(info.id) if info.id else None
        return await self._run(self._create_sync, info, upload_id, syncs=True)

    async def get_upload(self, upload_id: str) -> FileUpload:
        """Load the upload (one read of ``[id].info``, one ``stat`` of its data) to act on it.

        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        :raises ~anytus.UploadNotFound: if there is no such upload
        :raises ~anytus.CorruptUploadInfo: if ``[id].info`` is unreadable
        """
        # the ID is validated in the worker thread too: a malformed one is still a checkpoint
        info, data_path = await self._run(self._load_sync, upload_id, read_only=True)
        return FileUpload(self, info, data_path)

    async def get_info(self, upload_id: str) -> UploadInfo:
        """Return the upload's state, with ``offset`` = the data file's size.

        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        :raises ~anytus.UploadNotFound: if there is no such upload
        :raises ~anytus.CorruptUploadInfo: if ``[id].info`` is unreadable
        """
        return (await self.get_upload(upload_id)).info

    def get_reader(
        self, upload_id: str, *, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[UploadReadStream]:
        """Open a stream over the stored bytes ``[start, end)``; *end* defaults to the offset
        when the stream is opened.

        Use it as ``async with store.get_reader(id) as stream: async for chunk in stream: ...``.
        Entering the context is a checkpoint; exiting closes the file, shielded from
        cancellation.

        :raises ~anytus.UploadNotFound: on entering, if there is no such upload
        :raises ValueError: on entering, if the range is not within the stored bytes
        """
        self._info_path(upload_id)
        return ReaderContext(
            functools.partial(self.get_upload, upload_id), self._open_reader, start, end
        )

    async def _open_reader(self, upload: FileUpload, start: int, end: int) -> UploadReadStream:
        fd = await self._run(_open_read, upload._data_path)
        return UploadReadStream(
            fd,
            start,
            end,
            # reads are cheap next to a thread hop: take several buffers' worth per hop
            chunk_size=max(4 * self.buffer_size, _MIN_READ_CHUNK),
            limiter=self._limiter,
        )

    # -- one hop ----------------------------------------------------------------------------

    async def run_nowait(
        self, upload_id: str, fn: Callable[[SyncUpload], T], *, read_only: bool = False
    ) -> T:
        """Lock, load, ``fn(upload)`` and unlock in one worker-thread hop (see
        :meth:`~anytus.OneHopStore.run_nowait`).

        :raises ~anyio.WouldBlock: if the lock is held (nothing was done)
        """
        try:
            self._info_path(upload_id)
            hold = self.locker.hold_inline(upload_id, shared=read_only)
        except NotImplementedError:
            await anyio.lowlevel.checkpoint()
            raise anyio.WouldBlock from None
        except BaseException:
            await anyio.lowlevel.checkpoint()  # always a checkpoint, errors included
            raise
        try:
            # a cancelled caller leaves the hop to finish: the lock is let go in the thread
            return await self._run(
                self._run_locked_sync,
                hold,
                upload_id,
                fn,
                read_only=read_only,
                abandon=False,
                syncs=not read_only,
            )
        finally:
            hold.close()

    def _run_locked_sync(
        self, hold: InlineHold, upload_id: str, fn: Callable[[SyncUpload], T]
    ) -> T:
        if not hold.enter():
            raise anyio.WouldBlock
        try:
            info, data_path = self._load_sync(upload_id)
            return fn(_SyncFileUpload(self, info, data_path))
        finally:
            hold.exit()

    # -- extensions -------------------------------------------------------------------------

    async def terminate(self, upload_id: str) -> None:
        """Delete the upload: its data first, then ``[id].info``, so that no half-deleted upload
        looks whole. Missing files are tolerated (a previous attempt may have stopped half way).

        :raises ~anytus.UploadNotFound: if there is no such upload
        """
        self._info_path(upload_id)
        await self._run(self._terminate_sync, upload_id, None)

    async def list_uploads(self) -> list[str]:
        """Return the IDs of every upload in the store directory."""
        return await self._run(self._list_sync, read_only=True, alone=True)

    async def _after_cleanup(self, now: float) -> None:
        # temporary files that a crash left behind
        await self._run(self._remove_stale_temps_sync, now, alone=True)

    # -- the blocking parts, run in worker threads ------------------------------------------

    def _locate_data_sync(self, upload_id: str, info: UploadInfo) -> tuple[str, os.stat_result]:
        """Find the data file: ours and tusd 0.x's ``[id].bin``, tusd v1/v2's ``[id]``, or
        wherever ``Storage.Path`` says (tusd's custom paths)."""
        candidates = [self._bin_path(upload_id), self._prefix + upload_id]
        recorded = info.storage.get("Path")
        if recorded:
            candidates.append(os.path.join(self.path, recorded))
        for candidate in candidates:
            try:
                return candidate, os.stat(candidate)
            except FileNotFoundError:
                continue
        raise UploadNotFound(f"upload {upload_id} has no data file")

    def _load_sync(self, upload_id: str) -> tuple[UploadInfo, str]:
        info_path = self._info_path(upload_id)
        try:
            document = _read_file(info_path)
        except FileNotFoundError:
            raise UploadNotFound(f"upload {upload_id} not found") from None
        except OSError as exc:
            raise storage_error(
                exc, path=info_path, what=f"upload {upload_id}: cannot read {upload_id}.info"
            ) from exc
        try:
            info = UploadInfo.from_json(document)
        except ValueError as exc:
            raise CorruptUploadInfo(
                f"upload {upload_id}: {upload_id}.info is unreadable ({exc})", path=info_path
            ) from exc
        data_path, stat = self._locate_data_sync(upload_id, info)
        storage = info.storage
        if storage.get("Path") != data_path or storage.get("InfoPath") != info_path:
            # where the files are now: a directory tusd wrote may have moved since, and a
            # rewritten .info must point tusd at the data file that exists
            storage = {**storage, "Type": "filestore", "Path": data_path, "InfoPath": info_path}
        info = dataclasses.replace(
            info, id=upload_id, offset=stat.st_size, modified_at=stat.st_mtime, storage=storage
        )
        return info, data_path

    def _create_sync(self, info: UploadInfo, upload_id: str | None) -> UploadInfo:
        upload_id = upload_id or new_upload_id()
        bin_path = self._bin_path(upload_id)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            try:
                os.close(os.open(bin_path, flags, _FILE_MODE))
            except FileNotFoundError:
                # the directory is created on first use (and again if someone removed it)
                self.path.mkdir(parents=True, exist_ok=True)
                os.close(os.open(bin_path, flags, _FILE_MODE))
        except FileExistsError:
            raise UploadExists(f"upload {upload_id} exists already") from None
        info = dataclasses.replace(
            info,
            id=upload_id,
            offset=0,
            storage={"Type": "filestore", "Path": bin_path, "InfoPath": self._info_path(upload_id)},
        )
        try:
            self._write_info_sync(info)
            if info.size == 0 and self.durability != "none":
                _fsync_path(bin_path)
        except BaseException:
            _unlink_quietly(bin_path)  # leave no orphaned data file behind
            raise
        return info

    def _write_info_sync(self, info: UploadInfo) -> None:
        """Replace ``[id].info`` atomically: write a temporary file, fsync it, rename it."""
        info_path = self._info_path(info.id)
        # unique: the counter within this process, the PID and a random token across processes
        # (a restarted server may have the same PID as the one that left a temp file behind)
        temp_path = f"{info_path}{_TEMP_MARK}{os.getpid()}-{_TEMP_TOKEN}-{next(_temp_counter)}"
        sync = self.durability != "none"
        try:
            fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _FILE_MODE)
            try:
                _write_all(fd, info.to_json())
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temp_path, info_path)
        except BaseException:
            _unlink_quietly(temp_path)
            raise
        if sync:
            _fsync_path(str(self.path))  # makes the rename itself durable

    def _terminate_sync(self, upload_id: str, data_path: str | None) -> None:
        info_path = self._info_path(upload_id)
        if not os.path.exists(info_path):
            raise UploadNotFound(f"upload {upload_id} not found")
        if data_path is None:
            try:
                _, data_path = self._load_sync(upload_id)
            except (UploadNotFound, CorruptUploadInfo, StorageError):
                # an upload whose .info is unreadable or garbage is removed all the same: its
                # data file is where anytus and tusd v1+ put it (a recorded custom path is lost)
                tusd_path = os.path.join(self.path, upload_id)
                if os.path.isfile(tusd_path) and not os.path.islink(tusd_path):
                    _unlink_quietly(tusd_path)
                data_path = self._bin_path(upload_id)
        _unlink_quietly(data_path)
        _unlink_quietly(info_path)

    def _concat_sync(
        self, final: UploadInfo, final_path: str, sources: list[tuple[str, int]]
    ) -> None:
        if final.offset != 0:
            raise ValueError(f"final upload {final.id} is not empty")
        total = sum(size for _, size in sources)
        if final.size is None:
            self._write_info_sync(dataclasses.replace(final, size=total))
        elif final.size != total:
            raise ValueError(
                f"final upload {final.id} is {final.size} bytes, its partials {total} bytes"
            )

        out = os.open(final_path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            position = 0
            for path, size in sources:
                try:
                    source = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except FileNotFoundError:
                    raise UploadNotFound(f"the partial upload {path} is gone") from None
                try:
                    _copy_range(source, out, size, position)
                finally:
                    os.close(source)
                position += size
            if self.durability != "none":
                os.fsync(out)
        except BaseException:
            with contextlib.suppress(OSError):
                os.ftruncate(out, 0)  # an empty final upload, never a half-filled one
            os.close(out)
            raise
        os.close(out)  # a failed close (lost data) raises, unlike tusd before #698

    def _declare_length_sync(self, info: UploadInfo, length: int) -> UploadInfo:
        if info.size is not None:
            raise LengthAlreadyDeclared(f"upload {info.id}'s length is already {info.size}")
        if length < info.offset:
            raise LengthAlreadyDeclared(
                f"length {length} is smaller than the {info.offset} bytes already stored"
            )
        info = dataclasses.replace(info, size=length)
        self._write_info_sync(info)
        return info

    def _truncate_sync(self, info: UploadInfo, data_path: str, offset: int) -> None:
        if not 0 <= offset <= info.offset:
            raise ValueError(f"cannot truncate upload {info.id} at {offset} > {info.offset}")
        fd = os.open(data_path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.ftruncate(fd, offset)
            if self.durability == "always":
                os.fsync(fd)
        finally:
            os.close(fd)

    def _sync_after(self, info: UploadInfo, appended: int) -> bool:
        """Whether appending *appended* bytes to *info* ends with an fsync (the durability
        setting: always, or when the upload completes)."""
        complete = info.size is not None and info.offset + appended == info.size
        return self.durability == "always" or (self.durability == "finish" and complete)

    def _append_sync(self, info: UploadInfo, data_path: str, data: bytes) -> None:
        """Append *data* in one go: open, write, fsync as the durability setting says, close."""
        fd = os.open(data_path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
        _write_sync_close(fd, [data] if data else [], self._sync_after(info, len(data)))

    def _list_sync(self) -> list[str]:
        try:
            entries = os.listdir(self.path)
        except FileNotFoundError:
            return []
        ids = []
        for name in entries:
            upload_id, dot, suffix = name.partition(".")
            if suffix == "info" and dot:
                try:
                    ids.append(validate_upload_id(upload_id))
                except UploadNotFound:
                    continue
        return sorted(ids)

    def _remove_stale_temps_sync(self, now: float) -> None:
        with contextlib.suppress(FileNotFoundError), os.scandir(self.path) as entries:
            for entry in entries:
                if _TEMP_MARK in entry.name:
                    with contextlib.suppress(OSError):
                        if now - entry.stat().st_mtime > _STALE_TEMP_AGE:
                            os.unlink(entry.path)
                elif entry.name.startswith(RECORD_PREFIX):
                    # the lock record of a process that is gone (one that exits removes its own)
                    remove_dead_record(entry.path)


class _Loaded:
    """An upload of a :class:`FileStore` as loaded: its state and where its data is."""

    def __init__(self, store: FileStore, info: UploadInfo, data_path: str) -> None:
        self._store = store
        self._info = info
        self._data_path = data_path

    @property
    def info(self) -> UploadInfo:
        """The upload as loaded, updated by what was done to it since."""
        return self._info


class FileUpload(_Loaded, ThreadFedUpload):
    """One upload of a :class:`FileStore`, loaded once (see :meth:`FileStore.get_upload`)."""

    def __repr__(self) -> str:
        return f"<FileUpload {self._info.id} at {self._info.offset}/{self._info.size}>"

    async def write_chunk(self, source: AsyncIterable[bytes]) -> int:
        """Append the bytes of *source* at the loaded offset.

        Chunks are gathered, without copying, into batches of at least ``buffer_size`` bytes that a
        worker thread writes with one ``writev``; while it writes, the next batch is received, and
        everything received meanwhile goes in the next write. At most about ``16 * buffer_size``
        bytes per upload are in memory: receiving waits while ``8 * buffer_size`` are queued.
        Bytes taken from *source* are stored even when *source* raises or the task is cancelled:
        the exception then propagates, and the offset counts them.
        """
        store = self._store
        info = self._info
        remaining = None if info.size is None else info.size - info.offset
        fd = await store._run(_open_append, self._data_path)
        taken = 0  # bytes accepted from the source
        exceeded = False
        interruption: BaseException | None = None
        appender = _Appender(
            fd,
            store._limiter,
            batch_size=store.buffer_size,
            position=info.offset,
            writeback=store.durability != "none",
        )
        try:
            async with anyio.create_task_group() as tg:
                appender.task_group = tg
                try:
                    async for chunk in source:
                        if remaining is not None and len(chunk) > remaining - taken:
                            chunk, exceeded = chunk[: remaining - taken], True
                        taken += len(chunk)
                        if chunk:
                            await appender.add(chunk)
                        if exceeded or appender.failure is not None:
                            break
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    # raised once the task group is closed: raising it here would wrap it in an
                    # exception group
                    interruption = exc
                await appender.drain()
        finally:
            # what was received is stored (also when the source failed or we were cancelled),
            # the file is closed, and fsynced if the durability setting asks for it now
            sync = store._sync_after(info, taken)
            written = appender.written
            try:
                await appender.finish(sync)
                written = appender.written
                if appender.failure is not None:
                    # a write that failed half way (the disk filled up) left the bytes that
                    # fitted: they are stored, so they count
                    with anyio.CancelScope(shield=True):
                        written = await store._run(
                            _size_after_failure, self._data_path, info.offset
                        )
            except OSError as exc:
                # the last write, the fsync or the close failed: that data is not safe
                raise storage_error(exc, path=self._data_path) from exc
            finally:
                self._info = dataclasses.replace(
                    info, offset=info.offset + written, modified_at=time.time()
                )

        if interruption is not None:
            raise interruption
        if appender.failure is not None:
            raise storage_error(appender.failure, path=self._data_path) from appender.failure
        if exceeded:
            raise SizeExceeded(
                f"upload {info.id} is {info.size} bytes long: stored the {appender.written} "
                f"bytes that fit and refused the rest"
            )
        return appender.written

    async def write_through(self, transfer: Callable[[BodySink], Awaitable[T]]) -> T:
        """Append what *transfer* passes to its sink, written by the calling worker thread at
        once (see :meth:`~anytus.ThreadFedUpload.write_through`); writeback starts every
        ``buffer_size`` bytes, and the file is fsynced at the end as the durability setting
        says."""
        store = self._store
        info = self._info
        remaining = None if info.size is None else info.size - info.offset
        fd = await store._run(_open_append, self._data_path)
        written = 0
        flushed = 0  # what writeback was started for
        writeback = store.durability != "none"

        def sink(view: memoryview) -> None:
            nonlocal written, flushed
            if remaining is not None and len(view) > remaining - written:
                if remaining > written:
                    _write_all(fd, view[: remaining - written])
                    written = remaining
                raise SizeExceeded(
                    f"upload {info.id} is {info.size} bytes long: stored the "
                    f"{remaining} bytes that fit and refused the rest"
                )
            _write_all(fd, view)
            written += len(view)
            if writeback and written - flushed >= store.buffer_size:
                _start_writeback(fd, info.offset + flushed, written - flushed)
                flushed = written

        failure: OSError | None = None
        try:
            try:
                return await transfer(sink)
            except OSError as exc:
                failure = exc
                raise storage_error(exc, path=self._data_path) from exc
        finally:
            with anyio.CancelScope(shield=True):
                if failure is not None:
                    # a write that failed half way (the disk filled up) left the bytes that
                    # fitted: they are stored, so they count
                    written = await store._run(_size_after_failure, self._data_path, info.offset)
                sync = store._sync_after(info, written)
                try:
                    await store._run(_write_sync_close, fd, [], sync, alone=True, syncs=sync)
                finally:
                    self._info = dataclasses.replace(
                        info, offset=info.offset + written, modified_at=time.time()
                    )

    def get_reader(
        self, *, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[UploadReadStream]:
        return ReaderContext.of(self, self._store._open_reader, start, end)

    async def declare_length(self, length: int) -> UploadInfo:
        self._info = await self._store._run(
            self._store._declare_length_sync, self._info, length, syncs=True
        )
        return self._info

    async def truncate(self, offset: int) -> None:
        store = self._store
        await store._run(
            store._truncate_sync,
            self._info,
            self._data_path,
            offset,
            syncs=store.durability == "always",
        )
        self._info = dataclasses.replace(self._info, offset=offset)

    async def terminate(self) -> None:
        await self._store._run(self._store._terminate_sync, self._info.id, self._data_path)

    async def concat(self, partials: Sequence[Upload]) -> None:
        """Fill this empty final upload with the partials' bytes, in order: in the kernel where
        it can (``copy_file_range``, else a read/write loop). Every file is closed, and a failed
        copy leaves the final upload empty rather than half filled."""
        sources = []
        for partial in partials:
            if not isinstance(partial, FileUpload):
                raise TypeError(f"cannot concatenate {partial!r} into a FileStore upload")
            sources.append((partial._data_path, partial.info.offset))
        await self._store._run(
            self._store._concat_sync, self._info, self._data_path, sources, alone=True
        )
        total = sum(size for _, size in sources)
        self._info = dataclasses.replace(self._info, size=total, offset=total)


class _SyncFileUpload(_Loaded, SyncUpload):
    """A :class:`FileUpload` as seen from the worker thread of a one-hop request."""

    def write(self, data: bytes) -> int:
        info = self._info
        if info.size is not None and info.offset + len(data) > info.size:
            raise SizeExceeded(f"upload {info.id} is {info.size} bytes long")
        try:
            self._store._append_sync(info, self._data_path, data)
        except OSError:
            # what fitted before the failure (a full disk) is stored, and counts
            written = _size_after_failure(self._data_path, info.offset)
            self._info = dataclasses.replace(info, offset=info.offset + written)
            raise
        self._info = dataclasses.replace(
            info, offset=info.offset + len(data), modified_at=time.time()
        )
        return len(data)

    def declare_length(self, length: int) -> None:
        self._info = self._store._declare_length_sync(self._info, length)

    def truncate(self, offset: int) -> None:
        self._store._truncate_sync(self._info, self._data_path, offset)
        self._info = dataclasses.replace(self._info, offset=offset)

    def terminate(self) -> None:
        self._store._terminate_sync(self._info.id, self._data_path)


def check_directory(path: str | os.PathLike[str]) -> str | None:
    """Make sure *path* can hold a store, before serving it: create it (and its parents) if it
    is missing, then create, write and remove a file in it, and list it. Blocking.

    A full disk is no reason to refuse: uploads are read and deleted at 0 bytes free.

    :return: a warning to show if the storage is full, else ``None``
    :raises ~anytus.StorageError: with one line that names the path and the reason
    """
    directory = os.path.abspath(path)

    def fail(exc: OSError, doing: str) -> StorageError:
        kind = storage_error(exc)
        cls = type(kind) if isinstance(kind, StorageError) else StorageError
        return cls(f"{doing}: {exc.strerror or exc}", path=directory, errno=exc.errno)

    full = f"the storage at {directory} is full: uploads are answered 507 until space is freed"
    if os.path.exists(directory) and not os.path.isdir(directory):
        what = "is a file" if os.path.isfile(directory) else "exists and is"
        raise StorageError(f"{directory} {what}, not a directory", path=directory)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        # name the part of the path that is in the way, not just "Not a directory"
        parent = os.path.dirname(directory)
        while parent != os.path.dirname(parent) and not os.path.exists(parent):
            parent = os.path.dirname(parent)
        if exc.errno in (errno.ENOTDIR, errno.EEXIST) and not os.path.isdir(parent):
            raise StorageError(
                f"cannot create {directory}: {parent} is a file, not a directory",
                path=directory,
                errno=exc.errno,
            ) from exc
        raise fail(exc, f"cannot create {directory}") from exc
    try:
        os.listdir(directory)
    except OSError as exc:
        raise fail(exc, f"cannot read {directory}") from exc

    probe = os.path.join(directory, f".anytus-probe-{os.getpid()}-{secrets.token_hex(4)}")
    warning = None
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise fail(exc, f"cannot write to {directory}") from exc
        return full
    try:
        try:
            os.write(fd, b"anytus")
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise fail(exc, f"cannot write to {directory}") from exc
            warning = full
        finally:
            os.close(fd)
    finally:
        try:
            os.unlink(probe)
        except OSError as exc:
            raise fail(exc, f"cannot remove files in {directory}") from exc
    return warning


def _size_after_failure(path: str, offset: int) -> int:
    """How many bytes a failed append left in the data file after *offset* (0 if unknown)."""
    try:
        return max(os.stat(path).st_size - offset, 0)
    except OSError:
        return 0


def _open_append(path: str) -> int:
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UploadNotFound(f"the data file {os.path.basename(path)} is gone") from None


class _Appender:
    """Appends received chunks to a file, in order, one worker-thread hop per batch.

    Receiving and writing overlap: while a batch is written, chunks queue up (large ones as they
    are, small ones copied together), and the writer takes everything queued as its next batch
    as soon as it is free, so the thread never waits for a buffer to fill. Writes in progress are
    shielded: a cancelled upload still stores, and counts, every byte it received.
    """

    def __init__(
        self,
        fd: int,
        limiter: anyio.CapacityLimiter,
        *,
        batch_size: int,
        position: int,
        writeback: bool,
    ) -> None:
        self.task_group: anyio.abc.TaskGroup | None = None
        # where the next batch lands, and whether to start writing it back to disk at once
        self._position = position
        self._writeback = writeback
        #: bytes in the file
        self.written = 0
        #: the write error, if a write failed; nothing more is written after one
        self.failure: OSError | None = None
        self._fd = fd
        self._limiter = limiter
        self._batch_size = batch_size
        # deep enough that the thread-hop latency between two writes hides behind the write
        self._max_queued = 8 * batch_size
        self._queue: list[bytes | bytearray] = []
        self._queued = 0
        self._writing = False
        self._progress = anyio.Event()

    async def add(self, chunk: bytes) -> None:
        """Queue *chunk*; wait while too much is queued. The chunk is queued even if the wait
        is cancelled."""
        if len(chunk) < _SMALL_CHUNK:
            last = self._queue[-1] if self._queue else None
            if isinstance(last, bytearray) and len(last) < self._batch_size:
                last += chunk
            else:
                self._queue.append(bytearray(chunk))
        else:
            self._queue.append(chunk)
        self._queued += len(chunk)
        if not self._writing:
            if self._queued >= self._batch_size:
                self._start()
            return
        while self._writing and self._queued >= self._max_queued:
            await self._wait_for_progress()

    async def drain(self) -> None:
        """Wait, shielded, until writes in progress are done; leave the rest to :meth:`finish`."""
        with anyio.CancelScope(shield=True):
            while self._writing:
                await self._wait_for_progress()

    async def finish(self, sync: bool) -> None:
        """Write what is still queued, fsync if *sync*, and close the file: one shielded hop."""
        with anyio.CancelScope(shield=True):
            await self.drain()
            queue, size = self._queue, self._queued
            self._queue, self._queued = [], 0
            if self.failure is not None:
                queue, size = [], 0
            try:
                await anyio.to_thread.run_sync(
                    _write_sync_close, self._fd, queue, sync, limiter=self._limiter
                )
            except OSError as exc:
                if self.failure is None and queue:
                    self.failure = exc
                    return
                raise
            self.written += size

    def _start(self) -> None:
        assert self.task_group is not None
        self._writing = True
        self.task_group.start_soon(self._write_batches)

    async def _wait_for_progress(self) -> None:
        self._progress = anyio.Event()
        await self._progress.wait()

    async def _write_batches(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                while self.failure is None and self._queued >= self._batch_size:
                    batch, size = self._queue, self._queued
                    self._queue, self._queued = [], 0
                    self._progress.set()
                    try:
                        await anyio.to_thread.run_sync(
                            _write_batch,
                            self._fd,
                            batch,
                            self._position if self._writeback else -1,
                            limiter=self._limiter,
                        )
                    except OSError as exc:
                        self.failure = exc
                    else:
                        self.written += size
                        self._position += size
            finally:
                self._writing = False
                self._progress.set()


def _read_file(path: str) -> bytes:
    """A small file's content, in as few system calls as it takes (open, read, close)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
            if len(chunk) < 65536:
                break  # a short read of a regular file is its end
        return b"".join(chunks)
    finally:
        os.close(fd)


def _open_read(path: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise UploadNotFound(f"the data file {os.path.basename(path)} is gone") from None


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _writev_all(fd: int, buffers: list[bytes | bytearray]) -> None:
    views = [memoryview(buffer) for buffer in buffers]
    first = 0
    while first < len(views):
        n = os.writev(fd, views[first : first + _IOV_MAX])
        while first < len(views) and n >= len(views[first]):
            n -= len(views[first])
            first += 1
        if n:
            views[first] = views[first][n:]


def _write_batch(fd: int, buffers: list[bytes | bytearray], writeback_from: int) -> None:
    _writev_all(fd, buffers)
    if writeback_from >= 0:
        _start_writeback(fd, writeback_from, sum(len(buffer) for buffer in buffers))


def _load_sync_file_range() -> Callable[[int, int, int], None] | None:
    """libc's ``sync_file_range`` (Linux), which Python's ``os`` does not offer."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        function = libc.sync_file_range
    except (OSError, AttributeError):  # pragma: no cover - not glibc/musl
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
    function.restype = ctypes.c_int

    def sync_file_range(fd: int, offset: int, length: int) -> None:
        function(fd, offset, length, _SYNC_FILE_RANGE_WRITE)

    return sync_file_range


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range = _load_sync_file_range()


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing a range back to disk without waiting for it, so that the fsync when the
    upload completes finds little left to do (best effort: errors surface at that fsync)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length)


def _write_sync_close(fd: int, buffers: list[bytes | bytearray], sync: bool) -> None:
    try:
        if buffers:
            _writev_all(fd, buffers)
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        raise
    os.close(fd)  # a failed close (lost data) raises, unlike tusd before #698


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise


def _copy_range(source: int, out: int, size: int, position: int) -> None:
    """Copy *size* bytes from the start of *source* to *position* in *out*, in the kernel where
    it can."""
    copied = 0
    try:
        while copied < size:
            n = os.copy_file_range(source, out, size - copied, copied, position + copied)
            if n == 0:
                raise OSError(errno.EIO, "partial upload ended early")
            copied += n
        return
    except OSError as exc:
        # not across these file systems, or not on this kernel: fall back
        if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
    except AttributeError:  # pragma: no cover - no copy_file_range on this platform
        pass
    while copied < size:
        chunk = os.pread(source, min(1 << 20, size - copied), copied)
        if not chunk:
            raise OSError(errno.EIO, "partial upload ended early")
        written = 0
        while written < len(chunk):
            written += os.pwrite(out, chunk[written:], position + copied + written)
        copied += len(chunk)
