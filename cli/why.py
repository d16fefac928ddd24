"""Why a PENDING task waits, in one sentence — pure: task and slave JSON in, text out.

The master schedules FIFO onto active slaves with enough free cpus and memory (first fit), so
a PENDING task waits for one of: no slave at all; no active slave (all lost or disconnected);
no active slave big enough even when idle; none with enough free now; older PENDING tasks
ahead of it. `cluster task` and `cluster submit --wait` show this so that no one waits
silently.
"""

from __future__ import annotations

from typing import Any

__all__ = ["id_key", "pending_reason", "queue_matters"]

_EPS = 1e-9


def _f(value: Any) -> float:
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def pending_reason(
    task: dict[str, Any], slaves: list[dict[str, Any]], queued_ahead: int = 0, *, master: str = ""
) -> str:
    """The reason `task` (PENDING) has not started; `master` goes into the hint to start a
    slave (`cluster slave --master MASTER`)."""
    cpus, mem = _f(task.get("cpus")), _f(task.get("mem"))
    active = [s for s in slaves if s.get("state") == "active"]
    if not slaves:
        return (
            "no slave is registered with the master; start one: "
            f"cluster slave --master {master or 'HOST:PORT'}"
        )
    if not active:
        counts: dict[str, int] = {}
        for s in slaves:
            state = str(s.get("state"))
            counts[state] = counts.get(state, 0) + 1
        known = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        return f"no slave is active ({known}); start one or wait for one to come back"
    big = [s for s in active if _f(s.get("cpus")) + _EPS >= cpus and _f(s.get("mem")) + _EPS >= mem]
    if not big:
        most_cpus = max(_f(s.get("cpus")) for s in active)
        most_mem = max(_f(s.get("mem")) for s in active)
        return (
            f"no active slave offers {cpus:g} cpus and {mem:g} MiB (the largest offer "
            f"{most_cpus:g} cpus, {most_mem:g} MiB); start a bigger slave"
        )
    if not _free(task, big):
        running = sum(len(s.get("tasks") or []) for s in big)
        return (
            f"waiting for {cpus:g} cpus and {mem:g} MiB to be free: the {len(big)} "
            f"slave(s) big enough are busy with {running} task(s)"
        )
    if queued_ahead > 0:
        return f"queued behind {queued_ahead} older PENDING task(s)"
    return "about to be placed on a slave"


def queue_matters(task: dict[str, Any], slaves: list[dict[str, Any]]) -> bool:
    """Whether the count of older PENDING tasks can change `pending_reason`'s answer: only
    when an active slave has room for the task now (so callers ask for that count only
    then)."""
    active = [s for s in slaves if s.get("state") == "active"]
    return bool(_free(task, active))


def _free(task: dict[str, Any], slaves: list[dict[str, Any]]) -> list[dict[str, Any]]:
    cpus, mem = _f(task.get("cpus")), _f(task.get("mem"))
    return [
        s
        for s in slaves
        if _f(s.get("cpus")) - _f(s.get("used_cpus")) + _EPS >= cpus
        and _f(s.get("mem")) - _f(s.get("used_mem")) + _EPS >= mem
    ]


def id_key(task_id: str) -> tuple[int, str]:
    """Sorts task ids as the master numbers them (numerically), others after them."""
    return (int(task_id), "") if task_id.isdigit() else (1 << 62, task_id)
