"""The layers of ``anytus serve`` as servers of their own, for ``bench_layers.py``.

- ``server``: anytus's HTTP server (``anytus._httpserver``) and anyio's event loop with a trivial
  app that answers POST, PATCH and HEAD as a tus server would and stores nothing (a dict of
  offsets): what the server and the loop cost per request;
- ``tusapp-memory``: ``TusApp`` with a ``MemoryStore`` on that server: adds the tus layer;
- ``tusapp-inline``: ``TusApp`` with a ``FileStore`` (``durability="none"``) whose blocking steps run
  on the event loop itself, not in worker threads (which anytus may never do): adds the store's
  system calls and Python, without the hops;
- ``tusapp-file``: ``TusApp`` with a ``FileStore`` (``durability="none"``): adds the store's
  worker-thread hops.

``anytus serve`` itself adds its access-log and upload-page layers on top of the last one.
Each runs on asyncio with uvloop when it is installed, as ``anytus serve`` does.

Run: ``python _layer_servers.py {server,tusapp-memory,tusapp-inline,tusapp-file} PORT DIR``.
"""

from __future__ import annotations

import importlib.util
import itertools
import socket
import sys
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel

from anytus import FileStore, MemoryStore
from anytus._httpserver import serve
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from collections.abc import Callable

KINDS = ("server", "tusapp-memory", "tusapp-inline", "tusapp-file")
T = TypeVar("T")


class InlineFileStore(FileStore):
    """A FileStore that runs its blocking steps on the event loop: a measurement, never a way to
    serve (it blocks the loop for every system call)."""

    async def _run(self, fn: Callable[..., T], *args: object, **options: Any) -> T:
        await anyio.lowlevel.checkpoint()
        return fn(*args)


def trivial_app() -> Any:
    """A tus-shaped ASGI app that stores nothing: the server's and the loop's share alone."""
    ids = itertools.count()
    offsets: dict[str, int] = {}
    common = [(b"tus-resumable", b"1.0.0")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        method = scope["method"]
        upload_id = scope["path"].rsplit("/", 1)[-1]
        received = 0
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
            received += len(message.get("body", b""))
        if method == "POST":
            upload_id = str(next(ids))
            offsets[upload_id] = 0
            status = 201
            headers = [*common, (b"location", f"/files/{upload_id}".encode())]
        elif method == "PATCH" and upload_id in offsets:
            offsets[upload_id] += received
            status = 204
            headers = [*common, (b"upload-offset", str(offsets[upload_id]).encode())]
        elif method == "HEAD" and upload_id in offsets:
            status = 200
            offset = str(offsets[upload_id]).encode()
            headers = [*common, (b"upload-offset", offset), (b"upload-length", offset)]
            headers.append((b"cache-control", b"no-store"))
        else:
            status, headers = 404, common
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b""})

    return app


async def run(kind: str, port: int, directory: str) -> None:
    app: Any
    if kind == "server":
        app = trivial_app()
    elif kind == "tusapp-memory":
        app = TusApp(MemoryStore(), base_path="/files/")
    elif kind == "tusapp-inline":
        app = TusApp(InlineFileStore(directory, durability="none"), base_path="/files/")
    elif kind == "tusapp-file":
        app = TusApp(FileStore(directory, durability="none"), base_path="/files/")
    else:
        raise SystemExit(f"unknown layer {kind!r}: one of {', '.join(KINDS)}")
    listener = socket.create_server(("127.0.0.1", port), backlog=2048)
    # raw bodies: as `anytus serve` serves TusApp
    await serve(app, listener, shutdown_trigger=anyio.Event().wait, raw_bodies=True)


def main() -> None:
    kind, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    uvloop = importlib.util.find_spec("uvloop") is not None
    anyio.run(run, kind, port, directory, backend_options={"use_uvloop": uvloop})


if __name__ == "__main__":
    main()
