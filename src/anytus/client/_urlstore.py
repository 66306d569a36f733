"""Where :class:`~anytus.client.TusClient` remembers the uploads it has started: a JSON file.

Like tus-js-client's ``urlStorage`` and tuspy's ``FileStorage``: a key (the source's fingerprint, or
a key the caller gives) maps to the upload's URL, or to the URLs of its partial uploads when it
is sent in parallel. Every operation is one worker-thread hop that reads the file, changes one
entry and replaces the file atomically, under an ``flock`` on a lock file beside it (where the
platform has one), so that several processes can share the store.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = ("StoredUpload", "URLStore", "default_store_path")


def default_store_path() -> Path:
    """The default store file, in the platform's per-user cache directory.

    ``$XDG_CACHE_HOME/anytus/uploads.json`` (default ``~/.cache``) on Linux and other Unixes,
    ``~/Library/Caches/anytus/uploads.json`` on macOS and
    ``%LOCALAPPDATA%\\anytus\\Cache\\uploads.json`` on Windows, as ``platformdirs`` places them.
    """
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "anytus" / "Cache" / "uploads.json"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "anytus" / "uploads.json"
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    # "All paths set in these environment variables must be absolute": a relative one is ignored
    base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "anytus" / "uploads.json"


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class StoredUpload:
    """One entry of a :class:`URLStore`."""

    #: the upload's URL (for a parallel upload: the final upload's, once it exists)
    url: str | None = None
    #: a parallel upload's partial uploads, in order
    parts: tuple[str, ...] = ()
    #: the source's size, when known
    size: int | None = None
    #: when the entry was written (seconds since the epoch)
    time: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "parts": list(self.parts), "size": self.size, "time": self.time}

    @classmethod
    def from_json(cls, value: object) -> StoredUpload | None:
        """The entry *value* describes, or ``None`` when it is not one (a damaged file)."""
        if not isinstance(value, dict):
            return None
        url, parts, size, when = (value.get(k) for k in ("url", "parts", "size", "time"))
        if not (url is None or isinstance(url, str)):
            return None
        if not (isinstance(parts, list) and all(isinstance(p, str) for p in parts)):
            return None
        if not (size is None or (isinstance(size, int) and size >= 0)):
            return None
        if url is None and not parts:
            return None
        return cls(
            url=url,
            parts=tuple(parts),
            size=size,
            time=float(when) if isinstance(when, int | float) else 0.0,
        )


class URLStore:
    """Upload URLs by key, in a JSON file (by default :func:`default_store_path`).

    A file that is missing or unreadable counts as empty: the store is a cache, and losing it only
    means starting uploads again.

    :param path: the JSON file; its directory is created on the first write
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        #: the JSON file
        self.path = Path(path) if path is not None else default_store_path()

    def __repr__(self) -> str:
        return f"URLStore({str(self.path)!r})"

    async def get(self, key: str) -> StoredUpload | None:
        """The entry stored under *key*, if any."""
        entries = await anyio.to_thread.run_sync(self._read_locked)
        return StoredUpload.from_json(entries.get(key))

    async def put(self, key: str, entry: StoredUpload) -> None:
        """Store *entry* under *key* (replacing any)."""
        stamped = dataclasses.replace(entry, time=time.time())

        def change(entries: dict[str, Any]) -> None:
            entries[key] = stamped.to_json()

        await anyio.to_thread.run_sync(self._update, change)

    async def remove(self, key: str) -> None:
        """Forget *key* (nothing happens if it is not stored)."""

        def change(entries: dict[str, Any]) -> None:
            entries.pop(key, None)

        await anyio.to_thread.run_sync(self._update, change)

    async def remove_url(self, url: str) -> None:
        """Forget every entry that names *url* (as the upload or one of its parts)."""

        def change(entries: dict[str, Any]) -> None:
            for key, value in list(entries.items()):
                entry = StoredUpload.from_json(value)
                if entry is not None and (entry.url == url or url in entry.parts):
                    del entries[key]

        await anyio.to_thread.run_sync(self._update, change)

    async def items(self) -> dict[str, StoredUpload]:
        """Every valid entry, by key."""
        entries = await anyio.to_thread.run_sync(self._read_locked)
        found = {key: StoredUpload.from_json(value) for key, value in entries.items()}
        return {key: entry for key, entry in found.items() if entry is not None}

    # -- in a worker thread ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, *, create: bool) -> Iterator[None]:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: atomic replace without a lock
            yield
            return
        lock_path = self.path.with_name(self.path.name + ".lock")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:  # nothing stored yet, and nothing to write
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the flock

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _read_locked(self) -> dict[str, Any]:
        with self._locked(create=False):
            return self._read()

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        with self._locked(create=True):
            entries = self._read()
            change(entries)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".uploads-", suffix=".tmp")
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(entries, f, indent=1, sort_keys=True)
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
