"""The ``anytus`` command: ``anytus serve`` and ``anytus cleanup``.

``serve`` runs :class:`~anytus.asgi.TusApp` under hypercorn, on asyncio or trio. The listening
socket is bound here, before any server starts, so that ``--port 0`` can report the real port and
``--workers N`` can share one socket between N processes (each accepts from it; the kernel spreads
the connections). Every worker opens the same directory: the file locks make that safe.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, cast

import anyio

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import FrameType

__all__ = ("main",)

logger = logging.getLogger("anytus")

#: how long a worker lets running requests finish after a shutdown signal
_GRACEFUL_TIMEOUT = 5.0
#: how much `anytus serve` reads from a socket at once (hypercorn's own is 64 KiB)
_SOCKET_READ_SIZE = 256 << 10
#: what hypercorn logs per request: client, method, path, status, seconds
_ACCESS_LOG_FORMAT = "%(h)s %(m)s %(U)s %(s)s %(L)ss"


@dataclass(frozen=True)
class _ServeOptions:
    directory: Path
    base_path: str
    max_size: int | None
    expire_after: float | None
    backend: Literal["asyncio", "trio"]
    durability: Literal["none", "finish", "always"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``anytus`` command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args, parser)
    return _cleanup(args, parser)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anytus", description="Resumable uploads over the tus protocol, from a directory."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve a directory over HTTP as a tus 1.0.0 server",
        description="Serve a directory over HTTP as a tus 1.0.0 server (hypercorn).",
    )
    serve.add_argument("--dir", type=Path, default=Path("uploads"), help="default: ./uploads")
    serve.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    serve.add_argument("--port", type=int, default=1080, help="default: 1080; 0 picks a free one")
    serve.add_argument("--base-path", default="/files/", help="default: /files/")
    serve.add_argument("--max-size", type=int, default=None, metavar="BYTES")
    serve.add_argument("--backend", choices=("asyncio", "trio"), default="asyncio")
    serve.add_argument("--workers", type=int, default=1, metavar="N", help="processes")
    serve.add_argument(
        "--durability",
        choices=("none", "finish", "always"),
        default="finish",
        help="when data is fsynced: never, when an upload completes (default), every request",
    )
    serve.add_argument(
        "--expire-after",
        type=float,
        default=None,
        metavar="SECONDS",
        help="expire unfinished uploads idle this long (and remove them periodically)",
    )

    cleanup = commands.add_parser(
        "cleanup",
        help="remove expired unfinished uploads from a directory",
        description="Remove unfinished uploads not written to for SECONDS, and print their IDs.",
    )
    cleanup.add_argument("dir", type=Path, metavar="DIR")
    cleanup.add_argument("--expire-after", type=float, required=True, metavar="SECONDS")
    return parser


# -- serve ----------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.max_size is not None and args.max_size < 0:
        parser.error("--max-size must not be negative")
    if args.expire_after is not None and args.expire_after <= 0:
        parser.error("--expire-after must be positive")
    if not args.base_path.startswith("/"):
        parser.error("--base-path must start with '/'")
    _configure_logging()
    base_path = args.base_path if args.base_path.endswith("/") else args.base_path + "/"
    options = _ServeOptions(
        directory=args.dir.absolute(),
        base_path=base_path,
        max_size=args.max_size,
        expire_after=args.expire_after,
        backend=args.backend,
        durability=args.durability,
    )
    # create the directory once, up front, so that a bad path fails here and not in N workers
    try:
        options.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"anytus: cannot create {options.directory}: {exc}", file=sys.stderr)
        return 1
    try:
        sock = _bind(args.host, args.port)
    except OSError as exc:
        print(f"anytus: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host
    banner = f"anytus: serving {options.directory} on http://{url_host}:{port}{base_path}"

    if args.workers == 1:
        print(banner, file=sys.stderr, flush=True)
        _run_worker(sock, options, None)
        return 0
    return _supervise(sock, options, args.workers, banner)


def _bind(host: str, port: int) -> socket.socket:
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
        # backlog instead of being refused, so the banner can be printed now
        sock.listen(2048)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _configure_logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
    )


def _run_worker(sock: socket.socket, options: _ServeOptions, parent_pid: int | None) -> None:
    """Serve on *sock* until SIGINT/SIGTERM (or, in a worker process, until the parent dies)."""
    anyio.run(_serve_async, sock, options, parent_pid, backend=options.backend)


async def _serve_async(sock: socket.socket, options: _ServeOptions, parent_pid: int | None) -> None:
    # imported here: `anytus cleanup` and `--help` need neither hypercorn nor the app
    from hypercorn.config import Config

    from ._filestore import FileStore
    from .asgi import TusApp

    app = TusApp(
        FileStore(options.directory, durability=options.durability),
        base_path=options.base_path,
        max_size=options.max_size,
        expire_after=options.expire_after,
    )
    config = Config()
    # hypercorn takes over the descriptor (and closes it at the end)
    config.bind = [f"fd://{sock.detach()}"]
    access_log = logging.getLogger("anytus.access")
    config.accesslog = access_log
    config.access_log_format = _ACCESS_LOG_FORMAT
    config.errorlog = logging.getLogger("anytus.server")
    config.graceful_timeout = _GRACEFUL_TIMEOUT

    async def shutdown_trigger() -> None:
        await _wait_for_shutdown(parent_pid)

    _raise_socket_read_size(options.backend)
    if options.backend == "trio":
        import hypercorn.trio

        await hypercorn.trio.serve(app, config, shutdown_trigger=shutdown_trigger)
    else:
        import hypercorn.asyncio

        await hypercorn.asyncio.serve(app, config, shutdown_trigger=shutdown_trigger)
    logger.info("stopped")


def _raise_socket_read_size(backend: str) -> None:
    """Read uploads from the socket in 256 KiB pieces instead of hypercorn's 64 KiB.

    Per read, hypercorn, h11 and the ASGI hand-over cost the same whatever the size, so for upload
    bodies the read size sets the pace. Measured on trio: 64 KiB gave 371 MiB/s for one stream and
    403 for eight; 256 KiB gave 424 and 550 with small requests unchanged; 1 MiB gave 610 and 572
    but cost small requests a quarter of their rate (each read allocates the full size). hypercorn
    has no option for it, only a module constant: it is raised here, in the server process that
    `anytus serve` owns, and only if the constant is the one we know.
    """
    import importlib

    module = importlib.import_module(f"hypercorn.{backend}.tcp_server")
    current = getattr(module, "MAX_RECV", None)
    if isinstance(current, int) and current < _SOCKET_READ_SIZE:
        setattr(module, "MAX_RECV", _SOCKET_READ_SIZE)  # noqa: B010 - a module, not typed


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


def _worker_process(sock: socket.socket, options: _ServeOptions, parent_pid: int) -> None:
    _configure_logging()
    try:
        _run_worker(sock, options, parent_pid)
    except KeyboardInterrupt:  # pragma: no cover - a SIGINT before the handlers were installed
        pass


def _supervise(sock: socket.socket, options: _ServeOptions, workers: int, banner: str) -> int:
    """Run *workers* processes serving *sock*; stop them all on SIGINT/SIGTERM."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    # spawn, not fork: a clean interpreter per worker, the same on every platform (the socket is
    # passed by multiprocessing's descriptor sharing, as hypercorn does for its own workers)
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(
            target=_worker_process,
            args=(sock, options, os.getpid()),
            name=f"anytus-worker-{index}",
        )
        for index in range(workers)
    ]
    for process in processes:
        process.start()
    print(banner, file=sys.stderr, flush=True)
    logger.info("started %d workers: %s", workers, " ".join(str(p.pid) for p in processes))

    status = 0
    while not stop.wait(0.25):
        dead = [process for process in processes if not process.is_alive()]
        if dead:
            # a worker that died is a bug or a resource problem: say so and stop the rest,
            # rather than keep serving with fewer workers than asked for
            for process in dead:
                logger.error("worker %s exited with status %s", process.pid, process.exitcode)
            status = 1
            break

    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + _GRACEFUL_TIMEOUT + 5.0
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.1))
        if process.is_alive():
            logger.warning("worker %s did not stop: killing it", process.pid)
            process.kill()
            process.join()
    sock.close()
    if received:
        logger.info("stopped (%s)", signal.Signals(received[0]).name)
    return status


# -- cleanup --------------------------------------------------------------------------------------


def _cleanup(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.expire_after <= 0:
        parser.error("--expire-after must be positive")
    directory = cast("Path", args.dir)
    if not directory.is_dir():
        print(f"anytus: {directory} is not a directory", file=sys.stderr)
        return 1

    from ._filestore import FileStore

    async def run() -> list[str]:
        return await FileStore(directory).cleanup(args.expire_after)

    removed = anyio.run(run)
    for upload_id in removed:
        print(upload_id)
    print(f"anytus: removed {len(removed)} expired upload(s) from {directory}", file=sys.stderr)
    return 0
