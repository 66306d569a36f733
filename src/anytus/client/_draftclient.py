"""The client side of the IETF resumable-upload draft (draft-ietf-httpbis-resumable-upload).

Used by :class:`anytus.client.TusClient` with ``protocol="draft"``. Interop versions 6 to 10
(drafts -04 to -13) look the same from a client's side: ``Upload-Complete``, ``Upload-Offset``,
``Upload-Length``, appends as ``application/partial-upload``, ``Upload-Limit``. What differs (the
status of an append, problem types, ``expires``/``max-age``) is read leniently: any 2xx is
success, an error is retried or raised by its status.

Creation requests that carry content are sent on a connection of their own with h11, because
httpx (httpcore) drops informational responses: the ``104 (Upload Resumption Supported)`` is how
the client learns the upload's URL before the request ends, so that a cut creation is resumed.
"""

from __future__ import annotations

import urllib.parse
from functools import partial
from typing import TYPE_CHECKING, Final

import anyio
import anyio.abc
import h11
import httpx

from .._exceptions import ExtensionUnsupported, MaxSizeExceeded, ResponseError
from .._sfv import dict_ints, item_bool, item_int
from ._client import (
    READ_SIZE,
    RETRY_STATUSES,
    _ChunkSource,
    _FileSource,
    _gather,
    _NoBody,
    _opened,
    _produce_chunks,
    _Progress,
    _reporter,
    _response_error,
    _Retry,
    _size,
    _Source,
    client_tls_context,
    stream_piece,
)
from ._urlstore import StoredUpload

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, Awaitable, Callable, Mapping
    from pathlib import Path

    from ._client import TusClient

__all__ = ("DRAFT_VERSIONS", "DraftState", "DraftUploader")

#: the interop versions the client speaks, newest first (the order it tries them in)
DRAFT_VERSIONS: Final = (10, 9, 8, 7, 6)
INTEROP_HEADER: Final = "Upload-Draft-Interop-Version"
PARTIAL_UPLOAD: Final = "application/partial-upload"


class DraftState:
    """What an offset retrieval (``HEAD``) says about a draft upload."""

    __slots__ = ("complete", "length", "max_size", "offset")

    def __init__(
        self, offset: int, complete: bool, length: int | None, max_size: int | None
    ) -> None:
        self.offset = offset
        self.complete = complete
        self.length = length
        self.max_size = max_size


def _max_size(response: httpx.Response) -> int | None:
    return dict_ints(response.headers.get("Upload-Limit")).get("max-size")


def _is_draft_answer(response: httpx.Response) -> bool:
    """Whether *response* was given by the draft's rules (not by tus's, as a server answers a
    request naming an interop version it does not speak)."""
    # tusd leaves Upload-Complete out of some answers, but names the interop version in all of
    # them; a tus answer has neither (tusd answers a HEAD of an unknown version as tus's HEAD)
    headers = response.headers
    return INTEROP_HEADER in headers or "Upload-Complete" in headers


def _parse_state(response: httpx.Response) -> DraftState:
    return DraftState(
        offset=_offset_of(response),
        complete=bool(item_bool(response.headers.get("Upload-Complete"))),
        length=item_int(response.headers.get("Upload-Length")),
        max_size=_max_size(response),
    )


def _offset_of(response: httpx.Response) -> int:
    offset = item_int(response.headers.get("Upload-Offset"))
    if offset is None:
        raise ResponseError(
            response.request.method,
            str(response.request.url),
            response.status_code,
            message=f"{response.request.method} {response.request.url}: missing or invalid "
            f"Upload-Offset: {response.headers.get('Upload-Offset')!r:.40}",
        )
    return offset


class DraftUploader:
    """The draft's operations for one :class:`TusClient` (its connections, retries, store)."""

    def __init__(self, client: TusClient) -> None:
        self.client = client
        self._negotiate_lock = anyio.Lock()

    # -- requests --------------------------------------------------------------------------------

    def _headers(self, version: int, extra: Mapping[str, str]) -> dict[str, str]:
        return {INTEROP_HEADER: str(version), **extra}

    async def _send(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        body: httpx.AsyncByteStream | None,
    ) -> httpx.Response:
        http = self.client._client
        request = http.build_request(method, url, headers=headers)
        # a draft request is not a tus request: no Tus-Resumable (a server that does not speak
        # the version then answers by tus's rules, with a 412, and we step down)
        request.headers.pop("Tus-Resumable", None)
        request.stream = body if body is not None else _NoBody()
        response = await http.send(request)
        return response

    async def _head_response(
        self, url: str, version: int, retry: _Retry, *, probing: bool = False
    ) -> httpx.Response:
        while True:
            try:
                response = await self._send("HEAD", url, self._headers(version, {}), None)
            except httpx.TransportError as exc:
                await retry.after(exc, 0)
                continue
            if response.is_success:
                return response
            if probing and response.status_code < 500 and not _is_draft_answer(response):
                return response  # refused by tus's rules: not this version
            await retry.after(response, 0)

    async def state(self, url: str) -> tuple[int, DraftState]:
        """The interop version and the state of the upload at *url*. Before the client knows the
        server's version this negotiates it, as a creation does: a ``HEAD`` per version, newest
        first, until one is answered by the draft's rules."""
        client = self.client
        async with self._negotiate_lock:
            if client.draft_version is not None:
                version = client.draft_version
                return version, await self.head(url, version, _Retry(client))
            candidates = (
                (client.pinned_draft_version,)
                if client.pinned_draft_version is not None
                else DRAFT_VERSIONS
            )
            for version in candidates:
                response = await self._head_response(url, version, _Retry(client), probing=True)
                if _is_draft_answer(response):
                    client.draft_version = version
                    return version, _parse_state(response)
            raise ExtensionUnsupported(
                f"{url} is not answered by the resumable-upload draft at interop version "
                f"{', '.join(str(v) for v in candidates)}"
            )

    async def head(self, url: str, version: int, retry: _Retry) -> DraftState:
        """Offset retrieval, retried like any request."""
        return _parse_state(await self._head_response(url, version, retry))

    async def delete(self, url: str) -> None:
        """Cancellation (``DELETE``), at the version the server speaks."""
        version, _ = await self.state(url)
        await self._delete(url, version)

    async def _delete(self, url: str, version: int) -> None:
        """Cancellation (``DELETE``)."""
        retry = _Retry(self.client)
        while True:
            try:
                response = await self._send("DELETE", url, self._headers(version, {}), None)
            except httpx.TransportError as exc:
                await retry.after(exc, 0)
                continue
            if response.is_success:
                return
            await retry.after(response, 0)

    # -- version negotiation -----------------------------------------------------------------------

    async def _create_empty(
        self, length: int | None, content_type: str
    ) -> tuple[str, int, int | None]:
        """Create an upload without content, negotiating the interop version if it is not
        known yet: each supported version is tried, newest first, until the server answers by the
        draft's rules. Returns the URL, the offset and the advertised ``max-size``."""
        async with self._negotiate_lock:
            known = self.client.draft_version
            pinned = self.client.pinned_draft_version
            if known is not None:
                candidates: tuple[int, ...] = (known,)
            elif pinned is not None:
                candidates = (pinned,)
            else:
                candidates = DRAFT_VERSIONS
            refusals: list[str] = []
            for version in candidates:
                headers = {
                    "Upload-Complete": "?1" if length == 0 else "?0",
                    "Content-Type": content_type,
                    "Content-Length": "0",
                }
                if length is not None:
                    headers["Upload-Length"] = str(length)
                response = await self._post_retried(self._headers(version, headers))
                if response.status_code == 413:
                    raise MaxSizeExceeded(
                        f"the server refuses {length} bytes (Upload-Limit: "
                        f"{response.headers.get('Upload-Limit', 'not given')})"
                    )
                if response.status_code == 201 and _is_draft_answer(response):
                    self.client.draft_version = version
                    location = response.headers.get("Location")
                    if not location:
                        raise ResponseError(
                            "POST",
                            self.client.url,
                            201,
                            message=f"POST {self.client.url} answered 201 without a Location",
                        )
                    url = urllib.parse.urljoin(self.client.url, location)
                    offset = item_int(response.headers.get("Upload-Offset")) or 0
                    return url, offset, _max_size(response)
                if _is_draft_answer(response):
                    # the server speaks this version and refused the request itself
                    raise _response_error(response)
                refusals.append(f"{version}: {response.status_code}")
            raise ExtensionUnsupported(
                f"{self.client.url} does not speak the resumable-upload draft at interop "
                f"version {', '.join(str(v) for v in candidates)} ({'; '.join(refusals)})"
            )

    async def _post_retried(self, headers: Mapping[str, str]) -> httpx.Response:
        """A bodiless ``POST``, retried on connection failures and retryable statuses; any other
        answer is returned."""
        retry = _Retry(self.client)
        while True:
            try:
                response = await self._send("POST", self.client.url, headers, None)
            except httpx.TransportError as exc:
                await retry.after(exc, 0)
                continue
            if response.status_code not in RETRY_STATUSES:
                return response
            await retry.after(response, 0)

    # -- creation with content (h11, for the 104) --------------------------------------------------

    async def _create_with_content(
        self,
        version: int,
        source: _Source,
        end: int,
        total: int | None,
        content_type: str,
        progress: _Progress,
        on_url: Callable[[str], Awaitable[None]],
    ) -> tuple[str, int | None] | None:
        """Create an upload with its bytes ``[0, end)``; return its URL and offset (``None`` when
        the creation was cut after the 104 named the URL: the caller asks the server), or
        ``None`` when it was cut before a 104 (the caller creates without content)."""
        headers = {
            "Upload-Complete": "?1" if total == end else "?0",
            "Content-Type": content_type,
            "Content-Length": str(end),
        }
        if total is not None:
            headers["Upload-Length"] = str(total)
        headers = self._headers(version, headers)
        retry = _Retry(self.client)
        report = _reporter(progress, 0, 0)
        while True:
            interim: list[str] = []
            try:
                response = await self._post_h11(
                    headers, source.body(0, end, report), partial(self._interim, interim, on_url)
                )
            except httpx.TransportError as exc:
                if interim:
                    return interim[0], None
                # cut before any 104: the upload's URL is unknown (a server without 104s). Sending
                # it all again could be cut again: create it without content, then append
                await retry.after(exc, 0)
                return None
            if response.status_code == 201:
                break
            if response.status_code == 413:
                raise MaxSizeExceeded(
                    f"the server refuses {total if total is not None else end} bytes "
                    f"(Upload-Limit: {response.headers.get('Upload-Limit', 'not given')})"
                )
            if interim and response.status_code >= 500:
                # the upload exists: go on from what the server kept
                return interim[0], None
            if response.status_code not in RETRY_STATUSES and not _is_draft_answer(response):
                raise ExtensionUnsupported(
                    f"{self.client.url} no longer speaks the resumable-upload draft at interop "
                    f"version {version} (it answered {response.status_code})"
                )
            await retry.after(response, 0)
        location = response.headers.get("Location") or (interim[0] if interim else None)
        if not location:
            raise ResponseError(
                "POST",
                self.client.url,
                201,
                message=f"POST {self.client.url} answered 201 without a Location",
            )
        url = urllib.parse.urljoin(self.client.url, location)
        if not interim:
            await on_url(url)
        offset = item_int(response.headers.get("Upload-Offset"))
        return url, end if offset is None else offset

    async def _interim(
        self, found: list[str], on_url: Callable[[str], Awaitable[None]], location: str
    ) -> None:
        """A 104 named the upload: keep its URL (in *found*, and in the store)."""
        url = urllib.parse.urljoin(self.client.url, location)
        found.append(url)
        await on_url(url)

    async def _post_h11(
        self,
        headers: Mapping[str, str],
        body: httpx.AsyncByteStream,
        on_interim: Callable[[str], Awaitable[None]],
    ) -> httpx.Response:
        """``POST`` to the creation URL on a connection of its own, seeing 1xx responses.

        The request body is sent while responses are read, so that the 104 is seen (and its URL
        kept) as soon as it arrives, and an early final answer (413...) stops the sending.
        """
        client = self.client
        url = httpx.URL(client.url)
        request = httpx.Request("POST", url)
        tls = url.scheme == "https"
        port = url.port or (443 if tls else 80)
        # (netloc keeps an IPv6 address's brackets and leaves out a default port)
        host_header = url.netloc.decode("ascii")
        all_headers = [
            ("Host", host_header),
            *((k, v) for k, v in client.headers.items() if k.lower() != "host"),
            *headers.items(),
        ]
        try:
            with anyio.fail_after(client.timeout):
                stream: anyio.abc.ByteStream
                if tls:
                    # the CAs the client's other requests (httpx's) trust
                    stream = await anyio.connect_tcp(
                        url.host,
                        port,
                        ssl_context=await client_tls_context(),
                        tls_standard_compatible=False,
                    )
                else:
                    stream = await anyio.connect_tcp(url.host, port)
        except (OSError, TimeoutError) as exc:
            raise httpx.ConnectError(repr(exc), request=request) from exc
        connection = h11.Connection(h11.CLIENT)
        failure: list[BaseException] = []
        result: list[httpx.Response] = []

        body_sent = anyio.Event()

        async def send_request(scope: anyio.CancelScope) -> None:
            try:
                with anyio.fail_after(client.timeout):
                    await stream.send(
                        connection.send(
                            h11.Request(method="POST", target=url.raw_path, headers=all_headers)
                        )
                        or b""
                    )
                async for piece in body:
                    with anyio.fail_after(client.timeout):
                        await stream.send(connection.send(h11.Data(data=piece)) or b"")
                with anyio.fail_after(client.timeout):
                    await stream.send(connection.send(h11.EndOfMessage()) or b"")
                body_sent.set()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                # the connection broke: the reader sees it too, and whether a 104 came first
                # (from now on it waits no longer than the read timeout)
                body_sent.set()
            except TimeoutError:
                failure.append(httpx.WriteTimeout("the server stopped reading", request=request))
                scope.cancel()
            except h11.LocalProtocolError as exc:
                if connection.their_state in (h11.IDLE, h11.SEND_RESPONSE):
                    # no final answer yet: the request itself cannot be sent (a bad field value)
                    failure.append(ValueError(f"cannot send the creation request: {exc}"))
                    scope.cancel()
                # else the server answered early (its final response ended our message)
            except Exception as exc:  # noqa: BLE001 - raised again by the caller's task
                # the source failed (a file that shrank...): end the exchange with its error
                failure.append(exc)
                scope.cancel()

        async def receive_response() -> None:
            status = 0
            response_headers: list[tuple[bytes, bytes]] = []
            content = bytearray()
            while True:
                event = connection.next_event()
                if event is h11.NEED_DATA:
                    # the read timeout runs once the body is out: before, the server may rightly
                    # say nothing (after its 104) for as long as the body takes
                    data = None
                    with anyio.move_on_after(client.timeout):
                        try:
                            data = await stream.receive(READ_SIZE)
                        except (anyio.EndOfStream, anyio.BrokenResourceError):
                            data = b""
                    if data is None:
                        if body_sent.is_set():
                            raise TimeoutError("no response from the server")
                        continue
                    connection.receive_data(data)
                elif isinstance(event, h11.InformationalResponse):
                    if event.status_code == 104:
                        location = dict(event.headers).get(b"location")
                        if location:
                            with anyio.CancelScope(shield=True):
                                await on_interim(location.decode("ascii", "replace"))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    response_headers = list(event.headers)
                elif isinstance(event, h11.Data):
                    content += event.data
                elif isinstance(event, h11.EndOfMessage):
                    result.append(
                        httpx.Response(
                            status, headers=response_headers, content=bytes(content),
                            request=request,
                        )
                    )  # fmt: skip
                    return
                else:  # ConnectionClosed, PAUSED
                    raise h11.RemoteProtocolError("the connection closed before the response")

        try:
            async with stream, anyio.create_task_group() as tg:
                tg.start_soon(send_request, tg.cancel_scope)
                try:
                    await receive_response()
                except (
                    OSError,
                    anyio.BrokenResourceError,
                    anyio.ClosedResourceError,
                    TimeoutError,
                    h11.ProtocolError,
                ) as exc:
                    failure.append(httpx.ReadError(repr(exc), request=request))
                except Exception as exc:  # noqa: BLE001 - raised below, outside the task group
                    failure.append(exc)
                tg.cancel_scope.cancel()
        except OSError as exc:  # closing the socket
            failure.append(httpx.ReadError(repr(exc), request=request))
        if failure:
            raise failure[0]
        return result[0]

    # -- appends -------------------------------------------------------------------------------------

    async def send_from(
        self,
        url: str,
        version: int,
        offset: int,
        size: int,
        source: _Source,
        *,
        progress: _Progress,
        chunk_size: int | None,
        complete: bool,
    ) -> None:
        """Append bytes ``[offset, size)`` of *source*, resuming after failures from the
        server's offset; the last append says ``Upload-Complete: ?1`` when *complete* (one is
        sent even with no bytes left, to complete an upload of unknown length)."""
        retry = _Retry(self.client)
        report = _reporter(progress, 0, 0)
        first = True
        while offset < size or (first and complete and offset == size):
            end = size if chunk_size is None else min(size, offset + chunk_size)
            last = complete and end == size
            first = False
            headers = self._headers(
                version,
                {
                    "Upload-Offset": str(offset),
                    "Upload-Complete": "?1" if last else "?0",
                    "Content-Type": PARTIAL_UPLOAD,
                    "Content-Length": str(end - offset),
                },
            )
            try:
                response = await self._send("PATCH", url, headers, source.body(offset, end, report))
            except httpx.TransportError as exc:
                await retry.after(exc, offset)
                offset = await self._resync(url, version, retry, progress)
                first = True
                continue
            if response.is_success:
                new_offset = item_int(response.headers.get("Upload-Offset"))
                if new_offset is not None and new_offset <= offset < end:
                    # the server stored nothing: count it as a failure, or this would loop
                    await retry.after(response, offset)
                offset = end if new_offset is None else new_offset
                retry.progressed(offset)
                progress.set(0, offset)
                if last:
                    return
                continue
            if response.status_code == 400 and last and end == offset:
                # an empty completing append to an upload the server already counts as complete
                # (tus's meaning of "all bytes received"): nothing is missing
                state = await self.head(url, version, retry)
                if state.complete and state.offset == size:
                    return
            await retry.after(response, offset)
            offset = await self._resync(url, version, retry, progress)
            first = True

    async def _resync(self, url: str, version: int, retry: _Retry, progress: _Progress) -> int:
        state = await self.head(url, version, retry)
        retry.progressed(state.offset)
        progress.set(0, state.offset)
        return state.offset

    # -- uploads -------------------------------------------------------------------------------------

    async def upload_file(
        self,
        path: Path,
        size: int,
        fingerprint: str,
        *,
        content_type: str,
        chunk_size: int | None,
        progress: _Progress,
        key: str | None,
        resume: bool,
    ) -> str:
        client = self.client
        store_key = f"{client.url} draft {key if key is not None else fingerprint}"
        async with _opened(path) as file:
            source = _FileSource(file, client._limiter)
            url = await self._upload(
                source,
                size,
                content_type=content_type,
                chunk_size=chunk_size,
                progress=progress,
                store_key=store_key,
                resume=resume,
            )
        await self._forget(store_key)
        return url

    async def _forget(self, store_key: str | None) -> None:
        if store_key is not None and self.client.store is not None:
            with anyio.CancelScope(shield=True):
                await self.client.store.remove(store_key)

    async def _remember(self, store_key: str | None, url: str, size: int | None) -> None:
        if store_key is not None and self.client.store is not None:
            with anyio.CancelScope(shield=True):
                await self.client.store.put(store_key, StoredUpload(url=url, size=size))

    async def _stored(self, store_key: str | None, size: int | None) -> tuple[str, int] | None:
        """A stored upload of the source that the server still has, and its offset."""
        client = self.client
        if store_key is None or client.store is None:
            return None
        stored = await client.store.get(store_key)
        if stored is None or stored.url is None or stored.parts:
            return None
        try:
            # (negotiates the version, for a client whose first upload this is)
            _, state = await self.state(stored.url)
        except (ResponseError, ExtensionUnsupported):
            return None  # gone, expired, or not ours any more
        if size is not None and state.length is not None and state.length != size:
            return None
        return stored.url, state.offset

    async def _upload(
        self,
        source: _Source,
        size: int,
        *,
        content_type: str,
        chunk_size: int | None,
        progress: _Progress,
        store_key: str | None,
        resume: bool,
    ) -> str:
        """Upload *size* bytes known up front."""
        client = self.client
        found = await self._stored(store_key, size) if resume else None
        if found is not None:
            url, offset = found
        elif client.draft_version is None or size == 0:
            # the first creation of this client negotiates the version: without content, so
            # that a version the server refuses costs no bytes
            url, offset, max_size = await self._create_empty(size, content_type)
            if max_size is not None and size > max_size:
                raise MaxSizeExceeded(f"{size} bytes is more than the server's maximum {max_size}")
            await self._remember(store_key, url, size)
        else:
            first_end = size if chunk_size is None else min(size, chunk_size)
            created = await self._create_with_content(
                client.draft_version,
                source,
                first_end,
                size,
                content_type,
                progress,
                lambda url: self._remember(store_key, url, size),
            )
            if created is None:
                url, offset, _ = await self._create_empty(size, content_type)
                await self._remember(store_key, url, size)
            else:
                url, maybe_offset = created
                if maybe_offset is None:
                    maybe_offset = await self._resync(
                        url, client.draft_version, _Retry(client), progress
                    )
                offset = maybe_offset
        assert client.draft_version is not None
        progress.set(0, offset)
        if offset < size:
            await self.send_from(
                url,
                client.draft_version,
                offset,
                size,
                source,
                progress=progress,
                chunk_size=chunk_size,
                complete=True,
            )
        return url

    async def upload_stream(
        self,
        source: AsyncIterable[bytes],
        length: int | None,
        *,
        content_type: str,
        chunk_size: int,
        progress: _Progress,
        store_key: str | None,
        resume: bool,
    ) -> str:
        """Upload an async source: created without content (``Upload-Complete: ?0``, with
        ``Upload-Length`` when *length* is given), then one append per chunk, the last with
        ``Upload-Complete: ?1``."""
        client = self.client
        found = await self._stored(store_key, length) if resume else None
        if found is not None:
            url, offset = found
            max_size = None
        else:
            url, offset, max_size = await self._create_empty(length, content_type)
            if length is not None and max_size is not None and length > max_size:
                raise MaxSizeExceeded(
                    f"{length} bytes is more than the server's maximum {max_size}"
                )
            await self._remember(store_key, url, length)
        version = client.draft_version
        assert version is not None
        progress.set(0, offset)
        skip = offset
        if length == 0 and offset == 0:
            # created complete (Upload-Complete: ?1 with Upload-Length: 0)
            await _drain(source)
            await self._forget(store_key)
            return url
        send_chunks, receive_chunks = anyio.create_memory_object_stream[tuple[bytes, bool]](1)

        async def consume() -> None:
            position = 0
            async with receive_chunks:
                async for chunk, last in receive_chunks:
                    position, piece = stream_piece(
                        chunk, last, position, skip=skip, length=length, max_size=max_size
                    )
                    if piece is None:
                        continue
                    view, start = piece
                    if last:
                        progress.total = position
                    await self.send_from(
                        url,
                        version,
                        start,
                        position,
                        _ChunkSource(view, start),
                        progress=progress,
                        chunk_size=None,
                        complete=last,
                    )

        await _gather([lambda: _produce_chunks(source, chunk_size, send_chunks), consume])
        await self._forget(store_key)
        return url

    async def resume(
        self, url: str, path: Path, *, chunk_size: int | None, progress: _Progress
    ) -> str:
        """Continue the draft upload at *url* with the file at *path*."""
        client = self.client
        version, state = await self.state(url)
        async with _opened(path) as file:
            size = await anyio.to_thread.run_sync(_size, file)
            if state.length is not None and state.length != size:
                raise ValueError(f"{path} has {size} bytes, the upload at {url} {state.length}")
            progress.total = size
            progress.set(0, state.offset)
            if not state.complete:
                await self.send_from(
                    url,
                    version,
                    state.offset,
                    size,
                    _FileSource(file, client._limiter),
                    progress=progress,
                    chunk_size=chunk_size,
                    complete=True,
                )
        return url


async def _drain(source: AsyncIterable[bytes]) -> None:
    async for piece in source:
        if piece:
            raise ValueError("the source yielded more than length=0 bytes")
