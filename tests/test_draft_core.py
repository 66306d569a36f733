"""The resumable-upload draft's rules (``anytus._draft``), as tables, for every supported interop
version: request in, typed request or error out; upload in, plan out; state in, response out.
No server, no event loop, no clock.

Each rule is one test parametrized over the versions, with what each version expects; a rule that
differs between versions says so in its table. ``tests/test_draft_http.py`` runs them over real
HTTP.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from anytus import InvalidHeader, TusError, UploadInfo
from anytus._core import AppendPlan, Get, Request, Response, TusCore
from anytus._draft import (
    VERSIONS,
    CompletedUpload,
    DraftAppend,
    DraftCore,
    DraftCreate,
    DraftDelete,
    DraftHead,
    DraftOptions,
    DraftRequest,
    InconsistentLength,
    MismatchingOffset,
    Version,
)
from anytus._exceptions import (
    MaxSizeExceeded,
    MethodNotAllowed,
    UnsupportedMediaType,
    UploadExpired,
    UploadNotFound,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

ID = "0123456789abcdef0123456789abcdef"
UPLOAD = f"/files/{ID}"
NOW = 1_700_000_000.0
ALL = sorted(VERSIONS)
PROBLEM = "https://iana.org/assignments/http-problem-types#"


def make(**options: Any) -> DraftCore:
    config: dict[str, Any] = {
        "base_path": "/files/",
        "max_size": None,
        "expire_after": None,
        "cors_allow_origins": ("*",),
        "max_metadata_size": 4096,
        "extensions": ("creation", "creation-defer-length", "termination"),
    }
    config.update(options)
    return DraftCore(TusCore(**config))


CORE = make()


def v(number: int) -> Version:
    return VERSIONS[number]


def complete(version: int, value: bool) -> dict[str, str]:
    """The completeness field as version *version* spells it."""
    if version == 3:
        return {"upload-incomplete": "?0" if value else "?1"}
    return {"upload-complete": "?1" if value else "?0"}


def request(
    method: str, path: str = "/files/", headers: Mapping[str, str] | None = None, body: int = 0
) -> Request:
    headers = {k.lower(): val for k, val in (headers or {}).items()}
    if body:
        headers.setdefault("content-length", str(body))
    return CORE.tus.normalize(method, path, headers)


def parse(
    version: int,
    method: str,
    path: str = "/files/",
    headers: Mapping[str, str] | None = None,
    body: int = 0,
    core: DraftCore = CORE,
) -> DraftRequest:
    return core.parse(request(method, path, headers, body), v(version))


def refuse(version: int, *args: Any, **kwargs: Any) -> TusError:
    with pytest.raises(TusError) as caught:
        parse(version, *args, **kwargs)
    return caught.value


def info(**fields: Any) -> UploadInfo:
    fields.setdefault("id", ID)
    fields.setdefault("modified_at", NOW)
    return UploadInfo(**fields)


def header_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers}


# -- the table itself -------------------------------------------------------------------------------


class TestVersionTable:
    def test_versions_supported(self) -> None:
        assert ALL == [3, 4, 5, 6, 7, 8, 9, 10]

    @pytest.mark.parametrize(
        ("number", "field", "media", "length", "age", "problems", "statuses", "refuse", "bytes_"),
        [
            (3, "Upload-Incomplete", None, False, None, 0, (201, 201), True, "completed-upload"),
            (4, "Upload-Complete", None, False, None, 0, (201, 201), True, "completed-upload"),
            (5, "Upload-Complete", None, False, None, 0, (201, 201), True, "completed-upload"),
            (6, "Upload-Complete", "application/partial-upload", True, "expires", 2, (201, 201),
             True, "completed-upload"),
            (7, "Upload-Complete", "application/partial-upload", True, "max-age", 3, (204, 200),
             True, "completed-upload"),
            (8, "Upload-Complete", "application/partial-upload", True, "max-age", 3, (204, 200),
             False, "completed-upload"),
            (9, "Upload-Complete", "application/partial-upload", True, "max-age", 3, (204, 200),
             False, "inconsistent-upload-length"),
            (10, "Upload-Complete", "application/partial-upload", True, "max-age", 3, (204, 200),
             False, "inconsistent-upload-length"),
        ],
    )  # fmt: skip
    def test_row(
        self,
        number: int,
        field: str,
        media: str | None,
        length: bool,
        age: str | None,
        problems: int,
        statuses: tuple[int, int],
        refuse: bool,
        bytes_: str,
    ) -> None:
        row = v(number)
        assert row.complete_field == field
        assert row.append_media_type == media
        assert row.upload_length is length
        assert row.age_key == age
        assert len(row.problem_types) == problems
        assert row.append_status == statuses
        assert row.refuse_state_fields is refuse
        assert row.append_to_completed == bytes_
        assert row.interim_status == 104


# -- which requests are draft requests --------------------------------------------------------------


class TestInteropVersion:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("6", 6),
            ("10", 10),
            ("3", 3),
            (" 7 ", 7),  # RFC 9651 allows surrounding spaces
            ("8;foo=bar", 8),  # an Item with a parameter is still that Integer
            ("06", 6),  # an sf-integer may have leading zeros
            (None, None),
            ("2", None),  # a version this server does not speak: not a draft request
            ("11", None),
            ("-6", None),
            ("6.0", None),  # a Decimal
            ('"6"', None),  # a String
            ("6, 7", None),  # a repeated field is a List, not an Item
            ("six", None),
            ("", None),
        ],
    )
    def test_version_of(self, value: str | None, expected: int | None) -> None:
        headers = {} if value is None else {"upload-draft-interop-version": value}
        found = DraftCore.version_of(headers)
        assert (found.number if found else None) == expected


# -- routing ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
class TestRouting:
    def test_options_anywhere(self, version: int) -> None:
        assert isinstance(parse(version, "OPTIONS"), DraftOptions)
        assert isinstance(parse(version, "OPTIONS", UPLOAD), DraftOptions)

    def test_unknown_path(self, version: int) -> None:
        assert isinstance(refuse(version, "POST", "/elsewhere"), UploadNotFound)

    @pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
    def test_creation_url_takes_post(self, version: int, method: str) -> None:
        error = refuse(version, method, "/files/", complete(version, True))
        assert isinstance(error, MethodNotAllowed)
        assert ("Allow", "POST, OPTIONS") in error.headers

    def test_upload_verbs(self, version: int) -> None:
        assert parse(version, "HEAD", UPLOAD) == DraftHead(upload_id=ID)
        assert parse(version, "DELETE", UPLOAD) == DraftDelete(upload_id=ID)
        assert parse(version, "GET", UPLOAD) == Get(upload_id=ID, range=None)
        error = refuse(version, "PUT", UPLOAD)
        assert isinstance(error, MethodNotAllowed)


# -- creation ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ALL)
class TestCreation:
    def test_partial(self, version: int) -> None:
        created = parse(version, "POST", headers=complete(version, False), body=5)
        assert created == DraftCreate(complete=False, length=None, metadata={})

    def test_complete_with_content_length_gives_the_length(self, version: int) -> None:
        created = parse(version, "POST", headers=complete(version, True), body=5)
        assert created == DraftCreate(complete=True, length=5, metadata={})

    def test_complete_without_content_length(self, version: int) -> None:
        headers = {**complete(version, True), "transfer-encoding": "chunked"}
        created = parse(version, "POST", headers=headers)
        assert isinstance(created, DraftCreate)
        assert created.length is None

    def test_empty_complete_creation_has_length_zero(self, version: int) -> None:
        headers = {**complete(version, True), "content-length": "0"}
        assert parse(version, "POST", headers=headers) == DraftCreate(
            complete=True, length=0, metadata={}
        )

    def test_content_type_is_kept_as_filetype(self, version: int) -> None:
        headers = {**complete(version, False), "content-type": "image/png"}
        created = parse(version, "POST", headers=headers)
        assert isinstance(created, DraftCreate)
        assert created.metadata == {"filetype": "image/png"}

    @pytest.mark.parametrize("value", [None, "?2", "1", "true", "?1, ?0", "?"])
    def test_completeness_field_missing_or_invalid(self, version: int, value: str | None) -> None:
        # invalid values "MUST cause the entire header field to be ignored": then it is missing
        name = "upload-incomplete" if version == 3 else "upload-complete"
        headers = {} if value is None else {name: value}
        error = refuse(version, "POST", headers=headers)
        assert isinstance(error, InvalidHeader)
        assert error.status_code == 400

    def test_completeness_field_with_parameters(self, version: int) -> None:
        name, value = next(iter(complete(version, True).items()))
        created = parse(version, "POST", headers={name: value + ";x=1"}, body=3)
        assert isinstance(created, DraftCreate)
        assert created.complete is True

    def test_other_spelling_is_not_understood(self, version: int) -> None:
        # interop 3 knows only Upload-Incomplete, the others only Upload-Complete
        other = {"upload-complete": "?1"} if version == 3 else {"upload-incomplete": "?0"}
        assert isinstance(refuse(version, "POST", headers=other), InvalidHeader)

    def test_upload_length(self, version: int) -> None:
        headers = {**complete(version, False), "upload-length": "100"}
        created = parse(version, "POST", headers=headers, body=5)
        assert isinstance(created, DraftCreate)
        # Upload-Length exists from -05 (interop 6); before, it is an unknown field
        assert created.length == (100 if version >= 6 else None)

    @pytest.mark.parametrize("value", ["-1", "1.5", "?1", "abc", "1, 2"])
    def test_invalid_upload_length_is_ignored(self, version: int, value: str) -> None:
        headers = {**complete(version, False), "upload-length": value}
        created = parse(version, "POST", headers=headers, body=5)
        assert isinstance(created, DraftCreate)
        assert created.length is None

    def test_inconsistent_length(self, version: int) -> None:
        headers = {**complete(version, True), "upload-length": "6"}
        if version < 6:
            created = parse(version, "POST", headers=headers, body=5)
            assert isinstance(created, DraftCreate)
            assert created.length == 5
            return
        error = refuse(version, "POST", headers=headers, body=5)
        assert isinstance(error, InconsistentLength)
        assert error.status_code == 400

    def test_consistent_length(self, version: int) -> None:
        headers = {**complete(version, True), "upload-length": "5"}
        created = parse(version, "POST", headers=headers, body=5)
        assert isinstance(created, DraftCreate)
        assert created.length == 5

    def test_max_size(self, version: int) -> None:
        core = make(max_size=4)
        error = refuse(version, "POST", headers=complete(version, True), body=5, core=core)
        assert isinstance(error, MaxSizeExceeded)
        assert error.status_code == 413
        created = parse(version, "POST", headers=complete(version, True), body=4, core=core)
        assert isinstance(created, DraftCreate)

    def test_content_longer_than_the_length(self, version: int) -> None:
        headers = {**complete(version, False), "upload-length": "4"}
        if version < 6:
            assert isinstance(parse(version, "POST", headers=headers, body=5), DraftCreate)
        else:
            error = refuse(version, "POST", headers=headers, body=5)
            assert isinstance(error, InconsistentLength)

    def test_content_past_max_size(self, version: int) -> None:
        core = make(max_size=4)
        error = refuse(version, "POST", headers=complete(version, False), body=5, core=core)
        assert isinstance(error, MaxSizeExceeded)

    def test_origin_not_allowed(self, version: int) -> None:
        core = make(cors_allow_origins=("https://a.example",))
        headers = {**complete(version, True), "origin": "https://b.example"}
        assert refuse(version, "POST", headers=headers, core=core).status_code == 403


# -- append -----------------------------------------------------------------------------------------


def append_headers(version: int, offset: str = "0", done: bool = False) -> dict[str, str]:
    return {
        "content-type": "application/partial-upload",
        "upload-offset": offset,
        **complete(version, done),
    }


@pytest.mark.parametrize("version", ALL)
class TestAppendRequest:
    def test_append(self, version: int) -> None:
        appended = parse(version, "PATCH", UPLOAD, append_headers(version, "5"), body=3)
        assert appended == DraftAppend(upload_id=ID, offset=5, complete=False, length=None)

    def test_completing_append_gives_the_length(self, version: int) -> None:
        appended = parse(version, "PATCH", UPLOAD, append_headers(version, "5", True), body=3)
        assert appended == DraftAppend(upload_id=ID, offset=5, complete=True, length=8)

    @pytest.mark.parametrize("content_type", [None, "application/offset+octet-stream", "text/x"])
    def test_media_type(self, version: int, content_type: str | None) -> None:
        headers = append_headers(version)
        del headers["content-type"]
        if content_type is not None:
            headers["content-type"] = content_type
        if version < 6:
            # application/partial-upload is required from -04 (interop 6)
            assert isinstance(parse(version, "PATCH", UPLOAD, headers), DraftAppend)
        else:
            error = refuse(version, "PATCH", UPLOAD, headers)
            assert isinstance(error, UnsupportedMediaType)
            assert error.status_code == 415

    def test_media_type_parameters_and_case(self, version: int) -> None:
        headers = {**append_headers(version), "content-type": "Application/Partial-Upload; x=1"}
        assert isinstance(parse(version, "PATCH", UPLOAD, headers), DraftAppend)

    @pytest.mark.parametrize("offset", [None, "-1", "1.0", "?1", "x", "1, 1", '"1"'])
    def test_offset_missing_or_invalid(self, version: int, offset: str | None) -> None:
        headers = append_headers(version)
        if offset is None:
            del headers["upload-offset"]
        else:
            headers["upload-offset"] = offset
        error = refuse(version, "PATCH", UPLOAD, headers)
        assert isinstance(error, InvalidHeader)

    def test_completeness_required(self, version: int) -> None:
        headers = append_headers(version)
        headers.pop("upload-complete", None)
        headers.pop("upload-incomplete", None)
        assert isinstance(refuse(version, "PATCH", UPLOAD, headers), InvalidHeader)

    def test_upload_length_on_append(self, version: int) -> None:
        headers = {**append_headers(version, "5"), "upload-length": "10"}
        appended = parse(version, "PATCH", UPLOAD, headers, body=2)
        assert isinstance(appended, DraftAppend)
        assert appended.length == (10 if version >= 6 else None)

    def test_inconsistent_length_on_append(self, version: int) -> None:
        headers = {**append_headers(version, "5", True), "upload-length": "10"}
        if version < 6:
            assert isinstance(parse(version, "PATCH", UPLOAD, headers, body=2), DraftAppend)
        else:
            assert isinstance(refuse(version, "PATCH", UPLOAD, headers, body=2), InconsistentLength)


@pytest.mark.parametrize("version", ALL)
@pytest.mark.parametrize("method", ["HEAD", "DELETE"])
@pytest.mark.parametrize("field", ["offset", "complete"])
def test_state_fields_on_head_and_delete(version: int, method: str, field: str) -> None:
    headers = {"upload-offset": "0"} if field == "offset" else complete(version, False)
    if v(version).refuse_state_fields:
        # until -08: "The request MUST NOT include an Upload-Offset or Upload-Complete header
        # field. The server MUST reject requests with either of these fields" (400)
        assert isinstance(refuse(version, method, UPLOAD, headers), InvalidHeader)
    else:
        assert isinstance(parse(version, method, UPLOAD, headers), DraftHead | DraftDelete)


# -- plan_append ------------------------------------------------------------------------------------


def plan(version: int, upload: UploadInfo, core: DraftCore = CORE, **kwargs: Any) -> AppendPlan:
    kwargs.setdefault("offset", upload.offset)
    kwargs.setdefault("complete", False)
    kwargs.setdefault("length", None)
    kwargs.setdefault("content_length", 3)
    kwargs.setdefault("now", NOW)
    return core.plan_append(v(version), upload, **kwargs)


def refuse_plan(version: int, upload: UploadInfo, **kwargs: Any) -> TusError:
    with pytest.raises(TusError) as caught:
        plan(version, upload, **kwargs)
    return caught.value


@pytest.mark.parametrize("version", ALL)
class TestPlanAppend:
    def test_deferred_upload(self, version: int) -> None:
        decided = plan(version, info(size=None, offset=5))
        assert (decided.offset, decided.declare_length, decided.limit) == (5, None, None)
        assert not decided.nothing_to_write
        assert not decided.was_complete

    def test_mismatching_offset(self, version: int) -> None:
        error = refuse_plan(version, info(size=None, offset=5), offset=4)
        assert isinstance(error, MismatchingOffset)
        assert error.status_code == 409
        # "The response MUST include the correct offset in the Upload-Offset header field."
        assert error.headers == [("Upload-Offset", "5")]
        assert error.members() == {"expected-offset": 5, "provided-offset": 4}

    def test_bytes_to_a_completed_upload(self, version: int) -> None:
        error = refuse_plan(version, info(size=5, offset=5), content_length=1)
        assert error.status_code == 400
        response = CORE.error(v(version), error)
        if v(version).problem_details:
            body = json.loads(response.body)
            expected = {9: "inconsistent-upload-length", 10: "inconsistent-upload-length"}
            assert body["type"] == PROBLEM + expected.get(version, "completed-upload")

    def test_chunked_body_to_a_completed_upload(self, version: int) -> None:
        assert refuse_plan(version, info(size=5, offset=5), content_length=None).status_code == 400

    def test_empty_incomplete_append_to_a_completed_upload(self, version: int) -> None:
        error = refuse_plan(version, info(size=5, offset=5), content_length=0)
        assert isinstance(error, CompletedUpload)

    def test_empty_completing_append_to_a_completed_upload_repeats_the_completion(
        self, version: int
    ) -> None:
        decided = plan(version, info(size=5, offset=5), content_length=0, complete=True, length=5)
        assert decided.nothing_to_write
        assert decided.was_complete

    def test_offset_checked_before_completeness(self, version: int) -> None:
        error = refuse_plan(version, info(size=5, offset=5), offset=0)
        assert isinstance(error, MismatchingOffset)

    def test_length_declared(self, version: int) -> None:
        decided = plan(version, info(size=None, offset=5), length=10)
        assert decided.declare_length == 10
        assert decided.limit == 5
        assert isinstance(decided.exceeded, InconsistentLength)

    def test_completing_declares_the_length(self, version: int) -> None:
        decided = plan(version, info(size=None, offset=5), complete=True, length=8)
        assert decided.declare_length == 8
        assert decided.limit == 3

    def test_same_length_again(self, version: int) -> None:
        decided = plan(version, info(size=10, offset=5), length=10)
        assert decided.declare_length is None
        assert decided.limit == 5

    def test_different_length(self, version: int) -> None:
        error = refuse_plan(version, info(size=10, offset=5), length=11)
        assert isinstance(error, InconsistentLength)

    def test_length_below_offset(self, version: int) -> None:
        error = refuse_plan(version, info(size=None, offset=5), length=4, content_length=0)
        assert isinstance(error, InconsistentLength)

    def test_content_past_the_length_is_refused_before_reading(self, version: int) -> None:
        error = refuse_plan(version, info(size=10, offset=5), content_length=6)
        assert isinstance(error, InconsistentLength)
        assert error.status_code == 400

    def test_content_to_the_length(self, version: int) -> None:
        decided = plan(version, info(size=10, offset=5), content_length=5)
        assert decided.limit == 5

    def test_max_size_limits_a_deferred_upload(self, version: int) -> None:
        core = make(max_size=10)
        decided = plan(version, info(size=None, offset=4), core=core, content_length=None)
        assert decided.limit == 6
        assert isinstance(decided.exceeded, MaxSizeExceeded)
        with pytest.raises(MaxSizeExceeded):
            plan(version, info(size=None, offset=4), core=core, content_length=7)

    def test_declared_length_past_max_size(self, version: int) -> None:
        core = make(max_size=10)
        with pytest.raises(MaxSizeExceeded):
            plan(version, info(size=None, offset=0), core=core, length=11)

    def test_expired(self, version: int) -> None:
        core = make(expire_after=60.0)
        with pytest.raises(UploadExpired):
            plan(version, info(size=None, offset=0, modified_at=NOW - 60), core=core)
        plan(version, info(size=None, offset=0, modified_at=NOW - 59), core=core)

    def test_planner_has_the_tus_signature(self, version: int) -> None:
        planner = CORE.planner(v(version), complete=True, length=8)
        decided = planner(
            info(size=None, offset=5), offset=5, length=None, content_length=3, now=NOW
        )
        assert decided.declare_length == 8


class TestLengthOnCompletion:
    def test_unknown_length_is_the_offset(self) -> None:
        assert DraftCore.length_on_completion(info(size=None, offset=7)) == 7

    def test_known_length_reached(self) -> None:
        assert DraftCore.length_on_completion(info(size=7, offset=7)) is None

    def test_known_length_not_reached(self) -> None:
        with pytest.raises(InconsistentLength):
            DraftCore.length_on_completion(info(size=8, offset=7))


# -- responses --------------------------------------------------------------------------------------


LIMITED = make(max_size=1000, expire_after=3600.0)


@pytest.mark.parametrize("version", ALL)
class TestResponses:
    def limit(self, version: int, age: int | None) -> str | None:
        key = v(version).age_key
        if key is None:
            return None
        return "max-size=1000" + (f", {key}={age}" if age is not None else "")

    def test_interim(self, version: int) -> None:
        response = LIMITED.interim(v(version), "http://h/files/x")
        assert response.status == 104
        headers = header_dict(response.headers)
        assert headers["location"] == "http://h/files/x"
        assert headers["upload-draft-interop-version"] == str(version)
        assert headers.get("upload-limit") == self.limit(version, 3600)

    def test_options(self, version: int) -> None:
        response = LIMITED.options(v(version))
        assert response.status == 204
        headers = header_dict(response.headers)
        expected_patch = "application/partial-upload" if version >= 6 else None
        assert headers.get("accept-patch") == expected_patch
        assert headers.get("upload-limit") == self.limit(version, 3600)

    def test_no_limits_no_upload_limit(self, version: int) -> None:
        assert "upload-limit" not in header_dict(CORE.options(v(version)).headers)

    @pytest.mark.parametrize("done", [False, True])
    def test_created(self, version: int, done: bool) -> None:
        upload = info(size=5 if done else None, offset=5, modified_at=NOW - 100)
        response = LIMITED.created(v(version), upload, NOW)
        assert response.status == 201
        headers = header_dict(response.headers)
        assert headers["upload-offset"] == "5"
        assert headers | complete(version, done) == headers
        # a completed upload no longer expires
        assert headers.get("upload-limit") == self.limit(version, None if done else 3500)

    @pytest.mark.parametrize("done", [False, True])
    def test_appended(self, version: int, done: bool) -> None:
        upload = info(size=5 if done else None, offset=5)
        response = CORE.appended(v(version), upload, NOW)
        # 201 until -05; from -06 a 2xx with Upload-Complete (204 / 200)
        assert response.status == v(version).append_status[done]
        assert response.status == ((201, 201) if version < 7 else (204, 200))[done]
        headers = header_dict(response.headers)
        assert headers | complete(version, done) == headers
        assert headers["upload-offset"] == "5"

    @pytest.mark.parametrize(("size", "offset"), [(None, 3), (10, 3), (10, 10)])
    def test_head(self, version: int, size: int | None, offset: int) -> None:
        upload = info(size=size, offset=offset, modified_at=NOW - 600)
        response = LIMITED.head(v(version), upload, NOW)
        assert response.status == 204
        headers = header_dict(response.headers)
        assert headers["upload-offset"] == str(offset)
        assert headers["cache-control"] == "no-store"
        assert headers | complete(version, size == offset) == headers
        # Upload-Length from interop 6, when the client supplied one
        expected_length = str(size) if size is not None and version >= 6 else None
        assert headers.get("upload-length") == expected_length
        age = None if size == offset else 3000
        assert headers.get("upload-limit") == self.limit(version, age)

    def test_remaining_lifetime_never_negative(self, version: int) -> None:
        upload = info(size=None, offset=0, modified_at=NOW - 7200)
        headers = header_dict(LIMITED.head(v(version), upload, NOW).headers)
        if v(version).age_key:
            assert headers["upload-limit"].endswith("=0")

    def test_error_mismatch(self, version: int) -> None:
        response = CORE.error(v(version), MismatchingOffset(expected=5, provided=4))
        assert response.status == 409
        headers = header_dict(response.headers)
        assert headers["upload-offset"] == "5"
        if version < 6:
            assert headers["content-type"] == "text/plain; charset=utf-8"
            assert response.body.startswith(b"ERR_MISMATCHED_OFFSET: ")
            return
        assert headers["content-type"] == "application/problem+json"
        body = json.loads(response.body)
        assert body["type"] == PROBLEM + "mismatching-upload-offset"
        assert body["expected-offset"] == 5
        assert body["provided-offset"] == 4
        assert body["status"] == 409

    def test_error_inconsistent_length(self, version: int) -> None:
        response = CORE.error(v(version), InconsistentLength("x"))
        assert response.status == 400
        if version < 6:
            assert response.body == b"ERR_INCONSISTENT_LENGTH: x\n"
            return
        body = json.loads(response.body)
        # the problem type exists from -06 (interop 7)
        expected = PROBLEM + "inconsistent-upload-length" if version >= 7 else "about:blank"
        assert body["type"] == expected
        assert body["title"] == ("Bad Request" if version == 6 else body["title"])

    def test_error_completed(self, version: int) -> None:
        response = CORE.error(v(version), CompletedUpload())
        assert response.status == 400
        if version >= 6:
            assert json.loads(response.body)["type"] == PROBLEM + "completed-upload"

    def test_error_without_a_problem_type(self, version: int) -> None:
        response = CORE.error(v(version), UploadNotFound())
        assert response.status == 404
        if version >= 6:
            body = json.loads(response.body)
            assert body == {
                "type": "about:blank",
                "title": "Not Found",
                "status": 404,
                "detail": "upload not found",
                "code": "ERR_UPLOAD_NOT_FOUND",
            }

    def test_413_carries_upload_limit(self, version: int) -> None:
        response = LIMITED.error(v(version), MaxSizeExceeded("too big"))
        assert response.status == 413
        headers = header_dict(response.headers)
        assert headers.get("upload-limit") == self.limit(version, 3600)

    def test_response_headers(self, version: int) -> None:
        req = request("PATCH", UPLOAD, {"origin": "https://a.example"})
        response = Response(204, [("Upload-Complete", "?0")])
        headers = CORE.response_headers(v(version), req, response, [("Location", "x")])
        assert headers[0] == ("Upload-Draft-Interop-Version", str(version))
        names = [name for name, _ in headers]
        assert "Tus-Resumable" not in names
        assert "Content-Length" not in names  # 204
        found = dict(headers)
        assert found["Access-Control-Allow-Origin"] == "https://a.example"
        assert "Upload-Complete" in found["Access-Control-Expose-Headers"]
        assert found["Location"] == "x"

    def test_response_headers_content_length(self, version: int) -> None:
        req = request("POST")
        headers = CORE.response_headers(v(version), req, Response(400, [], b"abc"), [])
        assert ("Content-Length", "3") in headers
        head = request("HEAD", UPLOAD)
        headers = CORE.response_headers(
            v(version), head, Response(204, [("Content-Length", "9")]), []
        )
        assert ("Content-Length", "9") in headers
