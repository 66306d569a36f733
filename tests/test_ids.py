"""Upload IDs: the format of fresh IDs, and the gate every ID from the outside world passes."""

from __future__ import annotations

import re
from typing import Any, cast

import pytest

from anytus import InvalidUploadId, UploadNotFound, new_upload_id, validate_upload_id

#: IDs that must never reach a path: traversal, separators, dots, control and non-ASCII characters
HOSTILE_IDS = [
    pytest.param("../x", id="parent-traversal"),
    pytest.param("a/b", id="slash"),
    pytest.param("/etc/passwd", id="absolute"),
    pytest.param("a\\b", id="backslash"),
    pytest.param("", id="empty"),
    pytest.param("x" * 200, id="200-chars"),
    pytest.param("x" * 129, id="129-chars"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("ünïcödé", id="unicode"),
    pytest.param("abc\u0660", id="arabic-indic-digit"),
    pytest.param("\uff46\uff55\uff4c\uff4c", id="fullwidth"),
    pytest.param(".", id="dot"),
    pytest.param("..", id="dotdot"),
    pytest.param("a.b", id="inner-dot"),
    pytest.param("abc.info", id="suffix"),
    pytest.param(" abc", id="leading-space"),
    pytest.param("abc\n", id="trailing-newline"),
    pytest.param("a b", id="space"),
    pytest.param("a%2Fb", id="percent"),
]


class TestNewUploadId:
    def test_format_is_32_lowercase_hex(self) -> None:
        upload_id = new_upload_id()
        assert re.fullmatch(r"[0-9a-f]{32}", upload_id), upload_id

    def test_ids_are_unique(self) -> None:
        ids = {new_upload_id() for _ in range(2000)}
        assert len(ids) == 2000

    def test_fresh_ids_pass_validation(self) -> None:
        for _ in range(100):
            upload_id = new_upload_id()
            assert validate_upload_id(upload_id) == upload_id


class TestValidateUploadId:
    @pytest.mark.parametrize(
        "upload_id",
        ["a", "Z", "0", "abc-DEF_123", "_", "-", "--", "x" * 128, "0123456789abcdef" * 2],
    )
    def test_accepts_safe_ids_unchanged(self, upload_id: str) -> None:
        assert validate_upload_id(upload_id) is upload_id

    @pytest.mark.parametrize("upload_id", HOSTILE_IDS)
    def test_rejects_hostile_ids(self, upload_id: str) -> None:
        with pytest.raises(InvalidUploadId):
            validate_upload_id(upload_id)

    @pytest.mark.parametrize("value", [None, b"abc", 123])
    def test_rejects_non_strings(self, value: object) -> None:
        with pytest.raises(InvalidUploadId):
            validate_upload_id(cast("Any", value))

    def test_error_is_a_not_found_with_its_own_code(self) -> None:
        with pytest.raises(InvalidUploadId) as exc_info:
            validate_upload_id("../x")
        # to a client a malformed ID names no upload: 404, but with a distinct machine-readable code
        assert isinstance(exc_info.value, UploadNotFound)
        assert exc_info.value.status_code == 404
        assert exc_info.value.error_code == "ERR_INVALID_UPLOAD_ID"

    def test_error_message_is_bounded(self) -> None:
        with pytest.raises(InvalidUploadId) as exc_info:
            validate_upload_id("/" * 100_000)
        # a hostile ID must not blow up logs
        assert len(str(exc_info.value)) < 300
