"""What one worker-thread hop costs the event loop: anytus's ThreadPool against
anyio.to_thread.run_sync, on asyncio, uvloop and trio.

Each round times a run of no-op calls with each, interleaved, and reports the event loop's
process CPU time and wall time per call; the summary prints medians and the ratio of the pool's
figure to anyio's (below 1: the pool is cheaper). A small tus request makes one hop, so this is
part of its cost that does not depend on the disk.

Run: ``.venv/bin/python benchmarks/bench_hop.py [--calls N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import anyio.to_thread

from anytus._threads import ThreadPool

LOOPS = ("asyncio", "uvloop", "trio")
WAYS = ("anyio.to_thread", "ThreadPool", "ThreadPool abandon")


def noop() -> None:
    pass


async def measure(calls: int) -> dict[str, tuple[float, float]]:
    pool = ThreadPool(16)
    figures: dict[str, tuple[float, float]] = {}
    for way in WAYS:

        async def hop(
            anyio_way: bool = way == "anyio.to_thread", abandon: bool = way.endswith("abandon")
        ) -> None:
            if anyio_way:
                await anyio.to_thread.run_sync(noop)
            else:
                await pool.run_sync(noop, abandon_on_cancel=abandon)

        for _ in range(calls // 10):  # warm up (threads started)
            await hop()
        cpu, wall = time.process_time(), time.perf_counter()
        for _ in range(calls):
            await hop()
        figures[way] = (
            (time.process_time() - cpu) / calls * 1e6,
            (time.perf_counter() - wall) / calls * 1e6,
        )
    return figures


def child(loop: str, calls: int) -> None:
    if loop == "trio":
        figures = anyio.run(measure, calls, backend="trio")
    else:
        figures = anyio.run(measure, calls, backend_options={"use_uvloop": loop == "uvloop"})
    for way, (cpu, wall) in figures.items():
        print(f"{way}\t{cpu:.2f}\t{wall:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description="one worker-thread hop: ThreadPool vs anyio")
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", choices=LOOPS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.calls)
        return
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for round_number in range(args.rounds):
        for loop in LOOPS:
            # a fresh process per loop and round: no thread or loop state carried over
            output = subprocess.run(
                [sys.executable, str(Path(__file__)), "--child", loop, "--calls", str(args.calls)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            for line in output.splitlines():
                way, cpu_text, wall_text = line.split("\t")
                results.setdefault((loop, way), []).append((float(cpu_text), float(wall_text)))
        print(f"round {round_number + 1} of {args.rounds} done", file=sys.stderr)
    print(f"{args.calls} no-op calls per way, {args.rounds} rounds, medians; per call:")
    print(f"{'loop':8} {'way':20} {'CPU µs':>8} {'wall µs':>8} {'CPU ratio':>10}")
    for loop in LOOPS:
        base = statistics.median(cpu for cpu, _ in results[(loop, "anyio.to_thread")])
        for way in WAYS:
            cpu = statistics.median(c for c, _ in results[(loop, way)])
            wall = statistics.median(w for _, w in results[(loop, way)])
            print(f"{loop:8} {way:20} {cpu:8.1f} {wall:8.1f} {cpu / base:10.2f}")


if __name__ == "__main__":
    main()
