"""The upload page of ``anytus serve``: ``GET /`` answers a page that uploads files over tus to the
server's own endpoint (tusd greets with a page too).

The page is three package data files next to this module (``index.html``, ``anytus-page.js``,
``anytus-page.css``): plain HTML, CSS and a small tus 1.0.0 client in JavaScript, with no
external assets. :class:`PageApp` serves them in front of the wrapped app and passes every other
request through. The asset names have a dot, which no upload ID has, so they cannot shadow an
upload even when the base path is ``/``.

The page links the endpoint *relative* to itself (``files/`` for ``/files/``), so it keeps working
behind a proxy that serves the whole server under a prefix.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from .._asgi_types import ASGIApp, Receive, Scope, Send

__all__ = ("CONTENT_SECURITY_POLICY", "Asset", "Page", "PageApp", "load_page")

#: what the page may do: its own script and style only, requests to its own origin only (the tus
#: endpoint), no framing, no inline code, no plugins, no form posts
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

#: the files served besides the page: name -> content type
_ASSETS = {
    "anytus-page.js": "text/javascript; charset=utf-8",
    "anytus-page.css": "text/css; charset=utf-8",
}


@dataclass(frozen=True)
class Asset:
    """One file of the page: its body and its content type."""

    body: bytes
    content_type: str


@dataclass(frozen=True)
class Page:
    """The page's files by request path (``/``, ``/anytus-page.js``, ...)."""

    files: Mapping[str, Asset]


def load_page(base_path: str) -> Page:
    """Read the page's files (package data) and point the page at *base_path*.

    Blocking (it reads files): call it before serving, or in a worker thread.
    """
    folder = resources.files(__name__)
    endpoint = base_path.lstrip("/") or "./"
    index = (
        (folder / "index.html")
        .read_text(encoding="utf-8")
        .replace("{endpoint}", html.escape(endpoint, quote=True))
        .replace("{endpoint_text}", html.escape(base_path))
    )
    files = {"/": Asset(index.encode(), "text/html; charset=utf-8")}
    for name, content_type in _ASSETS.items():
        files[f"/{name}"] = Asset((folder / name).read_bytes(), content_type)
    return Page(files)


class PageApp:
    """ASGI middleware: ``GET`` and ``HEAD`` on the page's paths answer the page's files, with a
    strict ``Content-Security-Policy``; everything else (the lifespan too) goes to *app*.

    :param app: the app behind the page, usually :class:`~anytus.asgi.TusApp`
    :param page: the page, from :func:`load_page`
    """

    def __init__(self, app: ASGIApp, page: Page) -> None:
        self.app = app
        self.page = page

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("GET", "HEAD"):
            path: str = scope["path"]
            root_path: str = scope.get("root_path", "")
            if root_path and path.startswith(root_path):
                path = path[len(root_path) :] or "/"
            asset = self.page.files.get(path)
            if asset is not None:
                await self._send(asset, send, with_body=scope["method"] == "GET")
                return
        await self.app(scope, receive, send)

    @staticmethod
    async def _send(asset: Asset, send: Send, *, with_body: bool) -> None:
        headers = [
            (b"content-type", asset.content_type.encode()),
            (b"content-length", str(len(asset.body)).encode()),
            (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
            (b"x-content-type-options", b"nosniff"),
            (b"referrer-policy", b"no-referrer"),
            # small, and it must match the server it came from (the base path is in it)
            (b"cache-control", b"no-cache"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": asset.body if with_body else b""})
