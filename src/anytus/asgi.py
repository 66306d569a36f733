"""A tus 1.0.0 server as a plain ASGI application.

::

    from anytus import FileStore
    from anytus.asgi import TusApp

    app = TusApp(FileStore("uploads"), base_path="/files/")

Mount it under any ASGI server (granian, hypercorn, uvicorn, ...) or framework. It speaks tus
1.0.0 with the creation, creation-with-upload, creation-defer-length, termination, concatenation,
checksum and expiration extensions (those the store supports), plus GET downloads with ranges and
CORS.

This module is the I/O around :class:`anytus._core.TusCore`, which makes every protocol decision:
read the request, ask the core, take the lock, call the store, send what the core built. A small
request (HEAD, DELETE, a PATCH whose whole body fits in :data:`SMALL_BODY`) does its lock, load,
write and unlock in one worker-thread hop when the store can (:class:`~anytus.OneHopStore`) and
the lock is free; anything else takes the lock in the event loop and streams.
"""

from __future__ import annotations

__all__ = (
    "SMALL_BODY",
    "ASGIApp",
    "HookRequest",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "TusApp",
    "error_of",
)

import contextlib
import dataclasses
import logging
import math
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast

import anyio
import anyio.lowlevel

from . import _core as core
from . import _draft, _draft_asgi
from . import _protocol as proto
from ._asgi_types import ASGIApp, Message, Receive, Scope, Send
from ._datastore import OneHopStore, StoreComposer, ThreadFedUpload
from ._exceptions import (
    BasePathMismatch,
    CorruptUploadInfo,
    RequestBodyTimeout,
    ServerShuttingDown,
    ServiceUnavailable,
    StorageError,
    TusError,
    UploadExpired,
    UploadInterrupted,
    UploadNotFinished,
    UploadNotFound,
    storage_error,
)
from ._exchange import SMALL_BODY, Body, BodyReader, Exchange, HookRequest, hashing
from ._info import UploadInfo
from ._oncelog import OnceLog

if TYPE_CHECKING:
    from anyio.abc import ByteReceiveStream

    from ._asgi_types import (
        ASGIReceiveCallable,
        ASGISendCallable,
        BodySink,
        HTTPResponseBodyEvent,
        HTTPScope,
    )
    from ._datastore import DataStore, Locker, SyncUpload, TerminatableStore, Upload

logger = logging.getLogger(__name__)

T = TypeVar("T")

# After an early answer (409, 413, 415...) the rest of the request body is read and dropped for up
# to this long, as nginx's lingering close does: clients that write the whole body before reading
# (httpx, requests...) then get the answer on a healthy connection instead of a reset. A body still
# unread after that is not worth more (tus/tusd#1371): the connection is closed.
_LINGER_TIME: Final = 5.0


class _StoreLike(Protocol):
    """What :class:`TusApp` needs of a store: that it registers its capabilities."""

    def use_in(self, composer: StoreComposer) -> None: ...


OnCreate = Callable[[UploadInfo, HookRequest], Awaitable[None]]
OnUpload = Callable[[UploadInfo], Awaitable[None]]


#: where TusApp leaves the error it answered with, in the request's scope (read by error_of)
_ERROR_KEY = "anytus.error"


class _InternalError(TusError):
    """A failure that is not a TusError (a bug), as error_of reports it."""


def _record_error(scope: HTTPScope, error: TusError) -> None:
    # the scope is the one place shared with the server and middleware around the app
    cast("dict[str, object]", scope)[_ERROR_KEY] = error


def error_of(scope: Mapping[str, Any]) -> TusError | None:
    """The :class:`~anytus.TusError` a :class:`TusApp` answered the request of *scope* with, if
    it answered with an error: for access logs in middleware or servers around the app (a
    ``HEAD`` refusal has no body to read the reason from). Call it after the app returned."""
    error = scope.get(_ERROR_KEY)
    return error if isinstance(error, TusError) else None


def _log_event(event: str, info: UploadInfo, detail: str | None = None) -> None:
    """One ``anytus.asgi`` line for an upload's event (created, completed, interrupted,
    terminated, expired), with its ID, size and file name; in JSON logs these are fields too."""
    if not logger.isEnabledFor(logging.INFO):
        return
    size = "deferred length" if info.size is None else f"{info.size} bytes"
    if event == "interrupted":
        size = f"at {info.offset} of {size}"
    filename = info.metadata.get("filename")
    described = [size]
    if filename:
        described.append(f"filename {filename[:200]!r}")
    if detail:
        described.append(detail)
    logger.info(
        "upload %s %s (%s)",
        info.id,
        event,
        ", ".join(described),
        extra={
            "event": event,
            "upload_id": info.id,
            "size": info.size,
            "offset": info.offset,
            "upload_filename": filename,
        },
    )


def _log_interruption(exchange: Exchange, appended: _Appended) -> None:
    """Log a body that ended before its end: the client went away, went quiet, or another
    request or the shutdown stopped it (what arrived is stored)."""
    if appended.info.is_complete:
        return
    if exchange.body is Body.DISCONNECTED:
        _log_event("interrupted", appended.info, "the client disconnected")
    elif exchange.body is Body.ABANDONED and appended.error is not None:
        _log_event("interrupted", appended.info, appended.error.message)


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
    :param base_path: the creation URL; uploads live at ``{base_path}{id}``. By default
        ``/files/``, or, when the app is mounted (ASGI ``root_path``, or a framework mount that
        cuts the prefix off ``path``), the mount itself: mounted at ``/uploads`` it serves
        ``/uploads/``. A ``base_path`` given with a mount is the whole public path and must be
        at or under the mount (``/uploads/`` or ``/uploads/files/``); one outside it could never
        be reached, and every request answers 500 ``ERR_BASE_PATH_MISMATCH`` naming both (and
        the log says so once)
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
    :param on_terminate: ``async (info)`` called after an upload was deleted by a DELETE (for
        an upload whose ``.info`` was unreadable, *info* carries only the ID)
    :param cors_allow_origins: origins allowed to make cross-origin requests; ``("*",)`` allows
        all, ``()`` disables CORS handling (no CORS headers, no origin check). A request from
        another origin is refused with 403 ``ERR_ORIGIN_NOT_ALLOWED`` and no
        ``Access-Control-Allow-Origin`` (preflights too); with CORS handling on every response
        carries ``Vary: Origin``
    :param behind_proxy: trust a reverse proxy's ``Forwarded`` (RFC 7239, first element:
        ``host=``, ``proto=``), ``X-Forwarded-Host``, ``X-Forwarded-Proto`` and
        ``X-Forwarded-Prefix`` for the upload URLs the app gives out (``Location``, a final
        upload's ``Upload-Concat``); an invalid value is ignored. Only for an app that no client
        reaches but through the proxy: anyone else could send these headers
    :param max_metadata_size: the longest ``Upload-Metadata`` header accepted, in bytes (400)
    :param clock: the wall clock, in seconds since the epoch (expiry); tests pass their own
    :param draft: also answer requests that carry ``Upload-Draft-Interop-Version`` by the IETF
        resumable-upload draft (interop versions 3-10, :mod:`anytus._draft`), on the same
        endpoint and store; needs a store that can defer lengths
    """

    def __init__(
        self,
        store: _StoreLike,
        *,
        base_path: str | None = None,
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
        behind_proxy: bool = False,
        clock: Callable[[], float] = time.time,
        draft: bool = True,
    ) -> None:
        if base_path is not None and not base_path.startswith("/"):
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
        #: the creation URL when the app is not mounted
        self.base_path = (base_path or "/files/").rstrip("/") + "/"
        self._base_path_given = base_path is not None
        #: the creation URL for each mount seen: the path, or why base_path cannot be (a message)
        self._mount_bases: dict[str, tuple[str, bool]] = {}
        self.behind_proxy = behind_proxy
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
        self._clock = clock

        self._store: DataStore = composer.core
        self._one_hop = composer.core if isinstance(composer.core, OneHopStore) else None
        self._terminater: TerminatableStore | None = composer.terminater
        self._expirer = composer.expirer
        if composer.locker is None:
            # a store without locks still needs requests on one upload serialised in-process
            from ._locks import MemoryLocker

            composer.locker = MemoryLocker()
        self._locker: Locker = composer.locker

        extensions = ["creation", "creation-with-upload"]
        if composer.length_deferrer is not None:
            extensions.append("creation-defer-length")
        if composer.terminater is not None:
            extensions.append("termination")
        if composer.concater is not None:
            extensions.append("concatenation")
        if composer.truncater is not None:
            extensions.append("checksum")
        if self.expire_after is not None:
            extensions.append("expiration")
        #: the extensions advertised in ``Tus-Extension``
        self.extensions: tuple[str, ...] = tuple(extensions)
        self.core = core.TusCore(
            base_path=self.base_path,
            max_size=max_size,
            expire_after=self.expire_after,
            cors_allow_origins=self.cors_allow_origins,
            max_metadata_size=max_metadata_size,
            extensions=self.extensions,
            behind_proxy=behind_proxy,
        )

        #: the draft's rules, if it is served
        self.draft = (
            _draft.DraftCore(self.core) if draft and composer.length_deferrer is not None else None
        )

        #: the body transfers running (cancel scopes), for interrupt_uploads()
        self._body_scopes: set[anyio.CancelScope] = set()
        self._interrupting = False
        self._lifespans = 0  # lifespans running: then they do the periodic cleanup
        self._cleanup_running = False
        # storage failures are logged once per kind and place, not once per request
        self._storage_log = OnceLog(logger)
        self._next_cleanup = time.monotonic() + (self.cleanup_interval or 0)

    def __repr__(self) -> str:
        return f"TusApp({self.store!r}, base_path={self.base_path!r})"

    def interrupt_uploads(self) -> None:
        """Stop every request body being received, now and from now on, for a server's shutdown.

        Each running upload stores every byte it received and answers 503
        ``ERR_SERVER_SHUTTING_DOWN`` with ``Retry-After``, so that its client resumes later (from
        another server process, or this one restarted); so does every request after this call.
        ``anytus serve`` calls it when its ``--shutdown-timeout`` has passed.
        """
        self._interrupting = True
        for scope in self._body_scopes:
            scope.cancel()

    @contextlib.contextmanager
    def _interruptible(self, scope: anyio.CancelScope, *, enter: bool = True) -> Iterator[None]:
        """Run the block with *scope* (a body transfer) cancelled by :meth:`interrupt_uploads`;
        *enter*: enter the scope here (otherwise the block enters it)."""
        if self._interrupting:
            scope.cancel()
        self._body_scopes.add(scope)
        try:
            if enter:
                with scope:
                    yield
            else:
                yield
        finally:
            self._body_scopes.discard(scope)

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Handle one ASGI connection scope (``http`` or ``lifespan``)."""
        if scope["type"] == "lifespan":
            await self._lifespan(cast("ASGIReceiveCallable", receive), send)
            return
        if scope["type"] != "http":
            # websockets: returning without accepting makes the server refuse the handshake
            return
        await self._http(cast("HTTPScope", scope), cast("ASGIReceiveCallable", receive), send)

    async def _http(
        self, scope: HTTPScope, receive: ASGIReceiveCallable, send: ASGISendCallable
    ) -> None:
        raw_path = scope.get("raw_path")
        # raw_path keeps "%2F" apart from "/"; without it, the decoded path is re-encoded
        mount, rest = proto.split_mount(
            scope.get("root_path", ""),
            scope["path"],
            raw_path.decode("latin-1").split("?", 1)[0] if raw_path else None,
        )
        base_path = self._base_path_under(mount)
        request = self.core.normalize(
            scope["method"],
            mount + rest,
            core.normalize_headers(scope["headers"]),
            base_path=base_path if isinstance(base_path, str) else None,
        )
        exchange = Exchange(scope, receive, send, request)
        version = self.draft.version_of(request.headers) if self.draft is not None else None
        response: core.Response | None
        try:
            if self._interrupting:
                raise ServerShuttingDown("the server is shutting down; retry in a moment")
            if isinstance(base_path, BasePathMismatch):
                raise base_path
            try:
                if version is not None:
                    response = await _draft_asgi.handle(self, exchange, version)
                else:
                    response = await self._handle(exchange, self.core.parse(request))
            except OSError as exc:
                if not _is_storage_failure(exc):
                    raise
                # a system call of a locker (lock files) or a store that let it through: named
                # here, by its kind
                raise storage_error(exc) from exc
        except TusError as exc:
            if exchange.response_started:
                raise
            if isinstance(exc, (StorageError, CorruptUploadInfo)):
                # once per kind and place, not once per request
                self._storage_log.error(exc, f"{request.method} {request.raw_path}")
            elif exc.status_code >= 500 and not isinstance(
                exc, (RequestBodyTimeout, ServiceUnavailable)
            ):
                # the client's own failures and refusals are in the access log; these are ours
                logger.warning("%s %s: %r", request.method, request.raw_path, exc)
            if version is not None and self.draft is not None:
                response = self.draft.error(version, exc)
            else:
                response = self.core.error(exc)
            _record_error(scope, exc)
        except Exception:
            if exchange.response_started:
                # the body is half sent: only dropping the connection tells the client
                raise
            logger.exception("error handling %s %s", request.method, request.raw_path)
            response = self.core.internal_error()
            _record_error(scope, _InternalError())
        if response is not None:
            # Also after ``http.disconnect``: it says that the request ended, and a client that
            # half-closed (shutdown(SHUT_WR)) still reads the answer (granian answers 500 for an
            # app that gives none). A server with nobody left to send to drops it, or raises
            # OSError (ASGI 2.4).
            with contextlib.suppress(OSError):
                await self._send_response(exchange, response)
        if self._cleanup_due():
            await self._run_cleanup()

    def _base_path_under(self, mount: str) -> str | BasePathMismatch:
        """The creation URL of a request that came through *mount* (``""``: not mounted)."""
        if not mount:
            return self.base_path
        known = self._mount_bases.get(mount)
        if known is None:
            if not self._base_path_given:
                known = (mount + "/", True)
            elif urllib.parse.unquote(self.base_path).startswith(urllib.parse.unquote(mount) + "/"):
                known = (self.base_path, True)  # the whole public path: the mount repeated
            else:
                message = (
                    f"base_path {self.base_path!r} is outside the path this app is mounted "
                    f"under, {urllib.parse.unquote(mount)!r} (ASGI root_path), so no request can "
                    "reach it: leave base_path out to serve at the mount, or give a path under it"
                )
                known = (message, False)
            # a handful of mounts in practice; the cache (and the log) never grow without bound
            if len(self._mount_bases) < 64:
                self._mount_bases[mount] = known
                if not known[1]:
                    logger.error("%s", known[0])
        text, valid = known
        return text if valid else BasePathMismatch(text)

    async def _handle(self, exchange: Exchange, request: core.TusRequest) -> core.Response | None:
        if isinstance(request, core.Head):
            return await self._head(exchange, request)
        if isinstance(request, core.Patch):
            return await self._patch(exchange, request)
        if isinstance(request, core.Create):
            return await self._create(exchange, request)
        if isinstance(request, core.Get):
            return await self._get(exchange, request)
        if isinstance(request, core.Delete):
            return await self._delete(exchange, request)
        if isinstance(request, core.CreateFinal):
            return await self._create_final(exchange, request)
        return self.core.options()

    # -- one hop, or the lock in the event loop -------------------------------------------------

    async def _one_hop_or_none(
        self, upload_id: str, fn: Callable[[SyncUpload], T], *, read_only: bool = False
    ) -> tuple[T] | None:
        """``fn(upload)`` in one worker-thread hop, or ``None`` if that cannot be done now (the
        store cannot, or the lock is held: the caller then takes the lock and waits)."""
        if self._one_hop is None:
            return None
        try:
            return (await self._one_hop.run_nowait(upload_id, fn, read_only=read_only),)
        except anyio.WouldBlock:
            return None

    def _locked(
        self, upload_id: str, on_release: Callable[[], object] | None = None
    ) -> contextlib.AbstractAsyncContextManager[None]:
        return self._locker.lock(upload_id, timeout=self.lock_timeout, on_release=on_release)

    async def _expire(self, upload: Upload) -> None:
        """Remove an upload found expired (under its lock), and say so."""
        if self._terminater is not None:
            with contextlib.suppress(UploadNotFound):
                await upload.terminate()
        _log_event("expired", upload.info)

    # -- HEAD -----------------------------------------------------------------------------------

    async def _head(self, exchange: Exchange, request: core.Head) -> core.Response:
        now = self._clock()
        result = await self._one_hop_or_none(request.upload_id, _info_of, read_only=True)
        if result is not None and not core.is_expired(result[0], self.expire_after, now):
            info = result[0]
        else:
            # the lock is held (a running PATCH is asked to stop), or the upload expired
            async with self._locked(request.upload_id):
                upload = await self._store.get_upload(request.upload_id)
                info = upload.info
                if core.is_expired(info, self.expire_after, now):
                    await self._expire(upload)
                    self.core.check_live(info, now)
        partial_urls = [self._url(exchange, partial) for partial in info.partial_uploads]
        return self.core.head(info, partial_urls, now)

    # -- PATCH and creation-with-upload ---------------------------------------------------------

    async def _patch(self, exchange: Exchange, request: core.Patch) -> core.Response:
        appended = await self._append(
            exchange,
            request.upload_id,
            offset=request.offset,
            length=request.length,
            checksum=request.checksum,
        )
        info = await self._settle(appended)
        return self.core.appended(info, self._clock(), created=False, with_body=True)

    async def _create(self, exchange: Exchange, request: core.Create) -> core.Response:
        draft = UploadInfo(
            size=request.size, metadata=request.metadata, is_partial=request.is_partial
        )
        if self.on_create is not None:
            await self.on_create(draft, exchange.hook_request())
        info = await self._store.new_upload(draft)
        exchange.extra_headers.append(("Location", self._url(exchange, info.id)))
        _log_event("created", info)
        if request.with_body:
            appended = await self._append(
                exchange, info.id, offset=0, length=None, checksum=request.checksum
            )
            info = await self._settle(appended)
        elif info.is_complete:
            # "Upload-Length: 0" is complete the moment it exists
            await self._finished(info)
        return self.core.appended(info, self._clock(), created=True, with_body=request.with_body)

    async def _append(
        self,
        exchange: Exchange,
        upload_id: str,
        *,
        offset: int,
        length: int | None,
        checksum: proto.Checksum | None,
    ) -> _Appended:
        """Write the request body to the upload (read whole first if it is small), and log it if
        it ended before its end. The caller runs ``on_finish`` and answers the error, if any
        (:meth:`_settle`)."""
        content_length = exchange.request.content_length
        if content_length is not None and content_length <= SMALL_BODY:
            interrupt = anyio.CancelScope()
            with self._interruptible(interrupt, enter=False):
                data, body_error = await exchange.read_small(self.idle_timeout, interrupt)
            appended = await self._append_small(exchange, upload_id, offset, length, checksum, data)
            if body_error is not None and appended.error is None:
                appended = dataclasses.replace(appended, error=body_error)
        else:
            appended = await self._append_streaming(exchange, upload_id, offset, length, checksum)
        _log_interruption(exchange, appended)
        return appended

    async def _settle(self, appended: _Appended) -> UploadInfo:
        """After a write: ``on_finish`` if it completed the upload, then its error, if any."""
        if appended.completed:
            await self._finished(appended.info)
        if appended.error is not None:
            raise appended.error
        return appended.info

    async def _append_small(
        self,
        exchange: Exchange,
        upload_id: str,
        offset: int,
        length: int | None,
        checksum: proto.Checksum | None,
        data: bytes,
    ) -> _Appended:
        """Write a body that was read whole: one hop when the lock is free."""
        whole = exchange.body is Body.DONE
        verdict: TusError | None = None
        if checksum is not None:
            hasher = core.new_hasher(checksum.algorithm)
            hasher.update(data)
            verdict = self.core.checksum_verdict(checksum, hasher.digest(), whole=whole)
        now = self._clock()
        content_length = exchange.request.content_length

        plan_append = exchange.planner or self.core.plan_append

        def plan(info: UploadInfo) -> tuple[core.AppendPlan, bytes, TusError | None]:
            plan = plan_append(
                info, offset=offset, length=length, content_length=content_length, now=now
            )
            if plan.nothing_to_write or verdict is not None:
                # a chunk that fails its checksum is not appended at all
                return plan, b"", verdict
            if plan.limit is not None and len(data) > plan.limit:
                return plan, data[: plan.limit], plan.exceeded
            return plan, data, None

        def write(upload: SyncUpload) -> tuple[core.AppendPlan, UploadInfo, TusError | None]:
            try:
                decided, chunk, error = plan(upload.info)
            except UploadExpired:
                upload.terminate()
                raise
            if decided.declare_length is not None:
                upload.declare_length(decided.declare_length)
            if chunk:
                upload.write(chunk)
            return decided, upload.info, error

        result = await self._one_hop_or_none(upload_id, write)
        if result is not None:
            decided, info, error = result[0]
        else:
            # the same steps with the lock taken in the event loop (it was held: its holder is
            # asked to let go), each step a hop of its own
            async with self._locked(upload_id):
                upload = await self._store.get_upload(upload_id)
                try:
                    decided, chunk, error = plan(upload.info)
                except UploadExpired:
                    await self._expire(upload)
                    raise
                if decided.declare_length is not None:
                    await upload.declare_length(decided.declare_length)
                if chunk:
                    await upload.write_chunk(_once(chunk))
                info = upload.info
        if error is core.ROLL_BACK:
            error = None  # the body did not arrive: nothing to answer, nothing stored
        return _Appended(info, not decided.was_complete and info.is_complete, error)

    async def _append_streaming(
        self,
        exchange: Exchange,
        upload_id: str,
        offset: int,
        length: int | None,
        checksum: proto.Checksum | None,
    ) -> _Appended:
        """Stream a body into the upload under its lock: the heart of a large PATCH.

        A release request (another request wants the lock) cancels only the body transfer; what
        was received is stored, the rollback below still runs, and the request ends with
        :class:`~anytus.UploadInterrupted`.
        """
        body_scope = anyio.CancelScope()
        async with self._locked(upload_id, on_release=body_scope.cancel):
            upload = await self._store.get_upload(upload_id)
            try:
                plan = (exchange.planner or self.core.plan_append)(
                    upload.info,
                    offset=offset,
                    length=length,
                    content_length=exchange.request.content_length,
                    now=self._clock(),
                )
            except UploadExpired:
                await self._expire(upload)
                raise
            if plan.declare_length is not None:
                await upload.declare_length(plan.declare_length)
            if plan.nothing_to_write:
                # nothing may be added; tusd answers 204 with the offset without reading
                return _Appended(upload.info, not plan.was_complete, None)

            hasher = core.new_hasher(checksum.algorithm) if checksum is not None else None
            failure: Exception | None = None
            read_into = exchange.body_reader_into()
            if read_into is not None and isinstance(upload, ThreadFedUpload):
                # anytus's own server: a worker thread takes the body from the socket to the file
                # a release request or a shutdown stops the transfer: it cancels body_scope
                outcome = "stopped"
                passed = 0  # bytes the transfer handed to the store

                def transfer(sink: BodySink) -> Awaitable[tuple[int, str]]:
                    hashed = hashing(sink, hasher)

                    def counting(view: memoryview) -> None:
                        nonlocal passed
                        hashed(view)
                        passed += len(view)

                    return read_into(counting, plan.limit, self.idle_timeout)

                with self._interruptible(body_scope):
                    try:
                        _, outcome = await upload.write_through(transfer)
                    except Exception as exc:  # noqa: BLE001 - re-raised below
                        failure = exc
                        outcome = "failed"
                if outcome == "stopped" and passed == exchange.request.content_length:
                    # the whole body was stored before the release request (or the shutdown)
                    # cancelled the transfer: it interrupted nothing
                    outcome = "complete"
                body_error, complete = exchange.after_body_into(
                    outcome, plan.exceeded, self.idle_timeout
                )
            else:
                reader = BodyReader(
                    exchange, limit=plan.limit, exceeded=plan.exceeded, hasher=hasher
                )
                with self._interruptible(body_scope):
                    async with anyio.create_task_group() as tg:
                        if math.isfinite(self.idle_timeout):
                            tg.start_soon(reader.watch_idle, self.idle_timeout, body_scope)
                        # kept out of the task group's exception group, so that the one place
                        # that maps TusError to a response sees the store's errors as they are
                        try:
                            await upload.write_chunk(reader)
                        except Exception as exc:  # noqa: BLE001 - re-raised below, unwrapped
                            failure = exc
                        tg.cancel_scope.cancel()
                body_error, complete = reader.error, reader.complete
            if failure is not None:
                if checksum is not None and upload.info.offset != plan.offset:
                    # the bytes that did fit (the disk filled up) were never verified against
                    # the checksum: as for a body cut short, they are not kept
                    with contextlib.suppress(TusError):
                        await upload.truncate(plan.offset)
                raise failure
            error = body_error
            # a body read to its end was stored whole: a release request that came after that
            # (while the store closed the file) interrupted nothing
            if error is None and body_scope.cancelled_caught and not complete:
                exchange.body = Body.ABANDONED
                error = ServerShuttingDown() if self._interrupting else UploadInterrupted()

            if checksum is not None and hasher is not None:
                whole = error is None and exchange.body is not Body.DISCONNECTED
                verdict = self.core.checksum_verdict(checksum, hasher.digest(), whole=whole)
                if verdict is not None:
                    if upload.info.offset != plan.offset:
                        await upload.truncate(plan.offset)
                    if verdict is not core.ROLL_BACK:
                        error = verdict
        info = upload.info
        return _Appended(info, not plan.was_complete and info.is_complete, error)

    # -- concatenation --------------------------------------------------------------------------

    async def _create_final(self, exchange: Exchange, request: core.CreateFinal) -> core.Response:
        partials = []
        for partial_id in request.partial_ids:
            try:
                partials.append(await self._store.get_upload(partial_id))
            except UploadNotFound:
                raise UploadNotFinished(f"partial upload {partial_id} does not exist") from None
        total = self.core.final_size([partial.info for partial in partials])

        draft = UploadInfo(
            size=total,
            metadata=request.metadata,
            is_final=True,
            partial_uploads=tuple(request.partial_ids),
        )
        if self.on_create is not None:
            await self.on_create(draft, exchange.hook_request())
        created = await self._store.new_upload(draft)
        try:
            final = await self._store.get_upload(created.id)
            await final.concat(partials)
        except BaseException as exc:
            # a final upload that could not be filled must not be left behind looking empty
            with anyio.move_on_after(10, shield=True), contextlib.suppress(TusError, OSError):
                if self._terminater is not None:
                    await self._terminater.terminate(created.id)
            if isinstance(exc, UploadNotFound):
                raise UploadNotFinished(f"a partial upload disappeared: {exc.message}") from exc
            raise
        _log_event("created", final.info, f"concatenating {len(partials)} uploads")
        exchange.extra_headers.append(("Location", self._url(exchange, created.id)))
        await self._finished(final.info)
        return core.Response(201)

    # -- GET ------------------------------------------------------------------------------------

    async def _get(self, exchange: Exchange, request: core.Get) -> core.Response | None:
        async with contextlib.AsyncExitStack() as stack:
            stream: ByteReceiveStream | None = None
            now = self._clock()
            async with self._locked(request.upload_id):
                upload = await self._store.get_upload(request.upload_id)
                info = upload.info
                if core.is_expired(info, self.expire_after, now):
                    await self._expire(upload)
                    self.core.check_live(info, now)
                size = info.offset
                byte_range = None
                if request.range is not None:
                    byte_range = proto.parse_range(request.range, size)
                start, end = (byte_range.start, byte_range.end) if byte_range else (0, size)
                if end > start:
                    stream = await stack.enter_async_context(
                        upload.get_reader(start=start, end=end)
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
                return core.Response(status, headers)

            await self._start(
                exchange, status, [*self.core.common_headers(exchange.request), *headers]
            )
            await self._send_stream(exchange, stream)
        return None

    async def _send_stream(self, exchange: Exchange, stream: ByteReceiveStream) -> None:
        async with anyio.create_task_group() as tg:

            async def watch_disconnect() -> None:
                # a client that goes away ends the download instead of reading the whole file
                while (await exchange.receive())["type"] != "http.disconnect":
                    pass
                exchange.body = Body.DISCONNECTED
                tg.cancel_scope.cancel()

            tg.start_soon(watch_disconnect)
            async for chunk in stream:
                await exchange.send(
                    {"type": "http.response.body", "body": chunk, "more_body": True}
                )
            await exchange.send({"type": "http.response.body", "body": b"", "more_body": False})
            tg.cancel_scope.cancel()

    # -- DELETE ---------------------------------------------------------------------------------

    async def _delete(self, exchange: Exchange, request: core.Delete) -> core.Response:
        try:
            result = await self._one_hop_or_none(request.upload_id, _terminate)
        except (CorruptUploadInfo, StorageError):
            result = None  # unreadable: removed below, by its ID
        unreadable = False
        if result is not None:
            info = result[0]
        else:
            async with self._locked(request.upload_id):
                try:
                    upload = await self._store.get_upload(request.upload_id)
                except (CorruptUploadInfo, StorageError) as exc:
                    if self._terminater is None:
                        raise
                    # an upload whose information is garbage or unreadable can still be deleted
                    await self._terminater.terminate(request.upload_id)
                    logger.warning(
                        "upload %s terminated although unreadable (%s)",
                        request.upload_id,
                        exc.message,
                    )
                    info = UploadInfo(id=request.upload_id)
                    unreadable = True
                else:
                    info = upload.info
                    # "When receiving a DELETE request for an existing upload the Server SHOULD
                    # free associated resources and MUST respond with the 204 No Content status"
                    await upload.terminate()
        if not unreadable:
            _log_event("terminated", info)
        if self.on_terminate is not None:
            await self.on_terminate(info)
        return core.Response(204)

    # -- completion and expiration --------------------------------------------------------------

    async def _finished(self, info: UploadInfo) -> None:
        _log_event("completed", info)
        if self.on_finish is not None:
            await self.on_finish(info)

    async def cleanup(self) -> list[str]:
        """Remove every unfinished upload that has expired, now; return their IDs.

        Does nothing (returns ``[]``) unless expiration is enabled (``expire_after``) and the
        store supports it. Always a checkpoint.
        """
        if self._expirer is None or self.expire_after is None:
            await anyio.lowlevel.checkpoint()
            return []
        removed = await self._expirer.cleanup(self.expire_after, now=self._clock())
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
        except StorageError as exc:
            self._storage_log.error(exc, "periodic cleanup")
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

    # -- sending --------------------------------------------------------------------------------

    async def _send_response(self, exchange: Exchange, response: core.Response) -> None:
        builder = exchange.builder or self.core
        headers = builder.response_headers(exchange.request, response, exchange.extra_headers)
        drain = False
        if (exchange.body_pending or exchange.body is Body.ABANDONED) and exchange.scope.get(
            "http_version"
        ) in ("1.0", "1.1"):
            # The rest of the body is still on its way (an early 409, 413, 415...). A server
            # that closes with bytes unread makes the kernel send a reset, which loses the answer
            # for clients that write the whole body before they read (httpx, requests). So the
            # rest is read and dropped for a bounded time (below); a stalled body is not worth it
            # (tus/tusd#1371): the connection is closed instead.
            # HTTP/2 needs neither (the server resets just the stream) and forbids the header.
            if exchange.body_pending:
                drain = True
            else:
                headers.append(("Connection", "close"))
        await self._start(exchange, response.status, headers)
        # a HEAD response has no body, only the headers a GET would have
        body = b"" if exchange.request.wire_method == "HEAD" else response.body
        if drain:
            # Everything the client needs goes out now (it knows the length); the response ends
            # only once the request body has been read, so that the server sees both messages
            # complete and keeps the connection (some servers close it if the request is not).
            if body:
                await exchange.send({"type": "http.response.body", "body": body, "more_body": True})
            await self._drain(exchange)
            body = b""
        await self._send_last(exchange, body)

    async def _drain(self, exchange: Exchange) -> None:
        # Bounded in time (_LINGER_TIME, and the idle timeout): past that the body stays unread
        # and the server closes the connection after the response.
        with anyio.move_on_after(min(self.idle_timeout, _LINGER_TIME)):
            while exchange.body_pending:
                message = await exchange.receive()
                if message["type"] != "http.request":
                    exchange.body = Body.DISCONNECTED
                elif not message.get("more_body", False):
                    exchange.body = Body.DONE

    async def _send_last(self, exchange: Exchange, body: bytes) -> None:
        message: HTTPResponseBodyEvent = {
            "type": "http.response.body",
            "body": body,
            "more_body": False,
        }
        if not exchange.body_pending:
            await exchange.send(message)
            return
        # The final send must not wait on a request body nobody reads: hypercorn stops reading
        # once the app's queue is full, and the final send waits to queue http.disconnect
        # behind it, which would wedge the connection for good. So keep taking it meanwhile.
        async with anyio.create_task_group() as tg:

            async def consume() -> None:
                while (await exchange.receive())["type"] == "http.request":
                    pass

            tg.start_soon(consume)
            await exchange.send(message)
            tg.cancel_scope.cancel()

    async def _start(self, exchange: Exchange, status: int, headers: list[tuple[str, str]]) -> None:
        exchange.response_started = True
        await exchange.send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (name.encode("latin-1"), value.encode("latin-1")) for name, value in headers
                ],
            }
        )

    # -- helpers --------------------------------------------------------------------------------

    def _url(self, exchange: Exchange, upload_id: str) -> str:
        """The absolute URL of an upload (see :meth:`anytus._core.TusCore.upload_url`)."""
        return self.core.upload_url(
            exchange.request,
            upload_id,
            scheme=exchange.scheme,
            server=exchange.scope.get("server"),
        )


def _is_storage_failure(exc: OSError) -> bool:
    """Whether an OSError is the file system's (not a timeout or a client's connection)."""
    return exc.errno is not None and not isinstance(exc, (ConnectionError, TimeoutError))


def _info_of(upload: SyncUpload) -> UploadInfo:
    return upload.info


def _terminate(upload: SyncUpload) -> UploadInfo:
    info = upload.info
    # "When receiving a DELETE request for an existing upload the Server SHOULD free associated
    # resources and MUST respond with the 204 No Content status"
    upload.terminate()
    return info


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data
