"""The tus client: :class:`TusClient`, on anyio with httpx (asyncio and trio)."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import email.utils
import os
import random
import socket
import time
import urllib.parse
from collections.abc import AsyncIterable, AsyncIterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Final, Literal, Protocol

import anyio
import httpx

from .._core import new_hasher
from .._exceptions import (
    ConnectionFailed,
    ExtensionUnsupported,
    MaxSizeExceeded,
    ResponseError,
)
from .._protocol import CHECKSUM_ALGORITHMS
from ._urlstore import StoredUpload, URLStore

if TYPE_CHECKING:
    import ssl
    from collections.abc import Awaitable, Callable, Mapping
    from types import TracebackType

    from typing_extensions import Self

__all__ = ("ProgressCallback", "TusClient")

TUS_VERSION: Final = "1.0.0"
OFFSET_CONTENT_TYPE: Final = "application/offset+octet-stream"
#: bytes per worker-thread read of a file, and per piece handed to httpx. 1 MiB rather than 4:
#: measured with bench_client.py (1 GiB, rounds interleaved with curl), 0.83-1.01x curl's
#: throughput against 0.69-0.87x, with less memory; reading ahead while sending did not help
READ_SIZE: Final = 1 << 20
#: SO_SNDBUF of the client's connections
SEND_BUFFER: Final = 4 << 20
#: async sources are sent in chunks of this size unless told otherwise (each chunk is held in
#: memory until the server has it, so that it can be sent again)
STREAM_CHUNK_SIZE: Final = 8 << 20
#: with a checksum, each request's digest is computed before it is sent: keep requests this size
CHECKSUM_CHUNK_SIZE: Final = 32 << 20
#: files up to this size go in the creation request when the server has creation-with-upload
SMALL_FILE: Final = 1 << 20
#: statuses worth retrying: locked, too many requests, server errors (not "not implemented" and
#: "version not supported", which stay true)
RETRY_STATUSES: Final = frozenset({408, 423, 429, 500, 502, 503, 504, 507, 509})
#: statuses of a PATCH after which the offset is asked again and the upload goes on: the server
#: holds other bytes than we thought (409), or the chunk arrived damaged (460)
RESYNC_STATUSES: Final = frozenset({409, 460})


class ProgressCallback(Protocol):
    """``on_progress(sent, total)``: bytes sent so far, and the total (``None`` while unknown)."""

    def __call__(self, sent: int, total: int | None, /) -> object: ...


@dataclasses.dataclass(frozen=True, slots=True)
class _Capabilities:
    """What a server said in its OPTIONS answer."""

    extensions: frozenset[str]
    max_size: int | None
    checksum_algorithms: frozenset[str]

    def require(self, extension: str, why: str) -> None:
        if extension not in self.extensions:
            raise ExtensionUnsupported(
                f"{why} needs the tus {extension!r} extension, which the server does not offer "
                f"(it offers: {', '.join(sorted(self.extensions)) or 'none'})"
            )


class _Progress:
    """Bytes sent per part of one upload; reports the sum."""

    def __init__(self, callback: ProgressCallback | None, total: int | None, parts: int) -> None:
        self._callback = callback
        self.total = total
        self._sent = [0] * parts

    def set(self, part: int, sent: int) -> None:
        self._sent[part] = sent
        if self._callback is not None:
            self._callback(sum(self._sent), self.total)


class _Retry:
    """The retry budget of one upload (or one part of it): backoff, ``Retry-After``, attempts.

    The count starts again whenever the server's offset has moved since the previous failure, so
    that a connection that breaks every few MiB never exhausts it while the upload progresses.
    """

    def __init__(self, client: TusClient) -> None:
        self._client = client
        self._attempts = 0
        self._offset_at_failure = -1

    def progressed(self, offset: int) -> None:
        if offset > self._offset_at_failure:
            self._attempts = 0

    async def after(self, failure: httpx.TransportError | httpx.Response, offset: int) -> None:
        """Wait before the next attempt, or raise if there is none left (or none can help)."""
        if offset > self._offset_at_failure:
            self._attempts = 0
        self._offset_at_failure = max(offset, self._offset_at_failure)
        retry_after: float | None = None
        if isinstance(failure, httpx.Response):
            status = failure.status_code
            resync = failure.request.method == "PATCH" and status in RESYNC_STATUSES
            if status not in RETRY_STATUSES and not resync:
                raise _response_error(failure)
            retry_after = _retry_after(failure.headers.get("Retry-After"))
        self._attempts += 1
        if self._attempts > self._client.retries:
            if isinstance(failure, httpx.Response):
                raise _response_error(failure)
            raise ConnectionFailed(
                f"{failure.request.method} {failure.request.url}: {failure!r} "
                f"(after {self._client.retries} retries)"
            ) from failure
        if retry_after is not None:
            delay = min(retry_after, self._client.max_retry_delay)
        else:
            backoff = self._client.retry_delay * 2 ** (self._attempts - 1)
            # jitter, so that many clients cut off at once do not come back at once
            delay = min(backoff, self._client.max_retry_delay) * random.uniform(0.5, 1.0)
        await anyio.sleep(delay)


_tls_contexts: dict[tuple[str | None, str | None], ssl.SSLContext] = {}


async def client_tls_context() -> ssl.SSLContext:
    """What both of the client's ways of connecting verify an HTTPS server with: httpx's default
    (certifi's CA bundle, or ``SSL_CERT_FILE`` / ``SSL_CERT_DIR`` when set).

    Built once per process (and per setting of those variables) in a worker thread: loading a CA
    bundle reads and parses a file, tens of milliseconds the event loop would otherwise stall for
    at every ``TusClient``.
    """
    key = (os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR"))
    context = _tls_contexts.get(key)
    if context is None:
        # two clients starting at once may both build it; the second one's is kept, harmlessly
        context = await anyio.to_thread.run_sync(httpx.create_ssl_context)
        _tls_contexts[key] = context
    return context


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def _response_error(response: httpx.Response) -> ResponseError:
    try:
        body = response.text
    except (httpx.ResponseNotRead, UnicodeDecodeError):
        body = ""
    return ResponseError(
        response.request.method, str(response.request.url), response.status_code, body
    )


def _encode_metadata(metadata: Mapping[str, str | bytes]) -> str:
    pairs = []
    for key, value in metadata.items():
        # "The key MUST NOT contain spaces and commas and MUST NOT be empty"
        if not key or not key.isascii() or any(c in key for c in " ,\t\r\n"):
            raise ValueError(f"invalid metadata key {key!r}: ASCII without spaces or commas")
        raw = value.encode() if isinstance(value, str) else value
        pairs.append(f"{key} {base64.b64encode(raw).decode('ascii')}" if raw else key)
    return ",".join(pairs)


def _header_int(response: httpx.Response, name: str) -> int:
    value = response.headers.get(name, "")
    if not value.isdigit():
        raise ResponseError(
            response.request.method,
            str(response.request.url),
            response.status_code,
            message=f"{response.request.method} {response.request.url}: "
            f"missing or invalid {name} header: {value!r:.40}",
        )
    return int(value)


@dataclasses.dataclass(slots=True)
class _UploadState:
    """What a HEAD says about an upload."""

    offset: int
    length: int | None  # None: deferred


# -- request bodies --------------------------------------------------------------------------------


class _BodyStream(httpx.AsyncByteStream):
    """A request body that iterates itself (``__anext__``); there is nothing to close."""

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> bytes:
        raise NotImplementedError

    async def aclose(self) -> None:
        pass


class _FileBody(_BodyStream):
    """Bytes ``[start, end)`` of an open file, read in worker threads a piece at a time.

    A request stream of our own, iterated by httpcore directly: httpx would wrap an async
    iterable in an async generator, which is left unfinished for the garbage collector when a
    connection breaks mid-body.
    """

    def __init__(
        self,
        file: BinaryIO,
        start: int,
        end: int,
        limiter: anyio.CapacityLimiter,
        on_sent: Callable[[int], None],
    ) -> None:
        self._file = file
        self._position = start
        self._end = end
        self._limiter = limiter
        self._on_sent = on_sent

    async def __anext__(self) -> bytes:
        if self._position >= self._end:
            raise StopAsyncIteration
        size = min(READ_SIZE, self._end - self._position)
        data = await anyio.to_thread.run_sync(
            _read_at, self._file, self._position, size, limiter=self._limiter
        )
        if len(data) != size:
            raise OSError(f"{self._file.name}: the file shrank while it was being uploaded")
        self._position += size
        self._on_sent(self._position)
        return data


def stream_piece(
    chunk: bytes,
    last: bool,
    position: int,
    *,
    skip: int,
    length: int | None,
    max_size: int | None,
) -> tuple[int, tuple[memoryview, int] | None]:
    """The next *chunk* of an async source that starts at *position*: the position after it, and
    the part of it the server does not have yet (the first *skip* bytes it has) with its start,
    or ``None`` when the server has all of it and it is not the *last*.

    :raises ValueError: the source yields more than *length*, or ends before it or before *skip*
    :raises ~anytus.MaxSizeExceeded: the source goes past the server's *max_size*
    """
    start = position
    position += len(chunk)
    if length is not None and position > length:
        raise ValueError(f"the source yielded more than length={length} bytes")
    if max_size is not None and position > max_size:
        raise MaxSizeExceeded(f"the source went past the server's maximum of {max_size} bytes")
    if last and length is not None and position < length:
        raise ValueError(f"the source ended after {position} of {length} bytes")
    if last and position < skip:
        raise ValueError(f"the source ended after {position} bytes; the server has {skip}")
    if position <= skip and not last:
        return position, None
    view = memoryview(chunk)
    if start < skip:
        view, start = view[skip - start :], skip
    return position, (view, start)


def _read_at(file: BinaryIO, offset: int, size: int) -> bytes:
    file.seek(offset)
    return file.read(size)


def _digest_file(file: BinaryIO, start: int, end: int, algorithm: str) -> bytes:
    digest = new_hasher(algorithm)
    file.seek(start)
    remaining = end - start
    while remaining:
        data = file.read(min(READ_SIZE, remaining))
        if not data:
            raise OSError(f"{file.name}: the file shrank while it was being uploaded")
        digest.update(data)
        remaining -= len(data)
    return digest.digest()


def _digest(data: memoryview, algorithm: str) -> bytes:
    digest = new_hasher(algorithm)
    digest.update(data)
    return digest.digest()


class _MemoryBody(_BodyStream):
    """A chunk held in memory, handed to httpx in pieces (for progress)."""

    def __init__(self, data: memoryview, start: int, on_sent: Callable[[int], None]) -> None:
        self._data = data
        self._sent = 0
        self._start = start
        self._on_sent = on_sent

    async def __anext__(self) -> bytes:
        if self._sent >= len(self._data):
            raise StopAsyncIteration
        piece = self._data[self._sent : self._sent + READ_SIZE]
        self._sent += len(piece)
        self._on_sent(self._start + self._sent)
        # h11 joins what it sends into one bytes object anyway: no copy here
        return piece  # type: ignore[return-value]


class _NoBody(_BodyStream):
    """The body of a request without one."""

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


class _Source(Protocol):
    """Where the bytes of one (partial) upload come from, by absolute offset."""

    async def checksum(self, start: int, end: int, algorithm: str) -> bytes: ...
    def body(self, start: int, end: int, on_sent: Callable[[int], None]) -> httpx.AsyncByteStream:
        """The bytes ``[start, end)``."""
        ...


@dataclasses.dataclass(slots=True)
class _FileSource:
    file: BinaryIO
    limiter: anyio.CapacityLimiter

    async def checksum(self, start: int, end: int, algorithm: str) -> bytes:
        return await anyio.to_thread.run_sync(
            _digest_file, self.file, start, end, algorithm, limiter=self.limiter
        )

    def body(self, start: int, end: int, on_sent: Callable[[int], None]) -> httpx.AsyncByteStream:
        return _FileBody(self.file, start, end, self.limiter, on_sent)


@dataclasses.dataclass(slots=True)
class _ChunkSource:
    """One chunk of an async source, held until the server has it."""

    data: memoryview
    #: the chunk's offset in the upload
    start: int

    async def checksum(self, start: int, end: int, algorithm: str) -> bytes:
        view = self.data[start - self.start : end - self.start]
        if len(view) < 256 << 10:
            return _digest(view, algorithm)
        return await anyio.to_thread.run_sync(_digest, view, algorithm)

    def body(self, start: int, end: int, on_sent: Callable[[int], None]) -> httpx.AsyncByteStream:
        view = self.data[start - self.start : end - self.start]
        return _MemoryBody(view, start, on_sent)


# -- the client ------------------------------------------------------------------------------------


class TusClient:
    """An async tus 1.0.0 client for asyncio and trio, over httpx.

    Use it as an async context manager (it owns an :class:`httpx.AsyncClient` and its
    connections)::

        async with TusClient("http://127.0.0.1:1080/files/") as client:
            url = await client.upload("video.mp4", metadata={"filename": "video.mp4"})

    Every operation asks the server what it supports (``OPTIONS``, once per client) and uses it:
    creation-with-upload for small files, creation-defer-length for sources of unknown size,
    concatenation for ``parallel=N``, the checksum extension, termination. It refuses with
    :exc:`~anytus.ExtensionUnsupported` what the server lacks, and with
    :exc:`~anytus.MaxSizeExceeded` what is larger than its ``Tus-Max-Size``.

    Failures (connection errors, timeouts, 423, 429, 5xx) are retried with exponential backoff
    (honouring ``Retry-After``), asking the server for the offset (``HEAD``) before sending again;
    a status that retrying cannot fix raises :exc:`~anytus.ResponseError` at once, and when
    *retries* attempts in a row made no progress the last failure is raised
    (:exc:`~anytus.ResponseError` or :exc:`~anytus.ConnectionFailed`).

    :param url: the server's creation URL (e.g. ``http://127.0.0.1:1080/files/``)
    :param headers: extra headers for every request (``Authorization``...)
    :param store: where upload URLs are remembered so that an interrupted upload of the same
        source continues: ``True`` (default) for the :class:`URLStore` in the user's cache
        directory, ``False`` for none, or a :class:`URLStore`
    :param retries: attempts after a failure, in a row without progress, before giving up
    :param retry_delay: the first backoff delay in seconds (it doubles each attempt)
    :param max_retry_delay: the longest delay, ``Retry-After`` included
    :param timeout: seconds to connect, or to wait for any one read or write of the connection
    :param protocol: ``"tus"`` (default) for tus 1.0.0, or ``"draft"`` for the IETF
        resumable-upload draft (interop versions 6 to 10; see the README's "The draft" section)
    :param draft_version: with ``protocol="draft"``, pin this interop version instead of
        negotiating one (the newest the server answers, from 10 down to 6)
    """

    def __init__(
        self,
        url: str,
        headers: Mapping[str, str] | None = None,
        *,
        store: URLStore | bool = True,
        retries: int = 8,
        retry_delay: float = 0.5,
        max_retry_delay: float = 30.0,
        timeout: float = 60.0,
        protocol: Literal["tus", "draft"] = "tus",
        draft_version: int | None = None,
    ) -> None:
        from ._draftclient import DRAFT_VERSIONS, DraftUploader

        if retries < 0:
            raise ValueError("retries must not be negative")
        if protocol not in ("tus", "draft"):
            raise ValueError(f"protocol must be 'tus' or 'draft', not {protocol!r}")
        if draft_version is not None and draft_version not in DRAFT_VERSIONS:
            raise ValueError(
                f"draft_version must be one of {', '.join(map(str, sorted(DRAFT_VERSIONS)))}"
            )
        self.protocol = protocol
        #: the pinned interop version (``draft_version=``), or ``None``
        self.pinned_draft_version = draft_version
        #: the interop version in use, once the first draft creation found the server speaks it
        #: (``None`` until then)
        self.draft_version: int | None = None
        self._draft = DraftUploader(self)
        self.url = url
        self.headers = dict(headers or {})
        if store is True:
            self.store: URLStore | None = URLStore()
        elif store is False:
            self.store = None
        else:
            self.store = store
        self.retries = retries
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.timeout = timeout
        self._http: httpx.AsyncClient | None = None
        self._capabilities: _Capabilities | None = None
        self._capabilities_lock = anyio.Lock()
        # file reads of this client's uploads: a few threads are plenty (reads are from the page
        # cache or readahead), and the process-wide default pool stays free for others
        self._limiter = anyio.CapacityLimiter(8)

    async def __aenter__(self) -> Self:
        headers = {"Tus-Resumable": TUS_VERSION, **self.headers}
        transport = httpx.AsyncHTTPTransport(
            verify=await client_tls_context(),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=32),
            # a send buffer as large as Linux's autotuning would grow it to (tcp_wmem's default
            # maximum), from the start: fewer wake-ups per MiB (less CPU, measured on loopback)
            socket_options=[(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)],
        )
        self._http = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(self.timeout), transport=transport
        )
        await self._http.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        http, self._http = self._http, None
        if http is not None:
            with anyio.CancelScope(shield=True):
                await http.__aexit__(exc_type, exc, tb)

    @property
    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            raise RuntimeError("use TusClient as an async context manager: async with TusClient()")
        return self._http

    # -- public operations ---------------------------------------------------------------------------

    async def upload(
        self,
        source: str | os.PathLike[str] | AsyncIterable[bytes],
        length: int | None = None,
        *,
        metadata: Mapping[str, str | bytes] | None = None,
        chunk_size: int | None = None,
        parallel: int = 1,
        checksum: str | None = None,
        on_progress: ProgressCallback | None = None,
        key: str | None = None,
        resume: bool = True,
    ) -> str:
        """Upload a file or an async iterable of bytes; return the upload's URL.

        A file whose earlier upload was interrupted (the same path, size and modification time, or
        the same *key*) continues at the offset the server reports, if the server still has it.

        :param source: a path, or an async iterable of bytes (never buffered whole: it is sent in
            chunks of *chunk_size*, each held until the server has it)
        :param length: an async source's size; ``None`` defers it (creation-defer-length) until
            the source ends. Ignored for a path.
        :param metadata: ``Upload-Metadata`` (values are sent as UTF-8)
        :param chunk_size: bytes per ``PATCH`` request; by default a file goes in one request
            (32 MiB ones with a checksum) and an async source in 8 MiB ones
        :param parallel: upload a file as this many partial uploads on as many connections, then
            concatenate them (needs the concatenation extension)
        :param checksum: send ``Upload-Checksum`` with every request, with this algorithm
            (``sha1``, ``md5``, ``sha256``, ``sha512``, ``crc32``; needs the checksum extension)
        :param on_progress: called as ``on_progress(sent, total)`` as bytes go out (``total`` is
            ``None`` while unknown); ``sent`` goes back to the server's offset after a failure
        :param key: remember (and resume) the upload under this key instead of the file's
            fingerprint; an async source is remembered only with a key, and when it is resumed
            the bytes the server already has are read from it and skipped
        :param resume: ``False`` to start a new upload even if the store has one for the source
        :return: the upload's URL
        :raises ~anytus.ExtensionUnsupported: if the server lacks an extension this needs
        :raises ~anytus.MaxSizeExceeded: if the source is larger than the server's maximum
        :raises ~anytus.ResponseError: on a status retrying cannot fix, or after the last retry
        :raises ~anytus.ConnectionFailed: if the connection kept failing until the last retry
        """
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        if checksum is not None and checksum not in CHECKSUM_ALGORITHMS:
            raise ValueError(f"unsupported checksum algorithm {checksum!r}")
        if self.protocol == "draft":
            return await self._upload_draft(
                source,
                length,
                metadata=metadata,
                chunk_size=chunk_size,
                parallel=parallel,
                checksum=checksum,
                on_progress=on_progress,
                key=key,
                resume=resume,
            )
        header = _encode_metadata(metadata) if metadata else None
        caps = await self._get_capabilities()
        if checksum is not None:
            caps.require("checksum", f"checksum={checksum!r}")
            if checksum not in caps.checksum_algorithms:
                raise ExtensionUnsupported(
                    f"the server does not offer the {checksum!r} checksum (it offers: "
                    f"{', '.join(sorted(caps.checksum_algorithms)) or 'none'})"
                )
        if isinstance(source, AsyncIterable):
            if parallel > 1:
                raise ValueError("parallel uploads need a file, not an async iterable")
            return await self._upload_stream(
                source,
                length,
                metadata=header,
                chunk_size=chunk_size or STREAM_CHUNK_SIZE,
                checksum=checksum,
                progress=_Progress(on_progress, length, 1),
                store_key=f"{self.url} {key}" if key is not None else None,
                resume=resume,
                caps=caps,
            )
        return await self._upload_file(
            Path(source),
            metadata=header,
            chunk_size=chunk_size,
            parallel=parallel,
            checksum=checksum,
            on_progress=on_progress,
            key=key,
            resume=resume,
            caps=caps,
        )

    async def _upload_draft(
        self,
        source: str | os.PathLike[str] | AsyncIterable[bytes],
        length: int | None,
        *,
        metadata: Mapping[str, str | bytes] | None,
        chunk_size: int | None,
        parallel: int,
        checksum: str | None,
        on_progress: ProgressCallback | None,
        key: str | None,
        resume: bool,
    ) -> str:
        if parallel != 1:
            raise ValueError("the resumable-upload draft has no concatenation: parallel=1 only")
        if checksum is not None:
            raise ValueError("the resumable-upload draft has no checksum extension")
        # the draft has no metadata field: the media type goes as the creation's Content-Type
        filetype = (metadata or {}).get("filetype", "application/octet-stream")
        content_type = filetype.decode() if isinstance(filetype, bytes) else filetype
        if not (content_type.isascii() and content_type.isprintable()):
            raise ValueError(f"filetype {content_type!r} cannot be a Content-Type")
        if isinstance(source, AsyncIterable):
            return await self._draft.upload_stream(
                source,
                length,
                content_type=content_type,
                chunk_size=chunk_size or STREAM_CHUNK_SIZE,
                progress=_Progress(on_progress, length, 1),
                store_key=f"{self.url} draft {key}" if key is not None else None,
                resume=resume,
            )
        path = Path(source)
        async with _opened(path) as file:
            size, fingerprint = await anyio.to_thread.run_sync(_fingerprint, file, path)
        return await self._draft.upload_file(
            path,
            size,
            fingerprint,
            content_type=content_type,
            chunk_size=chunk_size,
            progress=_Progress(on_progress, size, 1),
            key=key,
            resume=resume,
        )

    async def resume(
        self,
        url: str,
        path: str | os.PathLike[str],
        *,
        chunk_size: int | None = None,
        checksum: str | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> str:
        """Continue the upload at *url* with the file at *path*, from the server's offset.

        :return: *url*, once the upload is complete
        :raises ValueError: if the upload's length is not the file's size
        :raises ~anytus.ResponseError: if the server does not know the upload (404, 410...)
        """
        if self.protocol == "draft":
            if checksum is not None:
                raise ValueError("the resumable-upload draft has no checksum extension")
            return await self._draft.resume(
                url, Path(path), chunk_size=chunk_size, progress=_Progress(on_progress, None, 1)
            )
        if checksum is not None:
            caps = await self._get_capabilities()
            caps.require("checksum", f"checksum={checksum!r}")
        state = await self._head(url, _Retry(self))
        async with _opened(Path(path)) as file:
            size = await anyio.to_thread.run_sync(_size, file)
            if size is not None and state.length is not None and state.length != size:
                raise ValueError(f"{path} has {size} bytes, the upload at {url} {state.length}")
            progress = _Progress(on_progress, size, 1)
            await self._send_from(
                url,
                state.offset,
                size,
                _FileSource(file, self._limiter),
                progress=progress,
                part=0,
                base=0,
                chunk_size=_file_chunk_size(chunk_size, checksum),
                checksum=checksum,
                declare_length=state.length is None,
            )
        return url

    async def offset(self, url: str) -> int:
        """The upload's offset on the server (``HEAD``), retried like any request.

        :raises ~anytus.ResponseError: if the server does not know the upload (404, 410...)
        """
        if self.protocol == "draft":
            return (await self._draft.state(url))[1].offset
        return (await self._head(url, _Retry(self))).offset

    async def terminate(self, url: str) -> None:
        """Delete the upload at *url* (the termination extension), and forget it in the store.

        :raises ~anytus.ExtensionUnsupported: if the server does not offer termination
        :raises ~anytus.ResponseError: if the server refuses (404 for an unknown upload...)
        """
        if self.protocol == "draft":
            await self._draft.delete(url)
            if self.store is not None:
                with anyio.CancelScope(shield=True):
                    await self.store.remove_url(url)
            return
        caps = await self._get_capabilities()
        caps.require("termination", "terminate()")
        retry = _Retry(self)
        while True:
            try:
                response = await self._send("DELETE", url, {}, None)
            except httpx.TransportError as exc:
                await retry.after(exc, 0)
                continue
            if response.status_code == 204:
                break
            await retry.after(response, 0)
        if self.store is not None:
            with anyio.CancelScope(shield=True):
                await self.store.remove_url(url)

    # -- capabilities --------------------------------------------------------------------------------

    async def _get_capabilities(self) -> _Capabilities:
        async with self._capabilities_lock:
            if self._capabilities is None:
                self._capabilities = await self._options()
            return self._capabilities

    async def _options(self) -> _Capabilities:
        retry = _Retry(self)
        while True:
            try:
                response = await self._send("OPTIONS", self.url, {}, None)
            except httpx.TransportError as exc:
                await retry.after(exc, 0)
                continue
            if response.status_code in (200, 204):
                break
            await retry.after(response, 0)

        def listed(name: str) -> frozenset[str]:
            value = response.headers.get(name, "")
            return frozenset(item.strip() for item in value.split(",") if item.strip())

        max_size = response.headers.get("Tus-Max-Size", "").strip()
        return _Capabilities(
            extensions=listed("Tus-Extension"),
            max_size=int(max_size) if max_size.isdigit() and int(max_size) > 0 else None,
            checksum_algorithms=listed("Tus-Checksum-Algorithm"),
        )

    # -- files ---------------------------------------------------------------------------------------

    async def _upload_file(
        self,
        path: Path,
        *,
        metadata: str | None,
        chunk_size: int | None,
        parallel: int,
        checksum: str | None,
        on_progress: ProgressCallback | None,
        key: str | None,
        resume: bool,
        caps: _Capabilities,
    ) -> str:
        async with _opened(path) as file:
            size, fingerprint = await anyio.to_thread.run_sync(_fingerprint, file, path)
            if caps.max_size is not None and size > caps.max_size:
                raise MaxSizeExceeded(
                    f"{path} has {size} bytes, more than the server's maximum of {caps.max_size}"
                )
            store_key = f"{self.url} {key if key is not None else fingerprint}"
            stored = None
            if resume and self.store is not None:
                stored = await self.store.get(store_key)
            parts = min(parallel, size) if size else 1
            if parts > 1:
                caps.require("concatenation", f"parallel={parallel}")
                url = await self._upload_parallel(
                    file,
                    size,
                    parts,
                    metadata=metadata,
                    chunk_size=_file_chunk_size(chunk_size, checksum),
                    checksum=checksum,
                    progress=_Progress(on_progress, size, parts),
                    store_key=store_key,
                    stored=stored,
                    caps=caps,
                )
            else:
                url = await self._upload_single_file(
                    file,
                    size,
                    metadata=metadata,
                    chunk_size=_file_chunk_size(chunk_size, checksum),
                    checksum=checksum,
                    progress=_Progress(on_progress, size, 1),
                    store_key=store_key,
                    stored=stored,
                    caps=caps,
                )
        if self.store is not None:
            with anyio.CancelScope(shield=True):
                await self.store.remove(store_key)
        return url

    async def _upload_single_file(
        self,
        file: BinaryIO,
        size: int,
        *,
        metadata: str | None,
        chunk_size: int | None,
        checksum: str | None,
        progress: _Progress,
        store_key: str,
        stored: StoredUpload | None,
        caps: _Capabilities,
    ) -> str:
        source = _FileSource(file, self._limiter)
        url = offset = None
        if stored is not None and stored.url is not None and not stored.parts:
            state = await self._existing(stored.url, size)
            if state is not None:
                url, offset = stored.url, state.offset
        if url is None or offset is None:
            # small files go in the creation request, when the server allows it (a checksum
            # is sent with PATCH requests only: not every server checks one on POST)
            with_body = (
                "creation-with-upload" in caps.extensions
                and checksum is None
                and 0 < size <= min(SMALL_FILE, chunk_size or SMALL_FILE)
            )
            url, offset = await self._create(
                size,
                metadata=metadata,
                caps=caps,
                body=source if with_body else None,
                progress=progress,
            )
            if offset < size:
                await self._remember(store_key, StoredUpload(url=url, size=size))
        progress.set(0, offset)
        await self._send_from(
            url,
            offset,
            size,
            source,
            progress=progress,
            part=0,
            base=0,
            chunk_size=chunk_size,
            checksum=checksum,
        )
        return url

    async def _upload_parallel(
        self,
        file: BinaryIO,
        size: int,
        parts: int,
        *,
        metadata: str | None,
        chunk_size: int | None,
        checksum: str | None,
        progress: _Progress,
        store_key: str,
        stored: StoredUpload | None,
        caps: _Capabilities,
    ) -> str:
        bounds = [size * index // parts for index in range(parts + 1)]
        urls: list[str] = []
        offsets: list[int] = []
        if stored is not None and len(stored.parts) == parts:
            if stored.url is not None and await self._existing(stored.url, size) is not None:
                # all sent and concatenated earlier: only the store's cleanup was missed
                progress.set(0, size)
                return stored.url
            for index, url in enumerate(stored.parts):
                state = await self._existing(url, bounds[index + 1] - bounds[index])
                if state is None:
                    urls = []
                    break
                urls.append(url)
                offsets.append(state.offset)
        if not urls:
            for index in range(parts):
                url, offset = await self._create(
                    bounds[index + 1] - bounds[index], metadata=None, caps=caps, partial=True
                )
                urls.append(url)
                offsets.append(offset)
            await self._remember(store_key, StoredUpload(parts=tuple(urls), size=size))

        async def send_part(index: int) -> None:
            # each part has its own file object: reads of one do not move another's position
            async with _opened(Path(file.name)) as part_file:
                base = bounds[index]
                progress.set(index, offsets[index])
                await self._send_from(
                    urls[index],
                    offsets[index],
                    bounds[index + 1] - base,
                    _FileSource(part_file, self._limiter),
                    progress=progress,
                    part=index,
                    base=base,
                    chunk_size=chunk_size,
                    checksum=checksum,
                )

        await _gather([partial(send_part, index) for index in range(parts)])

        final, _ = await self._create(
            None, metadata=metadata, caps=caps, final=" ".join(urls), length_known=False
        )
        return final

    async def _existing(self, url: str, size: int | None) -> _UploadState | None:
        """The state of a stored upload, or ``None`` when the server no longer has it (or it is
        not one for *size* bytes, when given)."""
        try:
            state = await self._head(url, _Retry(self))
        except ResponseError:
            return None  # 404, 410, 403...: gone, expired or not ours any more
        if size is not None and state.length is not None and state.length != size:
            return None
        return state

    # -- async sources -------------------------------------------------------------------------------

    async def _upload_stream(
        self,
        source: AsyncIterable[bytes],
        length: int | None,
        *,
        metadata: str | None,
        chunk_size: int,
        checksum: str | None,
        progress: _Progress,
        store_key: str | None,
        resume: bool,
        caps: _Capabilities,
    ) -> str:
        if length is not None and caps.max_size is not None and length > caps.max_size:
            raise MaxSizeExceeded(
                f"the source has {length} bytes, more than the server's maximum of {caps.max_size}"
            )
        if length is None:
            caps.require("creation-defer-length", "an async source without a length")
        url = None
        offset = 0
        if resume and store_key is not None and self.store is not None:
            stored = await self.store.get(store_key)
            if stored is not None and stored.url is not None and not stored.parts:
                state = await self._existing(stored.url, None)
                if state is not None and state.length in (None, length):
                    url, offset = stored.url, state.offset
        if url is None:
            url, offset = await self._create(length, metadata=metadata, caps=caps)
            if store_key is not None:
                await self._remember(store_key, StoredUpload(url=url, size=length))
        progress.set(0, offset)

        # a resumed source starts from its beginning: what the server has already is skipped
        skip = offset
        # read the next chunk while one is being sent: at most three in memory
        send_chunks, receive_chunks = anyio.create_memory_object_stream[tuple[bytes, bool]](1)

        async def consume() -> None:
            position = 0
            async with receive_chunks:
                async for chunk, last in receive_chunks:
                    position, piece = stream_piece(
                        chunk, last, position, skip=skip, length=length, max_size=caps.max_size
                    )
                    if piece is None:
                        continue
                    view, start = piece
                    if last:
                        progress.total = position
                    await self._send_from(
                        url,
                        start,
                        position,
                        _ChunkSource(view, start),
                        progress=progress,
                        part=0,
                        base=0,
                        chunk_size=None,
                        checksum=checksum,
                        declare_length=length is None and last,
                    )

        await _gather([partial(_produce_chunks, source, chunk_size, send_chunks), consume])
        if store_key is not None and self.store is not None:
            with anyio.CancelScope(shield=True):
                await self.store.remove(store_key)
        return url

    # -- requests ------------------------------------------------------------------------------------

    async def _remember(self, store_key: str, entry: StoredUpload) -> None:
        if self.store is not None:
            # the upload exists on the server now: record it even if we are being cancelled, so
            # that a later upload of the same source continues it
            with anyio.CancelScope(shield=True):
                await self.store.put(store_key, entry)

    async def _create(
        self,
        length: int | None,
        *,
        metadata: str | None,
        caps: _Capabilities,
        body: _Source | None = None,
        progress: _Progress | None = None,
        partial: bool = False,
        final: str | None = None,
        length_known: bool = True,
    ) -> tuple[str, int]:
        """``POST`` a new upload; return its URL and offset."""
        headers: dict[str, str] = {}
        if final is not None:
            headers["Upload-Concat"] = f"final;{final}"
        elif length is None:
            headers["Upload-Defer-Length"] = "1"
        else:
            headers["Upload-Length"] = str(length)
        if partial:
            headers["Upload-Concat"] = "partial"
        if metadata:
            headers["Upload-Metadata"] = metadata
        retry = _Retry(self)
        while True:
            content: httpx.AsyncByteStream | None = None
            send_headers = headers
            if body is not None and length:
                send_headers = {
                    **headers,
                    "Content-Type": OFFSET_CONTENT_TYPE,
                    "Content-Length": str(length),
                }
                content = body.body(0, length, _reporter(progress, 0, 0))
            try:
                response = await self._send("POST", self.url, send_headers, content)
            except httpx.TransportError as exc:
                await retry.after(exc, 0)
                continue
            if response.status_code == 201:
                break
            await retry.after(response, 0)
        location = response.headers.get("Location")
        if not location:
            raise ResponseError(
                "POST",
                self.url,
                response.status_code,
                message=f"POST {self.url} answered 201 without a Location",
            )
        url = urllib.parse.urljoin(self.url, location)
        offset = 0
        if content is not None and "Upload-Offset" in response.headers:
            offset = _header_int(response, "Upload-Offset")
        return url, offset

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: httpx.AsyncByteStream | None,
    ) -> httpx.Response:
        request = self._client.build_request(method, url, headers=headers)
        # always a stream of ours (with the Content-Length given in *headers*): httpx's own is an
        # async generator, left unfinished for the garbage collector when a request is cut off
        request.stream = body if body is not None else _NoBody()
        return await self._client.send(request)

    async def _head(self, url: str, retry: _Retry) -> _UploadState:
        while True:
            try:
                response = await self._send("HEAD", url, {}, None)
            except httpx.TransportError as exc:
                await retry.after(exc, 0)
                continue
            if response.status_code in (200, 204):
                break
            await retry.after(response, 0)
        offset = _header_int(response, "Upload-Offset")
        length = None
        if response.headers.get("Upload-Defer-Length") != "1":
            length = _header_int(response, "Upload-Length")
        return _UploadState(offset=offset, length=length)

    async def _send_from(
        self,
        url: str,
        offset: int,
        size: int,
        source: _Source,
        *,
        progress: _Progress,
        part: int,
        base: int,
        chunk_size: int | None,
        checksum: str | None,
        declare_length: bool = False,
    ) -> None:
        """``PATCH`` bytes ``[offset, size)`` of the upload at *url* (its bytes are the source's
        ``[base + offset, base + size)``), resuming after failures from the server's offset.

        *declare_length* sends ``Upload-Length: size`` with the requests (one even when there are
        no bytes left to send), for an upload whose length was deferred.
        """
        retry = _Retry(self)
        report = _reporter(progress, part, base)
        first = True
        while offset < size or (first and declare_length):
            first = False
            end = size if chunk_size is None else min(size, offset + chunk_size)
            headers = {
                "Upload-Offset": str(offset),
                "Content-Type": OFFSET_CONTENT_TYPE,
                "Content-Length": str(end - offset),
            }
            if declare_length:
                headers["Upload-Length"] = str(base + size)
            if checksum is not None:
                digest = await source.checksum(base + offset, base + end, checksum)
                headers["Upload-Checksum"] = f"{checksum} {base64.b64encode(digest).decode()}"
            content = source.body(base + offset, base + end, report)
            try:
                response = await self._send("PATCH", url, headers, content)
            except httpx.TransportError as exc:
                await retry.after(exc, offset)
                offset = await self._resync(url, retry, progress, part)
                continue
            if response.status_code in (200, 204):
                new_offset = _header_int(response, "Upload-Offset")
                if new_offset <= offset and end > offset:
                    # the server stored nothing: count it as a failure, or this would loop
                    await retry.after(response, offset)
                retry.progressed(new_offset)
                offset = new_offset
                progress.set(part, offset)
                continue
            await retry.after(response, offset)
            offset = await self._resync(url, retry, progress, part)

    async def _resync(self, url: str, retry: _Retry, progress: _Progress, part: int) -> int:
        """After a failure: the server's offset (``HEAD``), which the next request starts at."""
        state = await self._head(url, retry)
        retry.progressed(state.offset)
        progress.set(part, state.offset)
        return state.offset


def _reporter(progress: _Progress | None, part: int, base: int) -> Callable[[int], None]:
    if progress is None:
        return lambda position: None
    return lambda position: progress.set(part, position - base)


def _file_chunk_size(chunk_size: int | None, checksum: str | None) -> int | None:
    if chunk_size is None and checksum is not None:
        return CHECKSUM_CHUNK_SIZE
    return chunk_size


def _open(path: Path) -> BinaryIO:
    return path.open("rb")


@contextlib.asynccontextmanager
async def _opened(path: Path) -> AsyncIterator[BinaryIO]:
    """*path* opened for reading in a worker thread, and closed there, cancelled or not."""
    file = await anyio.to_thread.run_sync(_open, path)
    try:
        yield file
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(file.close)


def _size(file: BinaryIO) -> int:
    return os.fstat(file.fileno()).st_size


def _fingerprint(file: BinaryIO, path: Path) -> tuple[int, str]:
    """The file's size, and its fingerprint: absolute path, size, modification time."""
    stat = os.fstat(file.fileno())
    return stat.st_size, f"file:{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"


async def _gather(functions: list[Callable[[], Awaitable[None]]]) -> None:
    """Run *functions* concurrently; if one fails, cancel the others and raise its exception
    (not an exception group: callers catch our errors by class)."""
    errors: list[Exception] = []

    async def run(function: Callable[[], Awaitable[None]], scope: anyio.CancelScope) -> None:
        try:
            await function()
        except Exception as exc:  # noqa: BLE001 - raised again below, by the caller's task
            errors.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for function in functions:
            tg.start_soon(run, function, tg.cancel_scope)
    if errors:
        raise errors[0]


async def _produce_chunks(
    source: AsyncIterable[bytes],
    chunk_size: int,
    send: anyio.abc.ObjectSendStream[tuple[bytes, bool]],
) -> None:
    """Send ``(chunk, is_last)`` pairs of *chunk_size* bytes (the last may be shorter or empty).

    A chunk goes out only once a byte beyond it has arrived, or the source has ended, so that the
    last one is known to be last (its request declares the length of a deferred upload).
    """
    async with send:
        pending = bytearray()
        async for piece in source:
            pending += piece
            while len(pending) > chunk_size:
                await send.send((bytes(pending[:chunk_size]), False))
                del pending[:chunk_size]
        await send.send((bytes(pending), True))
