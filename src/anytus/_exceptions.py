"""The anytus exception tree.

Every error a store or the protocol handler raises on purpose is a :class:`TusError`. Each class carries
the HTTP status and a stable machine-readable error code that the protocol handler sends, so that
applications calling the store directly and HTTP clients see the same vocabulary (tusd's ``error.go``).
"""

from __future__ import annotations

import errno as _errno
import os
from typing import ClassVar

__all__ = (
    "BasePathMismatch",
    "ChecksumMismatch",
    "CorruptUploadInfo",
    "HookRejected",
    "InvalidHeader",
    "InvalidUploadId",
    "LengthAlreadyDeclared",
    "LockTimeout",
    "MaxSizeExceeded",
    "MethodNotAllowed",
    "OffsetMismatch",
    "OriginNotAllowed",
    "RangeNotSatisfiable",
    "RequestBodyTimeout",
    "ServerShuttingDown",
    "ServiceUnavailable",
    "SizeExceeded",
    "StorageError",
    "StorageFull",
    "StorageIOError",
    "StoragePermissionDenied",
    "StorageReadOnly",
    "TooManyOpenFiles",
    "TusError",
    "UnsupportedChecksumAlgorithm",
    "UnsupportedMediaType",
    "UnsupportedVersion",
    "UploadExists",
    "UploadExpired",
    "UploadInterrupted",
    "UploadIsFinal",
    "UploadNotFinished",
    "UploadNotFound",
    "storage_error",
)


class TusError(Exception):
    """Root of every error anytus raises on purpose.

    Not instantiable itself: raise one of the subclasses, which name the caller's decision.
    """

    #: the HTTP status a protocol handler answers with
    status_code: ClassVar[int] = 500
    #: a stable code that clients and logs can match on (tusd's vocabulary where it has one)
    error_code: ClassVar[str] = "ERR_INTERNAL_SERVER_ERROR"
    #: the message used when none is given
    default_message: ClassVar[str] = "internal server error"

    def __init__(self, message: str | None = None) -> None:
        if type(self) is TusError:
            raise TypeError("TusError is abstract: raise one of its subclasses")
        self.message = message if message is not None else self.default_message
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"

    @property
    def headers(self) -> list[tuple[str, str]]:
        """Extra response headers this error's HTTP answer carries (``Allow``, ``Tus-Version``...)."""
        return []


class UploadNotFound(TusError):
    """Raised when no upload exists under the given ID (or its files are gone)."""

    status_code = 404
    error_code = "ERR_UPLOAD_NOT_FOUND"
    default_message = "upload not found"


class InvalidUploadId(UploadNotFound):
    """Raised when an upload ID is not well-formed; raised before any path is built from it.

    It is an :class:`UploadNotFound`: to a client, a malformed ID names no upload.
    """

    error_code = "ERR_INVALID_UPLOAD_ID"
    default_message = "invalid upload ID"


class UploadExpired(TusError):
    """Raised when an unfinished upload has passed its expiry time."""

    status_code = 410
    error_code = "ERR_UPLOAD_EXPIRED"
    default_message = "upload has expired"


class CorruptUploadInfo(TusError):
    """Raised when an upload's ``.info`` file is unreadable (torn, truncated or not tusd's JSON)."""

    status_code = 500
    error_code = "ERR_CORRUPT_UPLOAD_INFO"
    default_message = "upload information is corrupt"

    def __init__(self, message: str | None = None, *, path: str | None = None) -> None:
        super().__init__(message)
        #: the unreadable file, if known (for the server's log; clients get the message)
        self.path = path


class LockTimeout(TusError):
    """Raised when an upload's lock could not be acquired before the timeout ran out.

    Answered with 423 Locked, which tus clients retry.
    """

    status_code = 423
    error_code = "ERR_LOCK_TIMEOUT"
    default_message = "upload is locked by another request"


class OffsetMismatch(TusError):
    """Raised when a write starts at an offset other than the upload's current offset."""

    status_code = 409
    error_code = "ERR_MISMATCHED_OFFSET"
    default_message = "mismatched offset"


class SizeExceeded(TusError):
    """Raised when data would go past the upload's declared size (what fits is stored first)."""

    status_code = 413
    error_code = "ERR_UPLOAD_SIZE_EXCEEDED"
    default_message = "upload's size exceeded"


class MaxSizeExceeded(TusError):
    """Raised when an upload or a request body is larger than the server's maximum size."""

    status_code = 413
    error_code = "ERR_MAX_SIZE_EXCEEDED"
    default_message = "maximum size exceeded"


class UploadIsFinal(TusError):
    """Raised when data is written to a final (concatenated) upload, which is immutable."""

    status_code = 403
    error_code = "ERR_MODIFY_FINAL"
    default_message = "modifying a final upload is not allowed"


class UploadNotFinished(TusError):
    """Raised when a partial upload used for concatenation is not complete."""

    status_code = 400
    error_code = "ERR_UPLOAD_NOT_FINISHED"
    default_message = "one of the partial uploads is not finished"


class LengthAlreadyDeclared(TusError):
    """Raised when a length is declared for an upload whose length is already known, or is invalid."""

    status_code = 400
    error_code = "ERR_INVALID_UPLOAD_LENGTH"
    default_message = "upload length is already declared or invalid"


class UploadInterrupted(TusError):
    """Raised when a request's upload was stopped because another request asked for its lock."""

    status_code = 400
    error_code = "ERR_UPLOAD_INTERRUPTED"
    default_message = "upload has been interrupted by another request for this upload"


class InvalidHeader(TusError):
    """Raised when a request header is missing, malformed or out of range."""

    status_code = 400
    error_code = "ERR_INVALID_HEADER"
    default_message = "invalid header"


class UnsupportedVersion(TusError):
    """Raised when a request's ``Tus-Resumable`` is missing or names a version we do not speak."""

    status_code = 412
    error_code = "ERR_UNSUPPORTED_VERSION"
    default_message = "missing, invalid or unsupported Tus-Resumable header"

    @property
    def headers(self) -> list[tuple[str, str]]:
        # "it MUST respond with the 412 Precondition Failed status and MUST include the
        # Tus-Version header into the response"
        return [("Tus-Version", "1.0.0")]


class UnsupportedMediaType(TusError):
    """Raised when a request body has the wrong ``Content-Type``."""

    status_code = 415
    error_code = "ERR_INVALID_CONTENT_TYPE"
    default_message = "missing or invalid Content-Type header"


class UnsupportedChecksumAlgorithm(TusError):
    """Raised when ``Upload-Checksum`` names an algorithm we do not support."""

    status_code = 400
    error_code = "ERR_UNSUPPORTED_CHECKSUM_ALGORITHM"
    default_message = "unsupported checksum algorithm"


class ChecksumMismatch(TusError):
    """Raised when a chunk's checksum does not match ``Upload-Checksum``; the chunk is discarded."""

    status_code = 460
    error_code = "ERR_CHECKSUM_MISMATCH"
    default_message = "checksum mismatch"


class MethodNotAllowed(TusError):
    """Raised when a request's method is not supported on its URL."""

    status_code = 405
    error_code = "ERR_METHOD_NOT_ALLOWED"
    default_message = "method not allowed"

    def __init__(self, message: str | None = None, *, allow: str = "") -> None:
        super().__init__(message)
        #: the methods the resource does allow (the ``Allow`` header), comma-separated
        self.allow = allow

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Allow", self.allow)] if self.allow else []


class HookRejected(TusError):
    """Raised by an application hook (such as ``on_create``) to refuse a request.

    Unlike the other errors, the status code is chosen per instance.
    """

    error_code = "ERR_REJECTED_BY_HOOK"
    default_message = "request rejected by the server"

    def __init__(self, status_code: int = 400, message: str | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code  # type: ignore[misc]


class RangeNotSatisfiable(TusError):
    """Raised when a download's ``Range`` lies wholly outside the stored bytes."""

    status_code = 416
    error_code = "ERR_RANGE_NOT_SATISFIABLE"
    default_message = "requested range not satisfiable"

    def __init__(self, size: int, message: str | None = None) -> None:
        super().__init__(message)
        #: the number of bytes there are, for ``Content-Range: bytes */size``
        self.size = size

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Content-Range", f"bytes */{self.size}")]


class RequestBodyTimeout(TusError):
    """Raised when a request body stalls for longer than the server's idle timeout.

    Answered with 500, as tusd does, because tus clients retry on 5xx and not on most 4xx.
    """

    status_code = 500
    error_code = "ERR_READ_TIMEOUT"
    default_message = "timeout while reading request body"


class OriginNotAllowed(TusError):
    """Raised when a cross-origin request comes from an origin the server does not allow."""

    status_code = 403
    error_code = "ERR_ORIGIN_NOT_ALLOWED"
    default_message = "origin is not allowed"


class BasePathMismatch(TusError):
    """Raised when an app's ``base_path`` lies outside the path it is mounted under (ASGI
    ``root_path``), so that no request could ever reach it: a configuration error."""

    status_code = 500
    error_code = "ERR_BASE_PATH_MISMATCH"
    default_message = "base_path is outside the mount"


class StorageError(TusError):
    """Raised when the storage fails for a reason that has no class of its own; the subclasses
    name the common kinds (full, permission denied, read-only, I/O error).

    The message sent to clients says what kind of failure it was, not where: the path stays in
    :attr:`path`, for the server's log.
    """

    status_code = 500
    error_code = "ERR_STORAGE"
    default_message = "the storage failed"

    def __init__(
        self, message: str | None = None, *, path: str | None = None, errno: int | None = None
    ) -> None:
        super().__init__(message)
        #: the file or directory the failed system call was about, if known
        self.path = path
        #: the operating system's error number, if the failure came from a system call
        self.errno = errno


class StorageFull(StorageError):
    """Raised when the storage has no space left (or the quota is used up).

    Answered with 507 Insufficient Storage; the bytes that fitted are stored and counted.
    """

    status_code = 507
    error_code = "ERR_STORAGE_FULL"
    default_message = "no space left in the storage"


class StoragePermissionDenied(StorageError):
    """Raised when the server is not allowed to read or write a file of its storage."""

    error_code = "ERR_STORAGE_PERMISSION"
    default_message = "the server is not allowed to access its storage"


class StorageReadOnly(StorageError):
    """Raised when the storage is on a read-only file system."""

    error_code = "ERR_STORAGE_READ_ONLY"
    default_message = "the storage is read-only"


class StorageIOError(StorageError):
    """Raised when the storage device fails to read or write (an I/O error)."""

    error_code = "ERR_STORAGE_IO"
    default_message = "the storage failed to read or write"


class ServiceUnavailable(TusError):
    """Raised when the server cannot take the request now but will later (out of file
    descriptors, shutting down): a client retries after ``Retry-After`` seconds."""

    status_code = 503
    error_code = "ERR_SERVICE_UNAVAILABLE"
    default_message = "the server cannot take this request now; retry in a moment"

    def __init__(self, message: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def headers(self) -> list[tuple[str, str]]:
        return [("Retry-After", str(self.retry_after))]


class TooManyOpenFiles(ServiceUnavailable):
    """Raised when the server process (or the system) has run out of file descriptors: a load
    peak that passes, so the client is asked to retry."""

    error_code = "ERR_TOO_MANY_OPEN_FILES"
    default_message = "the server has too many files open; retry in a moment"


class ServerShuttingDown(ServiceUnavailable):
    """Raised when a server that is shutting down stops a running upload (which keeps every
    byte it received) or refuses a new request."""

    error_code = "ERR_SERVER_SHUTTING_DOWN"
    default_message = "the server is shutting down; resume the upload in a moment"


class UploadExists(TusError):
    """Raised when an upload is created with the ID of one that exists already."""

    status_code = 409
    error_code = "ERR_UPLOAD_EXISTS"
    default_message = "an upload with this ID exists already"


_STORAGE_ERRORS: dict[int, type[StorageError]] = {
    _errno.ENOSPC: StorageFull,
    _errno.EDQUOT: StorageFull,
    _errno.EACCES: StoragePermissionDenied,
    _errno.EPERM: StoragePermissionDenied,
    _errno.EROFS: StorageReadOnly,
    _errno.EIO: StorageIOError,
    _errno.ESTALE: StorageIOError,
    _errno.ENOTCONN: StorageIOError,
}


def storage_error(
    exc: OSError, *, path: str | os.PathLike[str] | None = None, what: str | None = None
) -> StorageError | TooManyOpenFiles:
    """The :class:`StorageError` for a failed system call: its class names the kind of failure
    (:class:`StorageFull` for ``ENOSPC``/``EDQUOT``, answered with 507), or
    :class:`TooManyOpenFiles` (503, retry) when file descriptors ran out.

    :param path: the path to record when the error itself names none (a write to an open file)
    :param what: what was being done, to start the message with (``"upload X: reading X.info"``)
    """
    if exc.errno in (_errno.EMFILE, _errno.ENFILE):
        return TooManyOpenFiles()
    cls = _STORAGE_ERRORS.get(exc.errno or 0, StorageError)
    reason = exc.strerror or str(exc)
    message = f"{cls.default_message}: {reason}"
    if what is not None:
        message = f"{what}: {message}"
    filename = exc.filename if isinstance(exc.filename, str) else None
    if filename is None and path is not None:
        filename = os.fspath(path)
    return cls(message, path=filename, errno=exc.errno)
