"""``anytus serve`` per backend: which server runs (anytus._httpserver, on asyncio and trio), the
options, the lifespan, the access log, and the supervisor's handling of dead processes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest

from _server import (
    CLIENT_TLS,
    OFFSET_CONTENT_TYPE,
    TUS,
    ServerProcess,
    TusClient,
    assert_connections_shared_out,
    raw_request,
    run_server_process,
    subprocess_env,
    wait_for_exit,
    wait_for_files_sync,
)
from anytus._locks import RECORD_PREFIX
from anytus._serve import BACKLOG

if TYPE_CHECKING:
    from collections.abc import Iterator


pytestmark = pytest.mark.slow

#: the server each backend runs, as it names itself in the ``Server`` response header
SERVERS = {"asyncio": "anytus", "trio": "anytus"}
BACKENDS = [pytest.param(backend, id=f"{backend}-{server}") for backend, server in SERVERS.items()]

# "[2026-01-01 10:00:00,000] [1234] [INFO] 127.0.0.1:5678 PATCH /files/abc 204 0.001s"
_ACCESS = re.compile(
    r"\[(?P<pid>\d+)\] \[INFO\] 127\.0\.0\.1:\d+ (?P<method>[A-Z]+) (?P<path>\S+) "
    r"(?P<status>\d{3}) \d+\.\d{3}s(?: (?P<reason>.*))?$"
)


@pytest.fixture
def anyio_backend() -> str:
    """The clients here run on asyncio only: the backend under test is the server's."""
    return "asyncio"


def access_lines(server: ServerProcess) -> list[tuple[str, str, str]]:
    """(method, path, status) of every access-log line so far."""
    return [
        (m["method"], m["path"], m["status"])
        for line in server.stderr_lines
        if (m := _ACCESS.search(line))
    ]


def worker_pids(server: ServerProcess) -> list[int]:
    started = server.started_workers()
    assert started is not None, f"no worker PIDs logged: {server.stderr_lines!r}"
    return started[0]


def running(pid: int) -> bool:
    """Whether *pid* exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("backend", BACKENDS)
async def test_backend_runs_its_server_and_serves_a_full_upload(
    tmp_path: Path, backend: str
) -> None:
    data = os.urandom(3 * 1024 * 1024 + 5)
    with run_server_process(tmp_path / "uploads", "--backend", backend) as server:
        async with httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http:
            tus = TusClient(http, server.url)
            upload_id = await tus.upload(data, chunk=1024 * 1024)
            download = await http.get(tus.upload_url(upload_id))
            options = await http.options(server.url)

        assert download.content == data
        assert (server.directory / f"{upload_id}.bin").read_bytes() == data
        for response in (download, options):
            assert response.headers["server"].startswith(SERVERS[backend])

        # one access-log line per request: POST, 4 PATCHes, GET, OPTIONS
        expected = [
            ("POST", "/files/", "201"),
            *[("PATCH", f"/files/{upload_id}", "204")] * 4,
            ("GET", f"/files/{upload_id}", "200"),
            ("OPTIONS", "/files/", "200"),
        ]
        assert await server.logs(lambda: len(access_lines(server)) >= len(expected))
        assert access_lines(server) == expected, server.stderr_lines


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_asyncio_serves_on_the_event_loop_it_is_given(tmp_path: Path, loop: str) -> None:
    """``--loop``: a full upload (1 MiB PATCHes, which take the raw body path, and a small last
    one, in one hop), a download and a HEAD on each event loop."""
    data = os.urandom(3 * 1024 * 1024 + 5)
    with run_server_process(tmp_path / "uploads", "--loop", loop) as server:
        with httpx.Client(headers=TUS, timeout=30, verify=CLIENT_TLS) as http:
            created = http.post(server.url, headers={"Upload-Length": str(len(data))})
            url = f"{server.url}{created.headers['Location'].rsplit('/', 1)[1]}"
            for offset in range(0, len(data), 1024 * 1024):
                patched = http.patch(
                    url,
                    headers={"Upload-Offset": str(offset), "Content-Type": OFFSET_CONTENT_TYPE},
                    content=data[offset : offset + 1024 * 1024],
                )
                assert patched.status_code == 204, patched.text
            assert http.head(url).headers["Upload-Offset"] == str(len(data))
            assert http.get(url).content == data
        assert any(f"event loop {loop}," in line for line in server.stderr_lines)


def test_asyncio_runs_on_uvloop_when_it_is_installed(tmp_path: Path) -> None:
    # uvloop is in the test extra, as in anytus[uvloop]
    with run_server_process(tmp_path / "uploads") as server:
        assert httpx.options(server.url, verify=CLIENT_TLS).status_code == 200
        assert any("backend asyncio, event loop uvloop," in line for line in server.stderr_lines)
    with run_server_process(tmp_path / "uploads", "--backend", "trio") as server:
        assert any("backend trio, event loop trio," in line for line in server.stderr_lines)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_options_and_lifespan_cleanup(tmp_path: Path, backend: str) -> None:
    """--base-path, --max-size, --durability and --expire-after reach the app; the expired upload
    is removed by the periodic cleanup that TusApp runs in the ASGI lifespan."""
    arguments = ["--backend", backend, "--base-path", "/up", "--max-size", "1000"]
    arguments += ["--expire-after", "1", "--durability", "always"]
    with run_server_process(tmp_path / "uploads", *arguments) as server:
        assert server.url.endswith("/up/")
        async with httpx.AsyncClient(timeout=10, verify=CLIENT_TLS) as http:
            options = await http.options(server.url)
            assert options.headers["Tus-Max-Size"] == "1000"
            too_big = await http.post(server.url, headers={**TUS, "Upload-Length": "1001"})
            assert too_big.status_code == 413
            tus = TusClient(http, server.url)
            upload_id = await tus.new(1000)
            assert (await tus.patch(upload_id, 0, b"x" * 10)).status_code == 204

            # its last write, as the store sees it, is a minute old: expired already (the server
            # is another process, with the real clock)
            minute_ago = time.time() - 60
            os.utime(server.directory / f"{upload_id}.bin", (minute_ago, minute_ago))
            # nobody asks for it again: only the lifespan's periodic cleanup can remove it
            info = server.directory / f"{upload_id}.info"
            assert await server.logs(
                lambda: any(
                    "expired uploads: " in line and upload_id in line
                    for line in server.stderr_lines
                ),
                timeout=10,
            ), server.stderr_lines
            assert not info.exists()
            assert not (server.directory / f"{upload_id}.bin").exists()
            assert (await tus.head(upload_id)).status_code == 404


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_during_an_upload_keeps_its_bytes(tmp_path: Path, backend: str) -> None:
    """A client streaming when SIGTERM arrives: exit 0, and every byte that arrived is kept."""
    directory = tmp_path / "uploads"
    size = 64 * 1024 * 1024
    with run_server_process(directory, "--backend", backend, "--shutdown-timeout", "1") as server:
        created = httpx.post(
            server.url, headers={**TUS, "Upload-Length": str(size)}, verify=CLIENT_TLS
        )
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        stored = directory / f"{upload_id}.bin"
        sent = 0
        # set once the server has exited: until then the client sends nothing after its first
        # megabyte, so the upload is still in flight when the shutdown timeout (1 s) runs out
        server_gone = threading.Event()

        def body() -> Iterator[bytes]:
            nonlocal sent
            block = b"\x01" * (256 * 1024)
            while sent < size:
                if sent == 1 << 20:
                    server_gone.wait(60)
                sent += len(block)
                yield block

        outcome: list[object] = []

        def stream() -> None:
            headers = {
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            }
            headers["Content-Length"] = str(size)
            try:
                outcome.append(
                    httpx.patch(
                        f"{server.url}{upload_id}",
                        headers=headers,
                        content=body(),
                        verify=CLIENT_TLS,
                    )
                )
            except httpx.HTTPError as exc:
                outcome.append(exc)

        client = threading.Thread(target=stream)
        client.start()
        try:
            # mid-upload: some bytes stored, far from all
            assert wait_for_files_sync(
                server.directory, lambda: stored.exists() and stored.stat().st_size > 0
            ), server.stderr_lines
            exit_code = server.stop(signal.SIGTERM, timeout=20)
        finally:
            server_gone.set()
            client.join(30)

    assert exit_code == 0, server.stderr_lines[-20:]
    # interrupted at the end of the shutdown timeout, it was told why and when to come back
    [response] = outcome
    assert isinstance(response, httpx.Response), response
    assert response.status_code == 503
    assert response.text.startswith("ERR_SERVER_SHUTTING_DOWN")
    assert response.headers["Retry-After"]
    assert not [line for line in server.stderr_lines if "Traceback" in line]
    kept = stored.stat().st_size
    assert 0 < kept < size
    assert stored.read_bytes() == b"\x01" * kept
    assert not list(directory.glob("*.lock"))
    with run_server_process(directory, "--backend", backend) as again:
        head = httpx.head(f"{again.url}{upload_id}", headers=TUS, verify=CLIENT_TLS)
        assert head.headers["Upload-Offset"] == str(kept)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("workers", ["1", "2"])
def test_shutdown_waits_for_a_running_upload_and_a_second_signal_does_not(
    tmp_path: Path, backend: str, workers: str
) -> None:
    """SIGINT: the upload in flight is let finish; SIGINT again: the server exits at once,
    quietly, keeping what it received."""
    directory = tmp_path / "uploads"
    data = os.urandom(300_000)
    options = ("--backend", backend, "--workers", workers, "--shutdown-timeout", "60")
    with run_server_process(directory, *options) as server:
        urls = []
        for _ in range(2):
            created = httpx.post(
                server.url, headers={**TUS, "Upload-Length": str(len(data))}, verify=CLIENT_TLS
            )
            urls.append(created.headers["Location"])
        target = [f"/files/{url.rsplit('/', 1)[1]}" for url in urls]
        host = f"127.0.0.1:{server.port}"
        headers = {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE}
        with (
            socket.create_connection(("127.0.0.1", server.port)) as finishing,
            socket.create_connection(("127.0.0.1", server.port)) as stalled,
        ):
            for client, path in zip((finishing, stalled), target, strict=True):
                request = raw_request("PATCH", path, host, headers, content_length=len(data))
                client.sendall(request + data[:100_000])
            locks = [directory / f"{path.rsplit('/', 1)[1]}.lock" for path in target]
            assert wait_for_files_sync(directory, lambda: all(lock.exists() for lock in locks)), (
                server.stderr_lines
            )

            server.process.send_signal(signal.SIGINT)
            assert server.wait_for_log(
                lambda: any("shutting down" in line for line in server.stderr_lines)
            )
            # the running request goes on to its end and is answered
            finishing.sendall(data[100_000:])
            finishing.settimeout(20)
            assert finishing.recv(4096).startswith(b"HTTP/1.1 204"), server.stderr_lines

            started = time.monotonic()
            server.process.send_signal(signal.SIGINT)
            exit_code = server.process.wait(20)
            elapsed = time.monotonic() - started
    assert exit_code == 0, server.stderr_lines[-20:]
    assert elapsed < 10  # not the 60 s shutdown timeout
    assert not [line for line in server.stderr_lines if "Traceback" in line], "\n".join(
        server.stderr_lines
    )
    first, second = (directory / f"{path.rsplit('/', 1)[1]}.bin" for path in target)
    assert first.read_bytes() == data
    kept = second.read_bytes()
    assert kept == data[: len(kept)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_killed_worker_is_replaced_and_its_lock_is_free(tmp_path: Path, backend: str) -> None:
    """SIGKILL of the worker that streams an upload: it is reaped and replaced, the service stays
    up, and the upload resumes at once through the other worker, byte-exact."""
    data = os.urandom(200_000)
    with run_server_process(tmp_path / "uploads", "--backend", backend, "--workers", "2") as server:
        first_workers = set(worker_pids(server))
        created = httpx.post(
            server.url, headers={**TUS, "Upload-Length": str(len(data))}, verify=CLIENT_TLS
        )
        upload_id = created.headers["Location"].rsplit("/", 1)[1]
        lock = server.directory / f"{upload_id}.lock"
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            headers = {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE}
            target = f"/files/{upload_id}"
            host = f"127.0.0.1:{server.port}"
            client.sendall(
                raw_request("PATCH", target, host, headers, content_length=len(data))
                + data[:100_000]
            )
            # the worker streaming the body holds the lock: its PID is the record's first line
            assert wait_for_files_sync(
                server.directory, lambda: lock.exists() and lock.read_bytes().count(b"\n") >= 1
            )
            holder = int(lock.read_text().split()[0])
            stored = server.directory / f"{upload_id}.bin"
            assert holder in first_workers
            os.kill(holder, signal.SIGKILL)

            # reaped at once: no zombie left for lock judgements to trip on (the supervisor
            # logs the exit once it has reaped it)
            assert server.wait_for_log(
                lambda: any(f"worker {holder} exited" in line for line in server.stderr_lines)
            ), server.stderr_lines
            assert not os.path.exists(f"/proc/{holder}")
            assert server.wait_for_log(
                lambda: any("is ready" in line for line in server.stderr_lines)
            )
        assert any(f"worker {holder} exited with status -9" in line for line in server.stderr_lines)
        # its lock record went with it (the lock file linked to it stays, stale, until taken)
        assert not list(server.directory.glob(f"{RECORD_PREFIX}{holder}-*"))
        assert server.process.poll() is None
        # the replacement took the dead worker's place in sharing out connections
        assert_connections_shared_out(server)

        # the lock it held is free at once: no 423, no waiting for a poll interval
        url = f"{server.url}{upload_id}"
        with httpx.Client(headers=TUS, timeout=10, verify=CLIENT_TLS) as tus:
            offset = int(tus.head(url).headers["Upload-Offset"])
            assert offset == stored.stat().st_size <= 100_000
            resumed = tus.patch(
                url,
                headers={"Upload-Offset": str(offset), "Content-Type": OFFSET_CONTENT_TYPE},
                content=data[offset:],
            )
            assert resumed.status_code == 204, resumed.text
        assert stored.read_bytes() == data
        assert server.stop(signal.SIGTERM, timeout=30) == 0
    # the workers that exited with the server removed theirs
    assert not list(server.directory.glob(f"{RECORD_PREFIX}*"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_workers_exit_when_the_supervisor_is_killed(tmp_path: Path, backend: str) -> None:
    with run_server_process(tmp_path / "uploads", "--backend", backend, "--workers", "2") as server:
        workers = worker_pids(server)
        server.process.kill()
        server.process.wait()
        assert wait_for_exit(workers, timeout=15), "workers kept running without their supervisor"
        assert not any(running(pid) for pid in workers)


def test_lock_records_of_a_killed_service_are_removed_at_start(tmp_path: Path) -> None:
    """A service killed whole (an OOM kill of its container) leaves its workers' lock records;
    the next start removes them, and not another host's that is still fresh."""
    directory = tmp_path / "uploads"
    directory.mkdir()
    dead_pid = subprocess.Popen([sys.executable, "-c", ""])
    dead_pid.wait()
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    dead = directory / f"{RECORD_PREFIX}{dead_pid.pid}-0123456789abcdef"
    dead.write_text(f"{dead_pid.pid}\nanytus {socket.gethostname()} {boot_id} 12345 0123\n")
    os.link(dead, directory / "0123456789abcdef0123456789abcdef.lock")  # a lock it held
    foreign = directory / f"{RECORD_PREFIX}1-fedcba9876543210"
    foreign.write_text("1\nanytus some-other-host.example - 1 fedc\n")
    with run_server_process(directory) as server:
        assert not dead.exists()
        assert foreign.exists()
        assert server.stop(signal.SIGTERM, timeout=30) == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_port_in_use_is_refused(tmp_path: Path, backend: str) -> None:
    """A second server on the same port is refused with a clear message; the first goes on."""
    with run_server_process(tmp_path / "first") as server:
        command = [sys.executable, "-m", "anytus", "serve", "--dir", str(tmp_path / "second")]
        command += ["--backend", backend, "--port", str(server.port)]
        second = subprocess.run(
            command, capture_output=True, text=True, env=subprocess_env(), timeout=30, check=False
        )
        assert second.returncode == 1
        assert f"cannot listen on 127.0.0.1:{server.port}" in second.stderr
        assert httpx.options(server.url, verify=CLIENT_TLS).status_code == 200


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_logs_name_each_request_and_upload_event(tmp_path: Path, log_format: str) -> None:
    """One access line per request, with the error code of a refusal; one line per upload event
    (created, interrupted, completed, terminated) with its ID, size and file name."""
    with run_server_process(tmp_path / "uploads", "--log-format", log_format) as server:
        metadata = {**TUS, "Upload-Metadata": "filename ZsOqdGUucGRm"}  # "fête.pdf"
        with httpx.Client(headers=TUS, timeout=10, verify=CLIENT_TLS) as tus:
            created = tus.post(server.url, headers={**metadata, "Upload-Defer-Length": "1"})
            url = created.headers["Location"]
            upload_id = url.rsplit("/", 1)[1]
            assert tus.head(f"{server.url}nosuchupload").status_code == 404
            # a body cut short: the client goes away after 1,000 of 5,000 bytes
            with socket.create_connection(("127.0.0.1", server.port)) as client:
                headers = {
                    **TUS,
                    "Upload-Offset": "0",
                    "Upload-Length": "5000",
                    "Content-Type": OFFSET_CONTENT_TYPE,
                }
                host = f"127.0.0.1:{server.port}"
                path = f"/files/{upload_id}"
                client.sendall(raw_request("PATCH", path, host, headers, content_length=5000))
                client.sendall(b"a" * 1000)
            assert server.wait_for_log(
                lambda: any("interrupted" in line for line in server.stderr_lines)
            )
            resumed = tus.patch(
                url,
                headers={"Upload-Offset": "1000", "Content-Type": OFFSET_CONTENT_TYPE},
                content=b"b" * 4000,
            )
            assert resumed.status_code == 204
            assert tus.delete(url).status_code == 204
            assert server.wait_for_log(
                lambda: any("DELETE" in line for line in server.stderr_lines)
            )
    lines = server.stderr_lines
    if log_format == "json":
        records = [json.loads(line) for line in lines if line.startswith("{")]
        events = {r["event"]: r for r in records if r.get("upload_id") == upload_id}
        assert set(events) == {"created", "interrupted", "completed", "terminated"}, records
        assert events["created"]["size"] is None
        assert events["interrupted"]["offset"] == 1000
        assert events["completed"]["size"] == 5000
        assert all(event["upload_filename"] == "fête.pdf" for event in events.values())
        assert all(r["logger"].startswith("anytus.") for r in records), records
        [refused] = [r for r in records if r["logger"] == "anytus.access" and r["status"] == 404]
        assert refused["message"].endswith("ERR_UPLOAD_NOT_FOUND: upload nosuchupload not found")
        return
    text = "\n".join(lines)
    assert f"upload {upload_id} created (deferred length, filename 'fête.pdf')" in text
    assert (
        f"upload {upload_id} interrupted (at 1000 of 5000 bytes, filename 'fête.pdf', "
        "the client disconnected)" in text
    )
    assert f"upload {upload_id} completed (5000 bytes, filename 'fête.pdf')" in text
    assert f"upload {upload_id} terminated (5000 bytes, filename 'fête.pdf')" in text
    assert sum(upload_id in line and "interrupted" in line for line in lines) == 1
    [refused] = [m for line in lines if (m := _ACCESS.search(line)) and m["status"] == "404"]
    assert refused["reason"] == "ERR_UPLOAD_NOT_FOUND: upload nosuchupload not found"


@pytest.mark.parametrize("backend", BACKENDS)
def test_listen_backlog_and_open_files_limit(tmp_path: Path, backend: str) -> None:
    """The backlog asked for is the one in effect (up to the kernel's cap), and the soft limit on
    open files is raised to the hard one."""
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    prefix = ["prlimit", "--nofile=256:4096"]
    with run_server_process(tmp_path / "uploads", "--backend", backend, prefix=prefix) as server:
        listening = subprocess.run(
            ["ss", "-ltnH", f"sport = :{server.port}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        # State Recv-Q Send-Q ...: a listening socket's Send-Q is its backlog
        assert listening[0] == "LISTEN"
        assert int(listening[2]) == min(BACKLOG, somaxconn)
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        [line] = [line for line in limits.splitlines() if line.startswith("Max open files")]
        assert line.split()[3:5] == ["4096", "4096"]


def read_response(client: socket.socket) -> bytes:
    """One whole response (head and ``Content-Length`` body) from a blocking socket."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += client.recv(65536) or b"\0"  # a NUL marks EOF, to fail the caller's check
    head, body = data.split(b"\r\n\r\n", 1)
    match = re.search(rb"(?i)\r\ncontent-length: (\d+)", head)
    while match and len(body) < int(match[1]):
        more = client.recv(65536)
        if not more:
            break
        body += more
    return data[: len(head) + 4] + body


def test_out_of_file_descriptors_answers_503(tmp_path: Path) -> None:
    """With its descriptors used up by uploads in flight, the server answers 503 with
    Retry-After (a load peak that passes), never 500; once they end, it serves again."""
    limit = 64
    prefix = ["prlimit", f"--nofile={limit}:{limit}"]
    with run_server_process(tmp_path / "uploads", prefix=prefix) as server:
        host = f"127.0.0.1:{server.port}"
        fds = Path(f"/proc/{server.process.pid}/fd")
        held: list[tuple[socket.socket, str]] = []
        answers: list[bytes] = []
        try:
            # connections, each with an upload created: one descriptor each, accepted while
            # there are descriptors to accept them with
            while len(list(fds.iterdir())) < limit - 6:
                client = socket.create_connection(("127.0.0.1", server.port))
                client.settimeout(20)
                create = {**TUS, "Upload-Length": "1000000"}
                client.sendall(raw_request("POST", "/files/", host, create, content_length=0))
                head = read_response(client)
                assert head.startswith(b"HTTP/1.1 201"), head
                [location] = [
                    line.split(b": ", 1)[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"location:")
                ]
                held.append((client, "/" + location.decode().split("/", 3)[3]))
            # then a PATCH on each: one in flight holds its data and lock files open too
            patch = {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE}
            for client, path in held:
                client.sendall(raw_request("PATCH", path, host, patch, content_length=1000000))
                client.sendall(b"x" * 100_000)
            for client, _ in held:
                client.settimeout(0.5)
                with contextlib.suppress(TimeoutError):  # still streaming: it got its files
                    answers.append(read_response(client))
        finally:
            for client, _ in held:
                client.close()
        assert answers, "the descriptors never ran out: raise the load"
        for head in answers:
            assert head.startswith(b"HTTP/1.1 503"), "\n".join(server.stderr_lines[-60:])
            assert b"ERR_TOO_MANY_OPEN_FILES" in head
            assert b"\r\nretry-after: " in head.lower()
        # the peak has passed: it serves again
        # a connection waits in the listen queue until the server has a descriptor again
        assert httpx.options(server.url, verify=CLIENT_TLS, timeout=20).status_code == 200
        created = httpx.post(server.url, headers={**TUS, "Upload-Length": "3"}, verify=CLIENT_TLS)
        assert created.status_code == 201
        assert server.process.poll() is None


def test_workers_auto_runs_one_per_usable_cpu(tmp_path: Path) -> None:
    """``--workers auto`` (the default) runs one process per CPU this process may run on, and
    they serve together."""
    cpus = len(os.sched_getaffinity(0))
    with run_server_process(tmp_path, "--workers", "auto") as server:
        if cpus > 1:
            assert len(worker_pids(server)) == cpus
        else:
            assert server.started_workers() is None
        assert httpx.options(server.url, verify=CLIENT_TLS).status_code == 200
        created = httpx.post(server.url, headers={**TUS, "Upload-Length": "3"}, verify=CLIENT_TLS)
        assert created.status_code == 201


def thread_cpus(pid: int) -> set[frozenset[int]]:
    """The CPUs each thread of process *pid* may run on, as a set of distinct CPU sets."""
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            found.add(frozenset(os.sched_getaffinity(int(task))))
    return found


def test_each_worker_runs_on_a_cpu_of_its_own(tmp_path: Path) -> None:
    """Several workers and no more than the usable CPUs (what ``--workers auto`` makes): each
    worker, every thread it starts included, runs on a CPU of its own (``--pin-workers``
    defaults to that), and the replacement of a killed worker takes the dead one's CPU."""
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        pytest.skip("needs two usable CPUs")
    with run_server_process(tmp_path, "--workers", "2") as server:
        started = server.started_workers()
        assert started is not None
        pids, cpus = started
        assert cpus == usable[:2]
        # uploads on several connections, so that the workers have started their threads
        with httpx.Client(headers=TUS, verify=CLIENT_TLS) as tus:
            for _ in range(8):
                created = tus.post(server.url, headers={"Upload-Length": "3"})
                url = created.headers["Location"]
                assert (
                    tus.patch(
                        url,
                        headers={"Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE},
                        content=b"abc",
                    ).status_code
                    == 204
                )
        for pid, cpu in zip(pids, cpus, strict=True):
            assert thread_cpus(pid) == {frozenset({cpu})}
        os.kill(pids[0], signal.SIGKILL)
        ready = re.compile(r"worker (\d+) is ready")
        assert server.wait_for_log(lambda: any(ready.search(line) for line in server.stderr_lines))
        match = next(m for line in server.stderr_lines if (m := ready.search(line)))
        assert thread_cpus(int(match.group(1))) == {frozenset({cpus[0]})}


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigterm_to_every_process_still_waits_for_a_running_upload(
    tmp_path: Path, backend: str
) -> None:
    """A service manager sends SIGTERM to every process of the service (systemd's default), and
    the supervisor forwards its own: a worker gets two SIGTERMs at once, which must not skip the
    graceful wait. A second signal to the supervisor still stops everything at once."""
    directory = tmp_path / "uploads"
    data = os.urandom(300_000)
    options = ("--backend", backend, "--workers", "2", "--shutdown-timeout", "60")
    with run_server_process(directory, *options) as server:
        created = httpx.post(
            server.url, headers={**TUS, "Upload-Length": str(len(data))}, verify=CLIENT_TLS
        )
        path = "/files/" + created.headers["Location"].rsplit("/", 1)[1]
        host = f"127.0.0.1:{server.port}"
        headers = {**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE}
        with socket.create_connection(("127.0.0.1", server.port)) as client:
            client.sendall(
                raw_request("PATCH", path, host, headers, content_length=len(data)) + data[:100_000]
            )
            lock = directory / f"{path.rsplit('/', 1)[1]}.lock"
            assert wait_for_files_sync(directory, lock.exists), server.stderr_lines
            for pid in [server.process.pid, *worker_pids(server)]:
                os.kill(pid, signal.SIGTERM)
            assert server.wait_for_log(
                lambda: sum("shutting down" in line for line in server.stderr_lines) >= 2
            )
            client.sendall(data[100_000:])
            client.settimeout(20)
            assert client.recv(4096).startswith(b"HTTP/1.1 204"), server.stderr_lines
            assert not any("stopping now" in line for line in server.stderr_lines)
            started = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            exit_code = server.process.wait(20)
    assert exit_code == 0, server.stderr_lines[-20:]
    assert time.monotonic() - started < 10  # not the 60 s shutdown timeout
    assert (directory / f"{path.rsplit('/', 1)[1]}.bin").read_bytes() == data
