"""The upload page on ``/`` of ``anytus serve``, driven in headless Chromium (Debian's ``chromium``,
installed by ``.ci/run``) with Playwright's sync API: uploads land byte-exact, pause and resume
work, and a reload mid-upload resumes from the server's offset when the same file is picked again.

Chromium runs the page's own tus client against a real ``anytus serve`` subprocess. To stop an
upload at a known offset, a Playwright route holds back one PATCH before it leaves the browser (the
server never sees it); everything else goes over the network untouched.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import pytest
from playwright.sync_api import Browser, Error, Page, Request, Response, Route, sync_playwright

from _server import CLIENT_TLS, TUS, ServerProcess, run_server_process, serve_app
from anytus import MemoryStore
from anytus._page import CONTENT_SECURITY_POLICY, PageApp, load_page
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CHUNK = 256 * 1024
#: how long the page may take for a few MiB on 127.0.0.1 (ms; it takes well under a second)
UPLOAD_TIMEOUT = 30_000

#: every row settled: done, or failed for good
_SETTLED = """
    n => {
        const rows = [...document.querySelectorAll('#uploads li')];
        return rows.some(li => li.dataset.state === 'error')
            || (rows.length === n && rows.every(li => li.dataset.state === 'done'));
    }
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    # never a browser download: Debian's chromium, which .ci/run installs
    assert os.access(CHROMIUM, os.X_OK), f"{CHROMIUM} is missing: apt-get install chromium"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()  # its own, empty localStorage
    try:
        yield context.new_page()
    finally:
        context.close()


def open_page(page: Page, server: ServerProcess, query: str = "") -> list[str]:
    """Load the upload page; return the list that collects the page's console errors."""
    errors: list[str] = []
    page.on(
        "console",
        lambda message: errors.append(message.text) if message.type == "error" else None,
    )
    page.goto(f"{server.origin}/{query}")
    page.wait_for_selector("body[data-ready=true]", state="attached")
    return errors


def wait_settled(page: Page, count: int) -> list[dict[str, str]]:
    """Wait until *count* rows are done (or one failed); return every row's data attributes."""
    page.wait_for_function(_SETTLED, arg=count, timeout=UPLOAD_TIMEOUT)
    rows: list[dict[str, str]] = page.eval_on_selector_all(
        "#uploads li", "rows => rows.map(li => ({...li.dataset, status: li.innerText}))"
    )
    return rows


def stored(server: ServerProcess, url: str) -> tuple[bytes, dict[str, str]]:
    """The bytes and the metadata the server stored for the upload at *url*."""
    upload_id = url.rstrip("/").rsplit("/", 1)[1]
    info = json.loads((server.directory / f"{upload_id}.info").read_text())
    return (server.directory / f"{upload_id}.bin").read_bytes(), info["MetaData"]


def server_offset(url: str) -> int:
    response = httpx.head(url, headers=TUS, verify=CLIENT_TLS)
    assert response.status_code == 200, response.status_code
    return int(response.headers["Upload-Offset"])


def hold_patches_from(page: Page, number: int) -> list[Route]:
    """Let the first *number* - 1 PATCHes through; hold back the later ones (returned list)."""
    held: list[Route] = []
    seen = 0

    def handle(route: Route, request: Request) -> None:
        nonlocal seen
        if request.method != "PATCH":
            route.continue_()
            return
        seen += 1
        if seen < number:
            route.continue_()
        else:
            held.append(route)  # never answered: the page aborts it (pause, reload)

    page.route("**/*", handle)
    return held


def wait_held(page: Page, held: list[Route], timeout: float = 10.0) -> None:
    """Let Playwright dispatch events until a request is held back (its handler runs on the
    Python side, only while a Playwright call waits)."""
    deadline = time.monotonic() + timeout
    while not held:
        assert time.monotonic() < deadline, "no request was held back"
        page.wait_for_timeout(10)


def release(page: Page, held: list[Route]) -> None:
    """Stop intercepting; settle the held requests (the page has aborted them already)."""
    for route in held:
        with contextlib.suppress(Error):
            route.abort()
    page.unroute_all(behavior="ignoreErrors")


def make_file(directory: Path, name: str, size: int) -> tuple[Path, bytes]:
    data = os.urandom(size)
    path = directory / name
    path.write_bytes(data)
    return path, data


# -- in-process: the wrapper's routing ------------------------------------------------------------


async def test_page_and_assets_beside_an_endpoint_at_root() -> None:
    """With base path ``/`` the page's paths still answer the page, and uploads still work."""
    page = await anyio.to_thread.run_sync(load_page, "/")
    app = PageApp(TusApp(MemoryStore(), base_path="/"), page)
    async with serve_app(app, path="/") as url, httpx.AsyncClient(verify=CLIENT_TLS) as client:
        response = await client.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert '<meta name="tus-endpoint" content="./">' in response.text

        head = await client.head(f"{url}anytus-page.js")
        assert head.status_code == 200
        assert head.headers["content-type"] == "text/javascript; charset=utf-8"
        assert int(head.headers["content-length"]) == len(page.files["/anytus-page.js"].body)
        assert head.content == b""

        created = await client.post(url, headers={**TUS, "Upload-Length": "3"})
        assert created.status_code == 201
        location = created.headers["Location"]
        patched = await client.patch(
            location,
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
            content=b"abc",
        )
        assert patched.status_code == 204
        assert (await client.get(location)).content == b"abc"
        # not the page's: the tus app answers
        assert (await client.post(f"{url}anytus-page.js")).status_code == 404


def test_page_has_no_external_urls() -> None:
    page = load_page("/files/")
    assert set(page.files) == {"/", "/anytus-page.js", "/anytus-page.css"}
    for path, asset in page.files.items():
        text = asset.body.decode()
        # no scheme-qualified or protocol-relative URL anywhere (a comment included)
        assert not re.search(r"(?i)(?:https?:|wss?:|ftp:)?//[a-z0-9.-]+\.[a-z]", text), path
        assert "@import" not in text, path
    index = page.files["/"].body.decode()
    # the page loads its script and style from its own origin, relative to itself
    assert re.findall(r'(?:src|href)="([^"]*)"', index) == ["anytus-page.css", "anytus-page.js"]
    assert "<script>" not in index  # nothing the CSP would block
    assert "style=" not in index


# -- anytus serve ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_no_page_answers_404_and_head_answers_the_headers(tmp_path: Path) -> None:
    with run_server_process(tmp_path / "uploads", "--no-page") as server:
        assert httpx.get(f"{server.origin}/", verify=CLIENT_TLS).status_code == 404
        assert httpx.get(f"{server.origin}/anytus-page.js", verify=CLIENT_TLS).status_code == 404
    with run_server_process(tmp_path / "uploads", "--backend", "trio") as server:
        response = httpx.get(f"{server.origin}/", verify=CLIENT_TLS)
        assert response.status_code == 200
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert 'content="files/"' in response.text
        head = httpx.head(f"{server.origin}/", verify=CLIENT_TLS)
        assert head.status_code == 200
        assert head.headers["content-length"] == str(len(response.content))
        assert head.content == b""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "base_path"),
    [("asyncio", "/files/"), ("trio", "/up/load/")],
    ids=["asyncio-files", "trio-other-base-path"],
)
def test_page_uploads_files_byte_exact(
    page: Page, tmp_path: Path, backend: str, base_path: str
) -> None:
    big, big_data = make_file(tmp_path, "große datei.bin", 3 * 1024 * 1024 + 7)
    small, small_data = make_file(tmp_path, "hello.txt", 11)
    with run_server_process(
        tmp_path / "uploads", "--backend", backend, "--base-path", base_path
    ) as server:
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        errors = open_page(page, server)
        assert page.inner_text("#endpoint") == f"{server.origin}{base_path}"

        page.set_input_files("#files", [big, small])
        rows = wait_settled(page, 2)

        assert [row["state"] for row in rows] == ["done", "done"], rows
        for row, (path, data, filetype) in zip(
            rows,
            [(big, big_data, "application/octet-stream"), (small, small_data, "text/plain")],
            strict=True,
        ):
            assert row["url"].startswith(f"{server.origin}{base_path}")
            content, metadata = stored(server, row["url"])
            assert content == data
            assert metadata == {"filename": path.name, "filetype": filetype}
            assert row["offset"] == str(len(data))
        # a file dropped on the page, built in the page: 64 KiB + 1 of bytes 0..255 over and over
        dropped = bytes(range(256)) * 256 + b"\x00"
        page.dispatch_event(
            "#drop",
            "drop",
            {
                "dataTransfer": page.evaluate_handle(
                    """() => {
                        const bytes = new Uint8Array(65537).map((_, i) => i % 256);
                        const transfer = new DataTransfer();
                        transfer.items.add(new File([bytes], "dropped.dat"));
                        return transfer;
                    }"""
                )
            },
        )
        row = wait_settled(page, 3)[2]
        assert row["state"] == "done", row
        assert stored(server, row["url"]) == (dropped, {"filename": "dropped.dat"})

        # a finished upload is forgotten: picking the file again uploads it anew
        assert page.evaluate("localStorage.length") == 0
        # the page talked to its own server only, and nothing it did was refused
        assert all(url.startswith(f"{server.origin}/") for url in requests), requests
        # (Chromium asks for /favicon.ico by itself; that 404 is the only complaint)
        assert [e for e in errors if "404" not in e] == [], errors


@pytest.mark.slow
def test_refused_upload_says_why(page: Page, tmp_path: Path) -> None:
    path, _ = make_file(tmp_path, "too big.bin", 2000)
    with run_server_process(tmp_path / "uploads", "--max-size", "1000") as server:
        open_page(page, server)
        page.set_input_files("#files", path)
        (row,) = wait_settled(page, 1)
        # a 4xx is final: no retries, the server's reason on the row, and a button to try again
        assert row["state"] == "error", row
        assert "POST answered 413: ERR_MAX_SIZE_EXCEEDED" in row["status"], row
        assert page.inner_text("#uploads li button.toggle") == "Resume"
        assert list(server.directory.glob("*.bin")) == []


@pytest.mark.slow
def test_pause_and_resume(page: Page, tmp_path: Path) -> None:
    path, data = make_file(tmp_path, "paused.bin", 8 * CHUNK + 3)
    with run_server_process(tmp_path / "uploads") as server:
        open_page(page, server, f"?chunk_size={CHUNK}")
        held = hold_patches_from(page, 2)
        page.set_input_files("#files", path)
        # the first PATCH is through, the second is held: the upload is mid-way
        page.wait_for_selector(f"#uploads li[data-offset='{CHUNK}']", state="attached")
        wait_held(page, held)
        page.click("#uploads li button.toggle")
        page.wait_for_selector("#uploads li[data-state=paused]", state="attached")
        release(page, held)
        url = page.get_attribute("#uploads li", "data-url")
        assert url is not None
        assert server_offset(url) == CHUNK

        assert page.inner_text("#uploads li button.toggle") == "Resume"
        page.click("#uploads li button.toggle")
        (row,) = wait_settled(page, 1)
        assert row["state"] == "done", row
        assert row["resumedFrom"] == str(CHUNK)  # it asked the server (HEAD) and went on
        assert stored(server, url)[0] == data
        assert len(list(server.directory.glob("*.bin"))) == 1


@pytest.mark.slow
def test_resume_after_reload(page: Page, tmp_path: Path) -> None:
    path, data = make_file(tmp_path, "reloaded.bin", 12 * CHUNK + 5)
    with run_server_process(tmp_path / "uploads") as server:
        open_page(page, server, f"?chunk_size={CHUNK}")
        held = hold_patches_from(page, 3)
        page.set_input_files("#files", path)
        page.wait_for_selector(f"#uploads li[data-offset='{2 * CHUNK}']", state="attached")
        wait_held(page, held)
        url = page.get_attribute("#uploads li", "data-url")
        assert url is not None

        # the user reloads the page while the third PATCH is on its way
        page.reload()
        page.wait_for_selector("body[data-ready=true]", state="attached")
        release(page, held)
        assert page.query_selector_all("#uploads li") == []
        offset = server_offset(url)
        assert offset == 2 * CHUNK

        heads: list[str | None] = []
        methods: list[str] = []

        def on_response(response: Response) -> None:
            methods.append(response.request.method)
            if response.request.method == "HEAD":
                heads.append(response.headers.get("upload-offset"))

        page.on("response", on_response)
        page.set_input_files("#files", path)  # the same file, picked again
        (row,) = wait_settled(page, 1)

        assert row["state"] == "done", row
        assert row["url"] == url  # the same upload, not a new one
        assert heads == [str(offset)]  # the server's offset when it resumed: > 0
        assert int(row["resumedFrom"]) == offset > 0
        assert "POST" not in methods
        assert methods.count("PATCH") == 11  # only the rest was sent
        assert stored(server, url)[0] == data
        assert len(list(server.directory.glob("*.bin"))) == 1
