"""`UploadInfo`: what is known about one upload, and its tusd-compatible JSON form."""

from __future__ import annotations

import dataclasses
import json

# at run time too: UploadInfo is public, and its annotations must resolve (typing.get_type_hints,
# as pydantic and FastAPI do for a dataclass in a response model)
from collections.abc import Mapping  # noqa: TC003
from typing import Any

__all__ = ("UploadInfo",)


@dataclasses.dataclass(frozen=True, kw_only=True, slots=True)
class UploadInfo:
    """An upload's state, as stored in ``[id].info`` (tusd's ``FileInfo``).

    Pass one without ``id`` to :meth:`FileStore.new_upload <anytus.FileStore.new_upload>`; the store
    returns a copy with the ID, storage paths and offset filled in. Instances are immutable: use
    :func:`dataclasses.replace` to derive a changed copy.
    """

    #: total length in bytes, or ``None`` while the length is deferred (creation-defer-length)
    size: int | None = None
    #: ``Upload-Metadata`` pairs; values are text (bytes that are not UTF-8 survive as surrogates)
    metadata: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: a partial upload, to be concatenated into a final one
    is_partial: bool = False
    #: a final upload, made by concatenating partial uploads; it accepts no writes
    is_final: bool = False
    #: for a final upload: the IDs of its partial uploads, in order
    partial_uploads: tuple[str, ...] = ()
    #: the upload's ID; empty until the store assigns one
    id: str = ""
    #: bytes received so far: always the size of the data file, never a stored number
    offset: int = 0
    #: where the store keeps the upload (tusd's ``Storage``: ``Type``, ``Path``, ``InfoPath``)
    storage: Mapping[str, str] = dataclasses.field(default_factory=dict)
    #: when data was last written (the data file's mtime, seconds since the epoch); not stored
    modified_at: float | None = None

    def __post_init__(self) -> None:
        if self.size is not None and self.size < 0:
            raise ValueError(f"size must not be negative, got {self.size}")
        if self.offset < 0:
            raise ValueError(f"offset must not be negative, got {self.offset}")

    @property
    def size_is_deferred(self) -> bool:
        """Whether the length is not known yet (``Upload-Defer-Length: 1``)."""
        return self.size is None

    @property
    def is_complete(self) -> bool:
        """Whether every byte has arrived: the size is known and the offset has reached it."""
        return self.size is not None and self.offset == self.size

    def to_json(self) -> bytes:
        """Serialize with tusd's keys, as tusd's filestore writes ``[id].info``."""
        document = {
            "ID": self.id,
            "Size": self.size if self.size is not None else 0,
            "SizeIsDeferred": self.size is None,
            "Offset": self.offset,
            "MetaData": dict(self.metadata),
            "IsPartial": self.is_partial,
            "IsFinal": self.is_final,
            "PartialUploads": list(self.partial_uploads) if self.partial_uploads else None,
            "Storage": dict(self.storage) if self.storage else None,
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> UploadInfo:
        """Parse ``[id].info`` as written by anytus or by any tusd version from 0.9 to v2.

        :raises ValueError: if *data* is not such a document
        """
        document: Any = json.loads(data)
        if not isinstance(document, dict):
            raise ValueError("upload info is not a JSON object")  # noqa: TRY004
        upload_id = _typed(document, "ID", str, "")
        size = _typed(document, "Size", int, 0)
        deferred = _typed(document, "SizeIsDeferred", bool, False)
        metadata = _typed(document, "MetaData", dict, None) or {}
        partials = _typed(document, "PartialUploads", list, None) or []
        storage = _typed(document, "Storage", dict, None) or {}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise ValueError("MetaData must map strings to strings")
        if not all(isinstance(p, str) for p in partials):
            raise ValueError("PartialUploads must be a list of strings")
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in storage.items()):
            raise ValueError("Storage must map strings to strings")
        return cls(
            id=upload_id,
            size=None if deferred else size,
            offset=_typed(document, "Offset", int, 0),
            metadata=metadata,
            is_partial=_typed(document, "IsPartial", bool, False),
            is_final=_typed(document, "IsFinal", bool, False),
            partial_uploads=tuple(partials),
            storage=storage,
        )


def _typed(document: dict[str, Any], key: str, kind: type, default: Any) -> Any:
    value = document.get(key, default)
    if value is None:
        return default
    # bool is an int in Python, but a JSON true is no size
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ValueError(f"{key} must be of type {kind.__name__}, got {value!r:.40}")
    return value
