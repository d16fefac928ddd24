"""What /proc says about processes and process groups, and signalling them.

Shared by orphan clean-up (a journal record is proved against the live leader), the executor
(stragglers of a task's group) and isolation without cgroups (usage and escaped processes
found from /proc, best effort). Every reader returns None (or nothing) for a process that is
gone or unreadable, never raises for it. Blocking scans of all of /proc (`scan`,
`group_alive`, `with_env`) belong in a worker thread.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "CLOCK_TICKS", "PAGE_SIZE", "ProcStat", "cmdline", "group_alive", "group_exists",
    "kill_pids", "proc_stat", "scan", "signal_group", "start_ticks", "stat_fields",
    "with_env",
]

log = logging.getLogger("slave.procfs")

CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def stat_fields(pid: int | str) -> list[str] | None:
    """Fields 3.. of /proc/<pid>/stat (state, ppid, pgrp, ...), or None if unavailable."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)  # one read: the kernel renders the whole line at once
    except OSError:
        return None
    finally:
        os.close(fd)
    return raw[raw.rfind(b")") + 2 :].decode().split()


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/<pid>/stat that the slave uses."""

    pid: int
    state: str
    pgrp: int
    utime: int  # clock ticks
    stime: int
    cutime: int  # of waited-for children
    cstime: int
    start_ticks: int  # field 22: clock ticks after boot
    rss_pages: int

    @property
    def alive(self) -> bool:
        return self.state not in ("Z", "X")


def proc_stat(pid: int | str) -> ProcStat | None:
    fields = stat_fields(pid)
    if not fields or len(fields) < 22:
        return None
    try:
        return ProcStat(int(pid), fields[0], int(fields[2]), int(fields[11]), int(fields[12]),
                        int(fields[13]), int(fields[14]), int(fields[19]), int(fields[21]))
    except ValueError:
        return None


def start_ticks(pid: int) -> int | None:
    """The process's start time (field 22, boot-relative ticks): with the pid, its identity."""
    fields = stat_fields(pid)
    return int(fields[19]) if fields else None


def cmdline(pid: int) -> bytes | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read(1 << 20)
    except OSError:
        return None


def _pids() -> Iterator[str]:
    try:
        with os.scandir("/proc") as entries:
            names = [e.name for e in entries if e.name.isdigit()]
    except OSError:
        return iter(())
    return iter(names)


def scan() -> list[ProcStat]:
    """Every live process's stat (one pass over /proc; a worker thread's job)."""
    return [s for s in map(proc_stat, _pids()) if s is not None and s.alive]


def with_env(entry: bytes) -> list[int]:
    """Pids whose environment holds the exact `NAME=value` entry (readable ones only)."""
    found = []
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read(1 << 20)
        except OSError:
            continue
        if env.startswith(entry + b"\0") or b"\0" + entry + b"\0" in env:
            found.append(int(pid))
    return found


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Signal a process group; False if it is gone. Never group 0 or 1 (ours, init's)."""
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError as e:
        log.warning("cannot signal process group %d: %s", pgid, e)
        return False


def kill_pids(pids: list[int], sig: signal.Signals) -> int:
    """Signal each pid (never 0, 1 or ourselves); how many were signalled."""
    me, n = os.getpid(), 0
    for pid in pids:
        if pid > 1 and pid != me:
            try:
                os.kill(pid, sig)
                n += 1
            except (ProcessLookupError, PermissionError):
                pass
    return n


def group_exists(pgid: int) -> bool:
    """Does the group have any member, zombies included? One kill(0), no /proc scan."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_alive(pgid: int) -> bool:
    """Does the group have a live member? Zombies do not count (they are already dead)."""
    if not group_exists(pgid):
        return False
    if not os.path.isdir("/proc/self"):
        return True  # no /proc: trust kill(0), zombies included
    for pid in _pids():
        stat = stat_fields(pid)
        if stat and stat[2] == str(pgid) and stat[0] not in ("Z", "X"):
            return True
    return False
