"""TusApp mounted inside another application or under a server's root_path (issue #7, item 10).

The rule: the mount is ASGI ``root_path`` (or, for a framework that cuts its mount off ``path``
and leaves ``root_path`` alone, the part it cut). A TusApp without ``base_path`` serves at its
mount; a ``base_path`` given is the whole public path and must lie at or under the mount, or
every request answers 500 ``ERR_BASE_PATH_MISMATCH`` (and the log says so once). Upload URLs
include the mount.

- a table for :func:`anytus._protocol.split_mount` over the ways servers and frameworks fill
  ``root_path``, ``path`` and ``raw_path``;
- Starlette mounts (single, nested), a server root_path (hypercorn's, where ``path`` lacks it),
  the old repeated-prefix form and a disagreeing ``base_path``, all over real HTTP on both
  backends; uvicorn's ``--root-path`` (a subprocess) around the Starlette example. (Each
  framework's example is run by tests/test_examples.py with a real tus client.)
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from _server import (
    CLIENT_TLS,
    TUS,
    TusClient,
    logged_process,
    serve_app,
    subprocess_env,
    upload_id_of,
    wait_until_answering,
)
from anytus import FileStore
from anytus._protocol import split_mount
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from collections.abc import Callable

    from starlette.routing import BaseRoute

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize(
    ("root_path", "path", "raw_path", "expected"),
    [
        # not mounted
        ("", "/files/x", "/files/x", ("", "/files/x")),
        ("", "/files/x", None, ("", "/files/x")),
        ("", "/files/a/b", "/files/a%2Fb", ("", "/files/a%2Fb")),
        # Starlette's Mount: root_path extended, path and raw_path whole
        ("/uploads", "/uploads/x", "/uploads/x", ("/uploads", "/x")),
        ("/uploads", "/uploads", "/uploads", ("/uploads", "")),
        ("/uploads", "/uploads/", "/uploads/", ("/uploads", "/")),
        ("/uploads/", "/uploads/x", "/uploads/x", ("/uploads", "/x")),
        ("/api/uploads", "/api/uploads/x", "/api/uploads/x", ("/api/uploads", "/x")),
        # an encoded slash stays in the rest, where it is refused as an upload ID
        ("/uploads", "/uploads/a/b", "/uploads/a%2Fb", ("/uploads", "/a%2Fb")),
        # the mount as sent, however it was encoded
        ("/up loads", "/up loads/x", "/up%20loads/x", ("/up%20loads", "/x")),
        ("/uploads", "/uploads/x", "/upl%6Fads/x", ("/upl%6Fads", "/x")),
        # no raw_path: the decoded path, re-encoded
        ("/uploads", "/uploads/x", None, ("/uploads", "/x")),
        ("/api", "/x", None, ("/api", "/x")),
        # uvicorn --root-path: root_path in front of path and raw_path
        ("/api", "/api/files/x", "/api/files/x", ("/api", "/files/x")),
        # hypercorn's root_path: path and raw_path without it (a proxy removed it)
        ("/api", "/files/x", "/files/x", ("/api", "/files/x")),
        # ... and a Starlette mount inside that
        ("/api/uploads", "/uploads/x", "/uploads/x", ("/api/uploads", "/x")),
        # a server that puts root_path in path but not in raw_path
        ("/api", "/api/x", "/x", ("/api", "/x")),
        # Litestar: root_path untouched, path cut down to the rest (plus a slash), raw_path whole
        ("", "/x/", "/uploads/x", ("/uploads", "/x")),
        ("", "/", "/uploads/", ("/uploads", "/")),
        ("", "/", "/uploads", ("/uploads", "")),
        ("/api", "/x/", "/api/uploads/x", ("/api/uploads", "/x")),
        # a path that is no tail of raw_path says nothing of a mount
        ("", "/elsewhere", "/files/x", ("", "/files/x")),
    ],
)
def test_split_mount(
    root_path: str, path: str, raw_path: str | None, expected: tuple[str, str]
) -> None:
    assert split_mount(root_path, path, raw_path) == expected


async def upload(http: httpx.AsyncClient, creation_url: str, data: bytes) -> str:
    """Create and fill an upload at *creation_url*; return its Location."""
    tus = TusClient(http, creation_url)
    created = await tus.create(len(data))
    assert created.status_code == 201, (created.status_code, created.text)
    location = created.headers["Location"]
    patched = await http.patch(
        location,
        headers={
            **TUS,
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        content=data,
    )
    assert patched.status_code == 204, (patched.status_code, patched.text)
    head = await http.head(location, headers=TUS)
    assert head.headers["Upload-Offset"] == str(len(data))
    return location


@pytest.mark.parametrize(
    ("routes", "public"),
    [
        pytest.param(lambda tus: [Mount("/uploads", app=tus)], "/uploads/", id="mount"),
        pytest.param(
            lambda tus: [Mount("/api", routes=[Mount("/v1/uploads", app=tus)])],
            "/api/v1/uploads/",
            id="nested",
        ),
    ],
)
async def test_a_mounted_app_serves_at_its_mount(
    tmp_path: Path, routes: Callable[[TusApp], list[BaseRoute]], public: str
) -> None:
    tus = TusApp(FileStore(tmp_path))
    app = Starlette(routes=routes(tus))
    async with (
        serve_app(app, path="") as origin,
        httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http,
    ):
        location = await upload(http, f"{origin}{public}", b"mounted")
        assert location == f"{origin}{public}{upload_id_of(location)}"
        assert (tmp_path / f"{upload_id_of(location)}.bin").read_bytes() == b"mounted"
        # (Starlette redirects the mount without its trailing slash); nothing outside the mount
        options = await http.options(f"{origin}{public}")
        assert options.status_code == 200
        assert options.headers["Tus-Version"] == "1.0.0"
        assert (await http.post(f"{origin}/files/", headers=TUS)).status_code == 404


@pytest.mark.parametrize(
    ("base_path", "public"),
    [
        # the old form, with the mount repeated: still the whole public path
        ("/uploads/", "/uploads/"),
        ("/uploads/files", "/uploads/files/"),
    ],
)
async def test_a_base_path_under_the_mount_is_the_whole_public_path(
    tmp_path: Path, base_path: str, public: str
) -> None:
    app = Starlette(
        routes=[Mount("/uploads", app=TusApp(FileStore(tmp_path), base_path=base_path))]
    )
    async with (
        serve_app(app, path="") as origin,
        httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http,
    ):
        location = await upload(http, f"{origin}{public}", b"under the mount")
        assert location == f"{origin}{public}{upload_id_of(location)}"


async def test_a_base_path_outside_the_mount_is_an_error_that_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tus = TusApp(FileStore(tmp_path), base_path="/files/")
    app = Starlette(routes=[Mount("/uploads", app=tus)])
    caplog.set_level(logging.ERROR, logger="anytus.asgi")
    async with (
        serve_app(app, path="") as origin,
        httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http,
    ):
        for method, url in [
            ("POST", "/uploads/"),
            ("POST", "/uploads/files/"),
            ("HEAD", "/uploads/x"),
        ]:
            response = await http.request(
                method, f"{origin}{url}", headers={**TUS, "Upload-Length": "1"}
            )
            assert response.status_code == 500
        response = await http.post(f"{origin}/uploads/", headers={**TUS, "Upload-Length": "1"})
        assert response.text.startswith("ERR_BASE_PATH_MISMATCH: base_path '/files/' is outside")
        assert "'/uploads'" in response.text
        assert "Location" not in response.headers
    assert list(tmp_path.iterdir()) == []
    # said once in the log, however many requests hit it
    mismatches = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(mismatches) == 1, mismatches
    assert "'/files/'" in mismatches[0].getMessage()
    assert "'/uploads'" in mismatches[0].getMessage()


async def test_a_server_root_path_is_in_upload_urls(tmp_path: Path) -> None:
    """hypercorn's ``root_path`` (a proxy removed ``/api``): ``path`` lacks it, the URLs have it."""
    app = TusApp(FileStore(tmp_path), base_path="/api/files/")
    server = serve_app(app, path="", root_path="/api")
    async with server as origin, httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        tus = TusClient(http, f"{origin}/files/")
        created = await tus.create(1)
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        assert location == f"{origin}/api/files/{upload_id_of(location)}"
        # the proxy that removes /api is not here: the upload answers where it arrives
        head = await tus.head(upload_id_of(location))
        assert head.status_code == 200


async def test_a_mount_behind_a_proxy_prefix(tmp_path: Path) -> None:
    tus = TusApp(FileStore(tmp_path), behind_proxy=True)
    app = Starlette(routes=[Mount("/uploads", app=tus)])
    async with (
        serve_app(app, path="") as origin,
        httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http,
    ):
        created = await http.post(
            f"{origin}/uploads/",
            headers={
                **TUS,
                "Upload-Length": "1",
                "X-Forwarded-Host": "up.example",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Prefix": "/app",
            },
        )
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        assert location == f"https://up.example/app/uploads/{upload_id_of(location)}"


def test_uvicorn_root_path_and_a_starlette_mount(tmp_path: Path) -> None:
    """uvicorn's ``--root-path`` puts root_path in front of ``path`` and ``raw_path`` (newer ASGI
    servers do); with a Starlette mount inside, the upload URLs carry both."""
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(EXAMPLES),
        "--host",
        "127.0.0.1",
        "--port",
        "0",  # uvicorn picks a free port and logs it
        "--root-path",
        "/api",
        "--log-level",
        "info",  # for "Uvicorn running on ..." once it listens
        "starlette_app:app",
    ]
    store = tmp_path / "store"
    log = tmp_path / "uvicorn.log"
    env = dict(subprocess_env(), ANYTUS_UPLOAD_DIR=str(store))
    with logged_process(command, log, env=env) as process:
        origin = wait_until_answering(process, log)
        # as a proxy that removed /api passes the request on
        created = httpx.post(
            f"{origin}/uploads/", headers={**TUS, "Upload-Length": "2"}, verify=CLIENT_TLS
        )
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        upload_id = upload_id_of(location)
        assert location == f"{origin}/api/uploads/{upload_id}"
        patched = httpx.patch(
            f"{origin}/uploads/{upload_id}",
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
            content=b"ok",
            verify=CLIENT_TLS,
        )
        assert patched.status_code == 204, patched.text
        assert (store / f"{upload_id}.bin").read_bytes() == b"ok"
