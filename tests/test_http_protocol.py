"""The tus 1.0.0 protocol end to end: real HTTP to :class:`anytus.asgi.TusApp` served by hypercorn.

Every test runs on asyncio and on trio (hypercorn's worker for the running backend, in the test's
own event loop), against a real :class:`~anytus.FileStore` in ``tmp_path``. Assertions look at the
HTTP responses *and* at the files on disk, because "the request changed nothing" is a statement
about the store, not about a status code.

The header rules themselves (every status and error code for every malformed header) are tables in
``tests/test_core.py``, with no server; here each verb and area keeps an end-to-end test, a few
error paths, and everything that is about I/O: bodies, disconnects, early answers, draining, locks,
release requests, idle timeouts, concatenation, downloads, CORS and hooks.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email.utils
import hashlib
import json
import os
import re
import socket
import struct
import sys
import time
import zlib
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from _helpers import stored_names
from _server import (
    CLIENT_TLS,
    OFFSET_CONTENT_TYPE,
    TUS,
    TusClient,
    decode_metadata,
    race_to_completion,
    raw_request,
    read_raw_response,
    serve_app,
    subprocess_env,
    upload_id_of,
    wait_for,
    wait_for_files,
)
from anytus import FileStore, HookRejected, UploadInfo
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Mapping
    from pathlib import Path

BASE_EXTENSIONS = {
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "concatenation",
    "checksum",
}
CHECKSUM_ALGORITHMS = {"sha1", "md5", "sha256", "sha512", "crc32"}
ERROR_BODY = re.compile(r"ERR_[A-Z_]+: [^\n]*\n")


@dataclasses.dataclass
class Served:
    """One TusApp on a FileStore, served over real HTTP, plus a client for it."""

    tus: TusClient
    store: FileStore
    app: TusApp
    directory: Path

    @property
    def http(self) -> httpx.AsyncClient:
        return self.tus.http

    @property
    def url(self) -> str:
        return self.tus.url

    @property
    def host(self) -> str:
        return self.url.split("/")[2]

    def bin(self, upload_id: str) -> Path:
        return self.directory / f"{upload_id}.bin"

    def data(self, upload_id: str) -> bytes:
        return self.bin(upload_id).read_bytes()

    def info(self, upload_id: str) -> dict[str, Any]:
        document: dict[str, Any] = json.loads((self.directory / f"{upload_id}.info").read_bytes())
        return document

    def files(self) -> set[str]:
        """Names in the store directory, ignoring lock files (they come and go with requests);
        none before the store has made its directory (it does so on first use)."""
        if not self.directory.exists():
            return set()
        return {
            name for name in stored_names(self.directory) if not name.endswith((".lock", ".stop"))
        }

    def uploads(self) -> set[str]:
        return {p.stem for p in self.directory.glob("*.info")}

    async def connect(self) -> anyio.abc.SocketStream:
        host, port = self.host.split(":")
        return await anyio.connect_tcp(host, int(port))


@contextlib.asynccontextmanager
async def running(directory: Path, **app_options: Any) -> AsyncIterator[Served]:
    store = FileStore(directory)
    app = TusApp(store, **app_options)
    async with serve_app(app) as url, httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        yield Served(tus=TusClient(http, url), store=store, app=app, directory=directory)
    # every request released its lock, whatever happened to it
    if directory.exists():
        leftovers = [p.name for p in directory.iterdir() if p.suffix in (".lock", ".stop")]
        assert leftovers == [], leftovers


@pytest.fixture
async def srv(tmp_path: Path) -> AsyncIterator[Served]:
    async with running(tmp_path / "store") as served:
        yield served


def extensions(response: httpx.Response) -> set[str]:
    return {e.strip() for e in response.headers["Tus-Extension"].split(",")}


def comma_set(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",") if item.strip()}


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """A tus error answer: status, ``Tus-Resumable``, and the ``ERR_CODE: message`` body."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers.get("Tus-Resumable") == "1.0.0"
    if response.request.method != "HEAD":
        assert ERROR_BODY.fullmatch(response.text), response.text
        if code is not None:
            assert response.text.startswith(f"{code}: "), response.text


# ---------------------------------------------------------------------------------------------------
# discovery and versions


class TestDiscovery:
    async def test_options_advertises_the_protocol(self, srv: Served) -> None:
        response = await srv.http.options(srv.url)
        assert response.status_code == 200
        assert response.headers["Tus-Version"] == "1.0.0"
        assert extensions(response) == BASE_EXTENSIONS  # no expiration: expire_after is not set
        assert comma_set(response.headers["Tus-Checksum-Algorithm"]) == CHECKSUM_ALGORITHMS
        assert "Tus-Max-Size" not in response.headers


class TestVersion:
    async def test_unsupported_version_is_refused_and_changes_nothing(self, srv: Served) -> None:
        # every version and request is in test_core's table; this one goes through real HTTP
        upload_id = await srv.tus.new(10)
        assert (await srv.tus.patch(upload_id, 0, b"hello")).status_code == 204
        before = srv.files()
        headers = {"Tus-Resumable": "0.2.2"}
        patch_headers = {
            **headers,
            "Upload-Offset": "5",
            "Content-Type": OFFSET_CONTENT_TYPE,
        }

        responses = [
            await srv.http.post(srv.url, headers={**headers, "Upload-Length": "3"}),
            await srv.http.post(
                srv.url,
                headers={**headers, "Upload-Length": "3", "Content-Type": OFFSET_CONTENT_TYPE},
                content=b"abc",
            ),
            await srv.http.patch(
                srv.tus.upload_url(upload_id), headers=patch_headers, content=b"!"
            ),
            await srv.http.head(srv.tus.upload_url(upload_id), headers=headers),
            await srv.http.delete(srv.tus.upload_url(upload_id), headers=headers),
        ]

        for response in responses:
            assert_error(response, 412, "ERR_UNSUPPORTED_VERSION")
            assert response.headers["Tus-Version"] == "1.0.0"
        assert srv.files() == before
        assert srv.data(upload_id) == b"hello"
        assert await srv.tus.offset(upload_id) == 5

    async def test_every_response_carries_tus_resumable(self, srv: Served) -> None:
        upload_id = await srv.tus.new(4)
        missing = srv.tus.upload_url("0" * 32)
        responses = [
            await srv.tus.create(4),  # 201
            await srv.tus.patch(upload_id, 0, b"ab"),  # 204
            await srv.tus.patch(upload_id, 0, b"ab"),  # 409
            await srv.tus.head(upload_id),  # 200
            await srv.http.head(missing, headers=TUS),  # 404
            await srv.http.patch(missing, headers=TUS),  # 404 / 415
            await srv.http.post(srv.url, headers=TUS),  # 400
            await srv.http.get(srv.tus.upload_url(upload_id)),  # GET
            await srv.http.delete(srv.tus.upload_url(upload_id), headers=TUS),  # 204
        ]
        for response in responses:
            assert response.headers.get("Tus-Resumable") == "1.0.0", (
                response.request.method,
                response.status_code,
            )


# ---------------------------------------------------------------------------------------------------
# creation


class TestCreation:
    async def test_create(self, srv: Served) -> None:
        response = await srv.tus.create(100, metadata={"filename": b"a.txt"})

        assert response.status_code == 201
        location = response.headers["Location"]
        assert re.fullmatch(re.escape(srv.url) + r"[0-9a-f]{32}", location), location
        upload_id = upload_id_of(location)
        assert srv.files() == {f"{upload_id}.bin", f"{upload_id}.info"}
        assert srv.data(upload_id) == b""
        info = srv.info(upload_id)
        assert info["ID"] == upload_id
        assert info["Size"] == 100
        assert info["SizeIsDeferred"] is False
        assert info["MetaData"] == {"filename": "a.txt"}
        assert await srv.tus.offset(upload_id) == 0

    async def test_location_is_built_from_the_host_header(self, srv: Served) -> None:
        response = await srv.tus.create(1, headers={"Host": "uploads.example:8443"})
        assert response.status_code == 201
        assert re.fullmatch(
            r"http://uploads\.example:8443/files/[0-9a-f]{32}", response.headers["Location"]
        ), response.headers["Location"]

    async def test_zero_length_upload_is_complete_at_once(self, srv: Served) -> None:
        upload_id = await srv.tus.new(0)
        head = await srv.tus.head(upload_id)
        assert head.headers["Upload-Offset"] == "0"
        assert head.headers["Upload-Length"] == "0"
        download = await srv.http.get(srv.tus.upload_url(upload_id))
        # a download of an empty file is still a file: 200, not tusd's 204
        assert download.status_code == 200
        assert download.headers["Content-Length"] == "0"
        assert download.content == b""

    async def test_deferred_length(self, srv: Served) -> None:
        upload_id = await srv.tus.new(None)
        head = await srv.tus.head(upload_id)
        assert head.headers["Upload-Defer-Length"] == "1"
        assert "Upload-Length" not in head.headers
        assert head.headers["Upload-Offset"] == "0"
        assert srv.info(upload_id)["SizeIsDeferred"] is True

    async def test_metadata_is_echoed_byte_for_byte(self, srv: Served) -> None:
        metadata: dict[str, bytes | None] = {
            "filename": "résumé.txt".encode(),
            "filetype": b"text/plain",
            "novalue": None,
            "emptyvalue": b"",
            "binary": b"\xff\xfe\x00\x01 ,;=\r\n\x80",
            "latin1": "café".encode("latin-1"),
        }
        upload_id = await srv.tus.new(3, metadata=metadata)

        head = await srv.tus.head(upload_id)
        echoed = decode_metadata(head.headers["Upload-Metadata"])
        assert echoed == {k: (v if v is not None else b"") for k, v in metadata.items()}
        stored = srv.info(upload_id)["MetaData"]
        assert stored["filename"] == "résumé.txt"  # tusd keeps decoded strings
        assert stored["novalue"] == ""
        assert stored["emptyvalue"] == ""

    async def test_creation_with_upload(self, srv: Served) -> None:
        response = await srv.tus.create(11, body=b"hello")
        assert response.status_code == 201
        assert response.headers["Upload-Offset"] == "5"
        upload_id = upload_id_of(response.headers["Location"])
        assert srv.data(upload_id) == b"hello"
        assert await srv.tus.offset(upload_id) == 5
        assert (await srv.tus.patch(upload_id, 5, b" world")).status_code == 204
        assert srv.data(upload_id) == b"hello world"

    async def test_creation_with_whole_upload(self, srv: Served) -> None:
        response = await srv.tus.create(5, body=b"hello")
        assert response.status_code == 201
        assert response.headers["Upload-Offset"] == "5"
        upload_id = upload_id_of(response.headers["Location"])
        head = await srv.tus.head(upload_id)
        assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "5"

    async def test_creation_with_upload_longer_than_length(self, srv: Served) -> None:
        response = await srv.tus.create(5, body=b"0123456789")
        assert_error(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
        # the Content-Length says it is too long: refused before anything is created
        assert "Location" not in response.headers
        assert srv.files() == set()

    async def test_creation_without_a_length_creates_nothing(self, srv: Served) -> None:
        response = await srv.http.post(srv.url, headers=TUS)
        assert_error(response, 400, "ERR_INVALID_HEADER")
        assert "Location" not in response.headers
        assert srv.files() == set()

    async def test_unknown_method_on_upload(self, srv: Served) -> None:
        upload_id = await srv.tus.new(3)
        response = await srv.http.put(srv.tus.upload_url(upload_id), headers=TUS, content=b"abc")
        assert_error(response, 405, "ERR_METHOD_NOT_ALLOWED")
        assert response.headers["Allow"] == "HEAD, PATCH, GET, OPTIONS, DELETE"
        assert srv.data(upload_id) == b""


# ---------------------------------------------------------------------------------------------------
# HEAD


class TestHead:
    async def test_head_reports_the_state(self, srv: Served) -> None:
        upload_id = await srv.tus.new(10)
        assert (await srv.tus.patch(upload_id, 0, b"abc")).status_code == 204

        head = await srv.tus.head(upload_id)

        assert head.status_code == 200
        assert head.headers["Upload-Offset"] == "3"
        assert head.headers["Upload-Length"] == "10"
        assert head.headers["Cache-Control"] == "no-store"
        assert head.headers["Tus-Resumable"] == "1.0.0"
        assert "Upload-Defer-Length" not in head.headers
        assert "Upload-Concat" not in head.headers
        assert head.content == b""

    async def test_head_of_unknown_upload(self, srv: Served) -> None:
        head = await srv.http.head(srv.tus.upload_url("0123456789abcdef" * 2), headers=TUS)
        assert head.status_code == 404
        assert "Upload-Offset" not in head.headers
        assert head.content == b""


# ---------------------------------------------------------------------------------------------------
# PATCH


class TestPatch:
    async def test_patch_appends(self, srv: Served) -> None:
        upload_id = await srv.tus.new(11)
        first = await srv.tus.patch(upload_id, 0, b"hello")
        assert first.status_code == 204
        assert first.headers["Upload-Offset"] == "5"
        assert first.headers["Tus-Resumable"] == "1.0.0"
        assert srv.data(upload_id) == b"hello"
        second = await srv.tus.patch(upload_id, 5, b" world")
        assert second.status_code == 204
        assert second.headers["Upload-Offset"] == "11"
        assert srv.data(upload_id) == b"hello world"
        assert await srv.tus.offset(upload_id) == 11

    async def test_offset_mismatch(self, srv: Served) -> None:
        upload_id = await srv.tus.new(10)
        assert (await srv.tus.patch(upload_id, 0, b"hello")).status_code == 204
        response = await srv.tus.patch(upload_id, 3, b"xx")
        assert_error(response, 409, "ERR_MISMATCHED_OFFSET")
        assert srv.data(upload_id) == b"hello"
        assert await srv.tus.offset(upload_id) == 5

    async def test_patch_completes_the_upload(self, srv: Served) -> None:
        data = os.urandom(100_000)
        upload_id = await srv.tus.upload(data, chunk=30_000)
        assert srv.data(upload_id) == data
        head = await srv.tus.head(upload_id)
        assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "100000"
        # a repeated, empty PATCH at the end is harmless
        again = await srv.tus.patch(upload_id, 100_000, b"")
        assert again.status_code == 204
        assert again.headers["Upload-Offset"] == "100000"

    @pytest.mark.parametrize("size", [10, 1 << 20])
    async def test_body_longer_than_remaining(self, tmp_path: Path, size: int) -> None:
        """A Content-Length past the upload's end is refused before a byte is read, as tusd
        does: nothing is stored, the upload does not complete and no hook runs (small bodies,
        read whole, and large ones, streamed)."""
        finished: list[str] = []

        async def on_finish(info: UploadInfo) -> None:
            finished.append(info.id)

        async with running(tmp_path / "store", on_finish=on_finish) as srv:
            upload_id = await srv.tus.new(size)
            assert (await srv.tus.patch(upload_id, 0, b"abcd")).status_code == 204
            response = await srv.tus.patch(upload_id, 4, os.urandom(size))
            assert_error(response, 413, "ERR_UPLOAD_SIZE_EXCEEDED")
            assert srv.data(upload_id) == b"abcd"
            assert await srv.tus.offset(upload_id) == 4
            assert finished == []
            # the upload goes on
            rest = os.urandom(size - 4)
            assert (await srv.tus.patch(upload_id, 4, rest)).status_code == 204
            assert srv.data(upload_id)[4:] == rest
            assert finished == [upload_id]

    @pytest.mark.parametrize("case", ["offset-mismatch", "content-type", "unknown", "too-long"])
    async def test_early_answer_to_a_large_body(self, srv: Served, case: str) -> None:
        """The server answers before reading a large body: the client must still get the answer,
        and the connection must not be left wedged for the next request."""
        size = 1 << 20
        upload_id = await srv.tus.new(size)
        body = os.urandom(4 << 20)
        offset, headers, target, expected = {
            "offset-mismatch": (5, {}, upload_id, 409),
            "content-type": (0, {"Content-Type": "text/plain"}, upload_id, 415),
            "unknown": (0, {}, "0" * 32, 404),
            "too-long": (0, {}, upload_id, 413),
        }[case]
        try:
            response = await srv.tus.patch(target, offset, body, headers, timeout=5)
        except httpx.TransportError as exc:
            pytest.fail(f"PATCH ({case}) with a 4 MiB body got no answer: {exc!r}")
        assert_error(response, expected)
        try:
            head = await srv.tus.head(upload_id, timeout=5)
        except httpx.TransportError as exc:
            pytest.fail(f"the request after the early answer got no answer: {exc!r}")
        # nothing is stored: a Content-Length that is too long is refused before reading too
        assert head.headers["Upload-Offset"] == "0"
        assert srv.data(upload_id) == b""

    @pytest.mark.parametrize("framing", ["content-length", "chunked"])
    async def test_early_answer_to_a_huge_body(self, srv: Served, framing: str) -> None:
        """Too much body to drain: the answer must still arrive, and the next request work."""
        upload_id = await srv.tus.new(10)
        piece = b"x" * (1 << 20)

        async def chunked() -> AsyncIterator[bytes]:
            for _ in range(64):
                yield piece

        body: bytes | AsyncIterator[bytes] = (
            piece * 64 if framing == "content-length" else chunked()
        )
        try:
            response = await srv.tus.patch(upload_id, 5, body, timeout=10)
        except httpx.TransportError as exc:
            pytest.fail(f"PATCH with a 64 MiB body got no answer: {exc!r}")
        assert_error(response, 409)
        try:
            head = await srv.tus.head(upload_id, timeout=5)
        except httpx.TransportError as exc:
            pytest.fail(f"the request after the early answer got no answer: {exc!r}")
        assert head.headers["Upload-Offset"] == "0"
        assert srv.data(upload_id) == b""

    async def test_chunked_body_longer_than_remaining(self, srv: Served) -> None:
        async def body() -> AsyncIterator[bytes]:
            for i in range(50):
                yield bytes([65 + i % 26]) * 1024

        upload_id = await srv.tus.new(10_240)
        response = await srv.tus.patch(upload_id, 0, body())
        assert_error(response, 413)
        expected = b"".join(bytes([65 + i % 26]) * 1024 for i in range(10))
        assert srv.data(upload_id) == expected
        assert await srv.tus.offset(upload_id) == 10_240

    async def test_patch_unknown_upload(self, srv: Served) -> None:
        response = await srv.tus.patch("f" * 32, 0, b"abc")
        assert_error(response, 404, "ERR_UPLOAD_NOT_FOUND")
        assert srv.files() == set()

    async def test_deferred_length_declared_on_patch(self, srv: Served) -> None:
        upload_id = await srv.tus.new(None)
        first = await srv.tus.patch(upload_id, 0, b"hello")
        assert first.status_code == 204
        assert first.headers["Upload-Offset"] == "5"
        head = await srv.tus.head(upload_id)
        assert head.headers["Upload-Defer-Length"] == "1"

        last = await srv.tus.patch(upload_id, 5, b"!!!", headers={"Upload-Length": "8"})
        assert last.status_code == 204
        assert last.headers["Upload-Offset"] == "8"
        head = await srv.tus.head(upload_id)
        assert head.headers["Upload-Length"] == "8"
        assert "Upload-Defer-Length" not in head.headers
        assert srv.info(upload_id)["Size"] == 8
        assert srv.data(upload_id) == b"hello!!!"

    async def test_deferred_upload_capped_by_max_size(self, tmp_path: Path) -> None:
        async with running(tmp_path, max_size=10) as srv:
            upload_id = await srv.tus.new(None)
            # a Content-Length past the maximum: refused before a byte is read
            response = await srv.tus.patch(upload_id, 0, b"x" * 25)
            assert_error(response, 413, "ERR_MAX_SIZE_EXCEEDED")
            assert srv.data(upload_id) == b""

            # a chunked body is cut at the maximum: what fits is stored
            async def chunked() -> AsyncIterator[bytes]:
                for _ in range(5):
                    yield b"y" * 5

            response = await srv.tus.patch(upload_id, 0, chunked())
            assert_error(response, 413, "ERR_MAX_SIZE_EXCEEDED")
            assert srv.data(upload_id) == b"y" * 10
            declared = await srv.tus.patch(upload_id, 10, b"", headers={"Upload-Length": "11"})
            assert_error(declared, 413, "ERR_MAX_SIZE_EXCEEDED")
            head = await srv.tus.head(upload_id)
            assert head.headers["Upload-Defer-Length"] == "1"


# ---------------------------------------------------------------------------------------------------
# termination


class TestTermination:
    async def test_delete(self, srv: Served) -> None:
        upload_id = await srv.tus.new(10)
        assert (await srv.tus.patch(upload_id, 0, b"abc")).status_code == 204
        other = await srv.tus.new(10)

        response = await srv.http.delete(srv.tus.upload_url(upload_id), headers=TUS)

        assert response.status_code == 204
        assert response.headers["Tus-Resumable"] == "1.0.0"
        assert srv.files() == {f"{other}.bin", f"{other}.info"}
        assert (await srv.tus.head(upload_id)).status_code == 404
        assert_error(await srv.tus.patch(upload_id, 3, b"d"), 404, "ERR_UPLOAD_NOT_FOUND")
        again = await srv.http.delete(srv.tus.upload_url(upload_id), headers=TUS)
        assert_error(again, 404, "ERR_UPLOAD_NOT_FOUND")
        assert srv.files() == {f"{other}.bin", f"{other}.info"}

    async def test_delete_unknown(self, srv: Served) -> None:
        response = await srv.http.delete(srv.tus.upload_url("a" * 32), headers=TUS)
        assert_error(response, 404)


# ---------------------------------------------------------------------------------------------------
# concatenation


class TestConcatenation:
    async def partial(self, srv: Served, data: bytes) -> str:
        upload_id = await srv.tus.new(len(data), headers={"Upload-Concat": "partial"})
        response = await srv.tus.patch(upload_id, 0, data)
        assert response.status_code == 204
        return upload_id

    async def test_concatenate_absolute_and_relative_urls(self, srv: Served) -> None:
        first = await self.partial(srv, b"abc")
        second = await self.partial(srv, b"defg")
        partial_head = await srv.tus.head(first)
        assert partial_head.headers["Upload-Concat"] == "partial"
        assert partial_head.headers["Upload-Offset"] == "3"

        response = await srv.http.post(
            srv.url,
            headers={
                **TUS,
                "Upload-Concat": f"final;{srv.tus.upload_url(first)} /files/{second}",
            },
        )

        assert response.status_code == 201, response.text
        final = upload_id_of(response.headers["Location"])
        head = await srv.tus.head(final)
        assert head.headers["Upload-Length"] == "7"
        assert head.headers["Upload-Offset"] == "7"
        concat = head.headers["Upload-Concat"]
        assert concat.startswith("final;")
        assert [upload_id_of(u) for u in concat.removeprefix("final;").split()] == [first, second]
        download = await srv.http.get(srv.tus.upload_url(final))
        assert download.content == b"abcdefg"
        assert srv.data(final) == b"abcdefg"
        info = srv.info(final)
        assert info["IsFinal"] is True
        assert info["PartialUploads"] == [first, second]

        # a final upload is immutable, and so are its partials through it
        refused = await srv.tus.patch(final, 7, b"x")
        assert_error(refused, 403)
        assert srv.data(final) == b"abcdefg"
        assert srv.data(first) == b"abc"
        assert srv.data(second) == b"defg"

    async def test_final_survives_deleting_its_partials(self, srv: Served) -> None:
        first = await self.partial(srv, b"abc")
        second = await self.partial(srv, b"def")
        response = await srv.http.post(
            srv.url, headers={**TUS, "Upload-Concat": f"final;/files/{first} /files/{second}"}
        )
        final = upload_id_of(response.headers["Location"])
        for part in (first, second):
            deleted = await srv.http.delete(srv.tus.upload_url(part), headers=TUS)
            assert deleted.status_code == 204
        assert srv.uploads() == {final}
        head = await srv.tus.head(final)
        assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == "6"
        assert (await srv.http.get(srv.tus.upload_url(final))).content == b"abcdef"

    async def test_partial_with_upload_on_creation(self, srv: Served) -> None:
        response = await srv.tus.create(3, headers={"Upload-Concat": "partial"}, body=b"abc")
        assert response.status_code == 201
        assert response.headers["Upload-Offset"] == "3"
        part = upload_id_of(response.headers["Location"])
        final = await srv.http.post(
            srv.url, headers={**TUS, "Upload-Concat": f"final;{srv.tus.upload_url(part)}"}
        )
        assert final.status_code == 201
        final_id = upload_id_of(final.headers["Location"])
        assert srv.data(final_id) == b"abc"

    async def test_partial_used_twice(self, srv: Served) -> None:
        part = await self.partial(srv, b"ab")
        url = srv.tus.upload_url(part)
        response = await srv.http.post(
            srv.url, headers={**TUS, "Upload-Concat": f"final;{url} {url}"}
        )
        assert response.status_code == 201, response.text
        final = upload_id_of(response.headers["Location"])
        assert (await srv.http.get(srv.tus.upload_url(final))).content == b"abab"

    async def test_unfinished_partial(self, srv: Served) -> None:
        done = await self.partial(srv, b"abc")
        unfinished = await srv.tus.new(10, headers={"Upload-Concat": "partial"})
        assert (await srv.tus.patch(unfinished, 0, b"abc")).status_code == 204
        before = srv.files()

        response = await srv.http.post(
            srv.url,
            headers={
                **TUS,
                "Upload-Concat": f"final;/files/{done} /files/{unfinished}",
            },
        )

        assert_error(response, 400, "ERR_UPLOAD_NOT_FINISHED")
        assert srv.files() == before

    async def test_unknown_partial(self, srv: Served) -> None:
        done = await self.partial(srv, b"abc")
        before = srv.files()
        response = await srv.http.post(
            srv.url, headers={**TUS, "Upload-Concat": f"final;/files/{done} /files/{'0' * 32}"}
        )
        assert_error(response, 400, "ERR_UPLOAD_NOT_FINISHED")
        assert srv.files() == before


# ---------------------------------------------------------------------------------------------------
# checksum


def checksum(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32":
        digest = zlib.crc32(data).to_bytes(4, "big")
    else:
        digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {base64.b64encode(digest).decode()}"


class TestChecksum:
    @pytest.mark.parametrize("algorithm", ["sha1"])
    async def test_matching_checksum(self, srv: Served, algorithm: str) -> None:
        upload_id = await srv.tus.new(11)
        response = await srv.tus.patch(
            upload_id, 0, b"hello", headers={"Upload-Checksum": checksum(algorithm, b"hello")}
        )
        assert response.status_code == 204, response.text
        assert response.headers["Upload-Offset"] == "5"
        assert srv.data(upload_id) == b"hello"

    @pytest.mark.parametrize("algorithm", ["crc32"])
    async def test_mismatching_checksum(self, srv: Served, algorithm: str) -> None:
        upload_id = await srv.tus.new(100)
        assert (await srv.tus.patch(upload_id, 0, b"abc")).status_code == 204
        chunk = os.urandom(50)

        response = await srv.tus.patch(
            upload_id, 3, chunk, headers={"Upload-Checksum": checksum(algorithm, chunk + b"!")}
        )

        assert_error(response, 460, "ERR_CHECKSUM_MISMATCH")
        assert srv.data(upload_id) == b"abc"
        assert await srv.tus.offset(upload_id) == 3
        retry = await srv.tus.patch(
            upload_id, 3, chunk, headers={"Upload-Checksum": checksum(algorithm, chunk)}
        )
        assert retry.status_code == 204
        assert srv.data(upload_id) == b"abc" + chunk


# ---------------------------------------------------------------------------------------------------
# expiration


def parse_http_date(value: str) -> float:
    assert value.endswith(" GMT"), value
    return email.utils.parsedate_to_datetime(value).timestamp()


class Clock:
    """The wall clock, plus however far a test has moved it (``TusApp(clock=...)``)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class TestExpiration:
    async def test_upload_expires_header(self, tmp_path: Path) -> None:
        async with running(tmp_path, expire_after=600) as srv:
            now = time.time()
            created = await srv.tus.create(10)
            assert created.status_code == 201
            expires = parse_http_date(created.headers["Upload-Expires"])
            assert now + 590 <= expires <= now + 610
            upload_id = upload_id_of(created.headers["Location"])

            patched = await srv.tus.patch(upload_id, 0, b"abc")
            assert patched.status_code == 204
            assert now + 590 <= parse_http_date(patched.headers["Upload-Expires"]) <= now + 610
            head = await srv.tus.head(upload_id)
            assert now + 590 <= parse_http_date(head.headers["Upload-Expires"]) <= now + 610

            finished = await srv.tus.patch(upload_id, 3, b"defghij")
            assert finished.status_code == 204
            assert "Upload-Expires" not in finished.headers  # a complete upload never expires

    async def test_expired_upload_is_gone(self, tmp_path: Path) -> None:
        clock = Clock()
        async with running(tmp_path, expire_after=60, cleanup_interval=3600, clock=clock) as srv:
            unfinished = await srv.tus.new(10)
            assert (await srv.tus.patch(unfinished, 0, b"abc")).status_code == 204
            other = await srv.tus.new(10)
            finished = await srv.tus.upload(b"complete")
            clock.advance(61)

            # the request that finds it expired removes it, then answers
            assert_error(await srv.tus.patch(unfinished, 3, b"def"), 410, "ERR_UPLOAD_EXPIRED")
            assert unfinished not in srv.uploads()
            assert not srv.bin(unfinished).exists()
            assert (await srv.tus.head(unfinished)).status_code == 404
            head = await srv.tus.head(other)
            assert (head.status_code, head.headers["Tus-Resumable"]) == (410, "1.0.0")
            assert srv.uploads() == {finished}
            # the complete one stays
            assert (await srv.tus.head(finished)).status_code == 200
            assert srv.data(finished) == b"complete"

    async def test_periodic_cleanup_inside_the_server(self, tmp_path: Path) -> None:
        clock = Clock()
        async with running(tmp_path, expire_after=60, cleanup_interval=0.05, clock=clock) as srv:
            unfinished = await srv.tus.new(10)
            finished = await srv.tus.upload(b"complete")
            clock.advance(61)
            # no request touches the upload: the server's own cleanup must remove it (the
            # directory has no event to wait on)
            assert await wait_for_files(
                srv.directory, lambda: unfinished not in srv.uploads(), timeout=5
            )
            assert srv.files() == {f"{finished}.bin", f"{finished}.info"}

    async def test_app_cleanup(self, tmp_path: Path) -> None:
        clock = Clock()
        async with running(tmp_path, expire_after=60, cleanup_interval=3600, clock=clock) as srv:
            stale = await srv.tus.new(10)
            finished = await srv.tus.upload(b"done")
            clock.advance(3600)
            fresh = await srv.tus.new(10)
            os.utime(srv.bin(fresh), (clock(), clock()))

            assert await srv.app.cleanup() == [stale]

            assert srv.uploads() == {fresh, finished}

    async def test_cli_cleanup(self, tmp_path: Path) -> None:
        store = FileStore(tmp_path)
        stale = (await store.new_upload(UploadInfo(size=10))).id
        fresh = (await store.new_upload(UploadInfo(size=10))).id
        finished = (await store.new_upload(UploadInfo(size=0))).id
        hour_ago = time.time() - 3600
        for upload_id in (stale, finished):
            os.utime(tmp_path / f"{upload_id}.bin", (hour_ago, hour_ago))

        result = await anyio.run_process(
            [sys.executable, "-m", "anytus", "cleanup", str(tmp_path), "--expire-after", "60"],
            env=subprocess_env(),
            check=False,
        )

        assert result.returncode == 0, result.stderr
        assert stale in result.stdout.decode()
        assert fresh not in result.stdout.decode()
        assert set(await store.list_uploads()) == {fresh, finished}
        assert not (tmp_path / f"{stale}.bin").exists()


# ---------------------------------------------------------------------------------------------------
# GET


class TestDownload:
    async def test_get(self, srv: Served) -> None:
        upload_id = await srv.tus.upload(
            b"hello world", metadata={"filename": b"hello.txt", "filetype": b"text/plain"}
        )
        response = await srv.http.get(srv.tus.upload_url(upload_id))
        assert response.status_code == 200
        assert response.content == b"hello world"
        assert response.headers["Content-Length"] == "11"
        assert response.headers["Content-Type"].startswith("text/plain")
        assert "hello.txt" in response.headers["Content-Disposition"]

    async def test_get_without_metadata(self, srv: Served) -> None:
        upload_id = await srv.tus.upload(b"\x00\x01\x02")
        response = await srv.http.get(srv.tus.upload_url(upload_id))
        assert response.status_code == 200
        assert response.content == b"\x00\x01\x02"
        assert response.headers["Content-Type"] == "application/octet-stream"

    async def test_get_large(self, srv: Served) -> None:
        data = os.urandom(3 * 1024 * 1024 + 7)  # several store read chunks
        upload_id = await srv.tus.upload(data, chunk=1 << 20)
        response = await srv.http.get(srv.tus.upload_url(upload_id))
        assert response.headers["Content-Length"] == str(len(data))
        assert response.content == data

    @pytest.mark.parametrize(
        ("range_", "content_range", "body"),
        [
            # every Range form is in test_protocol's table
            ("bytes=0-4", "bytes 0-4/11", b"hello"),
            ("bytes=-5", "bytes 6-10/11", b"world"),
        ],
    )
    async def test_range(self, srv: Served, range_: str, content_range: str, body: bytes) -> None:
        upload_id = await srv.tus.upload(b"hello world")
        response = await srv.http.get(srv.tus.upload_url(upload_id), headers={"Range": range_})
        assert response.status_code == 206
        assert response.headers["Content-Range"] == content_range
        assert response.headers["Content-Length"] == str(len(body))
        assert response.content == body

    async def test_unsatisfiable_range(self, srv: Served) -> None:
        upload_id = await srv.tus.upload(b"hello world")
        response = await srv.http.get(srv.tus.upload_url(upload_id), headers={"Range": "bytes=11-"})
        assert_error(response, 416, "ERR_RANGE_NOT_SATISFIABLE")
        assert response.headers["Content-Range"] == "bytes */11"

    async def test_get_unknown(self, srv: Served) -> None:
        response = await srv.http.get(srv.tus.upload_url("b" * 32))
        assert_error(response, 404)

    async def test_no_header_injection_through_metadata(self, srv: Served) -> None:
        upload_id = await srv.tus.upload(
            b"payload",
            metadata={
                "filename": b'evil"\r\nX-Injected: 1\r\n\r\n.txt',
                "filetype": b"text/html\r\nX-Injected: 2",
            },
        )
        response = await srv.http.get(srv.tus.upload_url(upload_id))
        assert response.status_code == 200
        assert response.content == b"payload"
        assert "X-Injected" not in response.headers
        assert "\n" not in response.headers.get("Content-Disposition", "")
        assert response.headers["Content-Type"] != "text/html"


# ---------------------------------------------------------------------------------------------------
# CORS

ALLOWED_HEADERS = {
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-checksum",
    "content-type",
    "x-http-method-override",
}
EXPOSED_HEADERS = {
    "upload-offset",
    "location",
    "upload-length",
    "tus-version",
    "tus-resumable",
    "tus-max-size",
    "tus-extension",
    "upload-metadata",
    "upload-defer-length",
    "upload-concat",
    "upload-expires",
}


class TestCors:
    async def test_preflight(self, srv: Served) -> None:
        response = await srv.http.options(
            srv.url,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "PATCH",
                "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type",
            },
        )
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert response.headers["Vary"] == "Origin"
        methods = comma_set(response.headers["Access-Control-Allow-Methods"])
        assert {"post", "head", "patch", "delete", "options", "get"} <= methods
        assert ALLOWED_HEADERS <= comma_set(response.headers["Access-Control-Allow-Headers"])

    async def test_cors_headers_on_requests(self, srv: Served) -> None:
        origin = {"Origin": "https://app.example"}
        created = await srv.http.post(srv.url, headers={**TUS, **origin, "Upload-Length": "3"})
        assert created.status_code == 201
        for response in (
            created,
            await srv.http.head(created.headers["Location"], headers={**TUS, **origin}),
        ):
            assert response.headers["Access-Control-Allow-Origin"] == "https://app.example"
            assert EXPOSED_HEADERS <= comma_set(response.headers["Access-Control-Expose-Headers"])

    async def test_restricted_origins(self, tmp_path: Path) -> None:
        async with running(tmp_path, cors_allow_origins=("https://good.example",)) as srv:
            good = await srv.http.options(
                srv.url,
                headers={"Origin": "https://good.example", "Access-Control-Request-Method": "POST"},
            )
            assert good.headers["Access-Control-Allow-Origin"] == "https://good.example"
            bad = await srv.http.options(
                srv.url,
                headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
            )
            assert_error(bad, 403, "ERR_ORIGIN_NOT_ALLOWED")
            assert "Access-Control-Allow-Origin" not in bad.headers


# ---------------------------------------------------------------------------------------------------
# hostile input

HOSTILE_TARGETS = [
    "/files/..",
    "/files/../secret",
    "/files/..%2Fsecret",
    "/files/..%2fsecret",
    "/files/%2e%2e%2fsecret",
    "/files/%2E%2E",
    "/files/%2e%2e",
    "/files/%252e%252e%252fsecret",
    "/files/secret%00",
    "/files/%00",
    "/files/a%2Fb",
    "/files//secret",
    "/files/secret.info",
    "/files/.secret",
    "/files/secret/",
    "/files/" + "a" * 129,
    "/files/" + "a" * 5000,
    "/files/%C0%AE%C0%AE%2Fsecret",
    "/files/\u00e9".encode().decode("latin-1"),
]


class TestHostileInput:
    async def test_hostile_ids(self, tmp_path: Path) -> None:
        # a tempting target next to the store directory: a valid upload named "secret"
        outside = FileStore(tmp_path)
        secret = (await outside.new_upload(UploadInfo(size=100, id="secret"))).id
        secret_files = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        assert set(secret_files) == {f"{secret}.bin", f"{secret}.info"}

        async with running(tmp_path / "store") as srv:
            legit = await srv.tus.new(100)
            before = srv.files()
            for target in HOSTILE_TARGETS:
                # a target that is not ASCII is refused by the HTTP server itself (h11); every
                # other one reaches the app, which finds no such upload
                expected = 404 if target.isascii() else 400
                for method, extra, body in (
                    ("HEAD", {}, b""),
                    ("GET", {}, b""),
                    (
                        "PATCH",
                        {"Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE},
                        b"x" * 10,
                    ),
                    ("DELETE", {}, b""),
                ):
                    stream = await srv.connect()
                    async with stream:
                        await stream.send(
                            raw_request(
                                method,
                                target,
                                srv.host,
                                {**TUS, **extra, "Connection": "close"},
                                content_length=len(body),
                            )
                            + body
                        )
                        response = await read_raw_response(stream, head_only=method == "HEAD")
                    assert response.status == expected, (method, target, response)
            assert srv.files() == before
            assert srv.data(legit) == b""
        after = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
        assert after == secret_files


def _encode_head(method: str, target: str, host: str, headers: Mapping[str, str]) -> bytes:
    """A request head whose header values may hold any Unicode (sent as UTF-8 bytes)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# ---------------------------------------------------------------------------------------------------
# concurrency, broken connections, release requests, lock timeouts


class TestConcurrency:
    async def test_competing_patches(self, srv: Served) -> None:
        size = 256 * 1024
        upload_id = await srv.tus.new(size)
        await race_to_completion(srv.tus, upload_id, size, srv.data, contenders=6, chunk=64 * 1024)
        assert srv.bin(upload_id).stat().st_size == size
        head = await srv.tus.head(upload_id)
        assert head.headers["Upload-Offset"] == head.headers["Upload-Length"] == str(size)


async def send_partial_patch(
    srv: Served, upload_id: str, offset: int, total: int, data: bytes
) -> anyio.abc.SocketStream:
    """Open a raw PATCH announcing *total* body bytes and send only *data*."""
    stream = await srv.connect()
    head = raw_request(
        "PATCH",
        f"/files/{upload_id}",
        srv.host,
        {**TUS, "Upload-Offset": str(offset), "Content-Type": OFFSET_CONTENT_TYPE},
        content_length=total,
    )
    await stream.send(head + data)
    return stream


async def wait_locked(srv: Served, upload_id: str) -> None:
    """Wait until a PATCH holds the upload's lock: it is in its handler, reading the body.

    The body's first bytes went out in the same write as the request head (one segment on the
    loopback), so by then the server has them too.
    """
    locker = srv.store.locker
    # the lock has no event to wait on from outside: poll it
    assert await wait_for(lambda: locker.locked(upload_id), timeout=5), "the PATCH never started"


def set_linger_zero(stream: anyio.abc.SocketStream) -> None:
    """Make close() send RST instead of FIN."""
    raw: socket.socket = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


class TestBrokenConnections:
    @pytest.mark.parametrize("how", ["close", "reset"])
    async def test_disconnect_mid_body_keeps_the_bytes(self, srv: Served, how: str) -> None:
        data = os.urandom(100_000)
        upload_id = await srv.tus.new(len(data))

        stream = await send_partial_patch(srv, upload_id, 0, len(data), data[:30_000])
        # the server has read what was sent before the connection goes away
        await wait_locked(srv, upload_id)
        if how == "reset":
            set_linger_zero(stream)
        await stream.aclose()

        assert await wait_for_files(
            srv.directory, lambda: srv.data(upload_id) == data[:30_000], timeout=5
        ), len(srv.data(upload_id))
        assert await srv.tus.offset(upload_id) == 30_000
        resumed = await srv.tus.patch(upload_id, 30_000, data[30_000:])
        assert resumed.status_code == 204
        assert resumed.headers["Upload-Offset"] == "100000"
        assert srv.data(upload_id) == data

    async def test_head_interrupts_a_stalled_patch(self, srv: Served) -> None:
        data = os.urandom(100_000)
        upload_id = await srv.tus.new(len(data))
        stream = await send_partial_patch(srv, upload_id, 0, len(data), data[:20_000])
        async with stream:
            # the PATCH holds the lock and waits for more body
            await wait_locked(srv, upload_id)

            started = time.monotonic()
            head = await srv.tus.head(upload_id)
            elapsed = time.monotonic() - started

            assert head.status_code == 200
            # every byte the server had read from the socket when the HEAD stopped the PATCH
            # (nothing shows from outside when it has read them all: the test cannot wait)
            offset = int(head.headers["Upload-Offset"])
            assert 0 <= offset <= 20_000
            assert elapsed < 3, f"HEAD waited {elapsed:.1f}s for the stalled PATCH"
            with anyio.fail_after(5):
                interrupted = await read_raw_response(stream)
            assert interrupted.status == 400
            assert interrupted.body.startswith(b"ERR_UPLOAD_INTERRUPTED")

        assert srv.data(upload_id) == data[:offset]
        resumed = await srv.tus.patch(upload_id, offset, data[offset:])
        assert resumed.status_code == 204
        assert srv.data(upload_id) == data

    async def test_idle_body_ends_the_request(self, tmp_path: Path) -> None:
        # real time: hypercorn and the socket run on it (the in-process test of the same rule
        # uses trio's MockClock)
        async with running(tmp_path, idle_timeout=0.3) as srv:
            data = os.urandom(100_000)
            upload_id = await srv.tus.new(len(data))
            stream = await send_partial_patch(srv, upload_id, 0, len(data), data[:10_000])
            async with stream:
                started = time.monotonic()
                with anyio.fail_after(6):
                    response = await read_raw_response(stream)
                # 500, as tusd: tus clients retry on 5xx; and the connection is not reused
                assert response.status == 500, response
                assert response.body.startswith(b"ERR_READ_TIMEOUT: "), response
                assert response.headers["connection"] == "close", response
                assert time.monotonic() - started >= 0.25
            assert srv.data(upload_id) == data[:10_000]
            assert await srv.tus.offset(upload_id) == 10_000
        # resumed where it ended, through a server on the same directory with the default idle
        # timeout: under 0.3 s, a loaded machine can stall the resuming body too (this process
        # runs client and server)
        async with running(tmp_path) as srv:
            assert (await srv.tus.patch(upload_id, 10_000, data[10_000:])).status_code == 204
            assert srv.data(upload_id) == data

    async def test_delete_interrupts_a_stalled_patch(self, srv: Served) -> None:
        data = os.urandom(100_000)
        upload_id = await srv.tus.new(len(data))
        stream = await send_partial_patch(srv, upload_id, 0, len(data), data[:20_000])
        async with stream:
            await wait_locked(srv, upload_id)
            with anyio.fail_after(5):
                deleted = await srv.http.delete(srv.tus.upload_url(upload_id), headers=TUS)
                interrupted = await read_raw_response(stream)
            assert deleted.status_code == 204
            assert interrupted.status == 400
            assert interrupted.body.startswith(b"ERR_UPLOAD_INTERRUPTED: ")
            # the PATCH has answered: it is over, and more body must not bring the upload back
            with contextlib.suppress(anyio.BrokenResourceError, OSError):
                await stream.send(data[20_000:40_000])
        assert not srv.bin(upload_id).exists()
        assert upload_id not in srv.uploads()
        assert (await srv.tus.head(upload_id)).status_code == 404

    async def test_disconnect_with_checksum_keeps_nothing_unverified(self, srv: Served) -> None:
        data = os.urandom(100_000)
        upload_id = await srv.tus.new(len(data))
        stream = await srv.connect()
        await stream.send(
            raw_request(
                "PATCH",
                f"/files/{upload_id}",
                srv.host,
                {
                    **TUS,
                    "Upload-Offset": "0",
                    "Content-Type": OFFSET_CONTENT_TYPE,
                    "Upload-Checksum": checksum("sha1", data),
                },
                content_length=len(data),
            )
            + data[:30_000]
        )
        await wait_locked(srv, upload_id)
        await stream.aclose()
        # the bytes that arrived cannot be checked against the checksum: they must not count
        assert await wait_for_files(srv.directory, lambda: srv.data(upload_id) == b"", timeout=5)
        assert await srv.tus.offset(upload_id) == 0

    async def test_lock_timeout_is_423(self, tmp_path: Path) -> None:
        async with running(tmp_path, lock_timeout=0.2) as srv:
            upload_id = await srv.tus.new(10)
            release_requests: list[str] = []
            # a holder that ignores release requests: the request must give up in time
            async with srv.store.lock(upload_id, on_release=lambda: release_requests.append("x")):
                started = time.monotonic()
                response = await srv.tus.patch(upload_id, 0, b"abc")
                elapsed = time.monotonic() - started
                assert_error(response, 423, "ERR_LOCK_TIMEOUT")
                assert 0.2 <= elapsed < 3
                assert release_requests == ["x"]
            assert srv.data(upload_id) == b""
            assert (await srv.tus.patch(upload_id, 0, b"abc")).status_code == 204


# ---------------------------------------------------------------------------------------------------
# hooks


class TestHooks:
    async def test_on_create_rejects(self, tmp_path: Path) -> None:
        seen: list[UploadInfo] = []

        async def on_create(info: UploadInfo, request: object) -> None:
            seen.append(info)
            raise HookRejected(403, "uploads are closed")

        async with running(tmp_path / "store", on_create=on_create) as srv:
            response = await srv.tus.create(10, metadata={"filename": b"x.txt"})
            with_body = await srv.tus.create(5, body=b"hello")

        assert response.status_code == 403
        assert response.text == "ERR_REJECTED_BY_HOOK: uploads are closed\n"
        assert with_body.status_code == 403
        # the store was never even used: it made no directory
        assert not (tmp_path / "store").exists()
        assert seen[0].size == 10
        assert dict(seen[0].metadata) == {"filename": "x.txt"}

    async def test_failing_hook_is_a_500_without_traceback(self, tmp_path: Path) -> None:
        async def on_create(info: UploadInfo, request: object) -> None:
            raise RuntimeError("hook exploded")

        async with running(tmp_path / "store", on_create=on_create) as srv:
            response = await srv.tus.create(10)
        assert_error(response, 500, "ERR_INTERNAL_SERVER_ERROR")
        assert "Traceback" not in response.text
        assert "File " not in response.text

    async def test_on_finish_runs_once(self, tmp_path: Path) -> None:
        finished: list[UploadInfo] = []

        async def on_finish(info: UploadInfo) -> None:
            finished.append(info)

        async with running(tmp_path, on_finish=on_finish) as srv:
            upload_id = await srv.tus.upload(b"0123456789", chunk=4)
            assert (await srv.tus.patch(upload_id, 10, b"")).status_code == 204
            await srv.tus.head(upload_id)
            empty = await srv.tus.new(0)
            whole = upload_id_of((await srv.tus.create(3, body=b"abc")).headers["Location"])
            deferred = await srv.tus.new(None)
            assert (await srv.tus.patch(deferred, 0, b"ab")).status_code == 204
            assert (
                await srv.tus.patch(deferred, 2, b"c", headers={"Upload-Length": "3"})
            ).status_code == 204
            unfinished = await srv.tus.new(5)
            assert (await srv.tus.patch(unfinished, 0, b"ab")).status_code == 204
            before_concat = len(finished)
            part = await srv.tus.new(2, headers={"Upload-Concat": "partial"}, body=b"pq")
            concat = await srv.http.post(
                srv.url, headers={**TUS, "Upload-Concat": f"final;/files/{part}"}
            )
            final = upload_id_of(concat.headers["Location"])

        # the partial finishes when its body is in, the final when it is made: once each
        assert [info.id for info in finished[before_concat:]] == [part, final]
        ids = [info.id for info in finished[:before_concat]]
        assert sorted(ids) == sorted([upload_id, empty, whole, deferred])
        by_id = {info.id: info for info in finished}
        assert by_id[upload_id].offset == by_id[upload_id].size == 10
        assert by_id[deferred].size == 3

    async def test_on_terminate(self, tmp_path: Path) -> None:
        terminated: list[str] = []

        async def on_terminate(info: UploadInfo) -> None:
            terminated.append(info.id)

        async with running(tmp_path, on_terminate=on_terminate) as srv:
            upload_id = await srv.tus.new(5)
            assert (
                await srv.http.delete(srv.tus.upload_url(upload_id), headers=TUS)
            ).status_code == 204
            assert (
                await srv.http.delete(srv.tus.upload_url(upload_id), headers=TUS)
            ).status_code == 404
        assert terminated == [upload_id]
