"""Upload IDs: how they are made and how IDs from the outside world are checked."""

from __future__ import annotations

import re
import secrets

from ._exceptions import InvalidUploadId

__all__ = ("MAX_UPLOAD_ID_LENGTH", "new_upload_id", "validate_upload_id")

#: IDs longer than this are refused; tusd's own are 32 characters
MAX_UPLOAD_ID_LENGTH = 128

# Stricter than tusd's validateUploadId: no "/", no ".", so an ID can never leave the store directory
# or collide with our own suffixes (".info", ".lock", ".stop", ".bin").
_VALID_ID = re.compile(r"[A-Za-z0-9_-]+")


def new_upload_id() -> str:
    """Return a fresh upload ID: 32 lowercase hex characters from a cryptographic source."""
    return secrets.token_hex(16)


def validate_upload_id(upload_id: str) -> str:
    """Return *upload_id* unchanged if it is safe to build a path from, else raise.

    :raises ~anytus.InvalidUploadId: if the ID is empty, too long, or has a character outside
        ``[A-Za-z0-9_-]`` (path separators, ``.``, NUL, anything non-ASCII)
    """
    if (
        not isinstance(upload_id, str)
        or not 0 < len(upload_id) <= MAX_UPLOAD_ID_LENGTH
        or _VALID_ID.fullmatch(upload_id) is None
    ):
        raise InvalidUploadId(f"invalid upload ID: {upload_id!r:.80}")
    return upload_id
