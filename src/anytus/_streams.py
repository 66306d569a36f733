"""The byte streams that stores' readers open: a range of an upload's stored bytes."""

from __future__ import annotations

import os
from abc import abstractmethod

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import ByteReceiveStream

__all__ = ("RangeReadStream", "UploadReadStream")


class RangeReadStream(ByteReceiveStream):
    """A byte range read a chunk at a time, what every store's reader shares: one reader at a
    time, the end of the range, and a source that ends before it. Subclasses read the chunks
    (:meth:`_read`) and close the source (:meth:`aclose`).

    :param length: the range's length
    :param chunk_size: the largest chunk :meth:`receive` returns when not given ``max_bytes``
    """

    #: what the bytes come from, as the error says when it ends before the range does
    _source = "the data"

    def __init__(self, length: int, chunk_size: int) -> None:
        self._remaining = length
        self._chunk_size = chunk_size
        self._closed = False
        self._guard = anyio.ResourceGuard("reading from")

    @property
    def remaining(self) -> int:
        """Bytes left to read."""
        return self._remaining

    async def receive(self, max_bytes: int | None = None) -> bytes:
        """Return the next chunk: at most *max_bytes* (default: the stream's chunk size).

        :raises ~anyio.EndOfStream: after the last byte
        :raises ~anyio.ClosedResourceError: if the stream was closed
        :raises ~anyio.BrokenResourceError: if the source failed, or ended before the range
        """
        with self._guard:
            size = min(max_bytes or self._chunk_size, self._remaining)
            if self._closed or size <= 0:
                await anyio.lowlevel.checkpoint()
                if self._closed:
                    raise anyio.ClosedResourceError
                raise anyio.EndOfStream
            data = await self._read(size)
            if not data:
                raise anyio.BrokenResourceError(
                    f"{self._source} ended {self._remaining} bytes early"
                )
            self._remaining -= len(data)
            return data

    @abstractmethod
    async def _read(self, size: int) -> bytes:
        """Up to *size* bytes, from where the last read ended, or ``b""`` if the source has
        ended; a checkpoint.

        :raises ~anyio.BrokenResourceError: if the source failed
        """


class UploadReadStream(RangeReadStream):
    """Reads a byte range of a data file, one worker-thread hop per chunk.

    Reads use ``pread`` at an offset the stream tracks, so nothing depends on a shared file
    position. The file is closed by :meth:`aclose` (``async with`` does it), also when the closing
    task is being cancelled.
    """

    _source = "the data file"

    def __init__(
        self,
        fd: int,
        start: int,
        end: int,
        *,
        chunk_size: int,
        limiter: anyio.CapacityLimiter,
    ) -> None:
        super().__init__(end - start, chunk_size)
        self._fd = fd
        self._position = start
        self._limiter = limiter

    async def _read(self, size: int) -> bytes:
        # not abandon_on_cancel: a thread still reading must not outlive the descriptor
        try:
            data = await anyio.to_thread.run_sync(
                os.pread, self._fd, size, self._position, limiter=self._limiter
            )
        except OSError as exc:
            raise anyio.BrokenResourceError from exc
        self._position += len(data)
        return data

    async def aclose(self) -> None:
        """Close the file. Idempotent; a checkpoint, but the close itself is never cancelled."""
        if not self._closed:
            self._closed = True
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(os.close, self._fd, limiter=self._limiter)
        await anyio.lowlevel.checkpoint_if_cancelled()
