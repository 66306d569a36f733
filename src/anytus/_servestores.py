"""What ``anytus serve`` stores uploads in and locks them with: its ``--s3-*`` and ``--redis``
options, the combinations it refuses, and the store each worker builds.

- ``--dir`` (the default): a :class:`~anytus.FileStore` with its :class:`~anytus.FileLocker`;
  with ``--redis`` a :class:`~anytus.RedisLocker` instead (a directory shared by several hosts).
  A directory on a network file system is refused without ``--redis`` unless
  ``--force-shared-dir``: the file locks do not reliably exclude other hosts there.
- ``--s3-bucket``: an :class:`~anytus.S3Store` (credentials and region from boto3's standard
  environment variables and files), with ``--redis`` for several workers or hosts; without it the
  locks hold within one process only, so ``--workers`` above 1 is refused.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from ._serve import ServeOptions
    from ._storebase import CoreStoreBase

__all__ = ("add_arguments", "build_store", "check_arguments", "describe", "probe")

#: file systems on which flock() does not reliably exclude other hosts
_NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "9p"}
    | {"fuse.sshfs", "fuse.s3fs", "fuse.glusterfs", "fuse.cephfs", "afs", "ncpfs", "beegfs"}
)


def add_arguments(serve: argparse.ArgumentParser) -> None:
    """Add the storage and locking options to ``anytus serve``."""
    group = serve.add_argument_group(
        "several hosts",
        "Store uploads in S3 and lock them in Redis, so that many servers share one upload space "
        "(S3 credentials and region: boto3's standard environment variables and files).",
    )
    group.add_argument("--s3-bucket", metavar="BUCKET", help="store uploads in this S3 bucket")
    group.add_argument(
        "--s3-endpoint", metavar="URL", help="the S3 endpoint (MinIO, ...); default: AWS"
    )
    group.add_argument("--s3-prefix", metavar="PREFIX", help="key prefix in the bucket")
    group.add_argument(
        "--redis", metavar="URL", help="lock uploads in Redis (redis://host:port/db), across hosts"
    )
    group.add_argument(
        "--redis-lease",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a dead host's locks stay taken; default: 10",
    )
    group.add_argument(
        "--force-shared-dir",
        action="store_true",
        help="serve a directory on a network file system without --redis anyway",
    )


def _given(argv: Sequence[str], option: str) -> bool:
    return any(arg == option or arg.startswith(option + "=") for arg in argv)


def check_arguments(args: argparse.Namespace, argv: Sequence[str]) -> str | None:
    """Why this combination of options makes no sense, or ``None`` if it does."""
    if args.s3_bucket is None:
        for option in ("--s3-endpoint", "--s3-prefix"):
            if getattr(args, option[2:].replace("-", "_")) is not None:
                return f"{option} needs --s3-bucket"
    else:
        if _given(argv, "--dir"):
            return (
                "--dir and --s3-bucket exclude each other: the uploads are either in a "
                "directory or in a bucket"
            )
        if _given(argv, "--durability"):
            return "--durability is the file store's: S3 stores every part it acknowledges"
        if _given(argv, "--force-shared-dir"):
            return "--force-shared-dir is for a directory, not a bucket"
        if args.redis is None and args.workers > 1:
            return (
                "--s3-bucket with --workers above 1 needs --redis: without it each worker "
                "locks uploads on its own, and two workers could write one upload at once"
            )
    if args.redis_lease is not None:
        if args.redis is None:
            return "--redis-lease needs --redis"
        if args.redis_lease <= 0:
            return "--redis-lease must be positive"
    if args.s3_bucket is None and args.redis is None and not args.force_shared_dir:
        fs_type = _file_system_type(os.path.abspath(args.dir))
        if fs_type in _NETWORK_FILE_SYSTEMS:
            return (
                f"{args.dir} is on a network file system ({fs_type}), which other hosts may "
                "share: lock uploads across hosts with --redis URL, or pass --force-shared-dir"
            )
    return None


def _file_system_type(path: str) -> str | None:
    """The type of the file system *path* is on (the longest mount point above it), if known."""
    best: tuple[int, str] | None = None
    try:
        with open("/proc/self/mounts") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) < 3:
                    continue
                mount_point = fields[1].replace("\\040", " ")
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and (best is None or len(mount_point) > best[0]):
                    best = (len(mount_point), fields[2])
    except OSError:
        return None
    return None if best is None else best[1]


def describe(options: ServeOptions) -> str:
    """Where the uploads are, for the banner."""
    if options.s3_bucket is not None:
        where = f"s3://{options.s3_bucket}/{options.s3_prefix or ''}"
        if options.s3_endpoint:
            where += f" at {options.s3_endpoint}"
    else:
        where = str(options.directory)
    return where + (" (locks in Redis)" if options.redis_url else "")


def probe(options: ServeOptions) -> str | None:
    """Reach the bucket and Redis once, before any worker starts; return the error, if any."""
    if options.s3_bucket is not None:
        try:
            client = _s3_store(options).client
            client.head_bucket(Bucket=options.s3_bucket)
        except ImportError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever keeps it out of reach is reported
            return f"cannot reach S3 bucket {options.s3_bucket!r}: {exc}"
    if options.redis_url is not None:
        try:
            locker = _redis_locker(options)
            locker.client.ping()
            locker.close()
        except ImportError as exc:
            return str(exc)
        except Exception as exc:  # noqa: BLE001 - whatever keeps it out of reach is reported
            return f"cannot reach Redis at {options.redis_url}: {exc}"
    return None


def _redis_locker(options: ServeOptions) -> Any:
    from ._redislocker import DEFAULT_LEASE, RedisLocker

    lease = options.redis_lease or DEFAULT_LEASE
    return RedisLocker(options.redis_url, lease=lease, poll_interval=min(0.2, lease / 3))


def _s3_store(options: ServeOptions, locker: Any = None) -> Any:
    from ._s3store import S3Store

    assert options.s3_bucket is not None
    return S3Store(
        options.s3_bucket,
        prefix=options.s3_prefix or "",
        endpoint_url=options.s3_endpoint,
        locker=locker,
    )


def build_store(options: ServeOptions) -> CoreStoreBase:
    """The store a worker serves, with its locker."""
    locker = _redis_locker(options) if options.redis_url is not None else None
    if options.s3_bucket is not None:
        store: CoreStoreBase = _s3_store(options, locker)
        return store
    from ._filestore import FileStore

    return FileStore(options.directory, durability=options.durability, locker=locker)
