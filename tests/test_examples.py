"""examples/: each framework's app type-checks with ``TusApp`` mounted, and serves tus uploads.

- mypy --strict and pyright (basedpyright, which bundles node) pass on examples/ with no ignores;
- the Starlette and FastAPI apps serve a whole upload in-process with hypercorn, on asyncio and
  trio;
- every example runs as a script (``python examples/X.py``, uvicorn on asyncio) and serves a
  whole upload through its mount next to its ordinary route. Litestar and Quart only run on
  asyncio, and Litestar configures the process' logging when an app is made, so they are only run
  in subprocesses.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest
from tusclient import client as tus_client

from _server import (
    CLIENT_TLS,
    OFFSET_CONTENT_TYPE,
    TUS,
    logged_process,
    serve_app,
    subprocess_env,
    upload_id_of,
    wait_until_answering,
)

if TYPE_CHECKING:
    from collections.abc import Iterator
    from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
FRAMEWORKS = ("starlette", "fastapi", "litestar", "quart")
#: the frameworks whose apps run on trio as well (through anyio)
ANYIO_FRAMEWORKS = ("starlette", "fastapi")
DATA = b"hello through the mount " * 1000


def example(framework: str) -> Path:
    return EXAMPLES / f"{framework}_app.py"


def load_example(framework: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{framework}_app", example(framework))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_checker(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        check=False,  # the assertions show the output
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=subprocess_env(),
    )


# ---------------------------------------------------------------------------------------------------
# typing


def test_every_framework_has_an_example_without_type_ignores() -> None:
    assert sorted(path.name for path in EXAMPLES.glob("*.py")) == sorted(
        example(framework).name for framework in FRAMEWORKS
    )
    for framework in FRAMEWORKS:
        source = example(framework).read_text()
        assert "type: ignore" not in source
        assert "pyright:" not in source
        # the mount's prefix is written once: TusApp serves at the mount by itself
        mount = 'PREFIX = "/uploads"' if framework == "quart" else '"/uploads"'
        assert mount in source
        assert "base_path=" not in source


@pytest.mark.slow
def test_examples_pass_mypy_strict() -> None:
    result = run_checker(sys.executable, "-m", "mypy", "--strict", "examples")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"no issues found in {len(FRAMEWORKS)} source files" in result.stdout, result.stdout


@pytest.mark.slow
def test_examples_pass_pyright() -> None:
    result = run_checker(
        sys.executable,
        "-m",
        "basedpyright",
        "--pythonpath",
        sys.executable,
        "--outputjson",
        "examples",
    )
    report: dict[str, Any] = json.loads(result.stdout)
    messages = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['severity']}: {d['message']}"
        for d in report["generalDiagnostics"]
    ]
    # standard mode (pyproject's [tool.basedpyright]): an unresolved import is an error too
    assert result.returncode == 0, "\n".join(messages) + result.stderr
    assert messages == []
    assert report["summary"]["filesAnalyzed"] == len(FRAMEWORKS)


# ---------------------------------------------------------------------------------------------------
# serving


async def upload_through_mount(http: httpx.AsyncClient, origin: str, directory: Path) -> None:
    """POST, PATCH and HEAD through ``/uploads/``; the bytes must land in *directory*."""
    created = await http.post(
        f"{origin}/uploads/", headers={**TUS, "Upload-Length": str(len(DATA))}
    )
    assert created.status_code == 201, (created.status_code, created.text)
    location = created.headers["Location"]
    assert location.startswith(f"{origin}/uploads/"), location

    patched = await http.patch(
        location,
        headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE},
        content=DATA,
    )
    assert patched.status_code == 204, (patched.status_code, patched.text)
    assert patched.headers["Upload-Offset"] == str(len(DATA))

    head = await http.head(location, headers=TUS)
    assert head.status_code == 200, head.status_code
    assert head.headers["Upload-Offset"] == str(len(DATA))
    assert head.headers["Upload-Length"] == str(len(DATA))

    assert (
        await anyio.Path(directory / f"{upload_id_of(location)}.bin").read_bytes() == DATA
    )  # tusd's layout


@pytest.mark.parametrize("framework", ANYIO_FRAMEWORKS)
async def test_example_app_serves_uploads_in_process(framework: str, tmp_path: Path) -> None:
    app = load_example(framework).create_app(tmp_path)
    async with (
        serve_app(app, path="") as origin,
        httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http,
    ):
        index = await http.get(f"{origin}/")
        assert index.status_code == 200, index.text
        assert "/uploads/" in index.text
        await upload_through_mount(http, origin, tmp_path)


@contextlib.contextmanager
def run_example(framework: str, directory: Path, log: Path) -> Iterator[str]:
    """Run ``python examples/FRAMEWORK_app.py`` on a free port (``PORT=0``: uvicorn picks one
    and logs it); yield its origin once it answers."""
    env = dict(subprocess_env(), PORT="0", ANYTUS_UPLOAD_DIR=str(directory))
    command = [sys.executable, str(example(framework))]
    with logged_process(command, log, env=env, cwd=log.parent) as process:
        yield wait_until_answering(process, log, timeout=60)


@pytest.fixture(params=FRAMEWORKS)
def served_example(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    directory = tmp_path / "uploads"
    with run_example(request.param, directory, tmp_path / "server.log") as origin:
        yield origin, directory


@pytest.mark.slow
def test_example_script_serves_uploads(served_example: tuple[str, Path]) -> None:
    origin, directory = served_example

    async def upload() -> None:
        async with httpx.AsyncClient(timeout=30, verify=CLIENT_TLS) as http:
            await upload_through_mount(http, origin, directory)

    # the server is on asyncio (uvicorn) in its own process: one client backend is enough
    anyio.run(upload, backend="asyncio")

    # and a real tus client, which knows nothing but the mount's URL (tuspy is synchronous)
    data = os.urandom(300_000)
    with io.BytesIO(data) as stream:
        uploader = tus_client.TusClient(f"{origin}/uploads/").uploader(
            file_stream=stream, chunk_size=128 * 1024, metadata={"filename": "tuspy.bin"}
        )
        uploader.upload()
    url = uploader.url
    assert isinstance(url, str), url
    assert url.startswith(f"{origin}/uploads/"), url
    assert (directory / f"{upload_id_of(url)}.bin").read_bytes() == data


def test_examples_read_the_upload_dir_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANYTUS_UPLOAD_DIR", str(tmp_path))
    assert load_example("starlette").upload_dir() == tmp_path
    monkeypatch.delenv("ANYTUS_UPLOAD_DIR")
    assert load_example("fastapi").upload_dir().name == "anytus-uploads"
