"""Indexes over the master's tasks, so no hot path scans every task ever submitted.

The master keeps every task in memory (finished ones too: `/master/tasks` lists them).
Scheduling, heartbeats and re-registration only care about the few tasks that are PENDING
or active, so each would grow with the cluster's history if it scanned them all: with
100,000 finished tasks, every task ending would walk 100,000 records to find the queue.

Both indexes are *lazy*: ``note()`` adds a task when it enters PENDING or an active state,
and a task that has since left is dropped the next time the index is read. That keeps the
bookkeeping to one call (the master makes it wherever it persists a task, which it does
after every state change) and cannot go wrong if a state changes twice between reads.

Pure: no I/O, no asyncio.
"""

from __future__ import annotations

from bisect import insort
from collections.abc import Mapping

from master.tasks import ACTIVE_STATES, PENDING, TaskRecord


def task_key(task_id: str) -> tuple[int, str]:
    """Sort key for task ids: numeric ids in numeric order, any others after them."""
    return (int(task_id), "") if task_id.isdigit() else (1 << 62, task_id)


class TaskIndex:
    """The PENDING queue in scheduling order and the set of active (launched) tasks."""

    def __init__(self) -> None:
        # (submitted_at, id key..., id), kept sorted: a re-queued task keeps its
        # submission time, so it goes back ahead of tasks submitted after it.
        self._queue: list[tuple[float, int, str, str]] = []
        self._queued: set[str] = set()
        self._active: set[str] = set()

    def note(self, rec: TaskRecord) -> None:
        """Record that ``rec`` may have changed state."""
        if rec.state == PENDING:
            if rec.id not in self._queued:
                self._queued.add(rec.id)
                insort(self._queue, (rec.submitted_at or 0.0, *task_key(rec.id), rec.id))
        elif rec.state in ACTIVE_STATES:
            self._active.add(rec.id)

    def pending(self, tasks: Mapping[str, TaskRecord]) -> list[TaskRecord]:
        """PENDING tasks, oldest submission first; forgets those that left PENDING."""
        out: list[TaskRecord] = []
        keep: list[tuple[float, int, str, str]] = []
        for entry in self._queue:
            rec = tasks.get(entry[3])
            if rec is not None and rec.state == PENDING:
                out.append(rec)
                keep.append(entry)
            else:
                self._queued.discard(entry[3])
        if len(keep) != len(self._queue):
            self._queue = keep
        return out

    def active(self, tasks: Mapping[str, TaskRecord]) -> list[TaskRecord]:
        """STAGING and RUNNING tasks, in id order; forgets those that ended."""
        out = []
        for tid in list(self._active):
            rec = tasks.get(tid)
            if rec is not None and rec.state in ACTIVE_STATES:
                out.append(rec)
            else:
                self._active.discard(tid)
        out.sort(key=lambda r: task_key(r.id))
        return out

    def __len__(self) -> int:
        """How many entries are held (stale ones included): for /vars and tests."""
        return len(self._queue) + len(self._active)
