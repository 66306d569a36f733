"""Storage failures in the log: once per kind and place, then a count once in a while.

A broken disk fails every request that touches it. One line per request (or a traceback per
request) buries the one line an operator needs, so each failure is logged when first seen, with
the path it concerns, and after that at most once per interval, with how often it recurred.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from ._exceptions import CorruptUploadInfo, StorageError, StorageFull, TusError

if TYPE_CHECKING:
    from collections.abc import Callable, Hashable

__all__ = ("OnceLog",)


class OnceLog:
    """Logs each recurring failure once, then at most once per *interval* seconds.

    :param logger: where the lines go
    :param interval: how long repeats are only counted
    :param max_keys: how many distinct failures are remembered (then it starts afresh)
    :param clock: the clock the interval is measured by
    """

    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 60.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.logger = logger
        self.interval = interval
        self._max_keys = max_keys
        self._clock = clock
        # key -> [when last logged, repeats since]
        self._seen: dict[Hashable, list[float]] = {}

    def log(self, level: int, key: Hashable, message: str) -> bool:
        """Log *message* unless a failure with the same *key* was logged less than *interval*
        seconds ago (then count it); return whether a line was written."""
        now = self._clock()
        seen = self._seen.get(key)
        if seen is None:
            if len(self._seen) >= self._max_keys:
                self._seen.clear()
            self._seen[key] = [now, 0]
            self.logger.log(level, "%s", message)
            return True
        seen[1] += 1
        if now - seen[0] < self.interval:
            return False
        self.logger.log(
            level, "%s (%d more times in the last %.0f s)", message, seen[1], now - seen[0]
        )
        seen[0], seen[1] = now, 0
        return True

    def error(self, exc: TusError, context: str) -> bool:
        """Log a storage failure or a corrupt upload once per kind and directory (or upload),
        naming the path; *context* says what was being done (``"PATCH /files/abc"``)."""
        path = getattr(exc, "path", None)
        key: Hashable
        if isinstance(exc, StorageError):
            # a broken directory fails every file in it: one line for all of them
            key = (type(exc), exc.errno, os.path.dirname(path) if path else None)
        else:
            # a corrupt upload is about that one upload
            key = (type(exc), path or exc.message)
        where = f" (path: {path})" if path else ""
        level = (
            logging.WARNING if isinstance(exc, (StorageFull, CorruptUploadInfo)) else logging.ERROR
        )
        return self.log(level, key, f"{context}: {exc.error_code}: {exc.message}{where}")
