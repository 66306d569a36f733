"""The ``anytus`` command: ``anytus serve``, ``anytus cleanup`` and ``anytus upload``.

``serve`` runs :class:`~anytus.asgi.TusApp` under anytus's own HTTP/1.1 server, on asyncio or trio
(:mod:`anytus._serve`). The socket is bound and listening here, before any server starts, so that
``--port 0`` can report the real port; ``--workers N`` runs N processes that share it (the kernel
spreads the connections). The banner is printed once every worker accepts connections. Every worker opens the same directory: the file
locks make that safe.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import ssl
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, cast

import anyio

from . import __version__
from ._cli_upload import add_upload_parser, run_upload
from ._serve import (
    FORCE_SIGNAL,
    GRACEFUL_TIMEOUT,
    INTERRUPT_GRACE,
    NETWORK_TIMEOUT,
    Endpoint,
    LoggingOptions,
    ServeOptions,
    WorkerLoads,
    bind_listening,
    configure_logging,
    logger,
    pin_to_cpu,
    raise_open_files_limit,
    run_worker,
    tls_context,
    uses_uvloop,
    uvloop_installed,
)
from ._servestores import add_arguments as add_store_arguments
from ._servestores import check_arguments as check_store_arguments
from ._servestores import describe as describe_store
from ._servestores import probe as probe_store

if TYPE_CHECKING:
    from collections.abc import Callable, MutableSequence, Sequence
    from multiprocessing.process import BaseProcess
    from types import FrameType

__all__ = (
    "auto_workers",
    "main",
    "parse_duration",
    "parse_size",
    "parse_workers",
    "worker_cpus",
)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``anytus`` command line; return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args, parser, sys.argv[1:] if argv is None else argv)
    if args.command == "upload":
        return run_upload(args, parser)
    return _cleanup(args, parser)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="anytus", description="Resumable uploads over the tus protocol, from a directory."
    )
    parser.add_argument("--version", action="version", version=f"anytus {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve a directory over HTTP as a tus 1.0.0 server",
        description="Serve a directory over HTTP as a tus 1.0.0 server (anytus's own HTTP/1.1 "
        "server, on asyncio or trio).",
    )
    serve.add_argument(
        "--dir",
        type=Path,
        default=Path("uploads"),
        help="the directory uploads are stored in, created if missing (default: ./uploads)",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="the address to listen on (default: 127.0.0.1)"
    )
    serve.add_argument(
        "--port",
        type=int,
        default=1080,
        help="the port to listen on; 0 picks a free one (default: 1080)",
    )
    serve.add_argument(
        "--base-path",
        default="/files/",
        help="the URL path of the creation endpoint; uploads live below it (default: /files/)",
    )
    serve.add_argument(
        "--max-size",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="the largest upload accepted, in bytes or with a unit: 500M, 10G, 1.5TiB "
        "(K, M, G, T are powers of 1024; default: no limit)",
    )
    serve.add_argument(
        "--backend",
        choices=("asyncio", "trio"),
        default="asyncio",
        help="the event loop: asyncio or trio (needs anytus[trio]); default: asyncio",
    )
    serve.add_argument(
        "--loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="asyncio's event loop: uvloop (needs anytus[uvloop]) or the standard library's; "
        "default: auto, uvloop when installed",
    )
    serve.add_argument(
        "--workers",
        type=parse_workers,
        default=None,
        metavar="N",
        help="server processes sharing the port, or auto: one per CPU this process may run on "
        "(1 for a bucket without --redis); a worker that dies is replaced (default: auto)",
    )
    serve.add_argument(
        "--pin-workers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="give each worker process a CPU of its own (default: when there are several workers "
        "and no more of them than CPUs this process may run on)",
    )
    serve.add_argument(
        "--durability",
        choices=("none", "finish", "always"),
        default="finish",
        help="when data is fsynced: never, when an upload completes (default), every request",
    )
    serve.add_argument(
        "--expire-after",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="expire unfinished uploads idle this long, in seconds or with a unit: 90, 30m, "
        "24h, 7d (and remove them periodically; default: never)",
    )
    serve.add_argument(
        "--behind-proxy",
        action="store_true",
        help="build upload URLs from the reverse proxy's Forwarded and X-Forwarded-Host, "
        "-Proto and -Prefix headers (only when clients reach the server through the proxy alone)",
    )
    serve.add_argument(
        "--certfile",
        type=Path,
        default=None,
        metavar="PEM",
        help="serve HTTPS with this certificate chain (with --keyfile)",
    )
    serve.add_argument(
        "--keyfile", type=Path, default=None, metavar="PEM", help="the certificate's private key"
    )
    serve.add_argument(
        "--cors-origins",
        action="append",
        default=None,
        metavar="ORIGINS",
        help="origins allowed to make cross-origin requests, comma-separated or repeated "
        "(https://app.example); others get 403. Default: all",
    )
    serve.add_argument(
        "--shutdown-timeout",
        type=parse_duration,
        default=GRACEFUL_TIMEOUT,
        metavar="DURATION",
        help=f"on SIGINT/SIGTERM, let running requests go on this long, then interrupt them "
        f"(they keep what they received); a second signal stops at once "
        f"(default: {GRACEFUL_TIMEOUT:g}s)",
    )
    serve.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the least severe messages logged (default: info: one line per request and per "
        "upload event)",
    )
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text, or as one JSON object each (default: text)",
    )
    serve.add_argument(
        "--no-page",
        dest="page",
        action="store_false",
        help="do not serve the upload page on / (then / answers 404)",
    )
    serve.add_argument(
        "--no-draft",
        dest="draft",
        action="store_false",
        help="answer only tus 1.0.0, not the IETF resumable-upload draft (on by default)",
    )
    add_store_arguments(serve)
    serve.add_argument(
        "--network-timeout",
        type=parse_duration,
        default=NETWORK_TIMEOUT,
        metavar="DURATION",
        help="a request body that sends nothing this long ends its request (keeping what came); "
        "request heads (10s) and idle connections (5-10s) are cut off sooner "
        f"(default: {NETWORK_TIMEOUT:g}s)",
    )

    cleanup = commands.add_parser(
        "cleanup",
        help="remove expired unfinished uploads from a directory",
        description="Remove unfinished uploads not written to for DURATION, and print their IDs.",
    )
    cleanup.add_argument("dir", type=Path, metavar="DIR", help="the store directory")
    cleanup.add_argument(
        "--expire-after",
        type=parse_duration,
        required=True,
        metavar="DURATION",
        help="remove unfinished uploads idle this long, in seconds or with a unit: 90, 30m, 24h, 7d",
    )
    add_upload_parser(commands)
    return parser


_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*", re.IGNORECASE)
_DURATION_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"10G"`` -> 10737418240: bytes, or a number with K, M, G, T or P (powers of 1024, with
    an optional ``B`` or ``iB``)."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1048576, 500M, 10G)")
    number, unit = match.groups()
    return int(float(number) * _SIZE_UNITS[unit.lower()])


def parse_duration(text: str) -> float:
    """``"30m"`` -> 1800.0: seconds, or a number with s, m, h or d."""
    match = _DURATION.fullmatch(text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 90, 30m, 24h, 7d)")
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit.lower()]


def parse_workers(text: str) -> int | None:
    """``--workers``: a number of processes, or ``auto`` (``None``: see :func:`auto_workers`)."""
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of processes, nor auto: {text!r}") from None


def _usable_cpus() -> list[int] | None:
    """The CPUs this process may run on (cgroup and ``taskset`` limits included), or None where
    the platform does not say (not Linux)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return None


def auto_workers(args: argparse.Namespace) -> int:
    """``--workers auto``: one process per CPU this process may run on, as tusd uses every core
    (one Python process uses about one: the GIL), but one for a bucket without Redis, whose
    locks hold within one process only."""
    if args.s3_bucket is not None and args.redis is None:
        return 1
    usable = _usable_cpus()
    return max(1, len(usable) if usable is not None else os.cpu_count() or 1)


def worker_cpus(args: argparse.Namespace) -> list[int] | None:
    """``--pin-workers``: the CPU of each worker slot, or None to leave the workers unpinned.

    A worker is one Python process whose event loop and worker threads take turns holding the
    GIL, tens of times per request. On one CPU a turn is a switch between threads; across CPUs
    each turn also wakes a thread on another core, which then waits for the GIL there. Measured
    on 2 CPUs with 2 workers: small uploads 1.03-1.37x as fast pinned over four runs, large ones
    no slower.
    ``auto`` pins only when every worker can have a CPU of its own (and there are several: a
    lone worker would take the first CPU whatever else runs there)."""
    usable = _usable_cpus()
    if usable is None:
        if args.pin_workers:
            raise SystemExit("anytus: --pin-workers needs Linux's CPU affinity")
        return None
    if args.pin_workers is None:
        pin = 1 < args.workers <= len(usable)
    else:
        pin = args.pin_workers
    if not pin:
        return None
    return [usable[slot % len(usable)] for slot in range(args.workers)]


# -- serve ----------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    if not 0 <= args.port <= 65535:
        parser.error("--port must be between 0 and 65535")
    if args.workers is None:
        args.workers = auto_workers(args)
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
    if (refusal := check_store_arguments(args, argv)) is not None:
        parser.error(refusal)
    if not args.network_timeout > 0:
        parser.error("--network-timeout must be positive")
    if (args.certfile is None) != (args.keyfile is None):
        parser.error("--certfile and --keyfile go together")
    cors_origins = ("*",)
    if args.cors_origins is not None:
        cors_origins = tuple(
            origin.strip()
            for value in args.cors_origins
            for origin in value.split(",")
            if origin.strip()
        )
        if not cors_origins:
            parser.error("--cors-origins names no origin")
    if args.certfile is not None:
        # a bad certificate or key fails here, in one line, not in every worker
        try:
            tls_context(args.certfile, args.keyfile)
        except (OSError, ssl.SSLError) as exc:
            print(f"anytus: cannot use {args.certfile} / {args.keyfile}: {exc}", file=sys.stderr)
            return 1
    if args.backend == "trio" and importlib.util.find_spec("trio") is None:
        print(
            "anytus: --backend trio needs trio, which is not installed: pip install 'anytus[trio]'",
            file=sys.stderr,
        )
        return 2
    if args.loop == "uvloop" and args.backend == "trio":
        parser.error("--loop uvloop is for --backend asyncio")
    if args.loop == "uvloop" and not uvloop_installed():
        print(
            "anytus: --loop uvloop needs uvloop, which is not installed: "
            "pip install 'anytus[uvloop]'",
            file=sys.stderr,
        )
        return 2
    logging_options = LoggingOptions(level=args.log_level, format=args.log_format)
    configure_logging(logging_options)
    raise_open_files_limit()
    base_path = args.base_path if args.base_path.endswith("/") else args.base_path + "/"
    options = ServeOptions(
        directory=args.dir.absolute(),
        base_path=base_path,
        max_size=args.max_size,
        expire_after=args.expire_after,
        backend=args.backend,
        loop=args.loop,
        durability=args.durability,
        shutdown_timeout=args.shutdown_timeout,
        network_timeout=args.network_timeout,
        draft=args.draft,
        logging=logging_options,
        page=args.page,
        behind_proxy=args.behind_proxy,
        certfile=None if args.certfile is None else args.certfile.absolute(),
        keyfile=None if args.keyfile is None else args.keyfile.absolute(),
        cors_origins=cors_origins,
        s3_bucket=args.s3_bucket,
        s3_endpoint=args.s3_endpoint,
        s3_prefix=args.s3_prefix,
        redis_url=args.redis,
        redis_lease=args.redis_lease,
    )
    # check the directory once, up front (created if missing, written, listed), so that a bad
    # path fails here, in one line, and not as a 500 to every request in N workers
    from ._exceptions import StorageError
    from ._filestore import check_directory

    if options.s3_bucket is None:
        try:
            warning = check_directory(options.directory)
        except StorageError as exc:
            print(f"anytus: {exc.message}", file=sys.stderr)
            return 1
        if warning is not None:
            logger.warning("%s", warning)
        from ._locks import remove_dead_records

        # the lock records of processes killed before (a crash of the whole service): their
        # locks are stale anyway, and nothing else would remove them without --expire-after
        remove_dead_records(options.directory)
    # the same for the bucket and Redis: reached once here, with a clear message if they aren't
    if (problem := probe_store(options)) is not None:
        print(f"anytus: {problem}", file=sys.stderr)
        return 1
    try:
        endpoint = bind_listening(args.host, args.port)
    except OSError as exc:
        print(f"anytus: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    scheme = "http" if options.certfile is None else "https"
    banner = (
        f"anytus: serving {describe_store(options)} on {scheme}://{endpoint.url_host}:"
        f"{endpoint.port}"
        f"{base_path}"
    )

    def announce() -> None:
        print(banner, file=sys.stderr, flush=True)

    logger.info(
        "backend %s, event loop %s, %d worker process(es)",
        options.backend,
        "uvloop" if uses_uvloop(options) else options.backend,
        args.workers,
    )
    try:
        cpus = worker_cpus(args)
        if args.workers == 1:
            if cpus is not None:
                pin_to_cpu(cpus[0])
            return run_worker(endpoint, options, None, announce)
        return _Supervisor(endpoint, options, args.workers, announce, cpus).run()
    finally:
        if endpoint.sock is not None:
            endpoint.sock.close()


def _worker_process(
    endpoint: Endpoint,
    options: ServeOptions,
    parent_pid: int,
    ready: Connection,
    counts: MutableSequence[int],
    slot: int,
    cpu: int | None,
) -> None:
    configure_logging(options.logging)
    if cpu is not None:
        pin_to_cpu(cpu)  # before any thread starts: the threads inherit it

    def report_ready() -> None:
        ready.send(os.getpid())
        ready.close()

    sys.exit(run_worker(endpoint, options, parent_pid, report_ready, WorkerLoads(counts, slot)))


#: a worker that dies before it is ready is replaced after this long, doubled for each failure
#: in a row (a crash at startup would otherwise spin), up to _MAX_RESTART_DELAY
_RESTART_DELAY = 0.5
_MAX_RESTART_DELAY = 30.0
#: how long workers get beyond their shutdown timeout to exit before they are killed
_EXIT_GRACE = 5.0


class _Supervisor:
    """Runs *workers* processes on one endpoint and keeps that many running.

    A worker that exits is reaped at once (so that its lock files are judged dead at once: a
    zombie's /proc entry outlives it) and replaced at once; a replacement that dies before it
    is ready is retried after a growing delay. The service stays up while any worker runs. On
    SIGINT/SIGTERM every worker is asked to stop (SIGTERM); a second signal makes them stop at once
    (:data:`~anytus._serve.FORCE_SIGNAL`).
    """

    def __init__(
        self,
        endpoint: Endpoint,
        options: ServeOptions,
        workers: int,
        announce: Callable[[], None],
        cpus: list[int] | None = None,
    ) -> None:
        self.endpoint = endpoint
        #: each slot's CPU (--pin-workers), or None
        self.cpus = cpus
        self.options = options
        self.workers = workers
        self.announce = announce
        # spawn, not fork: a clean interpreter per worker, the same on every platform (the trio
        # server's socket is passed by multiprocessing's descriptor sharing, as hypercorn does)
        self.context = multiprocessing.get_context("spawn")
        self.running: dict[int, BaseProcess] = {}  # by sentinel
        # each worker's open connections, by slot (a replacement takes the slot of the worker it
        # replaces); -1: no worker accepting there
        self.loads = self.context.RawArray("i", [-1] * workers)
        self.slots: dict[BaseProcess, int] = {}
        self.starting: dict[Connection, BaseProcess] = {}  # ready pipe -> worker not ready yet
        self.ever_ready = False
        self.ready_pids: set[int | None] = set()
        self.failures = 0  # replacements in a row that died before they were ready
        self.restart_at: float | None = None
        self.signals: list[int] = []

    def start_worker(self) -> None:
        slot = min(set(range(self.workers)) - set(self.slots.values()))
        receiver, sender = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_worker_process,
            args=(
                self.endpoint,
                self.options,
                os.getpid(),
                sender,
                self.loads,
                slot,
                None if self.cpus is None else self.cpus[slot],
            ),
            name="anytus-worker",
        )
        process.start()
        self.slots[process] = slot
        sender.close()  # the worker holds its end: EOF here means it died
        self.running[process.sentinel] = process
        self.starting[receiver] = process

    def run(self) -> int:
        wakeup_read, wakeup_write = os.pipe()
        os.set_blocking(wakeup_write, False)
        previous_wakeup = signal.set_wakeup_fd(wakeup_write)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self.signals.append(signum)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for _ in range(self.workers):
                self.start_worker()
            logger.info(
                "started %d workers: %s%s",
                self.workers,
                " ".join(str(p.pid) for p in self.running.values()),
                "" if self.cpus is None else f" (on CPUs {' '.join(map(str, self.cpus))})",
            )
            status = self._loop(wakeup_read)
            self._stop_all()
            return status
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            os.close(wakeup_read)
            os.close(wakeup_write)
            for receiver in self.starting:
                receiver.close()

    def _loop(self, wakeup: int) -> int:
        while not self.signals:
            timeout = None
            if self.restart_at is not None:
                timeout = max(self.restart_at - time.monotonic(), 0.0)
            waitables: list[object] = [wakeup, *self.running, *self.starting]
            for ready in multiprocessing.connection.wait(waitables, timeout):  # type: ignore[arg-type]
                if ready == wakeup:
                    with contextlib.suppress(BlockingIOError):
                        os.read(wakeup, 64)
                elif isinstance(ready, Connection):
                    self._on_ready(ready)
                elif isinstance(ready, int) and ready in self.running:
                    status = self._on_exit(self.running.pop(ready))
                    if status is not None:
                        return status
            if self.restart_at is not None and time.monotonic() >= self.restart_at:
                self.restart_at = None
                while len(self.running) < self.workers:
                    self.start_worker()
        logger.info("stopping (%s)", signal.Signals(self.signals[0]).name)
        return 0

    def _on_ready(self, receiver: Connection) -> None:
        process = self.starting.pop(receiver)
        try:
            receiver.recv()
        except EOFError:
            return  # it died before it was ready: its sentinel tells
        finally:
            receiver.close()
        self.failures = 0
        self.ready_pids.add(process.pid)
        if not self.ever_ready and not self.starting:
            self.ever_ready = True
            self.announce()
        elif self.ever_ready:
            logger.info("worker %s is ready", process.pid)

    def _on_exit(self, process: BaseProcess) -> int | None:
        """Reap a worker that exited and plan its replacement; return an exit status when the
        whole server has to stop."""
        process.join()  # reaps it
        # a dead worker accepts nothing: the others must not wait for it to
        self.loads[self.slots.pop(process)] = -1
        was_ready = process.pid in self.ready_pids
        self.ready_pids.discard(process.pid)
        for receiver, starting in list(self.starting.items()):
            if starting is process:
                del self.starting[receiver]
                receiver.close()
        logger.error("worker %s exited with status %s", process.pid, process.exitcode)
        if process.pid is not None and self.options.s3_bucket is None:
            from ._locks import remove_dead_records

            # its lock record: a worker that exits normally removes its own
            remove_dead_records(self.options.directory, process.pid)
        if not self.ever_ready:
            # it never served: a configuration or resource problem that every worker would hit
            logger.error("a worker failed at startup: stopping")
            return 1
        delay = 0.0
        if not was_ready:
            self.failures += 1
            delay = min(_RESTART_DELAY * 2 ** (self.failures - 1), _MAX_RESTART_DELAY)
            logger.warning("replacing it in %gs", delay)
        restart_at = time.monotonic() + delay
        self.restart_at = min(self.restart_at or restart_at, restart_at)
        return None

    def _stop_all(self) -> None:
        """Ask every worker to stop, wait for them (a second signal makes them stop at once),
        and kill the ones that do not."""
        processes = list(self.running.values())
        forwarded = 0
        deadline = time.monotonic() + self.options.shutdown_timeout + INTERRUPT_GRACE + _EXIT_GRACE
        while True:
            # SIGTERM for the first signal received, FORCE_SIGNAL for the second
            for _ in range(forwarded, min(max(len(self.signals), 1), 2)):
                stop = signal.SIGTERM if forwarded == 0 else FORCE_SIGNAL
                for process in processes:
                    if process.is_alive() and process.pid is not None:
                        os.kill(process.pid, stop)
                forwarded += 1
            alive = [process for process in processes if process.is_alive()]
            if not alive:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for process in alive:
                    logger.warning("worker %s did not stop: killing it", process.pid)
                    process.kill()
                break
            multiprocessing.connection.wait([p.sentinel for p in alive], min(remaining, 0.1))
        for process in processes:
            process.join()


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

    from ._exceptions import StorageError

    try:
        removed = anyio.run(run)
    except StorageError as exc:
        where = f" ({exc.path})" if exc.path else ""
        print(f"anytus: {exc.message}{where}", file=sys.stderr)
        return 1
    for upload_id in removed:
        print(upload_id)
    print(f"anytus: removed {len(removed)} expired upload(s) from {directory}", file=sys.stderr)
    return 0
