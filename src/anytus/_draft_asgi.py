"""The I/O of the resumable-upload draft inside :class:`~anytus.asgi.TusApp`.

:mod:`anytus._draft` decides; this module does what :class:`~anytus.asgi.TusApp` does for tus,
with the app's own store, locks, one-hop path, write path (``_append``, with the draft's
``plan_append``), hooks and expiry. Kept apart from ``asgi.py`` so that the tus adapter stays as
it was; the app calls :func:`handle` for a request that names a supported interop version.

Interim responses: the ``104 (Upload Resumption Supported)`` goes out only where the server
offers the ``http.response.informational`` extension (``anytus serve``'s own HTTP server does,
on both backends). ASGI itself has no message for an arbitrary 1xx: granian, uvicorn and hypercorn
offer none (hypercorn's and uvicorn's ``http.response.early_hint`` can send only a 103 with
``Link`` fields), so behind them the 104 is not sent and clients learn the upload's URL from the
final response (the draft's "careful" creation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

from . import _core as core
from ._draft import (
    DraftAppend,
    DraftCore,
    DraftCreate,
    DraftDelete,
    DraftHead,
    Version,
    bind,
)
from ._exchange import Body
from ._info import UploadInfo

if TYPE_CHECKING:
    from ._exchange import Exchange
    from .asgi import TusApp

__all__ = ("INFORMATIONAL", "handle")

#: the scope extension (and message type) of a server that can send any 1xx response
INFORMATIONAL = "http.response.informational"


async def handle(app: TusApp, exchange: Exchange, version: Version) -> core.Response | None:
    """Answer one draft request (errors are raised, for the app to answer by the version)."""
    draft = cast("DraftCore", app.draft)
    exchange.builder = bind(draft, version)
    request = draft.parse(exchange.request, version)
    if isinstance(request, DraftCreate):
        return await _create(app, exchange, draft, version, request)
    if isinstance(request, DraftAppend):
        return await _append(app, exchange, draft, version, request)
    if isinstance(request, DraftHead):
        return draft.head(version, await _load(app, request.upload_id), app._clock())
    if isinstance(request, DraftDelete):
        # cancellation is tus's termination: lock (asking a running append to stop), remove,
        # on_terminate; 204 in every version
        return await app._delete(exchange, core.Delete(upload_id=request.upload_id))
    if isinstance(request, core.Get):
        return await app._get(exchange, request)
    return draft.options(version)


async def _load(app: TusApp, upload_id: str) -> UploadInfo:
    """The upload, for offset retrieval: as :meth:`TusApp._head` loads it (one hop without
    taking the lock, or the lock, which asks a running append to stop and store what it has:
    "the server MUST NOT send outdated information in responses when retrieving the offset")."""
    from .asgi import _info_of

    now = app._clock()
    result = await app._one_hop_or_none(upload_id, _info_of, read_only=True)
    if result is not None and not core.is_expired(result[0], app.expire_after, now):
        return result[0]
    async with app._locked(upload_id):
        upload = await app._store.get_upload(upload_id)
        if core.is_expired(upload.info, app.expire_after, now):
            await app._expire(upload)
            app.core.check_live(upload.info, now)
        return upload.info


async def _create(
    app: TusApp, exchange: Exchange, draft: DraftCore, version: Version, request: DraftCreate
) -> core.Response:
    new = UploadInfo(size=request.length, metadata=request.metadata)
    if app.on_create is not None:
        await app.on_create(new, exchange.hook_request())
    info = await app._store.new_upload(new)
    location = app._url(exchange, info.id)
    exchange.extra_headers.append(("Location", location))
    await _send_interim(exchange, draft.interim(version, location))
    if info.is_complete:
        # a length of 0: complete the moment it exists (as tus's "Upload-Length: 0")
        await app._finished(info)
    if exchange.request.has_body or not info.is_complete:
        info = await _write(
            app, exchange, draft, version, info.id, 0, request.complete, request.length
        )
    return draft.created(version, info, app._clock())


async def _append(
    app: TusApp, exchange: Exchange, draft: DraftCore, version: Version, request: DraftAppend
) -> core.Response:
    info = await _write(
        app,
        exchange,
        draft,
        version,
        request.upload_id,
        request.offset,
        request.complete,
        request.length,
    )
    return draft.appended(version, info, app._clock())


async def _write(
    app: TusApp,
    exchange: Exchange,
    draft: DraftCore,
    version: Version,
    upload_id: str,
    offset: int,
    complete: bool,
    length: int | None,
) -> UploadInfo:
    """Append the request content through the app's write path, by the draft's rules; then,
    for ``Upload-Complete: ?1`` content received whole, complete the upload."""
    exchange.planner = draft.planner(version, complete=complete, length=length)
    appended = await app._append(exchange, upload_id, offset=offset, length=None, checksum=None)
    info = appended.info
    completed = appended.completed
    try:
        received_whole = exchange.body is Body.DONE or not exchange.request.has_body
        if complete and appended.error is None and received_whole and not info.is_complete:
            # "An upload is marked as completed if a request [...] included the Upload-Complete
            # header field with a true value and the request content was fully processed."
            async with app._locked(upload_id):
                upload = await app._store.get_upload(upload_id)
                if upload.info.offset == info.offset:
                    declare = draft.length_on_completion(upload.info)
                    if declare is not None:
                        await upload.declare_length(declare)
                info = upload.info
                completed = info.is_complete
    finally:
        if completed:
            await app._finished(info)
    if appended.error is not None:
        raise appended.error
    return info


async def _send_interim(exchange: Exchange, response: core.Response) -> None:
    """Send an informational response if the server can (see the module's docstring)."""
    extensions: Any = exchange.scope.get("extensions") or {}
    if INFORMATIONAL not in extensions:
        return
    message: dict[str, Any] = {
        "type": INFORMATIONAL,
        "status": response.status,
        "headers": [
            (name.encode("latin-1"), value.encode("latin-1")) for name, value in response.headers
        ],
    }
    await exchange.send(cast("Any", message))
