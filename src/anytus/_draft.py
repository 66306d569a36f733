"""The IETF "Resumable Uploads for HTTP" draft (draft-ietf-httpbis-resumable-upload), without I/O.

The second rule set beside :mod:`anytus._core` (tus 1.0.0), in the same spirit: no anyio, no
clock, no awaits. :class:`DraftCore` turns a request that carries ``Upload-Draft-Interop-Version``
into a typed request (:class:`DraftCreate`, :class:`DraftHead`, :class:`DraftAppend`,
:class:`DraftDelete`, :class:`DraftOptions`), plans an append against the upload as loaded under
its lock (the same :class:`~anytus._core.AppendPlan` the tus core makes, so the same write path,
locks, release requests and durability apply), and builds every response, RFC 9457 problem
details included.

An upload made through the draft is an ordinary upload on disk: ``Upload-Complete: ?0`` without
a length is a deferred-length upload, a length (``Upload-Length``, or ``Upload-Complete: ?1``
with ``Content-Length``) is its size, and completing it declares the size.

Each interop version is one row of :data:`VERSIONS` (the way h11 keeps its state tables): the
handler asks the row, it never branches on the number.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import TYPE_CHECKING, ClassVar, Final

from . import _protocol as proto
from ._core import NO_BODY_STATUSES, AppendPlan, Get, Request, Response, TusCore, is_expired
from ._exceptions import (
    InvalidHeader,
    MaxSizeExceeded,
    MethodNotAllowed,
    TusError,
    UnsupportedMediaType,
    UploadExpired,
    UploadNotFound,
)
from ._sfv import item_bool, item_int, serialize_int_dict

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

    from ._info import UploadInfo

__all__ = (
    "VERSIONS",
    "CompletedUpload",
    "DraftAppend",
    "DraftCore",
    "DraftCreate",
    "DraftDelete",
    "DraftError",
    "DraftHead",
    "DraftOptions",
    "DraftRequest",
    "InconsistentLength",
    "MismatchingOffset",
    "Version",
    "bind",
)

INTEROP_HEADER: Final = "Upload-Draft-Interop-Version"
PARTIAL_UPLOAD: Final = "application/partial-upload"
PROBLEM_BASE: Final = "https://iana.org/assignments/http-problem-types#"
MISMATCHING_OFFSET: Final = "mismatching-upload-offset"
COMPLETED_UPLOAD: Final = "completed-upload"
INCONSISTENT_LENGTH: Final = "inconsistent-upload-length"
# every draft field a browser client must be able to read
EXPOSE_HEADERS: Final = (
    "Location, Upload-Offset, Upload-Complete, Upload-Incomplete, Upload-Length, Upload-Limit, "
    "Upload-Draft-Interop-Version"
)


# -- the per-version table --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class Version:
    """What one interop version says, where versions differ. One row of :data:`VERSIONS`."""

    #: the ``Upload-Draft-Interop-Version`` value
    number: int
    #: the draft revisions that use it
    drafts: str
    #: the completeness field: ``Upload-Incomplete`` (inverted) until -01, then
    #: ``Upload-Complete``
    complete_field: str
    #: the media type an append must carry (``application/partial-upload`` from -04), or
    #: ``None``: any
    append_media_type: str | None
    #: ``Upload-Length`` is a field (from -05; interop 6 covers -04 and -05)
    upload_length: bool
    #: the ``Upload-Limit`` key of the remaining lifetime (``None``: no ``Upload-Limit`` yet);
    #: ``expires`` in -04/-05, ``max-age`` from -06
    age_key: str | None
    #: the problem types defined (RFC 9457): mismatching offset and completed upload from -04,
    #: inconsistent length from -06
    problem_types: frozenset[str]
    #: status of an append that leaves the upload incomplete, and of one that completes it:
    #: 201 until -05, then "2xx with Upload-Complete" (the draft's examples: 204 and 200)
    append_status: tuple[int, int]
    #: offset retrieval and cancellation carrying ``Upload-Offset``/``Upload-Complete`` are
    #: refused with 400 (until -08, where the "MUST NOT include" went with the field rewording)
    refuse_state_fields: bool
    #: the problem for appending bytes to a completed upload: "completed upload" until -11,
    #: "inconsistent length" from -12
    append_to_completed: str
    #: the interim status that announces the upload resource (104 in every version here)
    interim_status: int = 104

    def complete_header(self, complete: bool) -> tuple[str, str]:
        """The completeness field of a response."""
        if self.complete_field == "Upload-Incomplete":
            return ("Upload-Incomplete", "?0" if complete else "?1")
        return ("Upload-Complete", "?1" if complete else "?0")

    def problem(self, kind: str) -> str | None:
        """The problem type URI for *kind*, if this version defines it."""
        return PROBLEM_BASE + kind if kind in self.problem_types else None

    @property
    def problem_details(self) -> bool:
        """Errors are RFC 9457 ``application/problem+json`` (from -04, with the problem types)."""
        return bool(self.problem_types)


_ALL_PROBLEMS: Final = frozenset({MISMATCHING_OFFSET, COMPLETED_UPLOAD, INCONSISTENT_LENGTH})


def _versions() -> dict[int, Version]:
    # Each row is the one above it with what that interop version changed, and nothing else.
    v3 = Version(
        number=3,
        drafts="-01",
        complete_field="Upload-Incomplete",
        append_media_type=None,
        upload_length=False,
        age_key=None,
        problem_types=frozenset(),
        append_status=(201, 201),
        refuse_state_fields=True,
        append_to_completed=COMPLETED_UPLOAD,
    )
    # -02: Upload-Complete replaces Upload-Incomplete
    v4 = dataclasses.replace(v3, number=4, drafts="-02", complete_field="Upload-Complete")
    # -03: 200 allowed for offset retrieval, 104 progress (neither changes what we send)
    v5 = dataclasses.replace(v4, number=5, drafts="-03")
    # -04: application/partial-upload, Upload-Limit, two problem types; -05: Upload-Length
    v6 = dataclasses.replace(
        v5,
        number=6,
        drafts="-04, -05",
        append_media_type=PARTIAL_UPLOAD,
        upload_length=True,
        age_key="expires",
        problem_types=frozenset({MISMATCHING_OFFSET, COMPLETED_UPLOAD}),
    )
    # -06: expires -> max-age, inconsistent-length problem, append answers 2xx + Upload-Complete
    v7 = dataclasses.replace(
        v6,
        number=7,
        drafts="-06, -07, -08",
        age_key="max-age",
        problem_types=_ALL_PROBLEMS,
        append_status=(204, 200),
    )
    # -09: fields redefined; HEAD/DELETE no longer refuse Upload-* fields
    v8 = dataclasses.replace(v7, number=8, drafts="-09, -10, -11", refuse_state_fields=False)
    # -12: bytes appended to a completed upload are an inconsistent length
    v9 = dataclasses.replace(v8, number=9, drafts="-12", append_to_completed=INCONSISTENT_LENGTH)
    # -13: no change to what a server sends or accepts that anytus could find
    v10 = dataclasses.replace(v9, number=10, drafts="-13")
    return {row.number: row for row in (v3, v4, v5, v6, v7, v8, v9, v10)}


#: every supported interop version, by number
VERSIONS: Final[Mapping[int, Version]] = _versions()


# -- errors -----------------------------------------------------------------------------------------


class DraftError(TusError):
    """An error the draft gives a problem type to (when the version defines it)."""

    #: the problem type's name (the URI's fragment)
    problem: ClassVar[str] = ""
    title: ClassVar[str] = ""

    def members(self) -> dict[str, object]:
        """Extension members of the problem details object."""
        return {}


class MismatchingOffset(DraftError):
    """``Upload-Offset`` is not the upload's offset (409, with the right one)."""

    status_code = 409
    error_code = "ERR_MISMATCHED_OFFSET"
    problem = MISMATCHING_OFFSET
    title = "offset from request does not match offset of resource"

    def __init__(self, expected: int, provided: int) -> None:
        super().__init__(f"Upload-Offset is {provided}, but the upload's offset is {expected}")
        self.expected = expected
        self.provided = provided

    @property
    def headers(self) -> list[tuple[str, str]]:
        # "The response MUST include the correct offset in the Upload-Offset header field."
        return [("Upload-Offset", str(self.expected))]

    def members(self) -> dict[str, object]:
        return {"expected-offset": self.expected, "provided-offset": self.provided}


class CompletedUpload(DraftError):
    """The upload is complete: nothing may be appended (400)."""

    status_code = 400
    error_code = "ERR_UPLOAD_COMPLETED"
    problem = COMPLETED_UPLOAD
    title = "upload is already completed"
    default_message = "the upload is already complete"


class InconsistentLength(DraftError):
    """Two indications of the upload's length disagree, or a body goes past it (400)."""

    status_code = 400
    error_code = "ERR_INCONSISTENT_LENGTH"
    problem = INCONSISTENT_LENGTH
    title = "inconsistent length values for upload"


class _AppendedToCompleted(DraftError):
    """Bytes sent to a completed upload: its problem type depends on the version."""

    status_code = 400
    error_code = "ERR_UPLOAD_COMPLETED"
    default_message = "the upload is complete: nothing can be appended"


# -- typed requests ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DraftOptions:
    """``OPTIONS``: does this resource support resumable uploads, and with what limits."""


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DraftCreate:
    """Upload creation: ``POST`` to the creation URL with ``Upload-Complete``."""

    #: ``Upload-Complete: ?1``: the body is the whole representation
    complete: bool
    #: the length, from ``Upload-Length`` or ``Upload-Complete: ?1`` with ``Content-Length``
    length: int | None
    #: representation metadata kept like tus metadata (``filetype``)
    metadata: dict[str, str]


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DraftHead:
    """Offset retrieval."""

    upload_id: str


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DraftAppend:
    """Upload append: ``PATCH`` with ``Upload-Offset`` and ``Upload-Complete``."""

    upload_id: str
    offset: int
    complete: bool
    #: ``Upload-Length`` sent with the append
    length: int | None


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class DraftDelete:
    """Upload cancellation."""

    upload_id: str


DraftRequest = DraftOptions | DraftCreate | DraftHead | DraftAppend | DraftDelete | Get


# -- the rules --------------------------------------------------------------------------------------


class DraftCore:
    """Every decision of the resumable-upload draft, for one configuration (shared with the tus
    core: base path, maximum size, expiry, CORS); no I/O, no clock."""

    def __init__(self, tus: TusCore) -> None:
        self.tus = tus
        self.config = tus.config

    # -- requests ----------------------------------------------------------------------------------

    @staticmethod
    def version_of(headers: Mapping[str, str]) -> Version | None:
        """The interop version a request asks for, if it is one this server speaks.

        A request with another (or a malformed) version is not a draft request for this server:
        the draft forbids answering it by the rules of another version, so it goes to tus.
        """
        number = item_int(headers.get("upload-draft-interop-version"))
        return None if number is None else VERSIONS.get(number)

    def parse(self, request: Request, version: Version) -> DraftRequest:
        """Turn a draft request into what it asks for, or raise the error to answer with."""
        self.tus.check_origin(request.origin, request.headers.get("host"))
        route = proto.route(request.raw_path, self.config.base_path)
        if route is None:
            raise UploadNotFound("no such resource")
        method = request.method
        if method == "OPTIONS":
            return DraftOptions()
        headers = request.headers
        if route.kind == "collection":
            if method != "POST":
                raise MethodNotAllowed(
                    f"{method} is not allowed on the creation URL", allow="POST, OPTIONS"
                )
            return self._parse_create(request, version)
        upload_id = route.upload_id
        if method in ("HEAD", "DELETE"):
            if version.refuse_state_fields and (
                "upload-offset" in headers or version.complete_field.lower() in headers
            ):
                # "The request MUST NOT include an Upload-Offset or Upload-Complete header field.
                # The server MUST reject requests with either of these fields" (until -08)
                raise InvalidHeader(
                    f"{method} takes no Upload-Offset or {version.complete_field} field"
                )
            if method == "HEAD":
                return DraftHead(upload_id=upload_id)
            return DraftDelete(upload_id=upload_id)
        if method == "PATCH":
            return self._parse_append(request, version, upload_id)
        if method == "GET":
            return Get(upload_id=upload_id, range=headers.get("range"))
        raise MethodNotAllowed(
            f"{method} is not allowed on an upload", allow="HEAD, PATCH, DELETE, GET, OPTIONS"
        )

    @staticmethod
    def _complete(headers: Mapping[str, str], version: Version) -> bool:
        # "Upload-Complete is an Item Structured Header Field [...] a Boolean [...] Other values
        # MUST cause the entire header field to be ignored": ignored, then missing
        value = item_bool(headers.get(version.complete_field.lower()))
        if value is None:
            raise InvalidHeader(f"missing or invalid {version.complete_field} (?0 or ?1)")
        return not value if version.complete_field == "Upload-Incomplete" else value

    def _length(
        self, request: Request, version: Version, complete: bool, offset: int
    ) -> int | None:
        """The length a request indicates (``Upload-Length``, or ``Upload-Complete: ?1`` with
        ``Content-Length`` after *offset*); both must agree."""
        declared = item_int(request.headers.get("upload-length")) if version.upload_length else None
        implied = (
            offset + request.content_length
            if complete and request.content_length is not None
            else None
        )
        if declared is not None and implied is not None and declared != implied:
            # "If indicators (1) and (2) are both present in the same request, their indicated
            # lengths MUST match."
            raise InconsistentLength(
                f"Upload-Length is {declared}, but the request completes the upload at {implied}"
            )
        return declared if declared is not None else implied

    def _parse_create(self, request: Request, version: Version) -> DraftCreate:
        complete = self._complete(request.headers, version)
        length = self._length(request, version, complete, 0)
        self.check_size(length)
        content_length = request.content_length
        if content_length is not None:
            # content that says up front it is too long is refused before anything is created
            if length is not None and content_length > length:
                raise InconsistentLength(
                    f"the {content_length}-byte content is longer than the length {length}"
                )
            self.check_size(content_length)
        metadata = {}
        content_type = request.headers.get("content-type")
        if content_type:
            # the representation's media type, kept as tus clients keep it (GET serves it)
            metadata["filetype"] = content_type[:256]
        return DraftCreate(complete=complete, length=length, metadata=metadata)

    def _parse_append(self, request: Request, version: Version, upload_id: str) -> DraftAppend:
        headers = request.headers
        media_type = version.append_media_type
        if media_type is not None:
            content_type = headers.get("content-type", "")
            if content_type.split(";", 1)[0].strip().lower() != media_type:
                # "A client can continue the upload [...] by sending a PATCH request with the
                # application/partial-upload media type"
                raise UnsupportedMediaType(f"Content-Type must be {media_type}")
        offset = item_int(headers.get("upload-offset"))
        if offset is None:
            raise InvalidHeader("missing or invalid Upload-Offset (a non-negative Integer)")
        complete = self._complete(headers, version)
        return DraftAppend(
            upload_id=upload_id,
            offset=offset,
            complete=complete,
            length=self._length(request, version, complete, offset),
        )

    def check_size(self, length: int | None) -> None:
        """:raises ~anytus.MaxSizeExceeded: for a length past ``max-size`` (413)"""
        max_size = self.config.max_size
        if length is not None and max_size is not None and length > max_size:
            raise MaxSizeExceeded(f"the upload's length {length} exceeds max-size {max_size}")

    # -- decisions about an upload -----------------------------------------------------------------

    def planner(
        self, version: Version, *, complete: bool, length: int | None
    ) -> Callable[..., AppendPlan]:
        """A ``plan_append`` for one append (or the body of a creation), with the signature of
        :meth:`anytus._core.TusCore.plan_append`, for the shared write path."""

        indicated = length

        def plan(
            info: UploadInfo,
            *,
            offset: int,
            length: int | None = None,  # tus's Upload-Length on a PATCH: the draft's is above
            content_length: int | None,
            now: float,
        ) -> AppendPlan:
            return self.plan_append(
                version,
                info,
                offset=offset,
                complete=complete,
                length=indicated,
                content_length=content_length,
                now=now,
            )

        return plan

    def plan_append(
        self,
        version: Version,
        info: UploadInfo,
        *,
        offset: int,
        complete: bool,
        length: int | None,
        content_length: int | None,
        now: float,
    ) -> AppendPlan:
        """Check a body against the upload it goes to (loaded under its lock), once.

        :param length: the length the request indicates (see :meth:`parse`), if any
        :raises ~anytus.TusError: the answer, if nothing may be written (nothing is read then)
        """
        if is_expired(info, self.config.expire_after, now):
            raise UploadExpired(f"upload {info.id} expired")
        if offset != info.offset:
            # "If the Upload-Offset request header field value does not match the current
            # offset, the server MUST reject the request with a 409 (Conflict) status code."
            raise MismatchingOffset(expected=info.offset, provided=offset)
        size = info.size
        if info.is_complete:
            # "If the upload is already complete, the server MUST NOT modify the upload resource
            # and MUST reject the request." Bytes are an inconsistent length (from -12); an
            # empty Upload-Complete: ?1 repeats the completion (its response was lost, or the
            # bytes reached the declared length): answered as the completion, changing nothing.
            if content_length != 0:
                raise _AppendedToCompleted()
            if not complete:
                raise CompletedUpload()
        declare = None
        if length is not None:
            if size is not None and length != size:
                # "If multiple requests include indicators, their indicated values MUST match."
                raise InconsistentLength(f"the upload's length is {size}, not {length}")
            if length < info.offset:
                raise InconsistentLength(
                    f"length {length} is smaller than the {info.offset} bytes already stored"
                )
            if size is None:
                self.check_size(length)
                declare = size = length
        if size is not None:
            limit: int | None = size - info.offset
            exceeded: TusError = InconsistentLength(
                f"the request content goes past the upload's length of {size} bytes"
            )
        else:
            max_size = self.config.max_size
            limit = None if max_size is None else max_size - info.offset
            exceeded = MaxSizeExceeded(f"the upload goes past max-size ({max_size} bytes)")
        nothing = size is not None and info.offset == size
        # "It is not sufficient to rely on the Content-Length header field for enforcement",
        # but a body that says up front it is too long is refused before a byte is read
        if not nothing and limit is not None and (content_length or 0) > limit:
            raise exceeded
        return AppendPlan(
            offset=info.offset,
            declare_length=declare,
            limit=limit,
            exceeded=exceeded,
            nothing_to_write=nothing,
            was_complete=info.is_complete,
        )

    @staticmethod
    def length_on_completion(info: UploadInfo) -> int | None:
        """After a body with ``Upload-Complete: ?1`` was received whole: the length to declare
        (the offset, for an upload whose length was unknown), or ``None`` if there is none to
        declare.

        :raises InconsistentLength: if the body ended short of a length declared before
        """
        if info.size is None:
            return info.offset
        if info.offset != info.size:
            raise InconsistentLength(
                f"the upload was completed at {info.offset} bytes, but its length is {info.size}"
            )
        return None

    # -- responses ---------------------------------------------------------------------------------

    def limits(
        self, version: Version, info: UploadInfo | None = None, now: float = 0.0
    ) -> list[tuple[str, str]]:
        """``Upload-Limit``, if this version has it and limits apply (for *info*, the upload's
        remaining lifetime; without one, the lifetime of a new upload)."""
        if version.age_key is None:
            return []
        members: dict[str, int] = {}
        if self.config.max_size is not None:
            members["max-size"] = self.config.max_size
        expire_after = self.config.expire_after
        if expire_after is not None and (info is None or not info.is_complete):
            remaining = expire_after
            if info is not None and info.modified_at is not None:
                remaining = max(0.0, info.modified_at + expire_after - now)
            members[version.age_key] = math.floor(remaining)
        return [("Upload-Limit", serialize_int_dict(members))] if members else []

    def interim(self, version: Version, location: str) -> Response:
        """The ``104 (Upload Resumption Supported)`` that announces a new upload resource."""
        # "When sent, it MUST include Location header field pointing to the upload resource and
        # MUST include the Upload-Limit header field with the corresponding limits"; "Server
        # implementations of draft versions [...] MUST also send [...] Upload-Draft-Interop-
        # Version with the interop version as its value to the 104"
        return Response(
            version.interim_status,
            [
                ("Location", location),
                (INTEROP_HEADER, str(version.number)),
                *self.limits(version),
            ],
        )

    def options(self, version: Version) -> Response:
        """The answer to ``OPTIONS``."""
        headers = self.limits(version)
        if version.append_media_type is not None:
            # "the server MUST include the Accept-Patch header field in the response [...] MUST
            # include the full application/partial-upload media type"
            headers.insert(0, ("Accept-Patch", version.append_media_type))
        return Response(204, headers)

    def created(self, version: Version, info: UploadInfo, now: float) -> Response:
        """The answer to a creation whose content was received whole."""
        # "If the Upload-Complete header field is set to false [...] the server MUST include the
        # Location response header field [...] and MUST include the Upload-Limit header field
        # [...] Servers are RECOMMENDED to use the 201 (Created) status code."
        return Response(
            201,
            [
                version.complete_header(info.is_complete),
                ("Upload-Offset", str(info.offset)),
                *self.limits(version, info, now),
            ],
        )

    def appended(self, version: Version, info: UploadInfo, now: float) -> Response:
        """The answer to an append whose content was received whole."""
        # "the response MUST include the Upload-Complete header field with a true value";
        # incomplete: "a 2xx (Successful) response with the Upload-Complete header field set to
        # false" (201 until -05)
        status = version.append_status[1 if info.is_complete else 0]
        return Response(
            status,
            [
                version.complete_header(info.is_complete),
                ("Upload-Offset", str(info.offset)),
                *self.limits(version, info, now),
            ],
        )

    def head(self, version: Version, info: UploadInfo, now: float) -> Response:
        """The answer to offset retrieval."""
        # "MUST include the offset in the Upload-Offset header field, MUST include the
        # completeness state in the Upload-Complete header field, MUST include the length in the
        # Upload-Length header field, unless the client has not supplied one, MUST indicate the
        # limits in the Upload-Limit header field, and SHOULD include [...] Cache-Control [...]
        # no-store"
        headers = [
            ("Upload-Offset", str(info.offset)),
            version.complete_header(info.is_complete),
            ("Cache-Control", "no-store"),
        ]
        if version.upload_length and info.size is not None:
            headers.append(("Upload-Length", str(info.size)))
        headers += self.limits(version, info, now)
        return Response(204, headers)

    def error(self, version: Version, exc: TusError) -> Response:
        """An error as this version answers it: RFC 9457 problem details from -04, with the
        draft's problem type where the version defines one; plain text before."""
        headers = list(exc.headers)
        if exc.status_code == 413:
            # "A server responding with a 413 (Content Too Large) status code as a result of its
            # upload limits MUST include the Upload-Limit header in this response"
            headers += self.limits(version)
        if not version.problem_details:
            body = f"{exc.error_code}: {exc.message}\n".encode("utf-8", "replace")
            return Response(
                exc.status_code, [("Content-Type", "text/plain; charset=utf-8"), *headers], body
            )
        kind = exc.problem if isinstance(exc, DraftError) else ""
        if isinstance(exc, _AppendedToCompleted):
            kind = version.append_to_completed
        problem_type = version.problem(kind) if kind else None
        details: dict[str, object] = {
            "type": problem_type or "about:blank",
            "title": _TITLES.get(kind, "") if problem_type else _status_phrase(exc.status_code),
            "status": exc.status_code,
            "detail": exc.message,
            "code": exc.error_code,
        }
        if problem_type and isinstance(exc, DraftError):
            details.update(exc.members())
        body = json.dumps(details, separators=(",", ":")).encode()
        return Response(
            exc.status_code, [("Content-Type", "application/problem+json"), *headers], body
        )

    def response_headers(
        self,
        version: Version,
        request: Request,
        response: Response,
        extra: Sequence[tuple[str, str]],
    ) -> list[tuple[str, str]]:
        """The full header list of a draft response (the counterpart of
        :meth:`anytus._core.TusCore.response_headers`): the interop version, CORS, *extra*
        (``Location``), the response's own, and a ``Content-Length`` that matches the body."""
        headers = [(INTEROP_HEADER, str(version.number))]
        origin = request.origin
        if origin is not None and self.tus.origin_allowed(origin):
            headers += [
                ("Access-Control-Allow-Origin", origin),
                ("Vary", "Origin"),
                ("Access-Control-Expose-Headers", EXPOSE_HEADERS),
            ]
        headers += extra
        is_head = request.wire_method == "HEAD"
        has_length = False
        for name, value in response.headers:
            if name == "Content-Length":
                if not is_head:
                    continue
                has_length = True
            headers.append((name, value))
        if not has_length and response.status not in NO_BODY_STATUSES:
            headers.append(("Content-Length", str(len(response.body))))
        return headers


_TITLES: Final = {
    MISMATCHING_OFFSET: MismatchingOffset.title,
    COMPLETED_UPLOAD: CompletedUpload.title,
    INCONSISTENT_LENGTH: InconsistentLength.title,
}


def _status_phrase(status: int) -> str:
    import http

    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


class _Headers:
    """A :class:`DraftCore` bound to one version: the ``response_headers`` a draft exchange
    uses instead of the tus core's."""

    __slots__ = ("core", "version")

    def __init__(self, core: DraftCore, version: Version) -> None:
        self.core = core
        self.version = version

    def response_headers(
        self, request: Request, response: Response, extra: Sequence[tuple[str, str]]
    ) -> list[tuple[str, str]]:
        return self.core.response_headers(self.version, request, response, extra)


def bind(core: DraftCore, version: Version) -> _Headers:
    """The header builder for one version's exchange."""
    return _Headers(core, version)
