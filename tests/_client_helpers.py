"""Helpers for tests/test_client.py: tus servers to upload to, and a TCP proxy that breaks things.

Servers, each a real subprocess on 127.0.0.1 that nobody here wrote (or ``anytus serve``):

- ``anytus serve`` on asyncio and on trio;
- tusd v2.10 (``shared/peers/tusd`` beside the repository, or ``$ANYTUS_TUSD``); tests skip
  only if it is absent;
- ``@tus/server`` with ``@tus/file-store`` on Node (``tests/tus_node_server``; ``npm ci`` there on
  first use, as ``.ci/run`` does up front).

:class:`Proxy` forwards TCP connections to a server and can cut them every N bytes sent to the
server, or stall once N bytes went through until released (then cut), and counts request lines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import anyio
import anyio.abc
import pytest

from _server import end_process, run_server_process, upload_id_of

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = (
    "NODE_SERVER_DIR",
    "TUSD",
    "Peer",
    "PeerKind",
    "Proxy",
    "lazy_peers",
    "node_server_ready",
    "payload",
    "start_peer",
)

_ROOT = Path(__file__).resolve().parent.parent
#: the peer binaries sit in shared/ beside the repository (or the workplace's); ANYTUS_TUSD
#: overrides
TUSD = Path(
    os.environ.get("ANYTUS_TUSD")
    or next(
        (
            str(candidate)
            for candidate in (
                _ROOT.parent / "shared" / "peers" / "tusd",
                Path("/work/shared/peers/tusd"),
            )
            if candidate.exists()
        ),
        _ROOT.parent / "shared" / "peers" / "tusd",
    )
)
NODE_SERVER_DIR = Path(__file__).parent / "tus_node_server"

PeerKind = Literal["anytus-asyncio", "anytus-trio", "tusd", "tus-node-server"]

_REQUEST_LINE = re.compile(rb"(?:^|\r\n)((?:OPTIONS|POST|HEAD|PATCH|DELETE|GET) \S+) HTTP/1\.1\r\n")
_TUSD_READY = re.compile(r"You can now upload files to: (http://\S+)")


@dataclasses.dataclass
class Peer:
    """A running tus server."""

    kind: PeerKind
    #: the creation URL, e.g. ``http://127.0.0.1:1234/files/``
    url: str
    directory: Path
    process: subprocess.Popen[bytes]

    @property
    def port(self) -> int:
        match = re.match(r"http://[^/:]+:(\d+)/", self.url)
        assert match is not None, self.url
        return int(match.group(1))

    @property
    def extensions(self) -> frozenset[str]:
        common = {"creation", "creation-with-upload", "creation-defer-length", "termination"}
        if self.kind == "tus-node-server":
            return frozenset(common)
        if self.kind == "tusd":
            return frozenset({*common, "concatenation"})
        return frozenset({*common, "concatenation", "checksum"})

    def data_path(self, url: str) -> Path:
        """Where the server keeps the bytes of the upload at *url*."""
        upload_id = upload_id_of(url)
        if self.kind.startswith("anytus"):
            return self.directory / f"{upload_id}.bin"
        return self.directory / upload_id

    def stored(self, url: str) -> bytes:
        """The bytes the server has stored for the upload at *url*."""
        return self.data_path(url).read_bytes()

    def kill(self) -> None:
        """SIGKILL the server and wait for it to be gone."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(15)


def node_server_ready() -> str:
    """The ``node`` executable, with ``@tus/server`` installed (installed here on first use)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("the tus-node-server tests need node and npm on PATH (.ci/run installs them)")
    if not (NODE_SERVER_DIR / "node_modules" / "@tus" / "server").is_dir():
        result = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_SERVER_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            pytest.fail(f"npm ci in {NODE_SERVER_DIR} failed: {result.stderr[-800:]}")
    return node


def _first_line_matching(
    stream: Any, pattern: re.Pattern[str] | None, timeout: float
) -> tuple[re.Match[str] | dict[str, Any] | None, threading.Thread]:
    """Read lines of *stream* (in a thread, so that a silent process cannot hang us) until one
    matches *pattern* (or, with no pattern, is JSON); keep draining the rest. Returns the match
    and the reading thread, which ends at the stream's end: close the stream only after that (a
    file closed while another thread reads it fails that read)."""
    found: list[re.Match[str] | dict[str, Any]] = []
    ready = threading.Event()

    def read() -> None:
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace")
            if not ready.is_set():
                if pattern is not None and (match := pattern.search(line)):
                    found.append(match)
                    ready.set()
                elif pattern is None and line.startswith("{"):
                    found.append(json.loads(line))
                    ready.set()
        ready.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    ready.wait(timeout)
    return (found[0] if found else None), reader


@contextlib.contextmanager
def start_peer(kind: PeerKind, directory: Path, *extra: str) -> Iterator[Peer]:
    """Run a *kind* server on a free port, storing into *directory*; stop it on exit.

    *extra* arguments go to ``anytus serve`` or tusd (``-enable-experimental-protocol``...).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if kind in ("anytus-asyncio", "anytus-trio"):
        backend = kind.removeprefix("anytus-")
        with run_server_process(directory, "--backend", backend, *extra) as server:
            yield Peer(kind, server.url, directory, server.process)
        return
    if kind == "tusd":
        if not TUSD.is_file():
            pytest.skip(f"tusd is not at {TUSD}")
        binary = TUSD
        if not os.access(binary, os.X_OK):
            # a copy of shared/ may come without its mode bits: run a private executable copy
            binary = directory.parent / "tusd-peer"
            shutil.copyfile(TUSD, binary)
            binary.chmod(0o755)
        command = [
            str(binary),
            *("-host", "127.0.0.1", "-port", "0", "-upload-dir", str(directory)),
            *("-base-path", "/files/", "-verbose=false"),
            *extra,
        ]
    else:
        node = node_server_ready()
        command = [node, str(NODE_SERVER_DIR / "server.mjs"), str(directory)]
    process = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        cwd=NODE_SERVER_DIR,
    )
    reader: threading.Thread | None = None
    try:
        found, reader = _first_line_matching(
            process.stdout, _TUSD_READY if kind == "tusd" else None, 30
        )
        if found is None:
            raise AssertionError(f"{kind} did not start (exit status {process.poll()})")
        if isinstance(found, dict):
            url = f"http://127.0.0.1:{found['port']}/files/"
        else:
            url = found.group(1)
        yield Peer(kind, url, directory, process)
    finally:
        end_process(process, 10)
        if reader is not None:
            reader.join(10)  # the pipe's end, now that the server is gone
        if process.stdout is not None and not (reader is not None and reader.is_alive()):
            process.stdout.close()


@contextlib.contextmanager
def lazy_peers(
    factory: pytest.TempPathFactory, extra: Callable[[PeerKind], tuple[str, ...]] = lambda _: ()
) -> Iterator[dict[PeerKind, Peer]]:
    """Servers by kind, each started on first use (``peers[kind]``, with ``extra(kind)`` for
    :func:`start_peer`) and all stopped on exit: a module's tests share them."""
    with contextlib.ExitStack() as stack:

        class Lazy(dict[PeerKind, Peer]):
            def __missing__(self, kind: PeerKind) -> Peer:
                directory = factory.mktemp(kind)
                peer = self[kind] = stack.enter_context(start_peer(kind, directory, *extra(kind)))
                return peer

        yield Lazy()


def payload(tmp_path: Path, size: int, name: str = "payload.bin", *, text: bool = False) -> Path:
    """A file of *size* bytes (random, or letters only when the proxy must read request lines)."""
    path = tmp_path / name
    path.write_bytes(b"a" * size if text else os.urandom(size))
    return path


class Proxy:
    """A TCP proxy on 127.0.0.1 in front of a server, for breaking connections on purpose.

    :param target_port: where connections go (:attr:`target_port` can change between connections)
    :param cut_every: close the connection (both ways) each time this many more bytes have gone
        to the server, counted across connections
    :param stall_after: once this many bytes have gone to the server, forward nothing more and set
        :attr:`stalled`, until :meth:`release`, which cuts the stalled connection and lets later
        ones through
    """

    def __init__(
        self,
        target_port: int,
        *,
        cut_every: int | None = None,
        stall_after: int | None = None,
    ) -> None:
        self.target_port = target_port
        self.cut_every = cut_every
        self.stall_after = stall_after
        #: bytes forwarded to the server so far
        self.forwarded = 0
        #: how many connections were cut on purpose
        self.cuts = 0
        #: set when a stall begins
        self.stalled = anyio.Event()
        self._released = anyio.Event()
        self._since_cut = 0
        #: the request lines seen, e.g. ``"PATCH /files/abc"`` (found by the start of each line
        #: of what goes to the server: use bodies that cannot contain one)
        self.requests: list[str] = []
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/files/"

    def release(self) -> None:
        """End a stall: the stalled connection is cut, later ones go through."""
        self.stall_after = None
        self._released.set()

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Serve until cancelled (start it with ``await tg.start(proxy.run)``)."""
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener:
            self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        async with client:
            try:
                upstream = await anyio.connect_tcp("127.0.0.1", self.target_port)
            except OSError:
                return  # the server is down: the client sees its connection close
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._to_server, client, upstream, tg.cancel_scope)
                tg.start_soon(self._to_client, upstream, client, tg.cancel_scope)

    async def _to_client(
        self,
        upstream: anyio.abc.SocketStream,
        client: anyio.abc.SocketStream,
        scope: anyio.CancelScope,
    ) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:
                await client.send(await upstream.receive())
        scope.cancel()

    async def _to_server(
        self,
        client: anyio.abc.SocketStream,
        upstream: anyio.abc.SocketStream,
        scope: anyio.CancelScope,
    ) -> None:
        with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            while True:
                data = await client.receive()
                self._note_requests(data)
                if self.stall_after is not None and self.forwarded + len(data) >= self.stall_after:
                    keep = self.stall_after - self.forwarded
                    await upstream.send(data[:keep])
                    self.forwarded += keep
                    self.stalled.set()
                    await self._released.wait()
                    break
                if self.cut_every is not None and self._since_cut + len(data) >= self.cut_every:
                    keep = self.cut_every - self._since_cut
                    await upstream.send(data[:keep])
                    self.forwarded += keep
                    self._since_cut = 0
                    self.cuts += 1
                    break
                await upstream.send(data)
                self.forwarded += len(data)
                self._since_cut += len(data)
        scope.cancel()

    def _note_requests(self, data: bytes) -> None:
        self.requests.extend(match.group(1).decode() for match in _REQUEST_LINE.finditer(data))
