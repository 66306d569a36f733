"""Storage errors are named: ``anytus serve`` refuses a directory it cannot use, in one line;
other storage failures answer 500 with a code that says which kind, logged once with the path; a
corrupt or unreadable upload answers a clear error, can still be deleted, and does not stop
cleanup.

Permissions do not bite root, so the tests that need them run the server as root without the
capabilities that override them (``setpriv``, see ``_mounts.unprivileged``); a read-only file
system is a tmpfs remounted ``ro``.
"""

from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import httpx
import pytest

from _helpers import stored_names
from _mounts import fill, remount, tmpfs, unprivileged
from _server import CLIENT_TLS, TUS, TusClient, run_server_process, serve_app, subprocess_env
from anytus import (
    CorruptUploadInfo,
    FileStore,
    StorageError,
    StorageFull,
    StorageIOError,
    StoragePermissionDenied,
    StorageReadOnly,
    TooManyOpenFiles,
    UploadInfo,
)
from anytus._oncelog import OnceLog
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

SERVERS = {"asyncio": "anytus", "trio": "anytus"}
BACKENDS = [pytest.param(b, id=f"{b}-{s}") for b, s in SERVERS.items()]


def start(directory: Path, *, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``anytus serve`` on *directory*, expecting it to refuse to start."""
    command = [*prefix, sys.executable, "-m", "anytus", "serve", "--port", "0", "--dir"]
    return subprocess.run(
        [*command, str(directory)],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=30,
        check=False,
    )


def assert_refused(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [f"anytus: {line}"]


# -- refusing to start ----------------------------------------------------------------------------


class TestStartupCheck:
    def test_dir_is_a_file(self, tmp_path: Path) -> None:
        path = tmp_path / "uploads"
        path.write_text("not a directory")
        assert_refused(start(path), f"{path} is a file, not a directory")

    def test_dir_below_a_file(self, tmp_path: Path) -> None:
        (tmp_path / "file").write_text("")
        path = tmp_path / "file" / "uploads"
        assert_refused(
            start(path), f"cannot create {path}: {tmp_path / 'file'} is a file, not a directory"
        )

    def test_read_only_file_system(self, tmp_path: Path) -> None:
        with tmpfs(tmp_path / "ro", "1m") as path:
            (path / "uploads").mkdir()
            remount(path, "ro")
            assert_refused(
                start(path / "uploads"),
                f"cannot write to {path / 'uploads'}: Read-only file system",
            )
            assert_refused(
                start(path / "new"), f"cannot create {path / 'new'}: Read-only file system"
            )

    @pytest.mark.parametrize(
        ("mode", "reason"),
        [(0o555, "cannot write to {}"), (0o000, "cannot read {}"), (0o333, "cannot read {}")],
    )
    def test_permissions(self, tmp_path: Path, mode: int, reason: str) -> None:
        prefix = unprivileged()
        path = tmp_path / "uploads"
        path.mkdir()
        path.chmod(mode)
        try:
            result = start(path, prefix=prefix)
        finally:
            path.chmod(0o755)
        assert_refused(result, f"{reason.format(path)}: Permission denied")

    def test_cannot_create(self, tmp_path: Path) -> None:
        prefix = unprivileged()
        tmp_path.chmod(0o555)
        try:
            result = start(tmp_path / "uploads", prefix=prefix)
        finally:
            tmp_path.chmod(0o755)
        assert_refused(result, f"cannot create {tmp_path / 'uploads'}: Permission denied")

    @pytest.fixture
    def anyio_backend(self) -> str:
        return "asyncio"

    async def test_full_disk_is_no_reason_to_refuse(self, tmp_path: Path) -> None:
        with tmpfs(tmp_path / "disk", "1m") as path:
            fill(path / "filler")
            with run_server_process(path) as server:
                async with httpx.AsyncClient(timeout=10, verify=CLIENT_TLS) as http:
                    response = await http.options(server.url)
                    assert response.status_code == 200
            assert any("is full" in line for line in server.stderr_lines)

    async def test_the_probe_leaves_nothing(self, tmp_path: Path) -> None:
        with run_server_process(tmp_path / "uploads"):
            pass
        assert stored_names(tmp_path / "uploads") == []


# -- named errors while serving -------------------------------------------------------------------


def storage_log_lines(lines: list[str], code: str) -> list[str]:
    return [line for line in lines if code in line and "path:" in line]


class TestServedErrors:
    @pytest.fixture
    def anyio_backend(self) -> str:
        """The client runs on asyncio: the backend under test is the server's."""
        return "asyncio"

    @pytest.mark.slow
    @pytest.mark.parametrize("backend", BACKENDS)
    async def test_read_only_storage(self, tmp_path: Path, backend: str) -> None:
        with (
            tmpfs(tmp_path / "disk", "4m") as path,
            run_server_process(path, "--backend", backend) as server,
        ):
            async with httpx.AsyncClient(timeout=10, verify=CLIENT_TLS) as http:
                tus = TusClient(http, server.url)
                upload_id = await tus.new(10, body=b"01234")
                remount(path, "ro")
                try:
                    for _ in range(3):
                        response = await tus.create(10)
                        assert response.status_code == 500
                        assert response.text == (
                            "ERR_STORAGE_READ_ONLY: the storage is read-only: "
                            "Read-only file system\n"
                        )
                        response = await tus.patch(upload_id, 5, b"56789")
                        assert response.status_code == 500
                        assert response.text.startswith("ERR_STORAGE_READ_ONLY:")
                    # reading needs no write
                    assert await tus.offset(upload_id) == 5
                finally:
                    remount(path, "rw")
                # nothing stays broken once the storage is back
                response = await tus.patch(upload_id, 5, b"56789")
                assert response.status_code == 204, response.text
        log = "\n".join(server.stderr_lines)
        assert "Traceback" not in log
        assert "ERR_INTERNAL_SERVER_ERROR" not in log
        # six failed requests, one line that names the directory
        logged = storage_log_lines(server.stderr_lines, "ERR_STORAGE_READ_ONLY")
        assert len(logged) == 1, log
        assert f"path: {path}/" in logged[0]

    @pytest.mark.slow
    @pytest.mark.parametrize("backend", BACKENDS)
    async def test_permission_denied(self, tmp_path: Path, backend: str) -> None:
        prefix = unprivileged()
        path = tmp_path / "uploads"
        with run_server_process(path, "--backend", backend, prefix=prefix) as server:
            async with httpx.AsyncClient(timeout=10, verify=CLIENT_TLS) as http:
                tus = TusClient(http, server.url)
                upload_id = await tus.new(10, body=b"01234")
                (path / f"{upload_id}.info").chmod(0o000)
                for _ in range(3):
                    response = await tus.head(upload_id)
                    assert response.status_code == 500
                    assert response.headers["Tus-Resumable"] == "1.0.0"
                response = await http.get(tus.upload_url(upload_id))
                assert response.status_code == 500
                assert response.text == (
                    f"ERR_STORAGE_PERMISSION: upload {upload_id}: cannot read {upload_id}.info: "
                    f"the server is not allowed to access its storage: Permission denied\n"
                )
                # an unreadable upload can still be deleted
                response = await http.delete(tus.upload_url(upload_id), headers=TUS)
                assert response.status_code == 204, response.text
                assert stored_names(path) == []

                path.chmod(0o555)
                try:
                    response = await tus.create(10)
                finally:
                    path.chmod(0o755)
                assert response.status_code == 500
                assert response.text.startswith("ERR_STORAGE_PERMISSION:")
        log = "\n".join(server.stderr_lines)
        assert "Traceback" not in log
        assert "ERR_INTERNAL_SERVER_ERROR" not in log
        logged = storage_log_lines(server.stderr_lines, "ERR_STORAGE_PERMISSION")
        assert len(logged) == 1, log
        assert f"path: {path / upload_id}.info" in logged[0]


# -- corrupt and unreadable uploads, through TusApp on both backends ----------------------------

GARBAGE = "0" * 32
UNREADABLE = "1" * 32


def make_upload(directory: Path, upload_id: str, info: bytes | None, *, age: float = 0) -> None:
    """Write an upload's files; *info* ``None`` makes its ``.info`` a directory (unreadable)."""
    bin_path = directory / f"{upload_id}.bin"
    bin_path.write_bytes(b"data")
    if info is None:
        (directory / f"{upload_id}.info").mkdir()
    else:
        (directory / f"{upload_id}.info").write_bytes(info)
    if age:
        then = time.time() - age
        os.utime(bin_path, (then, then))


def valid_info(upload_id: str) -> bytes:
    return UploadInfo(id=upload_id, size=10).to_json()


class TestCorruptUploads:
    async def test_garbage_info(self, tmp_path: Path) -> None:
        make_upload(tmp_path, GARBAGE, b"\x00garbage{")
        async with serve_app(TusApp(FileStore(tmp_path))) as url:
            tus = TusClient(httpx.AsyncClient(timeout=10, verify=CLIENT_TLS), url)
            async with tus.http:
                assert (await tus.head(GARBAGE)).status_code == 500
                for response in (
                    await tus.patch(GARBAGE, 4, b"more"),
                    await tus.http.get(tus.upload_url(GARBAGE)),
                ):
                    assert response.status_code == 500
                    assert response.text.startswith(
                        f"ERR_CORRUPT_UPLOAD_INFO: upload {GARBAGE}: {GARBAGE}.info is unreadable"
                    )
                response = await tus.http.delete(tus.upload_url(GARBAGE), headers=TUS)
                assert response.status_code == 204, response.text
                assert stored_names(tmp_path) == []  # .bin, .info and .lock
                response = await tus.http.delete(tus.upload_url(GARBAGE), headers=TUS)
                assert response.status_code == 404

    async def test_unreadable_info(self, tmp_path: Path) -> None:
        make_upload(tmp_path, UNREADABLE, None)  # reading a directory fails, even as root
        async with serve_app(TusApp(FileStore(tmp_path))) as url:
            tus = TusClient(httpx.AsyncClient(timeout=10, verify=CLIENT_TLS), url)
            async with tus.http:
                assert (await tus.head(UNREADABLE)).status_code == 500
                response = await tus.http.get(tus.upload_url(UNREADABLE))
        assert response.status_code == 500
        assert response.text == (
            f"ERR_STORAGE: upload {UNREADABLE}: cannot read {UNREADABLE}.info: "
            f"the storage failed: Is a directory\n"
        )

    async def test_cleanup_goes_on_past_bad_uploads(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        # sorted first, so that a cleanup that stops at them removes nothing
        make_upload(tmp_path, GARBAGE, b"garbage", age=7200)
        make_upload(tmp_path, UNREADABLE, None, age=7200)
        expired = ["2" * 32, "3" * 32]
        for upload_id in expired:
            make_upload(tmp_path, upload_id, valid_info(upload_id), age=7200)
        store = FileStore(tmp_path)
        with caplog.at_level(logging.WARNING, logger="anytus"):
            assert await store.cleanup(3600) == expired
            assert await store.cleanup(3600) == []
        skipped = [r.getMessage() for r in caplog.records if "cleanup skipped" in r.getMessage()]
        # each bad upload once, not on every pass
        assert len(skipped) == 2, skipped
        assert f"upload {GARBAGE}" in skipped[0]
        assert "ERR_CORRUPT_UPLOAD_INFO" in skipped[0]
        assert f"path: {tmp_path / GARBAGE}.info" in skipped[0]
        assert f"upload {UNREADABLE}" in skipped[1]
        assert f"path: {tmp_path / UNREADABLE}.info" in skipped[1]
        assert stored_names(tmp_path) == sorted(
            [f"{GARBAGE}.bin", f"{GARBAGE}.info", f"{UNREADABLE}.bin", f"{UNREADABLE}.info"]
        )


def test_cleanup_command_goes_on_past_an_unreadable_upload(tmp_path: Path) -> None:
    prefix = unprivileged()
    make_upload(tmp_path, GARBAGE, valid_info(GARBAGE), age=7200)
    (tmp_path / f"{GARBAGE}.info").chmod(0o000)
    expired = "2" * 32
    make_upload(tmp_path, expired, valid_info(expired), age=7200)
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "anytus", "cleanup", str(tmp_path), "--expire-after", "60"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [expired]
    assert f"cleanup skipped upload {GARBAGE}" in result.stderr
    assert "Permission denied" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / f"{expired}.info").exists()


# -- the vocabulary -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "cls", "status", "code"),
    [
        (errno.ENOSPC, StorageFull, 507, "ERR_STORAGE_FULL"),
        (errno.EDQUOT, StorageFull, 507, "ERR_STORAGE_FULL"),
        (errno.EACCES, StoragePermissionDenied, 500, "ERR_STORAGE_PERMISSION"),
        (errno.EPERM, StoragePermissionDenied, 500, "ERR_STORAGE_PERMISSION"),
        (errno.EROFS, StorageReadOnly, 500, "ERR_STORAGE_READ_ONLY"),
        (errno.EIO, StorageIOError, 500, "ERR_STORAGE_IO"),
        (errno.EISDIR, StorageError, 500, "ERR_STORAGE"),
    ],
)
def test_storage_error_kinds(number: int, cls: type[StorageError], status: int, code: str) -> None:
    from anytus._exceptions import storage_error

    error = storage_error(OSError(number, os.strerror(number), "/srv/x.bin"))
    assert isinstance(error, StorageError)
    assert type(error) is cls
    assert (error.status_code, error.error_code) == (status, code)
    assert error.path == "/srv/x.bin"
    assert error.errno == number
    assert "/srv" not in error.message  # the path is for the log, not for clients
    assert error.message.endswith(os.strerror(number))
    # a write to an open file names no path: the caller's stands in
    without_path = storage_error(OSError(number, "x"), path="/srv/")
    assert isinstance(without_path, StorageError)
    assert without_path.path == "/srv/"


@pytest.mark.parametrize("number", [errno.EMFILE, errno.ENFILE])
def test_out_of_descriptors_is_no_storage_error(number: int) -> None:
    from anytus._exceptions import storage_error

    assert type(storage_error(OSError(number, os.strerror(number)))) is TooManyOpenFiles


def test_once_log(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = OnceLog(logging.getLogger("anytus.test"), interval=60, clock=lambda: now[0])
    error = StorageReadOnly("the storage is read-only", path="/srv/a.bin", errno=errno.EROFS)
    same_place = StorageReadOnly("the storage is read-only", path="/srv/b.bin", errno=errno.EROFS)
    elsewhere = StorageReadOnly("the storage is read-only", path="/var/a.bin", errno=errno.EROFS)
    corrupt = CorruptUploadInfo("upload x: x.info is unreadable", path="/srv/x.info")
    with caplog.at_level(logging.WARNING, logger="anytus.test"):
        assert log.error(error, "POST /files/")
        assert not log.error(same_place, "POST /files/")
        assert log.error(elsewhere, "POST /files/")
        assert log.error(corrupt, "HEAD /files/x")
        assert not log.error(corrupt, "HEAD /files/x")
        now[0] = 61
        assert log.error(same_place, "POST /files/")
    messages = [record.getMessage() for record in caplog.records]
    assert messages == [
        "POST /files/: ERR_STORAGE_READ_ONLY: the storage is read-only (path: /srv/a.bin)",
        "POST /files/: ERR_STORAGE_READ_ONLY: the storage is read-only (path: /var/a.bin)",
        (
            "HEAD /files/x: ERR_CORRUPT_UPLOAD_INFO: upload x: x.info is unreadable "
            "(path: /srv/x.info)"
        ),
        (
            "POST /files/: ERR_STORAGE_READ_ONLY: the storage is read-only (path: /srv/b.bin) "
            "(2 more times in the last 61 s)"
        ),
    ]
    assert [record.levelno for record in caplog.records] == [logging.ERROR] * 2 + [
        logging.WARNING,
        logging.ERROR,
    ]
