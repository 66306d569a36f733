"""Behind a reverse proxy, over HTTPS, across origins (issue #7, item 9).

- tables: the proxy headers as :mod:`anytus._protocol` reads them, and the upload URLs
  :meth:`TusCore.upload_url` builds from them (no server, no loop);
- a real HTTP server (hypercorn, in the test's loop: both backends): ``behind_proxy`` changes
  ``Location`` and only then, hostile values never cost a 500 and never reach a header, a final
  upload accepts the URLs the proxy gave out, and ``cors_allow_origins`` restricts origins;
- ``anytus serve --certfile/--keyfile --behind-proxy --cors-origins`` as a subprocess on each
  backend, spoken to over HTTPS with a CA made for the test (trustme).
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from typing import TYPE_CHECKING, Literal

import httpx
import pytest
import trustme

from _server import (
    CLIENT_TLS,
    OFFSET_CONTENT_TYPE,
    TUS,
    TusClient,
    run_server_process,
    serve_app,
    subprocess_env,
    upload_id_of,
)
from anytus import ConnectionFailed, FileStore, MemoryStore
from anytus._core import TusCore
from anytus._protocol import (
    Forwarded,
    forwarded,
    parse_concat,
    parse_forwarded,
    parse_forwarded_prefix,
)
from anytus.asgi import TusApp
from anytus.client import TusClient as Client

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

ID = "0123456789abcdef0123456789abcdef"

# -- tables: reading the proxy's headers ------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("host=up.example;proto=https", Forwarded(host="up.example", proto="https")),
        # the first element is the one the proxy nearest the client added
        ("host=a.example, host=b.example", Forwarded(host="a.example")),
        (
            "for=192.0.2.1;host=a.example;proto=https;by=x",
            Forwarded(host="a.example", proto="https"),
        ),
        # names are case-insensitive, a proto too; quoted values are unquoted
        (
            'Host="[2001:db8::1]:8443";PROTO=HTTPS',
            Forwarded(host="[2001:db8::1]:8443", proto="https"),
        ),
        ('host="up.example:8080"', Forwarded(host="up.example:8080")),
        # empty elements and pairs are allowed by the grammar
        (" , ;host=up.example;;", Forwarded(host="up.example")),
        ("for=x", Forwarded()),
        ("", Forwarded()),
        # an unknown proto is dropped, as tusd does; the host still counts
        ("proto=ftp;host=up.example", Forwarded(host="up.example")),
        ("proto=javascript", Forwarded()),
        # malformed: the whole header says nothing
        ("host=a.example;host=b.example", Forwarded()),
        ("host=a b", Forwarded()),
        # a port makes the value a quoted-string (":" is no token character)
        ("host=up.example:8080", Forwarded()),
        ("host", Forwarded()),
        ("host=", Forwarded()),
        ('host="unterminated', Forwarded()),
        ("host=a.example proto=https", Forwarded()),
        # hostile hosts: nothing that could leave the Location header or change the URL's shape
        ('host="evil.example\r\nSet-Cookie: x=1"', Forwarded()),
        ('host="evil.example/path"', Forwarded()),
        ('host="user@evil.example"', Forwarded()),
        ('host="evil.example?x"', Forwarded()),
        ('host="evil .example"', Forwarded()),
        ('host="\\"quoted\\""', Forwarded()),
        (f"host={'a' * 2000}", Forwarded()),
        ('host="é.example"', Forwarded()),
    ],
)
def test_parse_forwarded(value: str, expected: Forwarded) -> None:
    assert parse_forwarded(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/api", "/api"),
        ("/api/", "/api"),
        ("/api/v1", "/api/v1"),
        ("/a%20b", "/a%20b"),
        ("/", ""),
        ("", ""),
        # not a plain absolute path
        ("api", None),
        ("//evil.example", None),  # a protocol-relative URL
        ("/a//b", None),
        ("/a/../b", None),
        ("/.", None),
        ("/%2e%2E/x", None),  # dot segments in disguise
        ("/a%zz", None),
        ("/a b", None),
        ("/a\r\nx: y", None),
        ("/a?b", None),
        ("/a#b", None),
        ("/é", None),
        ("/" + "a" * 2000, None),
    ],
)
def test_parse_forwarded_prefix(value: str, expected: str | None) -> None:
    assert parse_forwarded_prefix(value) == expected


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, Forwarded()),
        (
            {"x-forwarded-host": "up.example", "x-forwarded-proto": "https"},
            Forwarded(host="up.example", proto="https"),
        ),
        # lists: the first
        (
            {"x-forwarded-host": "a.example, b.example", "x-forwarded-proto": "https, http"},
            Forwarded(host="a.example", proto="https"),
        ),
        # Forwarded wins over X-Forwarded-* (tusd), part by part
        (
            {
                "forwarded": "host=std.example",
                "x-forwarded-host": "x.example",
                "x-forwarded-proto": "https",
            },
            Forwarded(host="std.example", proto="https"),
        ),
        # a part Forwarded gets wrong falls back to X-Forwarded-*
        (
            {"forwarded": "proto=gopher;host=std.example", "x-forwarded-proto": "https"},
            Forwarded(host="std.example", proto="https"),
        ),
        ({"x-forwarded-proto": "HTTPS"}, Forwarded(proto="https")),
        ({"x-forwarded-proto": "wss"}, Forwarded()),
        ({"x-forwarded-host": "evil.example/x"}, Forwarded()),
        ({"x-forwarded-prefix": "/api/"}, Forwarded(prefix="/api")),
        ({"x-forwarded-prefix": "/api, /other"}, Forwarded(prefix="/api")),
        ({"x-forwarded-prefix": "//evil.example"}, Forwarded()),
    ],
)
def test_forwarded_headers(headers: Mapping[str, str], expected: Forwarded) -> None:
    assert forwarded(headers) == expected


def make_core(*, behind_proxy: bool, base_path: str = "/files/") -> TusCore:
    return TusCore(
        base_path=base_path,
        max_size=None,
        expire_after=None,
        cors_allow_origins=("*",),
        max_metadata_size=4096,
        extensions=("creation", "concatenation"),
        behind_proxy=behind_proxy,
    )


PROXIED = {
    "forwarded": 'for=192.0.2.1;host="up.example";proto=https',
    "x-forwarded-prefix": "/tus",
}


@pytest.mark.parametrize(
    ("behind_proxy", "scheme", "headers", "url"),
    [
        (False, "http", {"host": "127.0.0.1:8080"}, f"http://127.0.0.1:8080/files/{ID}"),
        (False, "https", {"host": "a.example"}, f"https://a.example/files/{ID}"),
        # not behind a proxy: its headers are anyone's, and ignored
        (False, "http", {"host": "127.0.0.1", **PROXIED}, f"http://127.0.0.1/files/{ID}"),
        (True, "http", {"host": "127.0.0.1", **PROXIED}, f"https://up.example/tus/files/{ID}"),
        # no Forwarded: X-Forwarded-*
        (
            True,
            "http",
            {"host": "10.0.0.5:1080", "x-forwarded-host": "up.example:8443"},
            f"http://up.example:8443/files/{ID}",
        ),
        (
            True,
            "http",
            {"host": "up.example", "x-forwarded-proto": "https"},
            f"https://up.example/files/{ID}",
        ),
        # the scheme's default port is no port (tusd)
        (
            True,
            "http",
            {"host": "h", "x-forwarded-host": "up.example:443", "x-forwarded-proto": "https"},
            f"https://up.example/files/{ID}",
        ),
        (
            True,
            "https",
            {"host": "h", "forwarded": 'host="up.example:80";proto=http'},
            f"http://up.example/files/{ID}",
        ),
        (
            True,
            "http",
            {"host": "h", "forwarded": 'host="up.example:443";proto=http'},
            f"http://up.example:443/files/{ID}",
        ),
        # hostile or malformed: ignored, the URL is what the server knows without them
        (
            True,
            "http",
            {
                "host": "127.0.0.1:1080",
                "forwarded": 'host="evil\r\nx: y"',
                "x-forwarded-host": "evil.example/phish",
                "x-forwarded-proto": "javascript",
                "x-forwarded-prefix": "//evil.example",
            },
            f"http://127.0.0.1:1080/files/{ID}",
        ),
        # no usable Host either: the server's address
        (True, "http", {"host": "bad host"}, f"http://127.0.0.1:1080/files/{ID}"),
    ],
)
def test_upload_url(behind_proxy: bool, scheme: str, headers: Mapping[str, str], url: str) -> None:
    core = make_core(behind_proxy=behind_proxy)
    request = core.normalize("POST", "/files/", dict(headers))
    assert core.upload_url(request, ID, scheme=scheme, server=("127.0.0.1", 1080)) == url


def test_upload_url_under_a_mount_keeps_the_mount_after_the_proxy_prefix() -> None:
    core = make_core(behind_proxy=True)
    request = core.normalize("POST", "/uploads/", {"host": "h", **PROXIED}, base_path="/uploads/")
    url = core.upload_url(request, ID, scheme="http", server=None)
    assert url == f"https://up.example/tus/uploads/{ID}"


@pytest.mark.parametrize(
    "url",
    [
        f"https://up.example/tus/files/{ID}",
        f"/tus/files/{ID}",
        f"/files/{ID}",
        ID,
    ],
)
def test_a_final_upload_takes_the_urls_the_proxy_gave_out(url: str) -> None:
    assert parse_concat(f"final;{url}", "/files/", prefix="/tus").partial_ids == (ID,)


@pytest.mark.parametrize("url", [f"/other/files/{ID}", f"/tus/tus/files/{ID}", "/tus/files/"])
def test_a_final_upload_refuses_other_urls(url: str) -> None:
    from anytus import InvalidHeader

    with pytest.raises(InvalidHeader):
        parse_concat(f"final;{url}", "/files/", prefix="/tus")


# -- over real HTTP, in process (both backends) ------------------------------------------------------

HOSTILE = [
    # (CR, LF and other controls cannot cross HTTP/1.1: the tables above have them)
    {"Forwarded": 'host="evil.example\\"'},
    {"Forwarded": 'host="evil.example\tx"'},
    {"Forwarded": "host=a;host=b;proto=https"},
    {"Forwarded": "=;=,,;"},
    {"Forwarded": "host=" + "a" * 10_000},
    {"X-Forwarded-Host": "evil.example/login?next="},
    {"X-Forwarded-Host": "user:pass@evil.example"},
    {"X-Forwarded-Proto": "javascript"},
    {"X-Forwarded-Prefix": "//evil.example"},
    {"X-Forwarded-Prefix": "/../../etc"},
    {"X-Forwarded-Prefix": "/a\tb"},
    {"X-Forwarded-Prefix": "/é".encode().decode("latin-1")},
    {"X-Forwarded-Host": "\xff\xfe", "X-Forwarded-Proto": "\xff"},
]


async def test_behind_proxy_location_follows_the_proxy(tmp_path: Path) -> None:
    app = TusApp(FileStore(tmp_path), behind_proxy=True)
    async with serve_app(app) as url, httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        tus = TusClient(http, url)
        created = await tus.create(
            5,
            headers={
                "Forwarded": 'for=192.0.2.60;proto=https;host="uploads.example:8443"',
                "X-Forwarded-Host": "ignored.example",
                "X-Forwarded-Prefix": "/tus",
            },
        )
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        upload_id = upload_id_of(location)
        assert location == f"https://uploads.example:8443/tus/files/{upload_id}"

        created = await tus.create(
            5, headers={"X-Forwarded-Host": "up.example", "X-Forwarded-Proto": "https"}
        )
        assert created.headers["Location"].startswith("https://up.example/files/")

        # the upload itself is reached as the proxy passes it on: without the prefix
        patched = await tus.patch(upload_id, 0, b"hello")
        assert patched.status_code == 204, patched.text
        assert (tmp_path / f"{upload_id}.bin").read_bytes() == b"hello"


async def test_without_behind_proxy_the_headers_are_ignored(tmp_path: Path) -> None:
    app = TusApp(FileStore(tmp_path))
    async with serve_app(app) as url, httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        created = await TusClient(http, url).create(
            5,
            headers={
                "Forwarded": "proto=https;host=evil.example",
                "X-Forwarded-Host": "evil.example",
                "X-Forwarded-Proto": "https",
                "X-Forwarded-Prefix": "/evil",
            },
        )
        assert created.status_code == 201
        assert created.headers["Location"].startswith(f"{url}")


@pytest.mark.parametrize("headers", HOSTILE)
async def test_hostile_proxy_headers_fall_back_without_a_500(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    app = TusApp(FileStore(tmp_path), behind_proxy=True)
    async with serve_app(app) as url, httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        created = await http.post(
            url,
            headers=[
                (b"Tus-Resumable", b"1.0.0"),
                (b"Upload-Length", b"5"),
                *((name.encode(), value.encode("latin-1")) for name, value in headers.items()),
            ],
        )
        assert created.status_code == 201, created.text
        location = created.headers["Location"]
        # exactly the URL the server knows of itself: nothing of the hostile value got in
        assert location == f"{url}{upload_id_of(location)}"
        assert "evil" not in str(created.headers)
        head = await http.head(location, headers=TUS)
        assert head.status_code == 200


async def test_a_final_upload_through_the_proxy_prefix(tmp_path: Path) -> None:
    app = TusApp(FileStore(tmp_path), behind_proxy=True)
    proxy = {"X-Forwarded-Host": "up.example", "X-Forwarded-Prefix": "/tus"}
    async with serve_app(app) as url, httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        tus = TusClient(http, url)
        urls = []
        for part in (b"hello ", b"world"):
            created = await tus.create(
                len(part), headers={**proxy, "Upload-Concat": "partial"}, body=part
            )
            assert created.status_code == 201, created.text
            urls.append(created.headers["Location"])
        assert all(u.startswith("http://up.example/tus/files/") for u in urls)
        final = await http.post(
            url, headers={**TUS, **proxy, "Upload-Concat": "final;" + " ".join(urls)}
        )
        assert final.status_code == 201, final.text
        location = final.headers["Location"]
        assert location.startswith("http://up.example/tus/files/")
        head = await http.head(f"{url}{upload_id_of(location)}", headers={**TUS, **proxy})
        assert head.headers["Upload-Concat"] == "final;" + " ".join(urls)
        assert (tmp_path / f"{upload_id_of(location)}.bin").read_bytes() == b"hello world"


async def test_cors_origins_restrict_who_may_ask(tmp_path: Path) -> None:
    app = TusApp(MemoryStore(), cors_allow_origins=("https://app.example",))
    async with serve_app(app) as url, httpx.AsyncClient(timeout=15, verify=CLIENT_TLS) as http:
        allowed = await http.options(
            url,
            headers={
                "Origin": "https://app.example",
                "Access-Control-Request-Method": "POST",
            },
        )
        assert allowed.status_code == 200
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://app.example"
        assert "Upload-Length" in allowed.headers["Access-Control-Allow-Headers"]
        assert allowed.headers["Vary"] == "Origin"

        for method in ("OPTIONS", "POST"):
            refused = await http.request(
                method,
                url,
                headers={**TUS, "Upload-Length": "1", "Origin": "https://evil.example"},
            )
            assert refused.status_code == 403, refused.text
            assert refused.text.startswith("ERR_ORIGIN_NOT_ALLOWED")
            assert "Access-Control-Allow-Origin" not in refused.headers
            assert "Access-Control-Allow-Methods" not in refused.headers
            assert refused.headers["Vary"] == "Origin"

        # no Origin: not a cross-origin request, served; still Vary, for caches
        created = await http.post(url, headers={**TUS, "Upload-Length": "1"})
        assert created.status_code == 201
        assert created.headers["Vary"] == "Origin"
        assert "Access-Control-Allow-Origin" not in created.headers


# -- anytus serve: HTTPS, behind a proxy, origins (a subprocess per backend) -------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, trustme.CA]:
    """A certificate for 127.0.0.1 and localhost, signed by a CA made for these tests."""
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    cert.private_key_pem.write_to_path(str(keyfile))
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(certfile), append=index > 0)
    return certfile, keyfile, ca


@pytest.fixture
def client_tls(tls_files: tuple[Path, Path, trustme.CA]) -> ssl.SSLContext:
    context = ssl.create_default_context()
    tls_files[2].configure_trust(context)
    return context


class TestServe:
    @pytest.fixture
    def anyio_backend(self) -> str:
        """The client runs on asyncio: the backend under test is the server's."""
        return "asyncio"

    @pytest.mark.parametrize("server", ["asyncio", "trio"])
    async def test_https_behind_proxy_with_origins(
        self,
        tmp_path: Path,
        server: str,
        tls_files: tuple[Path, Path, trustme.CA],
        client_tls: ssl.SSLContext,
    ) -> None:
        certfile, keyfile, _ = tls_files
        directory = tmp_path / "uploads"
        with run_server_process(
            directory,
            "--backend",
            server,
            "--certfile",
            str(certfile),
            "--keyfile",
            str(keyfile),
            "--behind-proxy",
            "--cors-origins",
            "https://app.example,https://other.example",
            "--cors-origins",
            "https://third.example",
        ) as served:
            assert served.url.startswith("https://127.0.0.1:")
            async with httpx.AsyncClient(verify=client_tls, timeout=15) as http:
                tus = TusClient(http, served.url)
                # straight to the server: https in Location, from TLS itself
                created = await tus.create(11, headers={"Origin": "https://third.example"})
                assert created.status_code == 201, created.text
                location = created.headers["Location"]
                assert location.startswith(f"{served.url}"), location
                assert created.headers["Access-Control-Allow-Origin"] == "https://third.example"
                patched = await http.patch(
                    location,
                    headers={**TUS, "Upload-Offset": "0", "Content-Type": OFFSET_CONTENT_TYPE},
                    content=b"hello world",
                )
                assert patched.status_code == 204, patched.text
                assert (directory / f"{upload_id_of(location)}.bin").read_bytes() == b"hello world"

                # as a TLS-terminating proxy would pass it on
                proxied = await tus.create(
                    1,
                    headers={
                        "X-Forwarded-Host": "uploads.example",
                        "X-Forwarded-Proto": "https",
                        "X-Forwarded-Prefix": "/tus/",
                    },
                )
                assert proxied.headers["Location"].startswith("https://uploads.example/tus/files/")
                hostile = await tus.create(1, headers={"X-Forwarded-Host": "evil.example/x"})
                assert hostile.status_code == 201
                assert hostile.headers["Location"].startswith(served.url)

                refused = await tus.create(1, headers={"Origin": "https://evil.example"})
                assert refused.status_code == 403
                assert "Access-Control-Allow-Origin" not in refused.headers

            # plain HTTP to the HTTPS port gets no answer, and costs nothing
            async with httpx.AsyncClient(timeout=5, verify=CLIENT_TLS) as plain:
                with pytest.raises(httpx.TransportError):
                    await plain.get(served.url.replace("https://", "http://"))
            async with httpx.AsyncClient(verify=client_tls, timeout=15) as http:
                options = await http.options(served.url)
                assert options.status_code == 200

    @pytest.mark.parametrize("protocol", ["tus", "draft"])
    async def test_the_client_trusts_the_cas_of_ssl_cert_file(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        tls_files: tuple[Path, Path, trustme.CA],
        protocol: Literal["tus", "draft"],
    ) -> None:
        # both of anytus.client's ways of connecting (httpx, and its own for a draft creation
        # with content) verify the server with the same CAs
        certfile, keyfile, ca = tls_files
        directory = tmp_path / "uploads"
        serving = ("--certfile", str(certfile), "--keyfile", str(keyfile))
        data = bytes(range(256)) * 40
        source = tmp_path / "data.bin"
        source.write_bytes(data)
        with run_server_process(directory, *serving) as served:
            async with Client(served.url, store=False, retries=0, protocol=protocol) as client:
                # the default CAs (certifi's, or the system's) do not include this test's
                with pytest.raises(ConnectionFailed, match="CERTIFICATE_VERIFY_FAILED"):
                    await client.upload(source)
            ca_file = tmp_path / "ca.pem"
            ca.cert_pem.write_to_path(str(ca_file))
            monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
            async with Client(served.url, store=False, retries=0, protocol=protocol) as client:
                # a draft client's first creation negotiates the version; its second goes with
                # the content, on a connection of the client's own
                urls = [await client.upload(source) for _ in range(2)]
        for url in urls:
            assert url.startswith("https://127.0.0.1:")
            assert (directory / f"{upload_id_of(url)}.bin").read_bytes() == data


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--certfile", "cert.pem"], "--certfile and --keyfile go together"),
        (["--keyfile", "key.pem"], "--certfile and --keyfile go together"),
        (["--cors-origins", " , "], "--cors-origins names no origin"),
    ],
)
def test_serve_refuses_bad_tls_and_origin_options(
    tmp_path: Path, arguments: list[str], message: str
) -> None:
    result = run_anytus_serve(tmp_path, *arguments)
    assert result.returncode == 2
    assert message in result.stderr


def test_serve_refuses_an_unusable_certificate_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("not a certificate\n")
    (tmp_path / "key.pem").write_text("not a key\n")
    result = run_anytus_serve(tmp_path, "--certfile", "cert.pem", "--keyfile", "key.pem")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("anytus: cannot use ")
    assert "cert.pem" in lines[0]


def run_anytus_serve(cwd: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "anytus", "serve", "--port", "0", "--dir", "up", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=subprocess_env(),
        stdin=subprocess.DEVNULL,
    )
