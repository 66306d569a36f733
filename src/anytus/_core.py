"""The tus 1.0.0 server's decisions, without I/O.

In the spirit of h11: nothing here awaits, imports anyio or reads a clock. :class:`TusCore` turns a
request's method, path and headers into a typed request (:class:`Create`, :class:`Head`,
:class:`Patch`, ...) or a :class:`~anytus.TusError`; checks an upload against a request once
(:meth:`TusCore.plan_append`); and builds every response (:class:`Response`), errors included.
:class:`~anytus.asgi.TusApp` is the I/O around it: it reads the request, asks the core, takes the
lock, calls the store and sends what the core built. The tests of these rules are tables, with no
server and no event loop.

Header syntax (one header value at a time) lives in :mod:`anytus._protocol`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from typing import TYPE_CHECKING, Final, Protocol

from . import _protocol as proto
from ._exceptions import (
    ChecksumMismatch,
    InvalidHeader,
    LengthAlreadyDeclared,
    MaxSizeExceeded,
    MethodNotAllowed,
    OffsetMismatch,
    OriginNotAllowed,
    SizeExceeded,
    TusError,
    UnsupportedMediaType,
    UploadExpired,
    UploadIsFinal,
    UploadNotFinished,
    UploadNotFound,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from ._info import UploadInfo

__all__ = (
    "AppendPlan",
    "Create",
    "CreateFinal",
    "Delete",
    "Get",
    "Hasher",
    "Head",
    "Options",
    "Patch",
    "Request",
    "Response",
    "TusCore",
    "TusRequest",
    "is_expired",
    "new_hasher",
    "normalize_headers",
)

METHODS: Final = "POST, HEAD, PATCH, OPTIONS, GET, DELETE"
# every request header a tus client (tus-js-client, Uppy) sends cross-origin
ALLOW_HEADERS: Final = (
    "Authorization, Origin, X-Requested-With, X-Request-ID, X-HTTP-Method-Override, "
    "Content-Type, Upload-Length, Upload-Offset, Tus-Resumable, Upload-Metadata, "
    "Upload-Defer-Length, Upload-Concat, Upload-Checksum, Range"
)
# every response header a browser client must be able to read
EXPOSE_HEADERS: Final = (
    "Upload-Offset, Location, Upload-Length, Tus-Version, Tus-Resumable, Tus-Max-Size, "
    "Tus-Extension, Tus-Checksum-Algorithm, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Upload-Expires, Content-Range, Content-Disposition"
)
#: statuses whose responses carry no body and no Content-Length (RFC 9110 §8.6)
NO_BODY_STATUSES: Final = frozenset({204, 304})
_TEXT: Final = ("Content-Type", "text/plain; charset=utf-8")


def normalize_headers(raw: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Request headers as one ``dict``: lower-case names, Latin-1 values without surrounding
    blanks; a repeated field becomes one comma-separated list (RFC 9110 §5.3), which makes
    ``Upload-Offset: 1`` sent twice the malformed ``"1, 1"``, as it should be."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1").strip(" \t")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


def is_expired(info: UploadInfo, expire_after: float | None, now: float) -> bool:
    """Whether an upload has expired: unfinished and not written to for *expire_after* seconds.

    The one statement of the rule, used by the server and by store cleanup alike.
    """
    return (
        expire_after is not None
        and not info.is_complete
        and info.modified_at is not None
        and now - info.modified_at >= expire_after
    )


# -- typed requests --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Request:
    """What every request carries, after normalisation."""

    #: the method, after ``X-HTTP-Method-Override``, upper case
    method: str
    #: the method on the wire (a HEAD response never has a body, whatever the override says)
    wire_method: str
    #: the path as sent, still percent-encoded, without the query
    raw_path: str
    #: see :func:`normalize_headers`
    headers: Mapping[str, str]
    #: the body's length if ``Content-Length`` gives it (and no transfer coding overrides it)
    content_length: int | None
    #: whether a body follows the headers
    has_body: bool
    #: the creation URL this request is routed against (``base_path``, or where the app is
    #: mounted), percent-encoded, with a trailing slash
    base_path: str

    @property
    def origin(self) -> str | None:
        """The ``Origin`` header, if any."""
        return self.headers.get("origin")


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Options:
    """``OPTIONS``: the server's configuration."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Create:
    """``POST`` to the creation URL: a new (possibly partial) upload, maybe with a first body."""

    #: ``None`` for ``Upload-Defer-Length: 1``
    size: int | None
    metadata: dict[str, str]
    is_partial: bool
    #: creation-with-upload: the body is the upload's first bytes
    with_body: bool
    checksum: proto.Checksum | None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class CreateFinal:
    """``POST`` with ``Upload-Concat: final;...``: concatenate finished partial uploads."""

    partial_ids: tuple[str, ...]
    metadata: dict[str, str]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Head:
    """``HEAD`` on an upload: its offset and length."""

    upload_id: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Patch:
    """``PATCH`` on an upload: append the body at *offset*."""

    upload_id: str
    offset: int
    #: ``Upload-Length`` sent with the PATCH (declares a deferred length)
    length: int | None
    checksum: proto.Checksum | None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Get:
    """``GET`` on an upload: download its bytes (an extension of anytus and tusd)."""

    upload_id: str
    range: str | None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Delete:
    """``DELETE`` on an upload (termination)."""

    upload_id: str


TusRequest = Options | Create | CreateFinal | Head | Patch | Get | Delete


# -- decisions about an upload ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class AppendPlan:
    """What a body may do to an upload, decided once, from the upload as loaded under its lock."""

    #: the upload's offset: where the body goes
    offset: int
    #: a length to declare first (deferred upload, ``Upload-Length`` on the PATCH)
    declare_length: int | None
    #: the most bytes the body may add; ``None`` for no limit
    limit: int | None
    #: the error for a body that goes past *limit* (after storing what fits)
    exceeded: TusError
    #: the upload is complete already (after any declaration): nothing is read or written
    nothing_to_write: bool
    #: the upload was complete before this request (``on_finish`` ran already)
    was_complete: bool


class Hasher(Protocol):
    """What the checksum extension needs of a hash object (hashlib's interface)."""

    def update(self, data: bytes | memoryview, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    """zlib's CRC-32 behind hashlib's interface; the digest is 4 bytes, big-endian."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes | memoryview, /) -> None:
        self._value = zlib.crc32(data, self._value)

    def digest(self) -> bytes:
        return self._value.to_bytes(4, "big")


def new_hasher(algorithm: str) -> Hasher:
    """A fresh hash object for one of :data:`~anytus._protocol.CHECKSUM_ALGORITHMS`."""
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.new(algorithm, usedforsecurity=False)


# -- responses -------------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class Response:
    """A whole response: status, headers and body."""

    status: int
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    body: bytes = b""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class _Config:
    base_path: str
    max_size: int | None
    expire_after: float | None
    cors_allow_origins: tuple[str, ...]
    max_metadata_size: int
    extensions: tuple[str, ...]
    behind_proxy: bool


class TusCore:
    """Every decision of a tus 1.0.0 server, for one configuration; no I/O, no clock.

    :param base_path: the creation URL, with a trailing slash; uploads live at ``base_path + id``
    :param max_size: the largest upload accepted (``Tus-Max-Size``), if any
    :param expire_after: the expiration extension's idle time, or ``None`` (no expiration)
    :param cors_allow_origins: origins allowed cross-origin; ``("*",)`` for all, ``()`` for no
        CORS handling
    :param max_metadata_size: the longest ``Upload-Metadata`` accepted, in bytes
    :param extensions: the tus extensions the store supports (``Tus-Extension``); the core
        refuses what they leave out
    :param behind_proxy: upload URLs follow ``Forwarded`` and ``X-Forwarded-Host``,
        ``-Proto`` and ``-Prefix`` (:func:`~anytus._protocol.forwarded`)
    """

    def __init__(
        self,
        *,
        base_path: str,
        max_size: int | None,
        expire_after: float | None,
        cors_allow_origins: Sequence[str],
        max_metadata_size: int,
        extensions: Sequence[str],
        behind_proxy: bool = False,
    ) -> None:
        self.config = _Config(
            base_path=base_path,
            max_size=max_size,
            expire_after=expire_after,
            cors_allow_origins=tuple(cors_allow_origins),
            max_metadata_size=max_metadata_size,
            extensions=tuple(extensions),
            behind_proxy=behind_proxy,
        )
        self._has = frozenset(extensions)
        self._options_headers = self._build_options_headers()

    # -- requests ----------------------------------------------------------------------------------

    def normalize(
        self,
        method: str,
        raw_path: str,
        headers: Mapping[str, str],
        *,
        base_path: str | None = None,
    ) -> Request:
        """Apply ``X-HTTP-Method-Override`` and read the body's framing.

        :param base_path: the creation URL for this request, if not the configured one (the app
            is mounted: :func:`~anytus._protocol.split_mount`)
        """
        # "The X-HTTP-Method-Override request header MUST be a string which MUST be interpreted
        # as the request's method by the Server, if the header is presented."
        override = headers.get("x-http-method-override")
        wire_method = method.upper()
        chunked = "transfer-encoding" in headers
        length_header = headers.get("content-length", "")
        content_length = None
        if not chunked and length_header.isdigit():
            content_length = int(length_header)
        return Request(
            method=override.strip().upper() if override else wire_method,
            wire_method=wire_method,
            raw_path=raw_path,
            headers=headers,
            content_length=content_length,
            has_body=chunked or length_header not in ("", "0"),
            base_path=self.config.base_path if base_path is None else base_path,
        )

    def parse(self, request: Request) -> TusRequest:
        """Turn a request into what it asks for, or raise the error to answer with.

        :raises ~anytus.TusError: a 4xx for a request the server refuses (unknown path, method,
            version, headers...)
        """
        self.check_origin(request.origin, request.headers.get("host"))
        route = proto.route(request.raw_path, request.base_path)
        if route is None:
            raise UploadNotFound("no such resource")
        method = request.method
        if method == "OPTIONS":
            return Options()
        # "If the version specified by the Client is not supported by the Server, it MUST respond
        # with the 412 Precondition Failed status [...] the Server MUST NOT process the request."
        # OPTIONS is exempt. A GET is checked when it names a version: downloads also come from
        # plain browser links, which send no Tus-Resumable at all.
        tus_resumable = request.headers.get("tus-resumable")
        if method != "GET" or tus_resumable is not None:
            proto.check_tus_resumable(tus_resumable)
        if route.kind == "collection":
            if method == "POST":
                return self._parse_post(request)
            raise MethodNotAllowed(
                f"{method} is not allowed on the creation URL", allow="POST, OPTIONS"
            )
        upload_id = route.upload_id
        if method == "HEAD":
            return Head(upload_id=upload_id)
        if method == "PATCH":
            return self._parse_patch(request, upload_id)
        if method == "GET":
            return Get(upload_id=upload_id, range=request.headers.get("range"))
        if method == "DELETE" and "termination" in self._has:
            return Delete(upload_id=upload_id)
        allowed = "HEAD, PATCH, GET, OPTIONS" + (", DELETE" if "termination" in self._has else "")
        raise MethodNotAllowed(f"{method} is not allowed on an upload", allow=allowed)

    def _parse_post(self, request: Request) -> Create | CreateFinal:
        headers = request.headers
        concat: proto.Concat | None = None
        if "upload-concat" in headers and "concatenation" in self._has:
            # behind a proxy the partial uploads' URLs are the ones it gave out (with its prefix)
            prefix = self.forwarded(request).prefix
            concat = proto.parse_concat(
                headers["upload-concat"], request.base_path, prefix=prefix or ""
            )
        metadata = proto.parse_metadata(
            headers.get("upload-metadata", ""), max_length=self.config.max_metadata_size
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
            return CreateFinal(partial_ids=concat.partial_ids, metadata=metadata)

        # "The Client MUST include either the Upload-Length or the Upload-Defer-Length header"
        # "If both headers are present the Server MUST respond with 400 Bad Request." (tusd)
        size: int | None
        if length_header is not None and defer_header is not None:
            raise InvalidHeader("Upload-Length and Upload-Defer-Length are mutually exclusive")
        if length_header is not None:
            size = proto.parse_integer(length_header, "Upload-Length")
        elif defer_header is not None and "creation-defer-length" in self._has:
            proto.parse_defer_length(defer_header)
            size = None
        else:
            raise InvalidHeader("missing Upload-Length header (or Upload-Defer-Length: 1)")
        # "If the length of the upload exceeds the maximum, which MAY be specified using the
        # Tus-Max-Size header, the Server MUST respond with the 413 Request Entity Too Large"
        self._check_max_size(size, "Upload-Length")
        if with_body and request.content_length is not None:
            # a body that says it is too long is refused before a byte is read, as tusd: nothing
            # is created
            if size is not None and request.content_length > size:
                raise SizeExceeded(
                    f"the {request.content_length}-byte body is longer than the upload's "
                    f"{size} bytes"
                )
            self._check_max_size(request.content_length, "the body's length")
        return Create(
            size=size,
            metadata=metadata,
            is_partial=concat is not None,
            with_body=with_body,
            checksum=self._parse_checksum(headers) if with_body else None,
        )

    def _parse_patch(self, request: Request, upload_id: str) -> Patch:
        headers = request.headers
        # "All PATCH requests MUST use Content-Type: application/offset+octet-stream, otherwise
        # the server SHOULD return a 415 Unsupported Media Type status."
        if not _is_offset_stream(headers.get("content-type")):
            raise UnsupportedMediaType(f"Content-Type must be {proto.OFFSET_CONTENT_TYPE}")
        offset_header = headers.get("upload-offset")
        if offset_header is None:
            raise InvalidHeader("missing Upload-Offset header")
        length_header = headers.get("upload-length")
        return Patch(
            upload_id=upload_id,
            offset=proto.parse_integer(offset_header, "Upload-Offset"),
            length=(
                None
                if length_header is None
                else proto.parse_integer(length_header, "Upload-Length")
            ),
            checksum=self._parse_checksum(headers),
        )

    def _parse_checksum(self, headers: Mapping[str, str]) -> proto.Checksum | None:
        value = headers.get("upload-checksum")
        if value is None or "checksum" not in self._has:
            return None
        return proto.parse_checksum(value)

    def _check_max_size(self, size: int | None, what: str) -> None:
        max_size = self.config.max_size
        if size is not None and max_size is not None and size > max_size:
            raise MaxSizeExceeded(f"{what} {size} exceeds the maximum of {max_size}")

    # -- decisions about an upload -------------------------------------------------------------

    def check_live(self, info: UploadInfo, now: float) -> None:
        """Refuse to act on an expired upload.

        :raises ~anytus.UploadExpired: if it has expired (the caller removes it)
        """
        # "If a Client does attempt to resume an upload which has since been removed by the
        # Server, the Server SHOULD respond with the 404 Not Found or 410 Gone status."
        if is_expired(info, self.config.expire_after, now):
            raise UploadExpired(f"upload {info.id} expired")

    def plan_append(
        self,
        info: UploadInfo,
        *,
        offset: int,
        length: int | None,
        content_length: int | None,
        now: float,
    ) -> AppendPlan:
        """Check a body against the upload it goes to, once, and say what it may do.

        :param info: the upload, loaded under its lock
        :param offset: the request's ``Upload-Offset``
        :param length: a length the request declares (``Upload-Length`` on a PATCH)
        :param content_length: the body's length, if the request says
        :raises ~anytus.TusError: the answer, if the body may not be written at all (nothing is
            read then)
        """
        self.check_live(info, now)
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
        size = info.size
        declare = None
        if length is not None:
            if size is not None:
                # "the Upload-Length [...] once set, MUST NOT change": sending the same length
                # again is harmless (a retried last PATCH) and is accepted
                if length != size:
                    raise InvalidHeader(f"the upload's length is {size} and cannot change")
            else:
                if "creation-defer-length" not in self._has:  # pragma: no cover - implied
                    raise InvalidHeader("creation-defer-length is not supported")
                self._check_max_size(length, "Upload-Length")
                if length < info.offset:
                    raise LengthAlreadyDeclared(
                        f"length {length} is smaller than the {info.offset} bytes already stored"
                    )
                declare = size = length
        was_complete = info.is_complete
        if size is not None:
            limit: int | None = size - info.offset
            exceeded: TusError = SizeExceeded(
                f"the request body goes past the upload's length of {size} bytes"
            )
        else:
            max_size = self.config.max_size
            limit = None if max_size is None else max_size - info.offset
            exceeded = MaxSizeExceeded(
                f"the request body goes past the maximum size of {max_size} bytes"
            )
        nothing = size is not None and info.offset == size
        # A body that says up front it is too long is refused before a byte of it is read, as
        # tusd does: nothing is stored, the upload does not complete, no hook runs. (A chunked
        # body cannot say: it stores what fits, then gets the same error.)
        if not nothing and limit is not None and (content_length or 0) > limit:
            raise exceeded
        return AppendPlan(
            offset=info.offset,
            declare_length=declare,
            limit=limit,
            exceeded=exceeded,
            nothing_to_write=nothing,
            was_complete=was_complete,
        )

    def final_size(self, partials: Sequence[UploadInfo]) -> int:
        """The size of a final upload made of *partials*, in order.

        :raises ~anytus.TusError: if one of them cannot be concatenated
        """
        total = 0
        for partial in partials:
            # "The Server MUST NOT accept [...] the concatenation of uploads which are not
            # partial" (the final upload is made of partial uploads, in the order given)
            if not partial.is_partial:
                raise InvalidHeader(f"upload {partial.id} is not a partial upload")
            if partial.size is None or not partial.is_complete:
                raise UploadNotFinished(f"partial upload {partial.id} is not finished")
            total += partial.size
        self._check_max_size(total, "the final upload's size")
        return total

    @staticmethod
    def checksum_verdict(
        checksum: proto.Checksum, digest: bytes, *, whole: bool
    ) -> TusError | None:
        """Whether a chunk's bytes may stay: ``None`` if so, else the error (or, for a body that
        did not arrive whole and cannot be verified, an error-free rollback:
        :class:`_RollBack`)."""
        # "If the hashes do not match, the Server MUST respond with the 460 Checksum Mismatch
        # status [...] the Server MUST NOT append the chunk". A body that did not arrive whole
        # cannot be verified either: it goes too.
        if not whole:
            return ROLL_BACK
        if digest != checksum.digest:
            return ChecksumMismatch(
                f"the body's {checksum.algorithm} does not match Upload-Checksum"
            )
        return None

    # -- responses -----------------------------------------------------------------------------

    def options(self) -> Response:
        """The answer to ``OPTIONS``."""
        return Response(200, list(self._options_headers))

    def _build_options_headers(self) -> list[tuple[str, str]]:
        # "An OPTIONS request MAY be used to gather information about the Server's current
        # configuration. A successful response [...] MUST contain the Tus-Version header."
        # 200 rather than 204: some browsers refuse a 204 to a preflight (as tusd).
        headers = [
            ("Tus-Version", proto.TUS_VERSION),
            ("Tus-Extension", ",".join(self.config.extensions)),
        ]
        if self.config.max_size is not None:
            headers.append(("Tus-Max-Size", str(self.config.max_size)))
        if "checksum" in self._has:
            # "The Tus-Checksum-Algorithm response header MUST be a comma-separated list of the
            # checksum algorithms supported by the server."
            headers.append(("Tus-Checksum-Algorithm", ",".join(proto.CHECKSUM_ALGORITHMS)))
        return headers

    def head(self, info: UploadInfo, partial_urls: Sequence[str], now: float) -> Response:
        """The answer to ``HEAD``; *partial_urls* are the URLs of a final upload's partials."""
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
            is_partial=info.is_partial, is_final=info.is_final, partial_urls=partial_urls
        )
        if concat is not None:
            headers.append(("Upload-Concat", concat))
        headers += self.expires_headers(info, now)
        return Response(200, headers)

    def appended(self, info: UploadInfo, now: float, *, created: bool, with_body: bool) -> Response:
        """The answer to a PATCH (``created=False``) or a creation (``created=True``)."""
        if created:
            response = Response(201)
            if with_body:
                # "The Server MUST include the Upload-Offset header in the response"
                response.headers.append(("Upload-Offset", str(info.offset)))
        else:
            # "The Server MUST acknowledge successful PATCH requests with the 204 No Content
            # status. It MUST include the Upload-Offset header containing the new offset."
            response = Response(204, [("Upload-Offset", str(info.offset))])
        response.headers += self.expires_headers(info, now)
        return response

    def expires_headers(self, info: UploadInfo, now: float) -> list[tuple[str, str]]:
        """``Upload-Expires``, if the upload is going to expire."""
        # "The Upload-Expires response header indicates the time after which the unfinished
        # upload expires. [...] This header MUST be included in every PATCH response if the
        # upload is going to expire."
        expire_after = self.config.expire_after
        if expire_after is None or info.is_complete:
            return []
        modified = info.modified_at if info.modified_at is not None else now
        return [("Upload-Expires", proto.format_http_date(modified + expire_after))]

    @staticmethod
    def error(exc: TusError) -> Response:
        """The one place that turns an error into a response."""
        body = f"{exc.error_code}: {exc.message}\n".encode("utf-8", "replace")
        return Response(exc.status_code, [_TEXT, *exc.headers], body)

    @staticmethod
    def internal_error() -> Response:
        """The answer to a failure that is not a :class:`~anytus.TusError` (a bug)."""
        return Response(500, [_TEXT], b"ERR_INTERNAL_SERVER_ERROR: internal server error\n")

    # -- upload URLs ----------------------------------------------------------------------------

    def forwarded(self, request: Request) -> proto.Forwarded:
        """What a reverse proxy says of *request*: its headers when the server is
        ``behind_proxy``, else nothing (the headers could come from anyone)."""
        if not self.config.behind_proxy:
            return _NOT_FORWARDED
        return proto.forwarded(request.headers)

    def upload_url(
        self,
        request: Request,
        upload_id: str,
        *,
        scheme: str,
        server: tuple[str, int | None] | None,
    ) -> str:
        """The URL of an upload, as the client must use it.

        Absolute from the request's scheme and ``Host`` (else the server's address); behind a
        proxy the proxy's headers name the host, scheme and removed path prefix instead, each
        where valid (a malformed or hostile value is ignored, as tusd ignores an unknown
        ``proto``: the URL is then built from what the server itself knows).

        :param scheme: ``"http"`` or ``"https"``: how the request reached the server
        :param server: the server's address (ASGI ``server``), used without a valid ``Host``
        """
        headers = request.headers
        host = headers.get("host") or headers.get(":authority")
        if host is not None and not proto.valid_host(host):
            host = None
        forwarded = self.forwarded(request)
        if forwarded.proto is not None:
            scheme = forwarded.proto
        if forwarded.host is not None:
            # a proxy that names the default port of the scheme means no port (tusd)
            host = forwarded.host.removesuffix(":443" if scheme == "https" else ":80")
        if host is None and server is not None and server[0]:
            name, port = server
            name = f"[{name}]" if ":" in name else name
            default = 443 if scheme == "https" else 80
            host = name if port in (None, default) else f"{name}:{port}"
        base_path = (forwarded.prefix or "") + request.base_path
        return proto.build_url(scheme, host, base_path, upload_id)

    # -- CORS and framing ----------------------------------------------------------------------

    def origin_allowed(self, origin: str) -> bool:
        """Whether cross-origin requests from *origin* are allowed."""
        allowed = self.config.cors_allow_origins
        return bool(allowed) and ("*" in allowed or origin in allowed)

    def check_origin(self, origin: str | None, host: str | None = None) -> None:
        """:raises ~anytus.OriginNotAllowed: for an origin that may not make requests. A
        request from a page of the server itself (*origin* names the request's *host*: a
        browser sends ``Origin`` on a same-origin POST, PATCH or DELETE too) is never
        cross-origin, whatever the allowed origins are."""
        if (
            origin is not None
            and self.config.cors_allow_origins
            and not self.origin_allowed(origin)
            and not _same_origin(origin, host)
        ):
            raise OriginNotAllowed(f"origin {origin!r:.80} is not allowed")

    def common_headers(self, request: Request) -> list[tuple[str, str]]:
        """What every response to *request* starts with: ``Tus-Resumable`` and CORS."""
        headers = [("Tus-Resumable", proto.TUS_VERSION)]
        if not self.config.cors_allow_origins:
            return headers
        # with CORS handling on, every answer depends on Origin (echoed, refused or absent):
        # a cache must not give one origin's answer to another
        headers.append(("Vary", "Origin"))
        origin = request.origin
        if origin is None or not self.origin_allowed(origin):
            return headers
        headers += [
            ("Access-Control-Allow-Origin", origin),
            ("Access-Control-Expose-Headers", EXPOSE_HEADERS),
        ]
        if request.method == "OPTIONS":
            headers += [
                ("Access-Control-Allow-Methods", METHODS),
                ("Access-Control-Allow-Headers", ALLOW_HEADERS),
                ("Access-Control-Max-Age", "86400"),
            ]
        return headers

    def response_headers(
        self, request: Request, response: Response, extra: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        """The full header list of *response*: common headers, *extra* (``Location``), the
        response's own, and a ``Content-Length`` that matches what is sent."""
        is_head = request.wire_method == "HEAD"
        headers = self.common_headers(request)
        headers += extra
        has_length = False
        for name, value in response.headers:
            if name == "Content-Length":
                # a HEAD response may announce the length a GET would have; any other
                # response's Content-Length is its body's (a POST overridden to HEAD included)
                if not is_head:
                    continue
                has_length = True
            headers.append((name, value))
        if not has_length and response.status not in NO_BODY_STATUSES:
            headers.append(("Content-Length", str(len(response.body))))
        return headers


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether *origin* (``scheme://host[:port]``) names the *host* a request was sent to."""
    if host is None:
        return False
    authority = origin.partition("://")[2]
    return bool(authority) and authority.lower() == host.lower()


class _RollBack(TusError):
    """Not an answer: a body that did not arrive whole is rolled back, and the request ends with
    whatever error ended the body."""

    status_code = 500
    error_code = "ERR_ROLLED_BACK"


#: what :meth:`TusCore.forwarded` says when the server is not behind a proxy
_NOT_FORWARDED: Final = proto.Forwarded()

#: the :meth:`TusCore.checksum_verdict` for a body that did not arrive whole
ROLL_BACK: Final = _RollBack("the body did not arrive whole")


def _is_offset_stream(content_type: str | None) -> bool:
    if content_type is None:
        return False
    return content_type.split(";", 1)[0].strip().lower() == proto.OFFSET_CONTENT_TYPE
