"""The test-suite's guard against blocking calls on an event loop thread, on asyncio and on trio.

One catalogue of blocking functions, two loop detectors:

- the catalogue is blockbuster's own (``BlockBuster(...).functions``: ``time.sleep``, ``os.*``
  path calls, file, socket and ``threading.Lock`` methods, each with its allow-list and
  predicate), extended through blockbuster's public API with the calls anytus's store and locks
  make that blockbuster does not list (:data:`EXTRA_BLOCKING`: ``os.open``, ``os.fsync``,
  ``os.pwrite``, ``open()``, ...);
- on asyncio, blockbuster as published checks it (its wrapper asks ``asyncio.get_running_loop()``);
- on trio, :func:`trio_guard` wraps the same functions, with the same predicates, allow-lists and
  frame rule, and asks ``trio.lowlevel.in_trio_task()`` instead. Not ``in_trio_run()``: anyio's
  pytest plugin runs trio in guest mode on the main thread, so ``in_trio_run()`` stays true while
  pytest runs sync fixtures between two trio ticks, where asyncio has no running loop either.

Not collected by pytest (the name does not start with ``test_``); imported as ``from _blocking
import ...`` because pytest puts ``tests/`` on ``sys.path``.
"""

from __future__ import annotations

import importlib
import inspect
import os
import socket
import threading
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING, Any

import forbiddenfruit
import pytest
import trio
from blockbuster import BlockBuster, BlockBusterFunction, BlockingError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

#: where a blocking call counts: a frame of anytus's source on the stack ...
SCANNED_MODULES = ["anytus"]
#: ... that is not pytest's, pluggy's or the test-suite's own (these may block outside the loop)
EXCLUDED_MODULES = ["_pytest", "pluggy", "tests"]


def _nonblocking_fd(fd: int, *_: object, **__: object) -> bool:
    # as blockbuster's os.read/os.write predicate: a non-blocking pipe or socket never waits
    return not os.get_blocking(fd)


def _open_fd(file: object, *_: object, **__: object) -> bool:
    # open(fd) wraps a descriptor that is already open: no path lookup, nothing to wait for
    return isinstance(file, int)


def _numeric_host(*args: object, **kwargs: object) -> bool:
    # trio first tries AI_NUMERICHOST on the loop: an address, not a name, so nothing to look up
    flags = args[5] if len(args) > 5 else kwargs.get("flags", 0)
    return isinstance(flags, int) and bool(flags & socket.AI_NUMERICHOST)


def _no_hang(pid: int, options: int, *_: object, **__: object) -> bool:
    return bool(options & os.WNOHANG)


#: blocking calls anytus makes (in worker threads) that blockbuster 1.5.29 does not list:
#: name -> (predicate that allows the call, functions in whose frames the call is allowed)
EXTRA_BLOCKING: dict[str, tuple[Callable[..., bool] | None, list[tuple[str, Iterable[str]]]]] = {
    "os.open": (None, []),
    "os.fsync": (None, []),
    "os.fdatasync": (None, []),
    "os.fstat": (None, []),
    "os.lstat": (None, []),
    "os.utime": (None, []),
    "os.truncate": (None, []),
    "os.ftruncate": (None, []),
    "os.pread": (_nonblocking_fd, []),
    "os.pwrite": (_nonblocking_fd, []),
    "os.readv": (_nonblocking_fd, []),
    "os.writev": (_nonblocking_fd, []),
    "os.copy_file_range": (None, []),
    "os.waitpid": (_no_hang, []),
    # a traceback being formatted reads the source lines of its frames (blockbuster allows
    # linecache's os.stat for the same reason)
    "builtins.open": (_open_fd, [("linecache.py", {"updatecache"})]),
    "io.open": (_open_fd, [("linecache.py", {"updatecache"})]),
    "socket.getaddrinfo": (_numeric_host, []),
    "socket.gethostbyname": (None, []),
}


def blocking_catalogue() -> BlockBuster:
    """blockbuster's functions for anytus, plus :data:`EXTRA_BLOCKING`; not activated yet."""
    catalogue = BlockBuster(SCANNED_MODULES, excluded_modules=EXCLUDED_MODULES)
    for name, (predicate, allowed) in EXTRA_BLOCKING.items():
        catalogue.functions[name] = BlockBusterFunction(
            None,
            name,
            scanned_modules=SCANNED_MODULES,
            excluded_modules=EXCLUDED_MODULES,
            can_block_functions=list(allowed),
            can_block_predicate=predicate or (lambda *_, **__: False),
        )
    return catalogue


def _module_paths(names: Sequence[str]) -> tuple[str, ...]:
    """The file-name prefixes of modules, resolved as blockbuster resolves them."""
    paths = []
    for name in names:
        module = importlib.import_module(name)
        paths.append(module.__path__[0] if hasattr(module, "__path__") else str(module.__file__))
    return tuple(paths)


class _Checking(threading.local):
    """Set while a check runs, so calls the check itself makes are not checked (blockbuster's
    ``_skip``)."""

    active = False


_checking = _Checking()


def _called_from_scanned(
    scanned: tuple[str, ...],
    excluded: tuple[str, ...],
    allowed: list[tuple[str, Iterable[str]]],
) -> bool:
    """blockbuster's frame rule: an anytus frame is on the stack and no allowed function is."""
    frame = inspect.currentframe()
    in_scanned = False
    while frame is not None:
        filename = frame.f_code.co_filename
        if not in_scanned and filename.startswith(scanned) and not filename.startswith(excluded):
            in_scanned = True
        filename = filename.replace("\\", "/")
        for suffix, functions in allowed:
            if filename.endswith(suffix) and frame.f_code.co_name in functions:
                return False
        frame = frame.f_back
    return in_scanned


def _guarded(
    inner: Callable[..., Any],
    function: BlockBusterFunction,
    scanned: tuple[str, ...],
    excluded: tuple[str, ...],
) -> Callable[..., Any]:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if _checking.active or not trio.lowlevel.in_trio_task():
            return inner(*args, **kwargs)
        _checking.active = True
        try:
            # read at call time, so a test's ``functions[name].can_block_in(...)`` holds here too
            blocks = not function.can_block_predicate(*args, **kwargs) and _called_from_scanned(
                scanned, excluded, function.can_block_functions
            )
        finally:
            _checking.active = False
        if blocks:
            raise BlockingError(function.full_name)
        return inner(*args, **kwargs)

    return guarded


@contextmanager
def trio_guard(catalogue: BlockBuster) -> Iterator[None]:
    """Raise :exc:`blockbuster.BlockingError` when anytus calls a function of ``catalogue`` in a
    trio task (on trio's loop thread), as blockbuster does on an asyncio loop's thread.

    Each function is wrapped where it is found now (blockbuster's wrapper, if the catalogue is
    active), so both checks run; leave this context before deactivating the catalogue.
    """
    scanned = _module_paths(SCANNED_MODULES)
    excluded = _module_paths(EXCLUDED_MODULES)
    with ExitStack() as undo, pytest.MonkeyPatch.context() as monkeypatch:
        for function in catalogue.functions.values():
            if function.original_func is None:
                continue  # not on this platform (blockbuster skips it as well)

            owner, name = function.module, function.func_name
            current = getattr(owner, name)
            guarded = _guarded(current, function, scanned, excluded)
            try:
                monkeypatch.setattr(owner, name, guarded)
            except TypeError:
                # a method of a built-in type (file reads, Lock.acquire): set in the type's
                # dict, as blockbuster does, and put back what was there
                forbiddenfruit.curse(owner, name, guarded)
                undo.callback(forbiddenfruit.curse, owner, name, current)
        yield
