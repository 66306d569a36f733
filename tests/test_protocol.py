"""The sans-IO protocol module: header parsing and building, without an event loop."""

from __future__ import annotations

import base64

import pytest

from anytus import (
    InvalidHeader,
    InvalidUploadId,
    UnsupportedChecksumAlgorithm,
    UnsupportedVersion,
)
from anytus._exceptions import RangeNotSatisfiable
from anytus._protocol import (
    MAX_INTEGER,
    ByteRange,
    Concat,
    Route,
    build_url,
    check_tus_resumable,
    content_disposition,
    content_type_for,
    extract_upload_id,
    format_http_date,
    parse_checksum,
    parse_concat,
    parse_defer_length,
    parse_integer,
    parse_metadata,
    parse_range,
    route,
    serialize_concat,
    serialize_metadata,
    valid_host,
)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class TestTusResumable:
    def test_accepts_1_0_0(self) -> None:
        check_tus_resumable("1.0.0")
        check_tus_resumable(" 1.0.0 ")

    @pytest.mark.parametrize("value", [None, "", "0.2.2", "1.0", "1.0.0, 0.2.2", "2.0.0"])
    def test_refuses_anything_else(self, value: str | None) -> None:
        with pytest.raises(UnsupportedVersion) as info:
            check_tus_resumable(value)
        assert info.value.status_code == 412


class TestIntegers:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [("0", 0), ("1", 1), ("0042", 42), (str(MAX_INTEGER), MAX_INTEGER)],
    )
    def test_valid(self, value: str, expected: int) -> None:
        assert parse_integer(value, "Upload-Length") == expected

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "-1",
            "-5",
            "+1",
            " 1",
            "1 ",
            "1.0",
            "1e3",
            "0x10",
            "1_000",
            "١٢",  # Arabic-Indic digits: int() takes them
            "abc",
            str(MAX_INTEGER + 1),
            "9" * 19,
            "1" * 40,
        ],
    )
    def test_invalid(self, value: str) -> None:
        with pytest.raises(InvalidHeader) as info:
            parse_integer(value, "Upload-Offset")
        assert info.value.status_code == 400
        assert "Upload-Offset" in info.value.message

    def test_defer_length(self) -> None:
        assert parse_defer_length("1") is True
        for value in ("0", "true", "2", ""):
            with pytest.raises(InvalidHeader):
                parse_defer_length(value)


class TestMetadata:
    @pytest.mark.parametrize(
        ("header", "expected"),
        [
            ("", {}),
            ("   ", {}),
            (
                f"filename {b64(b'world_domination_plan.pdf')}",
                {"filename": "world_domination_plan.pdf"},
            ),
            (
                f"filename {b64(b'a.txt')},is_confidential",
                {"filename": "a.txt", "is_confidential": ""},
            ),
            # the space may be there with an empty value
            ("empty ", {"empty": ""}),
            (f"a {b64(b'1')}, b {b64(b'2')}", {"a": "1", "b": "2"}),
            # values are bytes: UTF-8 text, and bytes that are not UTF-8 at all
            (f"name {b64('größe ✓'.encode())}", {"name": "größe ✓"}),
            (f"raw {b64(bytes([0xFF, 0x00, 0x80]))}", {"raw": "\udcff\x00\udc80"}),
            # keys are UTF-8 too (tus: "SHOULD be ASCII")
            (f"{'clé'.encode().decode('latin-1')} {b64(b'v')}", {"clé": "v"}),
        ],
    )
    def test_valid(self, header: str, expected: dict[str, str]) -> None:
        assert parse_metadata(header) == expected

    @pytest.mark.parametrize(
        "header",
        [
            f"a {b64(b'1')},a {b64(b'2')}",  # duplicate key
            "a !!!",  # not base64
            "a YWJj=",  # bad padding
            "a YWJ",  # missing padding
            f"a  {b64(b'1')}",  # two spaces
            f"a {b64(b'1')} {b64(b'2')}",  # three parts
            f",a {b64(b'1')}",  # empty element
            f"a {b64(b'1')},",  # trailing comma
            "a\x01b dmFsdWU=",  # control character in the key
            "a\x7fb dmFsdWU=",
        ],
    )
    def test_invalid(self, header: str) -> None:
        with pytest.raises(InvalidHeader):
            parse_metadata(header)

    def test_max_length(self) -> None:
        header = f"k {b64(b'x' * 100)}"
        assert parse_metadata(header, max_length=len(header)) == {"k": "x" * 100}
        with pytest.raises(InvalidHeader):
            parse_metadata(header, max_length=len(header) - 1)

    @pytest.mark.parametrize(
        "metadata",
        [
            {},
            {"filename": "a.txt"},
            {"empty": "", "filetype": "text/plain"},
            {"name": "größe ✓", "clé": "valeur"},
            {"raw": "\udcff\x00\udc80"},
        ],
    )
    def test_round_trip_is_byte_exact(self, metadata: dict[str, str]) -> None:
        header = serialize_metadata(metadata)
        assert parse_metadata(header) == metadata
        # headers are sent as Latin-1: every character must fit a byte
        header.encode("latin-1")

    def test_empty_value_is_a_bare_key(self) -> None:
        # a trailing space would be stripped by HTTP parsers (and h11 refuses to send one)
        assert serialize_metadata({"a": "", "b": "x"}) == f"a,b {b64(b'x')}"

    def test_unsendable_keys_are_left_out(self) -> None:
        # only an application writing through the store can make these
        metadata = {"good": "1", "with space": "2", "com,ma": "3", "cr\r\nlf": "4", "": "5"}
        assert parse_metadata(serialize_metadata(metadata)) == {"good": "1"}


class TestRoute:
    @pytest.mark.parametrize("path", ["/files/", "/files"])
    def test_collection(self, path: str) -> None:
        assert route(path, "/files/") == Route(kind="collection")

    def test_upload(self) -> None:
        assert route("/files/abc_DEF-123", "/files/") == Route(
            kind="upload", upload_id="abc_DEF-123"
        )
        # percent-encoded characters that are valid once decoded
        assert route("/files/%61bc", "/files/") == Route(kind="upload", upload_id="abc")

    @pytest.mark.parametrize("path", ["/", "/other/abc", "/filesabc", "/file/abc", ""])
    def test_not_ours(self, path: str) -> None:
        assert route(path, "/files/") is None

    @pytest.mark.parametrize(
        "segment",
        [
            "..",
            "%2E%2E",
            "a%2Fb",
            "a%2fb",
            "a/b",
            "abc/",
            "../etc/passwd",
            "%2E%2E%2Fetc%2Fpasswd",
            "a%00b",
            "a%5Cb",
            "a.info",
            "a%20b",
            "%C3%A9",
            "%",
            "%zz",
            "x" * 129,
        ],
    )
    def test_hostile_ids(self, segment: str) -> None:
        with pytest.raises(InvalidUploadId) as info:
            route("/files/" + segment, "/files/")
        assert info.value.status_code == 404
        with pytest.raises(InvalidUploadId):
            extract_upload_id(segment)

    def test_percent_decoding_happens_once(self) -> None:
        # "%252F" decodes to the three characters "%2F", which are no valid ID either
        with pytest.raises(InvalidUploadId):
            extract_upload_id("%252F")


class TestUrls:
    @pytest.mark.parametrize(
        "host", ["example.com", "example.com:8080", "127.0.0.1:1080", "[::1]:1080", "[::1]"]
    )
    def test_valid_hosts(self, host: str) -> None:
        assert valid_host(host)

    @pytest.mark.parametrize(
        "host",
        [
            "",
            "a b",
            "evil.com/path",
            "a\r\nSet-Cookie: x",
            "host:port",
            "a@b:1:2",
            "[::1",
            "h:123456",
        ],
    )
    def test_invalid_hosts(self, host: str) -> None:
        assert not valid_host(host)

    def test_build_url(self) -> None:
        assert (
            build_url("https", "ex.com:8443", "/files/", "abc") == "https://ex.com:8443/files/abc"
        )
        assert build_url("http", None, "/files/", "abc") == "/files/abc"


class TestConcat:
    def test_partial(self) -> None:
        assert parse_concat("partial", "/files/") == Concat(kind="partial")

    def test_final_with_absolute_and_relative_urls(self) -> None:
        value = "final;http://a.example/files/abc https://b:1/files/def /files/ghi jkl"
        assert parse_concat(value, "/files/") == Concat(
            kind="final", partial_ids=("abc", "def", "ghi", "jkl")
        )

    def test_repeats_keep_their_order(self) -> None:
        assert parse_concat("final;/files/b /files/a /files/b", "/files/").partial_ids == (
            "b",
            "a",
            "b",
        )

    def test_other_base_path(self) -> None:
        assert parse_concat("final;/api/up/x", "/api/up/").partial_ids == ("x",)

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "partial;",
            "Partial",
            "final",
            "final;",
            "final; ",
            "final:/files/a",
            "other;/files/a",
            "final;/other/a",
            "final;/files/",
            "final;/files/a/b",
            "final;/files/..%2Fx",
            "final;/files/a%2Fb",
            "final;../x",
            "final;/files/../x",
            "final;/files/a?x=1",
            "final;/files/a#f",
            "final;ftp://host/files/a",
            "final;http:///files/a",
            "final;/files/a%00",
            "final;/files/.info",
        ],
    )
    def test_invalid(self, value: str) -> None:
        with pytest.raises(InvalidHeader):
            parse_concat(value, "/files/")

    def test_serialize(self) -> None:
        assert serialize_concat(is_partial=True, is_final=False) == "partial"
        assert serialize_concat(is_partial=False, is_final=False) is None
        assert (
            serialize_concat(
                is_partial=False,
                is_final=True,
                partial_urls=["http://h/files/a", "http://h/files/b"],
            )
            == "final;http://h/files/a http://h/files/b"
        )


class TestChecksum:
    @pytest.mark.parametrize(
        ("algorithm", "size"),
        [("sha1", 20), ("md5", 16), ("sha256", 32), ("sha512", 64), ("crc32", 4)],
    )
    def test_valid(self, algorithm: str, size: int) -> None:
        digest = bytes(range(size))
        parsed = parse_checksum(f"{algorithm} {b64(digest)}")
        assert (parsed.algorithm, parsed.digest) == (algorithm, digest)

    @pytest.mark.parametrize("algorithm", ["SHA1", "sha3", "blake2b", "crc64", "adler32"])
    def test_unsupported_algorithm(self, algorithm: str) -> None:
        with pytest.raises(UnsupportedChecksumAlgorithm) as info:
            parse_checksum(f"{algorithm} {b64(bytes(20))}")
        assert info.value.status_code == 400

    @pytest.mark.parametrize(
        "value",
        [
            "",
            "sha1",
            "sha1 ",
            f"sha1{b64(bytes(20))}",
            "sha1 !!!not-base64!!!",
            f"sha1 {b64(bytes(19))}",  # wrong digest size
            f"md5 {b64(bytes(20))}",
        ],
    )
    def test_malformed(self, value: str) -> None:
        with pytest.raises(InvalidHeader):
            parse_checksum(value)


class TestRange:
    @pytest.mark.parametrize(
        ("header", "size", "expected"),
        [
            ("bytes=0-4", 11, (0, 5)),
            ("bytes=0-0", 11, (0, 1)),
            ("bytes=6-", 11, (6, 11)),
            ("bytes=6-100", 11, (6, 11)),
            ("bytes=-3", 11, (8, 11)),
            ("bytes=-100", 11, (0, 11)),
            ("bytes=10-10", 11, (10, 11)),
            ("BYTES = 1-2", 11, (1, 3)),
        ],
    )
    def test_satisfiable(self, header: str, size: int, expected: tuple[int, int]) -> None:
        assert parse_range(header, size) == ByteRange(start=expected[0], end=expected[1], size=size)

    def test_content_range(self) -> None:
        assert ByteRange(start=0, end=5, size=11).content_range == "bytes 0-4/11"

    @pytest.mark.parametrize(
        "header",
        [
            "items=0-4",  # another unit
            "bytes",
            "bytes=",
            "bytes=-",
            "bytes=a-b",
            "bytes=5-4",  # last < first: invalid, ignored
            "bytes=+1-2",
            "bytes=0-1,3-4",  # several ranges: answered with the whole body
            "bytes=1-2-3",
        ],
    )
    def test_ignored(self, header: str) -> None:
        assert parse_range(header, 11) is None

    @pytest.mark.parametrize(
        ("header", "size"),
        [
            ("bytes=11-", 11),
            ("bytes=20-30", 11),
            ("bytes=-0", 11),
            ("bytes=0-", 0),
            ("bytes=-5", 0),
        ],
    )
    def test_not_satisfiable(self, header: str, size: int) -> None:
        with pytest.raises(RangeNotSatisfiable) as info:
            parse_range(header, size)
        assert info.value.status_code == 416
        assert info.value.size == size


class TestDownloadHeaders:
    @pytest.mark.parametrize(
        ("filetype", "expected"),
        [
            (None, ("application/octet-stream", False)),
            ("image/png", ("image/png", True)),
            ("text/plain; charset=utf-8", ("text/plain; charset=utf-8", True)),
            ("text/html", ("text/html", False)),
            ("application/pdf", ("application/pdf", False)),
            ("image/svg+xml", ("image/svg+xml", False)),
            ("not a type", ("application/octet-stream", False)),
            ("text/plain\r\nX-Evil: 1", ("application/octet-stream", False)),
            ("text/", ("application/octet-stream", False)),
        ],
    )
    def test_content_type(self, filetype: str | None, expected: tuple[str, bool]) -> None:
        assert content_type_for(filetype) == expected

    @pytest.mark.parametrize(
        ("filename", "inline", "expected"),
        [
            (None, False, "attachment"),
            ("", True, "inline"),
            ("a.txt", False, "attachment; filename=\"a.txt\"; filename*=UTF-8''a.txt"),
            ("a b.txt", True, "inline; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt"),
            (
                "größe.pdf",
                False,
                "attachment; filename=\"gr__e.pdf\"; filename*=UTF-8''gr%C3%B6%C3%9Fe.pdf",
            ),
            (
                'x"; evil=1\\.txt',
                False,
                "attachment; filename=\".txt\"; filename*=UTF-8''.txt",
            ),
            ("../../etc/passwd", False, "attachment; filename=\"passwd\"; filename*=UTF-8''passwd"),
            ("C:\\dir\\f.txt", False, "attachment; filename=\"f.txt\"; filename*=UTF-8''f.txt"),
            ("..", False, "attachment"),
            ("a\r\nb", False, "attachment; filename=\"a__b\"; filename*=UTF-8''a%0D%0Ab"),
            ("100%.txt", False, "attachment; filename=\"100_.txt\"; filename*=UTF-8''100%25.txt"),
        ],
    )
    def test_content_disposition(self, filename: str | None, inline: bool, expected: str) -> None:
        value = content_disposition(filename, inline=inline)
        assert value == expected
        value.encode("ascii")  # always sendable

    def test_http_date(self) -> None:
        assert format_http_date(0) == "Thu, 01 Jan 1970 00:00:00 GMT"
        assert format_http_date(1_700_000_000.7) == "Tue, 14 Nov 2023 22:13:20 GMT"
