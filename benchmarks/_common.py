"""Helpers shared by the benchmark scripts: sizes, and CPU accounting from ``/proc``.

Imported as ``from _common import ...``: running ``python benchmarks/bench_x.py`` puts
``benchmarks/`` on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import time

MIB = 1 << 20
KIB = 1 << 10
GIB = 1 << 30
CLK_TCK = os.sysconf("SC_CLK_TCK")


def parse_size(text: str) -> int:
    """Parse ``1G``, ``256M``, ``64K``, ``1GiB`` or a plain number of bytes."""
    units = {"": 1, "K": KIB, "M": MIB, "G": GIB}
    cleaned = text.strip().upper().removesuffix("IB").removesuffix("B")
    suffix = cleaned[-1:] if cleaned[-1:] in units else ""
    number = cleaned[: len(cleaned) - len(suffix)]
    try:
        value = int(float(number) * units[suffix])
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return value


def human(n: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n >= factor and n % factor == 0:
            return f"{n // factor} {unit}"
    return f"{n} B"


def own_cpu_seconds(*, children: bool = False) -> float:
    """CPU seconds of this process; with *children*, also of its children that have exited and
    been waited for."""
    times = os.times()
    own = times.user + times.system
    if children:
        own += times.children_user + times.children_system
    return own


def machine_cpu_seconds() -> tuple[float, float]:
    """User + system and stolen CPU seconds of the whole machine so far (``/proc/stat``).

    Interrupt time is left out: the loopback traffic's softirq work is ours but not accounted
    to any process.
    """
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = fields[:8]
    return (user + nice + system) / CLK_TCK, steal / CLK_TCK


class OtherLoad:
    """How much CPU the rest of the machine used while we ran: shared machines drift.

    With *children*, our own share includes the children we started and waited for.
    """

    def __init__(self, *, children: bool = False) -> None:
        self.children = children
        self.start = time.perf_counter()
        self.busy, self.steal = machine_cpu_seconds()
        self.own = own_cpu_seconds(children=children)

    def describe(self) -> str:
        wall = time.perf_counter() - self.start
        busy, steal = machine_cpu_seconds()
        other = (busy - self.busy) - (own_cpu_seconds(children=self.children) - self.own)
        return (
            f"other processes used {max(other, 0.0) / wall:.2f} of {os.cpu_count()} CPUs "
            f"during the run (hypervisor steal {(steal - self.steal) / wall:.2f})"
        )
