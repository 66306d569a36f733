"""``TusClient(protocol="draft")``: the IETF resumable-upload draft, against real servers.

``anytus serve`` on both backends (the draft is on by default; the trio backend, anytus's h11
server, sends the 104) and tusd v2.10 with ``-enable-experimental-protocol`` (interop 3-6; the
client steps down to 6). Every test checks the bytes the server stored. Cuts are real: the TCP
proxy of ``_client_helpers`` breaks or stalls connections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import pytest

from _client_helpers import Peer, PeerKind, Proxy, lazy_peers, payload, start_peer
from _server import serve_app, subprocess_env, upload_id_of
from anytus import ExtensionUnsupported, FileStore, MaxSizeExceeded, ResponseError
from anytus._sfv import dict_ints, parse_dict
from anytus.asgi import TusApp
from anytus.client import StoredUpload, TusClient, URLStore
from anytus.client._draftclient import DRAFT_VERSIONS
from test_client import Faulty

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

MIB = 1 << 20
KINDS: tuple[PeerKind, ...] = ("anytus-asyncio", "anytus-trio", "tusd")
#: the newest interop version each server speaks
NEWEST = {"anytus-asyncio": 10, "anytus-trio": 10, "tusd": 6}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[PeerKind, Peer]]:
    """One server of each kind for the module, started on first use."""

    def extra(kind: PeerKind) -> tuple[str, ...]:
        return ("-enable-experimental-protocol",) if kind == "tusd" else ()

    with lazy_peers(tmp_path_factory, extra) as started:
        yield started


@pytest.fixture(params=KINDS)
def server(request: pytest.FixtureRequest, servers: dict[PeerKind, Peer]) -> Peer:
    kind: PeerKind = request.param
    return servers[kind]


@pytest.fixture
def store(tmp_path: Path) -> URLStore:
    return URLStore(tmp_path / "store" / "uploads.json")


def draft_client(url: str, store: URLStore | bool, **kwargs: Any) -> TusClient:
    """A draft client with quick retries: these tests break things on purpose."""
    return TusClient(
        url,
        store=store,
        protocol="draft",
        retry_delay=0.005,
        max_retry_delay=0.05,
        retries=10,
        **kwargs,
    )


async def pieces(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]
        await anyio.lowlevel.checkpoint()


@pytest.fixture
async def proxy_for(server: Peer) -> AsyncIterator[Proxy]:
    async with anyio.create_task_group() as tg:
        proxy = Proxy(server.port)
        await tg.start(proxy.run)
        yield proxy
        tg.cancel_scope.cancel()


def on_server(server: Peer, url: str) -> str:
    """*url* as the server names it (a proxy's port replaced)."""
    return url.replace(url.split("/")[2], f"127.0.0.1:{server.port}")


# -- uploads on every server -----------------------------------------------------------------------


async def test_whole_files_negotiate_then_go_in_one_request(
    server: Peer, proxy_for: Proxy, tmp_path: Path, store: URLStore
) -> None:
    first = payload(tmp_path, 300_000, "first.bin", text=True)
    second = payload(tmp_path, 2 * MIB + 3, "second.bin", text=True)
    seen: list[tuple[int, int | None]] = []
    async with draft_client(proxy_for.url, store) as client:
        assert client.draft_version is None
        url1 = await client.upload(first)
        # the first creation negotiated the newest version the server speaks
        assert client.draft_version == NEWEST[server.kind]
        url2 = await client.upload(second, on_progress=lambda s, t: seen.append((s, t)))
    assert server.stored(on_server(server, url1)) == first.read_bytes()
    assert server.stored(on_server(server, url2)) == second.read_bytes()
    methods = [line.split()[0] for line in proxy_for.requests]
    # negotiation: one bodiless POST per version tried, then the append; then one POST with
    # the whole second file (Upload-Complete: ?1)
    tries = DRAFT_VERSIONS.index(NEWEST[server.kind]) + 1
    assert methods == ["POST"] * tries + ["PATCH", "POST"]
    assert seen[-1] == (second.stat().st_size, second.stat().st_size)
    assert await store.get(f"{proxy_for.url} draft x") is None
    assert store.path.exists() is False or "draft" not in store.path.read_text()


async def test_chunked_upload(server: Peer, tmp_path: Path, store: URLStore) -> None:
    path = payload(tmp_path, MIB + 17)
    seen: list[int] = []
    async with draft_client(server.url, store) as client:
        url = await client.upload(
            path, chunk_size=256 << 10, on_progress=lambda s, t: seen.append(s)
        )
        assert await client.offset(url) == MIB + 17
    assert server.stored(url) == path.read_bytes()
    assert seen == sorted(seen)
    assert seen[-1] == MIB + 17


async def test_deferred_length_from_an_async_source(server: Peer, store: URLStore) -> None:
    data = os.urandom(3 * MIB + 5)
    async with draft_client(server.url, store) as client:
        url = await client.upload(pieces(data, 100_000), chunk_size=MIB)
    assert server.stored(url) == data


async def test_async_source_with_length_and_empty_ones(server: Peer, store: URLStore) -> None:
    data = os.urandom(MIB + 1)
    async with draft_client(server.url, store) as client:
        url = await client.upload(pieces(data, 65536), length=len(data), chunk_size=MIB // 2)
        empty = await client.upload(pieces(b"", 1), length=0)
        empty_deferred = await client.upload(pieces(b"", 1))
    assert server.stored(url) == data
    assert server.stored(empty) == b""
    assert server.stored(empty_deferred) == b""


async def test_connection_cut_every_mebibyte(
    server: Peer, proxy_for: Proxy, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, 5 * MIB)
    proxy_for.cut_every = MIB
    async with draft_client(proxy_for.url, store) as client:
        url = await client.upload(path)
        # negotiated: the next creation carries the file, and is cut too
        url2 = await client.upload(path, resume=False)
    assert proxy_for.cuts >= 8
    assert server.stored(on_server(server, url)) == path.read_bytes()
    assert server.stored(on_server(server, url2)) == path.read_bytes()


async def test_cancelled_upload_resumes_later(
    server: Peer, proxy_for: Proxy, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, 4 * MIB)
    proxy_for.stall_after = 2 * MIB
    async with draft_client(proxy_for.url, store) as client:
        with anyio.CancelScope() as scope:

            async def cancel_when_stalled() -> None:
                await proxy_for.stalled.wait()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_stalled)
                await client.upload(path)
        assert scope.cancelled_caught
        proxy_for.release()
        stored = list((await store.items()).values())
        assert len(stored) == 1
        assert stored[0].url is not None
    # a new client (as a new process would have) finds it in the store
    async with draft_client(proxy_for.url, store) as client:
        url = await client.upload(path)
        assert client.draft_version == NEWEST[server.kind]
    assert url == stored[0].url  # the same upload, continued
    assert server.stored(on_server(server, url)) == path.read_bytes()
    assert proxy_for.requests.count("POST /files/") == NEWEST_TRIES[server.kind]


NEWEST_TRIES = {kind: DRAFT_VERSIONS.index(version) + 1 for kind, version in NEWEST.items()}


async def test_offset_resume_and_terminate(
    server: Peer, proxy_for: Proxy, tmp_path: Path, store: URLStore
) -> None:
    path = payload(tmp_path, 2 * MIB)
    proxy_for.stall_after = MIB
    async with draft_client(proxy_for.url, store) as client:
        with anyio.CancelScope() as scope:

            async def cancel_when_stalled() -> None:
                await proxy_for.stalled.wait()
                scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(cancel_when_stalled)
                await client.upload(path)
        proxy_for.release()
    (entry,) = (await store.items()).values()
    assert entry.url is not None
    url = on_server(server, entry.url)
    async with draft_client(server.url, False) as client:
        assert 0 <= await client.offset(url) < 2 * MIB
        assert await client.resume(url, path) == url
        assert await client.offset(url) == 2 * MIB
        assert server.stored(url) == path.read_bytes()
        await client.terminate(url)
        with pytest.raises(ResponseError, match=r"404|410"):
            await client.offset(url)


# -- versions --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["anytus-asyncio", "anytus-trio"])
@pytest.mark.parametrize("version", [6, 7, 8, 9])
async def test_a_pinned_version_is_used(
    kind: PeerKind, version: int, servers: dict[PeerKind, Peer], tmp_path: Path, store: URLStore
) -> None:
    server = servers[kind]
    path = payload(tmp_path, 200_000)
    async with draft_client(server.url, store, draft_version=version) as client:
        url = await client.upload(path, chunk_size=64 << 10)
        assert client.draft_version == version
    assert server.stored(url) == path.read_bytes()


async def test_a_version_the_server_lacks_is_refused(
    servers: dict[PeerKind, Peer], tmp_path: Path, store: URLStore
) -> None:
    tusd = servers["tusd"]
    path = payload(tmp_path, 1000)
    async with draft_client(tusd.url, store, draft_version=7) as client:
        with pytest.raises(ExtensionUnsupported, match="interop version 7"):
            await client.upload(path)
    assert list(tusd.directory.glob("*.info")) == [] or all(
        "draft" not in p.read_text() for p in tusd.directory.glob("*.info")
    )


async def test_a_tus_only_server_is_refused(tmp_path: Path, store: URLStore) -> None:
    with start_peer("anytus-asyncio", tmp_path / "files", "--no-draft") as server:
        async with draft_client(server.url, store) as client:
            with pytest.raises(ExtensionUnsupported, match="10, 9, 8, 7, 6"):
                await client.upload(payload(tmp_path, 10))
        assert list(server.directory.glob("*.info")) == []


async def test_tusd_pinned_at_6(servers: dict[PeerKind, Peer], tmp_path: Path) -> None:
    tusd = servers["tusd"]
    path = payload(tmp_path, 300_000)
    async with draft_client(tusd.url, False, draft_version=6) as client:
        first = await client.upload(path)  # one bodiless creation: no stepping down
        second = await client.upload(path, chunk_size=100_000)
        assert client.draft_version == 6
    assert tusd.stored(first) == path.read_bytes()
    assert tusd.stored(second) == path.read_bytes()


def test_invalid_draft_arguments() -> None:
    with pytest.raises(ValueError, match="draft_version"):
        TusClient("http://127.0.0.1:1/files/", protocol="draft", draft_version=5)
    with pytest.raises(ValueError, match="protocol"):
        TusClient("http://127.0.0.1:1/files/", protocol="tus2")  # type: ignore[arg-type]


async def test_draft_has_no_parallel_or_checksum(tmp_path: Path) -> None:
    async with draft_client("http://127.0.0.1:1/files/", False) as client:
        with pytest.raises(ValueError, match="concatenation"):
            await client.upload(payload(tmp_path, 10), parallel=2)
        with pytest.raises(ValueError, match="checksum"):
            await client.upload(payload(tmp_path, 10), checksum="sha1")


# -- Upload-Limit ----------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
async def test_upload_limit_is_honoured(backend: str, tmp_path: Path, store: URLStore) -> None:
    with start_peer(f"anytus-{backend}", tmp_path / "files", "--max-size", "1000") as server:  # type: ignore[arg-type]
        async with draft_client(server.url, store) as client:
            with pytest.raises(MaxSizeExceeded):
                await client.upload(payload(tmp_path, 1001))
            assert await client.upload(payload(tmp_path, 1000, "ok.bin"))
            # negotiated: the creation carries the content; the server's 413 comes while it is
            # still being sent, and ends the request
            with pytest.raises(MaxSizeExceeded):
                await client.upload(payload(tmp_path, 2 * MIB, "big.bin"))
            assert len(list(server.directory.glob("*.info"))) == 1  # ok.bin only
            with pytest.raises(MaxSizeExceeded):
                await client.upload(pieces(b"x" * 1500, 100), chunk_size=100)
            with pytest.raises(MaxSizeExceeded):
                await client.upload(pieces(b"x" * 1500, 100), length=1500)


async def test_filetype_is_the_content_type(servers: dict[PeerKind, Peer], tmp_path: Path) -> None:
    server = servers["anytus-trio"]
    path = payload(tmp_path, 100)
    async with draft_client(server.url, False) as client:
        first = await client.upload(path, metadata={"filetype": "text/plain"})
        second = await client.upload(path, metadata={"filetype": "image/png", "name": "x"})
        with pytest.raises(ValueError, match="filetype"):
            await client.upload(path, metadata={"filetype": "text/plain\n"})
    for url, filetype in ((first, "text/plain"), (second, "image/png")):
        info = json.loads(server.data_path(url).with_suffix(".info").read_text())
        assert info["MetaData"]["filetype"] == filetype


def test_upload_limit_parsing() -> None:
    assert dict_ints("max-size=1000, max-age=60") == {"max-size": 1000, "max-age": 60}
    assert dict_ints("min-size=0,max-size=5") == {"min-size": 0, "max-size": 5}
    assert dict_ints("max-size=1.5") == {}
    assert dict_ints("max-size=1,") == {}
    assert dict_ints("max-size=1;x=2, flag") == {"max-size": 1}
    assert dict_ints(None) == {}
    assert parse_dict("a, b=?0") == {"a": True, "b": False}


# -- the 104: a cut creation resumes at the URL it named ---------------------------------------------


@pytest.mark.parametrize("kind", ["anytus-trio", "tusd"])
async def test_cut_creation_resumes_from_the_104(
    kind: PeerKind, servers: dict[PeerKind, Peer], tmp_path: Path
) -> None:
    # anytus's h11 server (`anytus serve --backend trio`) sends the 104, and so does tusd
    server = servers[kind]
    path = payload(tmp_path, 3 * MIB, text=True)
    remembered = anyio.Event()

    class WatchedStore(URLStore):
        async def put(self, key: str, entry: StoredUpload) -> None:
            await super().put(key, entry)
            remembered.set()

    store = WatchedStore(tmp_path / "store.json")
    proxy = Proxy(server.port)
    async with anyio.create_task_group() as tg:
        await tg.start(proxy.run)
        async with draft_client(proxy.url, store) as client:
            # negotiate first (a creation without content), so that the next one carries the file
            await client.upload(payload(tmp_path, 10, "small.bin", text=True))
            proxy.requests.clear()
            remembered = anyio.Event()
            proxy.stall_after = proxy.forwarded + MIB

            async def cut_after_the_104() -> None:
                await proxy.stalled.wait()
                # the client kept the 104's URL while the body was still going out (a server
                # without 104s would leave this waiting: fail instead)
                with anyio.fail_after(10):
                    await remembered.wait()
                proxy.release()

            tg.start_soon(cut_after_the_104)
            url = await client.upload(path)
        tg.cancel_scope.cancel()
    # one creation, cut; then the offset from the 104's URL, and the rest appended
    methods = [line.split()[0] for line in proxy.requests]
    assert methods[0] == "POST"
    assert methods.count("POST") == 1
    assert methods[1] == "HEAD"
    assert "PATCH" in methods
    assert server.stored(url) == path.read_bytes()


# -- the command line --------------------------------------------------------------------------------


def test_cli_upload_draft(servers: dict[PeerKind, Peer], tmp_path: Path) -> None:
    server = servers["anytus-asyncio"]
    path = payload(tmp_path, 70_000)
    for extra in (["--draft"], ["--draft-version", "8"]):
        result = subprocess.run(
            [
                sys.executable, "-m", "anytus", "upload", str(path), "--endpoint", server.url,
                *extra,
            ],
            capture_output=True,
            text=True,
            env={**subprocess_env(), "XDG_CACHE_HOME": str(tmp_path / "cache")},
            timeout=60,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        url = result.stdout.split()[-1]
        assert server.stored(url) == path.read_bytes()
    refused = subprocess.run(
        [
            sys.executable, "-m", "anytus", "upload", str(path), "--endpoint", server.url,
            "--draft", "--parallel", "2",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        timeout=60,
        check=False,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "no --parallel" in refused.stderr


# -- statuses on cue -------------------------------------------------------------------------------


async def test_423_and_5xx_are_retried_after_asking_the_offset(
    tmp_path: Path, store: URLStore
) -> None:
    faulty = Faulty(TusApp(FileStore(tmp_path / "uploads")), {})
    path = payload(tmp_path, 100_000)
    faulty.faults["PATCH"] = [(423, {}), (503, {"Retry-After": "0"}), (500, {})]
    async with serve_app(faulty) as url, draft_client(url, store) as client:
        first = await client.upload(path)
        faulty.faults["POST"] = [(503, {}), (429, {})]
        second = await client.upload(path, resume=False)
    for upload in (first, second):
        stored = tmp_path / "uploads" / f"{upload_id_of(upload)}.bin"
        assert stored.read_bytes() == path.read_bytes()
    assert faulty.log == [
        ("POST", 201),  # negotiated at once: 10
        ("PATCH", 423),
        ("HEAD", 204),
        ("PATCH", 503),
        ("HEAD", 204),
        ("PATCH", 500),
        ("HEAD", 204),
        ("PATCH", 200),
        ("POST", 503),
        ("POST", 429),
        ("POST", 201),
    ]
