"""The suite's guard against blocking calls on the event loop works, on every backend."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from blockbuster import BlockingError

from anytus._filestore import _unlink_quietly

if TYPE_CHECKING:
    from pathlib import Path


async def test_a_blocking_call_in_anytus_on_the_loop_fails_the_test(tmp_path: Path) -> None:
    with pytest.raises(BlockingError):
        _unlink_quietly(str(tmp_path / "missing"))


def test_outside_an_event_loop_blocking_is_fine(tmp_path: Path) -> None:
    _unlink_quietly(str(tmp_path / "missing"))
