"""tus uploads under ``/uploads/`` of a FastAPI application.

Run it with ``python examples/fastapi_app.py`` (uploads go to ``$ANYTUS_UPLOAD_DIR``, by default
a directory in the system's temporary directory) and upload to ``http://127.0.0.1:8000/uploads/``.

``FastAPI.mount`` is Starlette's ``Mount``: it appends ``/uploads`` to ASGI ``root_path``, and a
TusApp without a ``base_path`` serves uploads at the path it is mounted under: the prefix is
written once.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from anytus import FileStore
from anytus.asgi import TusApp


def upload_dir() -> Path:
    """``$ANYTUS_UPLOAD_DIR``, else ``anytus-uploads`` in the temporary directory."""
    return Path(
        os.environ.get("ANYTUS_UPLOAD_DIR") or Path(tempfile.gettempdir(), "anytus-uploads")
    )


def create_app(directory: str | os.PathLike[str] | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def index() -> dict[str, str]:
        return {"uploads": "/uploads/"}

    app.mount("/uploads", TusApp(FileStore(directory or upload_dir())))
    return app


app = create_app()

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
