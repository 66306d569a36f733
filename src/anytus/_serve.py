"""One ``anytus serve`` worker: :class:`~anytus.asgi.TusApp` under granian (asyncio) or anytus's
own HTTP/1.1 server (:mod:`anytus._h11server`, trio), in this process, until a shutdown signal.

granian runs on asyncio only (its HTTP layer is Rust; see the README's "Serving uploads") and is
configured through its public options only. On trio, hypercorn read sockets 64 KiB at a time and
passed every piece through its protocol layers and a queue, 3-6x slower than tusd; the h11 server
reads 256 KiB at a time and hands each read to the app as one message.

The two differ in who owns the listening socket:

- the trio server serves a socket bound and listening before it starts, so clients that
  connect early wait in the backlog, and ``--workers N`` share that one socket;
- granian binds its own listener from an address and a port, with ``SO_REUSEPORT`` (on Linux each of
  its workers does). ``anytus serve`` therefore resolves the port first (``--port 0``) and keeps it
  reserved by a bound, non-listening ``SO_REUSEPORT`` socket (:func:`reserve_port`); every worker's
  granian binds the same port and the kernel spreads the connections across their listeners. A
  worker reports itself ready once its lifespan startup is complete (granian binds right after
  it) and a connection to the port succeeds.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from ._asgi_types import ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope

__all__ = (
    "BACKLOG",
    "GRACEFUL_TIMEOUT",
    "NETWORK_TIMEOUT",
    "Endpoint",
    "ServeOptions",
    "WorkerFailedError",
    "bind_listening",
    "configure_logging",
    "reserve_port",
    "run_worker",
)

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("anytus.access")

#: how long a worker lets running requests finish after a shutdown signal, by default
GRACEFUL_TIMEOUT = 5.0
#: the listen backlog
BACKLOG = 2048
#: how long a connection may send nothing, by default (tusd's ``-network-timeout``): an idle
#: request body ends its request (TusApp's ``idle_timeout``); request heads and idle keep-alive
#: connections get the servers' own shorter limits, capped at this
NETWORK_TIMEOUT = 60.0
#: the longest a request head may take on either server (granian's own default is 30 s), and how
#: long the h11 server keeps an idle connection open; both capped at the network timeout
_HEAD_TIMEOUT = 10.0
_KEEP_ALIVE_TIMEOUT = 5.0
#: how long a granian worker may take from its lifespan startup to accepting connections
_READY_TIMEOUT = 10.0

#: granian's own messages go to the root logger (ours, on stderr) instead of its stdout handlers
_GRANIAN_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {},
    "handlers": {},
    "loggers": {
        "_granian": {"propagate": True},
        "granian.access": {"propagate": True},
    },
}


@dataclass(frozen=True)
class ServeOptions:
    directory: Path
    base_path: str
    max_size: int | None
    expire_after: float | None
    backend: Literal["asyncio", "trio"]
    durability: Literal["none", "finish", "always"]
    #: how long running requests may go on after a shutdown signal
    shutdown_timeout: float = GRACEFUL_TIMEOUT
    #: how long a client may send nothing (see :data:`NETWORK_TIMEOUT`)
    network_timeout: float = NETWORK_TIMEOUT


@dataclass(frozen=True)
class Endpoint:
    """Where workers serve: a numeric address and a port; for the trio server also the socket,
    bound and listening (granian binds its own)."""

    address: str
    port: int
    sock: socket.socket | None = None

    @property
    def url_host(self) -> str:
        return f"[{self.address}]" if ":" in self.address else self.address


def configure_logging() -> None:
    """Every message on stderr as ``[time] [pid] [level] message`` (replacing any handlers)."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
        force=True,
    )


def reserve_port(host: str, port: int) -> tuple[Endpoint, socket.socket]:
    """Resolve *host*, pick the port (*port*, or a free one for 0) and hold it for granian.

    Returns the endpoint and the reserving socket: bound, not listening, with ``SO_REUSEPORT`` so that
    granian's listeners can bind the same port. It receives no connections (only listening sockets
    do); keep it open while serving so that the port stays ours, close it at the end.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # first without SO_REUSEPORT: this fails if anything listens on the port, even another
    # SO_REUSEPORT listener (a second `anytus serve` on the same port must not join the first)
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(address)
        numeric, chosen = probe.getsockname()[:2]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((numeric, chosen, *address[2:]))
    except BaseException:
        sock.close()
        raise
    return Endpoint(numeric, chosen), sock


def bind_listening(host: str, port: int) -> Endpoint:
    """Bind and listen on *host*:*port* (0: a free port), for the trio server."""
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


class WorkerFailedError(Exception):
    """The server stopped on its own (not on a shutdown signal), or never became ready."""


def run_worker(
    endpoint: Endpoint,
    options: ServeOptions,
    parent_pid: int | None,
    ready: Callable[[], None],
) -> int:
    """Serve until SIGINT/SIGTERM (or, in a worker process, until the parent dies); return the exit
    status. *ready* is called once connections are accepted (or queue in a listening socket)."""
    try:
        anyio.run(_serve, endpoint, options, parent_pid, ready, backend=options.backend)
    except WorkerFailedError as exc:
        logger.error("%s", exc)
        return 1
    return 0


async def _serve(
    endpoint: Endpoint, options: ServeOptions, parent_pid: int | None, ready: Callable[[], None]
) -> None:
    # imported here: `anytus cleanup` and `--help` need neither the servers nor the app
    from ._filestore import FileStore
    from .asgi import TusApp

    tus = TusApp(
        FileStore(options.directory, durability=options.durability),
        base_path=options.base_path,
        max_size=options.max_size,
        expire_after=options.expire_after,
        idle_timeout=options.network_timeout,
    )
    app = _AccessLog(tus)

    async def shutdown_trigger() -> None:
        await _wait_for_shutdown(parent_pid)

    serve = _serve_h11 if options.backend == "trio" else _serve_granian
    await serve(
        app, endpoint, shutdown_trigger, ready, options.shutdown_timeout, options.network_timeout
    )
    logger.info("stopped")


async def _serve_h11(
    app: _AccessLog,
    endpoint: Endpoint,
    shutdown_trigger: Callable[[], Awaitable[None]],
    ready: Callable[[], None],
    shutdown_timeout: float,
    network_timeout: float,
) -> None:
    from ._h11server import LifespanFailedError, serve

    assert endpoint.sock is not None

    def cancelling() -> None:
        app.cancelling = True

    try:
        await serve(
            app,
            endpoint.sock,
            shutdown_trigger=shutdown_trigger,
            # after the lifespan startup; clients that connected earlier waited in the backlog
            ready=ready,
            shutdown_timeout=shutdown_timeout,
            before_cancel=cancelling,
            keep_alive_timeout=min(_KEEP_ALIVE_TIMEOUT, network_timeout),
            head_timeout=min(_HEAD_TIMEOUT, network_timeout),
            write_timeout=network_timeout,
        )
    except LifespanFailedError as exc:
        raise WorkerFailedError(str(exc)) from exc


async def _serve_granian(
    app: _AccessLog,
    endpoint: Endpoint,
    shutdown_trigger: Callable[[], Awaitable[None]],
    ready: Callable[[], None],
    shutdown_timeout: float,
    network_timeout: float,
) -> None:
    from granian.constants import HTTPModes, Interfaces, TaskImpl
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server.embed import Server

    server = Server(
        app,
        address=endpoint.address,
        port=endpoint.port,
        interface=Interfaces.ASGI,  # with the lifespan: TusApp runs its periodic cleanup there
        http=HTTPModes.http1,  # tus clients speak HTTP/1.1; no HTTP/2 sniffing per connection
        # hyper's header read timeout runs from the connection's start or the end of the previous
        # response: it bounds a silent connection, an idle keep-alive one and a trickled head
        http1_settings=HTTP1Settings(
            header_read_timeout=max(1, round(min(_HEAD_TIMEOUT, network_timeout) * 1000))
        ),
        websockets=False,
        backlog=BACKLOG,
        task_impl=TaskImpl.asyncio,  # real asyncio tasks: anyio's cancel scopes work in them
        runtime_threads=1,
        log_level=LogLevels.warning,
        log_dictconfig=_GRANIAN_LOGGING,
        log_access=False,  # _AccessLog writes it, with our logger and format
    )
    # granian applied its logging configuration (a dictConfig) in the constructor: put ours back
    configure_logging()

    stopping = False
    stopped = anyio.Event()

    async with anyio.create_task_group() as tg:

        async def run() -> None:
            try:
                await server.serve()
            finally:
                stopped.set()
            if not stopping:
                raise WorkerFailedError("granian stopped unexpectedly")

        async def announce() -> None:
            await app.started.wait()
            # granian binds its listener right after the lifespan startup: wait until it accepts
            await _wait_until_accepting(endpoint)
            ready()

        tg.start_soon(run)
        tg.start_soon(announce)
        await shutdown_trigger()
        stopping = True
        server.stop()  # type: ignore[no-untyped-call]
        with anyio.move_on_after(shutdown_timeout):
            await stopped.wait()
        if not stopped.is_set():
            # requests still running (a client that went quiet mid-upload): when this loop ends
            # they are cancelled, and keep what they received, as on the trio server's timeout
            logger.warning("requests still running after %gs: cancelling them", shutdown_timeout)
            app.cancelling = True
        tg.cancel_scope.cancel()


async def _wait_until_accepting(endpoint: Endpoint) -> None:
    """Return once a TCP connection to *endpoint* succeeds (refused: not listening yet)."""
    host = endpoint.address
    if host in ("0.0.0.0", "::"):  # the wildcard address is reached through the loopback
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    deadline = time.monotonic() + _READY_TIMEOUT
    while True:
        try:
            with anyio.fail_after(1.0):
                stream = await anyio.connect_tcp(host, endpoint.port)
        except (OSError, TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise WorkerFailedError(
                    f"granian did not accept connections on {endpoint.url_host}:{endpoint.port}"
                    f" within {_READY_TIMEOUT:g}s: {exc}"
                ) from exc
            await anyio.sleep(0.01)
        else:
            await stream.aclose()
            return


class _AccessLog:
    """ASGI middleware: one ``anytus.access`` line per request, ``CLIENT METHOD PATH STATUS 0.001s``,
    on either server; and :attr:`started`, set once the app's lifespan startup is complete."""

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
            client = scope.get("client")
            access_logger.info(
                "%s %s %s %s %.3fs",
                f"{client[0]}:{client[1]}" if client else "-",
                scope["method"],
                scope["path"],
                status,
                time.perf_counter() - started,
            )

    async def _lifespan(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        async def send_watching(message: ASGISendEvent) -> None:
            await send(message)
            if message["type"] == "lifespan.startup.complete":
                self.started.set()

        await self.app(scope, receive, send_watching)


async def _wait_for_shutdown(parent_pid: int | None) -> None:
    """Return on SIGINT or SIGTERM, or when the parent process has gone away."""
    async with anyio.create_task_group() as tg:

        async def on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    logger.info("%s: shutting down", signal.Signals(signum).name)
                    tg.cancel_scope.cancel()
                    return

        async def on_orphaned() -> None:
            # a worker whose parent was killed (SIGKILL leaves no chance to tell us) must not
            # keep serving on its own; nothing signals a parent's death, so poll
            while os.getppid() == parent_pid:  # noqa: ASYNC110
                await anyio.sleep(1.0)
            logger.info("parent process exited: shutting down")
            tg.cancel_scope.cancel()

        tg.start_soon(on_signal)
        if parent_pid is not None:
            tg.start_soon(on_orphaned)
