"""The ``anytus`` command: ``anytus serve`` and ``anytus cleanup``.

``serve`` runs :class:`~anytus.asgi.TusApp` under granian on asyncio and under anytus's h11 server
on trio (:mod:`anytus._serve`). The port is chosen here, before any server starts, so that ``--port 0`` can
report the real one; ``--workers N`` runs N processes on it (on trio they share one listening socket,
granian's each listen with ``SO_REUSEPORT``; the kernel spreads the connections). The banner is
printed once every worker accepts connections. Every worker opens the same directory: the file
locks make that safe.
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, cast

import anyio

from ._serve import (
    GRACEFUL_TIMEOUT,
    NETWORK_TIMEOUT,
    Endpoint,
    ServeOptions,
    bind_listening,
    configure_logging,
    logger,
    reserve_port,
    run_worker,
)

if TYPE_CHECKING:
    import socket
    from collections.abc import Callable, Sequence
    from multiprocessing.process import BaseProcess
    from types import FrameType

__all__ = ("main",)


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
        description="Serve a directory over HTTP as a tus 1.0.0 server (granian on asyncio, "
        "its own h11 server on trio).",
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
    serve.add_argument(
        "--shutdown-timeout",
        type=float,
        default=GRACEFUL_TIMEOUT,
        metavar="SECONDS",
        help=f"on SIGINT/SIGTERM, let running requests go on this long, then cancel them (they "
        f"keep what they received); default: {GRACEFUL_TIMEOUT:g}",
    )
    serve.add_argument(
        "--network-timeout",
        type=float,
        default=NETWORK_TIMEOUT,
        metavar="SECONDS",
        help="a request body that sends nothing this long ends its request (keeping what came); "
        "request heads (10 s) and idle connections (5-10 s) are cut off sooner; default: "
        f"{NETWORK_TIMEOUT:g}",
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
    if args.shutdown_timeout < 0:
        parser.error("--shutdown-timeout must not be negative")
    if not args.network_timeout > 0:
        parser.error("--network-timeout must be positive")
    configure_logging()
    base_path = args.base_path if args.base_path.endswith("/") else args.base_path + "/"
    options = ServeOptions(
        directory=args.dir.absolute(),
        base_path=base_path,
        max_size=args.max_size,
        expire_after=args.expire_after,
        backend=args.backend,
        durability=args.durability,
        shutdown_timeout=args.shutdown_timeout,
        network_timeout=args.network_timeout,
    )
    # create the directory once, up front, so that a bad path fails here and not in N workers
    try:
        options.directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"anytus: cannot create {options.directory}: {exc}", file=sys.stderr)
        return 1
    reservation: socket.socket | None = None
    try:
        if options.backend == "trio":
            endpoint = bind_listening(args.host, args.port)
        else:
            endpoint, reservation = reserve_port(args.host, args.port)
    except OSError as exc:
        print(f"anytus: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    banner = (
        f"anytus: serving {options.directory} on http://{endpoint.url_host}:{endpoint.port}"
        f"{base_path}"
    )

    def announce() -> None:
        print(banner, file=sys.stderr, flush=True)

    try:
        if args.workers == 1:
            return run_worker(endpoint, options, None, announce)
        return _supervise(endpoint, options, args.workers, announce)
    finally:
        if reservation is not None:
            reservation.close()
        if endpoint.sock is not None:
            endpoint.sock.close()


def _worker_process(
    endpoint: Endpoint, options: ServeOptions, parent_pid: int, ready: Connection
) -> None:
    configure_logging()

    def report_ready() -> None:
        ready.send(os.getpid())
        ready.close()

    try:
        status = run_worker(endpoint, options, parent_pid, report_ready)
    except KeyboardInterrupt:  # pragma: no cover - a SIGINT before the handlers were installed
        status = 0
    sys.exit(status)


def _supervise(
    endpoint: Endpoint, options: ServeOptions, workers: int, announce: Callable[[], None]
) -> int:
    """Run *workers* processes serving *endpoint*; stop them all on SIGINT/SIGTERM, or when one
    of them exits."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    # spawn, not fork: a clean interpreter per worker, the same on every platform (the trio
    # server's socket is passed by multiprocessing's descriptor sharing, as hypercorn does)
    context = multiprocessing.get_context("spawn")
    pipes = [context.Pipe(duplex=False) for _ in range(workers)]
    processes = [
        context.Process(
            target=_worker_process,
            args=(endpoint, options, os.getpid(), sender),
            name=f"anytus-worker-{index}",
        )
        for index, (_, sender) in enumerate(pipes)
    ]
    for process in processes:
        process.start()
    for _, sender in pipes:
        sender.close()  # the workers hold their ends: EOF here means a worker died
    logger.info("started %d workers: %s", workers, " ".join(str(p.pid) for p in processes))

    # the banner once every worker accepts connections (or, on trio, once its lifespan started)
    worker_of = {receiver: process for (receiver, _), process in zip(pipes, processes, strict=True)}
    waiting = set(worker_of)
    dead: list[BaseProcess] = []
    while waiting and not dead and not stop.is_set():
        for receiver in multiprocessing.connection.wait(list(waiting), timeout=0.25):
            assert isinstance(receiver, Connection)
            try:
                receiver.recv()
            except EOFError:  # it exited before it was ready
                worker_of[receiver].join(options.shutdown_timeout)
                dead.append(worker_of[receiver])
            waiting.discard(receiver)
            receiver.close()
    if not dead and not stop.is_set():
        announce()

    while not dead and not stop.wait(0.25):
        dead = [process for process in processes if not process.is_alive()]
    for worker in dead:
        # a worker that died is a bug or a resource problem: say so and stop the rest, rather
        # than keep serving with fewer workers than asked for
        logger.error("worker %s exited with status %s", worker.pid, worker.exitcode)
    status = 1 if dead else 0

    for process in processes:
        if process.is_alive() and process.pid is not None:
            os.kill(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + options.shutdown_timeout + 5.0
    for process in processes:
        process.join(max(deadline - time.monotonic(), 0.1))
        if process.is_alive():
            logger.warning("worker %s did not stop: killing it", process.pid)
            process.kill()
            process.join()
    for receiver in waiting:
        receiver.close()
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
