"""`UploadInfo`: its invariants and its tusd-compatible JSON (``[id].info``) in every tusd dialect."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from _helpers import TUSD_KEYS
from anytus import UploadInfo


def _document(info: UploadInfo) -> dict[str, Any]:
    document = json.loads(info.to_json())
    assert isinstance(document, dict)
    return document


class TestFields:
    def test_defaults(self) -> None:
        info = UploadInfo()
        assert info.id == ""
        assert info.size is None
        assert info.size_is_deferred
        assert info.offset == 0
        assert dict(info.metadata) == {}
        assert not info.is_partial
        assert not info.is_final
        assert info.partial_uploads == ()
        assert dict(info.storage) == {}
        assert info.modified_at is None
        assert not info.is_complete

    @pytest.mark.parametrize(
        ("size", "offset", "complete"),
        [
            (None, 0, False),
            (None, 5, False),
            (0, 0, True),
            (10, 0, False),
            (10, 9, False),
            (10, 10, True),
        ],
    )
    def test_is_complete(self, size: int | None, offset: int, complete: bool) -> None:
        info = UploadInfo(size=size, offset=offset)
        assert info.is_complete is complete
        assert info.size_is_deferred is (size is None)

    def test_negative_size_is_refused(self) -> None:
        with pytest.raises(ValueError, match="size"):
            UploadInfo(size=-1)

    def test_negative_offset_is_refused(self) -> None:
        with pytest.raises(ValueError, match="offset"):
            UploadInfo(size=1, offset=-1)

    def test_is_immutable(self) -> None:
        info = UploadInfo(size=1)
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.size = 2  # type: ignore[misc]

    def test_keyword_only(self) -> None:
        with pytest.raises(TypeError):
            UploadInfo(42)  # type: ignore[call-arg]


class TestToJson:
    def test_keys_are_exactly_tusds(self) -> None:
        info = UploadInfo(
            id="abc",
            size=42,
            offset=7,
            metadata={"filename": "a.bin"},
            storage={"Type": "filestore", "Path": "/s/abc.bin", "InfoPath": "/s/abc.info"},
        )
        document = _document(info)
        assert set(document) == TUSD_KEYS
        assert document == {
            "ID": "abc",
            "Size": 42,
            "SizeIsDeferred": False,
            "Offset": 7,
            "MetaData": {"filename": "a.bin"},
            "IsPartial": False,
            "IsFinal": False,
            "PartialUploads": None,
            "Storage": {"Type": "filestore", "Path": "/s/abc.bin", "InfoPath": "/s/abc.info"},
        }

    def test_types_are_what_go_expects(self) -> None:
        document = _document(UploadInfo(id="abc", size=3))
        # Go unmarshals into int64, bool, string: no floats, no strings for numbers
        assert type(document["Size"]) is int
        assert type(document["Offset"]) is int
        assert type(document["SizeIsDeferred"]) is bool
        assert type(document["IsPartial"]) is bool
        assert type(document["IsFinal"]) is bool
        assert type(document["ID"]) is str
        assert isinstance(document["MetaData"], dict)

    def test_deferred_size_is_zero_and_flagged(self) -> None:
        document = _document(UploadInfo(id="abc"))
        assert document["Size"] == 0
        assert document["SizeIsDeferred"] is True

    def test_final_upload_lists_its_partials(self) -> None:
        info = UploadInfo(id="f", size=9, is_final=True, partial_uploads=("p1", "p2", "p3"))
        document = _document(info)
        assert document["IsFinal"] is True
        assert document["PartialUploads"] == ["p1", "p2", "p3"]

    def test_is_utf8_json_bytes(self) -> None:
        raw = UploadInfo(id="abc", size=1, metadata={"name": "naïve ☃.txt"}).to_json()
        assert isinstance(raw, bytes)
        assert json.loads(raw.decode("utf-8"))["MetaData"] == {"name": "naïve ☃.txt"}

    @pytest.mark.parametrize(
        "info",
        [
            pytest.param(UploadInfo(), id="empty"),
            pytest.param(UploadInfo(id="abc", size=0), id="zero-size"),
            pytest.param(
                UploadInfo(
                    id="abc",
                    size=1 << 40,
                    offset=12345,
                    metadata={"filename": "x y.bin", "empty": "", "ünï": "cödé ☃"},
                    storage={"Type": "filestore", "Path": "/a/b", "InfoPath": "/a/b.info"},
                ),
                id="full",
            ),
            pytest.param(UploadInfo(id="p", size=3, is_partial=True), id="partial"),
            pytest.param(
                UploadInfo(id="f", size=None, is_final=True, partial_uploads=("a", "b")),
                id="final-deferred",
            ),
            pytest.param(UploadInfo(id="d", size=None, offset=99), id="deferred"),
        ],
    )
    def test_round_trip(self, info: UploadInfo) -> None:
        assert UploadInfo.from_json(info.to_json()) == info

    def test_modified_at_is_not_stored(self) -> None:
        info = UploadInfo(id="abc", size=1, modified_at=1234.5)
        assert "1234.5" not in info.to_json().decode()
        assert UploadInfo.from_json(info.to_json()).modified_at is None

    def test_surrogate_metadata_survives(self) -> None:
        # metadata values that were not UTF-8 bytes are kept as surrogates: they must not crash
        # the writer, and must come back unchanged
        value = b"\xff\xfeabc".decode("utf-8", "surrogateescape")
        info = UploadInfo(id="abc", size=1, metadata={"raw": value})
        assert UploadInfo.from_json(info.to_json()).metadata["raw"] == value


class TestFromTusd:
    def test_tusd_0_9(self) -> None:
        # tusd 0.9/0.10: no SizeIsDeferred, no Storage, nil slices as null
        raw = (
            b'{"ID":"6d4f3b2a1c0e9f8d7c6b5a4938271605","Size":42,"Offset":0,'
            b'"MetaData":{"filename":"a.txt","filetype":"text/plain"},"IsPartial":false,'
            b'"IsFinal":false,"PartialUploads":null}'
        )
        info = UploadInfo.from_json(raw)
        assert info.id == "6d4f3b2a1c0e9f8d7c6b5a4938271605"
        assert info.size == 42
        assert not info.size_is_deferred
        assert info.offset == 0
        assert dict(info.metadata) == {"filename": "a.txt", "filetype": "text/plain"}
        assert not info.is_partial
        assert not info.is_final
        assert info.partial_uploads == ()
        assert dict(info.storage) == {}

    def test_tusd_0_9_nil_metadata(self) -> None:
        raw = b'{"ID":"abc","Size":0,"Offset":0,"MetaData":null,"IsPartial":false,"IsFinal":false,"PartialUploads":null}'
        info = UploadInfo.from_json(raw)
        assert dict(info.metadata) == {}
        assert info.size == 0
        assert info.is_complete

    def test_tusd_0_9_final(self) -> None:
        raw = (
            b'{"ID":"fin","Size":9,"Offset":0,"MetaData":{},"IsPartial":false,'
            b'"IsFinal":true,"PartialUploads":["a","b","c"]}'
        )
        info = UploadInfo.from_json(raw)
        assert info.is_final
        assert info.partial_uploads == ("a", "b", "c")

    def test_tusd_0_11_deferred(self) -> None:
        raw = (
            b'{"ID":"abc","Size":0,"SizeIsDeferred":true,"Offset":0,"MetaData":{},'
            b'"IsPartial":false,"IsFinal":false,"PartialUploads":null}'
        )
        info = UploadInfo.from_json(raw)
        assert info.size is None
        assert info.size_is_deferred

    def test_tusd_v1(self) -> None:
        # a real v1.13 file (from TUSD_NOTES.md), Storage with Path and Type only
        raw = (
            b'{"ID":"093b5f2c4a1e48b7a9d2c3e4f5a6b7c8","Size":11,"SizeIsDeferred":false,"Offset":0,'
            b'"MetaData":{"filename":"hello.txt"},"IsPartial":false,"IsFinal":false,'
            b'"PartialUploads":null,"Storage":{"Path":"/srv/tusd-data/093b5f2c4a1e48b7a9d2c3e4f5a6b7c8",'
            b'"Type":"filestore"}}'
        )
        info = UploadInfo.from_json(raw)
        assert info.id == "093b5f2c4a1e48b7a9d2c3e4f5a6b7c8"
        assert info.size == 11
        assert dict(info.metadata) == {"filename": "hello.txt"}
        assert dict(info.storage) == {
            "Path": "/srv/tusd-data/093b5f2c4a1e48b7a9d2c3e4f5a6b7c8",
            "Type": "filestore",
        }

    def test_tusd_v2(self) -> None:
        raw = (
            b'{"ID":"abc","Size":100,"SizeIsDeferred":false,"Offset":50,"MetaData":{"k":""},'
            b'"IsPartial":true,"IsFinal":false,"PartialUploads":null,'
            b'"Storage":{"InfoPath":"/d/abc.info","Path":"/d/abc","Type":"filestore"}}'
        )
        info = UploadInfo.from_json(raw)
        assert info.size == 100
        assert info.offset == 50
        assert info.is_partial
        assert dict(info.metadata) == {"k": ""}
        assert dict(info.storage) == {
            "InfoPath": "/d/abc.info",
            "Path": "/d/abc",
            "Type": "filestore",
        }

    def test_unknown_keys_are_ignored(self) -> None:
        # Go's encoding/json ignores unknown keys; a newer tusd may add fields
        raw = b'{"ID":"abc","Size":5,"Offset":0,"FutureField":{"x":1},"MetaData":{}}'
        info = UploadInfo.from_json(raw)
        assert info.id == "abc"
        assert info.size == 5


class TestGarbage:
    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(b"", id="empty"),
            pytest.param(b"   ", id="blank"),
            pytest.param(b"{", id="open-brace"),
            pytest.param(b'{"ID":"abc","Size":4', id="torn"),
            pytest.param(b"\x00" * 64, id="nuls"),
            pytest.param(b"\xff\xfe\xfd garbage", id="binary"),
            pytest.param(b"null", id="null"),
            pytest.param(b"[]", id="array"),
            pytest.param(b"42", id="number"),
            pytest.param(b'"ID"', id="string"),
            pytest.param(b'{"ID":"abc","Size":"42"}', id="size-string"),
            pytest.param(b'{"ID":"abc","Size":4.5}', id="size-float"),
            pytest.param(b'{"ID":"abc","Size":true}', id="size-bool"),
            pytest.param(b'{"ID":"abc","Size":-1}', id="size-negative"),
            pytest.param(b'{"ID":"abc","Size":1,"Offset":-1}', id="offset-negative"),
            pytest.param(b'{"ID":5,"Size":1}', id="id-number"),
            pytest.param(b'{"ID":"abc","SizeIsDeferred":"yes"}', id="deferred-string"),
            pytest.param(b'{"ID":"abc","MetaData":{"a":1}}', id="metadata-value-number"),
            pytest.param(b'{"ID":"abc","MetaData":["a"]}', id="metadata-list"),
            pytest.param(b'{"ID":"abc","PartialUploads":[1]}', id="partials-number"),
            pytest.param(b'{"ID":"abc","PartialUploads":"a"}', id="partials-string"),
            pytest.param(b'{"ID":"abc","Storage":{"Path":1}}', id="storage-number"),
            pytest.param(b'{"ID":"abc","IsFinal":1}', id="final-number"),
        ],
    )
    def test_raises_value_error(self, raw: bytes) -> None:
        with pytest.raises(ValueError):  # noqa: PT011 - ValueError is the documented contract
            UploadInfo.from_json(raw)
