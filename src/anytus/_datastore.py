"""The data store interfaces, one per capability, and the composer that collects them.

As in tusd's ``datastore.go``: the protocol handler validates headers, offsets, sizes and finality,
takes the lock and caps the body; a store only stores. The handler advertises exactly the tus
extensions whose interface the store implements.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, TypeVar

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Sequence

    from anyio.abc import ByteReceiveStream

    from ._asgi_types import BodySink
    from ._info import UploadInfo

__all__ = (
    "ConcatenatableStore",
    "DataStore",
    "InlineHold",
    "OneHopStore",
    "SyncUpload",
    "Upload",
    "ExpiringStore",
    "LengthDeferrableStore",
    "Locker",
    "StoreComposer",
    "TerminatableStore",
    "ThreadFedUpload",
    "TruncatableStore",
)

T = TypeVar("T")

#: how long a lock waits by default, as tusd's ``AcquireLockTimeout``
DEFAULT_LOCK_TIMEOUT = 20.0


class DataStore(ABC):
    """The core every store implements: create, write, inspect and read uploads."""

    @abstractmethod
    async def new_upload(self, info: UploadInfo) -> UploadInfo:
        """Create an empty upload described by *info* and return it with its new ID.

        :raises OSError: if the storage cannot be written
        """

    @abstractmethod
    async def get_upload(self, upload_id: str) -> Upload:
        """Load the upload, once, to act on it (call it while holding the upload's lock).

        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        :raises ~anytus.UploadNotFound: if there is no such upload
        :raises ~anytus.CorruptUploadInfo: if its stored information is unreadable
        """

    @abstractmethod
    async def get_info(self, upload_id: str) -> UploadInfo:
        """Return the upload's current state; its ``offset`` is the number of bytes stored.

        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        :raises ~anytus.UploadNotFound: if there is no such upload
        :raises ~anytus.CorruptUploadInfo: if its stored information is unreadable
        """

    @abstractmethod
    async def write_chunk(self, upload_id: str, offset: int, source: AsyncIterable[bytes]) -> int:
        """Append the bytes from *source* at *offset* and return how many were stored.

        Every byte taken from *source* before it raises, or before the calling task is
        cancelled, is stored and counted in the offset; the exception then propagates.

        :raises ~anytus.OffsetMismatch: if *offset* is not the upload's current offset
        :raises ~anytus.SizeExceeded: if *source* goes past the upload's size (what fits is
            stored first)
        :raises ~anytus.UploadIsFinal: if the upload is a final upload
        :raises ~anytus.UploadNotFound: if there is no such upload
        """

    @abstractmethod
    def get_reader(
        self, upload_id: str, *, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[ByteReceiveStream]:
        """Open a stream over the stored bytes ``[start, end)`` (*end* defaults to the offset).

        The stream raises :exc:`anyio.EndOfStream` after the last byte; its file is closed when
        the context exits, on cancellation too.

        :raises ~anytus.UploadNotFound: if there is no such upload (on entering the context)
        """


class Upload(ABC):
    """One upload, loaded once per request (tusd v1+'s ``handler.Upload``).

    Get one with :meth:`DataStore.get_upload` while holding the upload's lock. Its methods trust
    :attr:`info` as loaded: the protocol handler has checked it, so nothing is read twice. They
    still never write past a known size. The extension methods are there when the store
    registers the extension (see :class:`StoreComposer`).
    """

    @property
    @abstractmethod
    def info(self) -> UploadInfo:
        """The upload as loaded (its ``offset`` is the number of bytes stored then)."""

    @abstractmethod
    async def write_chunk(self, source: AsyncIterable[bytes]) -> int:
        """Append the bytes from *source* at :attr:`info`'s offset; return how many were stored.

        Bytes past the upload's size are not stored: the write stops there and raises. Every
        byte taken from *source* before it raises, or before the task is cancelled, is stored
        and counted; the exception then propagates.

        :raises ~anytus.SizeExceeded: if *source* goes past the size (what fits is stored)
        :raises ~anytus.StorageError: if the storage fails
        """

    @abstractmethod
    def get_reader(
        self, *, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[ByteReceiveStream]:
        """Open a stream over the stored bytes ``[start, end)`` (*end* defaults to the offset)."""

    async def declare_length(self, length: int) -> UploadInfo:
        """Set the deferred length (creation-defer-length); return the new state."""
        raise NotImplementedError

    async def truncate(self, offset: int) -> None:
        """Discard every byte after *offset* (the checksum extension's rollback)."""
        raise NotImplementedError

    async def terminate(self) -> None:
        """Delete the upload (termination)."""
        raise NotImplementedError

    async def concat(self, partials: Sequence[Upload]) -> None:
        """Fill this empty final upload with the bytes of complete *partials*, in order."""
        raise NotImplementedError


class ThreadFedUpload(Upload):
    """An upload that can also take its bytes from a worker thread, one piece at a time: how a
    body that anytus's own server receives straight from the socket is stored without an event
    loop hop per piece (see :meth:`write_through`)."""

    @abstractmethod
    async def write_through(self, transfer: Callable[[BodySink], Awaitable[T]]) -> T:
        """Run ``transfer(sink)`` and append, at :attr:`info`'s offset, every piece that it
        passes to *sink*, which a worker thread calls (and which writes at once); return what
        *transfer* returns.

        Every piece passed before *transfer* returns, raises or is cancelled is stored and
        counted in :attr:`info`. *sink* raises :class:`~anytus.SizeExceeded` for a piece that
        goes past a known size (what fits is stored), and :class:`OSError` if the storage fails.
        """


class SyncUpload(ABC):
    """An upload as a worker thread sees it in :meth:`OneHopStore.run_nowait`: blocking calls."""

    @property
    @abstractmethod
    def info(self) -> UploadInfo:
        """The upload as loaded, updated by the calls below."""

    @abstractmethod
    def write(self, data: bytes) -> int:
        """Append *data* (which the caller has checked fits); return the bytes stored."""

    @abstractmethod
    def declare_length(self, length: int) -> None:
        """Set the deferred length."""

    @abstractmethod
    def truncate(self, offset: int) -> None:
        """Discard every byte after *offset*."""

    @abstractmethod
    def terminate(self) -> None:
        """Delete the upload."""


class OneHopStore(ABC):
    """A store that does a small request's whole work in one worker-thread hop."""

    @abstractmethod
    async def run_nowait(
        self, upload_id: str, fn: Callable[[SyncUpload], T], *, read_only: bool = False
    ) -> T:
        """Take the upload's lock, load the upload, call ``fn(upload)``, let the lock go: all
        in one worker thread, if the lock is free now.

        *fn* runs in a worker thread: it may block, and must not touch the event loop. With
        *read_only*, *fn* may only read (:attr:`SyncUpload.info`), and the lock is only checked
        to be free.

        :raises ~anyio.WouldBlock: if the lock is held (nothing was done); take it with
            :meth:`Locker.acquire` and use :meth:`DataStore.get_upload` instead
        :raises ~anytus.UploadNotFound: if there is no such upload
        """


class TerminatableStore(ABC):
    """The termination extension: delete an upload."""

    @abstractmethod
    async def terminate(self, upload_id: str) -> None:
        """Delete the upload's data, then its information.

        :raises ~anytus.UploadNotFound: if there is no such upload
        """


class ConcatenatableStore(ABC):
    """The concatenation extension: build a final upload from complete partial uploads."""

    @abstractmethod
    async def concat_uploads(self, final_id: str, partial_ids: Sequence[str]) -> None:
        """Fill the (empty) final upload with the bytes of the partial uploads, in order.

        :raises ~anytus.UploadNotFinished: if a partial upload is not complete
        :raises ~anytus.UploadNotFound: if the final or a partial upload does not exist
        """


class LengthDeferrableStore(ABC):
    """The creation-defer-length extension: set the length of an upload created without one."""

    @abstractmethod
    async def declare_length(self, upload_id: str, length: int) -> UploadInfo:
        """Set the upload's length, once, and return its new state.

        :raises ~anytus.LengthAlreadyDeclared: if the length is known already or is smaller
            than the offset
        """


class TruncatableStore(ABC):
    """Rolling an upload back to an earlier offset: what the checksum extension needs."""

    @abstractmethod
    async def truncate(self, upload_id: str, offset: int) -> None:
        """Discard every byte after *offset*.

        :raises ValueError: if *offset* is larger than the upload's offset
        """


class ExpiringStore(ABC):
    """The expiration extension: list uploads and remove the stale ones."""

    @abstractmethod
    async def list_uploads(self) -> list[str]:
        """Return the IDs of every upload in the store."""

    @abstractmethod
    async def cleanup(self, expire_after: float, *, now: float | None = None) -> list[str]:
        """Remove every unfinished upload not written to for *expire_after* seconds.

        Uploads that are locked (in use) are skipped, without disturbing their holders.
        Returns the IDs removed.
        """


class Locker(ABC):
    """Exclusive access to uploads, with release requests (tusd v2's ``Locker``).

    A request that wants a lock held by another asks the holder to let go: the holder's
    *on_release* callback is called once, in the holder's event loop; a protocol handler
    cancels its request with it, and the lock changes hands as soon as the holder exits.
    """

    @abstractmethod
    async def acquire(
        self,
        upload_id: str,
        *,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
        on_release: Callable[[], object] | None = None,
    ) -> None:
        """Take the upload's lock, waiting at most *timeout* seconds. Always a checkpoint.

        :raises ~anytus.LockTimeout: if the lock could not be taken in time
        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        """

    @abstractmethod
    async def acquire_nowait(self, upload_id: str) -> None:
        """Take the upload's lock if it is free now; never wait, never ask a holder to let go.

        Always a checkpoint (unlike :meth:`anyio.Lock.acquire_nowait`, because telling whether
        a lock shared between processes is free may take a system call, which runs in a worker
        thread).

        :raises ~anyio.WouldBlock: if the lock is held
        """

    @abstractmethod
    async def release(self, upload_id: str) -> None:
        """Release a lock this locker holds. Releasing a lock that is not held does nothing."""

    def lock(
        self,
        upload_id: str,
        *,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
        on_release: Callable[[], object] | None = None,
    ) -> AbstractAsyncContextManager[None]:
        """Hold the upload's lock for the duration of an ``async with`` block.

        Entering is a checkpoint; exiting releases the lock, shielded from cancellation.
        """
        return _LockContext(self, upload_id, timeout, on_release)

    @abstractmethod
    def locked(self, upload_id: str) -> bool:
        """Whether this locker currently holds the upload's lock."""

    def hold_inline(self, upload_id: str, *, shared: bool = False) -> InlineHold:
        """Reserve the upload's lock for one worker-thread hop, without waiting.

        For stores that do a small request's whole work (lock, load, write, unlock) in one
        worker thread. The reservation is made here, in the event loop, and keeps other tasks of
        this process out; :meth:`InlineHold.enter` takes the lock itself in the worker thread
        (for a lock shared between processes), :meth:`InlineHold.exit` lets it go there, and
        :meth:`InlineHold.close` ends the reservation, back in the event loop. A *shared* hold
        only makes sure that nobody holds the lock (for a read): it keeps nobody out.

        Not a checkpoint. A locker that cannot do this raises :exc:`NotImplementedError` (the
        default); callers then take the lock with :meth:`acquire`.

        :raises ~anyio.WouldBlock: if this process holds the lock already
        """
        raise NotImplementedError


class InlineHold:
    """A lock reserved by :meth:`Locker.hold_inline`, to be taken in a worker thread."""

    __slots__ = ("blocking", "close", "enter", "exit")

    def __init__(
        self,
        *,
        enter: Callable[[], bool],
        exit: Callable[[], None],
        close: Callable[[], None],
        blocking: bool = True,
    ) -> None:
        #: take the lock (worker thread); ``False`` if another process holds it
        self.enter = enter
        #: let the lock go after a successful :attr:`enter` (worker thread)
        self.exit = exit
        #: end the reservation (event loop), whatever happened
        self.close = close
        #: whether :attr:`enter` and :attr:`exit` block (make system calls): then they must run
        #: in a worker thread; if not, a store may call them in the event loop
        self.blocking = blocking


class _LockContext(AbstractAsyncContextManager[None]):
    def __init__(
        self,
        locker: Locker,
        upload_id: str,
        timeout: float,
        on_release: Callable[[], object] | None,
    ) -> None:
        self._locker = locker
        self._upload_id = upload_id
        self._timeout = timeout
        self._on_release = on_release

    async def __aenter__(self) -> None:
        await self._locker.acquire(
            self._upload_id, timeout=self._timeout, on_release=self._on_release
        )

    async def __aexit__(self, *exc_info: object) -> None:
        with anyio.CancelScope(shield=True):
            await self._locker.release(self._upload_id)


class StoreComposer:
    """Collects the capabilities of one or more stores, as tusd's ``StoreComposer`` does.

    A store registers itself with :meth:`FileStore.use_in <anytus.FileStore.use_in>`; the protocol
    handler reads the attributes to decide what it can do and which extensions to advertise.
    """

    def __init__(self) -> None:
        self.core: DataStore | None = None
        self.terminater: TerminatableStore | None = None
        self.concater: ConcatenatableStore | None = None
        self.length_deferrer: LengthDeferrableStore | None = None
        self.truncater: TruncatableStore | None = None
        self.expirer: ExpiringStore | None = None
        self.locker: Locker | None = None

    def use_core(self, store: DataStore) -> None:
        """Register the core store."""
        self.core = store

    def use_terminater(self, store: TerminatableStore) -> None:
        """Register the termination extension."""
        self.terminater = store

    def use_concater(self, store: ConcatenatableStore) -> None:
        """Register the concatenation extension."""
        self.concater = store

    def use_length_deferrer(self, store: LengthDeferrableStore) -> None:
        """Register the creation-defer-length extension."""
        self.length_deferrer = store

    def use_truncater(self, store: TruncatableStore) -> None:
        """Register rollback, which the checksum extension needs."""
        self.truncater = store

    def use_expirer(self, store: ExpiringStore) -> None:
        """Register listing and cleanup, which the expiration extension needs."""
        self.expirer = store

    def use_locker(self, locker: Locker) -> None:
        """Register the locker."""
        self.locker = locker
