"""The sans-IO core, as tables: request in, typed request or error out; upload in, plan out;
state in, response out. No server, no event loop, no clock.

Every header rule of tus 1.0.0 that anytus enforces is stated here once, with its exact status and
error code. ``tests/test_http_protocol.py`` keeps one end-to-end test per verb and area over real
HTTP, and everything that is about I/O (bodies, disconnects, locks, streaming).
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import zlib
from typing import TYPE_CHECKING, Any

import pytest

from anytus import (
    InvalidHeader,
    InvalidUploadId,
    TusError,
    UnsupportedChecksumAlgorithm,
    UnsupportedVersion,
    UploadInfo,
)
from anytus._core import (
    ALLOW_HEADERS,
    EXPOSE_HEADERS,
    METHODS,
    ROLL_BACK,
    AppendPlan,
    Create,
    CreateFinal,
    Delete,
    Get,
    Head,
    Options,
    Patch,
    Request,
    Response,
    TusCore,
    TusRequest,
    is_expired,
    new_hasher,
    normalize_headers,
)
from anytus._exceptions import (
    ChecksumMismatch,
    LengthAlreadyDeclared,
    MaxSizeExceeded,
    MethodNotAllowed,
    OffsetMismatch,
    OriginNotAllowed,
    RangeNotSatisfiable,
    SizeExceeded,
    UnsupportedMediaType,
    UploadExpired,
    UploadIsFinal,
    UploadNotFinished,
    UploadNotFound,
)
from anytus._protocol import Checksum

if TYPE_CHECKING:
    from collections.abc import Mapping

ALL_EXTENSIONS = (
    "creation",
    "creation-with-upload",
    "creation-defer-length",
    "termination",
    "concatenation",
    "checksum",
    "expiration",
)
#: the extensions of a store that registers only the core (no deferrer, terminater...)
BARE_EXTENSIONS = ("creation", "creation-with-upload")
ID = "0123456789abcdef0123456789abcdef"
UPLOAD = f"/files/{ID}"
TUS = {"tus-resumable": "1.0.0"}
OFFSET_STREAM = "application/offset+octet-stream"
PATCH = {**TUS, "content-type": OFFSET_STREAM, "upload-offset": "0"}
NOW = 1_700_000_000.0


def make_core(**options: Any) -> TusCore:
    config: dict[str, Any] = {
        "base_path": "/files/",
        "max_size": None,
        "expire_after": None,
        "cors_allow_origins": ("*",),
        "max_metadata_size": 4096,
        "extensions": ALL_EXTENSIONS,
    }
    config.update(options)
    return TusCore(**config)


CORE = make_core()


def request(
    method: str,
    path: str = "/files/",
    headers: Mapping[str, str] | None = None,
    core: TusCore = CORE,
) -> Request:
    """A request as the ASGI adapter builds it: header names lower-case, as after normalizing."""
    return core.normalize(method, path, {k.lower(): v for k, v in (headers or {}).items()})


def parse(
    method: str,
    path: str = "/files/",
    headers: Mapping[str, str] | None = None,
    core: TusCore = CORE,
) -> TusRequest:
    return core.parse(request(method, path, headers, core))


def refuse(
    method: str,
    path: str = "/files/",
    headers: Mapping[str, str] | None = None,
    core: TusCore = CORE,
) -> TusError:
    """The error *core* answers the request with (it must refuse it)."""
    with pytest.raises(TusError) as info:
        parse(method, path, headers, core)
    return info.value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def checksum_header(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32":
        digest = zlib.crc32(data).to_bytes(4, "big")
    else:
        digest = hashlib.new(algorithm, data).digest()
    return f"{algorithm} {b64(digest)}"


def info(**fields: Any) -> UploadInfo:
    fields.setdefault("id", ID)
    fields.setdefault("modified_at", NOW)
    return UploadInfo(**fields)


# -- normalize: method override and body framing ----------------------------------------------------


class TestNormalize:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ([], {}),
            ([(b"Upload-Offset", b" 5 ")], {"upload-offset": "5"}),
            ([(b"UPLOAD-LENGTH", b"\t7\t")], {"upload-length": "7"}),
            # a repeated field is one comma-separated list: Upload-Offset twice is malformed
            ([(b"upload-offset", b"1"), (b"Upload-Offset", b"1")], {"upload-offset": "1, 1"}),
            # values are Latin-1: no byte is lost
            ([(b"upload-metadata", b"k \xe9")], {"upload-metadata": "k \xe9"}),
        ],
    )
    def test_normalize_headers(
        self, raw: list[tuple[bytes, bytes]], expected: dict[str, str]
    ) -> None:
        assert normalize_headers(raw) == expected

    @pytest.mark.parametrize(
        ("method", "override", "expected"),
        [
            ("post", None, "POST"),
            ("POST", "PATCH", "PATCH"),
            ("POST", "patch", "PATCH"),
            ("POST", " delete ", "DELETE"),
            ("GET", "HEAD", "HEAD"),
            ("POST", "", "POST"),  # an empty override is no override
        ],
    )
    def test_method_override(self, method: str, override: str | None, expected: str) -> None:
        headers = {} if override is None else {"X-HTTP-Method-Override": override}
        normalized = request(method, UPLOAD, headers)
        assert normalized.method == expected
        # the method on the wire decides the response's framing (a HEAD has no body)
        assert normalized.wire_method == method.upper()

    @pytest.mark.parametrize(
        ("headers", "content_length", "has_body"),
        [
            ({}, None, False),
            ({"Content-Length": "0"}, 0, False),
            ({"Content-Length": "12"}, 12, True),
            ({"Content-Length": "abc"}, None, True),
            ({"Transfer-Encoding": "chunked"}, None, True),
            # a transfer coding overrides Content-Length (RFC 9112 §6.3)
            ({"Transfer-Encoding": "chunked", "Content-Length": "12"}, None, True),
        ],
    )
    def test_body_framing(
        self, headers: dict[str, str], content_length: int | None, has_body: bool
    ) -> None:
        normalized = request("PATCH", UPLOAD, headers)
        assert (normalized.content_length, normalized.has_body) == (content_length, has_body)

    def test_origin(self) -> None:
        assert request("HEAD", UPLOAD).origin is None
        assert (
            request("HEAD", UPLOAD, {"Origin": "https://a.example"}).origin == "https://a.example"
        )


# -- parse: routing, versions, methods --------------------------------------------------------------


class TestRouting:
    @pytest.mark.parametrize("path", ["/", "/elsewhere", "/elsewhere/abc", "/filesabc", "/file/x"])
    @pytest.mark.parametrize("method", ["OPTIONS", "POST", "HEAD", "PATCH", "GET", "DELETE"])
    def test_outside_the_base_path_is_404(self, method: str, path: str) -> None:
        error = refuse(method, path, PATCH)
        assert type(error) is UploadNotFound
        assert (error.status_code, error.error_code) == (404, "ERR_UPLOAD_NOT_FOUND")

    @pytest.mark.parametrize(
        "path",
        [
            "/files/..",
            "/files/..%2Fsecret",
            "/files/%2e%2e%2fsecret",
            "/files/%252e%252e%252fsecret",
            "/files/secret%00",
            "/files/a%2Fb",
            "/files//secret",
            "/files/secret.info",
            "/files/.secret",
            "/files/secret/",
            "/files/" + "a" * 129,
            "/files/%C0%AE%C0%AE%2Fsecret",
            "/files/\u00e9".encode().decode("latin-1"),
        ],
    )
    @pytest.mark.parametrize("method", ["HEAD", "PATCH", "GET", "DELETE"])
    def test_hostile_upload_ids_are_404(self, method: str, path: str) -> None:
        error = refuse(method, path, PATCH)
        assert isinstance(error, InvalidUploadId)
        assert error.status_code == 404

    @pytest.mark.parametrize("path", ["/files/", "/files"])
    def test_the_creation_url_with_or_without_its_slash(self, path: str) -> None:
        assert parse("OPTIONS", path) == Options()
        assert isinstance(parse("POST", path, {**TUS, "Upload-Length": "1"}), Create)

    @pytest.mark.parametrize("method", ["HEAD", "PATCH", "GET", "DELETE", "PUT"])
    def test_creation_url_allows_post_and_options(self, method: str) -> None:
        error = refuse(method, "/files/", PATCH)
        assert isinstance(error, MethodNotAllowed)
        assert error.status_code == 405
        assert error.headers == [("Allow", "POST, OPTIONS")]

    @pytest.mark.parametrize("method", ["PUT", "POST", "BREW"])
    def test_unknown_method_on_an_upload_is_405(self, method: str) -> None:
        error = refuse(method, UPLOAD, PATCH)
        assert isinstance(error, MethodNotAllowed)
        assert error.headers == [("Allow", "HEAD, PATCH, GET, OPTIONS, DELETE")]

    def test_delete_needs_termination(self) -> None:
        assert parse("DELETE", UPLOAD, TUS) == Delete(upload_id=ID)
        error = refuse("DELETE", UPLOAD, TUS, core=make_core(extensions=BARE_EXTENSIONS))
        assert isinstance(error, MethodNotAllowed)
        assert error.headers == [("Allow", "HEAD, PATCH, GET, OPTIONS")]

    def test_other_base_path(self) -> None:
        core = make_core(base_path="/api/up/")
        assert parse("HEAD", "/api/up/abc", TUS, core) == Head(upload_id="abc")
        assert type(refuse("HEAD", UPLOAD, TUS, core)) is UploadNotFound

    @pytest.mark.parametrize(
        ("method", "headers", "expected"),
        [
            ("POST", {"X-HTTP-Method-Override": "PATCH", **PATCH}, Patch),
            ("POST", {"X-HTTP-Method-Override": "DELETE", **TUS}, Delete),
            ("POST", {"X-HTTP-Method-Override": "HEAD", **TUS}, Head),
            ("GET", {"X-HTTP-Method-Override": "DELETE", **TUS}, Delete),
        ],
    )
    def test_method_override_routes(
        self, method: str, headers: dict[str, str], expected: type[object]
    ) -> None:
        assert type(parse(method, UPLOAD, headers)) is expected


VERSIONED_REQUESTS = [
    pytest.param("POST", "/files/", {"Upload-Length": "3"}, id="POST"),
    pytest.param(
        "POST", "/files/", {"Upload-Length": "3", "Content-Type": OFFSET_STREAM}, id="POST-body"
    ),
    pytest.param("HEAD", UPLOAD, {}, id="HEAD"),
    pytest.param(
        "PATCH", UPLOAD, {"Upload-Offset": "0", "Content-Type": OFFSET_STREAM}, id="PATCH"
    ),
    pytest.param("DELETE", UPLOAD, {}, id="DELETE"),
    pytest.param("PUT", UPLOAD, {}, id="unknown-method"),
]


class TestVersion:
    @pytest.mark.parametrize(("method", "path", "headers"), VERSIONED_REQUESTS)
    @pytest.mark.parametrize("version", [None, "", "0.2.2", "1.0.1", "1.0", "1.0.0, 0.2.2"])
    def test_unsupported_version_is_412_with_tus_version(
        self, method: str, path: str, headers: dict[str, str], version: str | None
    ) -> None:
        if version is not None:
            headers = {**headers, "Tus-Resumable": version}
        error = refuse(method, path, headers)
        assert isinstance(error, UnsupportedVersion)
        assert (error.status_code, error.error_code) == (412, "ERR_UNSUPPORTED_VERSION")
        assert error.headers == [("Tus-Version", "1.0.0")]
        response = CORE.error(error)
        assert ("Tus-Version", "1.0.0") in response.headers

    @pytest.mark.parametrize("version", [None, "0.2.2", "1.0.0"])
    def test_options_ignores_tus_resumable(self, version: str | None) -> None:
        headers = {} if version is None else {"Tus-Resumable": version}
        assert parse("OPTIONS", "/files/", headers) == Options()
        assert parse("OPTIONS", UPLOAD, headers) == Options()

    def test_get_checks_the_version_only_when_it_is_sent(self) -> None:
        # a plain browser link sends no Tus-Resumable
        assert parse("GET", UPLOAD) == Get(upload_id=ID, range=None)
        assert parse("GET", UPLOAD, TUS) == Get(upload_id=ID, range=None)
        assert isinstance(refuse("GET", UPLOAD, {"Tus-Resumable": "0.2.2"}), UnsupportedVersion)

    def test_blanks_around_the_version(self) -> None:
        assert parse("HEAD", UPLOAD, {"Tus-Resumable": " 1.0.0 "}) == Head(upload_id=ID)

    def test_404_comes_before_412(self) -> None:
        assert type(refuse("HEAD", "/elsewhere", {})) is UploadNotFound


# -- parse: POST --------------------------------------------------------------------------------------


def post(headers: Mapping[str, str], core: TusCore = CORE) -> TusRequest:
    return parse("POST", "/files/", {**TUS, **headers}, core)


def refuse_post(headers: Mapping[str, str], core: TusCore = CORE) -> TusError:
    return refuse("POST", "/files/", {**TUS, **headers}, core)


class TestCreation:
    @pytest.mark.parametrize(
        ("headers", "size"),
        [
            ({"Upload-Length": "0"}, 0),
            ({"Upload-Length": "100"}, 100),
            ({"Upload-Length": "0042"}, 42),
            ({"Upload-Length": str(2**63 - 1)}, 2**63 - 1),
            ({"Upload-Defer-Length": "1"}, None),
        ],
    )
    def test_length(self, headers: dict[str, str], size: int | None) -> None:
        assert post(headers) == Create(
            size=size, metadata={}, is_partial=False, with_body=False, checksum=None
        )

    @pytest.mark.parametrize(
        "headers",
        [
            pytest.param({}, id="neither"),
            pytest.param({"Upload-Length": "5", "Upload-Defer-Length": "1"}, id="both"),
            pytest.param({"Upload-Length": "-5"}, id="negative"),
            pytest.param({"Upload-Length": "+5"}, id="plus"),
            pytest.param({"Upload-Length": "abc"}, id="not-a-number"),
            pytest.param({"Upload-Length": "1.5"}, id="fraction"),
            pytest.param({"Upload-Length": "0x10"}, id="hex"),
            pytest.param({"Upload-Length": "1e3"}, id="exponent"),
            pytest.param({"Upload-Length": "1_000"}, id="underscore"),
            pytest.param({"Upload-Length": ""}, id="empty"),
            pytest.param({"Upload-Length": "10 10"}, id="two-numbers"),
            pytest.param({"Upload-Length": "10, 10"}, id="sent-twice"),
            # UTF-8 bytes of fullwidth digits, as they arrive: Latin-1-decoded
            pytest.param(
                {"Upload-Length": "\uff11\uff10".encode().decode("latin-1")}, id="fullwidth"
            ),
            pytest.param({"Upload-Length": "\u0661\u0662"}, id="arabic-indic-digits"),
            pytest.param({"Upload-Length": "9" * 26}, id="absurd"),
            pytest.param({"Upload-Length": str(2**63)}, id="above-int64"),
            pytest.param({"Upload-Defer-Length": "0"}, id="defer-0"),
            pytest.param({"Upload-Defer-Length": "2"}, id="defer-2"),
            pytest.param({"Upload-Defer-Length": "bad"}, id="defer-bad"),
            pytest.param({"Upload-Defer-Length": ""}, id="defer-empty"),
        ],
    )
    def test_invalid_length_headers(self, headers: dict[str, str]) -> None:
        error = refuse_post(headers)
        assert type(error) is InvalidHeader
        assert (error.status_code, error.error_code) == (400, "ERR_INVALID_HEADER")

    def test_defer_length_needs_its_extension(self) -> None:
        core = make_core(extensions=BARE_EXTENSIONS)
        assert type(refuse_post({"Upload-Defer-Length": "1"}, core)) is InvalidHeader

    @pytest.mark.parametrize(
        ("max_size", "headers", "error"),
        [
            (100, {"Upload-Length": "100"}, None),
            (100, {"Upload-Length": "101"}, MaxSizeExceeded),
            (0, {"Upload-Length": "0"}, None),
            (0, {"Upload-Length": "1"}, MaxSizeExceeded),
            # a deferred length is checked when it is declared (plan_append)
            (100, {"Upload-Defer-Length": "1"}, None),
            (None, {"Upload-Length": str(2**63 - 1)}, None),
        ],
    )
    def test_max_size(
        self, max_size: int | None, headers: dict[str, str], error: type[TusError] | None
    ) -> None:
        core = make_core(max_size=max_size)
        if error is None:
            assert isinstance(post(headers, core), Create)
        else:
            refused = refuse_post(headers, core)
            assert type(refused) is error
            assert (refused.status_code, refused.error_code) == (413, "ERR_MAX_SIZE_EXCEEDED")

    @pytest.mark.parametrize(
        ("header", "metadata"),
        [
            ("", {}),
            (f"filename {b64('résumé.txt'.encode())}", {"filename": "résumé.txt"}),
            (f"novalue,filetype {b64(b'text/plain')}", {"novalue": "", "filetype": "text/plain"}),
            ("emptyvalue ", {"emptyvalue": ""}),
            (
                f"binary {b64(bytes([0xFF, 0xFE, 0x00, 0x0D, 0x0A]))}",
                {"binary": "\udcff\udcfe\0\r\n"},
            ),
            (f"latin1 {b64('café'.encode('latin-1'))}", {"latin1": "caf\udce9"}),
        ],
    )
    def test_metadata(self, header: str, metadata: dict[str, str]) -> None:
        created = post({"Upload-Length": "3", "Upload-Metadata": header})
        assert isinstance(created, Create)
        assert created.metadata == metadata

    @pytest.mark.parametrize(
        "header",
        [
            pytest.param("filename %%%%", id="not-base64"),
            pytest.param("filename aGVsbG8=x", id="trailing-garbage"),
            pytest.param("a b c", id="three-parts"),
            pytest.param(f"a {b64(b'1')},a {b64(b'2')}", id="duplicate-key"),
        ],
    )
    def test_invalid_metadata(self, header: str) -> None:
        assert type(refuse_post({"Upload-Length": "3", "Upload-Metadata": header})) is InvalidHeader

    def test_metadata_size_limit(self) -> None:
        header = ",".join(f"key{i} {b64(b'x' * 64)}" for i in range(100))  # about 9 KB
        assert type(refuse_post({"Upload-Length": "3", "Upload-Metadata": header})) is InvalidHeader
        roomy = make_core(max_metadata_size=len(header))
        assert isinstance(post({"Upload-Length": "3", "Upload-Metadata": header}, roomy), Create)
        tight = make_core(max_metadata_size=len(header) - 1)
        refused = refuse_post({"Upload-Length": "3", "Upload-Metadata": header}, tight)
        assert type(refused) is InvalidHeader

    def test_metadata_of_a_final_upload(self) -> None:
        created = post({"Upload-Concat": "final;/files/a", "Upload-Metadata": f"k {b64(b'v')}"})
        assert created == CreateFinal(partial_ids=("a",), metadata={"k": "v"})


class TestCreationWithUpload:
    @pytest.mark.parametrize(
        ("content_type", "with_body"),
        [
            (None, False),
            (OFFSET_STREAM, True),
            ("Application/Offset+Octet-Stream", True),
            (f"{OFFSET_STREAM}; charset=binary", True),
            (f" {OFFSET_STREAM} ;x=y", True),
            # any other body is ignored, as tusd does
            ("application/octet-stream", False),
            ("text/plain", False),
            ("application/offset", False),
        ],
    )
    def test_content_type_decides(self, content_type: str | None, with_body: bool) -> None:
        headers = {"Upload-Length": "5", "Content-Length": "5"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        created = post(headers)
        assert isinstance(created, Create)
        assert created.with_body is with_body

    @pytest.mark.parametrize(
        ("length", "content_length", "max_size", "error"),
        [
            ("5", "5", None, None),
            ("5", "3", None, None),
            ("5", "0", None, None),
            # a body that says it is too long is refused before a byte is read: nothing is created
            ("5", "10", None, SizeExceeded),
            ("5", "6", 100, SizeExceeded),
            (None, "100", 100, None),
            (None, "101", 100, MaxSizeExceeded),
            (None, str(2**40), None, None),
        ],
    )
    def test_content_length_against_the_length(
        self,
        length: str | None,
        content_length: str,
        max_size: int | None,
        error: type[TusError] | None,
    ) -> None:
        core = make_core(max_size=max_size)
        headers = {"Content-Type": OFFSET_STREAM, "Content-Length": content_length}
        headers.update({"Upload-Length": length} if length else {"Upload-Defer-Length": "1"})
        if error is None:
            created = post(headers, core)
            assert isinstance(created, Create)
            assert created.with_body
        else:
            refused = refuse_post(headers, core)
            assert type(refused) is error
            assert refused.status_code == 413

    def test_a_chunked_body_is_checked_while_it_streams(self) -> None:
        headers = {"Upload-Length": "5", "Content-Type": OFFSET_STREAM}
        created = post({**headers, "Transfer-Encoding": "chunked", "Content-Length": "10"})
        assert isinstance(created, Create)
        assert created.with_body

    def test_checksum_goes_with_the_body(self) -> None:
        header = checksum_header("sha1", b"hello")
        digest = hashlib.sha1(b"hello").digest()
        with_body = post(
            {"Upload-Length": "5", "Content-Type": OFFSET_STREAM, "Upload-Checksum": header}
        )
        assert isinstance(with_body, Create)
        assert with_body.checksum == Checksum(algorithm="sha1", digest=digest)
        # without a body there is nothing to check
        without = post({"Upload-Length": "5", "Upload-Checksum": header})
        assert isinstance(without, Create)
        assert without.checksum is None
        refused = refuse_post(
            {"Upload-Length": "5", "Content-Type": OFFSET_STREAM, "Upload-Checksum": "md4 AAAA"}
        )
        assert type(refused) is UnsupportedChecksumAlgorithm


class TestConcatenation:
    def test_partial(self) -> None:
        assert post({"Upload-Length": "3", "Upload-Concat": "partial"}) == Create(
            size=3, metadata={}, is_partial=True, with_body=False, checksum=None
        )

    def test_partial_with_upload_and_deferred_length(self) -> None:
        created = post(
            {
                "Upload-Defer-Length": "1",
                "Upload-Concat": " partial ",
                "Content-Type": OFFSET_STREAM,
            }
        )
        assert created == Create(
            size=None, metadata={}, is_partial=True, with_body=True, checksum=None
        )

    @pytest.mark.parametrize(
        ("header", "ids"),
        [
            ("final;/files/a /files/b", ("a", "b")),
            ("final;http://other.example/files/a", ("a",)),
            ("final; https://h/files/a  b ", ("a", "b")),
            ("final;/files/a /files/a", ("a", "a")),
        ],
    )
    def test_final(self, header: str, ids: tuple[str, ...]) -> None:
        assert post({"Upload-Concat": header}) == CreateFinal(partial_ids=ids, metadata={})

    @pytest.mark.parametrize(
        "headers",
        [
            # "The Client MUST NOT include the Upload-Length header in the final upload creation"
            pytest.param({"Upload-Length": "3"}, id="length"),
            pytest.param({"Upload-Defer-Length": "1"}, id="defer"),
        ],
    )
    def test_final_takes_no_length(self, headers: dict[str, str]) -> None:
        refused = refuse_post({"Upload-Concat": "final;/files/a", **headers})
        assert type(refused) is InvalidHeader

    def test_final_takes_no_data(self) -> None:
        refused = refuse_post(
            {
                "Upload-Concat": "final;/files/a",
                "Content-Type": OFFSET_STREAM,
                "Content-Length": "3",
            }
        )
        assert type(refused) is UploadIsFinal
        assert (refused.status_code, refused.error_code) == (403, "ERR_MODIFY_FINAL")

    @pytest.mark.parametrize(
        "header",
        ["final;", "final", "whole", "partial;", "partial;x", "final;/files/../x", "final;/x/a"],
    )
    def test_invalid_concat_header(self, header: str) -> None:
        refused = refuse_post({"Upload-Concat": header, "Upload-Length": "3"})
        assert type(refused) is InvalidHeader
        assert refused.status_code == 400

    def test_concat_header_is_ignored_without_its_extension(self) -> None:
        core = make_core(extensions=BARE_EXTENSIONS)
        created = post({"Upload-Length": "3", "Upload-Concat": "final;/files/a"}, core)
        assert created == Create(
            size=3, metadata={}, is_partial=False, with_body=False, checksum=None
        )


# -- parse: PATCH, GET, HEAD --------------------------------------------------------------------------


def patch(headers: Mapping[str, str], core: TusCore = CORE) -> TusRequest:
    return parse("PATCH", UPLOAD, headers, core)


class TestPatchRequest:
    def test_patch(self) -> None:
        assert patch({**PATCH, "Upload-Offset": "5"}) == Patch(
            upload_id=ID, offset=5, length=None, checksum=None
        )

    @pytest.mark.parametrize(
        "content_type",
        [None, "", "text/plain", "application/octet-stream", "application/offset", "offset+octet"],
    )
    def test_wrong_content_type_is_415(self, content_type: str | None) -> None:
        headers = {**TUS, "Upload-Offset": "0"}
        if content_type is not None:
            headers["Content-Type"] = content_type
        refused = refuse("PATCH", UPLOAD, headers)
        assert type(refused) is UnsupportedMediaType
        assert (refused.status_code, refused.error_code) == (415, "ERR_INVALID_CONTENT_TYPE")

    @pytest.mark.parametrize(
        "content_type", [OFFSET_STREAM, OFFSET_STREAM.upper(), f"{OFFSET_STREAM};charset=x"]
    )
    def test_content_type_parameters_and_case(self, content_type: str) -> None:
        assert isinstance(patch({**PATCH, "Content-Type": content_type}), Patch)

    @pytest.mark.parametrize(
        "offset", [None, "", "-1", "abc", "1.0", "0x0", "1_0", "+0 0", "1, 1", "9" * 20]
    )
    def test_missing_or_invalid_offset_is_400(self, offset: str | None) -> None:
        headers = {**TUS, "Content-Type": OFFSET_STREAM}
        if offset is not None:
            headers["Upload-Offset"] = offset
        refused = refuse("PATCH", UPLOAD, headers)
        assert type(refused) is InvalidHeader
        assert refused.status_code == 400

    def test_415_comes_before_the_offset(self) -> None:
        assert type(refuse("PATCH", UPLOAD, TUS)) is UnsupportedMediaType

    @pytest.mark.parametrize(("header", "length"), [("8", 8), ("0", 0)])
    def test_upload_length(self, header: str, length: int) -> None:
        parsed = patch({**PATCH, "Upload-Length": header})
        assert isinstance(parsed, Patch)
        assert parsed.length == length

    @pytest.mark.parametrize("header", ["", "-1", "x", "1.5"])
    def test_invalid_upload_length(self, header: str) -> None:
        assert type(refuse("PATCH", UPLOAD, {**PATCH, "Upload-Length": header})) is InvalidHeader

    @pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
    def test_checksum(self, algorithm: str) -> None:
        parsed = patch({**PATCH, "Upload-Checksum": checksum_header(algorithm, b"hello")})
        assert isinstance(parsed, Patch)
        assert parsed.checksum is not None
        assert parsed.checksum.algorithm == algorithm
        hasher = new_hasher(algorithm)
        hasher.update(b"hel")
        hasher.update(b"lo")
        assert parsed.checksum.digest == hasher.digest()

    @pytest.mark.parametrize(
        ("header", "error"),
        [
            pytest.param("whirlpool AAAA", UnsupportedChecksumAlgorithm, id="unknown"),
            pytest.param(
                "SHA1 " + checksum_header("sha1", b"x").split()[1],
                UnsupportedChecksumAlgorithm,
                id="uppercase",
            ),
            pytest.param("sha1", InvalidHeader, id="no-value"),
            pytest.param("sha1 %%%", InvalidHeader, id="not-base64"),
            pytest.param(f"sha1 {b64(bytes(16))}", InvalidHeader, id="wrong-size"),
        ],
    )
    def test_bad_checksum_header_is_400(self, header: str, error: type[TusError]) -> None:
        refused = refuse("PATCH", UPLOAD, {**PATCH, "Upload-Checksum": header})
        assert type(refused) is error
        assert refused.status_code == 400

    def test_checksum_is_ignored_without_its_extension(self) -> None:
        core = make_core(extensions=BARE_EXTENSIONS)
        parsed = patch({**PATCH, "Upload-Checksum": "whirlpool AAAA"}, core)
        assert parsed == Patch(upload_id=ID, offset=0, length=None, checksum=None)


class TestOtherRequests:
    def test_head(self) -> None:
        assert parse("HEAD", UPLOAD, TUS) == Head(upload_id=ID)

    @pytest.mark.parametrize("range_", [None, "bytes=0-4", "items=1-2"])
    def test_get_passes_the_range_on(self, range_: str | None) -> None:
        headers = {} if range_ is None else {"Range": range_}
        assert parse("GET", UPLOAD, headers) == Get(upload_id=ID, range=range_)


# -- plan_append ----------------------------------------------------------------------------------------


def plan(
    upload: UploadInfo,
    offset: int = 0,
    length: int | None = None,
    content_length: int | None = None,
    now: float = NOW,
    core: TusCore = CORE,
) -> AppendPlan:
    return core.plan_append(
        upload, offset=offset, length=length, content_length=content_length, now=now
    )


def refuse_plan(upload: UploadInfo, **kwargs: Any) -> TusError:
    with pytest.raises(TusError) as raised:
        plan(upload, **kwargs)
    return raised.value


class TestPlanAppend:
    @pytest.mark.parametrize(
        ("upload", "offset", "length", "content_length", "expected"),
        [
            pytest.param(
                info(size=10), 0, None, 5, (0, None, 10, SizeExceeded, False, False), id="fresh"
            ),
            pytest.param(
                info(size=10, offset=4),
                4,
                None,
                None,
                (4, None, 6, SizeExceeded, False, False),
                id="chunked",
            ),
            pytest.param(
                info(size=10, offset=4),
                4,
                None,
                6,
                (4, None, 6, SizeExceeded, False, False),
                id="exactly-the-rest",
            ),
            pytest.param(
                info(size=10, offset=4),
                4,
                10,
                6,
                (4, None, 6, SizeExceeded, False, False),
                id="same-length-again",
            ),
            pytest.param(
                info(size=None),
                0,
                None,
                5,
                (0, None, None, MaxSizeExceeded, False, False),
                id="deferred",
            ),
            pytest.param(
                info(size=None, offset=5),
                5,
                8,
                3,
                (5, 8, 3, SizeExceeded, False, False),
                id="declare-length",
            ),
            pytest.param(
                info(size=None, offset=5),
                5,
                5,
                0,
                (5, 5, 0, SizeExceeded, True, False),
                id="declare-length-equal-to-offset",
            ),
            pytest.param(
                info(size=10, offset=10),
                10,
                None,
                0,
                (10, None, 0, SizeExceeded, True, True),
                id="already-complete",
            ),
            pytest.param(
                # nothing is read: even a body that says it is longer gets a 204
                info(size=10, offset=10),
                10,
                None,
                50,
                (10, None, 0, SizeExceeded, True, True),
                id="complete-with-a-body",
            ),
            pytest.param(
                info(size=0), 0, None, None, (0, None, 0, SizeExceeded, True, True), id="empty"
            ),
        ],
    )
    def test_plan(
        self,
        upload: UploadInfo,
        offset: int,
        length: int | None,
        content_length: int | None,
        expected: tuple[int, int | None, int | None, type[TusError], bool, bool],
    ) -> None:
        decided = plan(upload, offset, length, content_length)
        assert (
            decided.offset,
            decided.declare_length,
            decided.limit,
            type(decided.exceeded),
            decided.nothing_to_write,
            decided.was_complete,
        ) == expected
        assert decided.exceeded.status_code == 413

    @pytest.mark.parametrize(
        ("max_size", "upload", "limit", "error"),
        [
            (None, info(size=None, offset=3), None, MaxSizeExceeded),
            (10, info(size=None), 10, MaxSizeExceeded),
            (10, info(size=None, offset=4), 6, MaxSizeExceeded),
            # a known length is the limit, whatever the max size
            (100, info(size=10, offset=4), 6, SizeExceeded),
        ],
    )
    def test_limit_and_the_exceeded_error(
        self, max_size: int | None, upload: UploadInfo, limit: int | None, error: type[TusError]
    ) -> None:
        decided = plan(upload, upload.offset, core=make_core(max_size=max_size))
        assert decided.limit == limit
        assert type(decided.exceeded) is error
        code = "ERR_MAX_SIZE_EXCEEDED" if error is MaxSizeExceeded else "ERR_UPLOAD_SIZE_EXCEEDED"
        assert decided.exceeded.error_code == code

    @pytest.mark.parametrize(
        ("upload", "offset", "length", "content_length", "max_size", "error"),
        [
            # "If the offsets do not match, the Server MUST respond with the 409 Conflict status"
            pytest.param(info(size=10, offset=5), 0, None, 2, None, OffsetMismatch, id="behind"),
            pytest.param(info(size=10, offset=5), 3, None, 2, None, OffsetMismatch, id="behind-3"),
            pytest.param(info(size=10, offset=5), 7, None, 2, None, OffsetMismatch, id="ahead"),
            pytest.param(info(size=10, offset=5), 10, None, 2, None, OffsetMismatch, id="at-end"),
            pytest.param(info(size=10, offset=5), 11, None, 2, None, OffsetMismatch, id="past"),
            pytest.param(info(size=10, offset=10), 5, None, 0, None, OffsetMismatch, id="complete"),
            # "The Server SHOULD respond with the 403 Forbidden status to PATCH requests against
            # a final upload URL"
            pytest.param(
                info(size=7, offset=7, is_final=True, partial_uploads=("a",)),
                7,
                None,
                1,
                None,
                UploadIsFinal,
                id="final",
            ),
            # a length, once set, never changes
            pytest.param(info(size=10), 0, 20, 2, None, InvalidHeader, id="length-changes"),
            pytest.param(info(size=10), 0, 9, 2, None, InvalidHeader, id="length-shrinks"),
            # a declared length below what is stored already
            pytest.param(
                info(size=None, offset=5), 5, 3, 0, None, LengthAlreadyDeclared, id="length<offset"
            ),
            pytest.param(
                info(size=None, offset=5), 5, 11, 0, 10, MaxSizeExceeded, id="declared>max_size"
            ),
            # a Content-Length past what remains: refused before a byte is read
            pytest.param(info(size=10), 0, None, 11, None, SizeExceeded, id="body>size"),
            pytest.param(
                info(size=10, offset=4), 4, None, 7, None, SizeExceeded, id="body>remaining"
            ),
            pytest.param(
                info(size=None, offset=5), 5, 8, 4, None, SizeExceeded, id="body>declared"
            ),
            pytest.param(
                info(size=None, offset=4), 4, None, 7, 10, MaxSizeExceeded, id="body>max_size"
            ),
        ],
    )
    def test_refused(
        self,
        upload: UploadInfo,
        offset: int,
        length: int | None,
        content_length: int | None,
        max_size: int | None,
        error: type[TusError],
    ) -> None:
        refused = refuse_plan(
            upload,
            offset=offset,
            length=length,
            content_length=content_length,
            core=make_core(max_size=max_size),
        )
        assert type(refused) is error

    @pytest.mark.parametrize(
        ("error", "status", "code"),
        [
            (OffsetMismatch, 409, "ERR_MISMATCHED_OFFSET"),
            (UploadIsFinal, 403, "ERR_MODIFY_FINAL"),
            (LengthAlreadyDeclared, 400, "ERR_INVALID_UPLOAD_LENGTH"),
            (UploadExpired, 410, "ERR_UPLOAD_EXPIRED"),
            (SizeExceeded, 413, "ERR_UPLOAD_SIZE_EXCEEDED"),
            (MaxSizeExceeded, 413, "ERR_MAX_SIZE_EXCEEDED"),
        ],
    )
    def test_error_statuses(self, error: type[TusError], status: int, code: str) -> None:
        assert (error.status_code, error.error_code) == (status, code)

    def test_the_first_refusal_wins(self) -> None:
        # expired before final before offset before length
        final = info(size=7, offset=7, is_final=True, partial_uploads=("a",), modified_at=0.0)
        core = make_core(expire_after=60)
        assert type(refuse_plan(final, offset=0, core=core)) is UploadIsFinal  # complete: lives
        stale = info(size=10, offset=3, modified_at=NOW - 61)
        assert type(refuse_plan(stale, offset=0, length=20, core=core)) is UploadExpired
        assert type(refuse_plan(info(size=10, offset=3), offset=0, length=20)) is OffsetMismatch

    @pytest.mark.parametrize(
        ("expire_after", "upload", "now", "expired"),
        [
            (None, info(size=10, modified_at=0.0), NOW, False),
            (60, info(size=10, modified_at=NOW - 59.9), NOW, False),
            (60, info(size=10, modified_at=NOW - 60), NOW, True),
            (60, info(size=10, modified_at=NOW - 3600), NOW, True),
            (60, info(size=None, modified_at=NOW - 61), NOW, True),
            # a complete upload never expires
            (60, info(size=10, offset=10, modified_at=NOW - 3600), NOW, False),
            (60, info(size=0, modified_at=0.0), NOW, False),
            # an upload whose activity is unknown is not judged
            (60, info(size=10, modified_at=None), NOW, False),
        ],
    )
    def test_expiry(
        self, expire_after: float | None, upload: UploadInfo, now: float, expired: bool
    ) -> None:
        assert is_expired(upload, expire_after, now) is expired
        core = make_core(expire_after=expire_after)
        if expired:
            refused = refuse_plan(upload, offset=upload.offset, now=now, core=core)
            assert type(refused) is UploadExpired
            assert refused.status_code == 410
            with pytest.raises(UploadExpired):
                core.check_live(upload, now)
        else:
            plan(upload, upload.offset, now=now, core=core)
            core.check_live(upload, now)


# -- final_size and checksum_verdict ------------------------------------------------------------------


def partial(upload_id: str, size: int | None, offset: int) -> UploadInfo:
    return UploadInfo(id=upload_id, size=size, offset=offset, is_partial=True)


class TestFinalSize:
    @pytest.mark.parametrize(
        ("partials", "size"),
        [
            ([], 0),
            ([partial("a", 3, 3)], 3),
            ([partial("a", 3, 3), partial("b", 4, 4)], 7),
            ([partial("a", 2, 2), partial("a", 2, 2)], 4),
            ([partial("a", 0, 0), partial("b", 5, 5)], 5),
        ],
    )
    def test_size(self, partials: list[UploadInfo], size: int) -> None:
        assert CORE.final_size(partials) == size

    @pytest.mark.parametrize(
        ("partials", "max_size", "error", "status"),
        [
            pytest.param(
                [partial("a", 3, 3), partial("b", 10, 3)],
                None,
                UploadNotFinished,
                400,
                id="unfinished",
            ),
            pytest.param([partial("a", None, 3)], None, UploadNotFinished, 400, id="deferred"),
            pytest.param(
                [UploadInfo(id="a", size=3, offset=3)], None, InvalidHeader, 400, id="not-partial"
            ),
            pytest.param(
                [partial("a", 3, 3), partial("b", 3, 3)], 5, MaxSizeExceeded, 413, id="max-size"
            ),
        ],
    )
    def test_refused(
        self, partials: list[UploadInfo], max_size: int | None, error: type[TusError], status: int
    ) -> None:
        with pytest.raises(error) as raised:
            make_core(max_size=max_size).final_size(partials)
        assert raised.value.status_code == status

    def test_max_size_is_inclusive(self) -> None:
        assert UploadNotFinished.error_code == "ERR_UPLOAD_NOT_FINISHED"
        assert make_core(max_size=6).final_size([partial("a", 2, 2), partial("b", 4, 4)]) == 6


class TestChecksumVerdict:
    @pytest.mark.parametrize("algorithm", ["sha1", "md5", "sha256", "sha512", "crc32"])
    def test_verdicts(self, algorithm: str) -> None:
        expected = Checksum(
            algorithm=algorithm,
            digest=base64.b64decode(checksum_header(algorithm, b"chunk").split()[1]),
        )
        hasher = new_hasher(algorithm)
        hasher.update(b"chunk")
        assert TusCore.checksum_verdict(expected, hasher.digest(), whole=True) is None
        other = new_hasher(algorithm)
        other.update(b"chunk!")
        mismatch = TusCore.checksum_verdict(expected, other.digest(), whole=True)
        assert isinstance(mismatch, ChecksumMismatch)
        assert (mismatch.status_code, mismatch.error_code) == (460, "ERR_CHECKSUM_MISMATCH")
        # a body that did not arrive whole cannot be verified: it is rolled back, silently
        assert TusCore.checksum_verdict(expected, hasher.digest(), whole=False) is ROLL_BACK
        assert TusCore.checksum_verdict(expected, other.digest(), whole=False) is ROLL_BACK


# -- responses ----------------------------------------------------------------------------------------


def header_dict(headers: list[tuple[str, str]]) -> dict[str, str]:
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), f"repeated headers: {headers}"
    return dict(headers)


def http_date(value: str) -> float:
    assert value.endswith(" GMT"), value
    return email.utils.parsedate_to_datetime(value).timestamp()


class TestOptionsResponse:
    @pytest.mark.parametrize(
        ("options", "expected"),
        [
            (
                {"extensions": ALL_EXTENSIONS},
                {
                    "Tus-Version": "1.0.0",
                    "Tus-Extension": ",".join(ALL_EXTENSIONS),
                    "Tus-Checksum-Algorithm": "sha1,md5,sha256,sha512,crc32",
                },
            ),
            (
                {"extensions": ALL_EXTENSIONS, "max_size": 1000},
                {
                    "Tus-Version": "1.0.0",
                    "Tus-Extension": ",".join(ALL_EXTENSIONS),
                    "Tus-Max-Size": "1000",
                    "Tus-Checksum-Algorithm": "sha1,md5,sha256,sha512,crc32",
                },
            ),
            (
                {"extensions": BARE_EXTENSIONS, "max_size": 0},
                {
                    "Tus-Version": "1.0.0",
                    "Tus-Extension": "creation,creation-with-upload",
                    "Tus-Max-Size": "0",
                },
            ),
        ],
    )
    def test_options(self, options: dict[str, Any], expected: dict[str, str]) -> None:
        response = make_core(**options).options()
        # 200, not 204: some browsers refuse a 204 to a preflight
        assert response.status == 200
        assert header_dict(response.headers) == expected
        assert response.body == b""

    def test_each_call_is_a_fresh_list(self) -> None:
        first = CORE.options()
        first.headers.append(("X", "y"))
        assert ("X", "y") not in CORE.options().headers


class TestHeadResponse:
    @pytest.mark.parametrize(
        ("upload", "partial_urls", "expected"),
        [
            pytest.param(
                info(size=10, offset=3),
                [],
                {"Upload-Offset": "3", "Upload-Length": "10", "Content-Length": "3"},
                id="plain",
            ),
            pytest.param(
                info(size=0),
                [],
                {"Upload-Offset": "0", "Upload-Length": "0", "Content-Length": "0"},
                id="empty",
            ),
            pytest.param(
                info(size=None, offset=5),
                [],
                {"Upload-Offset": "5", "Upload-Defer-Length": "1", "Content-Length": "5"},
                id="deferred",
            ),
            pytest.param(
                info(size=5, offset=5, metadata={"filename": "a.txt", "empty": ""}),
                [],
                {
                    "Upload-Offset": "5",
                    "Upload-Length": "5",
                    "Content-Length": "5",
                    "Upload-Metadata": f"filename {b64(b'a.txt')},empty",
                },
                id="metadata",
            ),
            pytest.param(
                # metadata nobody can send (a key with a space) is left out, header and all
                info(size=1, metadata={"with space": "x"}),
                [],
                {"Upload-Offset": "0", "Upload-Length": "1", "Content-Length": "0"},
                id="unsendable-metadata",
            ),
            pytest.param(
                info(size=3, is_partial=True),
                [],
                {
                    "Upload-Offset": "0",
                    "Upload-Length": "3",
                    "Content-Length": "0",
                    "Upload-Concat": "partial",
                },
                id="partial",
            ),
            pytest.param(
                info(size=7, offset=7, is_final=True, partial_uploads=("a", "b")),
                ["http://h/files/a", "http://h/files/b"],
                {
                    "Upload-Offset": "7",
                    "Upload-Length": "7",
                    "Content-Length": "7",
                    "Upload-Concat": "final;http://h/files/a http://h/files/b",
                },
                id="final",
            ),
        ],
    )
    def test_head(
        self, upload: UploadInfo, partial_urls: list[str], expected: dict[str, str]
    ) -> None:
        response = CORE.head(upload, partial_urls, NOW)
        assert response.status == 200
        assert response.body == b""
        # "The Server MUST prevent the client and/or proxies from caching the response"
        assert header_dict(response.headers) == {**expected, "Cache-Control": "no-store"}

    @pytest.mark.parametrize(
        ("upload", "expires"),
        [
            (info(size=10, offset=3, modified_at=NOW - 100), NOW + 500),
            (info(size=None, modified_at=NOW), NOW + 600),
            # a store that does not know when: from now
            (info(size=10, modified_at=None), NOW + 600),
            # a complete upload never expires
            (info(size=10, offset=10, modified_at=NOW), None),
        ],
    )
    def test_upload_expires(self, upload: UploadInfo, expires: float | None) -> None:
        core = make_core(expire_after=600)
        headers = header_dict(core.head(upload, [], NOW).headers)
        if expires is None:
            assert "Upload-Expires" not in headers
        else:
            assert http_date(headers["Upload-Expires"]) == expires
        # without expiration, never
        assert "Upload-Expires" not in header_dict(CORE.head(upload, [], NOW).headers)


class TestAppendedResponse:
    @pytest.mark.parametrize(
        ("created", "with_body", "status", "expected"),
        [
            # "The Server MUST acknowledge successful PATCH requests with the 204 No Content
            # status. It MUST include the Upload-Offset header containing the new offset."
            (False, True, 204, [("Upload-Offset", "4")]),
            # creation: 201, with the offset only if a body came (creation-with-upload)
            (True, False, 201, []),
            (True, True, 201, [("Upload-Offset", "4")]),
        ],
    )
    def test_appended(
        self, created: bool, with_body: bool, status: int, expected: list[tuple[str, str]]
    ) -> None:
        upload = info(size=10, offset=4)
        response = CORE.appended(upload, NOW, created=created, with_body=with_body)
        assert (response.status, response.headers, response.body) == (status, expected, b"")
        expiring = make_core(expire_after=600).appended(
            upload, NOW, created=created, with_body=with_body
        )
        assert expiring.headers == [
            *expected,
            ("Upload-Expires", email.utils.formatdate(NOW + 600, usegmt=True)),
        ]

    def test_no_upload_expires_once_complete(self) -> None:
        core = make_core(expire_after=600)
        done = info(size=4, offset=4)
        assert core.appended(done, NOW, created=False, with_body=True).headers == [
            ("Upload-Offset", "4")
        ]


class TestErrorResponse:
    @pytest.mark.parametrize(
        ("error", "status", "body", "extra"),
        [
            (OffsetMismatch("off"), 409, b"ERR_MISMATCHED_OFFSET: off\n", []),
            (
                UploadIsFinal(),
                403,
                b"ERR_MODIFY_FINAL: modifying a final upload is not allowed\n",
                [],
            ),
            (
                UnsupportedVersion(),
                412,
                b"ERR_UNSUPPORTED_VERSION: missing, invalid or unsupported Tus-Resumable header\n",
                [("Tus-Version", "1.0.0")],
            ),
            (
                MethodNotAllowed("no", allow="POST, OPTIONS"),
                405,
                b"ERR_METHOD_NOT_ALLOWED: no\n",
                [("Allow", "POST, OPTIONS")],
            ),
            (
                RangeNotSatisfiable(11),
                416,
                b"ERR_RANGE_NOT_SATISFIABLE: requested range not satisfiable\n",
                [("Content-Range", "bytes */11")],
            ),
            (ChecksumMismatch("x"), 460, b"ERR_CHECKSUM_MISMATCH: x\n", []),
            # a message is UTF-8 in the body
            (UploadNotFound("é"), 404, "ERR_UPLOAD_NOT_FOUND: é\n".encode(), []),
            (OriginNotAllowed(), 403, b"ERR_ORIGIN_NOT_ALLOWED: origin is not allowed\n", []),
        ],
    )
    def test_error(
        self, error: TusError, status: int, body: bytes, extra: list[tuple[str, str]]
    ) -> None:
        response = TusCore.error(error)
        assert response.status == status
        assert response.body == body
        assert response.headers == [("Content-Type", "text/plain; charset=utf-8"), *extra]

    def test_internal_error_says_nothing_more(self) -> None:
        response = TusCore.internal_error()
        assert (response.status, response.body) == (
            500,
            b"ERR_INTERNAL_SERVER_ERROR: internal server error\n",
        )
        assert response.headers == [("Content-Type", "text/plain; charset=utf-8")]


# -- CORS -------------------------------------------------------------------------------------------------

CORS = [
    ("Access-Control-Allow-Origin", "https://app.example"),
    ("Access-Control-Expose-Headers", EXPOSE_HEADERS),
]
PREFLIGHT = [
    ("Access-Control-Allow-Methods", METHODS),
    ("Access-Control-Allow-Headers", ALLOW_HEADERS),
    ("Access-Control-Max-Age", "86400"),
]
RESUMABLE = [("Tus-Resumable", "1.0.0")]
#: with CORS handling on, every answer depends on the Origin header
VARY = [("Vary", "Origin")]


def comma_set(value: str) -> set[str]:
    return {item.strip().lower() for item in value.split(",")}


class TestCors:
    @pytest.mark.parametrize(
        ("allowed", "method", "origin", "expected"),
        [
            (("*",), "HEAD", None, RESUMABLE + VARY),
            (("*",), "HEAD", "https://app.example", RESUMABLE + VARY + CORS),
            (("*",), "OPTIONS", "https://app.example", RESUMABLE + VARY + CORS + PREFLIGHT),
            (("https://app.example",), "PATCH", "https://app.example", RESUMABLE + VARY + CORS),
            (
                ("https://other.example", "https://app.example"),
                "OPTIONS",
                "https://app.example",
                RESUMABLE + VARY + CORS + PREFLIGHT,
            ),
            (("https://good.example",), "OPTIONS", "https://app.example", RESUMABLE + VARY),
            # CORS disabled: no CORS headers, no origin check
            ((), "OPTIONS", "https://app.example", RESUMABLE),
        ],
    )
    def test_common_headers(
        self,
        allowed: tuple[str, ...],
        method: str,
        origin: str | None,
        expected: list[tuple[str, str]],
    ) -> None:
        core = make_core(cors_allow_origins=allowed)
        headers = {} if origin is None else {"Origin": origin}
        assert core.common_headers(request(method, UPLOAD, headers, core)) == expected

    def test_what_a_browser_client_needs(self) -> None:
        methods = comma_set(METHODS)
        assert methods == {"post", "head", "patch", "options", "get", "delete"}
        assert {
            "tus-resumable",
            "upload-length",
            "upload-offset",
            "upload-metadata",
            "upload-defer-length",
            "upload-concat",
            "upload-checksum",
            "content-type",
            "x-http-method-override",
            "x-requested-with",
            "authorization",
        } <= comma_set(ALLOW_HEADERS)
        assert {
            "upload-offset",
            "location",
            "upload-length",
            "tus-version",
            "tus-resumable",
            "tus-max-size",
            "tus-extension",
            "tus-checksum-algorithm",
            "upload-metadata",
            "upload-defer-length",
            "upload-concat",
            "upload-expires",
        } <= comma_set(EXPOSE_HEADERS)

    @pytest.mark.parametrize(
        ("allowed", "origin", "host", "refused"),
        [
            (("*",), "https://any.example", None, False),
            (("https://good.example",), "https://good.example", None, False),
            (("https://good.example",), "https://evil.example", None, True),
            (("https://good.example",), "null", None, True),
            ((), "https://evil.example", None, False),
            # a page of the server itself (the upload page): same origin, never refused
            (("https://good.example",), "http://127.0.0.1:1080", "127.0.0.1:1080", False),
            (("https://good.example",), "https://Tus.Example", "tus.example", False),
            (("https://good.example",), "http://127.0.0.1:1081", "127.0.0.1:1080", True),
            (("https://good.example",), "http://evil.example", "tus.example", True),
            (("https://good.example",), "null", "null", True),
        ],
    )
    @pytest.mark.parametrize("method", ["OPTIONS", "POST", "HEAD", "PATCH", "GET", "DELETE"])
    def test_origin_check(
        self, allowed: tuple[str, ...], origin: str, host: str | None, refused: bool, method: str
    ) -> None:
        core = make_core(cors_allow_origins=allowed)
        headers = {**PATCH, "Upload-Length": "1", "Origin": origin}
        if host is not None:
            headers["Host"] = host
        path = "/files/" if method in ("OPTIONS", "POST") else UPLOAD
        if refused:
            error = refuse(method, path, headers, core)
            assert type(error) is OriginNotAllowed
            assert (error.status_code, error.error_code) == (403, "ERR_ORIGIN_NOT_ALLOWED")
        else:
            parse(method, path, headers, core)

    def test_the_origin_is_checked_first(self) -> None:
        core = make_core(cors_allow_origins=("https://good.example",))
        error = refuse("HEAD", "/elsewhere", {"Origin": "https://evil.example"}, core)
        assert type(error) is OriginNotAllowed


# -- response_headers: framing ---------------------------------------------------------------------------


class TestResponseHeaders:
    @pytest.mark.parametrize(
        ("method", "override", "response", "content_length"),
        [
            # a body: its length
            pytest.param("POST", None, Response(400, [], b"ERR_X: y\n"), "9", id="error"),
            pytest.param("OPTIONS", None, Response(200), "0", id="options"),
            pytest.param("POST", None, Response(201), "0", id="created"),
            # 204 and 304 carry no Content-Length at all (RFC 9110 §8.6)
            pytest.param("PATCH", None, Response(204, [("Upload-Offset", "3")]), None, id="204"),
            pytest.param("DELETE", None, Response(204), None, id="delete"),
            # a HEAD response announces what a GET would send
            pytest.param(
                "HEAD", None, Response(200, [("Content-Length", "1234")]), "1234", id="head"
            ),
            # an error to a HEAD: the length of the body it does not send
            pytest.param("HEAD", None, Response(404, [], b"ERR_X: y\n"), "9", id="head-error"),
            # a POST overridden to HEAD has a body on the wire: its length is its body's
            pytest.param(
                "POST", "HEAD", Response(200, [("Content-Length", "1234")]), "0", id="override"
            ),
            pytest.param(
                "GET", None, Response(200, [("Content-Length", "1234")], b"ab"), "2", id="get"
            ),
        ],
    )
    def test_content_length(
        self, method: str, override: str | None, response: Response, content_length: str | None
    ) -> None:
        headers = {} if override is None else {"X-HTTP-Method-Override": override}
        built = CORE.response_headers(request(method, UPLOAD, headers), response, [])
        lengths = [value for name, value in built if name == "Content-Length"]
        assert lengths == ([] if content_length is None else [content_length])

    def test_order_common_extra_own(self) -> None:
        req = request("POST", "/files/", {"Origin": "https://app.example"})
        response = Response(201, [("Upload-Offset", "0")])
        location = ("Location", "http://h/files/abc")
        assert CORE.response_headers(req, response, [location]) == [
            *RESUMABLE,
            *VARY,
            *CORS,
            location,
            ("Upload-Offset", "0"),
            ("Content-Length", "0"),
        ]

    def test_every_response_carries_tus_resumable(self) -> None:
        for method in ("OPTIONS", "POST", "HEAD", "PATCH", "GET", "DELETE"):
            for response in (Response(200), Response(204), TusCore.error(UploadNotFound())):
                built = CORE.response_headers(request(method, UPLOAD), response, [])
                assert built[0] == ("Tus-Resumable", "1.0.0")
