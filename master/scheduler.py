"""FIFO + first-fit placement of pending tasks on slaves — pure: no I/O, no asyncio.

The master calls ``schedule()`` whenever something changes (a submit, a slave registering,
a task ending) with the pending queue in submission order and the free resources of its
*active* slaves in a stable order (e.g. registration order). It gets back which task goes
where; nothing passed in is modified.

Resource arithmetic allows ``EPSILON`` of float slack, so three 0.1-cpu tasks fit in
0.3 cpus.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

#: Float slack for resource comparisons (0.1 + 0.2 must fit in 0.3).
EPSILON = 1e-9


class TaskDemand(Protocol):
    """What the scheduler reads from a task; ``master.tasks.TaskRecord`` qualifies."""

    @property
    def id(self) -> str: ...
    @property
    def cpus(self) -> float: ...
    @property
    def mem(self) -> float: ...


class Resources(Protocol):
    """Anything with ``cpus`` and ``mem`` (MiB): ``FreeResources``, ``cluster.Resources``."""

    @property
    def cpus(self) -> float: ...
    @property
    def mem(self) -> float: ...


@dataclass(frozen=True)
class PendingTask:
    """A task waiting for a slave, when the caller has no richer record to pass."""

    id: str
    cpus: float
    mem: float


@dataclass(frozen=True)
class FreeResources:
    """A slave's *unused* resources at the time of the call."""

    slave_id: str
    cpus: float
    mem: float


@dataclass(frozen=True)
class Assignment:
    """Launch ``task_id`` on ``slave_id``; ``cpus``/``mem`` repeat the task's demand."""

    task_id: str
    slave_id: str
    cpus: float
    mem: float


def fits(cpus: float, mem: float, available: Resources) -> bool:
    """True when a demand fits in ``available`` (with ``EPSILON`` slack; NaN never fits)."""
    return cpus <= available.cpus + EPSILON and mem <= available.mem + EPSILON


def schedule(
    pending: Sequence[TaskDemand],
    slaves: Sequence[FreeResources],
    *,
    strict_fifo: bool = False,
    spread: bool = False,
    avoid: Mapping[str, str] | None = None,
) -> list[Assignment]:
    """Place as many pending tasks as fit, oldest first, each on the first slave with room.

    Free resources are updated as tasks are placed, so one call can fill several slaves.
    Assignments come back in queue order.

    By default a task that fits nowhere *right now* does not block the tasks behind it:
    the scheduler skips it and keeps going, so a big task waiting for a slave to drain
    never stalls small ones (at the risk of starving the big task while small ones keep
    arriving). With ``strict_fifo=True`` placement stops at the first task that does not
    fit, so tasks start strictly in submission order.

    With ``spread=True`` each task goes to the slave with the most free cpus among those it
    fits on (ties: list order) instead of the first one, so a burst of small tasks is spread
    over every slave rather than packed onto the first (what the master uses).

    ``avoid`` maps task ids to a slave each should go to only when no other slave has room
    for it now (the master passes the slave a retried task's last attempt failed on): the
    task is placed by the same rule among the other slaves, else on that one.

    Example:
        >>> schedule([PendingTask("1", 2, 512), PendingTask("2", 4, 512)],
        ...          [FreeResources("s1", 3, 1024), FreeResources("s2", 4, 1024)])
        [Assignment(task_id='1', slave_id='s1', cpus=2, mem=512), \
Assignment(task_id='2', slave_id='s2', cpus=4, mem=512)]
    """
    names = [s.slave_id for s in slaves]
    free_cpus = [float(s.cpus) for s in slaves]
    free_mem = [float(s.mem) for s in slaves]
    out: list[Assignment] = []
    # Free resources only shrink during a call, so a demand that fitted nowhere once fits
    # nowhere for the rest of it: a long queue of like tasks costs one set lookup each.
    failed: set[tuple[float, float]] = set()
    for task in pending:
        demand = (task.cpus, task.mem)
        if demand in failed:
            if strict_fifo:
                break
            continue
        chosen = fallback = -1
        shun = avoid.get(task.id) if avoid else None
        for i in range(len(names)):
            if task.cpus <= free_cpus[i] + EPSILON and task.mem <= free_mem[i] + EPSILON:
                if shun is not None and names[i] == shun:
                    fallback = i
                    continue
                if not spread:
                    chosen = i
                    break
                if chosen < 0 or free_cpus[i] > free_cpus[chosen] + EPSILON:
                    chosen = i
        if chosen < 0:
            chosen = fallback
        if chosen < 0:
            if strict_fifo:
                break
            failed.add(demand)
            continue
        free_cpus[chosen] = max(0.0, free_cpus[chosen] - task.cpus)
        free_mem[chosen] = max(0.0, free_mem[chosen] - task.mem)
        out.append(Assignment(task.id, names[chosen], task.cpus, task.mem))
    return out


def fits_any(cpus: float, mem: float, slave_totals: Iterable[Resources]) -> bool:
    """True when some registered slave could run the task when idle (its TOTAL resources).

    The master rejects a task at submit when this is False: it would wait forever.
    With no slaves registered it is False too; whether to reject or queue then is the
    master's call (``too_big_message`` words that case separately).
    """
    return any(fits(cpus, mem, total) for total in slave_totals)


def _num(value: float) -> str:
    return f"{value:g}"


def too_big_message(cpus: float, mem: float, slave_totals: Iterable[Resources]) -> str:
    """The error for a task that ``fits_any`` rejected, naming the biggest slave.

    Example: "task needs 8 cpus / 100 MiB but the largest slave has 4 cpus / 2048 MiB".
    When the slave with the most cpus is not the one with the most memory, both are named,
    so the user sees which single demand to lower.
    """
    need = f"task needs {_num(cpus)} cpus / {_num(mem)} MiB"
    totals = list(slave_totals)
    if not totals:
        return f"{need} but no slave is registered; start one with `cluster slave --master ...`"
    by_cpus = max(totals, key=lambda r: (r.cpus, r.mem))
    by_mem = max(totals, key=lambda r: (r.mem, r.cpus))
    msg = f"{need} but the largest slave has {_num(by_cpus.cpus)} cpus / {_num(by_cpus.mem)} MiB"
    if by_mem is not by_cpus and by_mem.mem > by_cpus.mem:
        msg += f" (the one with most memory has {_num(by_mem.cpus)} cpus / {_num(by_mem.mem)} MiB)"
    return msg + "; lower --cpus/--mem or add a bigger slave"
