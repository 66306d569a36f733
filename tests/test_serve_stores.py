"""``anytus serve``'s storage and locking options: ``--s3-bucket``, ``--s3-endpoint``, ``--s3-prefix``,
``--redis`` (and ``--redis-lease``, ``--force-shared-dir``): the combinations it refuses, the
errors when the bucket or Redis cannot be reached, and a directory locked in Redis. Two hosts on S3
are tested in test_multihost.py.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import httpx
import pytest

from _server import CLIENT_TLS, TusClient, run_server_process
from anytus import _servestores
from anytus._cli import main

if TYPE_CHECKING:
    from pathlib import Path

    from _services import RedisServer, S3Service


@pytest.fixture
def anyio_backend() -> str:
    """The clients here run on asyncio only: the backend under test is the server's."""
    return "asyncio"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--s3-endpoint", "http://127.0.0.1:1"], "--s3-endpoint needs --s3-bucket"),
        (["--s3-prefix", "x/"], "--s3-prefix needs --s3-bucket"),
        (["--s3-bucket", "b", "--dir", "d"], "--dir and --s3-bucket exclude each other"),
        (["--s3-bucket", "b", "--durability", "always"], "--durability is the file store's"),
        (["--s3-bucket", "b", "--force-shared-dir"], "--force-shared-dir is for a directory"),
        (["--s3-bucket", "b", "--workers", "2"], "needs --redis"),
        (["--redis-lease", "3"], "--redis-lease needs --redis"),
        (["--redis", "redis://127.0.0.1:1", "--redis-lease", "0"], "must be positive"),
    ],
)
def test_nonsensical_combinations_are_refused(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc_info:
        main(["serve", "--port", "0", *args])
    assert exc_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_directory_on_a_network_file_system_needs_redis_or_force(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # what /proc/self/mounts says for a directory on NFS
    monkeypatch.setattr(_servestores, "_file_system_type", lambda path: "nfs4")
    with pytest.raises(SystemExit):
        main(["serve", "--port", "0", "--dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert "network file system (nfs4)" in err
    assert "--redis" in err
    assert "--force-shared-dir" in err


def test_the_file_system_type_is_read_from_the_mounts() -> None:
    assert _servestores._file_system_type("/") is not None
    assert _servestores._file_system_type("/proc/self") == "proc"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--redis", "redis://127.0.0.1:1/0"], "cannot reach Redis at redis://127.0.0.1:1/0"),
        (
            ["--s3-bucket", "no-such-bucket", "--s3-endpoint", "http://127.0.0.1:1"],
            "cannot reach S3 bucket 'no-such-bucket'",
        ),
    ],
)
def test_unreachable_services_are_reported(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = [] if "--s3-bucket" in args else ["--dir", str(tmp_path)]
    status = main(["serve", "--port", "0", *directory, *args])
    assert status == 1
    assert message in capsys.readouterr().err


def test_a_missing_bucket_is_reported(s3: S3Service, capsys: pytest.CaptureFixture[str]) -> None:
    missing = f"missing-{uuid.uuid4().hex[:8]}"
    status = main(["serve", "--port", "0", "--s3-bucket", missing, "--s3-endpoint", s3.endpoint])
    assert status == 1
    assert f"cannot reach S3 bucket {missing!r}" in capsys.readouterr().err


@pytest.mark.slow
async def test_a_directory_locked_in_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    with run_server_process(tmp_path, "--redis", redis_server.url) as server:
        assert "(locks in Redis)" in "\n".join(server.stderr_lines)
        async with httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http:
            tus = TusClient(http, server.url)
            upload_id = await tus.upload(b"x" * 200_000, chunk=100_000)
            response = await http.get(tus.upload_url(upload_id))
            assert response.content == b"x" * 200_000
