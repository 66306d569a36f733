"""A lean ASGI 3 HTTP/1.1 server on anyio: what ``anytus serve`` runs, on asyncio and on trio.
Requests are parsed and responses framed by :mod:`anytus._http11` (sans I/O); this module does
the I/O, the ASGI side and the connection's life.

Why not hypercorn: its trio server reads the socket 64 KiB at a time and passes every piece through
its protocol layers and an app queue; on a large upload the event loop spends its time there. This
server is *pull-based*: the socket is read only inside the app's ``receive()`` (and between
requests), in large pieces (:data:`READ_SIZE`, 256 KiB), and everything parsed out of one read goes
to the app as one ``http.request`` message. That also gives backpressure for free: nothing is read
while the app has not asked for more, so a connection holds at most one read of body in memory.

Faster still, for a body with a ``Content-Length`` (not over TLS): the :data:`RAW_BODY` scope
extension lets the app have the body passed to a function in a worker thread that receives it
from the socket into one reused buffer (:meth:`_Connection.read_body_into`); TusApp writes each
piece to the file right there. Sockets are read with non-blocking calls and
:func:`anyio.wait_readable` (:class:`_TCPStream`), never by a transport that reads ahead, so on
either backend nothing but that thread reads the socket meanwhile.

What it does, per connection (one task each, in one task group):

- parse the request head (at most :data:`MAX_HEAD_SIZE` bytes, within :data:`HEAD_TIMEOUT` of its
  first byte; an idle keep-alive connection is closed after :data:`KEEP_ALIVE_TIMEOUT`), then run
  the app inline with its ``receive`` and ``send``;
- ``Expect: 100-continue``: the ``100 Continue`` goes out when the app first calls ``receive()``;
- a client that stops reading the response is dropped after :data:`WRITE_TIMEOUT` per write;
- other interim responses (the resumable-upload draft's ``104``): the scope offers the
  ``http.response.informational`` extension; the app sends ``{"type":
  "http.response.informational", "status": 1xx, "headers": [...]}`` before its response (a
  ``100 Continue`` still owed goes out first);
- after the response: keep the connection (keep-alive and pipelining) when both sides finished
  their message and neither asked to close; a body the app did not read is read and dropped for a
  bounded time (:data:`DRAIN_TIME`, :data:`DRAIN_SIZE`), otherwise the connection is closed;
- a malformed request gets a ``400`` (``431`` for a head too long, ``501`` for a transfer coding
  other than chunked, ``505`` for an HTTP version other than 1.x) with ``Connection: close``; no
  exception leaves a connection task (each is logged), so one connection never stops the server.

Around the connections: the app's lifespan (startup before *ready* is called, shutdown at the end)
and a graceful shutdown: on the trigger the listener is closed, idle connections are closed, and
running requests may go on for *shutdown_timeout* before they are cancelled.
"""

from __future__ import annotations

import contextlib
import email.utils
import errno
import http
import logging
import math
import select
import socket
import ssl
import threading
import time
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.streams.tls import TLSStream

from ._http11 import (
    CLOSED,
    END,
    NEED_DATA,
    BodyWriter,
    ProtocolError,
    Request,
    RequestReader,
    frame_response,
    response_head,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping

    from ._asgi_types import BodySink

__all__ = (
    "ACCEPT_YIELD_DELAY",
    "DRAIN_SIZE",
    "DRAIN_TIME",
    "HEAD_TIMEOUT",
    "INTERRUPT_GRACE",
    "KEEP_ALIVE_TIMEOUT",
    "MAX_HEAD_SIZE",
    "READ_SIZE",
    "WRITE_TIMEOUT",
    "AcceptBalance",
    "LifespanFailedError",
    "serve",
)

logger = logging.getLogger("anytus.server")

#: how much one socket read asks for. Measured with bench_vs_tusd.py on the 2-core VM, anytus
#: alone, 2 runs of 2 rounds per size, alternating: 256 KiB / 1 MiB gave one 512 MiB upload
#: 664, 618 / 644, 594 MiB/s, eight parallel 619, 615 / 567, 750, small requests 706, 743 / 637,
#: 734 req/s (no difference beyond noise), but HEAD p99 while four uploads stream 22, 15 / 66, 44
#: ms: a larger read keeps the loop longer per message. 64 KiB (hypercorn's) costs far more per
#: byte. Memory stays bounded: one read per connection (parsing copies it once more).
READ_SIZE = 256 * 1024
#: the longest request head accepted (request line and headers)
MAX_HEAD_SIZE = 64 * 1024
#: how long a connection may wait for the first byte of its next request (hypercorn's default),
#: unless :func:`serve` is told otherwise
KEEP_ALIVE_TIMEOUT = 5.0
#: how long a request head may take from its first byte to its end, unless :func:`serve` is told
#: otherwise
HEAD_TIMEOUT = 10.0
#: how long one write to the client may take (it stopped reading), unless :func:`serve` is told
#: otherwise; then the connection is closed
WRITE_TIMEOUT = 60.0
#: how long, and how many bytes, of a request body the app left unread are dropped to keep the
#: connection; past either it is closed
DRAIN_TIME = 2.0
DRAIN_SIZE = 16 * 1024 * 1024
#: the ASGI scope extension through which TusApp has a request body passed to a function in a
#: worker thread, straight from the socket (see :meth:`_Connection.read_body_into`)
RAW_BODY = "anytus.body_into"
#: the buffer a raw body transfer receives into (one per transfer, reused for each read)
RAW_BUFFER_SIZE = 256 * 1024
#: how soon a raw body transfer that waits for the client notices that it should stop
_STOP_CHECK = 0.05
#: raw body transfers at once (each holds a worker thread while its body arrives); past that,
#: bodies go through ``receive()``
MAX_RAW_TRANSFERS = 64
#: how long interrupted requests may take to answer at shutdown before they are cancelled
INTERRUPT_GRACE = 2.0
#: how long lifespan startup and shutdown may take
LIFESPAN_TIMEOUT = 60.0

_T = TypeVar("_T")

_ASGI = {"version": "3.0", "spec_version": "2.3"}
_SERVER_HEADER = (b"server", b"anytus")
#: a response message up to this size is sent with one write (joined), a larger one piecewise
_JOIN_LIMIT = 64 * 1024
#: reason phrases
_REASONS = {
    104: b"Upload Resumption Supported",  # the resumable-upload draft's, not in http.HTTPStatus
    **{status.value: status.phrase.encode("ascii") for status in http.HTTPStatus},
}
#: statuses whose responses never have a body, nor a Content-Length of it
_NO_BODY = frozenset({204, 304, *range(100, 200)})
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class LifespanFailedError(Exception):
    """The app answered ``lifespan.startup.failed`` (or did not finish its startup in time)."""


class _Date:
    """The ``Date`` header value, formatted once a second."""

    __slots__ = ("_second", "_value")

    def __init__(self) -> None:
        self._second = -1
        self._value = b""

    def value(self) -> bytes:
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._value = email.utils.formatdate(now, usegmt=True).encode("ascii")
        return self._value


_date = _Date()


class _Disconnected(Exception):
    """The client went away (or broke the protocol) while a request was running."""


class _Connection:
    """One client connection: its request reader, the socket, and the running request's ASGI
    state."""

    def __init__(self, server: _Server, stream: anyio.abc.ByteStream) -> None:
        self.server = server
        self.stream = stream
        self.reader = RequestReader(MAX_HEAD_SIZE)
        #: waiting for a request head with nothing received yet: shutdown may close it at once
        self.idle = False
        self.idle_scope: anyio.CancelScope | None = None
        self.client: tuple[str, int] | None = None
        self.local: tuple[str, int] | None = None
        with contextlib.suppress(OSError, anyio.TypedAttributeLookupError):
            self.client = _address(stream.extra(anyio.abc.SocketAttribute.remote_address))
            self.local = _address(stream.extra(anyio.abc.SocketAttribute.local_address))
        self.request: Request | None = None
        self._reset_request()

    def _reset_request(self) -> None:
        self.method = b""
        #: sending failed (the client is gone): sends are dropped
        self.disconnected = False
        #: the client's side ended (closed, half-closed or reset, or a broken body): no more reads,
        #: but a half-closed client may still read the response
        self.eof = False
        self.body_done = False
        self.response_started = False
        self.response_complete = False
        #: set when the response is complete or the client is gone; made only for a receive()
        #: that waits for that (an event per request costs more than it is used)
        self._response_done: anyio.Event | None = None
        self.pending_start: dict[str, Any] | None = None
        #: how the response's body is framed (set when its head goes out)
        self.body_writer: BodyWriter | None = None
        #: the connection may serve another request after this response
        self.keep_alive = True
        self.expect_100 = False
        #: the request body's Content-Length (None: chunked, or no body)
        self.content_length: int | None = None
        #: read_body_into took (or is taking) the body
        self.body_taken = False
        #: ... and read the socket itself: the reader did not see all of the body
        self.raw_used = False
        #: ... and all of it arrived: the connection may serve a next request
        self.raw_complete = False

    # -- reading --------------------------------------------------------------------------------

    async def _read(self) -> bool:
        """Read once from the socket into the reader; False once the client closed (or reset)."""
        try:
            data = await self.stream.receive(READ_SIZE)
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            data = b""
        # no checkpoint between the read and handing the bytes on: a cancellation (the app's
        # timeout around receive()) never loses data
        self.reader.receive_data(data)
        return bool(data)

    async def read_head(self) -> Request | None:
        """The next request's head, or None when the connection should close (the client closed
        it, went idle too long, the server is stopping, or the head was malformed: answered)."""
        reader = self.reader
        deadline = math.inf
        while True:
            try:
                event = reader.next_request()
            except ProtocolError as exc:
                await self._refuse(exc)
                return None
            if isinstance(event, Request):
                return event
            if event is CLOSED:
                return None
            if deadline == math.inf and not reader.buffered:
                # nothing of the next request yet: an idle keep-alive connection
                if self.server.stopping:
                    return None
                self.idle = True
                received = False  # stays so when the wait times out
                with anyio.move_on_after(self.server.keep_alive_timeout) as self.idle_scope:
                    received = await self._read()
                self.idle = False
                self.idle_scope = None
                if not received:
                    # timed out, closed by the client, or by the shutdown: both sides are
                    # between messages, so closing loses nothing
                    return None
                deadline = anyio.current_time() + self.server.head_timeout
                continue
            if deadline == math.inf:
                deadline = anyio.current_time() + self.server.head_timeout
            with anyio.CancelScope(deadline=deadline):
                await self._read()
                continue
            logger.debug("request head not complete within %gs: closing", self.server.head_timeout)
            return None

    async def _refuse(self, exc: ProtocolError) -> None:
        """Answer a malformed request head with its status (400, 431, 501 or 505)."""
        logger.debug("malformed request from %s: %s", self.client, exc)
        reason = _REASONS.get(exc.status, b"")
        body = f"{exc.status} {reason.decode()}: {exc}\n".encode()
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"date", _date.value()),
            _SERVER_HEADER,
        ]
        with contextlib.suppress(_Disconnected):
            await self._send_bytes(response_head(exc.status, reason, headers) + body)

    async def _before_body(self) -> bool:
        """What goes out before the body is read: a started response's head, ``100 Continue``.
        False if there is no body to read any more (the client or the response is done)."""
        if self.pending_start is not None and not self.disconnected:
            # the app waits for the body with its response started: the head goes out now (an
            # early answer must reach a client that waits for it before it sends the rest)
            try:
                await self._flush_start(None)
            except _Disconnected:
                pass
        if self.disconnected or self.eof or self.response_complete:
            return False
        if self.expect_100:
            self.expect_100 = False
            if self.reader.expects_continue and not self.response_started:
                try:
                    await self._send_bytes(_CONTINUE)
                except _Disconnected:
                    return False
        return True

    async def receive(self) -> dict[str, Any]:
        """ASGI ``receive``: the body as it arrives, then ``http.disconnect``."""
        if self.raw_used or not await self._before_body():
            # after read_body_into, the reader cannot tell a next request from the rest of this
            # body
            return {"type": "http.disconnect"}
        reader = self.reader
        if self.body_done:
            await self._wait_for_end()
            return {"type": "http.disconnect"}
        chunks: list[bytes] = []
        while True:
            try:
                piece = reader.next_body()
            except ProtocolError as exc:
                # the client closed mid-body (or sent a broken chunked body): what came is
                # passed on, then the app sees the disconnect
                logger.debug("request body from %s ended early: %s", self.client, exc)
                self.eof = True
                if chunks:
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": True}
                return {"type": "http.disconnect"}
            if piece is END:
                self.body_done = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            if piece is NEED_DATA:
                if chunks:
                    # everything of the last read, in one message
                    return {"type": "http.request", "body": b"".join(chunks), "more_body": True}
                await self._read()
                continue
            assert isinstance(piece, bytes)
            chunks.append(piece)

    async def _wait_for_end(self) -> None:
        """Block (a ``receive()`` after the whole body) until the response is complete or the
        client goes away."""
        async with anyio.create_task_group() as nursery:

            async def watch_socket() -> None:
                # bytes that come now belong to a pipelined next request: the reader keeps them;
                # a client that sends a lot of those is just no longer watched
                while self.reader.buffered < MAX_HEAD_SIZE:
                    if not await self._read():
                        self.eof = True
                        break
                else:
                    await anyio.sleep_forever()
                nursery.cancel_scope.cancel()

            async def watch_response() -> None:
                if not (self.response_complete or self.disconnected):
                    self._response_done = anyio.Event()
                    await self._response_done.wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(watch_socket)
            nursery.start_soon(watch_response)

    def can_read_body_into(self) -> bool:
        """Whether :meth:`read_body_into` may take the body now: a Content-Length body that
        nobody read yet, and a worker thread for it."""
        return (
            self.content_length is not None
            and not self.body_taken
            and not self.body_done
            and self.server.raw_limiter is not None
            and self.server.raw_limiter.available_tokens >= 1
        )

    async def read_body_into(
        self, sink: BodySink, limit: int | None, idle_timeout: float
    ) -> tuple[int, str]:
        """Pass the request body to *sink*, piece by piece, in a worker thread that receives it
        from the socket into one reused buffer (no ASGI message, no copy per piece): the way a
        large upload goes at the speed of the disk. For the scope extension :data:`RAW_BODY`.

        *sink* gets a view that is valid only during the call, and must not keep it. At most
        *limit* bytes are read. Returns the bytes passed to *sink* and how the transfer ended:
        ``"complete"`` (the whole body), ``"limit"`` (the body goes on past *limit*),
        ``"disconnected"`` (the client closed or reset the connection) or ``"idle"`` (nothing
        arrived for *idle_timeout* seconds). If *sink* raises, the transfer stops and the
        exception propagates. If the caller is cancelled, the transfer stops, the thread is
        waited for (what it passed on stays passed on), and the cancellation goes on. Unless the
        whole body arrived, the connection closes after the response.
        """
        if not self.can_read_body_into():
            raise RuntimeError("read_body_into: no body to read, or already read")
        limiter = self.server.raw_limiter
        assert limiter is not None
        assert self.content_length is not None
        self.body_taken = True
        if not await self._before_body():
            return 0, "disconnected"
        # what the reader holds already (it came with the head) goes first
        first: list[bytes] = []
        buffered = 0
        ended = False
        with contextlib.suppress(ProtocolError):
            while isinstance(piece := self.reader.next_body(), bytes):
                first.append(piece)
                buffered += len(piece)
            ended = piece is END
        if ended:
            # all of it was there: the reader saw the whole body, and the connection goes on
            # as usual
            self.body_done = True
            left = 0
        else:
            self.raw_used = True
            left = self.content_length - buffered
        if limit is not None and buffered + left > limit:
            left = max(0, limit - buffered)
            kept: list[bytes] = []
            room = limit
            for piece in first:
                if room <= 0:
                    break
                kept.append(piece[:room])
                room -= len(kept[-1])
            first = kept
        wanted = sum(map(len, first)) + left
        content_length = self.content_length
        sock = self.stream.extra(anyio.abc.SocketAttribute.raw_socket)
        stop = threading.Event()
        result: tuple[int, str] = (0, "disconnected")
        failure: BaseException | None = None
        finished = anyio.Event()

        async def transfer() -> None:
            nonlocal result, failure
            # shielded: a cancelled caller stops the thread (below), never abandons it
            with anyio.CancelScope(shield=True):
                try:
                    result = await anyio.to_thread.run_sync(
                        _pump, sock, stop, first, left, sink, idle_timeout, limiter=limiter
                    )
                except Exception as exc:  # noqa: BLE001 - the sink's: raised below, unwrapped
                    failure = exc
                else:
                    # here, not after the wait: a caller cancelled just as the body ended still
                    # leaves the connection able to serve its next request
                    result = ended_as(*result)
                finally:
                    finished.set()

        def ended_as(passed: int, outcome: str) -> tuple[int, str]:
            if outcome == "complete":
                if wanted < content_length:
                    outcome = "limit"
                elif self.raw_used:
                    self.raw_complete = self.body_done = True
            elif outcome == "disconnected":
                self.eof = True
            return passed, outcome

        async with anyio.create_task_group() as tg:
            tg.start_soon(transfer)
            try:
                await finished.wait()
            finally:
                stop.set()  # the thread sees it within _STOP_CHECK
        if failure is not None:
            raise failure
        return result

    # -- sending --------------------------------------------------------------------------------

    async def _send_bytes(self, data: bytes | None) -> None:
        if not data:
            return
        stream = self.stream
        try:
            if isinstance(stream, _TCPStream):
                # most writes fit in the socket's buffer at once: no timeout to arm for them
                await anyio.lowlevel.checkpoint()
                sent = stream.send_nowait(data)
                if sent == len(data):
                    return
                data = data[sent:]
            # a client that stops reading must not hold the connection (and the app) forever
            with anyio.fail_after(self.server.write_timeout):
                await stream.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, TimeoutError) as exc:
            if isinstance(exc, TimeoutError):
                logger.debug(
                    "%s read nothing for %gs: closing", self.client, self.server.write_timeout
                )
            self.disconnected = True
            # a receive() waiting for the end of the response returns http.disconnect now
            self._response_finished()
            raise _Disconnected from exc

    def _response_finished(self) -> None:
        """The response is complete, or the client gone: wake a receive() that waits for it."""
        if self._response_done is not None:
            self._response_done.set()

    async def send(self, message: dict[str, Any]) -> None:
        """ASGI ``send``: ``http.response.start`` and ``http.response.body``."""
        kind = message["type"]
        if kind == "http.response.start":
            if self.response_started:
                raise RuntimeError("http.response.start sent twice")
            self.response_started = True
            # held until the first body message: a response given whole gets a Content-Length
            # instead of chunked framing
            self.pending_start = message
            return
        if kind == "http.response.informational":
            await self._send_informational(message)
            return
        if kind != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {kind!r}")
        if not self.response_started or self.response_complete:
            raise RuntimeError("http.response.body outside a response")
        body: bytes = message.get("body", b"")
        more_body: bool = message.get("more_body", False)
        if not more_body:
            self.response_complete = True
            self._response_finished()
        if self.disconnected:
            # nobody to send to; the app learns it from receive(). Still a checkpoint: an app
            # that sends in a loop must not starve the other connections
            await anyio.lowlevel.checkpoint()
            return
        pieces: list[bytes] = []
        if self.pending_start is not None:
            start, self.pending_start = self.pending_start, None
            pieces.append(self._response(start, None if more_body else len(body)))
        writer = self.body_writer
        assert writer is not None
        if body and self.method != b"HEAD":
            pieces += writer.data(body)
        if not more_body:
            pieces.append(writer.end())
        # one send per message: a small response (head, body, chunked trailer) costs one syscall
        # and goes out in one segment; a large body is not copied just to be joined
        try:
            if sum(map(len, pieces)) <= _JOIN_LIMIT:
                await self._send_bytes(b"".join(pieces))
            else:
                for piece in pieces:
                    await self._send_bytes(piece)
        except _Disconnected:
            return

    async def _send_informational(self, message: dict[str, Any]) -> None:
        """An interim (1xx) response, before the final one; dropped once that has started."""
        status = int(message["status"])
        if not 100 <= status < 200 or status == 101:
            raise RuntimeError(f"not an informational status: {status}")
        if self.response_started or self.disconnected:
            return
        heads: list[bytes] = []
        if self.expect_100 and self.reader.expects_continue:
            # "the server MUST NOT omit the 100 (Continue) response because it has sent an
            # interim response with the 104 (Upload Resumption Supported) status code"
            self.expect_100 = False
            heads.append(_CONTINUE)
        headers = [
            (bytes(name).lower(), bytes(value)) for name, value in message.get("headers", ())
        ]
        heads.append(response_head(status, _REASONS.get(status, b""), headers))
        with contextlib.suppress(_Disconnected):
            await self._send_bytes(b"".join(heads))

    async def _flush_start(self, length: int | None) -> None:
        """Send the held ``http.response.start``; *length*: the whole body's, if known."""
        assert self.pending_start is not None
        start, self.pending_start = self.pending_start, None
        await self._send_bytes(self._response(start, length))

    def _response(self, start: dict[str, Any], length: int | None) -> bytes:
        """The response head for *start*, its framing decided (:attr:`body_writer`,
        :attr:`keep_alive`); *length*: the whole body's, if known."""
        headers: list[tuple[bytes, bytes]] = []
        has_length = has_server = has_date = False
        for name, value in start.get("headers", ()):
            lower = bytes(name).lower()
            if lower == b"content-length" or lower == b"transfer-encoding":
                has_length = True
            elif lower == b"server":
                has_server = True
            elif lower == b"date":
                has_date = True
            headers.append((lower, bytes(value)))
        status = int(start["status"])
        if (
            not has_length
            and length is not None
            and self.method != b"HEAD"
            and status not in _NO_BODY
        ):
            headers.append((b"content-length", b"%d" % length))
        if not has_server:
            headers.append(_SERVER_HEADER)
        if not has_date:
            headers.append((b"date", _date.value()))
        assert self.request is not None
        # when stopping, this is the last response on the connection: it says so
        self.body_writer, self.keep_alive = frame_response(
            self.request, status, headers, keep_alive=not self.server.stopping
        )
        return response_head(status, _REASONS.get(status, b""), headers)

    # -- one request ----------------------------------------------------------------------------

    def scope(self, request: Request) -> dict[str, Any]:
        target = request.target
        if not target.startswith(b"/") and b"://" in target:
            # absolute-form (RFC 9112 3.2.2, which servers must accept): the path is what follows
            # the authority
            slash = target.find(b"/", target.index(b"://") + 3)
            target = target[slash:] if slash >= 0 else b"/"
        raw_path, _, query = target.partition(b"?")
        extensions: dict[str, Any] = {"http.response.informational": {}}
        self.content_length = request.content_length
        if self.server.raw_limiter is not None and self.content_length:
            extensions[RAW_BODY] = {
                "available": self.can_read_body_into,
                "read_into": self.read_body_into,
            }
        return {
            "type": "http",
            "asgi": _ASGI,
            "http_version": request.http_version.decode("ascii"),
            "method": request.method.decode("ascii"),
            "scheme": self.server.scheme,
            "path": unquote(raw_path.decode("ascii", "replace")),
            "raw_path": raw_path,
            "query_string": query,
            "root_path": "",
            "headers": request.headers,
            "client": self.client,
            "server": self.local,
            "state": dict(self.server.state),
            "extensions": extensions,
        }

    async def run(self) -> None:
        """Serve requests on this connection until it should close."""
        while True:
            request = await self.read_head()
            if request is None:
                return
            self._reset_request()
            self.request = request
            self.method = request.method
            self.expect_100 = request.expects_continue
            self.server.busy += 1
            try:
                failed = await self._call_app(request)
            finally:
                self.server.busy -= 1
                self.server.notify()
            if failed or self.disconnected or self.eof or not self.keep_alive:
                return
            reader = self.reader
            if self.raw_used:
                if not self.raw_complete:
                    return  # the rest of the body is still coming: close
                # the reader waits for a body that went around it: the next request starts
                # afresh (nothing of it was read: the transfer read exactly the body)
                self.reader = RequestReader(MAX_HEAD_SIZE)
                continue
            if reader.state == "body" and not await self._drain():
                return
            if reader.state != "done":
                return
            reader.start_next_cycle()

    async def _call_app(self, request: Request) -> bool:
        """Run the app for *request*; True if the connection cannot go on."""
        try:
            await self.server.app(self.scope(request), self.receive, self.send)
        except Exception:
            logger.exception("error in the ASGI app (%s %s)", request.method, request.target)
            if not self.response_started and not self.disconnected:
                await self._send_error(500)
            return True
        if not self.response_complete and not self.disconnected:
            if self.response_started:
                if self.eof:
                    # the client half-closed mid-body and the app stopped there (TusApp does):
                    # end the response if what was sent is complete (Content-Length: 0)
                    with contextlib.suppress(RuntimeError, _Disconnected):
                        if self.pending_start is not None:
                            await self._flush_start(0)
                        assert self.body_writer is not None
                        await self._send_bytes(self.body_writer.end())
                    return True
                logger.error("the ASGI app returned without completing its response")
                return True
            if self.eof:
                # the client's side ended before the app answered: the app chose not to (TusApp
                # does so on purpose); a 500 would only mislead a half-closed client
                return True
            logger.error("the ASGI app returned without a response")
            await self._send_error(500)
            return True
        return False

    async def _send_error(self, status: int) -> None:
        self.response_started = True
        self.response_complete = True
        self._response_finished()
        self.pending_start = None
        body = b"Internal Server Error\n"
        headers = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
            (b"date", _date.value()),
            _SERVER_HEADER,
        ]
        head = response_head(status, _REASONS[status], headers)
        with contextlib.suppress(_Disconnected):
            await self._send_bytes(head if self.method == b"HEAD" else head + body)

    async def _drain(self) -> bool:
        """Read and drop the rest of a body the app did not read; True if it all came in time."""
        reader = self.reader
        # most often what is left is the end of an empty body (a bodiless POST): no timeout to
        # arm for that
        try:
            piece = reader.next_body()
        except ProtocolError:
            return False
        if piece is END:
            return True
        dropped = len(piece) if isinstance(piece, bytes) else 0
        with anyio.move_on_after(DRAIN_TIME):
            while dropped <= DRAIN_SIZE:
                try:
                    piece = reader.next_body()
                except ProtocolError:
                    return False
                if piece is END:
                    return True
                if isinstance(piece, bytes):
                    dropped += len(piece)
                elif not await self._read():
                    return False
        return False

    async def close(self) -> None:
        """Close the connection; when the client may still be sending, first let it see our end of
        the stream and drop what it sends meanwhile (a close with unread bytes makes the kernel
        send a reset, which can lose the response we just sent)."""
        stream = self.stream
        state = self.reader.state
        lingering = (not self.disconnected and state == "body") or state == "error"
        try:
            if lingering:
                with anyio.move_on_after(DRAIN_TIME):
                    with contextlib.suppress(NotImplementedError):  # TLS has no half-close
                        await stream.send_eof()
                    dropped = 0
                    while dropped <= DRAIN_SIZE:
                        dropped += len(await stream.receive(READ_SIZE))
        except (
            anyio.EndOfStream,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            anyio.BusyResourceError,
        ):
            pass
        finally:
            await stream.aclose()


def _pump(
    sock: socket.socket,
    stop: threading.Event,
    first: list[bytes],
    left: int,
    sink: BodySink,
    idle_timeout: float,
) -> tuple[int, str]:
    """The worker thread of :meth:`_Connection.read_body_into`: *first*, then *left* bytes
    from the (non-blocking) socket, each piece to *sink*. Stops within :data:`_STOP_CHECK` of
    *stop* being set."""
    passed = 0
    for piece in first:
        sink(memoryview(piece))
        passed += len(piece)
    if not left:
        return passed, "complete"
    view = memoryview(bytearray(min(left, RAW_BUFFER_SIZE)))
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    idle_since = time.monotonic()
    while left:
        if stop.is_set():
            return passed, "stopped"
        try:
            n = sock.recv_into(view, min(left, len(view)))
        except (BlockingIOError, InterruptedError):
            idle = time.monotonic() - idle_since
            if idle >= idle_timeout:
                return passed, "idle"
            # wake up now and then to see whether the caller wants us to stop
            wait = min(_STOP_CHECK, idle_timeout - idle)
            poller.poll(max(1, math.ceil(wait * 1000)))
            continue
        except OSError:  # reset
            return passed, "disconnected"
        if not n:
            return passed, "disconnected"
        sink(view[:n])
        passed += n
        left -= n
        idle_since = time.monotonic()
    return passed, "complete"


class _TCPStream(anyio.abc.ByteStream):
    """A connected TCP socket as an anyio byte stream: non-blocking calls, and
    :func:`anyio.wait_readable` / :func:`anyio.wait_writable` when the socket is not ready.

    Why not anyio's own socket stream: on asyncio it reads ahead (its transport fills a buffer
    of its own whenever it reads), so bytes could be there that the socket no longer has. Here
    nothing reads the socket between two :meth:`receive` calls, on either backend, and a worker
    thread may take a request body straight from it (:meth:`_Connection.read_body_into`).
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._closed = False

    async def _retry(
        self, call: Callable[[], _T], wait: Callable[[socket.socket], Awaitable[None]]
    ) -> _T:
        """*call* (a non-blocking socket call) until it does not block, waiting with *wait*."""
        while True:
            if self._closed:
                raise anyio.ClosedResourceError
            try:
                return call()
            except (BlockingIOError, InterruptedError):
                await wait(self._sock)
            except OSError as exc:  # reset, and the like
                raise anyio.BrokenResourceError from exc

    async def receive(self, max_bytes: int = 65536) -> bytes:
        # the checkpoint comes before the read, never after it: a cancellation never loses data
        await anyio.lowlevel.checkpoint()
        data = await self._retry(partial(self._sock.recv, max_bytes), anyio.wait_readable)
        if not data:
            raise anyio.EndOfStream
        return data

    async def send(self, item: bytes) -> None:
        await anyio.lowlevel.checkpoint()
        view = memoryview(item)
        while view:
            sent = await self._retry(partial(self._sock.send, view), anyio.wait_writable)
            view = view[sent:]

    def send_nowait(self, data: bytes) -> int:
        """Send what the socket takes now (no wait, no checkpoint); return how much that was."""
        if self._closed:
            raise anyio.ClosedResourceError
        try:
            return self._sock.send(data)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def send_eof(self) -> None:
        await anyio.lowlevel.checkpoint()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError as exc:
            raise anyio.BrokenResourceError from exc

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            # tasks waiting on the socket get ClosedResourceError, not a wait on a dead descriptor
            anyio.notify_closing(self._sock)
            self._sock.close()
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._sock
        return {
            anyio.abc.SocketAttribute.raw_socket: lambda: sock,
            anyio.abc.SocketAttribute.family: lambda: sock.family,
            anyio.abc.SocketAttribute.local_address: sock.getsockname,
            anyio.abc.SocketAttribute.remote_address: sock.getpeername,
        }


#: accept() errors that mean "not now" (descriptors or memory ran out): wait a little, go on
_ACCEPT_RETRY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: how long accepting pauses after one of those (as trio's serve_listeners)
_ACCEPT_RETRY_DELAY = 0.1


class AcceptBalance(Protocol):
    """How processes that accept on one shared listening socket even out their connections.

    Left to the kernel, every process waiting on the socket is woken for a new connection and
    the first to call ``accept()`` gets it, so the connections a client opens one by one and
    keeps can pile onto one worker: of 8 such connections to two workers, one took 7 in a third
    of the rounds on asyncio's own event loop, and 6 or more in a quarter on uvloop and in nearly
    half on trio. With a balance, a process that holds more connections than another waits
    :data:`ACCEPT_YIELD_DELAY` for each connection it has more (up to :data:`_MAX_YIELD_STEPS`)
    before it accepts, and a less busy one takes the connection: 4 and 4 in every round.
    """

    def connections(self, count: int) -> None:
        """This process now has *count* connections open (-1: it no longer accepts)."""

    def lead(self) -> int:
        """How many more connections this process has open than the least busy other process
        that accepts (0 when none has fewer)."""


#: how long a process busier than another by one connection lets it take a new connection first;
#: if it does not (it may be stalled), the busier one takes it. The wait grows with the lead, so
#: that a process stalled for a moment (a busy machine) does not leave another with every
#: connection of a burst.
ACCEPT_YIELD_DELAY = 0.005
_MAX_YIELD_STEPS = 8


async def _accept(listener: socket.socket, server: _Server, tg: anyio.abc.TaskGroup) -> None:
    """Accept connections on *listener* forever, each handled by *server* in a task of *tg*."""
    listener.setblocking(False)
    balance = server.balance
    while True:
        await anyio.lowlevel.checkpoint()
        if balance is not None and (lead := balance.lead()) > 0:
            # a less busy process may take what comes (or what waits) first
            await anyio.wait_readable(listener)
            await anyio.sleep(ACCEPT_YIELD_DELAY * min(lead, _MAX_YIELD_STEPS))
            if balance.lead() > 0:
                # a less busy server in this process whose wait ended at the same moment goes
                # first (trio runs the tasks it wakes together in random order)
                await anyio.lowlevel.checkpoint()
        if server.stopping:
            # serve() closes the listener right after it cancels this task, which may already
            # have been woken (from its sleep) before the cancellation could reach it
            return
        try:
            sock, _ = listener.accept()
        except (BlockingIOError, InterruptedError):
            await anyio.wait_readable(listener)
            continue
        except OSError as exc:
            if exc.errno == errno.ECONNABORTED:
                continue  # the client gave up before we got to it
            if exc.errno in _ACCEPT_RETRY_ERRNOS:
                logger.warning("cannot accept a connection (%s): retrying", exc.strerror)
                await anyio.sleep(_ACCEPT_RETRY_DELAY)
                continue
            raise
        # counted at once, so that a backlog of connections is shared out as it is accepted
        server.count_open(+1)
        tg.start_soon(server.handle, _TCPStream(sock))


def _address(address: Any) -> tuple[str, int] | None:
    if isinstance(address, tuple) and len(address) >= 2:
        return str(address[0]), int(address[1])
    return None


class _Server:
    def __init__(
        self,
        app: Any,
        ssl_context: ssl.SSLContext | None = None,
        *,
        keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
        head_timeout: float = HEAD_TIMEOUT,
        write_timeout: float = WRITE_TIMEOUT,
        raw_bodies: bool = False,
        balance: AcceptBalance | None = None,
    ) -> None:
        self.app: Callable[..., Awaitable[None]] = app
        self.balance = balance
        #: connections accepted and not yet closed (including those still in their handshake)
        self.open = 0
        #: worker threads for raw body transfers; None: not offered
        self.raw_limiter = (
            anyio.CapacityLimiter(MAX_RAW_TRANSFERS) if raw_bodies and ssl_context is None else None
        )
        self.ssl_context = ssl_context
        self.scheme = "http" if ssl_context is None else "https"
        self.keep_alive_timeout = keep_alive_timeout
        self.head_timeout = head_timeout
        self.write_timeout = write_timeout
        self.stopping = False
        #: connections that are running a request
        self.busy = 0
        self.connections: set[_Connection] = set()
        #: set (and dropped) when a connection ends or finishes a request; made by a waiter
        #: (most of the time, nobody waits)
        self.changed: anyio.Event | None = None
        #: the lifespan state (ASGI ``state``): each request gets a shallow copy
        self.state: dict[str, Any] = {}

    async def handle(self, stream: _TCPStream) -> None:
        """One connection (counted by :meth:`count_open` when it was accepted), start to end;
        never raises (except for cancellation)."""
        try:
            await self._handle(stream)
        finally:
            self.count_open(-1)

    def count_open(self, change: int) -> None:
        """One more (+1) or one fewer (-1) connection open."""
        self.open += change
        if self.balance is not None and not self.stopping:
            self.balance.connections(self.open)

    async def _handle(self, stream: _TCPStream) -> None:
        if self.ssl_context is not None:
            tls = await self._handshake(stream, self.ssl_context)
            if tls is None:
                return
            connection = _Connection(self, tls)
        else:
            connection = _Connection(self, stream)
        self.connections.add(connection)
        try:
            await connection.run()
        except Exception:
            # a bug here must cost this connection only, never the server (issue #7)
            logger.exception("error on the connection from %s", connection.client)
        finally:
            self.connections.discard(connection)
            self.notify()
            try:
                await connection.close()
            except Exception:
                logger.debug("error closing the connection", exc_info=True)

    @staticmethod
    async def _handshake(stream: _TCPStream, context: ssl.SSLContext) -> TLSStream | None:
        """The TLS handshake, within :data:`HEAD_TIMEOUT`; ``None`` (and the connection closed)
        if it fails: a client that does not speak TLS costs its connection only."""
        try:
            with anyio.fail_after(HEAD_TIMEOUT):
                # not standard_compatible: closing does not wait for the client's close_notify
                # (which many never send), and a client's unclean close is an ordinary EOF
                return await TLSStream.wrap(
                    stream, server_side=True, ssl_context=context, standard_compatible=False
                )
        except (
            TimeoutError,
            OSError,
            ssl.SSLError,
            anyio.EndOfStream,
            anyio.BrokenResourceError,
        ) as exc:
            logger.debug("TLS handshake failed: %r", exc)
            await anyio.aclose_forcefully(stream)
            return None

    def notify(self) -> None:
        """Wake whoever waits on :attr:`changed`."""
        if self.changed is not None:
            self.changed.set()
            self.changed = None

    def stop_idle(self) -> None:
        """Close every connection that waits for a next request."""
        for connection in self.connections:
            if connection.idle and connection.idle_scope is not None:
                connection.idle_scope.cancel()

    async def wait_until_idle(self) -> None:
        """Return once every connection has ended, closing each as soon as it goes idle."""
        while self.connections:
            self.stop_idle()
            # woken when a connection ends or one that was running a request goes idle
            if self.changed is None:
                self.changed = anyio.Event()
            await self.changed.wait()


class _Lifespan:
    """The app's ``lifespan`` scope, run beside the server."""

    def __init__(self, app: Callable[..., Awaitable[None]], state: dict[str, Any]) -> None:
        self.app = app
        self.state = state
        self._to_app_send, self._to_app = anyio.create_memory_object_stream[dict[str, Any]](2)
        self.started = anyio.Event()
        self.stopped = anyio.Event()
        self.failure: str | None = None
        #: the app does not do lifespans (it raised before its startup completed)
        self.unsupported = False

    def close(self) -> None:
        """Close the channel to the app (memory streams warn if dropped open)."""
        self._to_app_send.close()
        self._to_app.close()

    async def run(self) -> None:
        scope = {"type": "lifespan", "asgi": _ASGI, "state": self.state}
        try:
            await self.app(scope, self._receive, self._send)
        except Exception:
            if not self.started.is_set():
                logger.info("the ASGI app has no lifespan (it raised): going on without")
                self.unsupported = True
            else:
                logger.exception("error in the ASGI app's lifespan")
        finally:
            self.started.set()
            self.stopped.set()

    async def _receive(self) -> dict[str, Any]:
        return await self._to_app.receive()

    async def _send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "lifespan.startup.complete":
            self.started.set()
        elif kind == "lifespan.startup.failed":
            self.failure = str(message.get("message", ""))
            self.started.set()
        elif kind == "lifespan.shutdown.complete":
            self.stopped.set()
        elif kind == "lifespan.shutdown.failed":
            logger.error("lifespan shutdown failed: %s", message.get("message", ""))
            self.stopped.set()

    async def startup(self) -> None:
        await self._to_app_send.send({"type": "lifespan.startup"})
        with anyio.move_on_after(LIFESPAN_TIMEOUT):
            await self.started.wait()
        if not self.started.is_set():
            raise LifespanFailedError(f"lifespan startup took more than {LIFESPAN_TIMEOUT:g}s")
        if self.failure is not None:
            raise LifespanFailedError(f"lifespan startup failed: {self.failure}")

    async def shutdown(self) -> None:
        if self.unsupported or self.stopped.is_set():
            return
        await self._to_app_send.send({"type": "lifespan.shutdown"})
        with anyio.move_on_after(LIFESPAN_TIMEOUT):
            await self.stopped.wait()


async def serve(
    app: Any,
    sock: socket.socket,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    ready: Callable[[], None] | None = None,
    shutdown_timeout: float = 5.0,
    interrupt: Callable[[], None] | None = None,
    before_cancel: Callable[[], None] | None = None,
    force_trigger: Callable[[], Awaitable[None]] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    keep_alive_timeout: float = KEEP_ALIVE_TIMEOUT,
    head_timeout: float = HEAD_TIMEOUT,
    write_timeout: float = WRITE_TIMEOUT,
    raw_bodies: bool = False,
    balance: AcceptBalance | None = None,
) -> None:
    """Serve the ASGI 3 *app* over HTTP/1.1 on *sock* (bound and listening) until
    *shutdown_trigger* returns.

    :param app: the ASGI application (``http`` and ``lifespan`` scopes)
    :param sock: a listening TCP socket; it is closed when serving ends (other processes may hold
        their own descriptors of it and go on accepting)
    :param shutdown_trigger: returns when the server should stop
    :param ready: called once the app's lifespan startup is complete and connections are accepted
    :param shutdown_timeout: how long running requests may go on after the trigger before they are
        interrupted (or cancelled)
    :param interrupt: called when *shutdown_timeout* has passed with requests still running, to
        make them answer; they get :data:`INTERRUPT_GRACE` more before they are cancelled
    :param before_cancel: called just before running requests are cancelled
    :param force_trigger: returns when the shutdown should not wait any longer (a second signal):
        running requests are cancelled at once
    :param ssl_context: serve HTTPS: each connection does its TLS handshake in its own task
        (scope ``scheme`` is then ``"https"``)
    :param keep_alive_timeout: how long a connection may wait for the first byte of its next
        request (then it is closed)
    :param head_timeout: how long a request head may take from its first byte to its end (then
        the connection is closed): a client that trickles its head in (slowloris) is cut off
    :param write_timeout: how long one write of a response may wait for the client to read
        (then the connection is closed, and the app's further sends are dropped)
    :param raw_bodies: offer the :data:`RAW_BODY` scope extension (not over TLS): a worker
        thread receives a large body from the socket itself
    :param balance: how this process shares *sock* with others that accept on it too
    :raises LifespanFailedError: the app's lifespan startup failed
    """
    server = _Server(
        app,
        ssl_context,
        keep_alive_timeout=keep_alive_timeout,
        head_timeout=head_timeout,
        write_timeout=write_timeout,
        raw_bodies=raw_bodies,
        balance=balance,
    )
    lifespan = _Lifespan(server.app, server.state)
    # the channel to the app is closed however serving ends (memory streams warn if dropped open)
    with contextlib.closing(lifespan):
        async with anyio.create_task_group() as outer:
            outer.start_soon(lifespan.run)
            try:
                await lifespan.startup()
            except BaseException:
                sock.close()
                outer.cancel_scope.cancel()
                raise
            async with anyio.create_task_group() as connections:
                accepting = anyio.CancelScope()

                async def accept() -> None:
                    with accepting:
                        await _accept(sock, server, connections)

                if balance is not None:
                    balance.connections(server.open)
                connections.start_soon(accept)
                if ready is not None:
                    ready()
                await shutdown_trigger()
                server.stopping = True
                if balance is not None:
                    balance.connections(-1)
                accepting.cancel()
                # other workers may hold the same listening socket and go on accepting
                anyio.notify_closing(sock)
                sock.close()
                server.stop_idle()
                async with anyio.create_task_group() as draining:
                    if force_trigger is not None:

                        async def on_force() -> None:
                            await force_trigger()
                            draining.cancel_scope.cancel()

                        draining.start_soon(on_force)
                    with anyio.move_on_after(shutdown_timeout):
                        await server.wait_until_idle()
                    if server.busy and interrupt is not None:
                        logger.warning(
                            "requests still running after %gs: interrupting them", shutdown_timeout
                        )
                        interrupt()
                        with anyio.move_on_after(INTERRUPT_GRACE):
                            await server.wait_until_idle()
                    draining.cancel_scope.cancel()
                if server.busy:
                    logger.warning("requests still running: cancelling them")
                    if before_cancel is not None:
                        before_cancel()
                connections.cancel_scope.cancel()
            with anyio.move_on_after(LIFESPAN_TIMEOUT) as scope:
                scope.shield = True
                await lifespan.shutdown()
            outer.cancel_scope.cancel()
