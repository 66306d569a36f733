"""tus uploads under ``/uploads/`` of a Quart application.

Run it with ``python examples/quart_app.py`` (uploads go to ``$ANYTUS_UPLOAD_DIR``, by default
a directory in the system's temporary directory) and upload to ``http://127.0.0.1:8000/uploads/``.

Quart has no mounts: ``asgi_app`` is its hook for ASGI middleware, and overriding it sends every
HTTP request under ``/uploads`` to TusApp, mounted as ASGI says: ``PREFIX`` appended to
``root_path`` (``path`` stays whole). A TusApp without a ``base_path`` serves uploads at its
mount. Lifespan events still go to Quart.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn
from quart import Quart

from anytus import FileStore
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from hypercorn.typing import ASGIReceiveCallable, ASGISendCallable, Scope

PREFIX = "/uploads"


def upload_dir() -> Path:
    """``$ANYTUS_UPLOAD_DIR``, else ``anytus-uploads`` in the temporary directory."""
    return Path(
        os.environ.get("ANYTUS_UPLOAD_DIR") or Path(tempfile.gettempdir(), "anytus-uploads")
    )


class QuartWithUploads(Quart):
    """A Quart app that hands ``PREFIX`` and everything under it to a TusApp."""

    def __init__(self, import_name: str, tus: TusApp) -> None:
        super().__init__(import_name)
        self.tus = tus

    async def asgi_app(
        self, scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        if scope["type"] == "http" and (
            scope["path"] == PREFIX or scope["path"].startswith(PREFIX + "/")
        ):
            root_path = scope.get("root_path", "") + PREFIX
            await self.tus({**scope, "root_path": root_path}, receive, send)
        else:
            await super().asgi_app(scope, receive, send)


def create_app(directory: str | os.PathLike[str] | None = None) -> Quart:
    app = QuartWithUploads(__name__, TusApp(FileStore(directory or upload_dir())))

    @app.get("/")
    async def index() -> str:
        return "tus uploads go to /uploads/\n"

    return app


app = create_app()

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ.get("PORT", "8000")))
