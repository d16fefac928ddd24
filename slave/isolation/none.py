"""No isolation (`--isolation none`): limits are bookkeeping only, and the rest is best effort
from /proc.

A task is its process group plus every process whose environment still carries the task's
`SANDBOX=<path>` (children that left the group with setsid or a double fork keep it, unless
they clear their environment). Kill, timeout and shutdown signal both; a task that ends by
itself has only its group's stragglers killed (scanning every process's environment at each
task's end would cost too much). Usage: CPU and resident memory of the group's live
processes (plus what the shell reaped) each interval, and the shell's rusage at the end.
"""

from __future__ import annotations

import os
import resource
import signal
import time
from collections.abc import Collection

from slave import procfs
from slave.isolation.base import Container, Isolator, Limits, Usage
from slave.isolation.parse import MIB

__all__ = ["NoIsolation", "ProcContainer", "group_usage"]

SOURCE = "proc"


def group_usage(stats: Collection[procfs.ProcStat], pgid: int) -> tuple[float, float] | None:
    """(CPU seconds, resident MiB) of group `pgid` from a /proc scan; None if it has no live
    process. Pure. CPU counts the members' own time and what their reaped children used."""
    members = [s for s in stats if s.pgrp == pgid]
    if not members:
        return None
    ticks = sum(s.utime + s.stime + s.cutime + s.cstime for s in members)
    rss = sum(s.rss_pages for s in members) * procfs.PAGE_SIZE
    return ticks / procfs.CLOCK_TICKS, rss / MIB


class ProcContainer(Container):
    def __init__(self, name: str, sandbox: str, limits: Limits) -> None:
        self.name = name
        self.limits = limits
        self.pgid = 0
        self.marker = b"SANDBOX=" + os.fsencode(sandbox)
        self.peak = 0.0
        self.last: Usage | None = None

    def attach(self, pid: int) -> None:
        self.pgid = pid

    def observe(self, stats: Collection[procfs.ProcStat]) -> Usage | None:
        found = group_usage(stats, self.pgid) if self.pgid else None
        if found is None:
            return self.last
        cpu, mem = found
        if self.last is not None:
            cpu = max(cpu, self.last.cpu_seconds)  # a member that exits takes its time along
        self.peak = max(self.peak, mem)
        self.last = Usage(cpu, mem, self.peak, SOURCE, time.time())
        return self.last

    def usage(self) -> Usage | None:
        return self.observe(procfs.scan())

    def final_usage(self, rusage: resource.struct_rusage | None) -> Usage | None:
        if rusage is None:
            return self.last
        cpu = rusage.ru_utime + rusage.ru_stime
        peak = max(self.peak, rusage.ru_maxrss / 1024)  # KiB, of the largest process
        mem = self.last.mem_mib if self.last else 0.0
        return Usage(max(cpu, self.last.cpu_seconds if self.last else 0.0), mem, peak, SOURCE,
                     time.time())

    def violation(self) -> str | None:
        return None

    def pids(self) -> list[int]:
        return self._members()

    def _members(self) -> list[int]:
        group = [s.pid for s in procfs.scan() if s.pgrp == self.pgid] if self.pgid > 1 else []
        return sorted(set(group) | set(procfs.with_env(self.marker)))

    def signal_all(self, sig: signal.Signals) -> int:
        return procfs.kill_pids(self._members(), sig)

    def kill_all(self) -> bool:
        for _ in range(5):
            members = self._members()
            if not members:
                return True
            procfs.kill_pids(members, signal.SIGKILL)
            time.sleep(0.01)
        return not self._members()

    def destroy(self) -> None:
        return None  # nothing to release: kill_all is the executor's call


class NoIsolation(Isolator):
    mode = "none"

    def __init__(self, pids_max: int = 0, cpu_limit: str = "soft") -> None:
        self.pids_max = pids_max
        self.cpu_limit = cpu_limit

    def create(self, key: str, limits: Limits, sandbox: str) -> ProcContainer:
        return ProcContainer(key, sandbox, limits)

    def sample(self, containers: Collection[Container]) -> dict[str, Usage]:
        stats = procfs.scan()  # one pass for every task
        found = {}
        for c in containers:
            usage = c.observe(stats) if isinstance(c, ProcContainer) else c.usage()
            if usage is not None:
                found[c.name] = usage
        return found
