"""A tus 1.0.0 server as a plain ASGI application.

::

    from anytus import FileStore
    from anytus.asgi import TusApp

    app = TusApp(FileStore("uploads"), base_path="/files/")

Mount it under any ASGI server (hypercorn, uvicorn, ...) or framework. It speaks tus 1.0.0 with
the creation, creation-with-upload, creation-defer-length, termination, concatenation, checksum and
expiration extensions (those the store supports), plus GET downloads with ranges and CORS.

Duties are split as in tusd: this module validates headers, offsets, sizes and finality, takes the
upload's lock and caps the body; the store only stores. Header syntax lives in
:mod:`anytus._protocol`, which has no I/O.
"""

from __future__ import annotations

__all__ = ("ASGIApp", "HookRequest", "Message", "Receive", "Scope", "Send", "TusApp")

import contextlib
import dataclasses
import hashlib
import logging
import math
import time
import urllib.parse
import zlib
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Final, Protocol, cast

import anyio
import anyio.lowlevel

from . import _protocol as proto
from ._asgi_types import ASGIApp, Message, Receive, Scope, Send
from ._datastore import StoreComposer
from ._exceptions import (
    ChecksumMismatch,
    InvalidHeader,
    MaxSizeExceeded,
    MethodNotAllowed,
    OffsetMismatch,
    OriginNotAllowed,
    RangeNotSatisfiable,
    RequestBodyTimeout,
    SizeExceeded,
    TusError,
    UnsupportedMediaType,
    UnsupportedVersion,
    UploadExpired,
    UploadInterrupted,
    UploadIsFinal,
    UploadNotFinished,
    UploadNotFound,
)
from ._info import UploadInfo

if TYPE_CHECKING:
    from anyio.abc import ByteReceiveStream

    from ._asgi_types import (
        ASGIReceiveCallable,
        ASGISendCallable,
        HTTPResponseBodyEvent,
        HTTPScope,
    )
    from ._datastore import (
        ConcatenatableStore,
        DataStore,
        ExpiringStore,
        LengthDeferrableStore,
        Locker,
        TerminatableStore,
        TruncatableStore,
    )

logger = logging.getLogger("anytus")

_METHODS: Final = "POST, HEAD, PATCH, OPTIONS, GET, DELETE"
# every request header a tus client (tus-js-client, Uppy) sends cross-origin
_ALLOW_HEADERS: Final = (
    "Authorization, Origin, X-Requested-With, X-Request-ID, X-HTTP-Method-Override, "
    "Content-Type, Upload-Length, Upload-Offset, Tus-Resumable, Upload-Metadata, "
    "Upload-Defer-Length, Upload-Concat, Upload-Checksum, Range"
)
# every response header a browser client must be able to read
_EXPOSE_HEADERS: Final = (
    "Upload-Offset, Location, Upload-Length, Tus-Version, Tus-Resumable, Tus-Max-Size, "
    "Tus-Extension, Tus-Checksum-Algorithm, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Upload-Expires, Content-Range, Content-Disposition"
)
# After an early answer (409, 413, 415...) the rest of the request body is read and dropped for up
# to this long, as nginx's lingering close does: clients that write the whole body before reading
# (httpx, requests...) then get the answer on a healthy connection instead of a reset. A body still
# unread after that is not worth more (tus/tusd#1371): the connection is closed.
_LINGER_TIME: Final = 5.0
# statuses whose responses carry no body and no Content-Length (RFC 9110 §8.6)
_NO_BODY_STATUSES: Final = frozenset({204, 304})


class _StoreLike(Protocol):
    """What :class:`TusApp` needs of a store: that it registers its capabilities."""

    def use_in(self, composer: StoreComposer) -> None: ...


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class HookRequest:
    """The HTTP request an ``on_create`` hook is called for."""

    #: the method (after ``X-HTTP-Method-Override``), upper case
    method: str
    #: the request path, percent-decoded
    path: str
    #: request headers: lower-case names, Latin-1-decoded values, repeats joined with ``", "``
    headers: Mapping[str, str]
    #: the client's address, if the server knows it
    client: tuple[str, int] | None
    #: ``"http"`` or ``"https"``
    scheme: str


OnCreate = Callable[[UploadInfo, HookRequest], Awaitable[None]]
OnUpload = Callable[[UploadInfo], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class _Response:
    status: int
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""


class _Request:
    """One HTTP request: parsed headers, and the state of its connection."""

    __slots__ = (
        "body_received",
        "body_stalled",
        "body_unread",
        "content_length",
        "disconnected",
        "drain",
        "extra_headers",
        "headers",
        "method",
        "raw_path",
        "receive",
        "response_started",
        "scope",
        "send",
    )

    def __init__(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        self.scope = scope
        self.receive = receive
        self.send = send
        headers: dict[str, str] = {}
        for raw_name, raw_value in scope["headers"]:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1").strip(" \t")
            # repeated fields are one comma-separated list (RFC 9110 §5.3); for the tus headers
            # this makes "Upload-Offset: 1" twice a malformed "1, 1", as it should be
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        self.headers = headers
        method = scope["method"].upper()
        # "The X-HTTP-Method-Override request header MUST be a string which MUST be interpreted
        # as the request's method by the Server, if the header is presented."
        override = headers.get("x-http-method-override")
        self.method = override.strip().upper() if override else method
        raw_path = scope.get("raw_path")
        # raw_path keeps "%2F" apart from "/"; without it, re-encode the decoded path
        if raw_path:
            self.raw_path = raw_path.decode("latin-1").split("?", 1)[0]
        else:
            self.raw_path = urllib.parse.quote(scope["path"], safe="/")
        #: the client went away (``http.disconnect``): nothing may be sent any more
        self.disconnected = False
        #: the request has a body that was not read to its end
        self.body_unread = "transfer-encoding" in headers or headers.get(
            "content-length", "0"
        ) not in ("", "0")
        #: body bytes received so far
        self.body_received = 0
        #: the body's length, if Content-Length says (and no transfer coding overrides it)
        self.content_length: int | None = None
        if "transfer-encoding" not in headers and headers.get("content-length", "").isdigit():
            self.content_length = int(headers["content-length"])
        #: the client stopped sending (idle timeout) or was interrupted: do not wait for the rest
        self.body_stalled = False
        #: read and drop the rest of the body after the response (see _LINGER_TIME)
        self.drain = False
        self.response_started = False
        #: headers every response to this request carries, errors included (``Location``)
        self.extra_headers: list[tuple[str, str]] = []

    @property
    def scheme(self) -> str:
        return self.scope.get("scheme") or "http"

    def hook_request(self) -> HookRequest:
        client = self.scope.get("client")
        return HookRequest(
            method=self.method,
            path=self.scope["path"],
            headers=dict(self.headers),
            client=tuple(client) if client else None,  # type: ignore[arg-type]
            scheme=self.scheme,
        )


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    """zlib's CRC-32 behind hashlib's interface; the digest is 4 bytes, big-endian."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def _new_hasher(algorithm: str) -> _Hasher:
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.new(algorithm, usedforsecurity=False)


class _BodyReader:
    """The request body as an async iterator of ``bytes`` for ``write_chunk``.

    As tusd's ``bodyReader``: the store never sees a body error. A disconnect or a body longer
    than *limit* end the iteration cleanly after the last byte that may be stored, and the reason
    is kept in :attr:`error` / ``request.disconnected`` for the handler to act on once the bytes
    are safely in the store. A stalled body is ended by :meth:`watch_idle`, which runs beside the
    write and cancels it (the store keeps what it took, as for a release request).

    A class, not an async generator: the store may stop iterating early, and an async generator
    would need ``aclosing()`` discipline (trio's async-generator notes).
    """

    __slots__ = (
        "_done",
        "_exceeded",
        "_hasher",
        "_limit",
        "_request",
        "complete",
        "error",
        "last_activity",
    )

    def __init__(
        self,
        request: _Request,
        *,
        limit: int | None,
        exceeded: TusError,
        hasher: _Hasher | None,
    ) -> None:
        self._request = request
        self._limit = limit
        self._exceeded = exceeded
        self._hasher = hasher
        self._done = False
        #: why the body ended early (timeout, too long), if it did
        self.error: TusError | None = None
        #: the body's last message has arrived
        self.complete = False
        #: when the last message arrived (``time.monotonic()``)
        self.last_activity = time.monotonic()

    def __aiter__(self) -> _BodyReader:
        return self

    async def __anext__(self) -> bytes:
        while not self._done:
            # No fail_after() here: one per message (64 KiB from hypercorn) was 12-16% of the
            # CPU time of a large PATCH. Stamping the time is all the idle watchdog needs.
            message = await self._request.receive()
            self.last_activity = time.monotonic()
            if message["type"] != "http.request":
                # "http.disconnect": the body ends here; what came before is kept (tus: "The
                # Server SHOULD always attempt to store as much of the received data as possible")
                self._request.disconnected = True
                self._done = True
                break
            body = message.get("body", b"")
            self._request.body_received += len(body)
            if not message.get("more_body", False) or (
                self._request.body_received == self._request.content_length
            ):
                # the last byte is here (servers may send an empty last message later)
                self.complete = True
            if not message.get("more_body", False):
                self._request.body_unread = False
                self._done = True
            if self._limit is not None:
                if len(body) > self._limit:
                    # store exactly what fits, then refuse the rest
                    body = body[: self._limit]
                    self.error = self._exceeded
                    self._done = True
                self._limit -= len(body)
            if body:
                if self._hasher is not None:
                    self._hasher.update(body)
                return body
        raise StopAsyncIteration

    async def watch_idle(self, timeout: float, body_scope: anyio.CancelScope) -> None:
        """Cancel *body_scope* once no message has arrived for *timeout* seconds."""
        while True:
            idle = time.monotonic() - self.last_activity
            if idle >= timeout:
                self._request.body_stalled = True
                self.error = RequestBodyTimeout(f"no data received for {timeout:g} seconds")
                body_scope.cancel()
                return
            await anyio.sleep(timeout - idle)


@dataclasses.dataclass(frozen=True, slots=True)
class _Appended:
    """The outcome of writing one request body."""

    #: the upload after the write (its offset counts only stored bytes)
    info: UploadInfo
    #: this request completed the upload (``on_finish`` is due)
    completed: bool
    #: why the request failed after bytes may have been stored
    error: TusError | None


class TusApp:
    """A tus 1.0.0 server for one store, as an ASGI application.

    :param store: where uploads live, usually a :class:`~anytus.FileStore`; the extensions
        advertised are the ones it registers with ``use_in``
    :param base_path: the creation URL; uploads live at ``{base_path}{id}``. It is matched
        against the full request path, so include any prefix the app is mounted under
    :param max_size: the largest upload accepted (``Tus-Max-Size``); larger lengths and bodies
        are refused with 413
    :param lock_timeout: how long a request waits for an upload's lock (then 423). A request that
        waits asks the holder to stop: a running PATCH then ends with 400
        ``ERR_UPLOAD_INTERRUPTED`` after storing what it read
    :param idle_timeout: a request body that sends nothing for this many seconds ends the request
        (the bytes received are kept; 500 ``ERR_READ_TIMEOUT``, so that clients retry)
    :param expire_after: enables the expiration extension: unfinished uploads not written to for
        this many seconds expire (410, and are removed)
    :param cleanup_interval: how often expired uploads are removed while the server runs (default
        ``expire_after / 2``). The periodic cleanup runs in the ASGI lifespan; when the server
        sends no lifespan events it runs after a request, at most this often
    :param on_create: ``async (info, request)`` called before an upload is created (*info* has
        no ID yet); raise :class:`~anytus.HookRejected` to refuse with its status
    :param on_finish: ``async (info)`` called exactly once per upload that becomes complete
        (including partial uploads, empty uploads and final concatenations), after the write
        that completed it and before the response; a :class:`~anytus.TusError` it raises is the
        response (the upload stays complete)
    :param on_terminate: ``async (info)`` called after an upload was deleted by a DELETE
    :param cors_allow_origins: origins allowed to make cross-origin requests; ``("*",)`` allows
        all, ``()`` disables CORS handling (no CORS headers, no origin check)
    :param max_metadata_size: the longest ``Upload-Metadata`` header accepted, in bytes (400)
    """

    def __init__(
        self,
        store: _StoreLike,
        *,
        base_path: str = "/files/",
        max_size: int | None = None,
        lock_timeout: float = 20.0,
        idle_timeout: float = 60.0,
        expire_after: float | None = None,
        cleanup_interval: float | None = None,
        on_create: OnCreate | None = None,
        on_finish: OnUpload | None = None,
        on_terminate: OnUpload | None = None,
        cors_allow_origins: Sequence[str] = ("*",),
        max_metadata_size: int = 4096,
    ) -> None:
        if not base_path.startswith("/"):
            raise ValueError(f"base_path must start with '/', got {base_path!r}")
        if max_size is not None and max_size < 0:
            raise ValueError("max_size must not be negative")
        if expire_after is not None and expire_after <= 0:
            raise ValueError("expire_after must be positive")
        if cleanup_interval is not None and cleanup_interval <= 0:
            raise ValueError("cleanup_interval must be positive")
        composer = StoreComposer()
        store.use_in(composer)
        if composer.core is None:
            raise TypeError(f"{store!r} registers no core store")
        self.store = store
        self.base_path = base_path if base_path.endswith("/") else base_path + "/"
        self.max_size = max_size
        self.lock_timeout = lock_timeout
        self.idle_timeout = idle_timeout if idle_timeout > 0 else math.inf
        self.expire_after = expire_after if composer.expirer is not None else None
        self.cleanup_interval = cleanup_interval or (expire_after or 0) / 2 or None
        self.on_create = on_create
        self.on_finish = on_finish
        self.on_terminate = on_terminate
        self.cors_allow_origins = tuple(cors_allow_origins)
        self.max_metadata_size = max_metadata_size

        self._core: DataStore = composer.core
        self._terminater: TerminatableStore | None = composer.terminater
        self._concater: ConcatenatableStore | None = composer.concater
        self._deferrer: LengthDeferrableStore | None = composer.length_deferrer
        self._truncater: TruncatableStore | None = composer.truncater
        self._expirer: ExpiringStore | None = composer.expirer
        if composer.locker is None:
            # a store without locks still needs requests on one upload serialised in-process
            from ._locks import MemoryLocker

            composer.locker = MemoryLocker()
        self._locker: Locker = composer.locker

        extensions = ["creation", "creation-with-upload"]
        if self._deferrer is not None:
            extensions.append("creation-defer-length")
        if self._terminater is not None:
            extensions.append("termination")
        if self._concater is not None:
            extensions.append("concatenation")
        if self._truncater is not None:
            extensions.append("checksum")
        if self.expire_after is not None:
            extensions.append("expiration")
        #: the extensions advertised in ``Tus-Extension``
        self.extensions: tuple[str, ...] = tuple(extensions)

        self._lifespans = 0  # lifespans running: then they do the periodic cleanup
        self._cleanup_running = False
        self._next_cleanup = time.monotonic() + (self.cleanup_interval or 0)

    def __repr__(self) -> str:
        return f"TusApp({self.store!r}, base_path={self.base_path!r})"

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope (``http`` or ``lifespan``)."""
        if scope["type"] == "lifespan":
            await self._lifespan(cast("ASGIReceiveCallable", receive), send)
            return
        if scope["type"] != "http":
            # websockets: returning without accepting makes the server refuse the handshake
            return
        request = _Request(cast("HTTPScope", scope), cast("ASGIReceiveCallable", receive), send)
        response: _Response | None
        try:
            response = await self._dispatch(request)
        except TusError as exc:
            if request.response_started:
                raise
            response = self._error_response(request, exc)
        except Exception:
            if request.response_started:
                # the body is half sent: only dropping the connection tells the client
                raise
            logger.exception("error handling %s %s", request.method, request.raw_path)
            response = _Response(
                500,
                [("Content-Type", "text/plain; charset=utf-8")],
                b"ERR_INTERNAL_SERVER_ERROR: internal server error\n",
            )
        if response is not None and not request.disconnected:
            await self._send_response(request, response)
        if self._cleanup_due():
            await self._run_cleanup()

    async def _dispatch(self, request: _Request) -> _Response | None:
        self._check_origin(request)
        target = proto.route(request.raw_path, self.base_path)
        if target is None:
            raise UploadNotFound("no such resource")
        if request.method == "OPTIONS":
            return self._options(request)
        # "If the version specified by the Client is not supported by the Server, it MUST respond
        # with the 412 Precondition Failed status [...] the Server MUST NOT process the request."
        # OPTIONS is exempt. A GET is checked when it names a version: downloads also come from
        # plain browser links, which send no Tus-Resumable at all.
        tus_resumable = request.headers.get("tus-resumable")
        if request.method != "GET" or tus_resumable is not None:
            proto.check_tus_resumable(tus_resumable)
        method = request.method
        if target.kind == "collection":
            if method == "POST":
                return await self._post(request)
            request.extra_headers.append(("Allow", "POST, OPTIONS"))
            raise MethodNotAllowed(f"{method} is not allowed on the creation URL")
        upload_id = target.upload_id
        if method == "HEAD":
            return await self._head(request, upload_id)
        if method == "PATCH":
            return await self._patch(request, upload_id)
        if method == "GET":
            return await self._get(request, upload_id)
        if method == "DELETE" and self._terminater is not None:
            return await self._delete(request, upload_id, self._terminater)
        allowed = "HEAD, PATCH, GET, OPTIONS" + (", DELETE" if self._terminater else "")
        request.extra_headers.append(("Allow", allowed))
        raise MethodNotAllowed(f"{method} is not allowed on an upload")

    # -- responses ------------------------------------------------------------------------------

    def _error_response(self, request: _Request, exc: TusError) -> _Response:
        """The one place that turns an error into an HTTP response."""
        if exc.status_code >= 500:
            logger.warning("%s %s: %r", request.method, request.raw_path, exc)
        else:
            logger.debug("%s %s: %r", request.method, request.raw_path, exc)
        headers = [("Content-Type", "text/plain; charset=utf-8")]
        if isinstance(exc, UnsupportedVersion):
            # "it MUST respond with the 412 Precondition Failed status and MUST include the
            # Tus-Version header into the response"
            headers.append(("Tus-Version", proto.TUS_VERSION))
        elif isinstance(exc, RangeNotSatisfiable):
            headers.append(("Content-Range", f"bytes */{exc.size}"))
        body = f"{exc.error_code}: {exc.message}\n".encode("utf-8", "replace")
        return _Response(exc.status_code, headers, body)

    def _cors_headers(self, request: _Request) -> list[tuple[str, str]]:
        origin = request.headers.get("origin")
        if origin is None or not self._origin_allowed(origin):
            return []
        headers = [
            ("Access-Control-Allow-Origin", origin),
            ("Vary", "Origin"),
            ("Access-Control-Expose-Headers", _EXPOSE_HEADERS),
        ]
        if request.method == "OPTIONS":
            headers += [
                ("Access-Control-Allow-Methods", _METHODS),
                ("Access-Control-Allow-Headers", _ALLOW_HEADERS),
                ("Access-Control-Max-Age", "86400"),
            ]
        return headers

    def _origin_allowed(self, origin: str) -> bool:
        allowed = self.cors_allow_origins
        return bool(allowed) and ("*" in allowed or origin in allowed)

    def _check_origin(self, request: _Request) -> None:
        origin = request.headers.get("origin")
        if origin is not None and self.cors_allow_origins and not self._origin_allowed(origin):
            raise OriginNotAllowed(f"origin {origin!r:.80} is not allowed")

    async def _send_response(self, request: _Request, response: _Response) -> None:
        is_head = request.scope["method"].upper() == "HEAD"
        headers = [("Tus-Resumable", proto.TUS_VERSION)]
        headers += self._cors_headers(request)
        headers += request.extra_headers
        # a HEAD response may announce the length a GET would have; any other response's
        # Content-Length is its body's (a POST overridden to HEAD included)
        headers += [
            (name, value)
            for name, value in response.headers
            if is_head or name.lower() != "content-length"
        ]
        if response.status not in _NO_BODY_STATUSES and not any(
            name.lower() == "content-length" for name, _ in headers
        ):
            headers.append(("Content-Length", str(len(response.body))))
        if request.body_unread and request.scope.get("http_version") in ("1.0", "1.1"):
            # The rest of the body is still on its way (an early 409, 413, 415...). A server
            # that closes with bytes unread makes the kernel send a reset, which loses the answer
            # for clients that write the whole body before they read (httpx, requests). So the
            # rest is read and dropped for a bounded time (below); a stalled body is not worth it
            # (tus/tusd#1371): the connection is closed instead.
            # HTTP/2 needs neither (the server resets just the stream) and forbids the header.
            if not request.body_stalled:
                request.drain = True
            else:
                headers.append(("Connection", "close"))
        await self._start(request, response.status, headers)
        # a HEAD response has no body, only the headers a GET would have
        body = b"" if is_head else response.body
        if request.drain:
            # Everything the client needs goes out now (it knows the length); the response ends
            # only once the request body has been read, so that the server sees both messages
            # complete and keeps the connection (hypercorn closes it if the request is not).
            if body:
                await request.send({"type": "http.response.body", "body": body, "more_body": True})
            await self._drain(request)
            if request.disconnected:
                return
            body = b""
        await self._send_last(request, body)

    async def _drain(self, request: _Request) -> None:
        # Bounded in time (_LINGER_TIME, and the idle timeout): past that the body stays unread
        # and the server closes the connection after the response.
        with anyio.move_on_after(min(self.idle_timeout, _LINGER_TIME)):
            while request.body_unread:
                message = await request.receive()
                if message["type"] != "http.request":
                    request.disconnected = True
                    return
                if not message.get("more_body", False):
                    request.body_unread = False

    async def _send_last(self, request: _Request, body: bytes) -> None:
        message: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        if not request.body_unread:
            await request.send(message)
            return
        # The final send must not wait on a request body nobody reads: hypercorn stops reading
        # once the app's queue is full, and the final send waits to queue http.disconnect
        # behind it, which would wedge the connection for good. So keep taking it meanwhile.
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                while (await request.receive())["type"] == "http.request":
                    pass

            tg.start_soon(consume)
            await request.send(message)
            tg.cancel_scope.cancel()

    async def _start(self, request: _Request, status: int, headers: list[tuple[str, str]]) -> None:
        request.response_started = True
        await request.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers
                ],
            }
        )

    # -- OPTIONS --------------------------------------------------------------------------------

    def _options(self, request: _Request) -> _Response:
        # "An OPTIONS request MAY be used to gather information about the Server's current
        # configuration. A successful response [...] MUST contain the Tus-Version header."
        # 200 rather than 204: some browsers refuse a 204 to a preflight (as tusd).
        headers = [("Tus-Version", proto.TUS_VERSION), ("Tus-Extension", ",".join(self.extensions))]
        if self.max_size is not None:
            headers.append(("Tus-Max-Size", str(self.max_size)))
        if self._truncater is not None:
            # "The Tus-Checksum-Algorithm response header MUST be a comma-separated list of the
            # checksum algorithms supported by the server."
            headers.append(("Tus-Checksum-Algorithm", ",".join(proto.CHECKSUM_ALGORITHMS)))
        return _Response(200, headers)

    # -- POST: creation -------------------------------------------------------------------------

    async def _post(self, request: _Request) -> _Response:
        headers = request.headers
        concat: proto.Concat | None = None
        if "upload-concat" in headers and self._concater is not None:
            concat = proto.parse_concat(headers["upload-concat"], self.base_path)
        metadata = proto.parse_metadata(
            headers.get("upload-metadata", ""), max_length=self.max_metadata_size
        )
        # creation-with-upload: "the Client MUST include the Content-Type:
        # application/offset+octet-stream header"; any other body is ignored, as tusd does
        with_body = _is_offset_stream(headers.get("content-type"))
        length_header = headers.get("upload-length")
        defer_header = headers.get("upload-defer-length")

        if concat is not None and concat.kind == "final":
            # "The Client MUST NOT include the Upload-Length header in the final upload creation."
            if length_header is not None or defer_header is not None:
                raise InvalidHeader("a final upload takes no Upload-Length or Upload-Defer-Length")
            if with_body:
                raise UploadIsFinal("a final upload takes no data")
            return await self._create_final(request, concat.partial_ids, metadata)

        # "The Client MUST include either the Upload-Length or the Upload-Defer-Length header"
        # "If both headers are present the Server MUST respond with 400 Bad Request." (tusd)
        size: int | None
        if length_header is not None and defer_header is not None:
            raise InvalidHeader("Upload-Length and Upload-Defer-Length are mutually exclusive")
        if length_header is not None:
            size = proto.parse_integer(length_header, "Upload-Length")
        elif defer_header is not None and self._deferrer is not None:
            proto.parse_defer_length(defer_header)
            size = None
        else:
            raise InvalidHeader("missing Upload-Length header (or Upload-Defer-Length: 1)")
        # "If the length of the upload exceeds the maximum, which MAY be specified using the
        # Tus-Max-Size header, the Server MUST respond with the 413 Request Entity Too Large"
        if size is not None and self.max_size is not None and size > self.max_size:
            raise MaxSizeExceeded(f"Upload-Length {size} exceeds the maximum of {self.max_size}")
        checksum = self._parse_checksum(request) if with_body else None

        draft = UploadInfo(
            size=size, metadata=metadata, is_partial=concat is not None and concat.kind == "partial"
        )
        if self.on_create is not None:
            await self.on_create(draft, request.hook_request())
        info = await self._core.new_upload(draft)
        request.extra_headers.append(("Location", self._url(request, info.id)))
        logger.info("created upload %s (%s bytes)", info.id, size)

        response = _Response(201)
        if with_body:
            appended = await self._append(
                request, info.id, offset=0, length=None, checksum=checksum
            )
            if appended.completed:
                await self._finished(appended.info)
            if appended.error is not None:
                raise appended.error
            info = appended.info
            # "The Server MUST include the Upload-Offset header in the response"
            response.headers.append(("Upload-Offset", str(info.offset)))
        elif info.is_complete:
            # "Upload-Length: 0" is complete the moment it exists
            await self._finished(info)
        response.headers += self._expires_headers(info)
        return response

    async def _create_final(
        self, request: _Request, partial_ids: Sequence[str], metadata: dict[str, str]
    ) -> _Response:
        concater = self._concater
        assert concater is not None
        total = 0
        for partial_id in partial_ids:
            try:
                partial = await self._core.get_info(partial_id)
            except UploadNotFound:
                raise UploadNotFinished(f"partial upload {partial_id} does not exist") from None
            # "The Server MUST NOT accept [...] the concatenation of uploads which are not
            # partial" (the final upload is made of partial uploads, in the order given)
            if not partial.is_partial:
                raise InvalidHeader(f"upload {partial_id} is not a partial upload")
            if partial.size is None or not partial.is_complete:
                raise UploadNotFinished(f"partial upload {partial_id} is not finished")
            total += partial.size
        if self.max_size is not None and total > self.max_size:
            raise MaxSizeExceeded(f"the final upload's {total} bytes exceed {self.max_size}")

        draft = UploadInfo(
            size=total, metadata=metadata, is_final=True, partial_uploads=tuple(partial_ids)
        )
        if self.on_create is not None:
            await self.on_create(draft, request.hook_request())
        final = await self._core.new_upload(draft)
        try:
            await concater.concat_uploads(final.id, partial_ids)
        except BaseException as exc:
            # a final upload that could not be filled must not be left behind looking empty
            with anyio.move_on_after(10, shield=True), contextlib.suppress(TusError, OSError):
                if self._terminater is not None:
                    await self._terminater.terminate(final.id)
            if isinstance(exc, UploadNotFound):
                raise UploadNotFinished(f"a partial upload disappeared: {exc.message}") from exc
            raise
        info = await self._core.get_info(final.id)
        logger.info("concatenated %d uploads into %s", len(partial_ids), final.id)
        request.extra_headers.append(("Location", self._url(request, final.id)))
        await self._finished(info)
        return _Response(201)

    # -- HEAD -----------------------------------------------------------------------------------

    async def _head(self, request: _Request, upload_id: str) -> _Response:
        # the lock is held for one stat; a release request need not interrupt that
        async with self._locker.lock(upload_id, timeout=self.lock_timeout):
            info = await self._core.get_info(upload_id)
            await self._check_expired(info)
        # "The Server MUST always include the Upload-Offset header in the response for a HEAD
        # request, even if the offset is 0, or the upload is already considered completed."
        # "The Server MUST prevent the client and/or proxies from caching the response by adding
        # the Cache-Control: no-store header to the response."
        headers = [
            ("Upload-Offset", str(info.offset)),
            ("Cache-Control", "no-store"),
            # what a GET would return
            ("Content-Length", str(info.offset)),
        ]
        if info.size is not None:
            # "If the size of the upload is known, the Server MUST include the Upload-Length
            # header in the response."
            headers.append(("Upload-Length", str(info.size)))
        else:
            # "As long as the length of the upload is not known, the Server MUST set
            # Upload-Defer-Length: 1 in all responses to HEAD requests."
            headers.append(("Upload-Defer-Length", "1"))
        if info.metadata:
            # "If an upload contains additional metadata, responses to HEAD requests MUST include
            # the Upload-Metadata header and its value as specified by the Client during the
            # creation."
            serialized = proto.serialize_metadata(info.metadata)
            if serialized:
                headers.append(("Upload-Metadata", serialized))
        concat = proto.serialize_concat(
            is_partial=info.is_partial,
            is_final=info.is_final,
            partial_urls=[self._url(request, partial) for partial in info.partial_uploads],
        )
        if concat is not None:
            headers.append(("Upload-Concat", concat))
        headers += self._expires_headers(info)
        return _Response(200, headers)

    # -- PATCH ----------------------------------------------------------------------------------

    async def _patch(self, request: _Request, upload_id: str) -> _Response:
        headers = request.headers
        # "All PATCH requests MUST use Content-Type: application/offset+octet-stream, otherwise
        # the server SHOULD return a 415 Unsupported Media Type status."
        if not _is_offset_stream(headers.get("content-type")):
            raise UnsupportedMediaType(f"Content-Type must be {proto.OFFSET_CONTENT_TYPE}")
        offset_header = headers.get("upload-offset")
        if offset_header is None:
            raise InvalidHeader("missing Upload-Offset header")
        offset = proto.parse_integer(offset_header, "Upload-Offset")
        length_header = headers.get("upload-length")
        length = None
        if length_header is not None:
            length = proto.parse_integer(length_header, "Upload-Length")
        checksum = self._parse_checksum(request)

        appended = await self._append(
            request, upload_id, offset=offset, length=length, checksum=checksum
        )
        if appended.completed:
            await self._finished(appended.info)
        if appended.error is not None:
            raise appended.error
        # "The Server MUST acknowledge successful PATCH requests with the 204 No Content status.
        # It MUST include the Upload-Offset header containing the new offset."
        response = _Response(204, [("Upload-Offset", str(appended.info.offset))])
        response.headers += self._expires_headers(appended.info)
        return response

    def _parse_checksum(self, request: _Request) -> proto.Checksum | None:
        value = request.headers.get("upload-checksum")
        if value is None or self._truncater is None:
            return None
        return proto.parse_checksum(value)

    async def _append(
        self,
        request: _Request,
        upload_id: str,
        *,
        offset: int,
        length: int | None,
        checksum: proto.Checksum | None,
    ) -> _Appended:
        """Write the request body to the upload under its lock: the heart of PATCH.

        A release request (another request wants the lock) cancels only the body transfer; what
        was received is stored, the rollback below still runs, and the request ends with
        :class:`~anytus.UploadInterrupted`.
        """
        body_scope = anyio.CancelScope()
        async with self._locker.lock(
            upload_id, timeout=self.lock_timeout, on_release=body_scope.cancel
        ):
            info = await self._core.get_info(upload_id)
            await self._check_expired(info)
            # "The Server SHOULD respond with the 403 Forbidden status to PATCH requests against
            # a final upload URL"
            if info.is_final:
                raise UploadIsFinal
            # "If the offsets do not match, the Server MUST respond with the 409 Conflict status
            # without modifying the upload resource."
            if offset != info.offset:
                raise OffsetMismatch(
                    f"Upload-Offset is {offset}, but the upload's offset is {info.offset}"
                )
            was_complete = info.is_complete
            if length is not None:
                info = await self._declare_length(info, length)
            if info.is_complete:
                # nothing may be added; tusd answers 204 with the offset without reading
                return _Appended(info, not was_complete, None)

            if info.size is not None:
                limit: int | None = info.size - info.offset
                exceeded: TusError = SizeExceeded(
                    f"the request body goes past the upload's length of {info.size} bytes"
                )
            else:
                limit = None if self.max_size is None else self.max_size - info.offset
                exceeded = MaxSizeExceeded(
                    f"the request body goes past the maximum size of {self.max_size} bytes"
                )
            hasher = _new_hasher(checksum.algorithm) if checksum is not None else None
            reader = _BodyReader(request, limit=limit, exceeded=exceeded, hasher=hasher)
            failure: Exception | None = None
            written: int | None = None
            with body_scope:
                async with anyio.create_task_group() as tg:
                    if math.isfinite(self.idle_timeout):
                        tg.start_soon(reader.watch_idle, self.idle_timeout, body_scope)
                    # kept out of the task group's exception group, so that the one place that
                    # maps TusError to a response sees the store's errors as they are
                    try:
                        written = await self._core.write_chunk(upload_id, info.offset, reader)
                    except Exception as exc:  # noqa: BLE001 - re-raised below, unwrapped
                        failure = exc
                    tg.cancel_scope.cancel()
            if failure is not None:
                raise failure
            error = reader.error
            # a body read to its end was stored whole: a release request that came after that
            # (while the store closed the file) interrupted nothing
            if error is None and body_scope.cancelled_caught and not reader.complete:
                logger.info("upload %s interrupted by another request", upload_id)
                request.body_stalled = True
                error = UploadInterrupted()
            if written is None:
                # interrupted: only the store knows how much it kept
                after = await self._core.get_info(upload_id)
            else:
                # we hold the lock: nothing else wrote, and every byte counted is in the file
                after = dataclasses.replace(
                    info, offset=info.offset + written, modified_at=time.time()
                )

            if checksum is not None and hasher is not None:
                # "If the hashes do not match, the Server MUST respond with the 460 Checksum
                # Mismatch status [...] the Server MUST NOT append the chunk". A body that did not
                # arrive whole cannot be verified either: it goes too.
                whole = error is None and not request.disconnected
                if not whole or hasher.digest() != checksum.digest:
                    assert self._truncater is not None
                    if after.offset != info.offset:
                        await self._truncater.truncate(upload_id, info.offset)
                        after = dataclasses.replace(after, offset=info.offset)
                    if whole:
                        error = ChecksumMismatch(
                            f"the body's {checksum.algorithm} does not match Upload-Checksum"
                        )
        return _Appended(after, not was_complete and after.is_complete, error)

    async def _declare_length(self, info: UploadInfo, length: int) -> UploadInfo:
        if info.size is not None:
            # "the Upload-Length [...] once set, MUST NOT change": sending the same length again
            # is harmless (a retried last PATCH) and is accepted
            if length != info.size:
                raise InvalidHeader(f"the upload's length is {info.size} and cannot change")
            return info
        if self._deferrer is None:  # pragma: no cover - a deferred upload implies the extension
            raise InvalidHeader("creation-defer-length is not supported")
        if self.max_size is not None and length > self.max_size:
            raise MaxSizeExceeded(f"Upload-Length {length} exceeds the maximum of {self.max_size}")
        declared = await self._deferrer.declare_length(info.id, length)
        return dataclasses.replace(declared, offset=info.offset)

    # -- GET ------------------------------------------------------------------------------------

    async def _get(self, request: _Request, upload_id: str) -> _Response | None:
        async with contextlib.AsyncExitStack() as stack:
            stream: ByteReceiveStream | None = None
            async with self._locker.lock(upload_id, timeout=self.lock_timeout):
                info = await self._core.get_info(upload_id)
                await self._check_expired(info)
                size = info.offset
                byte_range = None
                range_header = request.headers.get("range")
                if range_header is not None:
                    byte_range = proto.parse_range(range_header, size)
                start, end = (byte_range.start, byte_range.end) if byte_range else (0, size)
                if end > start:
                    stream = await stack.enter_async_context(
                        self._core.get_reader(upload_id, start=start, end=end)
                    )
            # The lock is released before the body is sent, so a slow download never makes an
            # upload wait (tusd#1356). That is safe: the reader holds its own descriptor, and
            # bytes below an upload's offset never change (writes append; a checksum rollback
            # only removes bytes written by the request that rolls back, which held the lock).

            filetype, inline = proto.content_type_for(info.metadata.get("filetype"))
            headers = [
                ("Content-Type", filetype),
                (
                    "Content-Disposition",
                    proto.content_disposition(info.metadata.get("filename"), inline=inline),
                ),
                ("Content-Length", str(end - start)),
                ("Accept-Ranges", "bytes"),
                ("X-Content-Type-Options", "nosniff"),
            ]
            if info.modified_at is not None:
                headers.append(("Last-Modified", proto.format_http_date(info.modified_at)))
            if byte_range is not None:
                headers.append(("Content-Range", byte_range.content_range))
            # an empty upload is a 200 with an empty body, not tusd's 204: a download of an empty
            # file is still a file
            status = 206 if byte_range is not None else 200
            if stream is None:
                return _Response(status, headers)

            headers = [("Tus-Resumable", proto.TUS_VERSION), *self._cors_headers(request), *headers]
            await self._start(request, status, headers)
            await self._send_stream(request, stream)
        return None

    async def _send_stream(self, request: _Request, stream: ByteReceiveStream) -> None:
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                # a client that goes away ends the download instead of reading the whole file
                while (await request.receive())["type"] != "http.disconnect":
                    pass
                request.disconnected = True
                tg.cancel_scope.cancel()

            tg.start_soon(watch_disconnect)
            async for chunk in stream:
                await request.send({"type": "http.response.body", "body": chunk, "more_body": True})
            await request.send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()

    # -- DELETE ---------------------------------------------------------------------------------

    async def _delete(
        self, request: _Request, upload_id: str, terminater: TerminatableStore
    ) -> _Response:
        async with self._locker.lock(upload_id, timeout=self.lock_timeout):
            info = await self._core.get_info(upload_id)
            # "When receiving a DELETE request for an existing upload the Server SHOULD free
            # associated resources and MUST respond with the 204 No Content status"
            await terminater.terminate(upload_id)
        logger.info("terminated upload %s", upload_id)
        if self.on_terminate is not None:
            await self.on_terminate(info)
        return _Response(204)

    # -- completion and expiration --------------------------------------------------------------

    async def _finished(self, info: UploadInfo) -> None:
        logger.info("upload %s complete (%d bytes)", info.id, info.offset)
        if self.on_finish is not None:
            await self.on_finish(info)

    def _expires_headers(self, info: UploadInfo) -> list[tuple[str, str]]:
        # "The Upload-Expires response header indicates the time after which the unfinished
        # upload expires. [...] This header MUST be included in every PATCH response if the
        # upload is going to expire."
        if self.expire_after is None or info.is_complete:
            return []
        modified = info.modified_at if info.modified_at is not None else time.time()
        return [("Upload-Expires", proto.format_http_date(modified + self.expire_after))]

    async def _check_expired(self, info: UploadInfo) -> None:
        if self.expire_after is None or info.is_complete or info.modified_at is None:
            return
        if time.time() - info.modified_at < self.expire_after:
            return
        # "If a Client does attempt to resume an upload which has since been removed by the
        # Server, the Server SHOULD respond with the 404 Not Found or 410 Gone status."
        if self._terminater is not None:
            with contextlib.suppress(UploadNotFound):
                await self._terminater.terminate(info.id)
        logger.info("upload %s expired", info.id)
        raise UploadExpired(f"upload {info.id} expired")

    async def cleanup(self) -> list[str]:
        """Remove every unfinished upload that has expired, now; return their IDs.

        Does nothing (returns ``[]``) unless expiration is enabled (``expire_after``) and the
        store supports it. Always a checkpoint.
        """
        if self._expirer is None or self.expire_after is None:
            await anyio.lowlevel.checkpoint()
            return []
        removed = await self._expirer.cleanup(self.expire_after)
        if removed:
            logger.info("removed %d expired uploads: %s", len(removed), ", ".join(removed))
        return removed

    def _cleanup_due(self) -> bool:
        # without a lifespan (a host that never sends one) requests drive the periodic cleanup
        return (
            self.cleanup_interval is not None
            and self.expire_after is not None
            and not self._lifespans
            and not self._cleanup_running
            and time.monotonic() >= self._next_cleanup
        )

    async def _run_cleanup(self) -> None:
        self._cleanup_running = True
        try:
            await self.cleanup()
        except Exception:
            # a failing cleanup must never take the server (or the request's task) down
            logger.exception("periodic cleanup failed")
        finally:
            self._cleanup_running = False
            self._next_cleanup = time.monotonic() + (self.cleanup_interval or 0)

    async def _cleanup_loop(self, interval: float) -> None:
        while True:
            await self._run_cleanup()
            await anyio.sleep(interval)

    async def _lifespan(self, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        self._lifespans += 1
        try:
            async with anyio.create_task_group() as tg:
                if self.cleanup_interval is not None and self.expire_after is not None:
                    tg.start_soon(self._cleanup_loop, self.cleanup_interval)
                await send({"type": "lifespan.startup.complete"})
                while (await receive())["type"] != "lifespan.shutdown":
                    pass
                tg.cancel_scope.cancel()
        finally:
            self._lifespans -= 1
        await send({"type": "lifespan.shutdown.complete"})

    # -- helpers --------------------------------------------------------------------------------

    def _url(self, request: _Request, upload_id: str) -> str:
        """The absolute URL of an upload, from the request's scheme and ``Host``."""
        host = request.headers.get("host") or request.headers.get(":authority")
        if host is None or not proto.valid_host(host):
            host = None
            server = request.scope.get("server")
            if server is not None and server[0]:
                name, port = server
                name = f"[{name}]" if ":" in name else name
                default = 443 if request.scheme == "https" else 80
                host = name if port in (None, default) else f"{name}:{port}"
        return proto.build_url(request.scheme, host, self.base_path, upload_id)


def _is_offset_stream(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == proto.OFFSET_CONTENT_TYPE
