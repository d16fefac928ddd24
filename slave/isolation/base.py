"""The one small interface between the executor and the ways it isolates tasks.

An `Isolator` belongs to one slave (one work dir); it makes one `Container` per task attempt
and, at start-up, cleans up what a predecessor on the same work dir left (`recover`). A
`Container` is where all of one task's processes are, whatever they do (setsid, double
fork): with cgroups, the task's cgroup; without, its process group plus whatever carries its
`SANDBOX` in its environment (best effort). All methods block briefly on file I/O (cgroup
files, /proc) and are called from a worker thread by the executor, except `create` and
`attach`, which are fast (a few mkdirs and writes) and run on the loop at spawn time.
Failures are `IsolationError`s whose message says what failed and what to do.
"""

from __future__ import annotations

import resource
import signal
from abc import ABC, abstractmethod
from collections.abc import Collection
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["Container", "IsolationError", "Isolator", "Limits", "Usage"]


class IsolationError(Exception):
    """Isolation could not be set up or used; the message says what and what to do."""


@dataclass(frozen=True)
class Limits:
    """What one task may use. None: no limit of that kind."""

    cpus: float | None = None
    mem_mib: float | None = None
    pids_max: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Usage:
    """What a task has used: CPU seconds (user + system), memory now and at most (MiB)."""

    cpu_seconds: float
    mem_mib: float
    mem_peak_mib: float
    source: str  # "cgroups v1", "cgroups v2" or "proc"
    timestamp: float

    def to_json(self) -> dict[str, Any]:
        return {"cpu_seconds": round(self.cpu_seconds, 3), "mem_mib": round(self.mem_mib, 2),
                "mem_peak_mib": round(self.mem_peak_mib, 2), "source": self.source,
                "timestamp": self.timestamp}

    def reportable_change(self, last: Usage | None) -> bool:
        """Whether this sample is worth reporting after `last` (what was reported before):
        CPU seconds that moved by 0.01 s or memory by 0.1 MiB, as rounded for the API."""
        return last is None or (round(self.cpu_seconds, 2) != round(last.cpu_seconds, 2)
                                or round(self.mem_mib, 1) != round(last.mem_mib, 1))

    @staticmethod
    def at_end(last: Usage | None, final: Usage | None) -> Usage | None:
        """A task's usage once it ended: the final reading (cumulative figures can only
        grow) with memory "now" taken from `last`, the last sample seen while it ran."""
        if final is None or last is None:
            return final or last
        return Usage(max(final.cpu_seconds, last.cpu_seconds), last.mem_mib,
                     max(final.mem_peak_mib, last.mem_peak_mib), final.source, final.timestamp)


class Container(ABC):
    """All the processes of one task attempt, and what they are allowed."""

    name: str
    limits: Limits

    @abstractmethod
    def attach(self, pid: int) -> None:
        """Put `pid` (the task's shell, not yet running the command) in; IsolationError."""

    @abstractmethod
    def usage(self) -> Usage | None:
        """What the task uses now (None if it cannot be read)."""

    def final_usage(self, rusage: resource.struct_rusage | None) -> Usage | None:
        """What the task used in all, once its shell has exited (`rusage`: the shell's, from
        wait4) and before `destroy`."""
        return self.usage()

    @abstractmethod
    def violation(self) -> str | None:
        """Why the task must end FAILED (e.g. 'memory limit exceeded (64 MiB)'), or None."""

    @abstractmethod
    def pids(self) -> list[int]:
        """The task's processes now (empty once all are gone)."""

    @abstractmethod
    def signal_all(self, sig: signal.Signals) -> int:
        """Send `sig` to every process of the task; how many got it."""

    @abstractmethod
    def kill_all(self) -> bool:
        """SIGKILL every process of the task, new ones forked meanwhile included; True when
        none is left."""

    @abstractmethod
    def destroy(self) -> None:
        """Kill what is left and release the container (remove the cgroup); idempotent."""


class Isolator(ABC):
    """Makes the containers of one slave's tasks."""

    mode: str  # "cgroups" or "none"
    version: str = ""  # "v1" or "v2" with cgroups
    cpu_limit: str = "soft"
    pids_max: int = 0

    @abstractmethod
    def create(self, key: str, limits: Limits, sandbox: str) -> Container:
        """A container for one task attempt, named by `key` (unique per slave); limits set."""

    def recover(self, keep: Collection[str] = ()) -> list[str]:
        """Kill and remove what an earlier slave on this work dir left; the names cleaned."""
        return []

    def close(self) -> None:
        """The slave stops: release what the isolator itself holds (empty parent cgroups)."""
        return None

    def sample(self, containers: Collection[Container]) -> dict[str, Usage]:
        """Usage of many containers at once (one /proc pass where that is how it is read)."""
        found = {}
        for c in containers:
            usage = c.usage()
            if usage is not None:
                found[c.name] = usage
        return found

    def describe(self) -> dict[str, str]:
        """For /vars and the registration message."""
        return {"isolation": self.mode, "cgroup_version": self.version or "-",
                "cpu_limit": self.cpu_limit, "task_pids_max": str(self.pids_max)}
