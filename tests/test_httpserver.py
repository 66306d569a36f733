"""The HTTP/1.1 server of ``anytus serve --backend trio`` (:mod:`anytus._httpserver`, on anyio), in
process on both backends, against small ASGI apps and against TusApp: framing, keep-alive, pipelining, 100-continue,
malformed requests, disconnects, the lifespan and the graceful shutdown."""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import socket
from typing import TYPE_CHECKING, Any

import anyio
import anyio.lowlevel
import h11
import httpx
import pytest

from _helpers import make_store
from _server import CLIENT_TLS, TusClient, read_raw_response, wait_for, wait_for_files
from anytus import _httpserver
from anytus._httpserver import (
    HEAD_TIMEOUT,
    KEEP_ALIVE_TIMEOUT,
    RAW_BODY,
    WRITE_TIMEOUT,
    serve,
)
from anytus._serve import WorkerLoads
from anytus.asgi import TusApp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyio.abc import SocketStream


@contextlib.asynccontextmanager
async def running(
    app: Any,
    *,
    shutdown_timeout: float = 2.0,
    ready: list[bool] | None = None,
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
    head_timeout: float = HEAD_TIMEOUT,
    write_timeout: float = WRITE_TIMEOUT,
    raw_bodies: bool = False,
) -> AsyncIterator[tuple[str, int]]:
    """Serve *app* on a free port of 127.0.0.1; yield (host, port); shut down at the end."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    port = sock.getsockname()[1]
    stop = anyio.Event()
    started = anyio.Event()

    def on_ready() -> None:
        if ready is not None:
            ready.append(True)
        started.set()

    async with anyio.create_task_group() as nursery:
        nursery.start_soon(
            lambda: serve(
                app,
                sock,
                shutdown_trigger=stop.wait,
                ready=on_ready,
                shutdown_timeout=shutdown_timeout,
                keep_alive_timeout=keep_alive_timeout,
                head_timeout=head_timeout,
                write_timeout=write_timeout,
                raw_bodies=raw_bodies,
            )
        )
        await started.wait()
        try:
            yield "127.0.0.1", port
        finally:
            stop.set()


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the whole body; answers with its length, the number of messages and the scope."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    size = messages = 0
    while True:
        message = await receive()
        assert message["type"] == "http.request"
        size += len(message["body"])
        messages += 1
        if not message["more_body"]:
            break
    body = (
        f"{scope['method']} {scope['path']} {scope['query_string'].decode()} {size} {messages}"
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/plain"), (b"x-path", scope["raw_path"])],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def connect(address: tuple[str, int]) -> SocketStream:
    return await anyio.connect_tcp(*address)


async def read_responses(
    stream: SocketStream, count: int, *, methods: list[bytes] | None = None
) -> list[tuple[h11.Response, bytes]]:
    """Read *count* responses that may arrive together (pipelining), parsed by an h11 client."""
    client = h11.Connection(h11.CLIENT)
    responses: list[tuple[h11.Response, bytes]] = []
    for i in range(count):
        # h11's client needs the request it answers (HEAD responses have no body)
        method = methods[i] if methods else b"GET"
        client.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        client.send(h11.EndOfMessage())
        head: h11.Response | None = None
        body = b""
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA:
                client.receive_data(await stream.receive())
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert head is not None
        responses.append((head, body))
        client.start_next_cycle()
    return responses


async def test_scope_and_echo() -> None:
    scopes: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scopes.append(scope)
        await echo(scope, receive, send)

    async with running(app) as (host, port), httpx.AsyncClient(verify=CLIENT_TLS) as http:
        response = await http.post(f"http://{host}:{port}/a%20b/c?x=1&y=%20", content=b"z" * 1000)
    assert response.status_code == 200
    assert response.text == "POST /a b/c x=1&y=%20 1000 1"
    assert response.headers["content-length"] == str(len(response.content))
    assert response.headers["server"] == "anytus"
    assert "date" in response.headers
    (scope,) = scopes
    assert scope["asgi"] == {"version": "3.0", "spec_version": "2.3"}
    assert scope["http_version"] == "1.1"
    assert scope["scheme"] == "http"
    assert scope["raw_path"] == b"/a%20b/c"
    assert scope["root_path"] == ""
    assert scope["server"] == (host, port)
    assert scope["client"][0] == "127.0.0.1"
    assert (b"content-length", b"1000") in scope["headers"]
    assert all(name == name.lower() for name, _ in scope["headers"])


async def test_keep_alive_reuses_one_connection() -> None:
    peers: set[object] = set()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            peers.add(scope["client"])
        await echo(scope, receive, send)

    async with running(app) as (host, port), httpx.AsyncClient(verify=CLIENT_TLS) as http:
        for i in range(5):
            response = await http.put(f"http://{host}:{port}/{i}", content=b"x" * i)
            assert response.text == f"PUT /{i}  {i} 1"
    assert len(peers) == 1


async def test_pipelined_requests_are_answered_in_order() -> None:
    async with running(echo) as address:
        stream = await connect(address)
        async with stream:
            requests = b"".join(
                f"POST /{i} HTTP/1.1\r\nHost: x\r\nContent-Length: {i}\r\n\r\n".encode() + b"a" * i
                for i in range(4)
            )
            await stream.send(requests)
            responses = await read_responses(stream, 4)
            for i, (response, body) in enumerate(responses):
                assert response.status_code == 200
                assert body.decode().startswith(f"POST /{i}  {i} ")


async def test_chunked_request_body() -> None:
    async def body() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 1000
            await anyio.lowlevel.checkpoint()

    async with running(echo) as (host, port), httpx.AsyncClient(verify=CLIENT_TLS) as http:
        response = await http.post(f"http://{host}:{port}/c", content=body())
    assert response.text.startswith("POST /c  10000 ")


async def test_large_body_arrives_in_large_messages() -> None:
    """A body sent at once comes in few messages, each one socket read (not 64 KiB pieces)."""
    async with running(echo) as (host, port), httpx.AsyncClient(verify=CLIENT_TLS) as http:
        response = await http.post(f"http://{host}:{port}/big", content=b"b" * (8 << 20))
    _, _, _, size, messages = response.text.split(" ")
    assert int(size) == 8 << 20
    assert int(messages) < (8 << 20) // (64 * 1024)


async def test_expect_100_continue() -> None:
    async with running(echo) as address:
        stream = await connect(address)
        async with stream:
            await stream.send(
                b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n"
            )
            interim = await stream.receive()
            assert interim.startswith(b"HTTP/1.1 100 ")
            await stream.send(b"abc")
            response = await read_raw_response(stream)
            assert response.status == 200
            assert response.body == b"POST /e  3 1"


async def test_head_response_has_no_body() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send(
            {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"5")]}
        )
        await send({"type": "http.response.body", "body": b"hello"})

    async with running(app) as address:
        stream = await connect(address)
        async with stream:
            await stream.send(
                b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"
            )
            # parsed strictly: body bytes after the HEAD response would break the second one
            (head, head_body), (get, get_body) = await read_responses(
                stream, 2, methods=[b"HEAD", b"GET"]
            )
            assert (b"content-length", b"5") in head.headers
            assert head_body == b""
            assert get.status_code == 200
            assert get_body == b"hello"


async def test_malformed_request_gets_400_and_the_server_goes_on() -> None:
    async with running(echo) as address:
        stream = await connect(address)
        async with stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
            response = await read_raw_response(stream)
            assert response.status == 400
            assert response.headers["connection"] == "close"
        async with httpx.AsyncClient(verify=CLIENT_TLS) as http:
            ok = await http.get(f"http://{address[0]}:{address[1]}/")
        assert ok.status_code == 200


async def test_oversized_head_is_refused() -> None:
    async with running(echo) as address:
        stream = await connect(address)
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError):
                await stream.send(b"GET / HTTP/1.1\r\nX: " + b"a" * (100 * 1024) + b"\r\n\r\n")
            response = await read_raw_response(stream)
            assert response.status == 431


@pytest.mark.parametrize(
    ("request_bytes", "status", "reason"),
    [
        # both framings: read as chunked by h11, a request smuggling vector (RFC 9112 6.3)
        (
            (
                b"PATCH / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Length: 5\r\n\r\n0\r\n\r\n"
            ),
            400,
            b"both Transfer-Encoding and Content-Length",
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", 400, b"folding"),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501, b"chunked"),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505, b"not supported"),
        # a long head in one piece (h11 took it, as long as it came whole)
        (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (70 * 1024) + b"\r\n\r\n", 431, b"large"),
    ],
)
async def test_what_the_http_layer_refuses_never_reaches_the_app(
    request_bytes: bytes, status: int, reason: bytes
) -> None:
    requests: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            requests.append(scope)
        await echo(scope, receive, send)

    async with running(app) as address:
        stream = await connect(address)
        async with stream:
            with contextlib.suppress(anyio.BrokenResourceError):
                await stream.send(request_bytes)
            response = await read_raw_response(stream)
            assert response.status == status
            assert response.headers["connection"] == "close"
            assert reason in response.body
        async with httpx.AsyncClient(verify=CLIENT_TLS) as http:
            ok = await http.get(f"http://{address[0]}:{address[1]}/after")
        assert ok.status_code == 200
    assert [scope["path"] for scope in requests] == ["/after"]


async def test_an_http_1_0_response_without_a_length_ends_with_the_connection() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await echo(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"one ", "more_body": True})
        await send({"type": "http.response.body", "body": b"two"})

    async with running(app) as address:
        stream = await connect(address)
        async with stream:
            await stream.send(b"GET / HTTP/1.0\r\n\r\n")
            data = b""
            with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                while True:
                    data += await stream.receive()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"connection: close" in head.lower()
        assert b"transfer-encoding" not in head.lower()
        assert body == b"one two"  # no chunk framing: the end of the connection ends it


async def test_issue_7_half_close_with_an_early_answer(tmp_path: Path) -> None:
    """``Content-Length: 100``, no body, the client half-closes, the app answers without reading:
    the connection ends, the server does not (hypercorn's trio server died on this)."""
    app = TusApp(await make_store(tmp_path), base_path="/files/")
    async with running(app) as address:
        for content_type, expected in [
            (b"text/plain", 415),
            (b"application/offset+octet-stream", 404),
        ]:
            stream = await connect(address)
            async with stream:
                # a PATCH with the wrong Content-Type: TusApp answers 415 without reading the
                # body; then an unknown upload: TusApp sees the end of the body (http.disconnect)
                # before it answers, and answers all the same (the client reads on)
                await stream.send(
                    b"PATCH /files/nope HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
                    b"Upload-Offset: 0\r\nContent-Type: " + content_type + b"\r\n"
                    b"Content-Length: 100\r\n\r\n"
                )
                await stream.send_eof()
                assert (await read_raw_response(stream)).status == expected
                with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
                    await stream.receive()
        async with httpx.AsyncClient(verify=CLIENT_TLS) as http:
            options = await http.options(f"http://{address[0]}:{address[1]}/files/")
        assert options.status_code == 200


async def test_idle_and_trickling_connections_are_closed() -> None:
    """A connection that sends nothing is closed after the keep-alive timeout; one that trickles
    its head in a byte at a time (slowloris) once the head timeout is over, although it never
    stops sending for long."""
    async with running(echo, keep_alive_timeout=0.2, head_timeout=0.5) as address:
        silent = await connect(address)
        async with silent:
            with anyio.fail_after(5), pytest.raises(anyio.EndOfStream):
                await silent.receive()

        trickle = await connect(address)
        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000 + b"\r\n\r\n"
        sent = 0
        async with trickle:
            with anyio.fail_after(5):
                while True:
                    try:
                        await trickle.send(head[sent : sent + 1])
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                        break  # reset: the server closed with the last bytes unread
                    sent += 1
                    with anyio.move_on_after(0.02):
                        try:
                            await trickle.receive()
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            break
            assert sent < len(head)

        async with httpx.AsyncClient(verify=CLIENT_TLS) as http:
            assert (await http.get(f"http://{address[0]}:{address[1]}/")).status_code == 200


async def test_a_client_that_stops_reading_is_dropped() -> None:
    """A response the client does not read: after the write timeout the connection is closed and
    the app sees ``http.disconnect`` (it stops producing the body)."""
    stopped = anyio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                stopped.set()
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            while True:  # far more than the socket buffers hold
                await send({"type": "http.response.body", "body": b"x" * 65536, "more_body": True})

    async with running(app, write_timeout=0.3) as address:
        stream = await connect(address)
        async with stream:
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            with anyio.fail_after(10):
                await stopped.wait()


async def test_disconnect_mid_body_reaches_the_app() -> None:
    seen: list[str] = []
    done = anyio.Event()
    first_message = anyio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        try:
            while True:
                message = await receive()
                seen.append(message["type"])
                first_message.set()
                if message["type"] == "http.disconnect" or not message.get("more_body"):
                    return
        finally:
            done.set()

    async with running(app) as address:
        stream = await connect(address)
        await stream.send(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n" + b"a" * 10)
        with anyio.fail_after(5):
            await first_message.wait()
        await stream.aclose()
        with anyio.fail_after(5):
            await done.wait()
    assert seen[0] == "http.request"
    assert seen[-1] == "http.disconnect"


async def test_tus_upload_and_a_disconnect_keeps_the_bytes(tmp_path: Path) -> None:
    app = TusApp(await make_store(tmp_path), base_path="/files/")
    async with running(app) as (host, port), httpx.AsyncClient(verify=CLIENT_TLS) as http:
        url = f"http://{host}:{port}/files/"
        tus = TusClient(http, url)
        created = await tus.create(10)
        assert created.status_code == 201
        assert created.headers["location"].startswith(url)
        upload_id = created.headers["location"].rsplit("/", 1)[1]
        patched = await tus.patch(upload_id, 0, b"0123456789")
        assert patched.status_code == 204
        assert patched.headers["upload-offset"] == "10"
        assert "content-length" not in patched.headers
        head = await tus.head(upload_id)
        assert head.status_code == 200
        assert head.headers["upload-offset"] == "10"
        assert head.headers["upload-length"] == "10"
        assert head.headers["tus-resumable"] == "1.0.0"
        assert head.headers["cache-control"] == "no-store"
        assert head.content == b""

        # a second upload whose client goes away after 3000 of 10000 bytes
        second = await tus.new(10000)
        stream = await connect((host, port))
        await stream.send(
            f"PATCH /files/{second} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
            "Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
            "Content-Length: 10000\r\n\r\n".encode()
            + b"c" * 3000
        )
        assert await wait_for_files(tmp_path, lambda: (tmp_path / f"{second}.bin").exists())
        # the 3000 bytes reach the server before the end of the connection (TCP keeps order)
        await stream.aclose()

        async def kept() -> bool:
            return (await tus.offset(second)) == 3000

        assert await wait_for(kept)


def answers_with(name: bytes) -> Any:
    """An ASGI app that answers every request with *name*."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            return await echo(scope, receive, send)
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": name})

    return app


@pytest.mark.parametrize("at_once", [False, True], ids=["one-by-one", "at-once"])
async def test_servers_on_one_socket_even_out_their_connections(at_once: bool) -> None:
    """Servers that accept on one listening socket (the workers of ``anytus serve --workers``)
    share out the connections a client keeps open, whether it opens them one by one or all at
    once: a server with more open than another lets it accept first.

    Here both servers run in this process, on two descriptors of one socket, so that neither is
    ever stalled by a busy machine (which would rightly make the other take its turn). Left to
    the kernel and the event loop, one of them takes most connections.
    """
    counts = [-1, -1]
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    address = listener.getsockname()
    stop = anyio.Event()
    served_by: list[bytes] = []
    async with anyio.create_task_group() as tg:
        for slot, sock in enumerate([listener, listener.dup()]):
            started = anyio.Event()
            tg.start_soon(
                functools.partial(
                    serve,
                    answers_with(b"%d" % slot),
                    sock,
                    shutdown_trigger=stop.wait,
                    ready=started.set,
                    balance=WorkerLoads(counts, slot),
                )
            )
            await started.wait()
        streams: list[SocketStream] = []
        try:
            for _ in range(8):
                streams.append(await connect(address))
                if not at_once:
                    await streams[-1].send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    [(_, body)] = await read_responses(streams[-1], 1)
                    served_by.append(body)
                    if len(served_by) % 2 == 0:  # each pair: one for each
                        assert served_by.count(b"0") == served_by.count(b"1"), served_by
            if at_once:
                for stream in streams:
                    await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                for stream in streams:
                    [(_, body)] = await read_responses(stream, 1)
                    served_by.append(body)
        finally:
            for stream in streams:
                await stream.aclose()
            stop.set()
    assert sorted(served_by) == [b"0"] * 4 + [b"1"] * 4


class _AlwaysAhead:
    """An accept balance by which this server always has one connection more than another."""

    def connections(self, count: int) -> None:
        pass

    def lead(self) -> int:
        return 1


async def test_a_server_told_to_stop_during_its_turn_never_accepts_on_the_closed_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A server waiting for a less busy one to accept first (see above) may be told to stop
    while it waits, and :func:`serve` then closes the listening socket at once: when its wait
    ends it must stop, not call ``accept()`` on a closed descriptor (which failed the shutdown
    with ``OSError: [Errno 9] Bad file descriptor``)."""
    # a wait long enough to close the socket in, whatever the machine's load
    monkeypatch.setattr(_httpserver, "ACCEPT_YIELD_DELAY", 1.0)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    server = _httpserver._Server(answers_with(b"0"), balance=_AlwaysAhead())
    client = await connect(listener.getsockname())  # waits in the backlog: readable
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_httpserver._accept, listener, server, tg)
            for _ in range(10):  # it sees the socket readable, and starts its wait
                await anyio.wait_all_tasks_blocked()
                await anyio.lowlevel.checkpoint()
            server.stopping = True
            listener.close()
    finally:
        await client.aclose()
    assert server.open == 0


async def test_lifespan_runs_around_serving() -> None:
    events: list[str] = []
    ready: list[bool] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            assert (await receive())["type"] == "lifespan.startup"
            events.append("startup")
            scope["state"]["value"] = 42
            await send({"type": "lifespan.startup.complete"})
            assert (await receive())["type"] == "lifespan.shutdown"
            events.append("shutdown")
            await send({"type": "lifespan.shutdown.complete"})
            return
        events.append(f"request {scope['state']['value']}")
        await receive()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body"})

    async with running(app, ready=ready) as (host, port):
        assert events == ["startup"]
        assert ready == [True]
        async with httpx.AsyncClient(verify=CLIENT_TLS) as http:
            assert (await http.get(f"http://{host}:{port}/")).status_code == 204
    assert events == ["startup", "request 42", "shutdown"]


async def test_graceful_shutdown_cancels_requests_after_the_timeout() -> None:
    cancelled = anyio.Event()
    started = anyio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        started.set()
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            cancelled.set()
            raise

    with anyio.fail_after(10):
        async with running(app, shutdown_timeout=0.3) as address:
            stream = await connect(address)
            await stream.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await started.wait()
        assert cancelled.is_set()
        await stream.aclose()


async def test_app_errors_give_500_and_the_server_goes_on() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await echo(scope, receive, send)

    async with running(app) as (host, port), httpx.AsyncClient(verify=CLIENT_TLS) as http:
        assert (await http.get(f"http://{host}:{port}/boom")).status_code == 500
        assert (await http.get(f"http://{host}:{port}/ok")).status_code == 200


async def test_absolute_form_target() -> None:
    """``PATCH http://host/files/id``, as http.client sends for a full URL: the path is its own."""
    async with running(echo) as address:
        stream = await connect(address)
        async with stream:
            await stream.send(
                b"POST http://x:1/abs/p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
            )
            ((response, body),) = await read_responses(stream, 1)
            assert response.status_code == 200
            assert body == b"POST /abs/p q=1 0 1"


# --- bodies straight from the socket (raw_bodies, as `anytus serve --backend trio` runs it) ------


class RawBodyWatch:
    """Wraps an app; counts the requests whose body went through the server's ``read_into``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.offered = 0
        self.used = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        extension = scope.get("extensions", {}).get(RAW_BODY)
        if extension is not None:
            self.offered += 1
            read_into = extension["read_into"]

            async def counted(*args: Any) -> tuple[int, str]:
                self.used += 1
                result: tuple[int, str] = await read_into(*args)
                return result

            scope = {
                **scope,
                "extensions": {
                    **scope["extensions"],
                    RAW_BODY: {**extension, "read_into": counted},
                },
            }
        await self.app(scope, receive, send)


def patch_head(upload_id: str, offset: int, length: int, extra: str = "") -> bytes:
    return (
        f"PATCH /files/{upload_id} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: {offset}\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {length}\r\n{extra}\r\n"
    ).encode()


def raw_bodies_here(anyio_backend_name: str) -> bool:
    return True


async def test_a_large_body_goes_from_the_socket_to_the_file(
    tmp_path: Path, anyio_backend_name: str
) -> None:
    """Byte-exact, the part that came with the head included; the connection goes on (a HEAD
    pipelined right behind the body is answered), and on trio the body took the raw path."""
    raw = raw_bodies_here(anyio_backend_name)
    watch = RawBodyWatch(TusApp(await make_store(tmp_path), base_path="/files/"))
    data = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: far past SMALL_BODY
    async with (
        running(watch, raw_bodies=raw) as address,
        httpx.AsyncClient(verify=CLIENT_TLS) as http,
    ):
        upload_id = await TusClient(http, f"http://{address[0]}:{address[1]}/files/").new(len(data))
        stream = await connect(address)
        head_request = (
            f"HEAD /files/{upload_id} HTTP/1.1\r\nHost: x\r\nTus-Resumable: 1.0.0\r\n\r\n"
        ).encode()
        await stream.send(patch_head(upload_id, 0, len(data)) + data[:1000])
        await stream.send(data[1000:] + head_request)
        patched, head = await read_responses(stream, 2, methods=[b"PATCH", b"HEAD"])
        await stream.aclose()
    assert patched[0].status_code == 204
    assert dict(patched[0].headers)[b"upload-offset"] == str(len(data)).encode()
    assert head[0].status_code == 200
    assert dict(head[0].headers)[b"upload-offset"] == str(len(data)).encode()
    assert (tmp_path / f"{upload_id}.bin").read_bytes() == data
    assert (watch.offered, watch.used) == ((1, 1) if raw else (0, 0))


async def test_a_raw_body_cut_short_keeps_what_came(
    tmp_path: Path, anyio_backend_name: str
) -> None:
    """The client goes away mid-body: what arrived is stored, and the upload resumes from it."""
    raw = raw_bodies_here(anyio_backend_name)
    watch = RawBodyWatch(TusApp(await make_store(tmp_path), base_path="/files/"))
    data = b"r" * (2 << 20)
    async with (
        running(watch, raw_bodies=raw) as address,
        httpx.AsyncClient(verify=CLIENT_TLS) as http,
    ):
        tus = TusClient(http, f"http://{address[0]}:{address[1]}/files/")
        upload_id = await tus.new(len(data))
        stream = await connect(address)
        await stream.send(patch_head(upload_id, 0, len(data)) + data[: 1 << 20])

        async def arrived() -> bool:
            return (tmp_path / f"{upload_id}.bin").stat().st_size == 1 << 20

        assert await wait_for(arrived)
        await stream.aclose()

        async def kept() -> bool:
            return (await tus.offset(upload_id)) == 1 << 20

        assert await wait_for(kept)
        resumed = await tus.patch(upload_id, 1 << 20, data[1 << 20 :])
        assert resumed.status_code == 204
    assert (tmp_path / f"{upload_id}.bin").read_bytes() == data
    assert watch.used == (2 if raw else 0)  # the resuming PATCH too


async def test_an_idle_raw_body_times_out_and_keeps_what_came(
    tmp_path: Path, anyio_backend_name: str
) -> None:
    raw = raw_bodies_here(anyio_backend_name)
    app = TusApp(await make_store(tmp_path), base_path="/files/", idle_timeout=0.3)
    async with (
        running(app, raw_bodies=raw) as address,
        httpx.AsyncClient(verify=CLIENT_TLS) as http,
    ):
        tus = TusClient(http, f"http://{address[0]}:{address[1]}/files/")
        upload_id = await tus.new(1 << 20)
        stream = await connect(address)
        await stream.send(patch_head(upload_id, 0, 1 << 20) + b"i" * 200_000)
        response = await read_raw_response(stream)
        await stream.aclose()
        assert response.status == 500
        assert response.body.startswith(b"ERR_READ_TIMEOUT: ")
        assert await tus.offset(upload_id) == 200_000


async def test_a_release_request_stops_a_raw_body(tmp_path: Path, anyio_backend_name: str) -> None:
    """A HEAD from the resuming client makes the running PATCH let go (tusd v2's release
    requests): it keeps what came and answers 400; the client resumes from the offset."""
    raw = raw_bodies_here(anyio_backend_name)
    watch = RawBodyWatch(TusApp(await make_store(tmp_path), base_path="/files/"))
    sent = 3 << 19  # 1.5 MiB of 4
    async with (
        running(watch, raw_bodies=raw) as address,
        httpx.AsyncClient(verify=CLIENT_TLS) as http,
    ):
        tus = TusClient(http, f"http://{address[0]}:{address[1]}/files/")
        upload_id = await tus.new(4 << 20)
        stream = await connect(address)
        await stream.send(patch_head(upload_id, 0, 4 << 20) + b"s" * sent)
        data_file = tmp_path / f"{upload_id}.bin"
        assert await wait_for_files(data_file.parent, lambda: data_file.stat().st_size > 0)
        offset = await tus.offset(upload_id)
        interrupted = await read_raw_response(stream)
        await stream.aclose()
        resumed = await tus.patch(upload_id, offset, b"t" * 1000)
    assert interrupted.status == 400
    assert interrupted.body.startswith(b"ERR_UPLOAD_INTERRUPTED: ")
    assert 0 < offset <= sent
    assert resumed.status_code == 204
    assert data_file.read_bytes() == b"s" * offset + b"t" * 1000
    assert watch.used == (1 if raw else 0)


@pytest.mark.parametrize("good", [True, False], ids=["matching", "mismatching"])
async def test_a_raw_body_with_a_checksum(
    tmp_path: Path, anyio_backend_name: str, good: bool
) -> None:
    raw = raw_bodies_here(anyio_backend_name)
    watch = RawBodyWatch(TusApp(await make_store(tmp_path), base_path="/files/"))
    data = b"c" * (1 << 20)
    digest = hashlib.sha1(data if good else b"other").digest()
    checksum = f"Upload-Checksum: sha1 {base64.b64encode(digest).decode()}\r\n"
    async with (
        running(watch, raw_bodies=raw) as address,
        httpx.AsyncClient(verify=CLIENT_TLS) as http,
    ):
        tus = TusClient(http, f"http://{address[0]}:{address[1]}/files/")
        upload_id = await tus.new(len(data))
        stream = await connect(address)
        await stream.send(patch_head(upload_id, 0, len(data), checksum) + data)
        response = await read_raw_response(stream)
        await stream.aclose()
        offset = await tus.offset(upload_id)
    if good:
        assert response.status == 204
        assert offset == len(data)
    else:
        assert response.status == 460
        assert offset == 0
    assert watch.used == (1 if raw else 0)
