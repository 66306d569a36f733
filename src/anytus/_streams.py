"""`UploadReadStream`: a byte stream over an upload's stored data."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
from anyio.abc import ByteReceiveStream

if TYPE_CHECKING:
    from ._threads import ThreadPool

__all__ = ("UploadReadStream",)


class UploadReadStream(ByteReceiveStream):
    """Reads a byte range of a data file, one worker-thread hop per chunk.

    Reads use ``pread`` at an offset the stream tracks, so nothing depends on a shared file
    position. The file is closed by :meth:`aclose` (``async with`` does it), also when the closing
    task is being cancelled.
    """

    def __init__(
        self,
        fd: int,
        start: int,
        end: int,
        *,
        chunk_size: int,
        threads: ThreadPool,
    ) -> None:
        self._fd = fd
        self._position = start
        self._end = end
        self._chunk_size = chunk_size
        self._threads = threads
        self._closed = False
        self._guard = anyio.ResourceGuard("reading from")

    @property
    def remaining(self) -> int:
        """Bytes left to read."""
        return self._end - self._position

    async def receive(self, max_bytes: int | None = None) -> bytes:
        """Return the next chunk: at most *max_bytes* (default: the store's buffer size).

        :raises ~anyio.EndOfStream: after the last byte
        :raises ~anyio.ClosedResourceError: if the stream was closed
        :raises ~anyio.BrokenResourceError: if reading the file failed, or it shrank
        """
        with self._guard:
            await anyio.lowlevel.checkpoint_if_cancelled()
            if self._closed:
                raise anyio.ClosedResourceError
            size = min(max_bytes or self._chunk_size, self._end - self._position)
            if size <= 0:
                raise anyio.EndOfStream

            # not abandon_on_cancel: a thread still reading must not outlive the descriptor
            try:
                data = await self._threads.run_sync(os.pread, self._fd, size, self._position)
            except OSError as exc:
                raise anyio.BrokenResourceError from exc
            if not data:
                raise anyio.BrokenResourceError(f"data file ended {self.remaining} bytes early")
            self._position += len(data)
            return data

    async def aclose(self) -> None:
        """Close the file. Idempotent; a checkpoint, but the close itself is never cancelled."""
        if not self._closed:
            self._closed = True
            with anyio.CancelScope(shield=True):
                await self._threads.run_sync(os.close, self._fd)
        await anyio.lowlevel.checkpoint_if_cancelled()
