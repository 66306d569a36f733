"""One ``anytus serve`` worker: :class:`~anytus.asgi.TusApp` under anytus's own HTTP/1.1 server
(:mod:`anytus._httpserver`), on asyncio or trio, in this process, until a shutdown signal.

Why our own server, measured with ``benchmarks/bench_vs_tusd.py`` (see the README's "Serving
uploads"): it hands a large request body to a worker thread that receives it from the socket into
one reused buffer and writes it to the file, with no ASGI message and no event-loop hop per piece,
which is how one upload reached tusd's speed here (granian, whose HTTP layer is Rust, did 0.6x:
its pieces cross into Python one message at a time, and writing them off the event loop costs a
thread hop each); small requests went as fast as under granian. The server serves a socket that
is bound and listening before it starts, so clients that connect early wait in the backlog, and
``--workers N`` share that one socket, evening out their connections through :class:`WorkerLoads`.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import logging
import os
import signal
import socket
import ssl
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableSequence
    from pathlib import Path

    from ._asgi_types import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
    from .asgi import TusApp

from .asgi import error_of

__all__ = (
    "BACKLOG",
    "FORCE_SIGNAL",
    "GRACEFUL_TIMEOUT",
    "INTERRUPT_GRACE",
    "NETWORK_TIMEOUT",
    "Endpoint",
    "JSONFormatter",
    "LoggingOptions",
    "ServeOptions",
    "WorkerFailedError",
    "WorkerLoads",
    "bind_listening",
    "configure_logging",
    "pin_to_cpu",
    "raise_open_files_limit",
    "run_worker",
    "tls_context",
    "uses_uvloop",
    "uvloop_installed",
)

logger = logging.getLogger("anytus.serve")
access_logger = logging.getLogger("anytus.access")

#: how long a worker lets running requests finish after a shutdown signal, by default (tusd's)
GRACEFUL_TIMEOUT = 10.0
#: how long requests interrupted at the end of the shutdown timeout have to answer
INTERRUPT_GRACE = 2.0
#: the listen backlog
BACKLOG = 2048
#: what the supervisor sends its workers when it gets a second shutdown signal: stop at once
FORCE_SIGNAL = signal.SIGUSR1
#: how long a connection may send nothing, by default (tusd's ``-network-timeout``): an idle
#: request body ends its request (TusApp's ``idle_timeout``); request heads and idle keep-alive
#: connections get the servers' own shorter limits, capped at this
NETWORK_TIMEOUT = 60.0
#: the longest a request head may take, and how long an idle connection is kept open; both
#: capped at the network timeout
_HEAD_TIMEOUT = 10.0
_KEEP_ALIVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class LoggingOptions:
    """What ``anytus serve`` logs, and how."""

    #: the least severe level logged: debug, info, warning, error
    level: str = "info"
    #: text lines, or one JSON object per line
    format: Literal["text", "json"] = "text"


@dataclass(frozen=True)
class ServeOptions:
    directory: Path
    base_path: str
    max_size: int | None
    expire_after: float | None
    backend: Literal["asyncio", "trio"]
    durability: Literal["none", "finish", "always"]
    #: the asyncio event loop: uvloop's if installed (``auto``), or named (trio ignores it)
    loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    #: how long running requests may go on after a shutdown signal
    shutdown_timeout: float = GRACEFUL_TIMEOUT
    #: how long a client may send nothing (see :data:`NETWORK_TIMEOUT`)
    network_timeout: float = NETWORK_TIMEOUT
    logging: LoggingOptions = LoggingOptions()
    #: serve the upload page on ``/`` (``--no-page``: no)
    page: bool = True
    #: also serve the IETF resumable-upload draft (``TusApp(draft=...)``)
    draft: bool = True
    #: trust the proxy headers for upload URLs (``TusApp(behind_proxy=...)``)
    behind_proxy: bool = False
    #: HTTPS: the certificate chain and its key (PEM files), both or neither
    certfile: Path | None = None
    keyfile: Path | None = None
    #: ``TusApp(cors_allow_origins=...)``
    cors_origins: tuple[str, ...] = ("*",)
    #: an S3 bucket instead of the directory, and a Redis locker (see anytus._servestores)
    s3_bucket: str | None = None
    s3_endpoint: str | None = None
    s3_prefix: str | None = None
    redis_url: str | None = None
    redis_lease: float | None = None


@dataclass(frozen=True)
class Endpoint:
    """Where workers serve: a numeric address, a port and the socket, bound and listening."""

    address: str
    port: int
    sock: socket.socket | None = None

    @property
    def url_host(self) -> str:
        return f"[{self.address}]" if ":" in self.address else self.address


def configure_logging(options: LoggingOptions | None = None) -> None:
    """Every message on stderr (replacing any handlers): ``[time] [pid] [level] message``, or
    one JSON object per line."""
    options = options or LoggingOptions()
    handler = logging.StreamHandler(sys.stderr)
    if options.format == "json":
        handler.setFormatter(JSONFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s")
        )
    logging.basicConfig(level=options.level.upper(), handlers=[handler], force=True)


#: the attributes every LogRecord has; the others were passed with ``extra=``
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JSONFormatter(logging.Formatter):
    """One JSON object per record: time (UTC, ISO 8601), level, logger, pid, message, the
    fields passed with ``extra=`` (``upload_id``, ``size``, ``filename``...) and any exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "message": record.getMessage(),
        }
        entry.update(
            (key, value)
            for key, value in vars(record).items()
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
        )
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def raise_open_files_limit() -> None:
    """Raise the soft limit on open files to the hard one: each upload in flight holds a few
    descriptors, and the usual soft limit (1,024) runs out under load while the hard one
    allows far more."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on Windows
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open files limit to %d: %s", target, exc)


def tls_context(certfile: Path, keyfile: Path | None) -> ssl.SSLContext:
    """The server side of TLS for anytus's HTTP server: Python's defaults (TLS 1.2 and up), HTTP/1.1
    offered by ALPN; raises :class:`OSError` or :class:`ssl.SSLError` for unusable files."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile, keyfile)
    context.set_alpn_protocols(["http/1.1"])
    return context


def bind_listening(host: str, port: int) -> Endpoint:
    """Bind and listen on *host*:*port* (0: a free port)."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: tus responses are small and must not wait for Nagle
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(address)
        # listening from here on: a client that connects before a worker accepts waits in the
        # backlog instead of being refused
        sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    numeric, chosen = sock.getsockname()[:2]
    return Endpoint(numeric, chosen, sock)


def pin_to_cpu(cpu: int) -> None:
    """Run this process on *cpu* alone (``--pin-workers``); threads started afterwards inherit
    it (Linux applies it to the calling thread, and new threads copy their creator's)."""
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # the CPU was taken away since it was listed (a cgroup change)
        logger.warning("cannot run on CPU %d alone (%s): this worker runs unpinned", cpu, exc)


def uvloop_installed() -> bool:
    """Whether uvloop can be imported (``anytus[uvloop]``)."""
    return importlib.util.find_spec("uvloop") is not None


def uses_uvloop(options: ServeOptions) -> bool:
    """Whether a worker runs asyncio on uvloop's event loop: named with ``--loop uvloop``, or
    installed (``auto``). Measured with 2 workers, no fsync, on tmpfs: small uploads 3,400-3,600
    req/s on uvloop against 2,700-3,600 on the standard library's loop."""
    if options.backend != "asyncio":
        return False
    return options.loop == "uvloop" or (options.loop == "auto" and uvloop_installed())


class WorkerLoads:
    """The connections each worker of a supervisor has open, in memory the workers share
    (a ``multiprocessing`` ``RawArray`` of ints, one slot per worker, -1 for a worker that does
    not accept): the :class:`~anytus._httpserver.AcceptBalance` of the worker in *slot*.

    Reads and writes of one aligned int need no lock; a stale figure costs at most one
    connection taken by the busier worker.
    """

    def __init__(self, counts: MutableSequence[int], slot: int) -> None:
        self.counts = counts
        self.slot = slot

    def connections(self, count: int) -> None:
        self.counts[self.slot] = count

    def lead(self) -> int:
        mine = self.counts[self.slot]
        others = [
            count for slot, count in enumerate(self.counts) if slot != self.slot and count >= 0
        ]
        return max(0, mine - min(others)) if others else 0


class WorkerFailedError(Exception):
    """The server stopped on its own (not on a shutdown signal), or never became ready."""


def run_worker(
    endpoint: Endpoint,
    options: ServeOptions,
    parent_pid: int | None,
    ready: Callable[[], None],
    loads: WorkerLoads | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (or, in a worker process, until the parent dies); return the exit
    status. *ready* is called once connections are accepted (or queue in a listening socket);
    *loads*: this worker's share of the socket with the supervisor's other workers."""
    backend_options = {"use_uvloop": True} if uses_uvloop(options) else None
    try:
        anyio.run(
            _serve,
            endpoint,
            options,
            parent_pid,
            ready,
            loads,
            backend=options.backend,
            backend_options=backend_options,
        )
    except WorkerFailedError as exc:
        logger.error("%s", exc)
        return 1
    return 0


async def _serve(
    endpoint: Endpoint,
    options: ServeOptions,
    parent_pid: int | None,
    ready: Callable[[], None],
    loads: WorkerLoads | None,
) -> None:
    # imported here: `anytus cleanup` and `--help` need neither the servers nor the app
    from ._servestores import build_store
    from .asgi import TusApp

    tus = TusApp(
        build_store(options),
        base_path=options.base_path,
        max_size=options.max_size,
        expire_after=options.expire_after,
        idle_timeout=options.network_timeout,
        draft=options.draft,
        cors_allow_origins=options.cors_origins,
        behind_proxy=options.behind_proxy,
    )
    if options.page:
        from ._page import PageApp, load_page

        app = _AccessLog(PageApp(tus, await anyio.to_thread.run_sync(load_page, tus.base_path)))
    else:
        app = _AccessLog(tus)
    shutdown = _Shutdown(supervised=parent_pid is not None)
    async with anyio.create_task_group() as tg:
        tg.start_soon(shutdown.watch, parent_pid)
        await _serve_http(app, tus, endpoint, shutdown, ready, options, loads)
        tg.cancel_scope.cancel()
    logger.info("stopped")


async def _serve_http(
    app: _AccessLog,
    tus: TusApp,
    endpoint: Endpoint,
    shutdown: _Shutdown,
    ready: Callable[[], None],
    options: ServeOptions,
    loads: WorkerLoads | None,
) -> None:
    from ._httpserver import LifespanFailedError, serve

    assert endpoint.sock is not None
    ssl_context = None
    if options.certfile is not None:
        ssl_context = tls_context(options.certfile, options.keyfile)

    def cancelling() -> None:
        app.cancelling = True

    try:
        await serve(
            app,
            endpoint.sock,
            shutdown_trigger=shutdown.requested.wait,
            # after the lifespan startup; clients that connected earlier waited in the backlog
            ready=ready,
            shutdown_timeout=options.shutdown_timeout,
            interrupt=tus.interrupt_uploads,
            before_cancel=cancelling,
            force_trigger=shutdown.forced.wait,
            ssl_context=ssl_context,
            keep_alive_timeout=min(_KEEP_ALIVE_TIMEOUT, options.network_timeout),
            head_timeout=min(_HEAD_TIMEOUT, options.network_timeout),
            write_timeout=options.network_timeout,
            # a large body goes from the socket to the file in a worker thread, without an ASGI
            # message per piece
            raw_bodies=True,
            balance=loads,
        )
    except LifespanFailedError as exc:
        raise WorkerFailedError(str(exc)) from exc


class _AccessLog:
    """ASGI middleware: one ``anytus.access`` line per request, ``CLIENT METHOD PATH STATUS 0.001s``
    and, for an error, its code and message (``404 0.001s ERR_UPLOAD_NOT_FOUND: upload not
    found``); and :attr:`started`, set once the app's lifespan startup is complete."""

    def __init__(
        self, app: Callable[[Scope, ASGIReceiveCallable, ASGISendCallable], Awaitable[None]]
    ):
        self.app = app
        self.started = anyio.Event()
        #: set at shutdown when running requests are about to be cancelled: their cancellation is
        #: then the expected end, not an error for the server to report
        self.cancelling = False

    async def __call__(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if not access_logger.isEnabledFor(logging.INFO):
            # nothing to log: no status to watch, no line to build
            try:
                await self.app(scope, receive, send)
            except anyio.get_cancelled_exc_class():
                if not self.cancelling:
                    raise
            return
        status: int | str = "-"

        async def send_with_status(message: ASGISendEvent) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self.app(scope, receive, send_with_status)
        except anyio.get_cancelled_exc_class():
            if not self.cancelling:
                raise
            status = "cancelled"
        finally:
            error = error_of(scope)
            reason = f" {error.error_code}: {error.message}" if error is not None else ""
            client = scope.get("client")
            access_logger.info(
                "%s %s %s %s %.3fs%s",
                f"{client[0]}:{client[1]}" if client else "-",
                scope["method"],
                scope["path"],
                status,
                time.perf_counter() - started,
                reason,
                extra={
                    "status": status,
                    "method": scope["method"],
                    "path": scope["path"],
                    "error_code": error.error_code if error is not None else None,
                },
            )

    async def _lifespan(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        async def send_watching(message: ASGISendEvent) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                self.started.set()

        await self.app(scope, receive, send_watching)


class _Shutdown:
    """The worker's shutdown: :attr:`requested` on SIGTERM or SIGINT (or when the parent process
    has gone away), :attr:`forced` on a second signal, when running requests are not waited for.

    A supervised worker ignores SIGINT: Ctrl-C reaches every process of the terminal's process
    group, and the supervisor, which gets it too, tells its workers. Every SIGTERM only asks a
    supervised worker to shut down: a service manager sends it to every process of the service
    (systemd's default), and the supervisor forwards its own, so a worker gets two at once, which
    must not skip the graceful wait. A supervisor that gets a second signal forces its workers
    with :data:`FORCE_SIGNAL`.
    """

    def __init__(self, *, supervised: bool) -> None:
        self.requested = anyio.Event()
        self.forced = anyio.Event()
        self.supervised = supervised
        self.signals = (
            (signal.SIGTERM, FORCE_SIGNAL) if supervised else (signal.SIGINT, signal.SIGTERM)
        )
        if supervised:
            signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def watch(self, parent_pid: int | None) -> None:
        async with anyio.create_task_group() as tg:
            if parent_pid is not None:
                tg.start_soon(self._watch_parent, parent_pid)
            with anyio.open_signal_receiver(*self.signals) as signals:
                async for signum in signals:
                    name = signal.Signals(signum).name
                    again = self.requested.is_set() and not self.supervised
                    if signum == FORCE_SIGNAL or again:
                        if not self.forced.is_set():
                            logger.info("%s: stopping now", name)
                            self.requested.set()
                            self.forced.set()
                    elif not self.requested.is_set():
                        logger.info("%s: shutting down", name)
                        self.requested.set()

    async def _watch_parent(self, parent_pid: int) -> None:
        # a worker whose parent was killed (SIGKILL leaves no chance to tell us) must not
        # keep serving on its own; nothing signals a parent's death, so poll
        while os.getppid() == parent_pid:  # noqa: ASYNC110
            await anyio.sleep(1.0)
        logger.info("parent process exited: shutting down")
        self.requested.set()
