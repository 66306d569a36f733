"""anytus.client.TusClient against real tus servers: ``anytus serve`` on both backends, tusd v2.10
and tus-node-server (``@tus/server`` + ``@tus/file-store``), each a subprocess.

Every test checks the bytes the server stored. Faults are real: a TCP proxy (``_client_helpers``)
cuts connections or stalls them, servers are SIGKILLed and restarted, and an ASGI wrapper around
anytus's ``TusApp`` answers 423, 5xx and 403 where a test needs a status on cue.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from _client_helpers import Peer, PeerKind, Proxy, lazy_peers, payload, start_peer
from _server import CLIENT_TLS, TUS, serve_app, subprocess_env, upload_id_of
from anytus import (
    ConnectionFailed,
    ExtensionUnsupported,
    FileStore,
    MaxSizeExceeded,
    ResponseError,
    TusError,
)
from anytus.asgi import TusApp
from anytus.client import StoredUpload, TusClient, URLStore, default_store_path

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator

    from anytus.asgi import Receive, Scope, Send

MIB = 1 << 20
KINDS: tuple[PeerKind, ...] = ("anytus-asyncio", "anytus-trio", "tusd", "tus-node-server")


def fast_client(url: str, store: URLStore) -> TusClient:
    """A client with quick retries: these tests break things on purpose, many times."""
    return TusClient(url, store=store, retry_delay=0.005, max_retry_delay=0.05, retries=10)


@pytest.fixture(scope="module")
def peers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[PeerKind, Peer]]:
    """One server of each kind for the module (started on first use)."""
    with lazy_peers(tmp_path_factory) as started:
        yield started


@pytest.fixture(params=KINDS)
def peer(request: pytest.FixtureRequest, peers: dict[PeerKind, Peer]) -> Peer:
    kind: PeerKind = request.param
    return peers[kind]


@pytest.fixture
def store(tmp_path: Path) -> URLStore:
    return URLStore(tmp_path / "store" / "uploads.json")


async def head(url: str) -> httpx.Response:
    async with httpx.AsyncClient(verify=CLIENT_TLS) as http:
        return await http.head(url, headers=TUS)


def metadata_of(response: httpx.Response) -> dict[str, str]:
    pairs = (item.strip().partition(" ") for item in response.headers["Upload-Metadata"].split(","))
    return {key: base64.b64decode(value).decode() for key, _, value in pairs}


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await anyio.lowlevel.checkpoint()


@pytest.fixture
async def proxy_for(peer: Peer) -> AsyncIterator[Proxy]:
    async with anyio.create_task_group() as tg:
        proxy = Proxy(peer.port)
        await tg.start(proxy.run)
        yield proxy
        tg.cancel_scope.cancel()


# -- uploads on every server -----------------------------------------------------------------------


async def test_plain_upload_with_unicode_metadata(
    peer: Peer, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, 3 * MIB + 17)
    metadata = {"filename": "vidéo ünïcode 文件.bin", "filetype": "application/octet-stream"}
    async with TusClient(peer.url, store=store) as client:
        url = await client.upload(path, metadata=metadata)
        assert await client.offset(url) == 3 * MIB + 17
    assert url.startswith(peer.url)
    assert peer.stored(url) == path.read_bytes()
    assert metadata_of(await head(url)) == metadata
    assert await store.items() == {}  # a finished upload is forgotten


async def test_chunked_upload_reports_progress(peer: Peer, tmp_path: Path, store: URLStore) -> None:
    path = payload(tmp_path, 2 * MIB + 5)
    seen: list[tuple[int, int | None]] = []
    async with TusClient(peer.url, store=store) as client:
        url = await client.upload(
            path, chunk_size=512 * 1024, on_progress=lambda sent, total: seen.append((sent, total))
        )
    assert peer.stored(url) == path.read_bytes()
    assert seen[-1] == (2 * MIB + 5, 2 * MIB + 5)
    assert all(total == 2 * MIB + 5 for _, total in seen)
    assert [sent for sent, _ in seen] == sorted(sent for sent, _ in seen)


async def test_deferred_length_from_an_async_source(peer: Peer, store: URLStore) -> None:
    data = os.urandom(2 * MIB + 333)
    totals: list[int | None] = []
    async with TusClient(peer.url, store=store) as client:
        url = await client.upload(
            pieces(data, 100_000),
            chunk_size=MIB // 2,
            on_progress=lambda sent, total: totals.append(total),
        )
    assert peer.stored(url) == data
    response = await head(url)
    assert response.headers["Upload-Length"] == str(len(data))
    assert totals[0] is None
    assert totals[-1] == len(data)


async def test_async_source_with_length_and_an_empty_one(peer: Peer, store: URLStore) -> None:
    data = os.urandom(MIB + 1)
    async with TusClient(peer.url, store=store) as client:
        url = await client.upload(pieces(data, 65536), length=len(data), chunk_size=300_000)
        empty = await client.upload(pieces(b"", 1))
    assert peer.stored(url) == data
    assert peer.stored(empty) == b""
    assert (await head(empty)).headers["Upload-Length"] == "0"


async def test_async_source_is_not_buffered_whole(peer: Peer, store: URLStore) -> None:
    chunk = 256 * 1024
    pulled = 0
    sent = 0

    async def source() -> AsyncIterator[bytes]:
        nonlocal pulled
        for _ in range(64):
            # at most: the chunk being sent, the one queued, the one being filled
            assert pulled - sent <= 3 * chunk + 32768
            pulled += 32768
            yield b"x" * 32768

    def on_progress(now: int, total: int | None) -> None:
        nonlocal sent
        sent = now

    async with TusClient(peer.url, store=store) as client:
        url = await client.upload(source(), chunk_size=chunk, on_progress=on_progress)
    assert peer.stored(url) == b"x" * 64 * 32768


async def test_small_file_goes_in_the_creation_request(
    peer: Peer, proxy_for: Proxy, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, 100_000, text=True)
    async with TusClient(proxy_for.url, store=store) as client:
        url = await client.upload(path)
    assert peer.stored(upload_id_url(peer, url)) == path.read_bytes()
    methods = [line.split()[0] for line in proxy_for.requests]
    assert methods == ["OPTIONS", "POST"]  # creation-with-upload: no PATCH


def upload_id_url(peer: Peer, url: str) -> str:
    """*url* as the server itself would name it (the proxy's port replaced)."""
    return peer.url + upload_id_of(url)


async def test_parallel_upload_uses_concatenation(
    peer: Peer, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, 3 * MIB + 7)
    async with TusClient(peer.url, store=store) as client:
        if "concatenation" not in peer.extensions:
            with pytest.raises(ExtensionUnsupported, match="concatenation"):
                await client.upload(path, parallel=3)
            return
        seen: list[int] = []
        url = await client.upload(
            path,
            parallel=3,
            metadata={"filename": "parallel.bin"},
            on_progress=lambda sent, total: seen.append(sent),
        )
    assert peer.stored(url) == path.read_bytes()
    response = await head(url)
    assert response.headers["Upload-Concat"].startswith("final;")
    assert len(response.headers["Upload-Concat"].removeprefix("final;").split()) == 3
    assert metadata_of(response) == {"filename": "parallel.bin"}
    assert seen[-1] == 3 * MIB + 7
    assert await store.items() == {}


async def test_checksum_per_request(peer: Peer, tmp_path: Path, store: URLStore) -> None:
    path = payload(tmp_path, MIB + 99)
    async with TusClient(peer.url, store=store) as client:
        if "checksum" not in peer.extensions:
            with pytest.raises(ExtensionUnsupported, match="checksum"):
                await client.upload(path, checksum="sha256")
            return
        url = await client.upload(path, checksum="sha256", chunk_size=300_000)
        streamed = await client.upload(pieces(path.read_bytes(), 50_000), checksum="crc32")
    assert peer.stored(url) == path.read_bytes()
    assert peer.stored(streamed) == path.read_bytes()


async def test_terminate(peer: Peer, tmp_path: Path, store: URLStore) -> None:
    path = payload(tmp_path, 1000)
    async with TusClient(peer.url, store=store) as client:
        url = await client.upload(path)
        await client.terminate(url)
        with pytest.raises(ResponseError) as caught:
            await client.offset(url)
    assert caught.value.status_code == 404
    assert not peer.data_path(url).exists()


async def test_connection_cut_every_mebibyte(
    peer: Peer, proxy_for: Proxy, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, 5 * MIB + 3)
    proxy_for.cut_every = MIB
    async with fast_client(proxy_for.url, store) as client:
        url = await client.upload(path)
    assert proxy_for.cuts >= 4
    assert peer.stored(upload_id_url(peer, url)) == path.read_bytes()


async def test_cancelled_upload_resumes_later(
    peer: Peer, proxy_for: Proxy, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, 4 * MIB)
    proxy_for.stall_after = 2 * MIB
    async with fast_client(proxy_for.url, store) as client:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                tg.start_soon(client.upload, path)
                await proxy_for.stalled.wait()
                tg.cancel_scope.cancel()
        [entry] = (await store.items()).values()
        assert entry.url is not None
        proxy_for.release()
        first = await client.offset(entry.url)
        assert 0 < first < 4 * MIB

        resumed_from: list[int] = []
        url = await client.upload(path, on_progress=lambda sent, _: resumed_from.append(sent))
    assert url == entry.url
    assert resumed_from[0] >= first  # the server may have stored a little more since
    assert peer.stored(upload_id_url(peer, url)) == path.read_bytes()
    assert await store.items() == {}


@pytest.mark.slow
async def test_resume_after_the_server_is_killed_and_restarted(
    peer: Peer, tmp_path: Path, store: URLStore
) -> None:
    kind = peer.kind
    path = payload(tmp_path, 4 * MIB + 1)
    directory = tmp_path / "uploads"
    first_server = start_peer(kind, directory)
    first = await anyio.to_thread.run_sync(first_server.__enter__)
    second_server = start_peer(kind, directory)
    try:
        async with anyio.create_task_group() as tg:
            proxy = Proxy(first.port, stall_after=2 * MIB)
            await tg.start(proxy.run)
            uploaded: list[str] = []
            done = anyio.Event()
            # retries that outlast the restart: the client sees the server gone meanwhile
            client = TusClient(proxy.url, store=store, retry_delay=0.05, max_retry_delay=0.5)
            async with client:

                async def run() -> None:
                    uploaded.append(await client.upload(path))
                    done.set()

                tg.start_soon(run)
                with anyio.fail_after(20):
                    await proxy.stalled.wait()
                # SIGKILL mid-request, with bytes in flight; a new server on the same directory
                await anyio.to_thread.run_sync(first.kill)
                second = await anyio.to_thread.run_sync(second_server.__enter__)
                proxy.target_port = second.port
                proxy.release()
                with anyio.fail_after(30):
                    await done.wait()
            tg.cancel_scope.cancel()
        assert second.stored(upload_id_url(second, uploaded[0])) == path.read_bytes()
    finally:
        await anyio.to_thread.run_sync(second_server.__exit__, None, None, None)
        await anyio.to_thread.run_sync(first_server.__exit__, None, None, None)


# -- statuses on cue -------------------------------------------------------------------------------


class Faulty:
    """An ASGI app in front of :class:`TusApp` that answers some requests itself."""

    def __init__(self, app: TusApp, faults: dict[str, list[tuple[int, dict[str, str]]]]) -> None:
        self.app = app
        #: per method, the answers to give (in order) before letting requests through
        self.faults = faults
        self.log: list[tuple[str, int]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        pending = self.faults.get(method)
        if pending:
            status, headers = pending.pop(0)
            self.log.append((method, status))
            # read the body first: an answer while the client still sends would reach it as a
            # broken connection (also a retry, but not the one under test)
            while (await receive()).get("more_body", False):
                pass
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [(k.encode(), v.encode()) for k, v in headers.items()]
                    + [(b"content-length", b"7")],
                }
            )
            await send({"type": "http.response.body", "body": b"refused"})
            return
        statuses: list[int] = []

        async def watch(message: Any) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])
            await send(message)

        await self.app(scope, receive, watch)
        self.log.append((method, statuses[0] if statuses else 0))


@pytest.fixture
def faulty(tmp_path: Path) -> Faulty:
    return Faulty(TusApp(FileStore(tmp_path / "uploads"), max_size=64 * MIB), {})


async def test_423_and_5xx_are_retried_after_asking_the_offset(
    faulty: Faulty, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, MIB + 1)  # more than goes in the creation request
    faulty.faults["PATCH"] = [(423, {}), (503, {"Retry-After": "0"}), (500, {})]
    async with serve_app(faulty) as url, fast_client(url, store) as client:
        upload = await client.upload(path)
    assert (tmp_path / "uploads" / f"{upload_id_of(upload)}.bin").read_bytes() == path.read_bytes()
    assert faulty.log == [
        ("OPTIONS", 200),
        ("POST", 201),
        ("PATCH", 423),
        ("HEAD", 200),
        ("PATCH", 503),
        ("HEAD", 200),
        ("PATCH", 500),
        ("HEAD", 200),
        ("PATCH", 204),
    ]


async def test_retry_after_is_honoured(faulty: Faulty, tmp_path: Path, store: URLStore) -> None:
    path = payload(tmp_path, MIB + 1)
    faulty.faults["PATCH"] = [(429, {"Retry-After": "1"})]
    async with (
        serve_app(faulty) as url,
        TusClient(url, store=store, retry_delay=0.001, max_retry_delay=5) as client,
    ):
        started = anyio.current_time()
        await client.upload(path)
        assert anyio.current_time() - started >= 1.0  # not the 5 ms backoff


async def test_errors_that_retrying_cannot_fix_are_raised_at_once(
    faulty: Faulty, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, MIB + 1)
    faulty.faults["PATCH"] = [(403, {}), (403, {})]
    async with serve_app(faulty) as url, fast_client(url, store) as client:
        with pytest.raises(ResponseError) as caught:
            await client.upload(path)
        assert caught.value.status_code == 403
        assert caught.value.method == "PATCH"
        assert "refused" in str(caught.value)
        assert isinstance(caught.value, TusError)
        assert [method for method, _ in faulty.log].count("PATCH") == 1

        with pytest.raises(ResponseError) as missing:
            await client.resume(url + "0" * 32, path)
        assert missing.value.status_code == 404


async def test_retries_are_bounded(faulty: Faulty, tmp_path: Path, store: URLStore) -> None:
    path = payload(tmp_path, MIB + 1)
    faulty.faults["PATCH"] = [(503, {})] * 10
    async with (
        serve_app(faulty) as url,
        TusClient(url, store=store, retry_delay=0.001, retries=2) as client,
    ):
        with pytest.raises(ResponseError) as caught:
            await client.upload(path)
    assert caught.value.status_code == 503
    assert [method for method, _ in faulty.log].count("PATCH") == 3
    # the upload stays resumable
    assert len(await store.items()) == 1


async def test_unreachable_server(tmp_path: Path, store: URLStore) -> None:
    with anyio.fail_after(10):
        async with TusClient("http://127.0.0.1:9/files/", store=store, retries=1) as client:
            with pytest.raises(ConnectionFailed) as caught:
                await client.upload(payload(tmp_path, 10))
    assert isinstance(caught.value.__cause__, httpx.ConnectError)


async def test_max_size_is_honoured_before_sending(tmp_path: Path, store: URLStore) -> None:
    app = Faulty(TusApp(FileStore(tmp_path / "uploads"), max_size=MIB), {})
    async with serve_app(app) as url, TusClient(url, store=store) as client:
        with pytest.raises(MaxSizeExceeded):
            await client.upload(payload(tmp_path, MIB + 1))
        with pytest.raises(MaxSizeExceeded):
            await client.upload(pieces(b"x" * (MIB + 1), 65536))
    assert [method for method, _ in app.log] == ["OPTIONS", "POST"]  # only the deferred one


async def test_what_the_server_lacks_is_refused_before_creating(
    tmp_path: Path, store: URLStore
) -> None:
    inner = TusApp(FileStore(tmp_path / "uploads"))
    requests: list[str] = []

    async def creation_only(scope: Scope, receive: Receive, send: Send) -> None:
        """TusApp, with an OPTIONS answer that offers the creation extension only."""

        async def rewrite(message: Any) -> None:
            if message["type"] == "http.response.start" and scope["method"] == "OPTIONS":
                headers = [(k, v) for k, v in message["headers"] if k.lower() != b"tus-extension"]
                message = {**message, "headers": [*headers, (b"tus-extension", b"creation")]}
            await send(message)

        if scope["type"] == "http":
            requests.append(scope["method"])
        await inner(scope, receive, rewrite)

    async with serve_app(creation_only) as url, TusClient(url, store=store) as client:
        with pytest.raises(ExtensionUnsupported, match="creation-defer-length"):
            await client.upload(pieces(b"abc", 1))
        with pytest.raises(ExtensionUnsupported, match="checksum"):
            await client.upload(payload(tmp_path, 10), checksum="sha1")
        with pytest.raises(ExtensionUnsupported, match="concatenation"):
            await client.upload(payload(tmp_path, 10), parallel=2)
        with pytest.raises(ExtensionUnsupported, match="termination"):
            await client.terminate(url + "0" * 32)
        small = await client.upload(payload(tmp_path, 10))  # no creation-with-upload: a PATCH
    assert requests == ["OPTIONS", "POST", "PATCH"]
    assert (tmp_path / "uploads" / f"{upload_id_of(small)}.bin").read_bytes() == (
        tmp_path / "payload.bin"
    ).read_bytes()


async def test_resume_by_url(tmp_path: Path, store: URLStore) -> None:
    path = payload(tmp_path, MIB + 5)
    app = TusApp(FileStore(tmp_path / "uploads"))
    async with serve_app(app) as url, TusClient(url, store=store) as client:
        async with httpx.AsyncClient(verify=CLIENT_TLS) as http:
            created = await http.post(url, headers={**TUS, "Upload-Length": str(MIB + 5)})
            upload = created.headers["Location"]
            await http.patch(
                upload,
                headers={
                    **TUS,
                    "Upload-Offset": "0",
                    "Content-Type": "application/offset+octet-stream",
                },
                content=path.read_bytes()[:1000],
            )
        assert await client.offset(upload) == 1000
        assert await client.resume(upload, path) == upload
        assert await client.offset(upload) == MIB + 5
    assert (tmp_path / "uploads" / f"{upload_id_of(upload)}.bin").read_bytes() == path.read_bytes()


async def test_parallel_upload_resumes_its_parts(tmp_path: Path, store: URLStore) -> None:
    path = payload(tmp_path, 4 * MIB)
    app = TusApp(FileStore(tmp_path / "uploads"))
    async with serve_app(app) as url, anyio.create_task_group() as tg:
        proxy = Proxy(int(url.split(":")[2].split("/")[0]), stall_after=2 * MIB)
        await tg.start(proxy.run)
        async with fast_client(proxy.url, store) as client:
            async with anyio.create_task_group() as inner:
                inner.start_soon(lambda: client.upload(path, parallel=2))
                await proxy.stalled.wait()
                inner.cancel_scope.cancel()
            [entry] = (await store.items()).values()
            assert len(entry.parts) == 2
            assert entry.url is None
            proxy.release()
            final = await client.upload(path, parallel=2)
        tg.cancel_scope.cancel()
    data = (tmp_path / "uploads" / f"{upload_id_of(final)}.bin").read_bytes()
    assert data == path.read_bytes()


async def test_invalid_arguments(tmp_path: Path, store: URLStore) -> None:
    app = TusApp(FileStore(tmp_path / "uploads"))
    async with serve_app(app) as url, TusClient(url, store=store) as client:
        with pytest.raises(ValueError, match="metadata key"):
            await client.upload(payload(tmp_path, 1), metadata={"a b": "c"})
        with pytest.raises(ValueError, match="checksum"):
            await client.upload(payload(tmp_path, 1), checksum="sha3")
    with pytest.raises(RuntimeError, match="async with"):
        await TusClient(url, store=False).offset(url)


# -- the URL store ---------------------------------------------------------------------------------


async def test_url_store_round_trip(tmp_path: Path) -> None:
    store = URLStore(tmp_path / "deep" / "er" / "uploads.json")
    assert await store.get("k") is None
    await store.put("k", StoredUpload(url="http://x/files/1", size=5))
    await store.put("p", StoredUpload(parts=("http://x/files/2", "http://x/files/3")))
    entry = await store.get("k")
    assert entry is not None
    assert (entry.url, entry.size) == ("http://x/files/1", 5)
    await store.remove_url("http://x/files/3")
    assert set(await store.items()) == {"k"}
    await store.remove("k")
    assert await store.items() == {}


async def test_url_store_survives_a_damaged_file(tmp_path: Path) -> None:
    path = tmp_path / "uploads.json"
    path.write_text('{"k": {"url": 3}, "j": [1]')
    store = URLStore(path)
    assert await store.items() == {}
    await store.put("k", StoredUpload(url="http://x/files/1"))
    assert json.loads(path.read_text())["k"]["url"] == "http://x/files/1"


def test_default_store_follows_the_platform_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if sys.platform in ("win32", "darwin"):
        pytest.skip("the XDG convention is for Linux and other Unixes")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_store_path() == tmp_path / "anytus" / "uploads.json"
    assert URLStore().path == tmp_path / "anytus" / "uploads.json"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    assert default_store_path() == Path.home() / ".cache" / "anytus" / "uploads.json"


# -- anytus upload ---------------------------------------------------------------------------------


def run_cli(*args: str, cache: Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = dict(subprocess_env(), XDG_CACHE_HOME=str(cache), **kwargs.pop("env", {}))
    return subprocess.run(
        [sys.executable, "-m", "anytus", "upload", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        **kwargs,
    )


def test_cli_uploads_files_and_prints_urls(peers: dict[PeerKind, Peer], tmp_path: Path) -> None:
    peer = peers["anytus-trio"]
    first, second = payload(tmp_path, MIB + 1, "one.bin"), payload(tmp_path, 10, "twö.bin")
    result = run_cli(
        str(first),
        str(second),
        *("--endpoint", peer.url, "--metadata", "owner=ünï", "--header", "X-Trace: 1"),
        *("--chunk-size", "256K", "--parallel", "2", "--checksum", "sha1"),
        cache=tmp_path / "cache",
    )
    assert result.returncode == 0, result.stderr
    urls = result.stdout.split()
    assert len(urls) == 2
    assert peer.stored(urls[0]) == first.read_bytes()
    assert peer.stored(urls[1]) == second.read_bytes()
    info = json.loads((peer.directory / f"{upload_id_of(urls[1])}.info").read_text())
    assert info["MetaData"] == {"filename": "twö.bin", "owner": "ünï"}


def test_cli_exit_status_when_a_file_fails(peers: dict[PeerKind, Peer], tmp_path: Path) -> None:
    peer = peers["tus-node-server"]
    good = payload(tmp_path, 1000, "good.bin")
    # longer than a line: the error names the whole path, unwrapped, so it can be copied
    missing = tmp_path / ("d" * 90) / "missing.bin"
    result = run_cli(str(missing), str(good), *("--endpoint", peer.url), cache=tmp_path / "cache")
    assert result.returncode == 1
    assert f"anytus: {missing}: " in result.stderr
    [url] = result.stdout.split()
    assert peer.stored(url) == good.read_bytes()

    refused = run_cli(str(good), "--endpoint", peer.url, "--parallel", "2", cache=tmp_path)
    assert refused.returncode == 1
    assert "concatenation" in refused.stderr
    assert refused.stdout == ""


@contextlib.contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Children started within get Ctrl-C's SIGINT as from a terminal, even when this process
    was started with SIGINT ignored (as a background job is: ``nohup pytest &``), because
    ignored signals are inherited across ``exec`` while handled ones are reset to the default.
    A child that inherits SIGINT ignored rightly ignores Ctrl-C, as a background job should."""
    ignored = signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    if ignored:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if ignored:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


@pytest.mark.slow
def test_cli_resumes_an_interrupted_run(peers: dict[PeerKind, Peer], tmp_path: Path) -> None:
    peer = peers["tusd"]
    path = payload(tmp_path, 6 * MIB, "big.bin")
    cache = tmp_path / "cache"
    with anyio.from_thread.start_blocking_portal() as portal:
        # made in the portal's event loop: its events belong there
        proxy = portal.call(lambda: Proxy(peer.port, stall_after=3 * MIB))
        future, _ = portal.start_task(proxy.run)
        command = [sys.executable, "-m", "anytus", "upload", str(path), "--endpoint", proxy.url]
        with sigint_not_ignored():
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                # a client that hangs instead can be made to print its threads' stacks (SIGABRT)
                env=dict(subprocess_env(), XDG_CACHE_HOME=str(cache), PYTHONFAULTHANDLER="1"),
            )
        portal.call(proxy.stalled.wait)
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, err = process.communicate(timeout=30)
            pytest.fail(f"the client did not stop within 30 s of SIGINT; where it was:\n{err}")
        assert process.returncode == 130, err
        assert out == ""
        assert "again" in err
        [entry] = json.loads((cache / "anytus" / "uploads.json").read_text()).values()
        # cut the stalled connection (tusd holds the upload's lock while it is open)
        portal.call(proxy.release)
        response = httpx.head(
            upload_id_url(peer, entry["url"]), headers=TUS, timeout=30, verify=CLIENT_TLS
        )
        assert 0 < int(response.headers["Upload-Offset"]) < 6 * MIB

        again = run_cli(str(path), "--endpoint", proxy.url, cache=cache)
        future.cancel()
    assert again.returncode == 0, again.stderr
    assert again.stdout.split() == [entry["url"]]
    assert peer.stored(entry["url"]) == path.read_bytes()
    assert json.loads((cache / "anytus" / "uploads.json").read_text()) == {}


def test_readme_client_example(peers: dict[PeerKind, Peer], tmp_path: Path) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    [example] = [
        block
        for block in re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
        if "anytus.client" in block
    ]
    code = example.replace("http://127.0.0.1:1080/files/", peers["anytus-asyncio"].url)
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=dict(subprocess_env(), XDG_CACHE_HOME=str(tmp_path / "cache")),
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["11", "3000"]


def test_cli_without_the_client_extra(tmp_path: Path) -> None:
    # a stand-in httpx that cannot be imported, as when anytus[client] is not installed
    shim = tmp_path / "shim" / "httpx"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError('No module named httpx')\n")
    env = subprocess_env()
    env["PYTHONPATH"] = f"{shim.parent}{os.pathsep}{env['PYTHONPATH']}"
    result = subprocess.run(
        [sys.executable, "-m", "anytus", "upload", "x", "--endpoint", "http://127.0.0.1:9/"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "anytus upload needs the client extra: pip install 'anytus[client]'"
    ]
