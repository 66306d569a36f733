"""`UploadReadStream`: a byte stream over an upload's stored data."""

from __future__ import annotations

import os

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.abc import ByteReceiveStream

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
        limiter: anyio.CapacityLimiter,
    ) -> None:
        self._fd = fd
        self._position = start
        self._end = end
        self._chunk_size = chunk_size
        self._limiter = limiter
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
                data = await anyio.to_thread.run_sync(
                    os.pread, self._fd, size, self._position, limiter=self._limiter
                )
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
                await anyio.to_thread.run_sync(os.close, self._fd, limiter=self._limiter)
        await anyio.lowlevel.checkpoint_if_cancelled()
