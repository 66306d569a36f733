"""End-to-end: ``anytus serve`` over loopback HTTP, against this machine's ceiling measured in the same run.

Legs against ``anytus serve --port 0 --dir <tmp>`` (a subprocess; ``--backend`` and ``--workers`` are
passed through):

(a) one upload (``--single-size``, 1 GiB) in PATCHes of ``--patch-size`` (64 MiB), on one keep-alive
    connection, timed from the POST to the last 204;
(b) ``--parallel`` uploads (8) of ``--parallel-size`` (256 MiB) at once; total MiB/s;
(c) HEAD latency (p50/p99/max) on an idle upload while ``--head-streams`` (4) other uploads stream;
(d) small uploads: POST + 1 KiB PATCH + HEAD, by ``--small-clients`` (8) keep-alive connections for
    ``--small-seconds``; uploads/s and requests/s.

The ceiling is a minimal receiver (another subprocess: accept, ``recv_into`` a 1 MiB buffer,
``os.write`` to a new file, one thread per connection, same durability as the server) fed the same
bytes by the same client for (a) and (b). Ratios anytus/ceiling are printed, with tusd's figures on
this machine class for context.

The client: one thread per connection with blocking sockets and a hand-written HTTP/1.1 exchange
(no HTTP library on the hot path). Request bodies go out with ``socket.sendfile`` from a pre-made
file that is in the page cache (``--send sendfile``, the default): the kernel moves the pages, so the
client spends almost no CPU per byte and leaves the 2 cores to the server; ``--send sendall`` sends
from a pre-made ``memoryview`` instead (one user-to-kernel copy per byte, GIL released during it).
Both servers get exactly the same client, so the ratios are fair either way. The CPU time used by
each server process tree and by this client during each leg is printed, so a saturated side shows.

Run: ``.venv/bin/python benchmarks/bench_e2e.py [--quick] [--backend asyncio|trio] [--workers N]``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.util
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

from _common import CLK_TCK, GIB, KIB, MIB, OtherLoad, human, parse_size

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
SERVING_LINE = re.compile(r"anytus: serving .* on (http://(\S+?):(\d+)(/\S*))")

#: tusd (Go) on this machine class, for context only: they were not measured in this run
TUSD_SINGLE = 750.0
TUSD_PARALLEL = 1400.0
TUSD_HEAD_P99_MS = 20.0
TUSD_SMALL_REQUESTS = 950.0


def percentile(values: Sequence[float], pct: int) -> float:
    if len(values) < 2:
        return max(values, default=0.0)
    return statistics.quantiles(values, n=100, method="inclusive")[pct - 1]


# --- process accounting ---------------------------------------------------------------------------


def process_table() -> dict[int, tuple[int, float, float]]:
    """Every process: its parent's PID, user and system CPU seconds (``/proc/PID/stat``)."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses; the fields start after the last ")"
        fields = stat[stat.rindex(b")") + 2 :].split()
        table[int(entry)] = (int(fields[1]), int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK)
    return table


def tree_pids(root_pid: int, table: dict[int, tuple[int, float, float]]) -> list[int]:
    """*root_pid* and its live descendants."""
    found, todo = [], [root_pid]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(child for child, (parent, _, _) in table.items() if parent == pid)
    return found


def tree_cpu_seconds(root_pid: int) -> tuple[float, float, float]:
    """User and system CPU seconds of *root_pid* and its live descendants, and the CPU seconds of
    their main threads: the event loops' threads (with --workers, the supervisor's main thread is
    idle and each worker's is its loop)."""
    table = process_table()
    user = system = main = 0.0
    for pid in tree_pids(root_pid, table):
        _, pid_user, pid_system = table.get(pid, (0, 0.0, 0.0))
        user, system = user + pid_user, system + pid_system
        try:
            with open(f"/proc/{pid}/task/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2 :].split()
        main += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return user, system, main


@dataclass
class CpuMeter:
    """CPU used by the server's process tree and by this (client) process during a leg."""

    server_pid: int
    wall: float = 0.0
    server_user: float = 0.0
    server_system: float = 0.0
    server_main: float = 0.0
    client: float = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[CpuMeter]:
        wall, client = time.perf_counter(), time.process_time()
        user, system, main = tree_cpu_seconds(self.server_pid)
        try:
            yield self
        finally:
            self.wall = time.perf_counter() - wall
            self.client = time.process_time() - client
            end_user, end_system, end_main = tree_cpu_seconds(self.server_pid)
            self.server_user, self.server_system = end_user - user, end_system - system
            self.server_main = end_main - main

    def describe(self) -> str:
        if self.wall <= 0:
            return ""
        server = self.server_user + self.server_system
        return (
            f"server CPU {server / self.wall * 100:.0f}% "
            f"(user {self.server_user / self.wall * 100:.0f}%, "
            f"system {self.server_system / self.wall * 100:.0f}%; "
            f"event-loop threads {self.server_main / self.wall * 100:.0f}%), "
            f"client CPU {self.client / self.wall * 100:.0f}%"
        )


# --- a minimal HTTP/1.1 client --------------------------------------------------------------------


@dataclass
class Payload:
    """The bytes every upload sends: a pre-made buffer and the same bytes in a file."""

    data: memoryview
    file: BinaryIO
    mode: str  # "sendfile" or "sendall"

    def send(self, sock: socket.socket, length: int) -> None:
        """Send the first *length* bytes (at most the payload's size)."""
        if self.mode == "sendfile":
            sock.sendfile(self.file, 0, length)
        else:
            sock.sendall(self.data[:length])

    def send_stream(self, sock: socket.socket, total: int) -> None:
        """Send *total* bytes, repeating the payload."""
        piece = len(self.data)
        for start in range(0, total, piece):
            self.send(sock, min(piece, total - start))


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class HttpError(Exception):
    pass


class Connection:
    """One keep-alive HTTP/1.1 connection, used by one thread.

    A response with ``Connection: close`` (hypercorn sends one after ``keep_alive_max_requests``,
    1000 requests on a connection) makes the next request open a new connection.
    """

    def __init__(self, host: str, port: int, timeout: float = 120.0) -> None:
        self.address = (host, port)
        self.timeout = timeout
        self.host = f"{host}:{port}"
        self.reconnects = 0
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(self.address, timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = bytearray()
        self.must_reconnect = False

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
        *,
        payload: Payload | None = None,
        payload_length: int = 0,
    ) -> Response:
        """Send one request and read its response.

        The body is *body*, or the first *payload_length* bytes of *payload*.
        """
        length = payload_length if payload is not None else len(body)
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}", "Tus-Resumable: 1.0.0"]
        lines.extend(f"{name}: {value}" for name, value in headers)
        if length or method in ("POST", "PATCH"):
            lines.append(f"Content-Length: {length}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.must_reconnect:
            self.sock.close()
            self._connect()
            self.reconnects += 1
        if payload is None:
            self.sock.sendall(head + body)
        else:
            self.sock.sendall(head)
            payload.send(self.sock, length)
        return self._read_response(method)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            port = self.sock.getsockname()[1]
            raise HttpError(f"connection closed by the server (client port {port})")
        self.buffer += data

    def _read_response(self, method: str) -> Response:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            self._fill()
        head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        status = int(head[0].split(" ", 2)[1])
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        self.must_reconnect = headers.get("connection", "").lower() == "close"
        if method == "HEAD" or status in (204, 304) or status < 200:
            return Response(status, headers, b"")
        if headers.get("transfer-encoding", "").lower() == "chunked":
            return Response(status, headers, self._read_chunked())
        length = int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            self._fill()
        body = bytes(self.buffer[:length])
        del self.buffer[:length]
        return Response(status, headers, body)

    def _read_chunked(self) -> bytes:
        body = bytearray()
        while True:
            while (end := self.buffer.find(b"\r\n")) < 0:
                self._fill()
            size = int(bytes(self.buffer[:end]).split(b";")[0], 16)
            del self.buffer[: end + 2]
            while len(self.buffer) < size + 2:
                self._fill()
            body += self.buffer[:size]
            del self.buffer[: size + 2]
            if size == 0:
                return bytes(body)


def expect(response: Response, status: int, what: str) -> Response:
    if response.status != status:
        raise HttpError(
            f"{what}: expected {status}, got {response.status} {response.headers} "
            f"{response.body[:200]!r}"
        )
    return response


class TusClient:
    """The tus requests the legs make, over one connection."""

    def __init__(self, url: str, payload: Payload) -> None:
        parts = urlsplit(url)
        if parts.hostname is None or parts.port is None:
            raise ValueError(f"not a URL with host and port: {url}")
        self.conn = Connection(parts.hostname, parts.port)
        self.base_path = parts.path
        self.payload = payload

    def close(self) -> None:
        self.conn.close()

    def create(self, length: int) -> str:
        response = expect(
            self.conn.request("POST", self.base_path, [("Upload-Length", str(length))]),
            201,
            "POST",
        )
        return urlsplit(response.headers["location"]).path

    def patch(self, path: str, offset: int, length: int, body: bytes | None = None) -> int:
        headers = [
            ("Upload-Offset", str(offset)),
            ("Content-Type", "application/offset+octet-stream"),
        ]
        if body is not None:
            response = self.conn.request("PATCH", path, headers, body)
        else:
            response = self.conn.request(
                "PATCH", path, headers, payload=self.payload, payload_length=length
            )
        new_offset = int(expect(response, 204, "PATCH").headers["upload-offset"])
        if new_offset != offset + length:
            raise HttpError(f"PATCH: offset {new_offset}, expected {offset + length}")
        return new_offset

    def head(self, path: str) -> int:
        return int(expect(self.conn.request("HEAD", path), 200, "HEAD").headers["upload-offset"])

    def upload(self, total: int, patch_size: int) -> str:
        path = self.create(total)
        offset = 0
        while offset < total:
            offset = self.patch(
                path, offset, min(patch_size, total - offset, len(self.payload.data))
            )
        return path


def run_threads(count: int, target: Callable[[int], object]) -> float:
    """Run *target(i)* in *count* threads started together; return the wall time; re-raise errors."""
    barrier = threading.Barrier(count + 1)
    errors: list[Exception] = []

    def body(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except Exception as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed


# --- the ceiling: a minimal receiver --------------------------------------------------------------


def receiver_main(directory: Path, fsync: bool) -> None:
    """Accept connections; each sends 8-byte length + data, which goes to a new file; ack 1 byte."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    print(listener.getsockname()[1], flush=True)
    counter = iter(range(1 << 62))

    def serve(conn: socket.socket) -> None:
        buffer = bytearray(MIB)
        view = memoryview(buffer)
        with conn:
            while True:
                header = b""
                while len(header) < 8:
                    more = conn.recv(8 - len(header))
                    if not more:
                        return
                    header += more
                (remaining,) = struct.unpack("!Q", header)
                fd = os.open(
                    directory / f"r{next(counter)}.bin", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644
                )
                try:
                    while remaining:
                        n = conn.recv_into(view, min(len(view), remaining))
                        if not n:
                            return
                        os.write(fd, view[:n])
                        remaining -= n
                    if fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
                conn.sendall(b"\x01")

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def ceiling_upload(port: int, total: int, payload: Payload) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(struct.pack("!Q", total))
        payload.send_stream(sock, total)
        if sock.recv(1) != b"\x01":
            raise HttpError("receiver did not acknowledge")


# --- servers ----------------------------------------------------------------------------------------


def anytus_command() -> tuple[list[str], dict[str, str]]:
    """The command that runs ``anytus`` (this checkout's, if none is installed)."""
    env = dict(os.environ)
    if importlib.util.find_spec("anytus") is None:
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])
        )
    script = Path(sys.executable).parent / "anytus"
    if script.exists():
        return [str(script)], env
    return [sys.executable, "-m", "anytus"], env


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                print("   server did not stop within 15 s of SIGTERM; killing it")
                self.process.kill()
                self.process.wait()


def start_anytus(
    directory: Path, log: Path, extra: list[str], *, src: Path | None = None
) -> Server:
    """Start ``anytus serve`` on *directory*, logging to *log*; *src*: run the anytus package found
    there (another checkout's ``src``) instead of this one's."""
    command, env = anytus_command()
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    command += ["serve", "--host", "127.0.0.1", "--port", "0", "--dir", str(directory), *extra]
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        match = SERVING_LINE.search(log.read_text(errors="replace"))
        if match:
            return Server(process, match.group(1), log)
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(
        f"`{' '.join(command)}` did not report its address; its output:\n{log.read_text()}"
    )


def start_receiver(directory: Path, fsync: bool) -> tuple[subprocess.Popen[bytes], int]:
    command = [sys.executable, __file__, "--receiver", str(directory)]
    if fsync:
        command.append("--receiver-fsync")
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE)
    assert process.stdout is not None
    return process, int(process.stdout.readline())


def clear(directory: Path) -> None:
    """Delete the finished uploads of a leg (no request is in flight), then flush the disk."""
    for path in directory.iterdir():
        if path.suffix in (".bin", ".info") and path.is_file():
            path.unlink()
    os.sync()


def warm_up(directory: Path, size: int, payload: Payload) -> None:
    """Write and delete *size* bytes just before a leg, so that the leg's page cache is memory the
    VM has backed.

    On this VM (virtio_balloon free page reporting) memory that stays free for ~2 s goes back to
    the host, and touching it again is ~10x slower (1 MiB writes: ~440 instead of ~4800 MiB/s).
    Without this, whichever leg follows a pause pays for it; with it, each leg reuses pages just
    freed, as a busy server would.
    """
    path = directory / "warm-up.bin"
    chunk = payload.data[:MIB]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for _ in range(size // MIB):
            os.write(fd, chunk)
    finally:
        os.close(fd)
    path.unlink()


# --- legs -------------------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    anytus: float
    ceiling: float | None = None
    tusd: float | None = None
    unit: str = "MiB/s"
    notes: list[str] = field(default_factory=list)


def leg_single(url: str, payload: Payload, total: int, patch_size: int) -> float:
    client = TusClient(url, payload)
    try:
        return total / MIB / run_threads(1, lambda _: client.upload(total, patch_size))
    finally:
        client.close()


def leg_parallel(url: str, payload: Payload, count: int, each: int, patch_size: int) -> float:
    clients = [TusClient(url, payload) for _ in range(count)]
    try:
        elapsed = run_threads(count, lambda i: clients[i].upload(each, patch_size))
    finally:
        for client in clients:
            client.close()
    return count * each / MIB / elapsed


def ceiling_single(port: int, payload: Payload, total: int) -> float:
    return total / MIB / run_threads(1, lambda _: ceiling_upload(port, total, payload))


def ceiling_parallel(port: int, payload: Payload, count: int, each: int) -> float:
    return count * each / MIB / run_threads(count, lambda _: ceiling_upload(port, each, payload))


def leg_head_latency(
    url: str, payload: Payload, streams: int, each: int, patch_size: int
) -> tuple[list[float], float]:
    """HEAD an idle upload every few ms while *streams* uploads run; return latencies, MiB/s."""
    prober = TusClient(url, payload)
    idle = prober.create(MIB)
    prober.patch(idle, 0, 512 * KIB, os.urandom(512 * KIB))
    clients = [TusClient(url, payload) for _ in range(streams)]
    latencies: list[float] = []
    done = threading.Event()

    def probe() -> None:
        # HEAD the idle upload, not a streaming one: a HEAD takes the upload's lock, which would
        # interrupt that upload's PATCH
        while not done.is_set():
            start = time.perf_counter()
            prober.head(idle)
            latencies.append(time.perf_counter() - start)
            time.sleep(0.005)

    thread = threading.Thread(target=probe, daemon=True)
    try:
        thread.start()
        elapsed = run_threads(streams, lambda i: clients[i].upload(each, patch_size))
    finally:
        done.set()
        thread.join()
        for client in [prober, *clients]:
            client.close()
    return latencies, streams * each / MIB / elapsed


def leg_small(
    url: str, payload: Payload, clients_count: int, seconds: float, limit: int = 1_000_000
) -> tuple[int, float, int]:
    """POST + 1 KiB PATCH + HEAD in a loop on keep-alive connections, for *seconds* and at most
    *limit* uploads per connection; return uploads, seconds and how many times the server closed
    a connection (hypercorn: after 1000 requests)."""
    body = os.urandom(KIB)
    clients = [TusClient(url, payload) for _ in range(clients_count)]
    counts = [0] * clients_count
    deadline = time.perf_counter() + seconds

    def loop(i: int) -> None:
        client = clients[i]
        while time.perf_counter() < deadline and counts[i] < limit:
            path = client.create(KIB)
            client.patch(path, 0, KIB, body)
            if client.head(path) != KIB:
                raise HttpError("HEAD after the small PATCH does not show 1 KiB")
            counts[i] += 1

    try:
        elapsed = run_threads(clients_count, loop)
    finally:
        for client in clients:
            client.close()
    return sum(counts), elapsed, sum(client.conn.reconnects for client in clients)


# --- profile summary --------------------------------------------------------------------------------


#: where a sampled leaf frame's time goes, by its file (first match wins)
PROFILE_CATEGORIES = (
    ("locks (anytus/_locks.py)", ("anytus/_locks.py",)),
    ("TusApp (anytus/asgi.py, _protocol.py)", ("anytus/asgi.py", "anytus/_protocol.py")),
    ("anytus's HTTP server (anytus/_httpserver.py)", ("anytus/_httpserver.py",)),
    ("other anytus", ("anytus/",)),
    ("h11 parsing", ("h11/",)),
    ("hypercorn (ASGI message passing, h11 glue)", ("hypercorn/",)),
    ("anyio (to_thread, cancel scopes, task groups)", ("anyio/",)),
    ("socket I/O: asyncio transport / trio socket", ("selector_events.py", "trio/_socket.py")),
    ("asyncio streams (StreamReader buffers)", ("asyncio/streams.py",)),
    ("trio thread cache (to_thread plumbing)", ("trio/_core/_thread_cache.py", "trio/_threads.py")),
    ("event loop core + epoll", ("asyncio/", "trio/", "selectors.py")),
    ("thread pool wait/notify (threading, queue)", ("threading.py", "queue.py")),
    ("logging", ("logging/",)),
)


def categorize(frame: str, main_thread: bool) -> str:
    if "(anytus/_filestore.py" in frame or "(anytus/_streams.py" in frame:
        if main_thread:
            return "store: write_chunk and its coalescing, on the loop"
        return "store: file I/O in worker threads (os.write, fsync, .info, stat)"
    if not main_thread and frame.startswith("WorkerThread.run (anyio/"):
        # py-spy shows a C function as the Python line that called it: this is a built-in that
        # to_thread.run_sync called directly (os.pread, os.close, ...)
        return "store: built-ins run directly in worker threads (os.pread, ...)"
    for name, needles in PROFILE_CATEGORIES:
        if any(needle in frame for needle in needles):
            return name
    return "other"


def summarize_profile(raw: Path, leg: str, top: int = 20) -> None:
    """Print what a ``py-spy record --threads --format raw`` file says: time by category, by
    thread, and the top functions by self and inclusive time, as % of all (non-idle) samples."""
    self_time: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    by_thread: collections.Counter[str] = collections.Counter()
    by_category: collections.Counter[tuple[str, str]] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        # the process frame is the command line (which may span lines); the code starts after
        # the thread frame
        thread_index = next(
            (i for i, frame in enumerate(frames) if frame.startswith("thread (")), None
        )
        if thread_index is None:
            continue
        thread = frames[thread_index]
        code = frames[thread_index + 1 :]
        if not code:
            continue
        total += count
        main_thread = "MainThread" in thread
        by_thread["event loop (main thread)" if main_thread else "other threads"] += count
        category = categorize(code[-1], main_thread)
        by_category[category, "loop" if main_thread else "threads"] += count
        self_time[code[-1]] += count
        # inclusive time per function, whatever line of it was running
        for function in {re.sub(r":\d+\)$", ")", frame) for frame in code}:
            inclusive[function] += count
    if not total:
        print(f"   profile {raw}: no samples")
        return

    def pct(count: int) -> str:
        return f"{count / total * 100:5.1f}%"

    print(f"\n== profile of the server during {leg}: {total} samples ({raw})")
    for thread, count in by_thread.most_common():
        print(f"   {pct(count)}  {thread}")
    print("   self time by category (loop thread / other threads):")
    categories = collections.Counter[str]()
    for (category, _), count in by_category.items():
        categories[category] += count
    for category, count in categories.most_common():
        loop, threads = by_category[category, "loop"], by_category[category, "threads"]
        print(f"   {pct(count)}  {category}  ({pct(loop).strip()} / {pct(threads).strip()})")
    print("   top functions, self time (leaf frame):")
    for frame, count in self_time.most_common(top):
        print(f"   {pct(count)}  {frame}")
    print("   top functions of anytus, hypercorn and h11, inclusive time:")
    ours = [
        (frame, count)
        for frame, count in inclusive.most_common()
        if any(f"({package}/" in frame for package in ("anytus", "hypercorn", "h11"))
        and "anytus/_cli.py" not in frame
    ]
    for frame, count in ours[:top]:
        print(f"   {pct(count)}  {frame}")


@contextlib.contextmanager
def profiling(pid: int, output: Path | None, rate: int) -> Iterator[None]:
    if output is None:
        yield
        return
    py_spy = Path(sys.executable).parent / "py-spy"
    command = [str(py_spy if py_spy.exists() else "py-spy"), "record", "--pid", str(pid)]
    command += ["--rate", str(rate), "--nonblocking", "--subprocesses", "--threads"]
    command += ["--format", "raw" if output.suffix in (".txt", ".raw") else "flamegraph"]
    command += ["--output", str(output)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)  # py-spy attaches in well under a second
    try:
        yield
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
        if process.returncode not in (0, -signal.SIGINT):
            print(f"   py-spy exited with {process.returncode}: {err.decode(errors='replace')}")


# --- main -------------------------------------------------------------------------------------------


def add_leg_options(
    parser: argparse.ArgumentParser,
    *,
    single: str,
    parallel_size: str,
    head_stream_size: str,
    small_seconds: str,
) -> None:
    """The legs' options, shared with ``bench_vs_tusd.py``; the keywords describe the defaults of
    the options that default to None (each script picks its own, and smaller ones for --quick)."""
    parser.add_argument("--single-size", type=parse_size, help=f"one upload's size ({single})")
    parser.add_argument("--patch-size", type=parse_size, default=64 * MIB, help="PATCH size (64M)")
    parser.add_argument("--parallel", type=int, default=8, help="concurrent uploads (8)")
    parser.add_argument("--parallel-size", type=parse_size, help=f"each ({parallel_size})")
    parser.add_argument("--head-streams", type=int, default=4, help="uploads streaming (4)")
    parser.add_argument("--head-stream-size", type=parse_size, help=f"each ({head_stream_size})")
    parser.add_argument("--small-clients", type=int, default=8, help="small-leg connections (8)")
    parser.add_argument("--small-seconds", type=float, help=f"small-leg duration ({small_seconds})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--backend", choices=("asyncio", "trio"), help="passed to anytus serve")
    parser.add_argument("--workers", type=int, help="passed to anytus serve")
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra argument for anytus serve (repeatable), e.g. --server-arg=--max-size=...",
    )
    add_leg_options(
        parser,
        single="1G; quick 256M",
        parallel_size="256M; quick 32M",
        head_stream_size="256M; quick 64M",
        small_seconds="10; quick 3",
    )
    parser.add_argument(
        "--durability",
        choices=("finish", "none"),
        default="finish",
        help="finish: anytus serve's default (FileStore fsyncs each completed upload); none: no "
        "fsync, to see the HTTP path without the disk (passed as --durability none) (finish)",
    )
    parser.add_argument(
        "--ceiling-fsync",
        choices=("auto", "yes", "no"),
        default="auto",
        help="whether the ceiling receiver fsyncs each file at its end (auto: as --durability)",
    )
    parser.add_argument("--send", choices=("sendfile", "sendall"), default="sendfile")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument(
        "--profile",
        type=Path,
        help="run py-spy on the server during (a); .txt/.raw = collapsed stacks (summarized), "
        "else a flamegraph .svg",
    )
    parser.add_argument(
        "--profile-small", type=Path, help="the same as --profile, during (d) small uploads"
    )
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples/s (200)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--keep-log", type=Path, help="copy the server's log here if a leg fails")
    parser.add_argument("--receiver", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--receiver-fsync", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.receiver is not None:
        receiver_main(args.receiver, args.receiver_fsync)
        return 0
    if args.durability != "finish":
        args.server_arg.append(f"--durability={args.durability}")
    ceiling_fsync = args.ceiling_fsync == "yes" or (
        args.ceiling_fsync == "auto" and args.durability != "none"
    )

    quick = args.quick
    single: int = args.single_size or (256 * MIB if quick else GIB)
    parallel_size: int = args.parallel_size or (32 * MIB if quick else 256 * MIB)
    head_size: int = args.head_stream_size or (64 * MIB if quick else 256 * MIB)
    small_seconds: float = args.small_seconds or (3.0 if quick else 10.0)
    patch_size: int = args.patch_size
    extra: list[str] = list(args.server_arg)
    if args.backend:
        extra += ["--backend", args.backend]
    if args.workers:
        extra += ["--workers", str(args.workers)]

    # our own share: this client, and the servers, receivers and py-spy it started and waited for
    load = OtherLoad(children=True)
    root = Path(tempfile.mkdtemp(prefix="anytus-bench-e2e-", dir=args.dir))
    server: Server | None = None
    receiver: subprocess.Popen[bytes] | None = None
    results: list[Result] = []
    payload_path = root / "payload.bin"
    payload_bytes = os.urandom(patch_size)
    payload_path.write_bytes(payload_bytes)
    os.sync()
    payload_file = open(payload_path, "rb")  # noqa: SIM115 - closed in the finally below
    try:
        payload = Payload(memoryview(payload_bytes), payload_file, args.send)
        (root / "anytus").mkdir()
        (root / "ceiling").mkdir()

        server = start_anytus(root / "anytus", root / "anytus.log", extra)
        print(
            f"bench_e2e: anytus serve {' '.join(extra) or '(defaults)'} at {server.url}, "
            f"durability {args.durability}; ceiling fsync at end: {ceiling_fsync}; "
            f"data in {root}; client --send {args.send}; {os.cpu_count()} CPUs"
        )
        meter = CpuMeter(server.process.pid)
        port = 0
        ceiling_meter: CpuMeter | None = None
        if not args.skip_ceiling:
            receiver, port = start_receiver(root / "ceiling", ceiling_fsync)
            ceiling_meter = CpuMeter(receiver.pid)

        def ceiling(run: Callable[[], float], size: int) -> tuple[float | None, str]:
            if ceiling_meter is None:
                return None, ""
            clear(root / "ceiling")
            warm_up(root, size, payload)
            with ceiling_meter.measure():
                value = run()
            clear(root / "ceiling")
            return value, ceiling_meter.describe()

        def prepare(size: int) -> None:
            clear(root / "anytus")
            warm_up(root, size, payload)

        # (a) one stream
        value, ceiling_cpu = ceiling(lambda: ceiling_single(port, payload, single), single)
        # py-spy attaches first: the warm-up must come right before the leg
        with profiling(server.process.pid, args.profile, args.profile_rate):
            prepare(single)
            with meter.measure():
                rate = leg_single(server.url, payload, single, patch_size)
        results.append(
            Result(
                f"(a) 1 upload of {human(single)}, {human(patch_size)} PATCHes",
                rate,
                value,
                TUSD_SINGLE,
                notes=[f"anytus {meter.describe()}", f"ceiling {ceiling_cpu}"],
            )
        )
        clear(root / "anytus")

        # (b) parallel streams
        value, ceiling_cpu = ceiling(
            lambda: ceiling_parallel(port, payload, args.parallel, parallel_size),
            args.parallel * parallel_size,
        )
        prepare(args.parallel * parallel_size)
        with meter.measure():
            rate = leg_parallel(server.url, payload, args.parallel, parallel_size, patch_size)
        results.append(
            Result(
                f"(b) {args.parallel} parallel x {human(parallel_size)}",
                rate,
                value,
                TUSD_PARALLEL,
                notes=[f"anytus {meter.describe()}", f"ceiling {ceiling_cpu}"],
            )
        )
        clear(root / "anytus")

        # (c) HEAD latency under load
        prepare(args.head_streams * head_size)
        with meter.measure():
            latencies, rate = leg_head_latency(
                server.url, payload, args.head_streams, head_size, patch_size
            )
        notes = [
            (
                f"{len(latencies)} HEADs while {args.head_streams} x {human(head_size)} streamed "
                f"at {rate:.0f} MiB/s total; {meter.describe()}"
            )
        ]
        for label, pct in (("p50", 50), ("p99", 99)):
            results.append(
                Result(
                    f"(c) HEAD latency {label}",
                    percentile(latencies, pct) * 1e3,
                    tusd=TUSD_HEAD_P99_MS if pct == 99 else None,
                    unit="ms",
                    notes=notes if pct == 50 else [],
                )
            )
        results.append(Result("(c) HEAD latency max", max(latencies) * 1e3, unit="ms"))
        clear(root / "anytus")

        # (d) small uploads (no warm-up: they need little memory)
        clear(root / "anytus")
        with profiling(server.process.pid, args.profile_small, args.profile_rate), meter.measure():
            uploads, elapsed, reconnects = leg_small(
                server.url, payload, args.small_clients, small_seconds
            )
        results.append(
            Result(
                f"(d) small uploads ({args.small_clients} clients)",
                uploads / elapsed,
                tusd=TUSD_SMALL_REQUESTS / 3,
                unit="uploads/s",
                notes=[
                    (
                        f"{uploads} uploads in {elapsed:.1f} s, {reconnects} reconnects; "
                        f"{meter.describe()}"
                    )
                ],
            )
        )
        results.append(
            Result(
                "(d) small-upload requests",
                3 * uploads / elapsed,
                tusd=TUSD_SMALL_REQUESTS,
                unit="req/s",
            )
        )
        clear(root / "anytus")
    finally:
        if server is not None:
            server.stop()
            if server.process.returncode not in (0, -signal.SIGTERM):
                print(f"   anytus serve exited with {server.process.returncode}")
        if receiver is not None:
            receiver.terminate()
            receiver.wait()
        if server is not None:
            log = server.log.read_text(errors="replace").splitlines()
            errors = [line for line in log if "Traceback" in line or "ERROR" in line]
            if errors:
                print(f"   the server logged {len(errors)} error lines, e.g.: {errors[0]}")
            if sys.exc_info()[0] is not None:
                # a leg failed: the server's last words may say why
                print("   the server's log ends with:", *log[-25:], sep="\n   | ")
                if args.keep_log is not None:
                    shutil.copy(server.log, args.keep_log)
        payload_file.close()
        shutil.rmtree(root, ignore_errors=True)

    print()
    header = f"{'leg':<44} {'anytus':>10} {'ceiling':>9} {'ratio':>6} {'tusd*':>8}  unit"
    print(header)
    print("-" * len(header))
    for result in results:
        ceiling_text = f"{result.ceiling:.0f}" if result.ceiling is not None else ""
        ratio = f"{result.anytus / result.ceiling:.2f}" if result.ceiling else ""
        tusd = f"{result.tusd:.0f}" if result.tusd is not None else ""
        shown = f"{result.anytus:.1f}" if result.unit == "ms" else f"{result.anytus:.0f}"
        print(
            f"{result.label:<44} {shown:>10} {ceiling_text:>9} {ratio:>6} {tusd:>8}  {result.unit}"
        )
        for note in result.notes:
            print(f"{'':<6}{note}")
    print(
        "* tusd (Go) on this machine class, for context; not measured in this run. Ceiling: minimal "
        f"Python receiver, fsync at end: {ceiling_fsync}."
    )
    print(load.describe())
    for path, leg in ((args.profile, "(a) the single-stream upload"), (args.profile_small, "(d)")):
        if path is not None and path.suffix in (".txt", ".raw"):
            summarize_profile(path, leg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
