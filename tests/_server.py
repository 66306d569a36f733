"""Helpers for the end-to-end tests: real servers on 127.0.0.1 and small tus client helpers.

Not collected by pytest (the name does not start with ``test_``). Two ways to get a server:

- :func:`serve_app` serves an ASGI app with hypercorn *inside the current test's event loop*
  (hypercorn's asyncio or trio worker, whichever backend the test runs on), so every async test
  exercises the app on both backends;
- :func:`run_server_process` runs ``python -m anytus serve`` as a real subprocess, as users run it.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import dataclasses
import errno
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import anyio
import httpx
import sniffio
from hypercorn.config import Config

if TYPE_CHECKING:
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Iterable,
        Iterator,
        Mapping,
        Sequence,
    )

__all__ = (
    "ConnectionClosedError",
    "OFFSET_CONTENT_TYPE",
    "TUS",
    "RawResponse",
    "ServerProcess",
    "TusClient",
    "announced_origin",
    "decode_metadata",
    "encode_metadata",
    "logged_process",
    "raw_request",
    "read_raw_response",
    "race_to_completion",
    "run_server_process",
    "serve_app",
    "subprocess_env",
    "upload_id_of",
    "wait_for",
    "wait_for_exit",
    "wait_for_files",
    "wait_for_files_sync",
    "wait_for_log_line",
    "wait_until_answering",
)

#: the header every tus request but OPTIONS and GET must carry
TUS: Mapping[str, str] = {"Tus-Resumable": "1.0.0"}
#: every test's httpx client verifies HTTPS with this one context: httpx would load a CA bundle
#: for each client it makes, 60 ms of CPU, hundreds of times a run
CLIENT_TLS = httpx.create_ssl_context()
OFFSET_CONTENT_TYPE = "application/offset+octet-stream"

_BANNER = re.compile(r"anytus: serving (?P<dir>.+) on (?P<url>https?://[^\s/]+:(?P<port>\d+)/\S*)")
_ID = re.compile(r"/([A-Za-z0-9_-]+)/?$")
#: the supervisor's line naming its workers, and their CPUs when pinned
_WORKERS = re.compile(
    r"started \d+ workers: (?P<pids>\d+(?: \d+)*)(?: \(on CPUs (?P<cpus>\d+(?: \d+)*)\))?$"
)


def subprocess_env() -> dict[str, str]:
    """An environment in which ``python -m anytus`` imports the same anytus as this process
    (whether or not the project is installed into the interpreter)."""
    import anytus

    source_root = str(Path(anytus.__file__).resolve().parent.parent)
    existing = os.environ.get("PYTHONPATH")
    pythonpath = source_root if not existing else f"{source_root}{os.pathsep}{existing}"
    return dict(os.environ, PYTHONPATH=pythonpath, PYTHONUNBUFFERED="1")


# ---------------------------------------------------------------------------------------------------
# in-process server


@contextlib.asynccontextmanager
async def serve_app(
    app: object,
    *,
    host: str = "127.0.0.1",
    path: str = "/files/",
    graceful_timeout: float = 2.0,
    root_path: str = "",
) -> AsyncIterator[str]:
    """Serve *app* with hypercorn on *host*, on a free port, in the running event loop.

    Yields the URL of *path* on that server. The listening socket is bound and listening before the
    URL is yielded (connections queue in the backlog until hypercorn accepts them), so no readiness
    polling is needed. On exit hypercorn is shut down through its ``shutdown_trigger``.
    """
    # Bind ourselves so that the real port is known; hypercorn adopts the socket via ``fd://``.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((host, 0))
        sock.listen(128)
        port = sock.getsockname()[1]
    except BaseException:
        sock.close()
        raise

    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.graceful_timeout = graceful_timeout
    # hypercorn's root_path: given to the app as ASGI root_path, and not part of path
    config.root_path = root_path
    config.accesslog = None
    config.errorlog = None  # the app's own errors must surface as responses, not log noise

    serve: Callable[..., Awaitable[None]]
    if sniffio.current_async_library() == "trio":
        from hypercorn.trio import serve as trio_serve

        serve = trio_serve
    else:
        from hypercorn.asyncio import serve as asyncio_serve

        serve = asyncio_serve

    shutdown = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(partial(serve, cast("Any", app), config, shutdown_trigger=shutdown.wait))
        try:
            yield f"http://{host}:{port}{path}"
        finally:
            shutdown.set()


# ---------------------------------------------------------------------------------------------------
# `anytus serve` as a subprocess


@dataclasses.dataclass(kw_only=True)
class AnytusProcess:
    """A running ``anytus serve`` subprocess, whatever its store."""

    process: subprocess.Popen[bytes]
    #: the creation URL the server announced, e.g. ``http://127.0.0.1:41234/files/``
    url: str
    #: every stderr line so far (the reader thread appends to it)
    stderr_lines: list[str]
    #: notified by the reader thread at each new line, and at the end of the output
    logged: threading.Condition = dataclasses.field(default_factory=threading.Condition)

    @property
    def origin(self) -> str:
        """``http://HOST:PORT`` (or ``https://``) of the server."""
        match = re.match(r"https?://[^/]+", self.url)
        assert match is not None
        return match.group(0)

    @property
    def port(self) -> int:
        return int(self.origin.rsplit(":", 1)[1])

    def wait_for_log(self, predicate: Callable[[], bool], *, timeout: float = 20.0) -> bool:
        """Wait until *predicate* (of :attr:`stderr_lines`) holds, woken by each line the server
        logs; return its last value (False after *timeout*)."""
        with self.logged:
            return self.logged.wait_for(predicate, timeout)

    async def logs(self, predicate: Callable[[], bool], *, timeout: float = 20.0) -> bool:
        """:meth:`wait_for_log` for async tests: the wait happens in a worker thread."""
        return await anyio.to_thread.run_sync(
            partial(self.wait_for_log, predicate, timeout=timeout)
        )

    def started_workers(self) -> tuple[list[int], list[int] | None] | None:
        """The worker PIDs the supervisor logged, and the CPU of each (None: not pinned); None
        when no supervisor logged any (one worker: the server process serves itself)."""
        for line in self.stderr_lines:
            if match := _WORKERS.search(line):
                cpus = match["cpus"]
                pids = [int(pid) for pid in match["pids"].split()]
                return pids, None if cpus is None else [int(cpu) for cpu in cpus.split()]
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Send *sig*, wait for the exit and return the exit code (kill after *timeout*)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                return self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would, and reap it."""
        self.process.kill()
        self.process.wait()


@dataclasses.dataclass(kw_only=True)
class ServerProcess(AnytusProcess):
    """A running ``anytus serve --dir DIRECTORY`` subprocess."""

    directory: Path


def _read_lines(
    stream: Any, sink: list[str], announced: threading.Event, logged: threading.Condition
) -> None:
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with logged:
            sink.append(line)
            logged.notify_all()
        if _BANNER.search(line):
            announced.set()
    announced.set()  # EOF: the process died before announcing; the caller checks
    with logged:
        logged.notify_all()


@contextlib.contextmanager
def run_server_process(
    directory: Path,
    *args: str,
    startup_timeout: float = 30.0,
    prefix: Sequence[str] = (),
) -> Iterator[ServerProcess]:
    """Run ``python -m anytus serve --port 0 --dir DIRECTORY *ARGS`` and yield it once it listens
    (as :func:`serve_process`)."""
    with serve_process(
        "--dir", str(directory), *args, startup_timeout=startup_timeout, prefix=prefix
    ) as server:
        yield ServerProcess(
            process=server.process,
            url=server.url,
            stderr_lines=server.stderr_lines,
            logged=server.logged,
            directory=directory,
        )


@contextlib.contextmanager
def serve_process(
    *args: str,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 30.0,
    prefix: Sequence[str] = (),
) -> Iterator[AnytusProcess]:
    """Run ``python -m anytus serve --host 127.0.0.1 --port 0 *ARGS`` (*ARGS* name the store) and
    yield it once it listens.

    *env* is added to the environment. *prefix* goes before the command (``prlimit ...``,
    ``setpriv ...``). One worker unless *args* say ``--workers``: the tests look into one process
    (its descriptors, its log); the default, ``--workers auto``, has tests of its own.

    The announced ``anytus: serving ... on http://HOST:PORT/files/`` line gives the URL. stderr is
    drained by a thread for the whole lifetime (the server logs every request there). Teardown sends
    SIGTERM, waits, then kills.
    """
    command = [
        *prefix,
        sys.executable,
        "-m",
        "anytus",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        *([] if any(arg.startswith("--workers") for arg in args) else ["--workers", "1"]),
        *args,
    ]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**subprocess_env(), **(env or {})},
    )
    lines: list[str] = []
    announced = threading.Event()
    logged = threading.Condition()
    reader = threading.Thread(
        target=_read_lines, args=(process.stderr, lines, announced, logged), daemon=True
    )
    reader.start()
    try:
        if not announced.wait(startup_timeout):
            raise AssertionError(f"anytus serve did not announce itself: {lines!r}")
        url = next((m.group("url") for line in lines if (m := _BANNER.search(line))), None)
        if url is None:
            raise AssertionError(
                f"anytus serve exited ({process.poll()}) without announcing: {lines!r}"
            )
        yield AnytusProcess(process=process, url=url, stderr_lines=lines, logged=logged)
    finally:
        end_process(process)
        reader.join(5)
        # a file closed while another thread reads it fails that read
        if process.stderr is not None and not reader.is_alive():
            process.stderr.close()


# ---------------------------------------------------------------------------------------------------
# tus helpers


def encode_metadata(metadata: Mapping[str, bytes | None]) -> str:
    """Build an ``Upload-Metadata`` value; ``None`` means a key without a value."""
    pairs = []
    for key, value in metadata.items():
        if value is None:
            pairs.append(key)
        else:
            pairs.append(f"{key} {base64.b64encode(value).decode()}")
    return ",".join(pairs)


def decode_metadata(header: str) -> dict[str, bytes]:
    """Parse an ``Upload-Metadata`` value into raw bytes (a key without a value maps to ``b""``)."""
    result: dict[str, bytes] = {}
    for pair in header.split(","):
        pair = pair.strip()
        if not pair:
            continue
        key, _, value = pair.partition(" ")
        result[key] = base64.b64decode(value.strip(), validate=True)
    return result


def upload_id_of(location: str) -> str:
    """The upload ID at the end of an upload URL."""
    match = _ID.search(location)
    assert match is not None, location
    return match.group(1)


@dataclasses.dataclass
class TusClient:
    """A thin tus client over :class:`httpx.AsyncClient` for tests that want exact control."""

    http: httpx.AsyncClient
    #: the creation URL, e.g. ``http://127.0.0.1:1234/files/``
    url: str

    def upload_url(self, upload_id: str) -> str:
        return f"{self.url}{upload_id}"

    async def create(
        self,
        length: int | None,
        *,
        metadata: Mapping[str, bytes | None] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
    ) -> httpx.Response:
        """POST a new upload (``length=None`` defers the length); the caller checks the status."""
        all_headers = dict(TUS)
        if length is None:
            all_headers["Upload-Defer-Length"] = "1"
        else:
            all_headers["Upload-Length"] = str(length)
        if metadata is not None:
            all_headers["Upload-Metadata"] = encode_metadata(metadata)
        if body is not None:
            all_headers["Content-Type"] = OFFSET_CONTENT_TYPE
        all_headers.update(headers or {})
        return await self.http.post(self.url, headers=all_headers, content=body)

    async def new(self, length: int | None, **kwargs: Any) -> str:
        """Create an upload, insist on 201, and return its ID."""
        response = await self.create(length, **kwargs)
        assert response.status_code == 201, (response.status_code, response.text)
        return upload_id_of(response.headers["Location"])

    async def patch(
        self,
        upload_id: str,
        offset: int | str,
        body: bytes | AsyncIterator[bytes],
        headers: Mapping[str, str] | None = None,
        *,
        timeout: float | None = None,
    ) -> httpx.Response:
        all_headers = dict(TUS)
        all_headers["Upload-Offset"] = str(offset)
        all_headers["Content-Type"] = OFFSET_CONTENT_TYPE
        all_headers.update(headers or {})
        return await self.http.patch(
            self.upload_url(upload_id),
            headers=all_headers,
            content=body,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )

    async def head(self, upload_id: str, *, timeout: float | None = None) -> httpx.Response:
        return await self.http.head(
            self.upload_url(upload_id),
            headers=TUS,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )

    async def offset(self, upload_id: str) -> int:
        response = await self.head(upload_id)
        assert response.status_code == 200, response.status_code
        return int(response.headers["Upload-Offset"])

    async def upload(self, data: bytes, *, chunk: int = 1 << 16, **create: Any) -> str:
        """Create an upload of *data* and send it in PATCHes of *chunk* bytes; return its ID."""
        upload_id = await self.new(len(data), **create)
        for start in range(0, len(data), chunk):
            response = await self.patch(upload_id, start, data[start : start + chunk])
            assert response.status_code == 204, (response.status_code, response.text)
            assert int(response.headers["Upload-Offset"]) == min(start + chunk, len(data))
        return upload_id


async def compete(
    tus: TusClient, upload_id: str, offset: int, bodies: list[bytes]
) -> list[httpx.Response]:
    """Send one PATCH per body, all at *offset*, concurrently; return the responses in order."""
    responses: list[httpx.Response | None] = [None] * len(bodies)

    async def one(i: int) -> None:
        responses[i] = await tus.patch(upload_id, offset, bodies[i])

    async with anyio.create_task_group() as tg:
        for i in range(len(bodies)):
            tg.start_soon(one, i)
    return [r for r in responses if r is not None]


async def race_to_completion(
    tus: TusClient,
    upload_id: str,
    size: int,
    data_of: Callable[[str], bytes],
    contenders: int,
    chunk: int,
) -> None:
    """Drive an upload to *size* with *contenders* competing PATCHes per offset.

    Contender ``i`` always sends bytes of value ``i``. After each round the new bytes must come from
    exactly one contender, at most one request may succeed, and a success must have stored its
    whole body.
    """
    offset = 0
    for _ in range(200):
        if offset == size:
            return
        length = min(chunk, size - offset)
        bodies = [bytes([i]) * length for i in range(contenders)]
        responses = await compete(tus, upload_id, offset, bodies)
        statuses = [r.status_code for r in responses]
        assert set(statuses) <= {204, 400, 409, 423}, [(r.status_code, r.text) for r in responses]
        for r in responses:
            if r.status_code == 400:
                assert r.text.startswith("ERR_UPLOAD_INTERRUPTED"), r.text
        winners = [i for i, s in enumerate(statuses) if s == 204]
        assert len(winners) <= 1, statuses

        new_offset = await tus.offset(upload_id)
        data: bytes = data_of(upload_id)
        assert len(data) == new_offset
        assert new_offset >= offset
        written = data[offset:new_offset]
        if winners:
            (winner,) = winners
            assert int(responses[winner].headers["Upload-Offset"]) == new_offset
            assert written == bodies[winner]
        if written:
            writer = written[0]
            assert written == bytes([writer]) * len(written), "two writers interleaved"
            assert statuses[writer] in (204, 400), statuses
            # interrupted means "stopped before the end of its body": a request whose body is
            # stored whole has succeeded (tus-js-client does not retry a 400)
            assert statuses[writer] == 204 or len(written) < len(bodies[writer]), (
                f"contender {writer} stored its whole body but was answered "
                f"{statuses[writer]} {responses[writer].text!r}"
            )
        offset = new_offset
    raise AssertionError("the upload made no progress")


# ---------------------------------------------------------------------------------------------------
# raw HTTP/1.1 over anyio sockets: malformed requests, bodies cut short, stalled bodies


class ConnectionClosedError(Exception):
    """Raised by :func:`read_raw_response` when the server closes without a response."""


@dataclasses.dataclass
class RawResponse:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes


def raw_request(
    method: str,
    target: str,
    host: str,
    headers: Mapping[str, str] | None = None,
    content_length: int | None = None,
) -> bytes:
    """Serialize a request head exactly as given (no normalisation of *target*)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    if content_length is not None:
        lines.append(f"Content-Length: {content_length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def read_raw_response(
    stream: anyio.abc.ByteStream, *, head_only: bool = False
) -> RawResponse:
    """Read one HTTP/1.1 response (Content-Length bodies only, as our server sends them)."""
    buffer = b""
    while b"\r\n\r\n" not in buffer:
        try:
            chunk = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
            raise ConnectionClosedError(f"connection closed before a response: {buffer!r}") from exc
        buffer += chunk
    head, _, rest = buffer.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = 0 if head_only else int(headers.get("content-length", "0"))
    while len(rest) < length:
        try:
            rest += await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            break
    return RawResponse(status=status, headers=headers, body=rest[:length])


@contextlib.contextmanager
def logged_process(
    command: Sequence[str],
    log: Path,
    *,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run *command* (a server in another process) with its output in *log*; at exit SIGTERM it,
    and SIGKILL it if it has not ended 15 s later."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
        )
    try:
        yield process
    finally:
        end_process(process)


def end_process(process: subprocess.Popen[Any], timeout: float = 15.0) -> None:
    """Stop a server in another process: SIGTERM, then SIGKILL if it is not gone after
    *timeout*; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_answering(
    process: subprocess.Popen[bytes],
    log: Path,
    *,
    marker: bytes = b"Uvicorn running on",
    timeout: float = 30.0,
) -> str:
    """Return the origin (``http://127.0.0.1:PORT``) that a server in another process, started
    on port 0, names in *log* once it listens, after checking that ``GET ORIGIN/`` answers 200;
    fail if *process* exits first or *timeout* passes. Port 0 leaves the choice of a free port to
    the server: a port chosen here could be taken by another process before the server binds."""
    line = wait_for_log_line(log, marker, process, timeout=timeout)
    origin = announced_origin(line)
    response = httpx.get(f"{origin}/", timeout=5, verify=CLIENT_TLS)
    assert response.status_code == 200, (response, log.read_text())
    return origin


def announced_origin(line: bytes) -> str:
    """The ``http://HOST:PORT`` in a server's "running on ..." log line."""
    match = re.search(rb"https?://[^\s/]+:\d+", line)
    assert match is not None, line
    return match.group().decode()


def connection_spread(server: ServerProcess, count: int = 8) -> list[int]:
    """Open *count* connections to *server* at once (as a client's pool does), send an OPTIONS on
    each, and return how many of them each worker process took, fewest first (from the access
    log, which names the client's port)."""
    connections = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(count)]
    try:
        ports = []
        for connection in connections:
            connection.sendall(raw_request("OPTIONS", "/files/", f"127.0.0.1:{server.port}"))
            ports.append(connection.getsockname()[1])
        for connection in connections:
            assert connection.recv(65536).startswith(b"HTTP/1.1 200 ")

        def pids() -> list[int]:
            found = {}
            for line in server.stderr_lines:
                if match := re.search(r"\[(\d+)\] \[INFO\] 127\.0\.0\.1:(\d+) OPTIONS ", line):
                    found[int(match.group(2))] = int(match.group(1))
            return [found[port] for port in ports if port in found]

        assert server.wait_for_log(lambda: len(pids()) == count), server.stderr_lines[-10:]
        return sorted(Counter(pids()).values())
    finally:
        for connection in connections:
            connection.close()


def assert_connections_shared_out(server: ServerProcess, *, rounds: int = 10) -> None:
    """Check that *server*'s two workers share out connections opened at once (see
    :func:`connection_spread`): 4 and 4, or 3 and 5 when a worker was busy, in one of *rounds*.

    Only one round need be: on a loaded machine a worker may wait a hundred milliseconds and more
    for a CPU, and then it rightly leaves burst after burst to the other rather than keep the
    client waiting (a CI run saw ``[[4, 4], [3, 5], [8], [8], [8]]``). How workers take turns is
    checked where nothing stalls, with both servers in one process, in ``test_httpserver.py``;
    this checks that the workers of a real supervisor share one socket and both accept on it.
    """
    spreads = []
    for _ in range(rounds):
        spreads.append(spread := connection_spread(server))
        if len(spread) == 2 and spread[0] >= 2:
            return
    raise AssertionError(f"connections were not shared out in {rounds} rounds: {spreads}")


# inotify(7): a directory's changes, as events
_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_CHANGES = (
    _IN_MODIFY
    | _IN_ATTRIB
    | _IN_CLOSE_WRITE
    | _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
)
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC


def wait_for_files_sync(
    directory: Path, predicate: Callable[[], bool], *, timeout: float = 20.0
) -> bool:
    """Wait until *predicate* (of the files in *directory*) holds, woken by each change another
    process makes there: a file created, written, renamed or removed (inotify). Return its last
    value (False after *timeout*)."""
    libc = ctypes.CDLL(None, use_errno=True)
    watch = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if watch < 0:
        raise OSError(ctypes.get_errno(), "inotify_init1")

    def add_watch(path: Path) -> bool:
        if libc.inotify_add_watch(watch, os.fsencode(path), _IN_CHANGES) >= 0:
            return True
        if ctypes.get_errno() != errno.ENOENT:
            raise OSError(ctypes.get_errno(), f"inotify_add_watch {path}")
        return False

    try:
        # watching first, then looking: no change falls between the two. A store makes its
        # directory on first use: until then, its parent is watched for it.
        watching = add_watch(directory)
        if not watching and not add_watch(directory.parent):
            raise FileNotFoundError(errno.ENOENT, "no such directory", str(directory.parent))
        deadline = time.monotonic() + timeout
        while not (result := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([watch], [], [], remaining)[0]:
                return predicate()
            with contextlib.suppress(BlockingIOError):
                while os.read(watch, 65536):  # drain: the predicate looks at the files anyway
                    pass
            watching = watching or add_watch(directory)
        return result
    finally:
        os.close(watch)


async def wait_for_files(
    directory: Path, predicate: Callable[[], bool], *, timeout: float = 5.0
) -> bool:
    """:func:`wait_for_files_sync` for async tests: the wait (and *predicate*) runs in a worker
    thread."""
    return await anyio.to_thread.run_sync(
        partial(wait_for_files_sync, directory, predicate, timeout=timeout),
        abandon_on_cancel=True,
    )


def wait_for_exit(pids: Iterable[int], *, timeout: float = 20.0) -> bool:
    """Wait until every one of *pids* has exited (children or not), woken by each exit (a pidfd
    becomes readable); False after *timeout*."""
    deadline = time.monotonic() + timeout
    for pid in pids:
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue  # gone already
        try:
            if not select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return False
        finally:
            os.close(pidfd)
    return True


def wait_for_log_line(
    log: Path,
    marker: bytes,
    process: subprocess.Popen[bytes],
    *,
    after: int = 0,
    timeout: float = 30.0,
) -> bytes:
    """Return the first whole line of *log* past byte *after* that holds *marker*: the line a
    server in another process writes once it listens ("Ready to accept connections", "Running
    on ..."). Woken by each write to the log (:func:`wait_for_files_sync`); fail, with the log's
    text, if *process* exits first or *timeout* passes."""
    found: list[bytes] = []

    def written() -> bool:
        text = log.read_bytes()[after:] if log.exists() else b""
        for line in text.splitlines(keepends=True):
            if marker in line and line.endswith(b"\n"):
                found.append(line)
                return True
        assert process.poll() is None, f"exited with {process.returncode}: {text!r}"
        return False

    if not wait_for_files_sync(log.parent, written, timeout=timeout):
        raise AssertionError(f"no {marker!r} in {log} after {timeout:g} s: {log.read_bytes()!r}")
    return found[0]


async def wait_for(
    predicate: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout: float = 5.0,
    interval: float = 0.01,
) -> bool:
    """Poll *predicate* until it is true or *timeout* passes; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result or time.monotonic() >= deadline:
            return result
        await anyio.sleep(interval)
