"""Every async test runs on asyncio and on trio, and fails if anytus blocks the event loop.

The blocking-call check is blockbuster, used as published, on asyncio; on trio, where blockbuster
sees no loop (it asks ``asyncio.get_running_loop()``), our own guard in ``tests/_blocking.py``
wraps the same catalogue of blocking functions, with blockbuster's predicates, allow-lists and
frame rule, and asks trio instead. We keep blockbuster rather than replace it with one guard of
our own: it stays the upstream-maintained list of what blocks and what is allowed to (importlib,
linecache, asyncio's own subprocess and sendfile paths), which our guard reuses through its public
API instead of copying; the guard is the small trio-specific part only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from _blocking import blocking_catalogue, trio_guard

if TYPE_CHECKING:
    from collections.abc import Iterator

    from blockbuster import BlockBuster


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {"debug": True}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Every async test runs on asyncio (in debug mode) and on trio."""
    backend: tuple[str, dict[str, object]] = request.param
    return backend


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which anytus makes a blocking call on an event loop thread."""
    catalogue = blocking_catalogue()
    catalogue.activate()  # asyncio loops
    try:
        with trio_guard(catalogue):  # trio's loop
            yield catalogue
    finally:
        catalogue.deactivate()
