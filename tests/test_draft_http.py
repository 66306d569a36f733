"""The resumable-upload draft over real HTTP: ``TusApp`` in process (hypercorn, on both
backends) for every supported interop version, and ``anytus serve`` as users run it (its own server,
on asyncio and on trio) over raw sockets, where the ``104`` must be seen.

The rules themselves are tables in ``tests/test_draft_core.py``; here are the walks through them,
and everything about I/O: bodies cut short, release requests, hooks, the store shared with tus.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import subprocess
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import httpx
import pytest

from _draft_helpers import RawReader, head_bytes
from _server import (
    CLIENT_TLS,
    TUS,
    ServerProcess,
    run_server_process,
    serve_app,
    wait_for_files,
)
from anytus import FileStore, UploadInfo
from anytus._draft import VERSIONS
from anytus.asgi import HookRequest, TusApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

ALL = sorted(VERSIONS)
NEWEST = ALL[-1]
PROBLEM = "https://iana.org/assignments/http-problem-types#"


def interop(version: int) -> dict[str, str]:
    return {"Upload-Draft-Interop-Version": str(version)}


def done(version: int, value: bool) -> dict[str, str]:
    if version == 3:
        return {"Upload-Incomplete": "?0" if value else "?1"}
    return {"Upload-Complete": "?1" if value else "?0"}


def is_complete(version: int, headers: httpx.Headers | dict[str, str]) -> bool:
    if version == 3:
        return headers["upload-incomplete"] == "?0"
    return headers["upload-complete"] == "?1"


def append(version: int, offset: int, value: bool) -> dict[str, str]:
    return {
        **interop(version),
        **done(version, value),
        "Upload-Offset": str(offset),
        "Content-Type": "application/partial-upload",
    }


class Events:
    """The hooks' calls, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None, int]] = []
        self.created_from: list[HookRequest] = []

    async def on_create(self, info: UploadInfo, request: HookRequest) -> None:
        self.calls.append(("create", None, info.size or -1))
        self.created_from.append(request)

    async def on_finish(self, info: UploadInfo) -> None:
        self.calls.append(("finish", info.id, info.offset))

    async def on_terminate(self, info: UploadInfo) -> None:
        self.calls.append(("terminate", info.id, info.offset))


class Served:
    def __init__(self, http: httpx.AsyncClient, url: str, directory: Path, events: Events):
        self.http = http
        self.url = url
        self.directory = directory
        self.events = events

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.url.split("/")[2].split(":")
        return host, int(port)

    def data(self, upload_id: str) -> bytes:
        return (self.directory / f"{upload_id}.bin").read_bytes()

    def info(self, upload_id: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.directory / f"{upload_id}.info").read_bytes())
        return document


@contextlib.asynccontextmanager
async def running(directory: Path, **options: Any) -> AsyncIterator[Served]:
    events = Events()
    app = TusApp(
        FileStore(directory),
        on_create=events.on_create,
        on_finish=events.on_finish,
        on_terminate=events.on_terminate,
        **options,
    )
    async with serve_app(app) as url, httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        yield Served(http, url, directory, events)
    if directory.exists():
        leftovers = [p.name for p in directory.iterdir() if p.suffix in (".lock", ".stop")]
        assert leftovers == [], leftovers


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Served]:
    async with running(tmp_path / "store", max_size=1000, expire_after=3600) as served:
        yield served


def id_of(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[1]


# -- raw sockets ------------------------------------------------------------------------------------


# -- every version, in process ----------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
async def test_walk(srv: Served, version: int) -> None:
    """Create with part of the content, retrieve the offset, append, complete, cancel another."""
    h = interop(version)
    created = await srv.http.post(srv.url, headers={**h, **done(version, False)}, content=b"hello")
    assert created.status_code == 201
    assert created.headers["upload-draft-interop-version"] == str(version)
    assert "tus-resumable" not in created.headers
    assert not is_complete(version, created.headers)
    assert created.headers["upload-offset"] == "5"
    location = created.headers["location"]
    upload_id = id_of(location)

    head = await srv.http.head(location, headers=h)
    assert head.status_code == 204
    assert head.headers["upload-offset"] == "5"
    assert head.headers["cache-control"] == "no-store"
    assert not is_complete(version, head.headers)
    if version >= 6:
        limit = head.headers["upload-limit"]
        assert limit.startswith("max-size=1000, ")
        assert ("max-age=" if version >= 7 else "expires=") in limit

    middle = await srv.http.patch(location, headers=append(version, 5, False), content=b" wor")
    assert middle.status_code == VERSIONS[version].append_status[0]
    assert not is_complete(version, middle.headers)
    assert middle.headers["upload-offset"] == "9"

    last = await srv.http.patch(location, headers=append(version, 9, True), content=b"ld")
    assert last.status_code == VERSIONS[version].append_status[1]
    assert is_complete(version, last.headers)
    assert srv.data(upload_id) == b"hello world"
    # an ordinary upload on disk: tusd's .info, the length declared at completion
    info = srv.info(upload_id)
    assert (info["Size"], info["SizeIsDeferred"]) == (11, False)

    head = await srv.http.head(location, headers=h)
    assert is_complete(version, head.headers)
    assert head.headers.get("upload-length") == ("11" if version >= 6 else None)
    assert "expires=" not in head.headers.get("upload-limit", "")
    assert "max-age=" not in head.headers.get("upload-limit", "")

    other = await srv.http.post(srv.url, headers={**h, **done(version, False)})
    cancelled = await srv.http.delete(other.headers["location"], headers=h)
    assert cancelled.status_code == 204
    gone = await srv.http.head(other.headers["location"], headers=h)
    assert gone.status_code == 404
    assert srv.events.calls == [
        ("create", None, -1),
        ("finish", upload_id, 11),
        ("create", None, -1),
        ("terminate", id_of(other.headers["location"]), 0),
    ]


@pytest.mark.parametrize("version", ALL)
async def test_creation_with_the_whole_content(srv: Served, version: int) -> None:
    h = {**interop(version), **done(version, True), "Content-Type": "text/plain"}
    created = await srv.http.post(srv.url, headers=h, content=b"all of it")
    assert created.status_code == 201
    assert is_complete(version, created.headers)
    upload_id = id_of(created.headers["location"])
    assert srv.data(upload_id) == b"all of it"
    assert srv.info(upload_id)["MetaData"] == {"filetype": "text/plain"}
    assert srv.events.calls == [("create", None, 9), ("finish", upload_id, 9)]


@pytest.mark.parametrize("version", ALL)
async def test_empty_complete_creation(srv: Served, version: int) -> None:
    created = await srv.http.post(srv.url, headers={**interop(version), **done(version, True)})
    assert created.status_code == 201
    assert is_complete(version, created.headers)
    assert srv.events.calls[-1] == ("finish", id_of(created.headers["location"]), 0)


@pytest.mark.parametrize("version", ALL)
async def test_chunked_completion_declares_the_length(srv: Served, version: int) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    created = await srv.http.post(srv.url, headers={**interop(version), **done(version, False)})
    location = created.headers["location"]
    last = await srv.http.patch(location, headers=append(version, 0, True), content=body())
    assert last.status_code == VERSIONS[version].append_status[1]
    info = srv.info(id_of(location))
    assert (info["Size"], info["SizeIsDeferred"]) == (6, False)


@pytest.mark.parametrize("version", ALL)
async def test_mismatching_offset(srv: Served, version: int) -> None:
    created = await srv.http.post(
        srv.url, headers={**interop(version), **done(version, False)}, content=b"abc"
    )
    location = created.headers["location"]
    refused = await srv.http.patch(location, headers=append(version, 1, False), content=b"x")
    assert refused.status_code == 409
    assert refused.headers["upload-offset"] == "3"
    if version >= 6:
        assert refused.headers["content-type"] == "application/problem+json"
        problem = refused.json()
        assert problem["type"] == PROBLEM + "mismatching-upload-offset"
        assert (problem["expected-offset"], problem["provided-offset"]) == (3, 1)
    assert srv.data(id_of(location)) == b"abc"


@pytest.mark.parametrize("version", ALL)
async def test_appending_to_a_completed_upload(srv: Served, version: int) -> None:
    created = await srv.http.post(
        srv.url, headers={**interop(version), **done(version, True)}, content=b"abc"
    )
    location = created.headers["location"]
    refused = await srv.http.patch(location, headers=append(version, 3, True), content=b"x")
    assert refused.status_code == 400
    if version >= 6:
        kind = "inconsistent-upload-length" if version >= 9 else "completed-upload"
        assert refused.json()["type"] == PROBLEM + kind
    refused = await srv.http.patch(location, headers=append(version, 3, False))
    assert refused.status_code == 400
    # a repeated empty completion is answered as the completion, and changes nothing
    again = await srv.http.patch(location, headers=append(version, 3, True))
    assert again.status_code == VERSIONS[version].append_status[1]
    assert srv.data(id_of(location)) == b"abc"
    assert [call[0] for call in srv.events.calls] == ["create", "finish"]


@pytest.mark.parametrize("version", ALL)
async def test_media_type(srv: Served, version: int) -> None:
    created = await srv.http.post(srv.url, headers={**interop(version), **done(version, False)})
    headers = {**append(version, 0, False), "Content-Type": "application/offset+octet-stream"}
    answer = await srv.http.patch(created.headers["location"], headers=headers, content=b"x")
    assert answer.status_code == (415 if version >= 6 else VERSIONS[version].append_status[0])


@pytest.mark.parametrize("version", ALL)
async def test_options(srv: Served, version: int) -> None:
    answer = await srv.http.options(srv.url, headers=interop(version))
    assert answer.status_code == 204
    if version >= 6:
        assert answer.headers["accept-patch"] == "application/partial-upload"
        assert answer.headers["upload-limit"].startswith("max-size=1000")
    assert "tus-version" not in answer.headers


# -- lengths and limits -----------------------------------------------------------------------------


async def test_content_past_the_length_is_refused_unread(srv: Served) -> None:
    h = {**interop(NEWEST), **done(NEWEST, False), "Upload-Length": "4"}
    created = await srv.http.post(srv.url, headers=h, content=b"abcdef")
    assert created.status_code == 400
    assert created.json()["type"] == PROBLEM + "inconsistent-upload-length"
    assert list(srv.directory.glob("*.bin")) == []  # nothing created: refused before on_create


async def test_chunked_content_past_the_length_keeps_what_fits(srv: Served) -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b"abc"
        yield b"def"

    h = {**interop(NEWEST), **done(NEWEST, False), "Upload-Length": "4"}
    created = await srv.http.post(srv.url, headers=h, content=body())
    assert created.status_code == 400
    assert created.json()["type"] == PROBLEM + "inconsistent-upload-length"
    upload_id = id_of(created.headers["location"])
    assert srv.data(upload_id) == b"abcd"
    # the bytes reached the length: the upload is complete on disk (see docs/draft.md)
    assert srv.events.calls[-1] == ("finish", upload_id, 4)


async def test_max_size_is_enforced(srv: Served) -> None:
    h = {**interop(NEWEST), **done(NEWEST, False), "Upload-Length": "1001"}
    refused = await srv.http.post(srv.url, headers=h)
    assert refused.status_code == 413
    assert refused.headers["upload-limit"].startswith("max-size=1000")
    h = {**interop(NEWEST), **done(NEWEST, True)}
    assert (await srv.http.post(srv.url, headers=h, content=b"x" * 1001)).status_code == 413

    async def body() -> AsyncIterator[bytes]:
        for _ in range(11):
            yield b"x" * 100

    created = await srv.http.post(srv.url, headers={**interop(NEWEST), **done(NEWEST, False)})
    location = created.headers["location"]
    refused = await srv.http.patch(location, headers=append(NEWEST, 0, False), content=body())
    assert refused.status_code == 413
    assert "max-size=1000" in refused.headers["upload-limit"]
    assert len(srv.data(id_of(location))) == 1000


async def test_upload_length_then_completion_must_agree(srv: Served) -> None:
    h = {**interop(NEWEST), **done(NEWEST, False), "Upload-Length": "6"}
    created = await srv.http.post(srv.url, headers=h, content=b"abc")
    location = created.headers["location"]
    # completing with 2 bytes would make the length 5, not 6
    refused = await srv.http.patch(location, headers=append(NEWEST, 3, True), content=b"de")
    assert refused.status_code == 400
    assert refused.json()["type"] == PROBLEM + "inconsistent-upload-length"
    head = await srv.http.head(location, headers=interop(NEWEST))
    assert head.headers["upload-length"] == "6"
    assert head.headers["upload-offset"] == "3"


async def test_expired_upload(tmp_path: Path) -> None:
    now = [time.time()]
    async with running(tmp_path / "s", expire_after=60, clock=lambda: now[0]) as srv:
        created = await srv.http.post(srv.url, headers={**interop(NEWEST), **done(NEWEST, False)})
        location = created.headers["location"]
        # the lifetime counts from the upload's last write, the data file's mtime, which the
        # file system stamps from a coarser clock than time.time(): up to a tick before now[0]
        bin_file = srv.directory / f"{location.rsplit('/', 1)[1]}.bin"
        remaining = math.floor(bin_file.stat().st_mtime + 60 - now[0])
        assert remaining in (59, 60)
        assert created.headers["upload-limit"] == f"max-age={remaining}"
        now[0] += 61
        answer = await srv.http.patch(location, headers=append(NEWEST, 0, False), content=b"x")
        assert answer.status_code == 410
        assert (await srv.http.head(location, headers=interop(NEWEST))).status_code == 404


# -- interruption -----------------------------------------------------------------------------------


async def cut_creation(srv: Served) -> str:
    """A creation with 100 bytes of content whose connection is cut after 40; its upload ID,
    once the 40 bytes are stored."""
    host, port = srv.address
    h = {**interop(NEWEST), **done(NEWEST, True), "Content-Length": "100"}
    async with await anyio.connect_tcp(host, port) as stream:
        await stream.send(head_bytes("POST", "/files/", f"{host}:{port}", h) + b"x" * 40)
        assert await wait_for_files(srv.directory, lambda: any(srv.directory.glob("*.bin")))
    (bin_file,) = srv.directory.glob("*.bin")
    assert await wait_for_files(srv.directory, lambda: bin_file.stat().st_size == 40)
    return bin_file.stem


async def test_cut_creation_keeps_every_byte(srv: Served) -> None:
    upload_id = await cut_creation(srv)
    head = await srv.http.head(f"{srv.url}{upload_id}", headers=interop(NEWEST))
    assert head.headers["upload-offset"] == "40"
    assert head.headers["upload-complete"] == "?0"
    # resumed: the length was recorded from Upload-Complete: ?1 and Content-Length
    assert head.headers["upload-length"] == "100"
    last = await srv.http.patch(
        f"{srv.url}{upload_id}", headers=append(NEWEST, 40, True), content=b"y" * 60
    )
    assert last.status_code == 200
    assert srv.data(upload_id) == b"x" * 40 + b"y" * 60


async def test_cut_content_is_logged_as_interrupted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # as a tus PATCH cut short is: one line, with what was stored
    caplog.set_level(logging.INFO, logger="anytus.asgi")
    async with running(tmp_path / "s") as srv:
        upload_id = await cut_creation(srv)
    # the server has stopped: the request is over
    lines = [r.getMessage() for r in caplog.records if r.name == "anytus.asgi"]
    interrupted = [line for line in lines if "interrupted" in line]
    assert interrupted == [
        f"upload {upload_id} interrupted (at 40 of 100 bytes, the client disconnected)"
    ]


async def test_offset_retrieval_stops_a_running_append(tmp_path: Path) -> None:
    """The draft's concurrency rule: a new request on the upload ends the running one, which
    keeps what it stored (tus's release request)."""
    async with running(tmp_path / "s") as srv:
        await _stop_a_running_append(srv)


async def _stop_a_running_append(srv: Served) -> None:
    created = await srv.http.post(srv.url, headers={**interop(NEWEST), **done(NEWEST, False)})
    location = created.headers["location"]
    upload_id = id_of(location)
    host, port = srv.address
    h = {**append(NEWEST, 0, True), "Content-Length": str(200_000)}
    async with await anyio.connect_tcp(host, port) as stream:
        reader = RawReader(stream)
        await stream.send(head_bytes("PATCH", f"/files/{upload_id}", f"{host}:{port}", h))
        await stream.send(b"z" * 100_000)
        # the append holds the upload's lock (tusd's lock file) while it streams
        assert await wait_for_files(
            srv.directory, lambda: (srv.directory / f"{upload_id}.lock").exists()
        )
        head = await srv.http.head(location, headers=interop(NEWEST))
        status, _, body = await reader.response()
        assert status == 400
        assert json.loads(body)["code"] == "ERR_UPLOAD_INTERRUPTED"
    # the offset retrieved is what was stored: no outdated information
    offset = int(head.headers["upload-offset"])
    assert srv.data(upload_id) == b"z" * offset
    assert head.headers["upload-complete"] == "?0"
    # and the client resumes from it
    rest = b"z" * (200_000 - offset)
    last = await srv.http.patch(location, headers=append(NEWEST, offset, True), content=rest)
    assert last.status_code == 200
    assert srv.data(upload_id) == b"z" * 200_000


# -- shared with tus --------------------------------------------------------------------------------


async def test_tus_and_the_draft_share_uploads(srv: Served) -> None:
    created = await srv.http.post(
        srv.url, headers={**interop(NEWEST), **done(NEWEST, False), "Upload-Length": "6"},
        content=b"abc",
    )  # fmt: skip
    location = created.headers["location"]
    # a tus client resumes the draft's upload
    head = await srv.http.head(location, headers=TUS)
    assert (head.headers["upload-offset"], head.headers["upload-length"]) == ("3", "6")
    patch = await srv.http.patch(
        location,
        headers={**TUS, "Upload-Offset": "3", "Content-Type": "application/offset+octet-stream"},
        content=b"def",
    )
    assert patch.status_code == 204
    head = await srv.http.head(location, headers=interop(NEWEST))
    assert head.headers["upload-complete"] == "?1"


async def test_tus_requests_are_unchanged(srv: Served) -> None:
    options = await srv.http.options(srv.url)
    assert options.status_code == 200
    assert options.headers["tus-version"] == "1.0.0"
    assert "upload-draft-interop-version" not in options.headers
    # a version this server does not speak is not a draft request: tus answers (412)
    refused = await srv.http.post(srv.url, headers={**interop(2), **done(4, True)})
    assert refused.status_code == 412


async def test_draft_off(tmp_path: Path) -> None:
    async with running(tmp_path / "s", draft=False) as srv:
        refused = await srv.http.post(srv.url, headers={**interop(NEWEST), **done(NEWEST, True)})
        assert refused.status_code == 412
        assert "upload-draft-interop-version" not in refused.headers


async def test_hook_sees_the_creation_request(srv: Served) -> None:
    h = {**interop(NEWEST), **done(NEWEST, False), "X-Who": "me"}
    await srv.http.post(srv.url, headers=h)
    (request,) = srv.events.created_from
    assert request.method == "POST"
    assert request.headers["x-who"] == "me"


# -- anytus serve: the 104 where the server can send it --------------------------------------------


@pytest.fixture(scope="module", params=["asyncio", "trio"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ServerProcess, str]]:
    backend: str = request.param
    with run_server_process(
        tmp_path_factory.mktemp("draft"), "--backend", backend, "--max-size", "1000"
    ) as process:
        yield process, backend


async def raw_creation(
    process: ServerProcess, headers: dict[str, str], body: bytes
) -> list[tuple[int, dict[str, str], bytes]]:
    host = process.origin.split("//")[1]
    async with await anyio.connect_tcp("127.0.0.1", process.port) as stream:
        reader = RawReader(stream)
        await stream.send(head_bytes("POST", "/files/", host, headers))
        if headers.get("Expect") == "100-continue":
            first = await reader.response()
            assert first[0] == 100
            # "the server MUST NOT omit the 100 (Continue) response because it has sent" a 104
            found = [first]
            await stream.send(body)
            found += await reader.responses()
            return found
        await stream.send(body)
        return await reader.responses()


@pytest.mark.parametrize("version", ALL)
async def test_interim_response(served: tuple[ServerProcess, str], version: int) -> None:
    process, _ = served
    headers = {**interop(version), **done(version, False), "Content-Length": "5"}
    answers = await raw_creation(process, headers, b"hello")
    *interims, (status, final, _) = answers
    assert status == 201
    # anytus's server offers http.response.informational (on both backends): the 104 goes first
    ((code, interim, _),) = interims
    assert code == 104
    assert interim["location"] == final["location"]
    assert interim["upload-draft-interop-version"] == str(version)
    assert interim.get("upload-limit") == ("max-size=1000" if version >= 6 else None)


async def test_interim_response_after_100_continue(served: tuple[ServerProcess, str]) -> None:
    process, _ = served
    headers = {**interop(NEWEST), **done(NEWEST, True), "Content-Length": "5",
               "Expect": "100-continue"}  # fmt: skip
    answers = await raw_creation(process, headers, b"hello")
    statuses = [status for status, _, _ in answers]
    assert statuses == [100, 104, 201]


def test_serve_no_draft(tmp_path: Path) -> None:
    with run_server_process(tmp_path, "--no-draft") as process:
        answer = httpx.post(
            process.url, headers={**interop(NEWEST), **done(NEWEST, True)}, verify=CLIENT_TLS
        )
        assert answer.status_code == 412


def test_readme_curl_example(tmp_path: Path) -> None:
    """The README's curl example for the newest interop version, as written, against a server."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("<!-- draft-curl -->")
    block = readme[start:].split("```sh\n", 1)[1].split("```", 1)[0]
    assert f"Upload-Draft-Interop-Version: {NEWEST}" in block
    store = tmp_path / "uploads"
    with run_server_process(store, "--backend", "trio") as process:
        # the README's server listens on the default port; this one on a free one
        block = block.replace("http://127.0.0.1:1080", process.origin)
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block],
            capture_output=True, text=True, timeout=60, check=False, cwd=tmp_path,
        )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "HTTP/1.1 104 Upload Resumption Supported" in result.stdout
    assert "upload-complete: ?1" in result.stdout.lower()
    (data,) = store.glob("*.bin")
    assert data.read_bytes() == b"hello world"


async def test_serve_walk(served: tuple[ServerProcess, str]) -> None:
    """The newest version's walk through ``anytus serve`` as users run it, on either server."""
    process, _ = served
    h = interop(NEWEST)
    async with httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        created = await http.post(process.url, headers={**h, **done(NEWEST, False)}, content=b"ab")
        assert created.status_code == 201
        location = created.headers["location"]
        head = await http.head(location, headers=h)
        assert (head.status_code, head.headers["upload-offset"]) == (204, "2")
        last = await http.patch(location, headers=append(NEWEST, 2, True), content=b"cd")
        assert (last.status_code, last.headers["upload-complete"]) == (200, "?1")
        too_big = await http.patch(location, headers=append(NEWEST, 4, True), content=b"e")
        assert too_big.status_code == 400
        assert (await http.delete(location, headers=h)).status_code == 204
    upload_id = id_of(location)
    assert not (process.directory / f"{upload_id}.info").exists()


# -- the h11 server's interim responses, in process -------------------------------------------------


@contextlib.asynccontextmanager
async def h11_serving(app: Any) -> AsyncIterator[tuple[str, int]]:
    import socket

    from anytus._httpserver import serve

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    port = sock.getsockname()[1]
    stop = anyio.Event()
    started = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: serve(app, sock, shutdown_trigger=stop.wait, ready=started.set))
        await started.wait()
        try:
            yield "127.0.0.1", port
        finally:
            stop.set()


async def _exchange(port: int, request: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    async with await anyio.connect_tcp("127.0.0.1", port) as stream:
        await stream.send(request)
        return await RawReader(stream).responses()


async def test_h11_informational_before_the_response() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        assert "http.response.informational" in scope["extensions"]
        await send({"type": "http.response.informational", "status": 103,
                    "headers": [(b"link", b"</a>; rel=preload")]})  # fmt: skip
        await send({"type": "http.response.start", "status": 200, "headers": []})
        # once the response started, an interim response is dropped
        await send({"type": "http.response.informational", "status": 104, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async with h11_serving(app) as (_, port):
        answers = await _exchange(port, head_bytes("GET", "/", "x", {}))
    assert [(status, body) for status, _, body in answers] == [(103, b""), (200, b"ok")]
    assert answers[0][1]["link"] == "</a>; rel=preload"


@pytest.mark.parametrize("status", [99, 101, 200])
async def test_h11_informational_refuses_other_statuses(status: int) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            await send({"type": "http.response.informational", "status": status, "headers": []})

    async with h11_serving(app) as (_, port):
        answers = await _exchange(port, head_bytes("GET", "/", "x", {}))
    assert [status for status, _, _ in answers] == [500]


@pytest.mark.parametrize("version", [3, NEWEST])
async def test_tusapp_sends_104_over_the_h11_server(tmp_path: Path, version: int) -> None:
    app = TusApp(FileStore(tmp_path), max_size=1000)
    async with h11_serving(app) as (host, port):
        headers = {**interop(version), **done(version, True), "Content-Length": "3"}
        answers = await _exchange(
            port, head_bytes("POST", "/files/", f"{host}:{port}", headers) + b"abc"
        )
    (code, interim, _), (status, final, _) = answers
    assert (code, status) == (104, 201)
    assert interim["location"] == final["location"]
    assert interim["upload-draft-interop-version"] == str(version)
    assert ("upload-limit" in interim) is (version >= 6)


# -- hooks and downloads ----------------------------------------------------------------------------


async def test_rejected_creation_is_problem_details(tmp_path: Path) -> None:
    from anytus import HookRejected

    async def on_create(info: UploadInfo, request: HookRequest) -> None:
        raise HookRejected(401, "log in first")

    app = TusApp(FileStore(tmp_path), on_create=on_create)
    async with serve_app(app) as url, httpx.AsyncClient(verify=CLIENT_TLS) as http:
        refused = await http.post(url, headers={**interop(NEWEST), **done(NEWEST, True)})
    assert refused.status_code == 401
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json() == {
        "type": "about:blank",
        "title": "Unauthorized",
        "status": 401,
        "detail": "log in first",
        "code": "ERR_REJECTED_BY_HOOK",
    }
    assert list(tmp_path.iterdir()) == []


async def test_download_of_a_draft_upload(srv: Served) -> None:
    h = {**interop(NEWEST), **done(NEWEST, True), "Content-Type": "text/plain"}
    created = await srv.http.post(srv.url, headers=h, content=b"hello")
    got = await srv.http.get(created.headers["location"], headers=interop(NEWEST))
    assert (got.status_code, got.content) == (200, b"hello")
    assert got.headers["content-type"].startswith("text/plain")
