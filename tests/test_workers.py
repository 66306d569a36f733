"""``anytus serve`` as a real process: several worker processes on one socket, and shutdown.

The locks that keep one upload consistent must hold *across processes* here: competing requests
for one upload land on different workers, and only the file system is shared.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest

from _server import (
    CLIENT_TLS,
    OFFSET_CONTENT_TYPE,
    TUS,
    ServerProcess,
    TusClient,
    assert_connections_shared_out,
    race_to_completion,
    raw_request,
    read_raw_response,
    run_server_process,
    wait_for_files,
    wait_for_files_sync,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = pytest.mark.slow

# "[2026-01-01 10:00:00,000] [1234] [INFO] 127.0.0.1:5678 PATCH /files/abc 204 0.001s"
_REQUEST_LOG = re.compile(r"\[(\d+)\] \[INFO\] \S+ (HEAD|PATCH|POST|GET|DELETE|OPTIONS) ")


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[ServerProcess]:
    with run_server_process(tmp_path / "uploads", "--workers", "2") as process:
        yield process


def serving_pids(server: ServerProcess) -> set[int]:
    """PIDs of the processes that logged a request."""
    return {int(m.group(1)) for line in server.stderr_lines if (m := _REQUEST_LOG.search(line))}


def request_pids(server: ServerProcess, method: str, status: str, upload_id: str) -> set[int]:
    """PIDs of the processes that logged a *method* request on *upload_id* answered *status*."""
    pattern = re.compile(rf"\[(\d+)\] \[INFO\] \S+ {method} /files/{upload_id} {status} ")
    return {int(m.group(1)) for line in server.stderr_lines if (m := pattern.search(line))}


def child_pids(pid: int) -> set[int]:
    children = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.add(int(entry))
    return children


async def test_competing_patches_across_workers(workers: ServerProcess) -> None:
    if os.path.isdir("/proc"):
        assert len(child_pids(workers.process.pid)) >= 2, workers.stderr_lines

    def data_of(upload_id: str) -> bytes:
        return (workers.directory / f"{upload_id}.bin").read_bytes()

    size = 512 * 1024
    # no keep-alive: every request opens a new connection, which either worker may accept
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits, verify=CLIENT_TLS) as http:
        tus = TusClient(http, workers.url)
        upload_id = await tus.new(size)
        await race_to_completion(tus, upload_id, size, data_of, contenders=6, chunk=128 * 1024)
        head = await tus.head(upload_id)

    assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(size)
    assert (workers.directory / f"{upload_id}.bin").stat().st_size == size
    assert not list(workers.directory.glob("*.lock"))
    assert len(serving_pids(workers)) == 2, "only one worker served requests"


async def test_full_upload_through_workers(workers: ServerProcess) -> None:
    data = os.urandom(8 * 1024 * 1024 + 17)
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=30, limits=limits, verify=CLIENT_TLS) as http:
        tus = TusClient(http, workers.url)
        upload_id = await tus.upload(data, chunk=512 * 1024, metadata={"filename": b"big.bin"})
        for _ in range(4):  # whichever worker answers, it reads the same state
            head = await tus.head(upload_id)
            assert head.headers["Upload-Offset"] == str(len(data))
        download = await http.get(tus.upload_url(upload_id))

    assert download.content == data
    assert (workers.directory / f"{upload_id}.bin").read_bytes() == data
    info = json.loads((workers.directory / f"{upload_id}.info").read_bytes())
    assert info["Size"] == len(data)
    assert info["MetaData"] == {"filename": "big.bin"}


def test_connections_opened_at_once_are_shared_out(workers: ServerProcess) -> None:
    """A client that opens its pool of eight connections at once gets them spread over both
    workers, not all or most on one."""
    assert_connections_shared_out(workers)


async def test_release_request_across_workers(workers: ServerProcess) -> None:
    """A HEAD for an upload whose PATCH is stalled in *another* process gets its answer soon.

    Which worker accepts a connection is up to the kernel, so the scenario is repeated (on a new
    upload each time) until the HEAD has landed on the other worker at least once.
    """
    data = os.urandom(100_000)
    limits = httpx.Limits(max_keepalive_connections=0)
    crossed = False
    async with httpx.AsyncClient(timeout=15, limits=limits, verify=CLIENT_TLS) as http:
        tus = TusClient(http, workers.url)
        for _ in range(12):
            upload_id = await tus.new(len(data))
            stream = await anyio.connect_tcp("127.0.0.1", workers.port)
            async with stream:
                await stream.send(
                    raw_request(
                        "PATCH",
                        f"/files/{upload_id}",
                        f"127.0.0.1:{workers.port}",
                        {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE},
                        content_length=len(data),
                    )
                    + data[:20_000]
                )
                # the PATCH now holds the lock (its file is there) and waits for more
                lock_file = workers.directory / f"{upload_id}.lock"
                assert await wait_for_files(lock_file.parent, lock_file.exists), (
                    "the PATCH never took the lock"
                )

                started = time.monotonic()
                head = await tus.head(upload_id)
                assert time.monotonic() - started < 4
                # what the server had read of the 20,000 bytes when the HEAD stopped the PATCH
                offset = int(head.headers["Upload-Offset"])
                assert 0 <= offset <= 20_000
                with anyio.fail_after(5):
                    interrupted = await read_raw_response(stream)
                assert interrupted.status == 400
                assert interrupted.body.startswith(b"ERR_UPLOAD_INTERRUPTED")

            assert (workers.directory / f"{upload_id}.bin").read_bytes() == data[:offset]
            resumed = await tus.patch(upload_id, offset, data[offset:])
            assert resumed.status_code == 204
            assert (workers.directory / f"{upload_id}.bin").read_bytes() == data

            def logged(method: str, status: str, upload_id: str = upload_id) -> set[int]:
                return request_pids(workers, method, status, upload_id)

            assert await workers.logs(
                lambda: bool(logged("HEAD", "200") and logged("PATCH", "400"))
            ), workers.stderr_lines[-10:]
            if logged("HEAD", "200") != logged("PATCH", "400"):
                crossed = True
                break
    assert crossed, "in 12 tries, no HEAD landed on the other worker"


@pytest.mark.parametrize(
    ("sig", "worker_count"),
    [
        pytest.param(signal.SIGINT, 1, id="SIGINT"),
        pytest.param(signal.SIGTERM, 1, id="SIGTERM"),
        pytest.param(signal.SIGTERM, 2, id="SIGTERM-2-workers"),
    ],
)
def test_signal_shuts_down_cleanly(tmp_path: Path, sig: int, worker_count: int) -> None:
    directory = tmp_path / "uploads"
    data = os.urandom(100_000)
    # a stalled request is cancelled after --shutdown-timeout (the default is 5 s)
    options = ("--workers", str(worker_count), "--shutdown-timeout", "0.5")
    with run_server_process(directory, *options) as server:
        created = httpx.post(
            server.url, headers={**TUS, "Upload-Length": str(len(data))}, verify=CLIENT_TLS
        )
        assert created.status_code == 201
        upload_id = created.headers["Location"].rsplit("/", 1)[1]

        # an upload in flight: 20 000 of 100 000 bytes sent, then the client goes quiet
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(
                raw_request(
                    "PATCH",
                    f"/files/{upload_id}",
                    f"127.0.0.1:{server.port}",
                    {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE},
                    content_length=len(data),
                )
                + data[:20_000]
            )
            # the PATCH holds the lock (its file is there): the server is reading the body
            lock = directory / f"{upload_id}.lock"
            assert wait_for_files_sync(directory, lock.exists, timeout=10), server.stderr_lines[
                -20:
            ]

            started = time.monotonic()
            exit_code = server.stop(sig, timeout=20)
            elapsed = time.monotonic() - started

    assert exit_code == 0, server.stderr_lines[-20:]
    assert elapsed < 5.5  # the shutdown timeout and the supervisor's margin, not the default
    assert (directory / f"{upload_id}.bin").read_bytes() == data[:20_000]
    info = json.loads((directory / f"{upload_id}.info").read_bytes())
    assert info["Size"] == len(data)
    assert not list(directory.glob("*.lock"))

    # a new server picks the upload up where the old one left it
    with run_server_process(directory) as server:
        url = f"{server.url}{upload_id}"
        head = httpx.head(url, headers=TUS, verify=CLIENT_TLS)
        assert head.headers["Upload-Offset"] == "20000"
        resumed = httpx.patch(
            url,
            headers={**TUS, "Upload-Offset": "20000", "Content-Type": OFFSET_CONTENT_TYPE},
            content=data[20_000:],
            verify=CLIENT_TLS,
        )
        assert resumed.status_code == 204
    assert (directory / f"{upload_id}.bin").read_bytes() == data
