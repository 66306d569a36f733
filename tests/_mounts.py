"""Real file-system conditions for the storage tests: a small tmpfs that fills up, a read-only
file system, and a process that permissions apply to even when the tests run as root.

Not collected by pytest (the name does not start with ``test_``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = ("fill", "remount", "tmpfs", "unprivileged")


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m") -> Iterator[Path]:
    """Mount a tmpfs of *size* on *path* (created if missing) for the ``with`` block.

    Skips the test, saying why, where mounting is not permitted (not root, or a container
    without ``CAP_SYS_ADMIN``).
    """
    path.mkdir(parents=True, exist_ok=True)
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount(8) on this machine: cannot make a small file system")
    result = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(
            f"mounting a tmpfs is not permitted here (needs root with CAP_SYS_ADMIN): "
            f"{result.stderr.strip()}"
        )
    try:
        yield path
    finally:
        # lazily if a server process still has a file open: never leave a mount behind
        if subprocess.run(["umount", str(path)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def remount(path: Path, mode: str) -> None:
    """Remount the tmpfs on *path* ``ro`` or ``rw``."""
    subprocess.run(["mount", "-o", f"remount,{mode}", str(path)], check=True)


def fill(path: Path) -> None:
    """Write *path* until its file system has not one byte left (blocking)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        for size in (1 << 16, 4096, 512, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def unprivileged() -> list[str]:
    """A command prefix under which file permissions apply to the process.

    As root, that is root without the capabilities that override permissions (``setpriv``
    drops them from the bounding set): it still owns the test's files and can run the
    interpreter wherever it is installed, but a ``chmod 000`` file or a ``0555`` directory is
    closed to it. Otherwise, nothing is needed.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is missing: cannot drop root's permission override")
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot drop capabilities here: {probe.stderr.strip()}")
    return prefix
