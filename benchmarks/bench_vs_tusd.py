"""anytus against tusd v2.10 in one interleaved run; prints ratios to tusd.

Absolute figures drift on a shared machine, so every target runs every leg once per round, the
targets' order rotates from round to round, and what counts is the ratio of medians in the same run.

Targets, each one subprocess on 127.0.0.1 (a free port; one upload directory that every target
uses in turn, unless ``--separate-dirs``), started once:

- ``tusd``: the peer binary (``--tusd``, default ``../shared/peers/tusd``), ``-verbose=false``;
- ``anytus``: ``anytus serve`` with its defaults (its own HTTP server, asyncio on uvloop,
  ``--workers auto``, ``--durability finish``) but ``--log-level warning``: quiet, as tusd is run
  (an access line per request and a line per created and completed upload cost about 15% of a
  small request's CPU); ``--anytus-args`` adds flags (``--log-level info`` logs as by default);
- ``anytus-trio``: the same with ``--backend trio``;
- with ``--base-src PATH`` (another checkout's ``src``, e.g. a ``git worktree`` of an earlier
  commit), ``anytus-base``: ``anytus serve`` from there, with the same flags as ``anytus``, for an
  A/B of two versions against tusd in one run;
- ``uvicorn``: ``TusApp(FileStore(dir), base_path="/files/")`` under uvicorn (``_uvicorn_app.py``)
  with httptools and uvloop (``uvicorn[standard]``, in ``pip install -e '.[bench]'``), one
  process, with the durability given in ``--anytus-args``;
- on request, ``floor-granian`` and ``floor-threads`` (``_floor_servers.py``): not tus servers but
  the least a Python server can do here (uploads in a dict, bytes to a file, nothing else), under
  granian's ASGI and with no ASGI server at all: the ceiling of each stack, beside tusd's figures.

Legs, with the client of ``bench_e2e.py`` (one thread per connection, bodies sent with sendfile):

- ``single``: one upload of ``--single-size`` (512 MiB) in 64 MiB PATCHes on one connection, MiB/s;
- ``parallel``: 8 uploads of ``--parallel-size`` (128 MiB) at once, total MiB/s;
- ``small``: POST (1 KiB) + 1 KiB PATCH + HEAD by 8 keep-alive connections for ``--small-seconds``
  (5), requests/s;
- ``head``: HEAD latency on an idle upload (every 5 ms) while 4 uploads stream (each 256 MiB in
  64 MiB PATCHes, then DELETE, again and again) for ``--head-seconds`` (5); p99 in ms.

Each round also measures the disk: the parallel leg's bytes, in the same shape (8 files at once),
written, handed to the disk as they go, and fsynced, by a program that does nothing else. With
``durability="finish"`` (anytus's default) uploads are fsynced when they complete, so that, not
tusd's page-cache figure, is the reference for the parallel leg.

Run: ``.venv/bin/python benchmarks/bench_vs_tusd.py [--quick] [--targets tusd,anytus]
[--anytus-args "--durability none"] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from _common import KIB, MIB, OtherLoad, human
from anytus._filestore import _start_writeback
from bench_e2e import (
    REPO,
    CpuMeter,
    HttpError,
    Payload,
    Server,
    TusClient,
    add_leg_options,
    anytus_command,
    expect,
    leg_parallel,
    leg_single,
    leg_small,
    percentile,
    run_threads,
    start_anytus,
    warm_up,
)

if TYPE_CHECKING:
    from collections.abc import Callable
    from types import FrameType

BENCHMARKS = Path(__file__).resolve().parent
TARGETS = ("tusd", "anytus", "anytus-trio", "uvicorn")
#: floors (``_floor_servers.py``), on request: the most a Python server reaches here with granian's
#: ASGI (``floor-granian``) and with no ASGI server at all (``floor-threads``)
FLOORS = ("floor-granian", "floor-threads")
#: the legs, in the order they run in each round
LEGS = ("single", "parallel", "small", "head")
REFERENCE = "tusd"
#: ``anytus serve`` from the checkout named by ``--base-src``
BASE = "anytus-base"
#: at most this many HEADs per head leg, whatever the duration (one every 5 ms is ~200/s)
MAX_PROBES = 100_000


# --- servers ----------------------------------------------------------------------------------------


def free_port() -> int:
    """A port free on 127.0.0.1 right now (tusd and uvicorn are given one; `anytus serve --port 0`
    reports its own)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_listening(
    command: list[str], env: dict[str, str], log: Path, port: int, timeout: float = 30.0
) -> Server:
    """Start *command* and wait until it accepts connections on *port*."""
    with open(log, "wb") as log_file:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file, env=env
        )
    server = Server(process, f"http://127.0.0.1:{port}/files/", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
        except OSError:
            time.sleep(0.05)
            continue
        # the port was free when picked; if another process took it since, ours has exited
        time.sleep(0.2)
        if process.poll() is None:
            return server
    server.stop()
    raise RuntimeError(
        f"`{shlex.join(command)}` did not listen on port {port} (exit status "
        f"{process.returncode}); its output:\n{log.read_text(errors='replace')[-2000:]}"
    )


@dataclass
class Target:
    name: str
    directory: Path
    log: Path
    server: Server | None = None
    command: str = ""
    error: str = ""


def start_target(
    target: Target,
    tusd: Path,
    anytus_args: list[str],
    durability: str,
    base_src: Path | None = None,
) -> Server:
    if target.name == "tusd":
        port = free_port()
        command = [str(tusd), "-host", "127.0.0.1", "-port", str(port)]
        command += ["-upload-dir", str(target.directory), "-base-path", "/files/"]
        command += ["-verbose=false"]
        target.command = shlex.join(command)
        return start_listening(command, dict(os.environ), target.log, port)
    if target.name in FLOORS:
        port = free_port()
        command = [sys.executable, str(BENCHMARKS / "_floor_servers.py")]
        command += [target.name.removeprefix("floor-"), str(port), str(target.directory)]
        target.command = shlex.join(command)
        return start_listening(command, dict(os.environ), target.log, port)
    if target.name == "uvicorn":
        port = free_port()
        _, env = anytus_command()
        env["ANYTUS_BENCH_DIR"] = str(target.directory)
        env["ANYTUS_BENCH_DURABILITY"] = durability
        command = [sys.executable, "-m", "uvicorn", "_uvicorn_app:app", "--app-dir"]
        command += [str(BENCHMARKS), "--host", "127.0.0.1", "--port", str(port)]
        # httptools and uvloop (uvicorn[standard]) named, so that a missing one fails instead of
        # falling back to h11, whose receive buffer copying halved the single upload here
        command += ["--http", "httptools", "--loop", "uvloop"]
        command += ["--no-access-log", "--log-level", "warning"]
        target.command = f"ANYTUS_BENCH_DURABILITY={durability} {shlex.join(command)}"
        return start_listening(command, env, target.log, port)
    extra = ["--backend", "trio"] if target.name == "anytus-trio" else []
    # quiet, as tusd is run (-verbose=false); a --log-level in --anytus-args comes later and wins
    extra += ["--log-level", "warning", *anytus_args]
    src = base_src if target.name == BASE else None
    target.command = shlex.join(
        ["anytus", "serve", "--port", "0", "--dir", str(target.directory), *extra]
    )
    if src is not None:
        target.command = f"PYTHONPATH={shlex.quote(str(src))} {target.command}"
    return start_anytus(target.directory, target.log, extra, src=src)


def disk_write_rate(directory: Path, data: memoryview, files: int, each: int) -> float:
    """This disk's durable write rate, MiB/s, in a leg's shape: *files* files of *each* bytes
    written at once (a thread each) in *directory*, every 8 MiB handed to the disk as it is
    written (``sync_file_range``, as anytus does) and each file fsynced at its end, by a program
    that does nothing else: what ``durability="finish"`` asks of the uploads. The files are
    removed afterwards."""
    piece = min(len(data), 8 * MIB)

    def write(index: int) -> None:
        path = directory / f"disk-reference-{index}.bin"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            written = 0
            while written < each:
                n = os.write(fd, data[: min(each - written, piece)])
                _start_writeback(fd, written, n)
                written += n
            os.fsync(fd)
        finally:
            os.close(fd)

    try:
        elapsed = run_threads(files, write)
    finally:
        for index in range(files):
            (directory / f"disk-reference-{index}.bin").unlink(missing_ok=True)
    return files * each / MIB / elapsed


def clear(directory: Path) -> None:
    """Delete every file a leg left (no request is in flight): tusd's ``<id>`` and ``<id>.info``,
    anytus's ``<id>.bin``, ``.info`` and ``.lock``. No sync: deleted files' dirty pages are
    dropped, never written."""
    for path in directory.iterdir():
        if path.is_file():
            path.unlink(missing_ok=True)


# --- the head leg -----------------------------------------------------------------------------------


def leg_head(
    url: str, payload: Payload, streams: int, each: int, patch_size: int, seconds: float
) -> tuple[list[float], float]:
    """HEAD an idle upload every 5 ms while *streams* uploads of *each* bytes stream, each deleted
    once complete and started again, for *seconds*; return the latencies and the streams' MiB/s.

    Unlike ``bench_e2e``'s leg, the load lasts as long for every target, whatever its speed, and
    DELETE keeps the disk use at *streams* x *each*.
    """
    prober = TusClient(url, payload)
    idle = prober.create(MIB)
    prober.patch(idle, 0, 512 * KIB, os.urandom(512 * KIB))
    clients = [TusClient(url, payload) for _ in range(streams)]
    sent = [0] * streams
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    def stream(i: int) -> None:
        client = clients[i]
        while time.perf_counter() < deadline:
            path = client.create(each)
            offset = 0
            # a PATCH that starts before the deadline runs to its end: at most one more each
            while offset < each and time.perf_counter() < deadline:
                length = min(patch_size, each - offset, len(payload.data))
                offset = client.patch(path, offset, length)
                sent[i] += length
            expect(client.conn.request("DELETE", path), 204, "DELETE")

    def probe() -> None:
        # the idle upload, not a streaming one: a HEAD takes the upload's lock, which would
        # interrupt that upload's PATCH
        for _ in range(MAX_PROBES):
            if time.perf_counter() >= deadline:
                return
            start = time.perf_counter()
            prober.head(idle)
            latencies.append(time.perf_counter() - start)
            time.sleep(0.005)

    try:
        elapsed = run_threads(streams + 1, lambda i: stream(i) if i < streams else probe())
    finally:
        for client in [prober, *clients]:
            client.close()
    return latencies, sum(sent) / MIB / elapsed


# --- legs and results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Leg:
    key: str
    title: str
    unit: str
    higher_is_better: bool
    #: bytes written and deleted just before the leg (see bench_e2e.warm_up)
    warm: int
    #: url -> the leg's figure and secondary figures
    run: Callable[[str], tuple[float, dict[str, float]]]


@dataclass
class Record:
    round: int
    target: str
    leg: str
    value: float | None
    unit: str
    extras: dict[str, float] = field(default_factory=dict)
    wall: float = 0.0
    #: CPU used during the leg, in CPUs (1.0 = one core busy): the server's process tree, the client
    server_cpu: float = 0.0
    client_cpu: float = 0.0
    error: str = ""


def make_legs(args: argparse.Namespace, payload: Payload) -> list[Leg]:
    patch: int = args.patch_size

    def single(url: str) -> tuple[float, dict[str, float]]:
        return leg_single(url, payload, args.single_size, patch), {}

    def parallel(url: str) -> tuple[float, dict[str, float]]:
        return leg_parallel(url, payload, args.parallel, args.parallel_size, patch), {}

    def small(url: str) -> tuple[float, dict[str, float]]:
        uploads, elapsed, reconnects = leg_small(
            url, payload, args.small_clients, args.small_seconds
        )
        return 3 * uploads / elapsed, {"uploads/s": uploads / elapsed, "reconnects": reconnects}

    def head(url: str) -> tuple[float, dict[str, float]]:
        latencies, rate = leg_head(
            url, payload, args.head_streams, args.head_stream_size, patch, args.head_seconds
        )
        if not latencies:
            raise HttpError("no HEAD completed")
        return percentile(latencies, 99) * 1e3, {
            "p50 ms": percentile(latencies, 50) * 1e3,
            "max ms": max(latencies) * 1e3,
            "HEADs": len(latencies),
            "streams MiB/s": rate,
        }

    single_title = f"1 upload of {human(args.single_size)}, {human(patch)} PATCHes"
    return [
        Leg("single", single_title, "MiB/s", True, args.single_size, single),
        Leg(
            "parallel",
            f"{args.parallel} parallel uploads of {human(args.parallel_size)}",
            "MiB/s",
            True,
            args.parallel * args.parallel_size,
            parallel,
        ),
        Leg(
            "small",
            f"small uploads (POST + 1 KiB PATCH + HEAD), {args.small_clients} connections",
            "req/s",
            True,
            0,
            small,
        ),
        Leg(
            "head",
            f"HEAD p99 while {args.head_streams} x {human(args.head_stream_size)} stream",
            "ms",
            False,
            args.head_streams * args.head_stream_size,
            head,
        ),
    ]


def run_leg(leg: Leg, target: Target, round_: int, root: Path, payload: Payload) -> Record:
    assert target.server is not None
    clear(target.directory)
    if leg.warm:
        warm_up(root, leg.warm, payload)
    meter = CpuMeter(target.server.process.pid)
    record = Record(round_, target.name, leg.key, None, leg.unit)
    try:
        with meter.measure():
            record.value, record.extras = leg.run(target.server.url)
    except (OSError, HttpError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    finally:
        clear(target.directory)
    record.wall = meter.wall
    if meter.wall > 0:
        record.server_cpu = (meter.server_user + meter.server_system) / meter.wall
        record.client_cpu = meter.client / meter.wall
    return record


# --- report -----------------------------------------------------------------------------------------


@dataclass
class Summary:
    median: float
    low: float
    high: float
    server_cpu: float
    client_cpu: float
    extras: dict[str, float]
    ratio: float | None = None


def summarize(records: list[Record], legs: list[Leg]) -> dict[str, dict[str, Summary]]:
    """Per leg and target: the median across rounds, and the ratio to tusd's median (oriented so
    that > 1 is better than tusd)."""
    table: dict[str, dict[str, Summary]] = {}
    for leg in legs:
        by_target: dict[str, list[Record]] = {}
        for record in records:
            if record.leg == leg.key and record.value is not None:
                by_target.setdefault(record.target, []).append(record)
        row = table.setdefault(leg.key, {})
        for name, done in by_target.items():
            values = [r.value for r in done if r.value is not None]
            keys = done[0].extras.keys()
            row[name] = Summary(
                statistics.median(values),
                min(values),
                max(values),
                statistics.median(r.server_cpu for r in done),
                statistics.median(r.client_cpu for r in done),
                {key: statistics.median(r.extras[key] for r in done) for key in keys},
            )
        reference = row.get(REFERENCE)
        for summary in row.values():
            if reference is not None and reference.median > 0 and summary.median > 0:
                ratio = summary.median / reference.median
                summary.ratio = ratio if leg.higher_is_better else 1 / ratio
    return table


def figure(value: float, unit: str) -> str:
    return f"{value:.1f}" if unit == "ms" or value < 100 else f"{value:.0f}"


def print_report(table: dict[str, dict[str, Summary]], legs: list[Leg], names: list[str]) -> None:
    for leg in legs:
        row = table.get(leg.key, {})
        better = "higher" if leg.higher_is_better else "lower"
        ratio_text = "target/tusd" if leg.higher_is_better else "tusd/target"
        print(f"\n== {leg.key}: {leg.title} ({leg.unit}, {better} is better)")
        header = f"{'target':<12} {'median':>8} {'min-max':>15} {ratio_text:>12} {'server CPU':>11}"
        print(f"{header} {'client CPU':>11}  other medians")
        for name in names:
            summary = row.get(name)
            if summary is None:
                print(f"{name:<12} {'no figure':>8}")
                continue
            spread = f"{figure(summary.low, leg.unit)}-{figure(summary.high, leg.unit)}"
            ratio = f"{summary.ratio:.2f}" if summary.ratio is not None else "-"
            extras = ", ".join(
                f"{key} {value:.1f}" if key.endswith("ms") else f"{key} {value:.0f}"
                for key, value in summary.extras.items()
            )
            print(
                f"{name:<12} {figure(summary.median, leg.unit):>8} {spread:>15} {ratio:>12} "
                f"{summary.server_cpu * 100:>10.0f}% {summary.client_cpu * 100:>10.0f}%  {extras}"
            )

    others = [name for name in names if name != REFERENCE]
    print("\n== summary: ratio to tusd, medians of the rounds (> 1.00: better than tusd)")
    print("   throughput legs: target/tusd; head (HEAD p99 latency): tusd/target")
    header = f"{'leg':<10} {'tusd':>14}" + "".join(f" {name:>12}" for name in others)
    print(header)
    print("-" * len(header))
    for leg in legs:
        row = table.get(leg.key, {})
        reference = row.get(REFERENCE)
        tusd = f"{figure(reference.median, leg.unit)} {leg.unit}" if reference else "-"
        cells = ""
        for name in others:
            summary = row.get(name)
            cells += f" {summary.ratio:>12.2f}" if summary and summary.ratio else f" {'-':>12}"
        print(f"{leg.key:<10} {tusd:>14}{cells}")


def print_disk(table: dict[str, dict[str, Summary]], rates: dict[str, list[float]]) -> None:
    """The disk's durable write rate beside the parallel leg: with ``finish`` those uploads are
    fsynced, so this, not tusd's page-cache figure, is what to hold them against (a
    reference, not a hard ceiling: this disk's rate swings from one write to the next)."""
    print("\n== disk: the same bytes in the same shape, written and fsynced by a program that does")
    print("   nothing else (MiB/s, medians); target/disk")
    for key, values in rates.items():
        if not values:
            continue
        median = statistics.median(values)
        cells = ", ".join(
            f"{name} {summary.median / median:.2f}x"
            for name, summary in table.get(key, {}).items()
            if name != REFERENCE
        )
        print(f"{key:<10} {median:>6.0f} ({min(values):.0f}-{max(values):.0f})  {cells}")


# --- main -------------------------------------------------------------------------------------------


def on_sigterm(signum: int, frame: FrameType | None) -> NoReturn:
    # as for Ctrl-C: unwind through the finally blocks that stop the servers
    raise KeyboardInterrupt


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str], str]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="1 round, small sizes: a smoke run")
    parser.add_argument("--rounds", type=int, help="rounds (3; quick 1)")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, of {','.join(TARGETS + FLOORS)} (default: {','.join(TARGETS)})",
    )
    parser.add_argument(
        "--legs",
        default=",".join(LEGS),
        help=f"comma-separated, of {','.join(LEGS)} (default: all)",
    )
    parser.add_argument(
        "--anytus-args",
        default="",
        help='extra flags for anytus serve, e.g. "--durability none" or =--durability=none (its '
        "--durability also applies to the uvicorn target)",
    )
    parser.add_argument("--tusd", type=Path, default=REPO.parent / "shared" / "peers" / "tusd")
    parser.add_argument(
        "--separate-dirs",
        action="store_true",
        help="an upload directory per target (default: one for all, used by one leg at a time)",
    )
    add_leg_options(
        parser,
        single="512M; quick 64M",
        parallel_size="128M; quick 16M",
        head_stream_size="256M; quick 64M",
        small_seconds="5; quick 2",
    )
    parser.add_argument("--head-seconds", type=float, help="head leg duration (5; quick 2)")
    parser.add_argument(
        "--base-src",
        type=Path,
        help=f"another checkout's src directory: adds the target {BASE}, anytus serve from there "
        "with anytus's flags, right after anytus",
    )
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", type=Path, help="write the raw figures here")
    args = parser.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (1 if quick else 3)
    args.single_size = args.single_size or (64 if quick else 512) * MIB
    args.parallel_size = args.parallel_size or (16 if quick else 128) * MIB
    args.small_seconds = args.small_seconds or (2.0 if quick else 5.0)
    args.head_stream_size = args.head_stream_size or (64 if quick else 256) * MIB
    args.head_seconds = args.head_seconds or (2.0 if quick else 5.0)
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    unknown = sorted(set(names) - set(TARGETS + FLOORS))
    if unknown or not names:
        choices = ", ".join(TARGETS + FLOORS)
        parser.error(f"--targets: unknown {', '.join(unknown)}; choose from {choices}")
    if args.base_src is not None:
        if not (args.base_src / "anytus" / "__init__.py").is_file():
            parser.error(f"--base-src: no anytus package in {args.base_src}")
        args.base_src = args.base_src.resolve()
        at = names.index("anytus") + 1 if "anytus" in names else len(names)
        names.insert(at, BASE)
    legs = [name.strip() for name in args.legs.split(",") if name.strip()]
    if not legs or set(legs) - set(LEGS):
        parser.error(f"--legs: choose from {', '.join(LEGS)}")
    args.legs = legs
    # what the anytus targets run with: the uvicorn target follows anytus serve's --durability
    durability_parser = argparse.ArgumentParser(add_help=False)
    durability_parser.add_argument("--durability", default="finish")
    durability = durability_parser.parse_known_args(shlex.split(args.anytus_args))[0].durability
    return args, list(dict.fromkeys(names)), durability


def main(argv: list[str] | None = None) -> int:
    args, names, durability = parse_args(argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    # our own share of the machine: this client and the servers it started and waited for
    load = OtherLoad(children=True)
    root = Path(tempfile.mkdtemp(prefix="anytus-bench-vs-tusd-", dir=args.dir))
    # One upload directory for every target (one leg runs at a time, and each starts and ends with
    # an empty directory), so that every target creates its files in the same place. This disk's
    # ext4 has no journal, and then ext4 passes over inodes freed in the last ~30 s when it picks
    # one for a new file: right after a leg's files are deleted, creating a file took 0.3-0.6 ms
    # instead of 10 us here, and how much depends on the directory's block group.
    targets = [
        Target(name, root / (name if args.separate_dirs else "uploads"), root / f"{name}.log")
        for name in names
    ]
    records: list[Record] = []
    payload_path = root / "payload.bin"
    payload_bytes = os.urandom(args.patch_size)
    payload_path.write_bytes(payload_bytes)
    legs: list[Leg] = []
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        payload = Payload(
            memoryview(payload_bytes), stack.enter_context(open(payload_path, "rb")), "sendfile"
        )
        legs = [leg for leg in make_legs(args, payload) if leg.key in args.legs]
        print(
            f"bench_vs_tusd: {args.rounds} round(s), targets {', '.join(names)}; anytus durability "
            f"{durability} (tusd never fsyncs); data in {root}; {os.cpu_count()} CPUs"
        )
        for target in targets:
            target.directory.mkdir(exist_ok=True)
            try:
                target.server = start_target(
                    target, args.tusd, shlex.split(args.anytus_args), durability, args.base_src
                )
            except (OSError, RuntimeError) as exc:
                target.error = str(exc)
                print(f"   {target.name}: failed to start, left out: {exc}")
                continue
            stack.callback(stop_server, target)
            print(f"   {target.name}: {target.command} -> {target.server.url}")
        running = [target for target in targets if target.server is not None]
        # the parallel leg's shape only: one file alone gave 660-870 MiB/s where anytus's single
        # upload, written the same way, did 1,300-1,700 (the disk's rate swings too much for it)
        disk_rates: dict[str, list[float]] = {"parallel": []}
        shapes = (
            {"parallel": (args.parallel, args.parallel_size)} if "parallel" in args.legs else {}
        )
        for round_ in range(args.rounds):
            for key, (files, each) in shapes.items():
                rate = disk_write_rate(targets[0].directory, payload.data, files, each)
                disk_rates[key].append(rate)
                print(f"   round {round_ + 1} {key:<8} disk         {rate:8.0f} MiB/s")
            # rotate the order, so that each target runs early and late in the legs' sequence
            shift = round_ % max(len(running), 1)
            order = running[shift:] + running[:shift]
            for leg in legs:
                for target in order:
                    if target.server is None:
                        continue
                    record = run_leg(leg, target, round_ + 1, root, payload)
                    records.append(record)
                    report_progress(record, target)
        # the servers stop here (ExitStack), before the load line counts their CPU
    table = summarize(records, legs)
    print_report(table, legs, [target.name for target in targets])
    print_disk(table, disk_rates)
    print(f"\nanytus targets' durability: {durability} (tusd never fsyncs)")
    for target in targets:
        if target.error:
            print(f"{target.name} did not start: {target.error.splitlines()[0]}")
    print(load.describe())
    if args.json is not None:
        write_json(args, durability, targets, records, table, disk_rates)
    return 0


def report_progress(record: Record, target: Target) -> None:
    assert target.server is not None
    if record.value is None:
        print(f"   round {record.round} {record.leg:<8} {record.target:<12} FAILED: {record.error}")
        if target.server.process.poll() is not None:
            print(f"   {target.name} exited ({target.server.process.returncode}); left out now")
            print(target.log.read_text(errors="replace")[-2000:])
            target.error = f"exited with {target.server.process.returncode} during the run"
            target.server = None
        return
    print(
        f"   round {record.round} {record.leg:<8} {record.target:<12} "
        f"{figure(record.value, record.unit):>8} {record.unit:<6} "
        f"server CPU {record.server_cpu * 100:3.0f}%, client CPU {record.client_cpu * 100:3.0f}%"
    )


def stop_server(target: Target) -> None:
    if target.server is not None:
        target.server.stop()


def write_json(
    args: argparse.Namespace,
    durability: str,
    targets: list[Target],
    records: list[Record],
    table: dict[str, dict[str, Summary]],
    disk_rates: dict[str, list[float]],
) -> None:
    settings = {
        key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()
    }
    document = {
        "settings": settings,
        "targets": {t.name: {"command": t.command, "error": t.error} for t in targets},
        "durability": durability,
        "records": [asdict(record) for record in records],
        "disk_write_mib_s": disk_rates,
        "summary": {
            leg: {name: asdict(summary) for name, summary in row.items()}
            for leg, row in table.items()
        },
    }
    args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(f"raw figures written to {args.json}")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # the servers were stopped on the way out (main's ExitStack)
        print("bench_vs_tusd: interrupted", file=sys.stderr)
        sys.exit(130)
