"""Helpers shared by the FileStore, tusd-interop, multi-process and UploadInfo tests.

Not collected by pytest (the name does not start with ``test_``); imported as ``from _helpers import
...``, like :mod:`_server`, because pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import functools
import hashlib
import os
import random
from typing import TYPE_CHECKING, Any

import anyio

from anytus import FileStore
from anytus._locks import RECORD_PREFIX

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from pathlib import Path

#: the keys of a tusd ``[id].info`` document, every tusd version's and anytus's
TUSD_KEYS = {
    "ID",
    "Size",
    "SizeIsDeferred",
    "Offset",
    "MetaData",
    "IsPartial",
    "IsFinal",
    "PartialUploads",
    "Storage",
}


class Chunks:
    """An async iterable over fixed chunks."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)

    def __aiter__(self) -> Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            return next(self._chunks)
        except StopIteration:
            raise StopAsyncIteration from None


def pattern(length: int, seed: int = 0) -> bytes:
    """Deterministic, non-periodic bytes: a misplaced block is always detected."""
    return random.Random(seed).randbytes(length)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


async def make_store(path: Path, **kwargs: Any) -> FileStore:
    """Build a store off the event loop: the constructor creates directories."""
    factory: Callable[[], FileStore] = functools.partial(FileStore, path, **kwargs)
    return await anyio.to_thread.run_sync(factory)


async def read_all(
    store: FileStore,
    upload_id: str,
    start: int = 0,
    end: int | None = None,
    *,
    check_chunks: bool = True,
) -> bytes:
    """The upload's bytes ``[start, end)`` through ``get_reader``; with *check_chunks*, every chunk
    the reader hands out must be non-empty ``bytes``/``bytearray``."""
    received = bytearray()
    async with store.get_reader(upload_id, start=start, end=end) as stream:
        async for chunk in stream:
            if check_chunks:
                assert isinstance(chunk, bytes | bytearray)
                assert len(chunk) > 0
            received += chunk
    return bytes(received)


def bin_path(store: FileStore, upload_id: str) -> Path:
    return store.path / f"{upload_id}.bin"


def info_path(store: FileStore, upload_id: str) -> Path:
    return store.path / f"{upload_id}.info"


def stored_names(directory: str | os.PathLike[str]) -> list[str]:
    """The names in *directory*, sorted, but for the lock record that each process using a
    FileLocker keeps there while it lives (``.anytus-locker-*``, which its locks link to)."""
    return sorted(name for name in os.listdir(directory) if not name.startswith(RECORD_PREFIX))
