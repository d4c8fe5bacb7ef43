"""CPU and memory accounting through psutil: per process (utime+stime) and for the whole host.

Latency alone hides cost: a gateway can look fast while burning a core per
few hundred requests. So every scenario reads the CPU time of the processes
behind each leg (the whole `meshgate up` tree, Redis included) before and
after its measurement window, and the host's CPU times to show how busy the
machine was, which on 2 shared cores says whether a figure is trustworthy.
psutil reads the same kernel counters (/proc/<pid>/stat, statm, smaps_rollup
and /proc/stat on Linux) that this module used to parse by hand.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

# The kernel's clock tick: the resolution of every CPU figure here (psutil divides by it).
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of one process, all its threads included; None once it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return float(times.user + times.system)


def descendants(pid: int) -> list[int]:
    """Every process below `pid` (children, grandchildren...); empty once it is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def argv(pid: int) -> list[str]:
    """A process's command line as words; empty once it is gone.

    A service that `meshgate up` forked carries its command line as one title
    (setproctitle), padded with NULs, not as separate arguments.
    """
    try:
        return " ".join(psutil.Process(pid).cmdline()).split()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def process_label(pid: int) -> str:
    """`edge`, `router`, `redis`... from the command line; `launcher` for `meshgate up`;
    `postgres` for every process of the embedded PostgreSQL (they title themselves
    `postgres: checkpointer`, `postgres: io worker 0`...)."""
    args = argv(pid)
    if not args:
        return f"pid{pid}"
    if "serve" in args and args.index("serve") + 1 < len(args):
        return args[args.index("serve") + 1]
    if args and "redis-server" in Path(args[0]).name:
        return "redis"
    if "up" in args and "meshgate" in args:
        return "launcher"
    if "meshgate.forkserver" in args:
        return "forkserver"
    if args and Path(args[0]).name.split(":")[0] == "postgres":
        return "postgres"
    return Path(args[0]).name if args else f"pid{pid}"


@dataclass(frozen=True)
class HostCpu:
    """CPU seconds of all CPUs together, as psutil.cpu_times() sums them.

    `irq` (hard and soft interrupts) is kept apart: loopback TCP is largely
    processed in softirq context, which no process's utime/stime includes.
    """

    busy: float
    irq: float
    total: float

    @classmethod
    def read(cls) -> HostCpu:
        times = psutil.cpu_times()
        idle = times.idle + getattr(times, "iowait", 0.0)
        irq = getattr(times, "irq", 0.0) + getattr(times, "softirq", 0.0)
        # user, nice, system, idle, iowait, irq, softirq, steal: guest time is already
        # inside user and nice, so guest and guest_nice are left out.
        parts = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
        total = sum(getattr(times, name, 0.0) for name in parts)
        return cls(total - idle, irq, total)

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


_PAGE = os.sysconf("SC_PAGE_SIZE")
_PRESENT = 1 << 63
_PFN_MASK = (1 << 55) - 1


def unique_resident_kib(pids: list[int]) -> int | None:
    """The resident pages of all `pids` together, each physical page counted once, in KiB;
    None where the kernel hides page frame numbers (they need CAP_SYS_ADMIN).

    Where RSS counts a shared page once per process and Pss splits it with every sharer
    (processes outside `pids` too), this is the memory the processes hold between them:
    what is left to others if they all exit. It reads each resident mapping's entries
    in /proc/PID/pagemap.
    """
    frames: set[int] = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps") as smaps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
                start = end = 0
                for line in smaps:
                    first = line.split(maxsplit=1)[0]
                    if "-" in first and not first.endswith(":"):
                        low, high = first.split("-")
                        start, end = int(low, 16), int(high, 16)
                    elif first == "Rss:" and int(line.split()[1]) > 0:
                        pagemap.seek(start // _PAGE * 8)
                        entries = memoryview(pagemap.read((end - start) // _PAGE * 8)).cast("Q")
                        frames.update(e & _PFN_MASK for e in entries if e & _PRESENT)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    frames.discard(0)
    if not frames:
        return None
    return len(frames) * _PAGE // 1024


def memory_kib(pid: int) -> tuple[int, int] | None:
    """(RSS, Pss) of one process in KiB; None once it is gone or a zombie.

    RSS (the kernel's VmRSS) counts every resident page the process maps,
    shared ones (libraries, copy-on-write pages) included, so a sum over
    processes overstates the machine's real use; Pss divides each shared page
    among its sharers, so it sums to what the processes really occupy. Both are
    reported; the memory target is judged on `unique_resident_kib`, which Pss
    approximates.
    """
    try:
        process = psutil.Process(pid)
        with process.oneshot():
            if process.status() == psutil.STATUS_ZOMBIE:  # a zombie has no memory
                return None
            memory = process.memory_full_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    rss = memory.rss // 1024
    pss = getattr(memory, "pss", None)  # Linux only
    return rss, pss // 1024 if pss is not None else rss
