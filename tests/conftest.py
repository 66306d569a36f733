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

import os
import sys
from typing import TYPE_CHECKING

import pytest

# Python caches bytecode unless PYTHONDONTWRITEBYTECODE says not to, as some machines' images do.
# The suite starts about 250 interpreters (servers, clients, child scripts), each importing
# anytus, and each test worker assertion-rewrites every test module: without caches each of them
# compiles all that from source again, some 20 s of CPU in a run and 4 s more per worker in the
# next. So this run and the processes it starts write caches (``__pycache__``, gitignored), as
# Python does by default. Set here, before anytus or a test module is imported.
sys.dont_write_bytecode = False
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)

from _blocking import blocking_catalogue, trio_guard

# the Redis and S3 servers (tests/_services.py), for every test module that asks for them
from _services import redis_server, s3, s3_prefix  # noqa: F401

if TYPE_CHECKING:
    from collections.abc import Iterator

    from blockbuster import BlockBuster


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto`` (pytest-xdist; the default, in pyproject.toml): two test workers per usable CPU.

    One per CPU would leave a CPU idle while its worker waits on a server, a subprocess or a lock
    timeout, about a quarter of the suite's time. ``-n 0`` runs the tests in this process.
    """
    return 2 * len(os.sched_getaffinity(0))


@pytest.fixture(
    params=[
        pytest.param(("asyncio", {}), id="asyncio"),
        pytest.param(("trio", {}), id="trio"),
    ]
)
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, object]]:
    """Every async test runs on asyncio and on trio.

    asyncio runs as applications run it, not in debug mode: debug mode records a stack summary
    for every callback, future and task, which doubled the time of the asyncio half of the
    suite, and its checks (loop calls from another thread, slow callbacks) concern code that
    calls asyncio directly, which anytus does not: it goes through anyio. The in-process ASGI
    tests (``test_asgi_inprocess.py``) still run asyncio in debug mode.
    """
    backend: tuple[str, dict[str, object]] = request.param
    return backend


@pytest.fixture(scope="session", autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Fail any test in which anytus makes a blocking call on an event loop thread.

    Active for the whole session of a test process, not set up per test: wrapping the ~170
    functions of the catalogue took a few milliseconds per test. Tests that monkeypatch one of
    them (a failing ``os.fsync``, say) replace the guard's wrapper for that test only.
    """
    catalogue = blocking_catalogue()
    catalogue.activate()  # asyncio loops
    try:
        with trio_guard(catalogue):  # trio's loop
            yield catalogue
    finally:
        catalogue.deactivate()
