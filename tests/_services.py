"""Real Redis and S3 servers for the S3Store and RedisLocker tests, as separate processes on free
loopback ports.

Not collected by pytest. tests/conftest.py imports the fixtures, so every test module has them.

- Redis: Debian's ``redis-server`` (``.ci/run`` installs it), one process per session (and one
  per test that restarts it), never the system service; no persistence.
- S3: moto's standalone server (``python -m moto.server``), one per session, unless
  ``ANYTUS_TEST_S3_ENDPOINT`` names another endpoint (MinIO, AWS...): then the tests use it, with
  the bucket ``ANYTUS_TEST_S3_BUCKET`` (which must exist) and boto3's usual credentials. Every test
  works under a prefix of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from _server import announced_origin, logged_process, wait_for_log_line

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = (
    "RedisServer",
    "S3Service",
    "free_port",
    "redis_server",
    "s3",
    "s3_prefix",
    "start_redis",
)

#: credentials for moto (it accepts any); a real endpoint uses the environment's own
MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --------------------------------------------------------------------------------------------------
# Redis


class PortTakenError(Exception):
    """Another process listens on the port a server was to bind."""


@dataclasses.dataclass
class RedisServer:
    """A ``redis-server`` process of our own; :meth:`stop` and :meth:`start` restart it on the
    same port (with its data gone, as after a crash without persistence)."""

    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        # a restart appends to the same log: only what it writes counts
        log = self.directory / "redis.log"
        written = log.stat().st_size if log.exists() else 0
        self.process = subprocess.Popen(
            [
                executable,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--daemonize",
                "no",
                "--loglevel",
                "notice",  # for the line that says it listens
                "--logfile",
                str(log),
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        try:
            wait_for_log_line(log, b"Ready to accept connections", self.process, after=written)
        except AssertionError:
            if self.process.poll() is not None and b"in use" in log.read_bytes()[written:]:
                raise PortTakenError(self.port) from None
            raise

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextlib.contextmanager
def start_redis() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="anytus-redis-") as directory:
        # redis-server cannot pick a free port itself (port 0 turns TCP off): another process
        # can take the one chosen here before redis binds it, so choose again then
        for attempt in range(5):
            server = RedisServer(free_port(), Path(directory))
            try:
                server.start()
                break
            except PortTakenError:
                if attempt == 4:
                    raise
        try:
            yield server
        finally:
            server.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the session (tests use distinct key prefixes)."""
    with start_redis() as server:
        yield server


# --------------------------------------------------------------------------------------------------
# S3


@dataclasses.dataclass
class S3Service:
    """An S3 endpoint, its bucket, a client, and the environment a subprocess needs for it."""

    endpoint: str
    bucket: str
    client: Any
    env: dict[str, str]

    def keys(self, prefix: str) -> list[str]:
        """Every key under *prefix*."""
        keys: list[str] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=prefix
        ):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def multipart_uploads(self, prefix: str) -> list[str]:
        response = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for item in response.get("Uploads", []))


def _client(endpoint: str, env: dict[str, str]) -> Any:
    import boto3

    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID"),
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY"),
        region_name=env.get("AWS_DEFAULT_REGION"),
    )
    return session.client("s3", endpoint_url=endpoint)


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Service]:
    """moto's S3 server (or ``ANYTUS_TEST_S3_ENDPOINT``) with a bucket for the session."""
    endpoint = os.environ.get("ANYTUS_TEST_S3_ENDPOINT")
    if endpoint:
        bucket = os.environ.get("ANYTUS_TEST_S3_BUCKET")
        if not bucket:
            raise RuntimeError("ANYTUS_TEST_S3_ENDPOINT needs ANYTUS_TEST_S3_BUCKET")
        env = dict(os.environ)
        yield S3Service(endpoint, bucket, _client(endpoint, env), env)
        return

    env = {**os.environ, **MOTO_ENV}
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    # port 0: werkzeug binds a free port and names it in " * Running on ..." once it listens
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", "0"]
    with logged_process(command, log, env=env) as process:
        endpoint = announced_origin(wait_for_log_line(log, b"Running on", process))
        client = _client(endpoint, env)
        bucket = "anytus-test"
        client.create_bucket(Bucket=bucket)
        yield S3Service(endpoint, bucket, client, env)


@pytest.fixture
def s3_prefix() -> str:
    """A key prefix for one test."""
    return f"t-{uuid.uuid4().hex[:12]}/"
