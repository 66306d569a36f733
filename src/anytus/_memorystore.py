"""`MemoryStore`: uploads kept in memory, in one process, with :class:`~anytus.FileStore`'s API.

Made for tests (yours and ours) and for small, short-lived servers: nothing survives the process,
and every upload's bytes live in one :class:`bytearray`. Memory operations never block, so nothing
runs in a worker thread; every coroutine is still a checkpoint, as trio asks.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._datastore import (
    Locker,
    SyncUpload,
    Upload,
)
from ._exceptions import (
    LengthAlreadyDeclared,
    SizeExceeded,
    UploadExists,
    UploadNotFound,
)
from ._ids import new_upload_id, validate_upload_id
from ._locks import MemoryLocker
from ._storebase import ReaderContext, StoreBase
from ._streams import RangeReadStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from ._info import UploadInfo

__all__ = ("MemoryReadStream", "MemoryStore", "MemoryUpload")

T = TypeVar("T")

#: the largest chunk a reader hands out when ``receive`` is called without ``max_bytes``
_READ_CHUNK = 1 << 20


@dataclasses.dataclass(eq=False)
class _Entry:
    """One stored upload: what ``[id].info`` and ``[id].bin`` hold for a :class:`FileStore`."""

    #: the upload as created (``offset`` and ``modified_at`` are not kept up to date here)
    info: UploadInfo
    data: bytearray
    #: when data was last written or removed (a data file's mtime)
    modified_at: float

    def snapshot(self) -> UploadInfo:
        return dataclasses.replace(self.info, offset=len(self.data), modified_at=self.modified_at)


class MemoryStore(StoreBase):
    """Uploads in memory, in one process: :class:`~anytus.FileStore`'s API and behaviour (the same
    exceptions, offsets and checks) without a file system.

    Use it in tests, or to serve uploads that need not outlive the process. Each upload's bytes
    are kept in one :class:`bytearray`, so the store holds every byte it was sent.

    :param locker: the locks; by default a :class:`~anytus.MemoryLocker`, exclusive between the
        tasks of this process
    :param clock: the wall clock, in seconds since the epoch: it stamps
        :attr:`~anytus.UploadInfo.modified_at` on every write, and is ``now`` for
        :meth:`cleanup`. Tests pass their own to drive expiry
    """

    def __init__(
        self,
        *,
        locker: Locker | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.locker: Locker = locker if locker is not None else MemoryLocker()
        self.clock = clock
        self._uploads: dict[str, _Entry] = {}

    def __repr__(self) -> str:
        return f"<MemoryStore with {len(self._uploads)} uploads>"

    def _entry(self, upload_id: str) -> _Entry:
        entry = self._uploads.get(validate_upload_id(upload_id))
        if entry is None:
            raise UploadNotFound(f"upload {upload_id} not found")
        return entry

    # -- core -------------------------------------------------------------------------------

    async def new_upload(self, info: UploadInfo) -> UploadInfo:
        """Create an empty upload described by *info*; return it with its ID and
        ``storage = {"Type": "memorystore"}``.

        *info* may carry an ID of its own (it is validated); otherwise a new one is made.

        :raises ~anytus.InvalidUploadId: if *info* carries a malformed ID
        :raises ~anytus.UploadExists: if *info* carries the ID of an existing upload
        """
        await anyio.lowlevel.checkpoint()
        upload_id = validate_upload_id(info.id) if info.id else new_upload_id()
        if upload_id in self._uploads:
            raise UploadExists(f"upload {upload_id} exists already")
        entry = _Entry(
            dataclasses.replace(info, id=upload_id, offset=0, storage={"Type": "memorystore"}),
            bytearray(),
            self.clock(),
        )
        self._uploads[upload_id] = entry
        return entry.snapshot()

    async def get_upload(self, upload_id: str) -> MemoryUpload:
        """Load the upload to act on it (call it while holding the upload's lock).

        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        :raises ~anytus.UploadNotFound: if there is no such upload
        """
        await anyio.lowlevel.checkpoint()
        return MemoryUpload(self, self._entry(upload_id))

    async def get_info(self, upload_id: str) -> UploadInfo:
        """Return the upload's state, with ``offset`` = the number of bytes stored.

        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        :raises ~anytus.UploadNotFound: if there is no such upload
        """
        return (await self.get_upload(upload_id)).info

    def get_reader(
        self, upload_id: str, *, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[MemoryReadStream]:
        """Open a stream over the stored bytes ``[start, end)``; *end* defaults to the offset
        when the stream is opened.

        Use it as ``async with store.get_reader(id) as stream: async for chunk in stream: ...``.
        Entering the context is a checkpoint; exiting closes the stream.

        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        :raises ~anytus.UploadNotFound: on entering, if there is no such upload
        :raises ValueError: on entering, if the range is not within the stored bytes
        """
        validate_upload_id(upload_id)
        return ReaderContext(
            functools.partial(self.get_upload, upload_id), self._open_reader, start, end
        )

    async def _open_reader(self, upload: MemoryUpload, start: int, end: int) -> MemoryReadStream:
        return MemoryReadStream(upload._live_entry().data, start, end)

    # -- one hop ----------------------------------------------------------------------------

    async def run_nowait(
        self, upload_id: str, fn: Callable[[SyncUpload], T], *, read_only: bool = False
    ) -> T:
        """Lock, load, ``fn(upload)`` and unlock at once, if the lock is free (see
        :meth:`~anytus.OneHopStore.run_nowait`).

        *fn* runs in the event loop, since nothing here blocks. With a locker whose locks need
        a system call (a :class:`~anytus.FileLocker`), taking and letting go of the lock run in a
        worker thread.

        :raises ~anyio.WouldBlock: if the lock is held (nothing was done)
        :raises ~anytus.UploadNotFound: if there is no such upload
        """
        await anyio.lowlevel.checkpoint()
        validate_upload_id(upload_id)
        try:
            hold = self.locker.hold_inline(upload_id, shared=read_only)
        except NotImplementedError:
            raise anyio.WouldBlock from None
        inline = not hold.blocking
        try:
            entered = hold.enter() if inline else await anyio.to_thread.run_sync(hold.enter)
            if not entered:
                raise anyio.WouldBlock
            try:
                return fn(_SyncMemoryUpload(self, self._entry(upload_id)))
            finally:
                if inline:
                    hold.exit()
                else:
                    with anyio.CancelScope(shield=True):
                        await anyio.to_thread.run_sync(hold.exit)
        finally:
            hold.close()

    # -- extensions -------------------------------------------------------------------------

    async def terminate(self, upload_id: str) -> None:
        """Delete the upload.

        :raises ~anytus.UploadNotFound: if there is no such upload
        """
        await (await self.get_upload(upload_id)).terminate()

    async def list_uploads(self) -> list[str]:
        """Return the IDs of every upload in the store."""
        await anyio.lowlevel.checkpoint()
        return sorted(self._uploads)

    def _now(self) -> float:
        return self.clock()


class _Loaded:
    """An upload of a :class:`MemoryStore` as loaded: its state then, and its entry."""

    def __init__(self, store: MemoryStore, entry: _Entry) -> None:
        self._store = store
        self._entry = entry
        self._info = entry.snapshot()

    @property
    def info(self) -> UploadInfo:
        """The upload as loaded, updated by what was done to it since."""
        return self._info


class MemoryUpload(_Loaded, Upload):
    """One upload of a :class:`MemoryStore`, loaded once (see :meth:`MemoryStore.get_upload`)."""

    def __repr__(self) -> str:
        return f"<MemoryUpload {self._info.id} at {self._info.offset}/{self._info.size}>"

    def _live_entry(self) -> _Entry:
        """The entry, if the upload still exists (a data file that is gone, for FileStore)."""
        if self._store._uploads.get(self._info.id) is not self._entry:
            raise UploadNotFound(f"upload {self._info.id} is gone")
        return self._entry

    async def write_chunk(self, source: AsyncIterable[bytes]) -> int:
        """Append the bytes of *source*: each chunk is stored as it arrives, so bytes taken are
        kept even when *source* raises or the task is cancelled."""
        await anyio.lowlevel.checkpoint()
        entry = self._live_entry()
        info = self._info
        remaining = None if info.size is None else info.size - info.offset
        written = 0
        exceeded = False
        try:
            async for chunk in source:
                if remaining is not None and len(chunk) > remaining - written:
                    chunk, exceeded = chunk[: remaining - written], True
                if chunk:
                    # stored at once: a source error or a cancellation loses nothing taken
                    entry.data += chunk
                    entry.modified_at = self._store.clock()
                    written += len(chunk)
                if exceeded:
                    break
        finally:
            self._info = entry.snapshot()
        if exceeded:
            raise SizeExceeded(
                f"upload {info.id} is {info.size} bytes long: stored the {written} "
                f"bytes that fit and refused the rest"
            )
        return written

    def get_reader(
        self, *, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[MemoryReadStream]:
        return ReaderContext.of(self, self._store._open_reader, start, end)

    async def declare_length(self, length: int) -> UploadInfo:
        await anyio.lowlevel.checkpoint()
        self._info = _declare_length(self._live_entry(), self._info, length)
        return self._info

    async def truncate(self, offset: int) -> None:
        await anyio.lowlevel.checkpoint()
        self._info = _truncate(self._store, self._live_entry(), self._info, offset)

    async def terminate(self) -> None:
        await anyio.lowlevel.checkpoint()
        _terminate(self._store, self._info.id)

    async def concat(self, partials: Sequence[Upload]) -> None:
        await anyio.lowlevel.checkpoint()
        entry = self._live_entry()
        info = self._info
        sources = []
        for partial in partials:
            if not isinstance(partial, MemoryUpload):
                raise TypeError(f"cannot concatenate {partial!r} into a MemoryStore upload")
            sources.append(partial._live_entry().data[: partial.info.offset])
        if info.offset != 0:
            raise ValueError(f"final upload {info.id} is not empty")
        total = sum(len(source) for source in sources)
        if info.size is None:
            entry.info = dataclasses.replace(entry.info, size=total)
        elif info.size != total:
            raise ValueError(f"final upload {info.id} is {info.size} bytes, its partials {total}")
        entry.data += b"".join(sources)
        entry.modified_at = self._store.clock()
        self._info = entry.snapshot()


class _SyncMemoryUpload(_Loaded, SyncUpload):
    """A :class:`MemoryUpload` as :meth:`MemoryStore.run_nowait` hands it to its function."""

    def write(self, data: bytes) -> int:
        info = self._info
        if info.size is not None and info.offset + len(data) > info.size:
            raise SizeExceeded(f"upload {info.id} is {info.size} bytes long")
        if data:
            self._entry.data += data
            self._entry.modified_at = self._store.clock()
        self._info = self._entry.snapshot()
        return len(data)

    def declare_length(self, length: int) -> None:
        self._info = _declare_length(self._entry, self._info, length)

    def truncate(self, offset: int) -> None:
        self._info = _truncate(self._store, self._entry, self._info, offset)

    def terminate(self) -> None:
        _terminate(self._store, self._info.id)


def _declare_length(entry: _Entry, info: UploadInfo, length: int) -> UploadInfo:
    if info.size is not None:
        raise LengthAlreadyDeclared(f"upload {info.id}'s length is already {info.size}")
    if length < info.offset:
        raise LengthAlreadyDeclared(
            f"length {length} is smaller than the {info.offset} bytes already stored"
        )
    entry.info = dataclasses.replace(entry.info, size=length)
    return dataclasses.replace(info, size=length)


def _truncate(store: MemoryStore, entry: _Entry, info: UploadInfo, offset: int) -> UploadInfo:
    if not 0 <= offset <= info.offset:
        raise ValueError(f"cannot truncate upload {info.id} at {offset} > {info.offset}")
    if offset < len(entry.data):
        del entry.data[offset:]
        entry.modified_at = store.clock()
    return entry.snapshot()


def _terminate(store: MemoryStore, upload_id: str) -> None:
    if store._uploads.pop(upload_id, None) is None:
        raise UploadNotFound(f"upload {upload_id} not found")


class MemoryReadStream(RangeReadStream):
    """Reads a byte range of a :class:`MemoryStore` upload (what :meth:`MemoryStore.get_reader`
    opens), in chunks of at most 1 MiB by default.

    The range is fixed when the stream is opened; bytes are copied out chunk by chunk, so writes
    that append to the upload meanwhile are never blocked. A truncation below the range breaks
    the stream.
    """

    _source = "the upload's data"

    def __init__(self, data: bytearray, start: int, end: int) -> None:
        super().__init__(end - start, _READ_CHUNK)
        self._data = data
        self._position = start

    async def _read(self, size: int) -> bytes:
        await anyio.lowlevel.checkpoint()
        data = bytes(self._data[self._position : self._position + size])
        self._position += len(data)
        return data

    async def aclose(self) -> None:
        """Close the stream. Idempotent; a checkpoint, but the stream is closed even when the
        closing task is cancelled."""
        self._closed = True
        await anyio.lowlevel.checkpoint()
