"""Two floors for ``bench_vs_tusd.py``: how fast a Python server on this machine can go at best,
with granian's ASGI and without any ASGI server, measured by the same client as tusd and anytus.

Neither is a tus server. They answer just enough of tus 1.0.0 for the benchmark's client (POST
with ``Upload-Length``, PATCH, HEAD, DELETE), validate nothing, keep uploads in a dict, and store
the bytes in ``DIR/<id>`` with no ``.info``, no lock and no fsync: everything anytus does beyond
that is left out, so what they reach bounds what anytus could reach on the same stack.

- ``granian``: an ASGI app under granian's embedded server, set up as ``anytus serve`` sets it up
  (asyncio, HTTP/1.1, one runtime thread); it writes each body chunk with ``os.write`` on the
  event loop (a shortcut anytus may not take: it never blocks the loop).
- ``threads``: no ASGI and no event loop: one thread per connection with blocking sockets (as Go
  runs one goroutine per connection), a minimal HTTP/1.1 head parser, and bodies received with
  ``recv_into`` into one reused 256 KiB buffer per connection and written from it, as tusd copies
  through a reused buffer.

Run: ``python _floor_servers.py {granian,threads} PORT DIR``.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import sys
import threading
from typing import Any

#: receive buffer of the threads floor, reused for every body
BUFFER_SIZE = 256 * 1024

_ids = itertools.count()


class Uploads:
    """Upload ID -> [length, offset], and the data files."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.table: dict[str, list[int]] = {}

    def create(self, length: int) -> str:
        upload_id = f"{os.getpid()}-{next(_ids)}"
        os.close(os.open(self.path(upload_id), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        self.table[upload_id] = [length, 0]
        return upload_id

    def path(self, upload_id: str) -> str:
        return os.path.join(self.directory, upload_id)

    def delete(self, upload_id: str) -> None:
        self.table.pop(upload_id, None)
        os.unlink(self.path(upload_id))


def _tus_answer(
    uploads: Uploads, method: str, path: str, headers: dict[str, str]
) -> tuple[int, list[tuple[str, str]], str | None]:
    """Status and headers for *method* on *path*, and the upload a PATCH body goes to."""
    common = [("Tus-Resumable", "1.0.0")]
    if method == "POST":
        upload_id = uploads.create(int(headers["upload-length"]))
        return 201, [*common, ("Location", f"/files/{upload_id}"), ("Content-Length", "0")], None
    upload_id = path.rsplit("/", 1)[-1]
    entry = uploads.table.get(upload_id)
    if entry is None:
        return 404, [*common, ("Content-Length", "0")], None
    if method == "HEAD":
        return (
            200,
            [
                *common,
                ("Upload-Offset", str(entry[1])),
                ("Upload-Length", str(entry[0])),
                ("Cache-Control", "no-store"),
            ],
            None,
        )
    if method == "DELETE":
        uploads.delete(upload_id)
        return 204, common, None
    return 204, common, upload_id  # PATCH: Upload-Offset is added once the body is stored


# --- granian ----------------------------------------------------------------------------------------


def granian_app(uploads: Uploads) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        status, answer, target = _tus_answer(uploads, scope["method"], scope["path"], headers)
        fd = os.open(uploads.path(target), os.O_WRONLY | os.O_APPEND) if target else -1
        received = 0
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
            body = message.get("body", b"")
            if fd >= 0 and body:
                os.write(fd, body)  # the floor: no thread hop at all
                received += len(body)
        if target is not None:
            os.close(fd)
            uploads.table[target][1] += received
            answer.append(("Upload-Offset", str(uploads.table[target][1])))
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode(), v.encode()) for k, v in answer],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    return app


def serve_granian(port: int, uploads: Uploads) -> None:
    from granian.constants import HTTPModes, Interfaces, TaskImpl
    from granian.log import LogLevels
    from granian.server.embed import Server

    server = Server(
        granian_app(uploads),
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        http=HTTPModes.http1,
        websockets=False,
        task_impl=TaskImpl.asyncio,
        runtime_threads=1,
        log_level=LogLevels.error,
    )
    asyncio.run(server.serve())


# --- threads ----------------------------------------------------------------------------------------


def _connection(sock: socket.socket, uploads: Uploads, lock: threading.Lock) -> None:
    buffer = bytearray(BUFFER_SIZE)
    view = memoryview(buffer)
    pending = b""
    with sock:
        while True:
            while (end := pending.find(b"\r\n\r\n")) < 0:
                data = sock.recv(65536)
                if not data:
                    return
                pending += data
            lines = pending[:end].decode("latin-1").split("\r\n")
            pending = pending[end + 4 :]
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            with lock:  # the dict and IDs are shared by every connection's thread
                status, answer, target = _tus_answer(uploads, method, path, headers)
            left = int(headers.get("content-length", "0"))
            fd = os.open(uploads.path(target), os.O_WRONLY | os.O_APPEND) if target else -1
            received = 0
            try:
                head, pending = pending[:left], pending[left:]
                if fd >= 0 and head:
                    os.write(fd, head)
                received += len(head)
                left -= len(head)
                while left:
                    n = sock.recv_into(view, min(left, BUFFER_SIZE))
                    if not n:
                        return
                    if fd >= 0:
                        os.write(fd, view[:n])
                    received += n
                    left -= n
            finally:
                if fd >= 0:
                    os.close(fd)
            if target is not None:
                with lock:
                    uploads.table[target][1] += received
                    answer.append(("Upload-Offset", str(uploads.table[target][1])))
            reason = {200: "OK", 201: "Created", 204: "No Content"}.get(status, "Not Found")
            response = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in answer)]
            sock.sendall(("\r\n".join(response) + "\r\n\r\n").encode("latin-1"))


def serve_threads(port: int, uploads: Uploads) -> None:
    lock = threading.Lock()
    with socket.create_server(("127.0.0.1", port), backlog=2048) as listener:
        while True:
            sock, _ = listener.accept()
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            threading.Thread(target=_connection, args=(sock, uploads, lock), daemon=True).start()


def main() -> None:
    kind, port, directory = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    uploads = Uploads(directory)
    if kind == "granian":
        serve_granian(port, uploads)
    elif kind == "threads":
        serve_threads(port, uploads)
    else:
        raise SystemExit(f"unknown floor {kind!r}: granian or threads")


if __name__ == "__main__":
    main()
