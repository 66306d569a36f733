"""Several hosts: S3Store on moto beside FileStore on disk, RedisLocker beside FileLocker, and small
uploads through two ``anytus serve`` instances against one.

Legs (every server is a subprocess started here, on 127.0.0.1; moto's S3 server and a
``redis-server`` too):

(a) throughput through ``anytus serve``: one upload of ``--single-size`` (128 MiB) in PATCHes of
    ``--patch-size`` (32 MiB), then ``--parallel`` (8) uploads of ``--parallel-size`` (16 MiB) at
    once; FileStore (``--dir``, durability ``none``) and S3Store (``--s3-bucket`` on moto, with
    ``--redis``), with the same black-box client (bench_e2e.py's: blocking sockets, ``sendfile``);
(b) lock latency in process: ``--lock-rounds`` (2000) acquire + release pairs, p50/p99 of each, for
    RedisLocker (local redis-server) and FileLocker (a temporary directory), on asyncio;
(c) small uploads (POST + 1 KiB PATCH + HEAD) by ``--small-clients`` (8) connections for
    ``--small-seconds`` (5), through one S3+Redis instance and through two (the clients split
    between them), and through one FileStore instance for reference.

The CPU used by each process (anytus servers, moto, redis-server, this client) during a leg is
printed, so the side that limits shows.

Run: ``.venv/bin/python benchmarks/bench_multi.py [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from _common import KIB, MIB, OtherLoad, human, parse_size
from bench_e2e import (
    Payload,
    TusClient,
    leg_parallel,
    leg_single,
    percentile,
    run_threads,
    tree_cpu_seconds,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

REPO = Path(__file__).resolve().parent.parent
SERVING_LINE = re.compile(r"anytus: serving .* on (http://\S+?:\d+/\S*)")
MOTO_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{process.args!r} did not listen")


@contextlib.contextmanager
def process(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    with open(log, "wb") as log_file:
        child = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env
        )
    try:
        yield child
    finally:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


@dataclass
class Services:
    moto: subprocess.Popen[bytes]
    endpoint: str
    redis: subprocess.Popen[bytes]
    redis_url: str
    env: dict[str, str]
    workdir: Path


@contextlib.contextmanager
def services(workdir: Path) -> Iterator[Services]:
    env = {**os.environ, **MOTO_ENV}
    if "anytus" not in sys.modules and not (Path(sys.executable).parent / "anytus").exists():
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO / "src"), env.get("PYTHONPATH")])
        )
    moto_port, redis_port = free_port(), free_port()
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    moto_command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(moto_port)]
    redis_command = [
        redis_server,
        "--port",
        str(redis_port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(workdir),
    ]
    with (
        process(moto_command, env, workdir / "moto.log") as moto,
        process(redis_command, env, workdir / "redis.log") as redis,
    ):
        wait_listening(moto_port, moto)
        wait_listening(redis_port, redis)
        endpoint = f"http://127.0.0.1:{moto_port}"
        import boto3

        boto3.session.Session(
            aws_access_key_id="bench", aws_secret_access_key="bench", region_name="us-east-1"
        ).client("s3", endpoint_url=endpoint).create_bucket(Bucket="bench")
        yield Services(moto, endpoint, redis, f"redis://127.0.0.1:{redis_port}/0", env, workdir)


@contextlib.contextmanager
def anytus_serve(svc: Services, name: str, args: list[str]) -> Iterator[tuple[str, int]]:
    """``anytus serve`` with *args*; yields its URL and PID."""
    log = svc.workdir / f"{name}.log"
    command = [sys.executable, "-m", "anytus", "serve", "--host", "127.0.0.1", "--port", "0"]
    with process([*command, *args], svc.env, log) as child:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if match := SERVING_LINE.search(log.read_text(errors="replace")):
                yield match.group(1), child.pid
                return
            if child.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError(f"anytus serve {args} did not start:\n{log.read_text()}")


def s3_args(svc: Services, prefix: str) -> list[str]:
    return [
        "--s3-bucket",
        "bench",
        "--s3-endpoint",
        svc.endpoint,
        "--s3-prefix",
        prefix,
        "--redis",
        svc.redis_url,
    ]


class Cpu:
    """CPU seconds used by named process trees and by this process during a block."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.text = ""

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        def now() -> dict[str, float]:
            return {name: sum(tree_cpu_seconds(pid)[:2]) for name, pid in self.pids.items()}

        start, wall, client = now(), time.perf_counter(), time.process_time()
        yield
        end, wall = now(), time.perf_counter() - wall
        parts = [f"{name} {(end[name] - start[name]) / wall * 100:.0f}%" for name in self.pids]
        parts.append(f"client {(time.process_time() - client) / wall * 100:.0f}%")
        self.text = "CPU: " + ", ".join(parts)


def leg_small_multi(
    urls: Sequence[str], payload: Payload, clients_count: int, seconds: float
) -> float:
    """POST + 1 KiB PATCH + HEAD in a loop, the clients spread over *urls*; uploads/s."""
    body = os.urandom(KIB)
    clients = [TusClient(urls[i % len(urls)], payload) for i in range(clients_count)]
    counts = [0] * clients_count
    deadline = time.perf_counter() + seconds

    def loop(i: int) -> None:
        client = clients[i]
        while time.perf_counter() < deadline:
            path = client.create(KIB)
            client.patch(path, 0, KIB, body)
            if client.head(path) != KIB:
                raise RuntimeError("HEAD after the small PATCH does not show 1 KiB")
            counts[i] += 1

    try:
        elapsed = run_threads(clients_count, loop)
    finally:
        for client in clients:
            client.close()
    return sum(counts) / elapsed


async def lock_latency(locker_kind: str, redis_url: str, rounds: int, workdir: Path) -> str:
    from anytus import FileLocker, Locker, RedisLocker

    locker: Locker
    if locker_kind == "redis":
        locker = RedisLocker(redis_url, prefix=f"bench-{uuid.uuid4().hex[:6]}:")
    else:
        directory = workdir / "locks"
        directory.mkdir(exist_ok=True)
        locker = FileLocker(directory)
    acquires: list[float] = []
    releases: list[float] = []
    for i in range(rounds):
        upload_id = f"upload{i % 64}"
        start = time.perf_counter()
        await locker.acquire(upload_id)
        middle = time.perf_counter()
        await locker.release(upload_id)
        releases.append(time.perf_counter() - middle)
        acquires.append(middle - start)
    if isinstance(locker, RedisLocker):
        locker.close()

    def ms(values: list[float]) -> str:
        return (
            f"p50 {percentile(values, 50) * 1000:.2f} / p99 {percentile(values, 99) * 1000:.2f} ms"
        )

    return f"acquire {ms(acquires)}; release {ms(releases)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short legs")
    parser.add_argument("--single-size", type=parse_size, default=128 * MIB)
    parser.add_argument("--patch-size", type=parse_size, default=32 * MIB)
    parser.add_argument("--parallel", type=int, default=8)
    parser.add_argument("--parallel-size", type=parse_size, default=16 * MIB)
    parser.add_argument("--lock-rounds", type=int, default=2000)
    parser.add_argument("--small-clients", type=int, default=8)
    parser.add_argument("--small-seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.single_size, args.parallel_size = 32 * MIB, 8 * MIB
        args.lock_rounds, args.small_seconds = 300, 2.0

    workdir = Path(tempfile.mkdtemp(prefix="anytus-bench-multi-"))
    other = OtherLoad(children=True)
    try:
        payload_path = workdir / "payload"
        payload_data = os.urandom(args.patch_size)
        payload_path.write_bytes(payload_data)
        with open(payload_path, "rb") as payload_file, services(workdir) as svc:
            payload = Payload(memoryview(payload_data), payload_file, "sendfile")
            base = {"moto": svc.moto.pid, "redis": svc.redis.pid}

            print(
                f"(a) throughput, one upload of {human(args.single_size)} in "
                f"{human(args.patch_size)} PATCHes, then {args.parallel} x "
                f"{human(args.parallel_size)} at once"
            )
            directory = workdir / "files"
            stores = {
                "FileStore (disk, durability none)": [
                    "--dir",
                    str(directory),
                    "--durability",
                    "none",
                ],
                "S3Store (moto) + RedisLocker": s3_args(svc, "throughput/"),
            }
            for name, serve_args in stores.items():
                with anytus_serve(svc, name.split()[0], serve_args) as (url, pid):
                    cpu = Cpu({"anytus": pid, **base})
                    with cpu.measure():
                        single = leg_single(url, payload, args.single_size, args.patch_size)
                    print(f"   {name}: single {single:7.1f} MiB/s   {cpu.text}")
                    with cpu.measure():
                        parallel = leg_parallel(
                            url, payload, args.parallel, args.parallel_size, args.patch_size
                        )
                    print(f"   {name}: {args.parallel} parallel {parallel:7.1f} MiB/s   {cpu.text}")

            print(f"(b) lock acquire/release latency, {args.lock_rounds} rounds, in process")
            for kind in ("file", "redis"):
                result = anyio.run(lock_latency, kind, svc.redis_url, args.lock_rounds, workdir)
                print(f"   {kind + 'locker':12s} {result}")

            print(
                f"(c) small uploads (POST + 1 KiB PATCH + HEAD), {args.small_clients} clients, "
                f"{args.small_seconds:g} s"
            )
            with anytus_serve(svc, "file-small", ["--dir", str(workdir / "small")]) as (url, pid):
                cpu = Cpu({"anytus": pid})
                with cpu.measure():
                    rate = leg_small_multi([url], payload, args.small_clients, args.small_seconds)
                print(f"   FileStore, one instance:        {rate:7.1f} uploads/s   {cpu.text}")
            with anytus_serve(svc, "s3-one", s3_args(svc, "small1/")) as (url, pid):
                cpu = Cpu({"anytus": pid, **base})
                with cpu.measure():
                    rate = leg_small_multi([url], payload, args.small_clients, args.small_seconds)
                print(f"   S3+Redis, one instance:         {rate:7.1f} uploads/s   {cpu.text}")
            with (
                anytus_serve(svc, "s3-a", s3_args(svc, "small2/")) as (url_a, pid_a),
                anytus_serve(svc, "s3-b", s3_args(svc, "small2/")) as (url_b, pid_b),
            ):
                cpu = Cpu({"anytus A": pid_a, "anytus B": pid_b, **base})
                with cpu.measure():
                    rate = leg_small_multi(
                        [url_a, url_b], payload, args.small_clients, args.small_seconds
                    )
                print(f"   S3+Redis, two instances:        {rate:7.1f} uploads/s   {cpu.text}")
        print(other.describe())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    threading.current_thread().name = "bench"
    sys.exit(main())
