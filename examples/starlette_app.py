"""tus uploads under ``/uploads/`` of a Starlette application.

Run it with ``python examples/starlette_app.py`` (uploads go to ``$ANYTUS_UPLOAD_DIR``, by default
a directory in the system's temporary directory) and upload to ``http://127.0.0.1:8000/uploads/``.

Starlette's ``Mount`` appends ``/uploads`` to ASGI ``root_path``, and a TusApp without a
``base_path`` serves uploads at the path it is mounted under: the prefix is written once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route

from anytus import FileStore
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from starlette.requests import Request


def upload_dir() -> Path:
    """``$ANYTUS_UPLOAD_DIR``, else ``anytus-uploads`` in the temporary directory."""
    return Path(
        os.environ.get("ANYTUS_UPLOAD_DIR") or Path(tempfile.gettempdir(), "anytus-uploads")
    )


async def index(request: Request) -> PlainTextResponse:
    return PlainTextResponse("tus uploads go to /uploads/\n")


def create_app(directory: str | os.PathLike[str] | None = None) -> Starlette:
    tus = TusApp(FileStore(directory or upload_dir()))
    return Starlette(routes=[Route("/", index), Mount("/uploads", app=tus)])


app = create_app()

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
