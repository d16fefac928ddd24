"""The master's table of slaves — pure: no I/O, no clock (callers pass `now`).

What a registration must offer (`check_resources`), how it isolates tasks (`isolation_of`:
untrusted strings, kept only when they are values a slave may send), what the master keeps
of each slave
(`SlaveInfo`, whose credential and session are never published: `to_json` leaves them
out), the first registrations not yet confirmed by a signed message (`Pending`), and the
bounds: lost and removed slaves leave the table `retention` seconds after they were lost
(`expired`), and a full table first forgets its oldest lost slaves (`make_room`).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from libproc import UPID
from master.task_index import task_key
from protos import auth
from protos import cluster_pb2 as pb

__all__ = ["MAX_CPUS", "MAX_MEM", "Pending", "SlaveInfo", "check_resources", "expired",
           "isolation_of", "make_room"]

MAX_CPUS = 65_536.0
MAX_MEM = float(1 << 40)  # MiB


def check_resources(cpus: float, mem: float) -> str | None:
    """Why a slave offering these resources cannot register, or None when it can."""
    for name, value, high in (("cpus", cpus, MAX_CPUS), ("mem", mem, MAX_MEM)):
        if not math.isfinite(value) or value <= 0:
            return f"{name} must be a finite number > 0, got {value!r}"
        if value > high:
            return f"{name} must be at most {high:g}, got {value:g}"
    return None


_ISOLATION_VALUES = {"isolation": ("cgroups", "none"), "cgroup_version": ("v1", "v2"),
                     "cpu_limit": ("soft", "hard")}
MAX_TASK_PIDS = 1 << 22  # the kernel's largest pid_max


def isolation_of(msg: pb.RegisterSlaveMessage | pb.ReregisterSlaveMessage) -> dict[str, Any]:
    """How a registering slave isolates tasks, for /master/slaves: `isolation` ("cgroups",
    "none"), `cgroup_version` ("v1", "v2", or None without cgroups), `cpu_limit`,
    `task_pids_max`. A value a slave may not send becomes "unknown"; an older slave that
    says nothing gets None for each."""
    out: dict[str, Any] = dict.fromkeys((*_ISOLATION_VALUES, "task_pids_max"))
    if not msg.HasField("isolation"):
        return out
    iso = msg.isolation
    for key, value in (("isolation", iso.mode), ("cgroup_version", iso.cgroup_version),
                       ("cpu_limit", iso.cpu_limit)):
        if value:
            out[key] = value if value in _ISOLATION_VALUES[key] else "unknown"
    if iso.HasField("task_pids_max") and iso.task_pids_max <= MAX_TASK_PIDS:
        out["task_pids_max"] = iso.task_pids_max
    return out


@dataclass
class SlaveInfo:
    id: str
    pid: UPID
    cpus: float
    mem: float
    credential: bytes
    session: auth.Session
    hostname: str = ""
    state: str = "active"  # active | disconnected | lost | removed
    registered_at: float = 0.0
    last_contact: float = 0.0
    disconnected_at: float | None = None
    lost_at: float | None = None
    used_cpus: float = 0.0
    used_mem: float = 0.0
    tasks: set[str] = field(default_factory=set)
    isolation: dict[str, Any] = field(default_factory=dict)  # isolation_of(registration)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id, "pid": str(self.pid), "hostname": self.hostname, "state": self.state,
            "cpus": self.cpus, "mem": self.mem, "used_cpus": round(self.used_cpus, 6),
            "used_mem": round(self.used_mem, 6), "registered_at": self.registered_at,
            "last_contact": self.last_contact, "tasks": sorted(self.tasks, key=task_key),
            **self.isolation,
        }


class Pending:
    """First registrations answered but not yet confirmed by a signed message.

    Anyone may send a registration (without a secret), naming any UPID, so nothing is
    scheduled on, persisted for or published of a slave until it has proven it received
    our answer. At most one per UPID (a newer attempt replaces the older), at most
    `capacity` in all (the oldest are forgotten first), each for at most `ttl` seconds.
    """

    def __init__(self, capacity: int = 1024, ttl: float = 10.0) -> None:
        self.capacity = capacity
        self.ttl = ttl
        self._by_id: OrderedDict[str, SlaveInfo] = OrderedDict()
        self._by_pid: dict[UPID, str] = {}

    def __len__(self) -> int:
        return len(self._by_id)

    def add(self, slave: SlaveInfo) -> None:
        old = self._by_pid.pop(slave.pid, None)
        if old is not None:
            self._by_id.pop(old, None)
        self._by_id[slave.id] = slave
        self._by_pid[slave.pid] = slave.id
        while len(self._by_id) > self.capacity:
            _, dropped = self._by_id.popitem(last=False)
            if self._by_pid.get(dropped.pid) == dropped.id:
                del self._by_pid[dropped.pid]

    def get(self, slave_id: str) -> SlaveInfo | None:
        return self._by_id.get(slave_id)

    def pop(self, slave_id: str) -> SlaveInfo | None:
        slave = self._by_id.pop(slave_id, None)
        if slave is not None and self._by_pid.get(slave.pid) == slave_id:
            del self._by_pid[slave.pid]
        return slave

    def expire(self, now: float) -> int:
        """Forget the registrations older than `ttl`; how many were forgotten."""
        n = 0
        while self._by_id:
            slave = next(iter(self._by_id.values()))
            if now - slave.registered_at <= self.ttl:
                break
            self.pop(slave.id)
            n += 1
        return n


def expired(slaves: Iterable[SlaveInfo], now: float, retention: float) -> list[str]:
    """Ids of lost or removed slaves holding no task, lost more than `retention` ago."""
    return [s.id for s in slaves if s.state in ("lost", "removed") and not s.tasks
            and s.lost_at is not None and now - s.lost_at > retention]


def make_room(slaves: dict[str, SlaveInfo], capacity: int) -> list[str] | None:
    """Ids to forget (oldest lost first) so one more slave fits in `capacity`; None when
    the table is full of slaves that are not lost."""
    excess = len(slaves) + 1 - capacity
    if excess <= 0:
        return []
    gone = sorted((s for s in slaves.values() if s.state in ("lost", "removed")),
                  key=lambda s: s.lost_at or 0.0)
    if len(gone) < excess:
        return None
    return [s.id for s in gone[:excess]]
