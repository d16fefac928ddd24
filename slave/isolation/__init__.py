"""How a slave enforces what tasks ask for: cgroups (v1 or v2) or nothing.

`create_isolator(mode, ...)` detects, never assumes: with `auto` it tries cgroup v2 (when the
slave's own v2 cgroup has the memory, cpu and pids controllers), then v1 (memory, cpu,
cpuacct, pids and freezer hierarchies mounted writable), creating this slave's cgroups to
be sure, and falls back to no isolation with the reason; with `cgroups` that fallback is an
IsolationError instead. The interface is in `base`, the parsing of cgroup files (pure) in
`parse`, one implementation per cgroup version in `v1` and `v2`, the /proc fallback in `none`.
"""

from __future__ import annotations

from slave.isolation.base import Container, IsolationError, Isolator, Limits, Usage
from slave.isolation.none import NoIsolation
from slave.isolation.v1 import V1Isolator
from slave.isolation.v2 import V2Isolator

__all__ = [
    "CPU_LIMITS", "DEFAULT_TASK_PIDS_MAX", "MODES", "Container", "IsolationError", "Isolator",
    "Limits", "NoIsolation", "Usage", "V1Isolator", "V2Isolator", "create_isolator",
]

MODES = ("auto", "cgroups", "none")
CPU_LIMITS = ("soft", "hard")
DEFAULT_TASK_PIDS_MAX = 1024
"""Processes (threads count too, as the kernel counts them) one task may have at once."""


def create_isolator(mode: str, work_dir: str, *, cpu_limit: str = "soft",
                    pids_max: int = DEFAULT_TASK_PIDS_MAX) -> tuple[Isolator, str | None]:
    """(the isolator, None) or, for `auto` without usable cgroups, (NoIsolation, why).

    Raises ValueError for an unknown mode or cpu limit, IsolationError when `cgroups` was
    asked for and neither version can be used here (the message gives both reasons).
    """
    if mode not in MODES:
        raise ValueError(f"isolation {mode!r} is not one of {', '.join(MODES)}")
    if cpu_limit not in CPU_LIMITS:
        raise ValueError(f"cpu limit {cpu_limit!r} is not one of {', '.join(CPU_LIMITS)}")
    if mode == "none":
        return NoIsolation(pids_max, cpu_limit), None
    reasons = []
    for kind in (V2Isolator, V1Isolator):
        try:
            return kind.detect(work_dir, cpu_limit, pids_max), None
        except IsolationError as e:
            reasons.append(str(e))
    why = "; ".join(reasons)
    if mode == "cgroups":
        raise IsolationError(f"cannot isolate tasks with cgroups here: {why}")
    return NoIsolation(pids_max, cpu_limit), why
