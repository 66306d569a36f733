"""tus uploads under ``/uploads/`` of a Litestar application.

Run it with ``python examples/litestar_app.py`` (uploads go to ``$ANYTUS_UPLOAD_DIR``, by default
a directory in the system's temporary directory) and upload to ``http://127.0.0.1:8000/uploads/``.

A mount is an ``asgi`` route handler with ``is_mount=True``. Litestar leaves ASGI ``root_path``
alone but cuts the mount off ``scope["path"]`` (``/uploads/ID`` becomes ``/ID/``) and not off
``raw_path``: TusApp takes what was cut as its mount, and without a ``base_path`` serves uploads
there. The prefix is written once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from litestar import Litestar, asgi, get

from anytus import FileStore
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from litestar.types import Receive, Scope, Send


def upload_dir() -> Path:
    """``$ANYTUS_UPLOAD_DIR``, else ``anytus-uploads`` in the temporary directory."""
    return Path(
        os.environ.get("ANYTUS_UPLOAD_DIR") or Path(tempfile.gettempdir(), "anytus-uploads")
    )


@get("/")
async def index() -> str:
    return "tus uploads go to /uploads/\n"


def create_app(directory: str | os.PathLike[str] | None = None) -> Litestar:
    tus = TusApp(FileStore(directory or upload_dir()))

    @asgi("/uploads", is_mount=True, copy_scope=True)
    async def uploads(scope: Scope, receive: Receive, send: Send) -> None:
        await tus(scope, receive, send)

    return Litestar(route_handlers=[index, uploads])


app = create_app()

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
