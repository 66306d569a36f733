"""`S3Store`: uploads in an S3-compatible object store, with tusd's s3store semantics.

For an upload ``ID`` under the store's prefix:

- ``ID.info``: the upload's :class:`~anytus.UploadInfo` as JSON (tusd's keys), written at creation
  and when the length is declared; ``Storage`` names the bucket, the key and the multipart upload;
- ``ID``: the object itself, built by *one* S3 multipart upload per tus upload. Every part but the
  last holds at least ``min_part_size`` bytes (S3's minimum, 5 MiB);
- ``ID.part``: the incomplete part, the received bytes that do not fill a part yet. Its metadata
  names the part number it will become, so a tail already uploaded as that part (a crash between
  the two requests) is recognised as stale and never counted twice.

The offset is the sum of the uploaded parts plus the incomplete part; an upload whose multipart
upload is gone (completed) is complete. Termination aborts the multipart upload and deletes every
object; concatenation copies complete partial objects server-side (``UploadPartCopy``) when they
are large enough to be parts, and otherwise streams them through. Every S3 request runs in a worker
thread (boto3's client is thread-safe) under the store's :class:`~anyio.CapacityLimiter`.

S3 cannot read the parts of an unfinished multipart upload: an unfinished upload can be read only
while all its bytes are in the incomplete part (less than one part). Nor can a part be shortened,
so there is no rollback, and the checksum extension is not offered (as in tusd's s3store).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import threading
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import anyio
import anyio.lowlevel
import anyio.to_thread

from ._datastore import Locker, Upload
from ._exceptions import (
    CorruptUploadInfo,
    LengthAlreadyDeclared,
    SizeExceeded,
    StorageError,
    UploadExists,
    UploadNotFinished,
    UploadNotFound,
)
from ._ids import new_upload_id, validate_upload_id
from ._info import UploadInfo
from ._locks import MemoryLocker
from ._storebase import CoreStoreBase, ReaderContext
from ._streams import RangeReadStream

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
    from contextlib import AbstractAsyncContextManager

    from ._datastore import StoreComposer

__all__ = ("S3ReadStream", "S3Store", "S3Upload")

T = TypeVar("T")

MIB = 1 << 20
#: S3's smallest part (every part of a multipart upload but the last)
S3_MIN_PART_SIZE = 5 * MIB
#: the most parts one multipart upload may have
_MAX_PARTS = 10_000
#: what a reader asks for at a time when ``receive`` is called without ``max_bytes``
_READ_CHUNK = 1 << 20
_NEXT_PART = "anytus-next-part"


@runtime_checkable
class _GuardingLocker(Protocol):
    """A locker that can tell, before each write, whether its lock is still held
    (:meth:`~anytus.RedisLocker.check_held`)."""

    def check_held(self, upload_id: str) -> None: ...


def _import_boto3() -> tuple[Any, Any]:
    try:
        import boto3
        import botocore.config
    except ImportError:
        raise ImportError(
            "S3Store needs boto3: install the extra, pip install 'anytus[s3]'"
        ) from None
    return boto3, botocore.config


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _is_missing(exc: BaseException) -> bool:
    return _error_code(exc) in ("NoSuchKey", "404", "NotFound")


@dataclasses.dataclass(eq=False)
class _State:
    """What S3 holds for one upload, loaded in one worker-thread hop."""

    info: UploadInfo
    #: the multipart upload's ID; empty once it is completed (the upload is complete)
    multipart: str
    #: the uploaded parts: number, size, ETag
    parts: list[tuple[int, int, str]]
    #: bytes in the (valid) incomplete part
    tail: int
    #: an incomplete-part object exists that is already a part (left by a crash)
    stale_tail: bool

    @property
    def next_part(self) -> int:
        return self.parts[-1][0] + 1 if self.parts else 1

    @property
    def stored(self) -> int:
        return sum(size for _, size, _ in self.parts) + self.tail


class S3Store(CoreStoreBase):
    """Uploads in an S3-compatible object store (AWS S3, MinIO, moto...), tusd's s3store layout.

    Several servers may share one bucket and prefix, with a locker that works across hosts
    (:class:`~anytus.RedisLocker`); before each write the store asks such a locker whether the
    lock is still held, so a server whose lease lapsed stops writing.

    :param bucket: the bucket (it must exist)
    :param prefix: what every key of this store starts with (``"uploads/"``, say)
    :param endpoint_url: the S3 endpoint, for a store other than AWS; ``None`` asks boto3, which
        also reads credentials and the region from the standard environment variables and files
    :param client: a ready boto3 S3 client instead (then *endpoint_url* is not used)
    :param locker: the locks; by default a :class:`~anytus.MemoryLocker` (one process only)
    :param part_size: how many bytes make a part, at least *min_part_size*
    :param min_part_size: the object store's smallest non-last part
    :param max_threads: how many S3 requests may run at once
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        client: Any = None,
        locker: Locker | None = None,
        part_size: int = S3_MIN_PART_SIZE,
        min_part_size: int = S3_MIN_PART_SIZE,
        max_threads: int = 16,
    ) -> None:
        if part_size < min_part_size:
            raise ValueError("part_size must be at least min_part_size")
        self._boto3, self._botocore_config = _import_boto3()
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url
        self.part_size = part_size
        self.min_part_size = min_part_size
        self.locker: Locker = locker if locker is not None else MemoryLocker()
        self._client = client
        self._client_lock = threading.Lock()
        self._max_threads = max_threads
        self._limiter = anyio.CapacityLimiter(max_threads)

    def __repr__(self) -> str:
        where = f" at {self.endpoint_url}" if self.endpoint_url else ""
        return f"<S3Store s3://{self.bucket}/{self.prefix}{where}>"

    # -- keys and the client ----------------------------------------------------------------

    def _key(self, upload_id: str) -> str:
        return self.prefix + upload_id

    @property
    def client(self) -> Any:
        """The boto3 S3 client, made on first use (in a worker thread: making one reads files)."""
        if self._client is None:
            with self._client_lock:
                if self._client is None:
                    config = self._botocore_config.Config(
                        max_pool_connections=self._max_threads,
                        retries={"max_attempts": 3, "mode": "standard"},
                        # checksums only where S3 requires them: botocore's default (since 1.36)
                        # sends every part aws-chunked with a trailing checksum, which many
                        # S3-compatible stores refuse and moto decodes slowly (measured: 5 MiB
                        # parts 30-60% faster without)
                        request_checksum_calculation="when_required",
                    )
                    session = self._boto3.session.Session()
                    self._client = session.client(
                        "s3", endpoint_url=self.endpoint_url, config=config
                    )
        return self._client

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        except Exception as exc:
            raise self._translate(exc) from exc

    @staticmethod
    def _translate(exc: Exception) -> Exception:
        """botocore's errors as anytus's: what is not ours already is a StorageError."""
        module = type(exc).__module__
        if module.startswith(("botocore", "boto3", "urllib3")):
            return StorageError(f"S3 request failed: {exc}")
        return exc

    def use_in(self, composer: StoreComposer) -> None:
        """Register the core and the extensions S3 can do: termination, concatenation,
        creation-defer-length and expiration (no rollback, so no checksum), and the locker."""
        composer.use_core(self)
        composer.use_terminater(self)
        composer.use_concater(self)
        composer.use_length_deferrer(self)
        composer.use_expirer(self)
        composer.use_locker(self.locker)

    # -- loading ------------------------------------------------------------------------------

    def _load(self, upload_id: str) -> _State:
        """Read the info, the parts and the incomplete part (worker thread)."""
        client = self.client
        key = self._key(upload_id)
        try:
            response = client.get_object(Bucket=self.bucket, Key=key + ".info")
        except Exception as exc:
            if _is_missing(exc):
                raise UploadNotFound(f"upload {upload_id} not found") from None
            raise
        with contextlib.closing(response["Body"]) as body:
            document = body.read()
        modified = response["LastModified"].timestamp()
        try:
            info = UploadInfo.from_json(document)
        except ValueError as exc:
            raise CorruptUploadInfo(f"upload {upload_id}'s info is unreadable: {exc}") from None
        multipart = info.storage.get("MultipartUpload", "")
        parts: list[tuple[int, int, str]] = []
        if multipart:
            try:
                for page in client.get_paginator("list_parts").paginate(
                    Bucket=self.bucket, Key=key, UploadId=multipart
                ):
                    for part in page.get("Parts", []):
                        parts.append((part["PartNumber"], part["Size"], part["ETag"]))
                        modified = max(modified, part["LastModified"].timestamp())
            except Exception as exc:
                if _error_code(exc) != "NoSuchUpload":
                    raise
                multipart = ""  # completed
        parts.sort()
        # only the parts from 1 on without a gap count: a part past a gap (a writer that lost
        # its lock, say) is overwritten by the next writes and left out of the completion
        contiguous = 0
        while contiguous < len(parts) and parts[contiguous][0] == contiguous + 1:
            contiguous += 1
        del parts[contiguous:]
        tail = 0
        stale = False
        if multipart:
            try:
                head = client.head_object(Bucket=self.bucket, Key=key + ".part")
            except Exception as exc:
                if not _is_missing(exc):
                    raise
            else:
                next_part = parts[-1][0] + 1 if parts else 1
                if int(head.get("Metadata", {}).get(_NEXT_PART, "0")) == next_part:
                    tail = head["ContentLength"]
                    modified = max(modified, head["LastModified"].timestamp())
                else:
                    stale = True
        state = _State(info, multipart, parts, tail, stale)
        offset = (info.size or 0) if not multipart else state.stored
        state.info = dataclasses.replace(info, offset=offset, modified_at=modified)
        return state

    # -- core -----------------------------------------------------------------------------------

    async def new_upload(self, info: UploadInfo) -> UploadInfo:
        """Create an empty upload: its multipart upload, then its info object. A zero-length
        upload is complete at once (an empty object, no multipart upload).

        :raises ~anytus.InvalidUploadId: if *info* carries a malformed ID
        :raises ~anytus.UploadExists: if *info* carries the ID of an existing upload
        """
        upload_id = validate_upload_id(info.id) if info.id else new_upload_id()
        return await self._run(self._create, upload_id, info)

    def _create(self, upload_id: str, info: UploadInfo) -> UploadInfo:
        client = self.client
        key = self._key(upload_id)
        if info.id:
            try:
                client.head_object(Bucket=self.bucket, Key=key + ".info")
            except Exception as exc:
                if not _is_missing(exc):
                    raise
            else:
                raise UploadExists(f"upload {upload_id} exists already")
        content_type = info.metadata.get("filetype") or "application/octet-stream"
        multipart = client.create_multipart_upload(
            Bucket=self.bucket, Key=key, ContentType=content_type
        )["UploadId"]
        storage = {"Type": "s3store", "Bucket": self.bucket, "Key": key}
        storage["MultipartUpload"] = multipart
        created = dataclasses.replace(info, id=upload_id, offset=0, storage=storage)
        self._put_info(created)
        if info.size == 0:
            self._finish_empty(key, multipart)
        return dataclasses.replace(created, modified_at=None)

    def _put_info(self, info: UploadInfo) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=self._key(info.id) + ".info",
            Body=dataclasses.replace(info, offset=0).to_json(),
            ContentType="application/json",
        )

    def _finish_empty(self, key: str, multipart: str) -> None:
        # S3 wants at least one part: an empty object is put directly instead
        self.client.put_object(Bucket=self.bucket, Key=key, Body=b"")
        with contextlib.suppress(Exception):
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=multipart)

    async def get_upload(self, upload_id: str) -> S3Upload:
        """Load the upload to act on it (call it while holding the upload's lock).

        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        :raises ~anytus.UploadNotFound: if there is no such upload
        :raises ~anytus.CorruptUploadInfo: if its info object is unreadable
        """
        validate_upload_id(upload_id)
        state = await self._run(self._load, upload_id)
        return S3Upload(self, state)

    async def get_info(self, upload_id: str) -> UploadInfo:
        """Return the upload's state; ``offset`` is the parts' bytes plus the incomplete part's.

        :raises ~anytus.InvalidUploadId: if the ID is not well-formed
        :raises ~anytus.UploadNotFound: if there is no such upload
        """
        return (await self.get_upload(upload_id)).info

    def get_reader(
        self, upload_id: str, *, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[S3ReadStream]:
        """Stream the stored bytes ``[start, end)`` (*end* defaults to the offset): a ranged
        ``GetObject`` of the completed object, or of the incomplete part while there are no parts.

        :raises ~anytus.UploadNotFound: on entering, if there is no such upload
        :raises ~anytus.UploadNotFinished: on entering, if the bytes are in the parts of an
            unfinished multipart upload, which S3 cannot read
        :raises ValueError: on entering, if the range is not within the stored bytes
        """
        validate_upload_id(upload_id)
        return ReaderContext(
            functools.partial(self.get_upload, upload_id), self._open_reader, start, end
        )

    async def _open_reader(self, upload: S3Upload, start: int, end: int) -> S3ReadStream:
        if end == start:
            return S3ReadStream(self, None, 0)
        state = upload._state
        if state.multipart and state.parts:
            raise UploadNotFinished(
                f"upload {state.info.id} is unfinished: S3 cannot read its uploaded parts"
            )
        key = upload._key if not state.multipart else upload._key + ".part"
        byte_range = f"bytes={start}-{end - 1}"

        def open_body() -> Any:
            try:
                response = self.client.get_object(Bucket=self.bucket, Key=key, Range=byte_range)
            except Exception as exc:
                if _is_missing(exc):
                    raise UploadNotFound(f"upload {state.info.id} is gone") from None
                raise
            return response["Body"]

        return S3ReadStream(self, await self._run(open_body), end - start)

    # -- extensions ---------------------------------------------------------------------------

    async def terminate(self, upload_id: str) -> None:
        """Abort the multipart upload and delete every object of the upload.

        :raises ~anytus.UploadNotFound: if there is no such upload
        """
        await (await self.get_upload(upload_id)).terminate()

    async def list_uploads(self) -> list[str]:
        """Return the IDs of every upload (every ``.info`` object under the prefix)."""
        keys = await self._run(self._list_keys, "")
        ids = []
        for key in keys:
            name = key[len(self.prefix) :]
            if name.endswith(".info"):
                with contextlib.suppress(ValueError):
                    ids.append(validate_upload_id(name[: -len(".info")]))
        return sorted(ids)

    def _list_keys(self, after_prefix: str) -> list[str]:
        keys: list[str] = []
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + after_prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return keys

    async def cleanup(self, expire_after: float, *, now: float | None = None) -> list[str]:
        """Remove every unfinished upload not written to for *expire_after* seconds (skipping
        locked ones), then abort the multipart uploads and delete the incomplete parts under the
        prefix that no upload owns (left by a crash during creation) and are as old.

        :return: the IDs of the uploads removed
        """
        now = self._now() if now is None else now
        removed = await super().cleanup(expire_after, now=now)
        await self._run(self._remove_orphans, now - expire_after)
        return removed

    def _remove_orphans(self, before: float) -> None:
        client = self.client
        # the multipart uploads first, then the info objects: an upload being created meanwhile
        # (its multipart upload made, its info not yet written) is not listed as an orphan
        # however old S3 says it is (moto's "Initiated" is always 2010)
        multipart = [
            item
            for page in client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=self.prefix
            )
            for item in page.get("Uploads", [])
        ]
        known = {
            key[len(self.prefix) : -len(".info")]
            for key in self._list_keys("")
            if key.endswith(".info")
        }
        for item in multipart:
            upload_id = item["Key"][len(self.prefix) :]
            if upload_id not in known and item["Initiated"].timestamp() <= before:
                with contextlib.suppress(Exception):
                    client.abort_multipart_upload(
                        Bucket=self.bucket, Key=item["Key"], UploadId=item["UploadId"]
                    )
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=self.bucket, Prefix=self.prefix
        ):
            for item in page.get("Contents", []):
                name = item["Key"][len(self.prefix) :]
                if (
                    name.endswith(".part")
                    and name[: -len(".part")] not in known
                    and item["LastModified"].timestamp() <= before
                ):
                    client.delete_object(Bucket=self.bucket, Key=item["Key"])


class _PendingPart:
    """A part being uploaded while the next one is received."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.error: Exception | None = None

    async def wait(self) -> None:
        """Wait for the upload; raise its error, if it failed."""
        with anyio.CancelScope(shield=True):
            await self.done.wait()
        if self.error is not None:
            raise self.error


class S3Upload(Upload):
    """One upload of an :class:`S3Store`, loaded once (see :meth:`S3Store.get_upload`)."""

    def __init__(self, store: S3Store, state: _State) -> None:
        self._store = store
        self._state = state
        self._key = store._key(state.info.id)
        locker = store.locker
        # a lock held through a guarding locker is checked before each write
        self._guarded = isinstance(locker, _GuardingLocker) and locker.locked(state.info.id)

    @property
    def info(self) -> UploadInfo:
        return self._state.info

    def __repr__(self) -> str:
        info = self._state.info
        return f"<S3Upload {info.id} at {info.offset}/{info.size}>"

    def _guard(self) -> None:
        """Before a write (worker thread): make sure our lock was not lost meanwhile."""
        if self._guarded:
            locker = self._store.locker
            assert isinstance(locker, _GuardingLocker)
            locker.check_held(self._state.info.id)

    def _refresh(self, *, modified: bool = True) -> None:
        state = self._state
        offset = (state.info.size or 0) if not state.multipart else state.stored
        stamp = self._store._now() if modified else state.info.modified_at
        state.info = dataclasses.replace(state.info, offset=offset, modified_at=stamp)

    # -- the blocking parts (worker threads) --------------------------------------------------

    def _check_exists(self) -> None:
        try:
            self._store.client.head_object(Bucket=self._store.bucket, Key=self._key + ".info")
        except Exception as exc:
            if _is_missing(exc):
                raise UploadNotFound(f"upload {self._state.info.id} is gone") from None
            raise

    def _read_tail(self) -> bytes:
        """The incomplete part's bytes (which must be there: else the upload is gone)."""
        client = self._store.client
        bucket = self._store.bucket
        try:
            response = client.get_object(Bucket=bucket, Key=self._key + ".part")
        except Exception as exc:
            if _is_missing(exc):
                raise UploadNotFound(f"upload {self._state.info.id} is gone") from None
            raise
        with contextlib.closing(response["Body"]) as body:
            data: bytes = body.read()
        if len(data) != self._state.tail:
            raise StorageError(f"upload {self._state.info.id}'s incomplete part changed")
        return data

    def _upload_part(self, data: bytes | bytearray) -> None:
        self._guard()
        state = self._state
        number = state.next_part
        if number > _MAX_PARTS:
            raise StorageError(f"upload {state.info.id} would need more than {_MAX_PARTS} parts")
        try:
            response = self._store.client.upload_part(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=state.multipart,
                PartNumber=number,
                Body=bytes(data),
            )
        except Exception as exc:
            if _error_code(exc) == "NoSuchUpload":
                raise UploadNotFound(f"upload {state.info.id} is gone") from None
            raise
        state.parts.append((number, len(data), response["ETag"]))
        if state.tail:
            # the incomplete part went into this part: its object is stale from now on
            state.tail = 0
            state.stale_tail = True

    def _put_tail(self, data: bytes) -> None:
        self._guard()
        state = self._state
        if not state.tail and not state.stale_tail:
            # a new incomplete-part object: not for an upload terminated meanwhile
            self._check_exists()
        self._store.client.put_object(
            Bucket=self._store.bucket,
            Key=self._key + ".part",
            Body=data,
            Metadata={_NEXT_PART: str(state.next_part)},
        )
        state.tail = len(data)
        state.stale_tail = False

    def _delete_tail(self) -> None:
        self._guard()
        self._store.client.delete_object(Bucket=self._store.bucket, Key=self._key + ".part")
        self._state.tail = 0
        self._state.stale_tail = False

    def _complete(self) -> None:
        """Complete the multipart upload (every byte is in its parts) and drop the tail."""
        self._guard()
        state = self._state
        client = self._store.client
        if state.parts:
            client.complete_multipart_upload(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=state.multipart,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etag} for n, _, etag in state.parts]
                },
            )
        else:
            self._store._finish_empty(self._key, state.multipart)
        state.multipart = ""
        if state.tail or state.stale_tail:
            client.delete_object(Bucket=self._store.bucket, Key=self._key + ".part")
            state.tail = 0
            state.stale_tail = False

    def _flush(self, buffer: bytearray, complete: bool) -> None:
        """Store what *buffer* holds (the incomplete part's bytes and the new ones after it)."""
        state = self._state
        if complete:
            if buffer:
                self._upload_part(buffer)
            self._complete()
        elif len(buffer) >= self._store.min_part_size:
            self._upload_part(buffer)
        elif len(buffer) > state.tail:
            self._put_tail(bytes(buffer))
        if state.stale_tail:
            self._delete_tail()

    # -- Upload ---------------------------------------------------------------------------------

    async def write_chunk(self, source: AsyncIterable[bytes]) -> int:
        """Append the bytes of *source*: full parts are uploaded as they fill, and what is left
        goes into the incomplete part (or, if the upload is then complete, into the last part,
        and the object is completed).

        Bytes taken from *source* are stored even when it raises or the task is cancelled (the
        rest is flushed, shielded); a lost lock (:exc:`~anytus.LockUnavailable`) stores nothing
        more.
        """
        store = self._store
        state = self._state
        info = state.info
        run = store._run
        remaining = None if info.size is None else info.size - info.offset
        if state.tail:
            buffer = bytearray(await run(self._read_tail))
        else:
            await anyio.lowlevel.checkpoint()
            buffer = bytearray()
        written = 0
        exceeded = False
        # one part at a time is uploaded while the next one is received; an upload, once
        # started, is shielded, so that a cancelled write still knows which parts S3 has
        pending: _PendingPart | None = None

        async def upload(part: bytes, pending: _PendingPart) -> None:
            try:
                with anyio.CancelScope(shield=True):
                    await run(self._upload_part, part)
            except Exception as exc:  # noqa: BLE001 - the writer raises it, in its own task
                pending.error = exc
            finally:
                pending.done.set()

        # the source's error, raised once what was taken is stored (not from inside the task
        # group, which would wrap it in an exception group)
        error: Exception | None = None
        try:
            async with anyio.create_task_group() as tg:
                try:
                    async for chunk in source:
                        if remaining is not None and len(chunk) > remaining - written:
                            chunk, exceeded = chunk[: remaining - written], True
                        buffer += chunk
                        written += len(chunk)
                        while len(buffer) >= store.part_size and (
                            remaining is None
                            or written < remaining
                            or len(buffer) > store.part_size
                        ):
                            part = bytes(buffer[: store.part_size])
                            del buffer[: store.part_size]
                            if pending is not None:
                                await pending.wait()
                            pending = _PendingPart()
                            tg.start_soon(upload, part, pending)
                        if exceeded:
                            break
                except Exception as exc:  # noqa: BLE001 - raised below, after the flush
                    error = exc
        finally:
            with anyio.CancelScope(shield=True):
                # the task group waited for the last part: if it failed, its bytes are gone, and
                # storing the bytes after them would shift them, so nothing more is stored
                if pending is None or pending.error is None:
                    complete = info.size is not None and (
                        state.stored + len(buffer) - state.tail == info.size
                    )
                    await run(self._flush, buffer, complete)
                self._refresh()
        if pending is not None and pending.error is not None:
            raise pending.error
        if error is not None:
            raise error
        if exceeded:
            raise SizeExceeded(
                f"upload {info.id} is {info.size} bytes long: stored the {written} "
                f"bytes that fit and refused the rest"
            )
        return written

    def get_reader(
        self, *, start: int = 0, end: int | None = None
    ) -> AbstractAsyncContextManager[S3ReadStream]:
        return ReaderContext.of(self, self._store._open_reader, start, end)

    async def declare_length(self, length: int) -> UploadInfo:
        state = self._state
        info = state.info
        if info.size is not None:
            await anyio.lowlevel.checkpoint()
            raise LengthAlreadyDeclared(f"upload {info.id}'s length is already {info.size}")
        if length < info.offset:
            await anyio.lowlevel.checkpoint()
            raise LengthAlreadyDeclared(
                f"length {length} is smaller than the {info.offset} bytes already stored"
            )
        declared = dataclasses.replace(info, size=length)

        def declare() -> None:
            self._guard()
            self._store._put_info(declared)
            state.info = declared
            if length == declared.offset:
                # every byte is here: the incomplete part becomes the last part
                tail = self._read_tail() if state.tail else b""
                self._flush(bytearray(tail), complete=True)

        await self._store._run(declare)
        self._refresh(modified=False)
        return state.info

    async def terminate(self) -> None:
        state = self._state

        def terminate() -> None:
            self._guard()
            client = self._store.client
            bucket = self._store.bucket
            try:
                client.head_object(Bucket=bucket, Key=self._key + ".info")
            except Exception as exc:
                if _is_missing(exc):
                    raise UploadNotFound(f"upload {state.info.id} not found") from None
                raise
            if state.multipart:
                try:
                    client.abort_multipart_upload(
                        Bucket=bucket, Key=self._key, UploadId=state.multipart
                    )
                except Exception as exc:
                    if _error_code(exc) != "NoSuchUpload":
                        raise
            client.delete_objects(
                Bucket=bucket,
                Delete={
                    "Objects": [
                        {"Key": self._key},
                        {"Key": self._key + ".part"},
                        {"Key": self._key + ".info"},
                    ],
                    "Quiet": True,
                },
            )

        await self._store._run(terminate)

    async def concat(self, partials: Sequence[Upload]) -> None:
        """Fill this empty final upload with the partials' objects: copied server-side as parts
        when every partial but the last is at least a part long, else streamed through."""
        state = self._state
        info = state.info
        sources: list[S3Upload] = []
        for partial in partials:
            if not isinstance(partial, S3Upload) or partial._store.bucket != self._store.bucket:
                raise TypeError(f"cannot concatenate {partial!r} into an S3Store upload")
            sources.append(partial)
        if info.offset != 0:
            raise ValueError(f"final upload {info.id} is not empty")
        total = sum(partial.info.offset for partial in sources)
        if info.size is None:
            sized = dataclasses.replace(info, size=total)

            def put() -> None:
                self._guard()
                self._store._put_info(sized)

            await self._store._run(put)
            state.info = sized
        elif info.size != total:
            raise ValueError(f"final upload {info.id} is {info.size} bytes, its partials {total}")
        minimum = self._store.min_part_size
        if (
            sources
            and len(sources) <= _MAX_PARTS
            and all(partial.info.offset >= minimum for partial in sources[:-1])
            and sources[-1].info.offset > 0
        ):
            await self._store._run(self._copy_parts, sources)
        else:
            await self.write_chunk(_stream_all(sources))
        self._refresh()

    def _copy_parts(self, sources: list[S3Upload]) -> None:
        state = self._state
        client = self._store.client
        for partial in sources:
            self._guard()
            response = client.upload_part_copy(
                Bucket=self._store.bucket,
                Key=self._key,
                UploadId=state.multipart,
                PartNumber=state.next_part,
                CopySource={"Bucket": self._store.bucket, "Key": partial._key},
            )
            state.parts.append(
                (state.next_part, partial.info.offset, response["CopyPartResult"]["ETag"])
            )
        self._complete()


async def _stream_all(sources: Sequence[S3Upload]) -> AsyncIterator[bytes]:
    for partial in sources:
        if partial.info.offset == 0:
            continue
        async with partial.get_reader() as stream:
            async for chunk in stream:
                yield chunk


class S3ReadStream(RangeReadStream):
    """Streams a byte range of an object (what :meth:`S3Store.get_reader` opens), in chunks of
    at most 1 MiB by default; each read is a worker-thread hop."""

    _source = "the object"

    def __init__(self, store: S3Store, body: Any, length: int) -> None:
        super().__init__(length, _READ_CHUNK)
        self._store = store
        self._body = body

    async def _read(self, size: int) -> bytes:
        assert self._body is not None  # only an empty range has none, and it is never read
        data: bytes = await self._store._run(self._body.read, size)
        return data

    async def aclose(self) -> None:
        """Close the stream (and its connection). Idempotent."""
        self._closed = True
        body, self._body = self._body, None
        if body is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(body.close)
        else:
            await anyio.lowlevel.checkpoint()
