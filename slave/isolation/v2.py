"""cgroup v2 (unified) isolation: one cgroup per task under one per slave.

Layout: `<the slave's own cgroup>/cluster-slave-<work dir digest>/task-<key>`, with the
memory, cpu and pids controllers enabled down to the task cgroups (so they must be in
cgroup.controllers of the slave's own cgroup: delegated to it). Limits: memory.max and
memory.swap.max = 0 (swap does not extend it), cpu.weight (the v1 shares mapped as systemd
does) and, with `--cpu-limit hard`, cpu.max = "cpus x period period", pids.max. A kill
writes 1 to cgroup.kill (Linux 5.14+), else freezes (cgroup.freeze), SIGKILLs and thaws.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Collection, Sequence

from slave.isolation import cgroupfs as fs
from slave.isolation.base import Container, IsolationError, Isolator, Limits, Usage
from slave.isolation.parse import (
    CFS_PERIOD_US,
    MIB,
    cfs_quota_us,
    cpu_weight,
    flat_keyed,
    working_set_bytes,
)

__all__ = ["REQUIRED", "V2Container", "V2Isolator"]

log = logging.getLogger("slave.isolation")

REQUIRED = ("memory", "cpu", "pids")
SOURCE = "cgroups v2"


class V2Container(Container):
    def __init__(self, name: str, path: str, limits: Limits,
                 controllers: Collection[str] = REQUIRED) -> None:
        self.name = name
        self.path = path
        self.limits = limits
        self.controllers = frozenset(controllers)

    def _file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def apply(self, cpu_limit: str) -> None:
        """Create the cgroup and write the limits; IsolationError (nothing left)."""
        fs.make_dir(self.path)
        try:
            lim = self.limits
            if lim.mem_mib and "memory" in self.controllers:
                fs.write(self._file("memory.max"), str(max(1, int(lim.mem_mib * MIB))))
                if os.path.exists(self._file("memory.swap.max")):
                    fs.write(self._file("memory.swap.max"), "0")
            if lim.cpus and "cpu" in self.controllers:
                fs.write(self._file("cpu.weight"), str(cpu_weight(lim.cpus)))
                if cpu_limit == "hard":
                    fs.write(self._file("cpu.max"),
                             f"{cfs_quota_us(lim.cpus)} {CFS_PERIOD_US}")
            if lim.pids_max and "pids" in self.controllers:
                fs.write(self._file("pids.max"), str(lim.pids_max))
        except IsolationError:
            self.destroy()
            raise

    def attach(self, pid: int) -> None:
        fs.write(self._file("cgroup.procs"), str(pid))

    def usage(self) -> Usage | None:
        try:
            cpu = flat_keyed(fs.read(self._file("cpu.stat")))  # there without the controller
            if "memory" in self.controllers:
                current = fs.read_int(self._file("memory.current"))
                stat = flat_keyed(fs.read(self._file("memory.stat")))
                working = working_set_bytes(current, stat)
                try:
                    peak = fs.read_int(self._file("memory.peak"))  # Linux 5.19+
                except IsolationError:
                    peak = working
            else:
                working = peak = 0
        except IsolationError:
            return None
        return Usage(cpu.get("usage_usec", 0) / 1e6, working / MIB,
                     max(peak, working) / MIB, SOURCE, time.time())

    def violation(self) -> str | None:
        try:
            if "memory" in self.controllers and self.limits.mem_mib:
                events = flat_keyed(fs.read(self._file("memory.events")))
                if events.get("oom_kill", 0) or events.get("oom_group_kill", 0):
                    return f"memory limit exceeded ({self.limits.mem_mib:g} MiB)"
            limit = self.limits.pids_max
            if "pids" in self.controllers and limit:
                hit = flat_keyed(fs.read(self._file("pids.events"))).get("max", 0)
                if hit:  # a fork failed for it: it is over its limit
                    return f"process limit reached ({limit} processes): a fork bomb?"
        except (IsolationError, ValueError):
            return None
        return None

    def pids(self) -> list[int]:
        try:
            return fs.procs(self.path)
        except IsolationError:
            return []

    def signal_all(self, sig: signal.Signals) -> int:
        try:
            return fs.kill_procs(self.path, sig)
        except IsolationError:
            return 0

    def kill_all(self) -> bool:
        for _ in range(10):
            if not fs.procs(self.path):
                return True
            if os.path.exists(self._file("cgroup.kill")):
                fs.write(self._file("cgroup.kill"), "1")
            else:  # before Linux 5.14: freeze, kill, thaw
                fs.write(self._file("cgroup.freeze"), "1")
                deadline = time.monotonic() + 1.0
                while "frozen 1" not in fs.read(self._file("cgroup.events")) \
                        and time.monotonic() < deadline:
                    time.sleep(0.001)
                fs.kill_procs(self.path)
                fs.write(self._file("cgroup.freeze"), "0")
            if fs.wait_empty(self.path, 1.0):
                return True
        return False

    def destroy(self) -> None:
        try:
            if os.path.isdir(self.path):
                self.kill_all()
        finally:
            if not fs.remove_dir(self.path):
                raise IsolationError(f"the cgroup {self.path} still holds processes after a kill")


class V2Isolator(Isolator):
    mode = "cgroups"
    version = "v2"

    def __init__(self, slave_dir: str, work_dir: str, cpu_limit: str, pids_max: int,
                 controllers: Collection[str] = REQUIRED) -> None:
        self.slave_dir = slave_dir
        self.work_dir = work_dir
        self.cpu_limit = cpu_limit
        self.pids_max = pids_max
        self.controllers = frozenset(controllers)

    @classmethod
    def detect(cls, work_dir: str, cpu_limit: str, pids_max: int,
               require: Sequence[str] = REQUIRED) -> V2Isolator:
        """The v2 isolator when the slave's own v2 cgroup has the controllers it needs
        (`require`) and lets it enable them below; else IsolationError saying why not."""
        _, own = fs.own_cgroups()
        v2 = [m for m in fs.mounts() if m.fstype == "cgroup2"]
        if own is None or not v2:
            raise IsolationError("cgroup v2: no unified hierarchy is mounted")
        mount = v2[0]
        if not mount.writable:
            raise IsolationError(f"cgroup v2: {mount.mountpoint} is mounted read-only")
        base = fs.cgroup_dir(mount, own)
        available = set(fs.read(os.path.join(base, "cgroup.controllers")).split())
        missing = [c for c in require if c not in available]
        if missing:
            raise IsolationError(
                f"cgroup v2 at {mount.mountpoint}: the {', '.join(missing)} controller(s) are "
                f"not available to {base} (cgroup.controllers: "
                f"{' '.join(sorted(available)) or 'empty'}), so tasks cannot be limited")
        slave_dir = os.path.join(base, fs.slave_dir_name(work_dir))
        enable = " ".join(f"+{c}" for c in require)
        if enable:  # fails with EBUSY when `base` holds processes and is not the root
            fs.write(os.path.join(base, "cgroup.subtree_control"), enable)
        fs.make_dir(slave_dir)
        if enable:
            fs.write(os.path.join(slave_dir, "cgroup.subtree_control"), enable)
        fs.write_state(work_dir, cls.version, {"unified": slave_dir})
        return cls(slave_dir, work_dir, cpu_limit, pids_max, require)

    def create(self, key: str, limits: Limits, sandbox: str) -> V2Container:
        name = fs.task_dir_name(key)
        container = V2Container(name, os.path.join(self.slave_dir, name), limits,
                                self.controllers)
        container.apply(self.cpu_limit)
        return container

    def recover(self, keep: Collection[str] = ()) -> list[str]:
        """Kill and remove every task cgroup of this slave's (and of the one an earlier slave
        on this work dir recorded) but those in `keep`."""
        parents = [self.slave_dir]
        earlier = fs.earlier_dirs(self.work_dir, self.version).get("unified")
        if earlier and earlier != self.slave_dir:
            parents.append(earlier)
        cleaned = []
        for parent in parents:
            for name in sorted(fs.task_children([parent]) - set(keep)):
                try:
                    V2Container(name, os.path.join(parent, name), Limits()).destroy()
                except IsolationError as e:
                    log.warning("could not clean up the cgroup %s of an earlier slave: %s",
                                name, e)
                    continue
                cleaned.append(name)
        if earlier and earlier != self.slave_dir:
            fs.remove_dir(earlier)
        return cleaned

    def close(self) -> None:
        try:
            fs.remove_dir(self.slave_dir)  # only once empty
        except IsolationError as e:
            log.warning("could not remove this slave's cgroup: %s", e)
