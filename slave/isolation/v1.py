"""cgroup v1 isolation: one directory per task in each of the memory, cpu, cpuacct, pids and
freezer hierarchies, under one per slave.

Layout (each hierarchy): `<the slave's own cgroup>/cluster-slave-<work dir digest>/task-<key>`.
Limits: memory.limit_in_bytes (and memory.memsw.limit_in_bytes where swap is accounted, so
swap does not extend it), cpu.shares (1024 per CPU) and, with `--cpu-limit hard`,
cpu.cfs_quota_us = cpus x cpu.cfs_period_us, pids.max. A kill freezes the task's freezer
cgroup, SIGKILLs every process in it and thaws it, so nothing forks its way out meanwhile.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Collection

from slave.isolation import cgroupfs as fs
from slave.isolation.base import Container, IsolationError, Isolator, Limits, Usage
from slave.isolation.parse import (
    CFS_PERIOD_US,
    MIB,
    cfs_quota_us,
    cpu_shares,
    flat_keyed,
    working_set_bytes,
)

__all__ = ["REQUIRED", "V1Container", "V1Isolator"]

log = logging.getLogger("slave.isolation")

REQUIRED = ("memory", "cpu", "cpuacct", "pids", "freezer")
SOURCE = "cgroups v1"


class V1Container(Container):
    def __init__(self, name: str, dirs: dict[str, str], limits: Limits) -> None:
        self.name = name
        self.dirs = dirs  # controller -> this task's directory (cpu and cpuacct may share one)
        self.limits = limits
        self._unique = list(dict.fromkeys(dirs.values()))

    def apply(self, cpu_limit: str) -> None:
        """Create the directories and write the limits; IsolationError (nothing left)."""
        try:
            for d in self._unique:
                fs.make_dir(d)
            lim, mem, cpu = self.limits, self.dirs["memory"], self.dirs["cpu"]
            if lim.mem_mib:
                limit = str(max(1, int(lim.mem_mib * MIB)))
                fs.write(os.path.join(mem, "memory.limit_in_bytes"), limit)
                memsw = os.path.join(mem, "memory.memsw.limit_in_bytes")
                if os.path.exists(memsw):
                    fs.write(memsw, limit)
            if lim.cpus:
                fs.write(os.path.join(cpu, "cpu.shares"), str(cpu_shares(lim.cpus)))
                if cpu_limit == "hard":
                    fs.write(os.path.join(cpu, "cpu.cfs_period_us"), str(CFS_PERIOD_US))
                    fs.write(os.path.join(cpu, "cpu.cfs_quota_us"), str(cfs_quota_us(lim.cpus)))
            if lim.pids_max:
                fs.write(os.path.join(self.dirs["pids"], "pids.max"), str(lim.pids_max))
        except IsolationError:
            self.destroy()
            raise

    def attach(self, pid: int) -> None:
        for d in self._unique:
            fs.write(os.path.join(d, "cgroup.procs"), str(pid))

    def usage(self) -> Usage | None:
        try:
            cpu_ns = fs.read_int(os.path.join(self.dirs["cpuacct"], "cpuacct.usage"))
            mem = self.dirs["memory"]
            current = fs.read_int(os.path.join(mem, "memory.usage_in_bytes"))
            stat = flat_keyed(fs.read(os.path.join(mem, "memory.stat")))
            peak = fs.read_int(os.path.join(mem, "memory.max_usage_in_bytes"))
        except IsolationError:
            return None
        working = working_set_bytes(current, stat)
        return Usage(cpu_ns / 1e9, working / MIB, max(peak, working) / MIB, SOURCE, time.time())

    def violation(self) -> str | None:
        try:
            mem = self.dirs["memory"]
            oom = flat_keyed(fs.read(os.path.join(mem, "memory.oom_control")))
            ooms = oom.get("oom_kill")
            if ooms is None and self.limits.mem_mib:  # before Linux 4.13: the limit was hit
                ooms = fs.read_int(os.path.join(mem, "memory.failcnt"))
            if ooms and self.limits.mem_mib:
                return f"memory limit exceeded ({self.limits.mem_mib:g} MiB)"
            limit = self.limits.pids_max
            if not limit:
                return None
            hit = flat_keyed(fs.read(os.path.join(self.dirs["pids"], "pids.events"))).get("max")
        except (IsolationError, ValueError):
            return None
        if hit:  # a fork failed for it: as over its memory, it is over its limits
            return f"process limit reached ({limit} processes): a fork bomb?"
        return None

    def pids(self) -> list[int]:
        try:
            return fs.procs(self.dirs.get("freezer") or self._unique[0])
        except IsolationError:
            return []

    def signal_all(self, sig: signal.Signals) -> int:
        try:
            return fs.kill_procs(self.dirs["freezer"], sig)
        except IsolationError:
            return 0

    def kill_all(self) -> bool:
        if "freezer" not in self.dirs:  # a partial cgroup left by an earlier slave
            for d in self._unique:
                fs.kill_procs(d)
            return all([fs.wait_empty(d, 1.0) for d in self._unique])
        freezer = self.dirs["freezer"]
        state = os.path.join(freezer, "freezer.state")
        for _ in range(10):
            if not fs.procs(freezer):
                return True
            fs.write(state, "FROZEN")
            deadline = time.monotonic() + 1.0
            while fs.read(state).strip() != "FROZEN" and time.monotonic() < deadline:
                time.sleep(0.001)  # FREEZING: some process is in an uninterruptible sleep
            fs.kill_procs(freezer)
            fs.write(state, "THAWED")
            if fs.wait_empty(freezer, 1.0):
                return True
        return False

    def destroy(self) -> None:
        try:
            if any(os.path.isdir(d) for d in self._unique):
                self.kill_all()
        finally:
            for d in self._unique:
                if not fs.remove_dir(d):
                    raise IsolationError(f"the cgroup {d} still holds processes after a kill")


class V1Isolator(Isolator):
    mode = "cgroups"
    version = "v1"

    def __init__(self, slave_dirs: dict[str, str], work_dir: str, cpu_limit: str,
                 pids_max: int) -> None:
        self.slave_dirs = slave_dirs  # controller -> this slave's cgroup
        self.work_dir = work_dir
        self.cpu_limit = cpu_limit
        self.pids_max = pids_max

    @classmethod
    def detect(cls, work_dir: str, cpu_limit: str, pids_max: int) -> V1Isolator:
        """The v1 isolator when every controller it needs is mounted and writable here (its
        per-slave cgroups are created to make sure); else IsolationError saying why not."""
        own, _ = fs.own_cgroups()
        by_controller = {c: m for m in fs.mounts() if m.fstype == "cgroup"
                         for c in m.controllers}
        missing = [c for c in REQUIRED if c not in by_controller]
        if missing:
            raise IsolationError(f"cgroup v1: no {', '.join(missing)} hierarchy is mounted")
        readonly = sorted({by_controller[c].mountpoint for c in REQUIRED
                           if not by_controller[c].writable})
        if readonly:
            raise IsolationError(f"cgroup v1: {', '.join(readonly)} mounted read-only")
        name = fs.slave_dir_name(work_dir)
        dirs = {c: os.path.join(fs.cgroup_dir(by_controller[c], own.get(c, "/")), name)
                for c in REQUIRED}
        for d in dict.fromkeys(dirs.values()):
            fs.make_dir(d)
        fs.write_state(work_dir, cls.version, dirs)
        return cls(dirs, work_dir, cpu_limit, pids_max)

    def create(self, key: str, limits: Limits, sandbox: str) -> V1Container:
        name = fs.task_dir_name(key)
        container = V1Container(name, {c: os.path.join(d, name)
                                       for c, d in self.slave_dirs.items()}, limits)
        container.apply(self.cpu_limit)
        return container

    def recover(self, keep: Collection[str] = ()) -> list[str]:
        """Kill and remove every task cgroup under this slave's cgroups (and under those the
        state file of an earlier slave on this work dir names) but those in `keep`."""
        sources = [self.slave_dirs]
        earlier = fs.earlier_dirs(self.work_dir, self.version)
        if earlier and earlier != self.slave_dirs:
            sources.append(earlier)
        cleaned = []
        for source in sources:
            for name in sorted(fs.task_children(source.values()) - set(keep)):
                dirs = {c: os.path.join(d, name) for c, d in source.items()
                        if os.path.isdir(os.path.join(d, name))}
                try:
                    V1Container(name, dirs, Limits()).destroy()
                except IsolationError as e:
                    log.warning("could not clean up the cgroup %s of an earlier slave: %s",
                                name, e)
                    continue
                cleaned.append(name)
            if source is earlier:
                for d in dict.fromkeys(source.values()):
                    fs.remove_dir(d)
        return cleaned

    def close(self) -> None:
        for d in dict.fromkeys(self.slave_dirs.values()):
            try:
                fs.remove_dir(d)  # only once empty: a running task's cgroup stays
            except IsolationError as e:
                log.warning("could not remove this slave's cgroup: %s", e)
