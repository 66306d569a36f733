from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import blockbuster.blockbuster as blockbuster_module
import pytest
import trio
from blockbuster import BlockBuster, blockbuster_ctx

# the Redis and S3 servers (tests/_services.py), for every test module that asks for them
from _services import redis_server, s3, s3_prefix  # noqa: F401

if TYPE_CHECKING:
    from collections.abc import Iterator


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


class _AnyLoopDetector:
    """blockbuster asks ``asyncio.get_running_loop()`` whether the calling thread runs an event
    loop; this answers yes on trio's loop thread as well, so trio runs are checked too."""

    def __getattr__(self, name: str) -> object:
        return getattr(asyncio, name)

    @staticmethod
    def get_running_loop() -> object:
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            # raises RuntimeError, as asyncio does, anywhere but on trio's loop thread
            return trio.lowlevel.current_trio_token()


@pytest.fixture(autouse=True)
def blockbuster(monkeypatch: pytest.MonkeyPatch) -> Iterator[BlockBuster]:
    """Fail any test in which anytus makes a blocking call on an event loop thread."""
    # fail loudly, rather than check nothing, if a blockbuster release stops asking asyncio
    assert getattr(blockbuster_module, "asyncio", None) is asyncio, (
        "blockbuster changed its loop check"
    )
    monkeypatch.setattr(blockbuster_module, "asyncio", _AnyLoopDetector())
    with blockbuster_ctx(
        "anytus",
        # pytest, the anyio plugin and the test-suite's own helpers may block outside the loop
        excluded_modules=["_pytest", "pluggy", "tests"],
    ) as bb:
        yield bb
