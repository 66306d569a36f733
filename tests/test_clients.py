"""Real tus clients that nobody here wrote, against ``anytus serve`` running as a subprocess.

- tuspy (``tusclient``), the Python client: synchronous, so these are plain sync tests;
- tus-js-client, the reference JavaScript client, in its Node.js build (``tests/js/upload.js``).
  Needs ``node`` and ``npm``; ``npm install`` runs into ``tests/js/node_modules`` on first use.

Each test checks the bytes that arrived in the store directory, not only what the client reports.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from tusclient import client as tus_client

from _server import (
    CLIENT_TLS,
    TUS,
    ServerProcess,
    decode_metadata,
    run_server_process,
    upload_id_of,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

JS_DIR = Path(__file__).parent / "js"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with run_server_process(tmp_path_factory.mktemp("uploads")) as process:
        yield process


def stored(server: ServerProcess, upload_id: str) -> bytes:
    return (server.directory / f"{upload_id}.bin").read_bytes()


def stored_info(server: ServerProcess, upload_id: str) -> dict[str, Any]:
    info: dict[str, Any] = json.loads((server.directory / f"{upload_id}.info").read_bytes())
    return info


def url_of(uploader: Any) -> str:
    """The upload URL a tuspy uploader ended up with (tuspy types it as ``None``)."""
    url = uploader.url
    assert isinstance(url, str), url
    return url


def head(url: str) -> httpx.Response:
    response = httpx.head(url, headers=TUS, timeout=10, verify=CLIENT_TLS)
    assert response.status_code == 200, response.status_code
    return response


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(1024 * 1024 + 123)  # not a multiple of any chunk size
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    return path, data


# ---------------------------------------------------------------------------------------------------
# tuspy


class TestTuspy:
    def test_upload_with_metadata_in_chunks(
        self, server: ServerProcess, payload: tuple[Path, bytes]
    ) -> None:
        path, data = payload
        metadata = {"filename": "payload ünïcode.bin", "filetype": "application/octet-stream"}
        with path.open("rb") as stream:
            uploader = tus_client.TusClient(server.url).uploader(
                file_stream=stream, chunk_size=200_000, metadata=metadata
            )
            uploader.upload()

        assert url_of(uploader).startswith(server.url)
        upload_id = upload_id_of(url_of(uploader))
        assert stored(server, upload_id) == data
        assert stored_info(server, upload_id)["MetaData"] == metadata
        response = head(url_of(uploader))
        assert response.headers["Upload-Offset"] == response.headers["Upload-Length"]
        assert response.headers["Upload-Length"] == str(len(data))
        assert {
            k: v.decode() for k, v in decode_metadata(response.headers["Upload-Metadata"]).items()
        } == metadata
        download = httpx.get(url_of(uploader), timeout=10, verify=CLIENT_TLS)
        assert download.content == data

    def test_upload_with_checksums(
        self, server: ServerProcess, payload: tuple[Path, bytes]
    ) -> None:
        path, data = payload
        with path.open("rb") as stream:
            uploader = tus_client.TusClient(server.url).uploader(
                file_stream=stream, chunk_size=300_000, upload_checksum=True
            )
            uploader.upload()
        assert stored(server, upload_id_of(url_of(uploader))) == data

    def test_resume_after_interruption(
        self, server: ServerProcess, payload: tuple[Path, bytes]
    ) -> None:
        path, data = payload
        with path.open("rb") as stream:
            first = tus_client.TusClient(server.url).uploader(
                file_stream=stream, chunk_size=100_000
            )
            first.upload(stop_at=400_000)  # stop part-way, as an interrupted client would
        upload_id = upload_id_of(url_of(first))
        assert stored(server, upload_id) == data[:400_000]

        # a new uploader that knows only the URL asks the server where to continue
        with path.open("rb") as stream:
            second = tus_client.TusClient(server.url).uploader(
                file_stream=stream, url=url_of(first), chunk_size=100_000
            )
            assert second.offset == 400_000
            second.upload()

        assert url_of(second) == url_of(first)
        assert stored(server, upload_id) == data
        assert [p.stem for p in server.directory.glob("*.info")].count(upload_id) == 1

    def test_resume_after_server_restart(self, tmp_path: Path, payload: tuple[Path, bytes]) -> None:
        path, data = payload
        directory = tmp_path / "restarted"
        with run_server_process(directory) as before:
            with path.open("rb") as stream:
                first = tus_client.TusClient(before.url).uploader(
                    file_stream=stream, chunk_size=256 * 1024
                )
                first.upload(stop_at=512 * 1024)
            upload_id = upload_id_of(url_of(first))
            assert before.stop() == 0

        with run_server_process(directory) as after:
            url = f"{after.url}{upload_id}"
            with path.open("rb") as stream:
                second = tus_client.TusClient(after.url).uploader(
                    file_stream=stream, url=url, chunk_size=256 * 1024
                )
                assert second.offset == 512 * 1024
                second.upload()
            assert (directory / f"{upload_id}.bin").read_bytes() == data
            assert httpx.get(url, timeout=10, verify=CLIENT_TLS).content == data


# ---------------------------------------------------------------------------------------------------
# tus-js-client


@pytest.fixture(scope="module")
def node() -> str:
    """The ``node`` executable, with tus-js-client installed under ``tests/js``."""
    node = shutil.which("node")
    npm = shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("tus-js-client tests need Node.js >= 18 with npm on PATH (not found)")
    if not (JS_DIR / "node_modules" / "tus-js-client").is_dir():
        result = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund"],
            cwd=JS_DIR,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if result.returncode != 0:
            pytest.skip(f"npm install of tus-js-client failed (offline?): {result.stderr[-500:]}")
    return node


def run_js(node: str, scenario: str, endpoint: str, file: Path) -> dict[str, Any]:
    result = subprocess.run(
        [node, "upload.js", scenario, endpoint, str(file)],
        cwd=JS_DIR,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, f"no output from upload.js (exit {result.returncode}): {result.stderr}"
    outcome: dict[str, Any] = json.loads(lines[-1])
    assert "error" not in outcome, (outcome, result.stderr)
    assert result.returncode == 0, (outcome, result.stderr)
    return outcome


class TestTusJsClient:
    def test_plain_upload_with_metadata(
        self, node: str, server: ServerProcess, payload: tuple[Path, bytes]
    ) -> None:
        path, data = payload
        outcome = run_js(node, "plain", server.url, path)

        upload_id = upload_id_of(outcome["url"])
        assert stored(server, upload_id) == data
        assert stored_info(server, upload_id)["MetaData"] == {
            "filename": "hello wörld.bin",
            "filetype": "application/octet-stream",
            "empty": "",
        }
        methods = [method for method, _url, _status in outcome["requests"]]
        assert methods[0] == "POST"
        assert set(methods[1:]) == {"PATCH"}
        assert len(methods) == 1 + -(-len(data) // (256 * 1024))
        statuses = [status for _m, _u, status in outcome["requests"]]
        assert statuses == [201] + [204] * (len(methods) - 1)

    def test_resume_after_abort(
        self, node: str, server: ServerProcess, payload: tuple[Path, bytes]
    ) -> None:
        path, data = payload
        outcome = run_js(node, "resume", server.url, path)

        assert outcome["url"] == outcome["firstUrl"]
        first_methods = [method for method, _url, _status in outcome["first"]]
        assert first_methods[0] == "POST"
        second = outcome["second"]
        # the second client asked where to continue, and did not start over
        assert second[0][0] == "HEAD"
        assert second[0][2] == 200
        assert "POST" not in [method for method, _url, _status in second]
        assert stored(server, upload_id_of(outcome["url"])) == data

    def test_parallel_uploads_use_concatenation(
        self, node: str, server: ServerProcess, payload: tuple[Path, bytes]
    ) -> None:
        path, data = payload
        outcome = run_js(node, "parallel", server.url, path)

        final_id = upload_id_of(outcome["url"])
        assert stored(server, final_id) == data
        info = stored_info(server, final_id)
        assert info["IsFinal"] is True
        assert info["Size"] == len(data)
        partials = info["PartialUploads"]
        assert len(partials) == 3
        assert b"".join(stored(server, p) for p in partials) == data
        assert all(stored_info(server, p)["IsPartial"] is True for p in partials)
        assert [m for m, _u, _s in outcome["requests"]].count("POST") == 4
        response = head(outcome["url"])
        assert response.headers["Upload-Concat"].startswith("final;")
        assert httpx.get(outcome["url"], timeout=10, verify=CLIENT_TLS).content == data

    def test_deferred_length_from_a_stream(
        self, node: str, server: ServerProcess, payload: tuple[Path, bytes]
    ) -> None:
        path, data = payload
        outcome = run_js(node, "deferred", server.url, path)

        upload_id = upload_id_of(outcome["url"])
        assert stored(server, upload_id) == data
        info = stored_info(server, upload_id)
        assert info["Size"] == len(data)
        assert info["SizeIsDeferred"] is False
        response = head(outcome["url"])
        assert response.headers["Upload-Length"] == str(len(data))
        assert "Upload-Defer-Length" not in response.headers
