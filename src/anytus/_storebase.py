"""What every store of anytus shares: the lock methods, ``use_in``, expiry cleanup and the
readers' context."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Generic, TypeVar

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream

from ._core import is_expired
from ._datastore import (
    DEFAULT_LOCK_TIMEOUT,
    ConcatenatableStore,
    DataStore,
    ExpiringStore,
    LengthDeferrableStore,
    OneHopStore,
    TerminatableStore,
    TruncatableStore,
    Upload,
)
from ._exceptions import (
    CorruptUploadInfo,
    OffsetMismatch,
    StorageError,
    UploadIsFinal,
    UploadNotFinished,
    UploadNotFound,
)
from ._oncelog import OnceLog

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Sequence
    from contextlib import AbstractAsyncContextManager
    from types import TracebackType

    from ._datastore import Locker, StoreComposer
    from ._info import UploadInfo

__all__ = ("CoreStoreBase", "ReaderContext", "StoreBase")

UploadT = TypeVar("UploadT", bound=Upload)
StreamT = TypeVar("StreamT", bound=ByteReceiveStream)

#: uploads that cleanup cannot read or remove are logged once, not on every pass
_cleanup_log = OnceLog(logging.getLogger("anytus.store"))


class CoreStoreBase(
    DataStore,
    TerminatableStore,
    ConcatenatableStore,
    LengthDeferrableStore,
    TruncatableStore,
    ExpiringStore,
):
    """A store with every capability but one-hop requests, and a :class:`~anytus.Locker` of its
    own (``locker``): what :class:`StoreBase` is without :class:`~anytus.OneHopStore`, for stores
    whose requests cannot be done in one worker-thread hop (:class:`~anytus.S3Store`).

    Subclasses implement the storage; this gives them tusd's lock methods, ``use_in`` and
    :meth:`cleanup`, written once.
    """

    #: the store's locks
    locker: Locker

    def _now(self) -> float:
        """The wall clock, in seconds since the epoch (what expiry is judged by)."""
        return time.time()

    def lock(
        self,
        upload_id: str,
        *,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
        on_release: Callable[[], object] | None = None,
    ) -> AbstractAsyncContextManager[None]:
        """Hold the upload's lock for an ``async with`` block (see :class:`~anytus.Locker`).

        :raises ~anytus.LockTimeout: on entering, if the lock was not acquired in *timeout* s
        """
        return self.locker.lock(upload_id, timeout=timeout, on_release=on_release)

    async def lock_upload(
        self,
        upload_id: str,
        *,
        timeout: float = DEFAULT_LOCK_TIMEOUT,
        on_release: Callable[[], object] | None = None,
    ) -> None:
        """Take the upload's lock (tusd's ``LockUpload``); pair with :meth:`unlock_upload`.

        :raises ~anytus.LockTimeout: if the lock was not acquired in *timeout* seconds
        """
        await self.locker.acquire(upload_id, timeout=timeout, on_release=on_release)

    async def unlock_upload(self, upload_id: str) -> None:
        """Release the upload's lock (tusd's ``UnlockUpload``)."""
        await self.locker.release(upload_id)

    def use_in(self, composer: StoreComposer) -> None:
        """Register the core and every extension this store has, and its locker."""
        composer.use_core(self)
        composer.use_terminater(self)
        composer.use_concater(self)
        composer.use_length_deferrer(self)
        composer.use_truncater(self)
        composer.use_expirer(self)
        composer.use_locker(self.locker)

    async def write_chunk(self, upload_id: str, offset: int, source: AsyncIterable[bytes]) -> int:
        """Append the bytes of *source* to the upload, starting at *offset* (checked here, then
        written by the upload object: :meth:`~anytus.FileUpload.write_chunk`).

        Bytes taken from *source* are stored even when *source* raises or the task is cancelled:
        the exception then propagates, and the offset counts them.

        :return: the number of bytes stored
        :raises ~anytus.OffsetMismatch: if *offset* is not the upload's offset
        :raises ~anytus.SizeExceeded: if *source* holds more than the upload's remaining length;
            what fits is stored first
        :raises ~anytus.UploadIsFinal: if the upload is a final upload
        :raises ~anytus.UploadNotFound: if there is no such upload
        """
        upload = await self.get_upload(upload_id)
        info = upload.info
        if info.is_final:
            raise UploadIsFinal(f"upload {upload_id} is a final upload and accepts no data")
        if offset != info.offset:
            raise OffsetMismatch(f"upload {upload_id} is at offset {info.offset}, not {offset}")
        return await upload.write_chunk(source)

    async def concat_uploads(self, final_id: str, partial_ids: Sequence[str]) -> None:
        """Fill the empty final upload with the partial uploads' bytes, in order.

        If the final upload's size is deferred, it is set to the sum of the partials'.

        :raises ~anytus.UploadNotFinished: if a partial upload is not complete
        :raises ~anytus.UploadNotFound: if the final or a partial upload does not exist
        :raises ValueError: if the final upload is not empty, or its size is not the sum
        """
        final = await self.get_upload(final_id)
        partials = [await self.get_upload(partial_id) for partial_id in partial_ids]
        for partial in partials:
            if not partial.info.is_complete:
                raise UploadNotFinished(f"partial upload {partial.info.id} is not complete")
        await final.concat(partials)

    async def declare_length(self, upload_id: str, length: int) -> UploadInfo:
        """Set the length of an upload created without one (creation-defer-length).

        :raises ~anytus.LengthAlreadyDeclared: if the length is known already, or *length* is
            smaller than the bytes already stored
        """
        return await (await self.get_upload(upload_id)).declare_length(length)

    async def truncate(self, upload_id: str, offset: int) -> None:
        """Discard every stored byte after *offset* (the checksum extension's rollback).

        :raises ValueError: if *offset* is negative or beyond the upload's offset
        """
        await (await self.get_upload(upload_id)).truncate(offset)

    async def cleanup(self, expire_after: float, *, now: float | None = None) -> list[str]:
        """Remove every unfinished upload last written *expire_after* seconds before *now*
        (default: the store's clock) or earlier.

        Each upload is removed under its lock; uploads that are locked (in use) are skipped, and
        their holders are not disturbed. An upload that cannot be read or removed (a corrupt or
        unreadable ``.info``, a storage error) is logged and skipped: the others are still
        removed.

        :return: the IDs removed
        """
        now = self._now() if now is None else now
        removed = []
        for upload_id in await self.list_uploads():
            try:
                if await self._remove_if_expired(upload_id, expire_after, now):
                    removed.append(upload_id)
            except (StorageError, CorruptUploadInfo) as exc:
                # one upload that cannot be read or removed must not keep the others forever
                _cleanup_log.error(exc, f"cleanup skipped upload {upload_id}")
        await self._after_cleanup(now)
        return removed

    async def _remove_if_expired(self, upload_id: str, expire_after: float, now: float) -> bool:
        if not await self._is_expired(upload_id, expire_after, now):
            return False
        # an upload in use is skipped, without asking its holder to let go
        try:
            await self.locker.acquire_nowait(upload_id)
        except anyio.WouldBlock:
            return False
        try:
            # look again under the lock: it may have been resumed meanwhile
            if await self._is_expired(upload_id, expire_after, now):
                await self.terminate(upload_id)
                return True
        except UploadNotFound:
            pass
        finally:
            with anyio.CancelScope(shield=True):
                await self.locker.release(upload_id)
        return False

    async def _after_cleanup(self, now: float) -> None:
        """Whatever else a store clears away after a cleanup pass (a checkpoint)."""
        await anyio.lowlevel.checkpoint()

    async def _is_expired(self, upload_id: str, expire_after: float, now: float) -> bool:
        try:
            info = await self.get_info(upload_id)
        except UploadNotFound:
            return False
        return is_expired(info, expire_after, now)


class StoreBase(CoreStoreBase, OneHopStore):
    """A store with every capability, one-hop requests included, and a :class:`~anytus.Locker`
    of its own (``locker``).

    Subclasses implement the storage; this gives them tusd's lock methods, ``use_in`` and
    :meth:`cleanup`, written once.
    """


class ReaderContext(Generic[UploadT, StreamT]):
    """What ``get_reader`` returns, for a store and for a loaded upload alike.

    Entering it is a checkpoint: it loads the upload (or, given one, checkpoints), checks the
    range against the offset, and opens the stream with *open_stream*. Exiting closes the stream.

    :param load: loads the upload; see :meth:`of` for an upload loaded already
    :param open_stream: opens a stream over ``[start, end)`` of the upload, the range checked
    """

    __slots__ = ("_end", "_load", "_open_stream", "_start", "_stream")

    def __init__(
        self,
        load: Callable[[], Awaitable[UploadT]],
        open_stream: Callable[[UploadT, int, int], Awaitable[StreamT]],
        start: int,
        end: int | None,
    ) -> None:
        self._load = load
        self._open_stream = open_stream
        self._start = start
        self._end = end
        self._stream: StreamT | None = None

    @classmethod
    def of(
        cls,
        upload: UploadT,
        open_stream: Callable[[UploadT, int, int], Awaitable[StreamT]],
        start: int,
        end: int | None,
    ) -> ReaderContext[UploadT, StreamT]:
        """The reader of an upload loaded already (entering it is still a checkpoint)."""

        async def loaded() -> UploadT:
            await anyio.lowlevel.checkpoint()
            return upload

        return cls(loaded, open_stream, start, end)

    async def __aenter__(self) -> StreamT:
        upload = await self._load()
        offset = upload.info.offset
        end = offset if self._end is None else self._end
        if not 0 <= self._start <= end <= offset:
            raise ValueError(f"range {self._start}-{end} is not within the {offset} bytes stored")
        self._stream = await self._open_stream(upload, self._start, end)
        return self._stream

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._stream is not None:
            await self._stream.aclose()
