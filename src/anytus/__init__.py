"""anytus: async-native resumable uploads over the tus protocol, on anyio (asyncio and trio)."""

from __future__ import annotations

from ._datastore import ConcatenatableStore as ConcatenatableStore
from ._datastore import DataStore as DataStore
from ._datastore import ExpiringStore as ExpiringStore
from ._datastore import InlineHold as InlineHold
from ._datastore import LengthDeferrableStore as LengthDeferrableStore
from ._datastore import Locker as Locker
from ._datastore import OneHopStore as OneHopStore
from ._datastore import StoreComposer as StoreComposer
from ._datastore import SyncUpload as SyncUpload
from ._datastore import TerminatableStore as TerminatableStore
from ._datastore import TruncatableStore as TruncatableStore
from ._datastore import Upload as Upload
from ._exceptions import BasePathMismatch as BasePathMismatch
from ._exceptions import ChecksumMismatch as ChecksumMismatch
from ._exceptions import CorruptUploadInfo as CorruptUploadInfo
from ._exceptions import HookRejected as HookRejected
from ._exceptions import InvalidHeader as InvalidHeader
from ._exceptions import InvalidUploadId as InvalidUploadId
from ._exceptions import LengthAlreadyDeclared as LengthAlreadyDeclared
from ._exceptions import LockTimeout as LockTimeout
from ._exceptions import MaxSizeExceeded as MaxSizeExceeded
from ._exceptions import MethodNotAllowed as MethodNotAllowed
from ._exceptions import OffsetMismatch as OffsetMismatch
from ._exceptions import OriginNotAllowed as OriginNotAllowed
from ._exceptions import RangeNotSatisfiable as RangeNotSatisfiable
from ._exceptions import RequestBodyTimeout as RequestBodyTimeout
from ._exceptions import ServerShuttingDown as ServerShuttingDown
from ._exceptions import ServiceUnavailable as ServiceUnavailable
from ._exceptions import SizeExceeded as SizeExceeded
from ._exceptions import StorageError as StorageError
from ._exceptions import StorageFull as StorageFull
from ._exceptions import StorageIOError as StorageIOError
from ._exceptions import StoragePermissionDenied as StoragePermissionDenied
from ._exceptions import StorageReadOnly as StorageReadOnly
from ._exceptions import TooManyOpenFiles as TooManyOpenFiles
from ._exceptions import TusError as TusError
from ._exceptions import UnsupportedChecksumAlgorithm as UnsupportedChecksumAlgorithm
from ._exceptions import UnsupportedMediaType as UnsupportedMediaType
from ._exceptions import UnsupportedVersion as UnsupportedVersion
from ._exceptions import UploadExists as UploadExists
from ._exceptions import UploadExpired as UploadExpired
from ._exceptions import UploadInterrupted as UploadInterrupted
from ._exceptions import UploadIsFinal as UploadIsFinal
from ._exceptions import UploadNotFinished as UploadNotFinished
from ._exceptions import UploadNotFound as UploadNotFound
from ._filestore import FileStore as FileStore
from ._filestore import FileUpload as FileUpload
from ._ids import new_upload_id as new_upload_id
from ._ids import validate_upload_id as validate_upload_id
from ._info import UploadInfo as UploadInfo
from ._locks import FileLocker as FileLocker
from ._locks import MemoryLocker as MemoryLocker
from ._memorystore import MemoryStore as MemoryStore
from ._memorystore import MemoryUpload as MemoryUpload

__version__ = "0.1.0"

__all__ = (
    # the stores
    "FileStore",
    "FileUpload",
    "MemoryStore",
    "MemoryUpload",
    "UploadInfo",
    "new_upload_id",
    "validate_upload_id",
    # locks
    "FileLocker",
    "InlineHold",
    "Locker",
    "MemoryLocker",
    # interfaces
    "ConcatenatableStore",
    "DataStore",
    "ExpiringStore",
    "LengthDeferrableStore",
    "OneHopStore",
    "StoreComposer",
    "SyncUpload",
    "TerminatableStore",
    "TruncatableStore",
    "Upload",
    # exceptions
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
    "SizeExceeded",
    "ServerShuttingDown",
    "ServiceUnavailable",
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
)
