"""CPU accounting from /proc: per process (utime+stime) and for the whole host.

Latency alone hides cost: a gateway can look fast while burning a core per
few hundred requests. So every scenario reads the CPU ticks of the processes
behind each leg (the whole `meshgate up` tree, Redis included) before and
after its measurement window, and the host's /proc/stat to show how busy the
machine was, which on 2 shared cores says whether a figure is trustworthy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields after the command name (which may itself contain spaces or parentheses)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, all its threads included; None once it is gone."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    # fields[0] is the state (field 3 of proc(5)): utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from the parent links in /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def process_label(pid: int) -> str:
    """`edge`, `router`, `redis`... from the command line; `launcher` for `meshgate up`."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return f"pid{pid}"
    args = [a.decode(errors="replace") for a in argv if a]
    if "serve" in args and args.index("serve") + 1 < len(args):
        return args[args.index("serve") + 1]
    if args and "redis-server" in Path(args[0]).name:
        return "redis"
    if "up" in args and "meshgate" in args:
        return "launcher"
    return Path(args[0]).name if args else f"pid{pid}"


@dataclass(frozen=True)
class HostCpu:
    """Jiffies of all CPUs from the first line of /proc/stat.

    `irq` (hard and soft interrupts) is kept apart: loopback TCP is largely
    processed in softirq context, which no process's utime/stime includes.
    """

    busy: int
    irq: int
    total: int

    @classmethod
    def read(cls) -> HostCpu:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        values += [0] * (8 - len(values))
        idle = values[3] + values[4]  # idle + iowait
        total = sum(values[:8])  # guest time is already inside user and nice
        return cls(total - idle, values[5] + values[6], total)

    def busy_fraction_since(self, before: HostCpu) -> float:
        """Share of all CPUs' time that was busy, 0..1."""
        total = self.total - before.total
        return (self.busy - before.busy) / total if total > 0 else 0.0

    def irq_fraction_since(self, before: HostCpu) -> float:
        """Share of all CPUs' time spent in interrupts, 0..1."""
        total = self.total - before.total
        return (self.irq - before.irq) / total if total > 0 else 0.0


def host_busy_pct(seconds: float) -> float:
    """How busy the whole machine is over `seconds`, in % of all CPUs: the background load."""
    import time

    before = HostCpu.read()
    time.sleep(seconds)
    return round(HostCpu.read().busy_fraction_since(before) * 100, 1)


class CpuProbe:
    """Snapshots of labelled processes; the difference is CPU seconds per label."""

    def __init__(self, pids: dict[int, str]) -> None:
        self.pids = dict(pids)

    def snapshot(self) -> dict[int, float]:
        values: dict[int, float] = {}
        for pid in self.pids:
            seconds = cpu_seconds(pid)
            if seconds is not None:
                values[pid] = seconds
        return values

    def delta(self, before: dict[int, float], after: dict[int, float]) -> dict[str, float]:
        """CPU seconds per label between two snapshots (labels shared by pids are summed)."""
        out: dict[str, float] = {}
        for pid, label in self.pids.items():
            if pid in before and pid in after:
                out[label] = out.get(label, 0.0) + after[pid] - before[pid]
        return out


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmRSS, Pss) of one process in KiB; None once it is gone.

    VmRSS counts every resident page the process maps, shared ones (libraries,
    copy-on-write pages) included, so a sum over processes overstates the
    machine's real use; Pss divides each shared page among its sharers, so it
    sums to what the processes really occupy. Both are reported; the memory
    target is judged on VmRSS, the stricter of the two.
    """
    rss = pss = None
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                    break
        with open(f"/proc/{pid}/smaps_rollup") as rollup:
            for line in rollup:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
    except OSError:
        return None
    if rss is None:  # a zombie has no memory lines
        return None
    return rss, pss if pss is not None else rss
