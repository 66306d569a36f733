"""Where a small request's CPU goes: the layers of ``anytus serve`` one by one, against tusd.

The small-upload load of ``bench_vs_tusd.py`` (POST + 1 KiB PATCH + HEAD on 8 keep-alive
connections, the client of ``bench_e2e.py``) against each target in turn, interleaved, the order
rotating from round to round. Every server runs pinned to one CPU (``taskset``) and is measured by
the CPU time its process uses per request (``/proc``), so that the figures compare the work each
does, not how the two CPUs were shared. The upload directory is on tmpfs (``/dev/shm``) by
default, so that creating files costs next to nothing (``--dir`` picks another), and nothing is
fsynced: tusd never fsyncs.

Targets, from the least to the whole:

- ``tusd``: the peer binary (``--tusd``), the reference;
- ``server``: anytus's HTTP server and anyio's event loop, with a trivial app that answers as a tus
  server would and stores nothing (``_layer_servers.py``);
- ``tusapp-memory``: ``TusApp`` with a ``MemoryStore`` on that server;
- ``tusapp-inline``: ``TusApp`` with a ``FileStore`` (``durability="none"``) whose blocking steps run
  on the event loop instead of in worker threads, which anytus never does: the store's system
  calls and Python without its thread hops;
- ``tusapp-file``: ``TusApp`` with a ``FileStore`` (``durability="none"``) on that server;
- ``serve``: ``anytus serve --workers 1 --durability none --log-level warning``: the last one, plus
  the access-log and upload-page layers.

The difference between two neighbours is what a layer costs. Run:
``.venv/bin/python benchmarks/bench_layers.py [--rounds 3] [--seconds 4]``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from _common import KIB, OtherLoad
from bench_e2e import REPO, CpuMeter, Payload, Server, anytus_command, leg_small
from bench_vs_tusd import free_port, start_listening

BENCHMARKS = Path(__file__).resolve().parent
TARGETS = ("tusd", "server", "tusapp-memory", "tusapp-inline", "tusapp-file", "serve")
REFERENCE = "tusd"


@dataclass
class Figures:
    """One target's rounds: CPU microseconds per request, and requests per second."""

    cpu_us: list[float] = field(default_factory=list)
    rate: list[float] = field(default_factory=list)


def command_of(target: str, port: int, directory: Path, tusd: Path) -> list[str]:
    if target == "tusd":
        return [str(tusd), "-host", "127.0.0.1", "-port", str(port), "-upload-dir",
                str(directory), "-base-path", "/files/", "-verbose=false"]  # fmt: skip
    if target == "serve":
        command, _ = anytus_command()
        return [*command, "serve", "--host", "127.0.0.1", "--port", str(port), "--dir",
                str(directory), "--workers", "1", "--durability", "none",
                "--log-level", "warning"]  # fmt: skip
    return [sys.executable, str(BENCHMARKS / "_layer_servers.py"), target, str(port),
            str(directory)]  # fmt: skip


def start(target: str, cpu: int, root: Path, tusd: Path) -> Server:
    directory = root / target
    directory.mkdir()
    port = free_port()
    command = ["taskset", "--cpu-list", str(cpu), *command_of(target, port, directory, tusd)]
    # anytus_command's environment: this checkout's anytus, if none is installed
    return start_listening(command, anytus_command()[1], root / f"{target}.log", port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4.0, help="per target and round")
    parser.add_argument("--clients", type=int, default=8, help="keep-alive connections")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help=f"comma-separated, of {','.join(TARGETS)} (default: all)",
    )
    parser.add_argument("--tusd", type=Path, default=REPO.parent / "shared" / "peers" / "tusd")
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path("/dev/shm") if Path("/dev/shm").is_dir() else Path(tempfile.gettempdir()),
        help="where the upload directories go (default: /dev/shm, a tmpfs)",
    )
    parser.add_argument(
        "--cpu",
        type=int,
        default=max(os.sched_getaffinity(0)),
        help="the CPU every server is pinned to (default: the last one)",
    )
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.targets.split(",") if name.strip()]
    if not names or set(names) - set(TARGETS):
        parser.error(f"--targets: choose from {', '.join(TARGETS)}")
    if shutil.which("taskset") is None:
        parser.error("taskset (util-linux) is needed to pin the servers")
    args.targets = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load = OtherLoad(children=True)
    root = Path(tempfile.mkdtemp(prefix="anytus-bench-layers-", dir=args.dir))
    figures = {name: Figures() for name in args.targets}
    print(
        f"bench_layers: {args.rounds} round(s) of {args.seconds:g} s, {args.clients} connections, "
        f"every server pinned to CPU {args.cpu}; uploads in {root}"
    )
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, root, ignore_errors=True)
        payload_path = root / "payload.bin"
        payload_bytes = os.urandom(KIB)
        payload_path.write_bytes(payload_bytes)
        payload = Payload(
            memoryview(payload_bytes),
            stack.enter_context(open(payload_path, "rb")),
            "sendall",
        )
        servers: dict[str, Server] = {}
        for name in args.targets:
            servers[name] = start(name, args.cpu, root, args.tusd)
            stack.callback(servers[name].stop)
            leg_small(servers[name].url, payload, args.clients, 0.5)  # warm up
        for round_ in range(args.rounds):
            shift = round_ % len(args.targets)
            for name in args.targets[shift:] + args.targets[:shift]:
                meter = CpuMeter(servers[name].process.pid)
                with meter.measure():
                    uploads, elapsed, _ = leg_small(
                        servers[name].url, payload, args.clients, args.seconds
                    )
                requests = 3 * uploads
                cpu = meter.server_user + meter.server_system
                figures[name].cpu_us.append(cpu / requests * 1e6)
                figures[name].rate.append(requests / elapsed)
                print(
                    f"   round {round_ + 1} {name:<14} {requests / elapsed:7.0f} req/s "
                    f"{cpu / requests * 1e6:6.0f} us of CPU per request "
                    f"(server {cpu / elapsed * 100:.0f}% of a CPU)"
                )
    print_report(figures)
    print(load.describe())
    return 0


def print_report(figures: dict[str, Figures]) -> None:
    print("\n== CPU per request (medians of the rounds; lower is better)")
    print(f"{'target':<15}{'us/request':>11}{'min-max':>12}{'x tusd':>8}{'req/s':>9}")
    reference = figures.get(REFERENCE)
    base = statistics.median(reference.cpu_us) if reference and reference.cpu_us else None
    previous: float | None = None
    for name, figure in figures.items():
        if not figure.cpu_us:
            continue
        median = statistics.median(figure.cpu_us)
        spread = f"{min(figure.cpu_us):.0f}-{max(figure.cpu_us):.0f}"
        ratio = f"{median / base:.2f}" if base else "-"
        layer = ""
        if name != REFERENCE and previous is not None:
            layer = f"  (+{median - previous:.0f} us for this layer)"
        print(
            f"{name:<15}{median:>11.0f}{spread:>12}{ratio:>8}"
            f"{statistics.median(figure.rate):>9.0f}{layer}"
        )
        if name != REFERENCE:
            previous = median


if __name__ == "__main__":
    sys.exit(main())
