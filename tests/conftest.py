from __future__ import annotations

from collections.abc import Iterator

import pytest
from blockbuster import BlockBuster, blockbuster_ctx


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
    """Fail any test that makes a blocking call on an event loop thread."""
    with blockbuster_ctx(
        "anytus",
        # pytest, the anyio plugin and the test-suite's own helpers may block outside the loop
        excluded_modules=["_pytest", "pluggy", "tests"],
    ) as bb:
        yield bb
