"""``anytus upload FILE... --endpoint URL``: upload files with :class:`anytus.client.TusClient`.

Its own module so that ``anytus._cli`` only wires it in. The client and rich (the progress bars)
come with the ``client`` extra; they are imported when the command runs, so that ``anytus serve``
works without them and ``anytus upload`` without them says what to install.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

__all__ = ("add_upload_parser", "run_upload")

_MISSING = "anytus upload needs the client extra: pip install 'anytus[client]'"
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


def _size(text: str) -> int:
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = cleaned[-1:] if cleaned[-1:] in _UNITS else ""
    try:
        value = int(float(cleaned[: len(cleaned) - len(unit)]) * _UNITS[unit])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"not a positive size: {text!r}")
    return value


def _pair(separator: str, what: str) -> Callable[[str], tuple[str, str]]:
    def parse(text: str) -> tuple[str, str]:
        name, found, value = text.partition(separator)
        if not found or not name.strip():
            raise argparse.ArgumentTypeError(f"{what} must look like {what.upper()}: {text!r}")
        return name.strip(), value.strip() if separator == ":" else value

    return parse


def add_upload_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``upload`` subcommand to *commands*."""
    upload = commands.add_parser(
        "upload",
        help="upload files to a tus server (needs anytus[client])",
        description="Upload files to a tus server, one after the other, with a progress bar each, "
        "and print each upload's URL. An interrupted run (Ctrl-C, a lost connection) continues "
        "where it stopped when run again.",
    )
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE")
    upload.add_argument(
        "--endpoint", required=True, metavar="URL", help="the creation URL, e.g. .../files/"
    )
    upload.add_argument(
        "--chunk-size",
        type=_size,
        default=None,
        metavar="SIZE",
        help="bytes per PATCH request (e.g. 8M); default: the whole file in one",
    )
    upload.add_argument(
        "--parallel",
        type=int,
        default=1,
        metavar="N",
        help="send each file as N partial uploads at once (the concatenation extension)",
    )
    upload.add_argument(
        "--metadata",
        action="append",
        default=[],
        type=_pair("=", "key=value"),
        metavar="KEY=VALUE",
        help="Upload-Metadata (repeatable); filename is the file's name unless given",
    )
    upload.add_argument(
        "--header",
        action="append",
        default=[],
        type=_pair(":", "name: value"),
        metavar="'NAME: VALUE'",
        help="an extra request header (repeatable)",
    )
    upload.add_argument(
        "--checksum",
        choices=("sha1", "md5", "sha256", "sha512", "crc32"),
        default=None,
        help="send each request's checksum (the checksum extension)",
    )
    upload.add_argument(
        "--no-resume",
        action="store_true",
        help="start new uploads even for files whose earlier upload was interrupted",
    )
    upload.add_argument(
        "--retries", type=int, default=8, metavar="N", help="retries in a row without progress"
    )
    upload.add_argument(
        "--draft",
        action="store_true",
        help="upload with the IETF resumable-upload draft instead of tus 1.0.0, at the newest "
        "interop version the server answers (10 down to 6)",
    )
    upload.add_argument(
        "--draft-version",
        type=int,
        choices=(6, 7, 8, 9, 10),
        default=None,
        metavar="N",
        help="with the draft, use interop version N (6-10) instead of negotiating; implies --draft",
    )


def run_upload(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``anytus upload``; return the exit status (1 if any file failed)."""
    if args.parallel < 1:
        parser.error("--parallel must be at least 1")
    if (args.draft or args.draft_version is not None) and (args.parallel > 1 or args.checksum):
        parser.error("the draft has no concatenation or checksums: no --parallel, --checksum")
    if args.retries < 0:
        parser.error("--retries must not be negative")
    try:
        import httpx  # noqa: F401
        import rich.progress  # noqa: F401
    except ImportError:
        print(_MISSING, file=sys.stderr)
        return 1
    import anyio

    try:
        return anyio.run(_upload_all, args)
    except KeyboardInterrupt:  # before the uploads began, or on a platform without signals
        _say_interrupted()
        return 130


def _say_interrupted() -> None:
    print("anytus: interrupted; run the same command again to continue the upload", file=sys.stderr)


async def _upload_all(args: argparse.Namespace) -> int:
    """Upload the files; Ctrl-C cancels the uploads (what the server has stays there) and says
    how to resume, with the exit status 130.

    Ctrl-C is taken here, not left to the event loop's runner: before Python 3.11 that raises the
    main task's cancellation instead of ``KeyboardInterrupt``, so it would end in a traceback.
    """
    import anyio

    interrupted = False
    status = 130
    async with anyio.create_task_group() as tg:
        if sys.platform != "win32":  # no signal handlers in asyncio's Windows loop

            async def cancel_on_sigint() -> None:
                nonlocal interrupted
                with anyio.open_signal_receiver(signal.SIGINT) as signals:
                    async for _ in signals:
                        interrupted = True
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(cancel_on_sigint)
        status = await _upload_files(args)
        tg.cancel_scope.cancel()
    if interrupted:
        _say_interrupted()
        return 130
    return status


async def _upload_files(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TaskID,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    from ._exceptions import TusError
    from .client import TusClient

    console = Console(stderr=True)
    files: Sequence[Path] = args.files
    failed = 0
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    headers = dict(args.header)
    # progress bars only on a terminal; the URLs go to stdout either way
    with Progress(*columns, console=console, disable=not console.is_terminal) as progress:
        tasks = [progress.add_task(path.name, total=None, start=False) for path in files]
        draft = args.draft or args.draft_version is not None
        async with TusClient(
            args.endpoint,
            headers,
            retries=args.retries,
            protocol="draft" if draft else "tus",
            draft_version=args.draft_version,
        ) as client:
            for path, task in zip(files, tasks, strict=True):
                metadata = {"filename": path.name, **dict(args.metadata)}

                def on_progress(sent: int, total: int | None, task: TaskID = task) -> None:
                    progress.start_task(task)
                    progress.update(task, completed=sent, total=total)

                try:
                    url = await client.upload(
                        path,
                        metadata=metadata,
                        chunk_size=args.chunk_size,
                        parallel=args.parallel,
                        checksum=args.checksum,
                        on_progress=on_progress,
                        resume=not args.no_resume,
                    )
                except (TusError, OSError, ValueError) as exc:
                    failed += 1
                    progress.update(task, description=f"{path.name} (failed)", total=0)
                    progress.stop_task(task)
                    # soft_wrap: a long path stays one line, as the terminal wraps it
                    progress.console.print(
                        f"anytus: {path}: {exc}", markup=False, highlight=False, soft_wrap=True
                    )
                    continue
                # rich's live display prints what goes to stdout above the bars
                print(url, flush=True)
    return 1 if failed else 0
